"""MedMNIST downloads for users who are online: the official Zenodo record, MD5-checked.

Offline (as on CI), point ``open_dataset`` at a local ``.npz`` instead; nothing here runs then.
"""
from __future__ import annotations

import urllib.request
from pathlib import Path

from privmed.errors import DatasetError
from privmed.files import atomic_path, file_digest

RECORD = "https://zenodo.org/records/10519652/files"
# name -> (file, MD5 of the official file, class names)
FILES = {
    "pneumoniamnist": ("pneumoniamnist.npz", "28209eda62fecd6e6a2d98b1501bb15f", ["normal", "pneumonia"]),
    "pneumoniamnist_64": ("pneumoniamnist_64.npz", "8f4eceb4ccffa70c672198ea285246c6", ["normal", "pneumonia"]),
}


def md5(path: Path) -> str:
    return file_digest(path, "md5")  # the checksum Zenodo publishes


def download(name: str, root: Path) -> Path:
    """Fetch ``name`` into ``root`` unless a file with the right MD5 is already there."""
    if name not in FILES:
        raise DatasetError(f"unknown MedMNIST file '{name}'; known: {', '.join(FILES)}")
    fname, want, _ = FILES[name]
    dest = Path(root) / fname
    if dest.is_file() and md5(dest) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            urllib.request.urlretrieve(f"{RECORD}/{fname}?download=1", tmp)
        except OSError as e:
            raise DatasetError(f"could not download {fname} ({e}); "
                               "download it by hand and pass the .npz path") from None
        if md5(tmp) != want:
            raise DatasetError(f"{fname} downloaded with a wrong MD5 (truncated or an error page); try again")
    return dest


def classes_for(path: Path) -> list[str] | None:
    """Class names when ``path`` is a known MedMNIST file (by name)."""
    for fname, _, classes in FILES.values():
        if Path(path).name == fname:
            return classes
    return None
