"""Dataset-dependent tests skipped silently when the data was missing, even in CI."""
from __future__ import annotations

import pytest

from conftest import require_dataset


def test_missing_dataset_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but real dataset covid19_xray not found"):
        require_dataset(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="set PRIVMED_DATA"):
        require_dataset(tmp_path)
    (tmp_path / "covid19_xray").mkdir()
    monkeypatch.setenv("CI", "true")
    assert require_dataset(tmp_path) == tmp_path
