"""Shared fixtures. ``small_bundle``: a real DP bundle (paper CNN, 64 px, 2 epochs on covid19_xray,
epsilon 2) trained once per test session (~1 min on 2 cores). Set ``PRIVMED_TEST_BUNDLE`` to an
existing bundle directory to reuse one while developing. Tests that modify a bundle copy it first.

Missing datasets skip a test on a laptop but FAIL it in CI (``CI=true``): a CI job without the data
must not turn green by skipping everything that matters."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from privmed.config import bundles_dir, default_data_root, settings


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session", autouse=True)
def _session_budget_dir(tmp_path_factory):
    """Session fixtures that train (small_bundle...) spend a throwaway budget, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMED_BUDGET_DIR", str(tmp_path_factory.mktemp("budget") / "session"))
        yield


@pytest.fixture(autouse=True)
def _private_budget_dir(tmp_path, monkeypatch):
    """Every test gets its own privacy budget registry: tests never spend (or read) the user's budget."""
    monkeypatch.setenv("PRIVMED_BUDGET_DIR", str(tmp_path / "budget"))


def require_dataset(root: Path, name: str = "covid19_xray") -> Path:
    """``root`` if it holds dataset ``name``; else skip, or fail under CI=true."""
    if not (Path(root) / name).is_dir():
        msg = f"real dataset {name} not found under {root}; set PRIVMED_DATA to the datasets folder"
        if in_ci():
            pytest.fail(f"CI=true but {msg} (tests needing it would be skipped silently)", pytrace=False)
        pytest.skip(msg)
    return Path(root)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return require_dataset(default_data_root())


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, data_root) -> Path:
    env = settings().test_bundle
    if env and (env / "metadata.json").is_file():
        return env
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
    env = settings().test_effnet_bundle
    if env and (env / "metadata.json").is_file():
        return env
    found = default_bundle("chest_xray_pneumonia")
    if found:
        return found
    from privmed.config import TrainConfig
    from privmed.pipeline import train_bundle

    cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", epochs=3, data_root=data_root)
    return train_bundle(cfg, tmp_path_factory.mktemp("bundles") / "covid19_effnet", progress=False)


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a throwaway PostgreSQL cluster on 127.0.0.1 (tests/pgcluster.py); skipped
    with the reason when the server binaries are absent (FAILS under CI=true: .ci/run installs them)."""
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[test]')")
    from pgcluster import Cluster, why_unavailable

    why = why_unavailable()
    if why:
        if in_ci():
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    cluster = Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
