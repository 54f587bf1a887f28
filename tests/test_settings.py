"""PRIVMED_* settings (privmed.config): one typed field per variable the code reads, read at call
time, the old on/off words, a clear error naming a bad variable, secrets that do not print, and
docs/SETTINGS.md generated from the model."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from privmed import config
from privmed.config import INTERNAL_VARIABLES, Settings, SettingsError, settings
from privmed.errors import PrivmedError

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"PRIVMED_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])")  # whole names, not a family (PRIVMED_LOG_*)


def _code_files() -> list[Path]:
    return [*(ROOT / "src" / "privmed").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
            *(ROOT / "benchmarks").rglob("*.py"), ROOT / "Makefile"]


def test_every_variable_named_in_the_code_is_a_setting():
    named = {m for f in _code_files() if f.is_file() for m in NAME.findall(f.read_text())}
    fields = {config.ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert {"PRIVMED_MAX_UPLOAD_MB", "PRIVMED_DEID_SECRET", "PRIVMED_LOG_SINK"} <= named  # the scan sees the code
    assert named - fields - set(INTERNAL_VARIABLES) == set()
    assert not fields & set(INTERNAL_VARIABLES)


def test_no_raw_environment_read_of_a_privmed_variable_outside_config():
    """Only a copy for a child process (``dict(os.environ, ...)``) or a literal non-PRIVMED name:
    an alias (``env = os.environ.get``) or a built name (``f"PRIVMED_LOG_{v}"``) would hide a read."""
    allowed = re.compile(r"""dict\(os\.environ\b|os\.environ(\.get\(|\[)\s*["'](?!PRIVMED_)[A-Z_]+["']""")
    raw = []
    for f in (ROOT / "src" / "privmed").rglob("*.py"):
        if f.name == "config.py":
            continue
        text = f.read_text()
        raw += [f"{f.name}: {m.group(0)}" for m in re.finditer(r"(dict\()?os\.environ\S{0,30}", text)
                if not allowed.match(m.group(0))]
        raw += [f"{f.name}: {m}" for m in re.findall(r"getenv|from os import environ", text)]
    assert raw == []


def test_read_at_call_time(monkeypatch):
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "100")
    assert settings().max_upload_mb == 100
    assert settings() is settings()  # unchanged environment: the same object, not rebuilt
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "2.5")
    assert settings().max_upload_mb == 2.5
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "")  # empty counts as unset, as before
    assert settings().max_upload_mb is None
    monkeypatch.delenv("PRIVMED_MAX_UPLOAD_MB")
    assert settings().max_upload_mb is None


@pytest.mark.parametrize("word, on", [("0", False), ("off", False), ("FALSE", False), ("No", False),
                                      ("1", True), ("on", True), ("True", True), ("YES", True)])
def test_on_off_words(monkeypatch, word, on):
    monkeypatch.setenv("PRIVMED_API_AUTH", word)
    monkeypatch.setenv("PRIVMED_BATCH", word)
    monkeypatch.setenv("PRIVMED_ONNX", word)
    monkeypatch.setenv("PRIVMED_INT8", word)
    s = settings()
    assert s.api_auth is on and s.batch is on
    assert s.onnx == ("on" if on else "off")
    assert s.int8 == ("auto" if on else "off")  # int8 has no forced mode: on is auto, as before


def test_defaults(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(config.ENV_PREFIX + name.upper(), raising=False)
    s = settings()
    assert (s.api_auth, s.batch, s.ort_spin, s.onnx, s.int8) == (True, True, False, "auto", "auto")
    assert (s.batch_max, s.batch_wait_ms, s.batch_queue, s.cache_max_mb) == (16, 5.0, 64, 4096)
    assert (s.log_checkpoint_every, s.fuzz_examples, s.ort_threads) == (100, 20, 0)
    assert s.home == Path("~/.privmed") and s.app_bundles == [] and s.max_upload_mb is None


def test_bad_value_names_the_variable_and_what_is_expected(monkeypatch):
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "abc")
    monkeypatch.setenv("PRIVMED_API_AUTH", "maybe")  # was silently "on" before: now refused
    with pytest.raises(SettingsError) as e:
        settings()
    msg = str(e.value)
    assert "PRIVMED_MAX_UPLOAD_MB='abc': expected number > 0" in msg
    assert "PRIVMED_API_AUTH='maybe': expected on / off" in msg
    assert isinstance(e.value, PrivmedError) and e.value.__suppress_context__  # one line, no pydantic trace
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "0")
    monkeypatch.delenv("PRIVMED_API_AUTH")
    with pytest.raises(SettingsError, match=r"PRIVMED_MAX_UPLOAD_MB='0': expected number > 0"):
        settings()


