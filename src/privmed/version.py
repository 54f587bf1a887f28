"""The installed distribution's version: one source, ``pyproject.toml``, read through the package
metadata. A leaf module, so that anything inside privmed can name the version without importing the
package root."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("privmed")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
