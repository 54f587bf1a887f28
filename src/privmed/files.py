"""File helpers used across layers: SHA-256 of bytes and files (any hashlib digest of a file), and
atomic writes (a temporary file beside the target, then ``os.replace``: a reader or a crash sees the
old file or the new, never half)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file with any ``hashlib`` algorithm, read in chunks (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


@contextmanager
def atomic_path(path: str | Path, *, private: bool = False, suffix: str = ".tmp"):
    """Yields a temporary path beside ``path``; write it inside the block. On a clean exit it replaces
    ``path`` atomically; on an exception it is deleted and ``path`` is untouched. ``private``: the
    temporary file is created with mode 0600 (kept by the replace), so it is never briefly readable
    by others; otherwise it gets the usual umask permissions."""
    path = Path(path)
    if private:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> None:
    with atomic_path(path, private=private) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(text)
