"""Shared fixtures. ``small_bundle``: a real DP bundle (paper CNN, 64 px, 2 epochs on covid19_xray,
epsilon 2) trained once per test session (~1 min on 2 cores). Set ``PRIVMED_TEST_BUNDLE`` to an
existing bundle directory to reuse one while developing. Tests that modify a bundle copy it first."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from privmed.config import bundles_dir, default_data_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not (root / "covid19_xray").is_dir():
        pytest.skip(f"real datasets not found at {root}; set PRIVMED_DATA")
    return root


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, data_root) -> Path:
    env = os.environ.get("PRIVMED_TEST_BUNDLE")
    if env and (Path(env) / "metadata.json").is_file():
        return Path(env)
    from privmed.config import TrainConfig
    from privmed.pipeline import train_bundle

    cfg = TrainConfig(dataset="covid19_xray", model="cnn", epochs=2, batch_size=32, data_root=data_root,
                      preprocess={"size": 64})
    return train_bundle(cfg, tmp_path_factory.mktemp("bundles") / "covid19_cnn64", progress=False)


@pytest.fixture
def bundle_copy(small_bundle, tmp_path) -> Path:
    """A private copy of ``small_bundle`` a test may modify."""
    return Path(shutil.copytree(small_bundle, tmp_path / "bundle"))


def default_bundle(dataset: str) -> Path | None:
    """``bundles/<dataset>`` when installed (the project's default models), else None."""
    d = bundles_dir() / dataset
    return d if (d / "metadata.json").is_file() else None


@pytest.fixture(scope="session")
def xray_bundle(small_bundle) -> Path:
    """The best chest X-ray bundle available: a default bundle if installed, else ``small_bundle``."""
    return default_bundle("chest_xray_pneumonia") or default_bundle("covid19_xray") or small_bundle


@pytest.fixture(scope="session")
def effnet_bundle(tmp_path_factory, data_root) -> Path:
    """A bundle of the default architecture (frozen ImageNet EfficientNet-Lite0 + DP linear head):
    ``bundles/chest_xray_pneumonia`` when installed, else trained on covid19_xray (3 epochs,
    epsilon 2; ~1-2 min cold, faster when the frozen-feature cache is warm). ``PRIVMED_TEST_EFFNET_BUNDLE``
    reuses an existing one."""
    env = os.environ.get("PRIVMED_TEST_EFFNET_BUNDLE")
    if env and (Path(env) / "metadata.json").is_file():
        return Path(env)
    found = default_bundle("chest_xray_pneumonia")
    if found:
        return found
    from privmed.config import TrainConfig
    from privmed.pipeline import train_bundle

    cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", epochs=3, data_root=data_root)
    return train_bundle(cfg, tmp_path_factory.mktemp("bundles") / "covid19_effnet", progress=False)
