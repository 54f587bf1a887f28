"""The pixel/feature cache holds patient data: outside the checkout, owner-only, size-capped."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

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


def test_camera_photos_are_cached_by_content_and_order(data_root, tmp_path, monkeypatch):
    """The simulated phone photos a bundle build and a site calibration fit the camera threshold on are
    cached like the training pixels: a second call reads them back (no photo is taken again), rows follow
    the records' order, and the values are those the uncached path gives the network."""
    import numpy as np
    import torch

    from privmed import pipeline
    from privmed.config import PreprocessConfig
    from privmed.data.datasets import open_dataset
    from privmed.data.transforms import Preprocess
    from privmed.training.data import pixels_to_tensor

    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path))
    records = open_dataset("covid19_xray", data_root).records("test")[::13][:5]
    pre = Preprocess(PreprocessConfig(size=64))
    first = pipeline.camera_inputs(records, pre)
    direct = torch.from_numpy(np.stack([pre(p) for p in pipeline.camera_photos(records)])).float()[:, None]
    assert first.dtype == np.uint8 and first.shape == (5, 64, 64)
    assert torch.equal(pixels_to_tensor(first), direct)

    def no_photos(*a, **k):
        raise AssertionError("a cached photo was taken again")

    monkeypatch.setattr(pipeline, "camera_photos", no_photos)
    assert np.array_equal(pipeline.camera_inputs(records, pre), first)
    with pytest.raises(AssertionError, match="taken again"):  # another order is another array
        pipeline.camera_inputs(records[::-1], pre)