def test_cli_prints_the_bad_variable_in_one_line(monkeypatch, capsys):
    from privmed.cli import main

    monkeypatch.setenv("PRIVMED_CACHE_MAX_MB", "lots")
    assert main(["cache", "info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PRIVMED_CACHE_MAX_MB='lots': expected number >= 0" in err


def test_secrets_do_not_print_but_callers_get_the_value(monkeypatch):
    values = {"PRIVMED_DEID_SECRET": "deid-9f2c", "PRIVMED_API_KEY": "pmk_live_77", "PRIVMED_APP_PASSWORD": "pw-31x",
              "PRIVMED_DB_URL": "postgresql://u:dbpass-5@host/db"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    s = settings()
    shown = repr(s) + str(s) + str(s.model_dump())
    assert not [v for v in values.values() if v in shown]
    assert s.deid_secret.get_secret_value() == "deid-9f2c" and s.api_key.get_secret_value() == "pmk_live_77"
    from privmed.api.store import default_db_url

    assert default_db_url() == "postgresql://u:dbpass-5@host/db"


def test_app_bundles_split_like_a_path(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("PRIVMED_APP_BUNDLES", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b"), ""]))
    from privmed.app.backend import extra_bundles

    assert extra_bundles() == [tmp_path / "a", tmp_path / "b"]


def test_batch_settings(monkeypatch):
    from privmed.inference.batcher import settings_from_env

    monkeypatch.setenv("PRIVMED_BATCH_WAIT_MS", "50")  # capped at 5 ms, as before
    monkeypatch.setenv("PRIVMED_BATCH_MAX", "4")
    assert settings_from_env() == {"max_batch": 4, "max_wait_s": 0.005, "max_queue": 64, "workers": 1}
    monkeypatch.setenv("PRIVMED_BATCH_WORKERS", "3")
    assert settings_from_env()["workers"] == 3
    monkeypatch.setenv("PRIVMED_BATCH", "off")
    assert settings_from_env() is None


def test_arguments_win_over_the_environment(monkeypatch, tmp_path):
    pytest.importorskip("fastapi")
    from privmed.api.server import Settings as ServerSettings
    from privmed.api.translog import LogConfig

    monkeypatch.setenv("PRIVMED_DB_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("PRIVMED_MAX_UPLOAD_MB", "100")
    monkeypatch.setenv("PRIVMED_LOG_SINK", str(tmp_path / "env.jsonl"))
    monkeypatch.setenv("PRIVMED_LOG_CHECKPOINT_EVERY", "7")
    s = ServerSettings.from_env()
    assert s.db_url == "sqlite:///from-env.db" and s.max_file_bytes == 100 * 2**20
    assert s.translog.sink == tmp_path / "env.jsonl" and s.translog.every == 7
    assert ServerSettings.from_env(db_url="sqlite:///flag.db").db_url == "sqlite:///flag.db"
    assert LogConfig.from_env(sink=str(tmp_path / "flag.jsonl")).sink == tmp_path / "flag.jsonl"


def test_settings_doc_is_generated_from_the_model():
    doc = (ROOT / "docs" / "SETTINGS.md").read_text()
    assert doc == config.markdown(), "docs/SETTINGS.md is stale: python -m privmed.config --markdown > docs/SETTINGS.md"
    for name in Settings.model_fields:
        assert f"`{config.ENV_PREFIX}{name.upper()}`" in doc
    out = subprocess.run([sys.executable, "-m", "privmed.config", "--markdown"], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout == doc


def test_api_server_runs_one_forward_per_core_unless_told(monkeypatch):
    import os

    from privmed.config import parallel_forwards, settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for name in ("PRIVMED_BATCH_WORKERS", "PRIVMED_ORT_THREADS"):
        monkeypatch.delenv(name, raising=False)
    parallel_forwards()
    assert (settings().batch_workers, settings().ort_threads) == (2, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("PRIVMED_BATCH_WORKERS")
    monkeypatch.delenv("PRIVMED_ORT_THREADS")
    parallel_forwards()
    assert (settings().batch_workers, settings().ort_threads) == (4, 4)
    monkeypatch.delenv("PRIVMED_BATCH_WORKERS")
    monkeypatch.setenv("PRIVMED_ORT_THREADS", "2")  # an operator's choice wins
    parallel_forwards()
    assert (settings().batch_workers, settings().ort_threads) == (None, 2)
