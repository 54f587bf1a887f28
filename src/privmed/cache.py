"""The on-disk cache of training/evaluation tensors: PATIENT DATA.

It holds decoded, preprocessed pixels (``pixels-*.npy``) and frozen-backbone features
(``frozen-*.npy``) of every training and evaluation image, keyed by content hashes. Pixels are
the patients' images at model resolution and features can be inverted towards them, so the cache
lives outside the checkout (``$XDG_CACHE_HOME/privmed`` or ``~/.cache/privmed``; ``PRIVMED_CACHE``
overrides), owner-only (directory 0700, files 0600), and is capped at ``PRIVMED_CACHE_MAX_MB``
(default 4096): the least recently used files go first. ``privmed cache info|clear``.

Declared public corpora keep their copy scan's answer (``public-copies-KEY.npy``, one flag per corpus
image, keyed by the content of every shared image). Serving keeps the ONNX graphs it exports from
bundles here too (``onnx-KEY.onnx`` and its record ``onnx-KEY.json``, ``privmed.inference.runtime``):
not patient data, but under the same cap and clear.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from privmed.config import REPO_ROOT, cache_dir, settings
from privmed.files import atomic_path

LEGACY = REPO_ROOT / ".privmed-cache"  # the old default, inside the checkout


def max_bytes() -> int:
    return int(settings().cache_max_mb * 2**20)


def ensure_dir() -> Path:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(d.stat().st_mode) != 0o700:  # an existing or umask-widened dir: narrow it
        d.chmod(0o700)
    return d


def load(path: Path) -> np.ndarray | None:
    """The cached array, or None. A hit refreshes the file's mtime (the LRU clock)."""
    try:
        arr = np.load(path)
    except (FileNotFoundError, ValueError, EOFError, OSError):
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return arr


def save(path: Path, arr: np.ndarray) -> None:
    """Atomic, mode 0600 from creation (never briefly world-readable), then enforce the cap."""
    ensure_dir()
    with atomic_path(path, private=True) as tmp, open(tmp, "wb") as f:  # created 0600
        np.save(f, arr)
    evict(keep=path)


def _files() -> list[Path]:
    d = cache_dir()
    return [p for p in d.iterdir() if p.is_file()] if d.is_dir() else []


def evict(limit: int | None = None, keep: Path | None = None) -> list[Path]:
    """Delete least recently used files until the cache fits ``limit`` bytes; returns them."""
    limit = max_bytes() if limit is None else limit
    files = sorted(_files(), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    gone = []
    for p in files:
        if total <= limit:
            break
        if keep is not None and p == keep:
            continue
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def info() -> dict:
    files = _files()
    d = cache_dir()
    return {"path": str(d), "exists": d.is_dir(), "mode": oct(stat.S_IMODE(d.stat().st_mode)) if d.is_dir() else None,
            "files": len(files), "bytes": sum(p.stat().st_size for p in files), "max_bytes": max_bytes(),
            "holds": "decoded preprocessed pixels and frozen-backbone features of training/evaluation "
                     "images: patient data; the public corpora's copy flags; and the ONNX graphs serving exported "
                     "from bundles",
            "legacy_in_checkout": str(LEGACY) if LEGACY.is_dir() and LEGACY != d else None}


def clear() -> int:
    """Delete every cached file (and the old cache inside the checkout); returns how many."""
    files = _files()
    if LEGACY.is_dir() and LEGACY != cache_dir():
        files += [p for p in LEGACY.iterdir() if p.is_file() and p.suffix == ".npy"]
    for p in files:
        p.unlink(missing_ok=True)
    if LEGACY.is_dir() and not any(LEGACY.iterdir()):
        LEGACY.rmdir()
    return len(files)
