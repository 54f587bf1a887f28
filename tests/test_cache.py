"""The pixel/feature cache holds patient data: outside the checkout, owner-only, size-capped."""
from __future__ import annotations

import os
import stat

import numpy as np

from privmed import cache
from privmed.config import REPO_ROOT, cache_dir


def test_default_cache_is_outside_the_repo(monkeypatch, tmp_path):
    """Was ``<repo>/.privmed-cache``: decoded patient images inside the checkout."""
    monkeypatch.delenv("PRIVMED_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "privmed"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == cache_dir().home() / ".cache" / "privmed"
    assert REPO_ROOT not in cache_dir().parents
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cache_files_owner_only_and_lru_capped(monkeypatch, tmp_path):
    """Files were written with the umask's mode (0644: readable by every local user) and never evicted."""
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("PRIVMED_CACHE_MAX_MB", "0.25")  # 262144 bytes: room for two 100 kB arrays
    old = os.umask(0o022)
    try:
        arr = np.zeros(100_000, np.uint8)
        for i, name in enumerate(("a", "b", "c")):
            cache.save(cache_dir() / f"{name}.npy", arr)
            os.utime(cache_dir() / f"{name}.npy", (1000 + i, 1000 + i))
            if name == "b":
                assert cache.load(cache_dir() / "a.npy") is not None  # a used again: b is now the oldest
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache_dir().stat().st_mode) == 0o700
    left = sorted(p.name for p in cache_dir().iterdir())
    assert left == ["a.npy", "c.npy"], left
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in cache_dir().iterdir())
    assert cache.info()["files"] == 2 and cache.info()["bytes"] <= cache.max_bytes()


def test_cache_cli_info_and_clear(monkeypatch, tmp_path, capsys):
    from privmed.cli import main

    monkeypatch.setattr(cache, "LEGACY", tmp_path / "repo-cache")
    (tmp_path / "repo-cache").mkdir()
    np.save(tmp_path / "repo-cache" / "pixels-old.npy", np.zeros(3))
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "c"))
    cache.save(cache_dir() / "x.npy", np.zeros(10))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "1 file" in out and "patient data" in out and "repo-cache" in out
    assert main(["cache", "clear"]) == 0
    assert list(cache_dir().iterdir()) == [] and not (tmp_path / "repo-cache").exists()
