"""The committed default bundles ship no ``model.onnx``; loading one exports a graph into the cache
(never into the bundle), checked against the torch weights, and serves through ONNX Runtime. The
cached graph is tied to the exact weights and metadata, hash-checked before use, reused by later
loads, and never served when damaged. ``PRIVMED_ONNX=0`` serves torch."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
from conftest import default_bundle  # noqa: E402
from privmed.files import sha256_file  # noqa: E402
from privmed.inference import runtime  # noqa: E402
from privmed.inference.onnx_export import TOLERANCE  # noqa: E402
from privmed.inference.predictor import Model, load_model  # noqa: E402

CHEST = default_bundle("chest_xray_pneumonia")
pytestmark = pytest.mark.skipif(CHEST is None, reason="the default chest X-ray bundle is not installed")


def _snapshot(bundle: Path) -> dict:
    return {p.name: sha256_file(p) for p in sorted(bundle.iterdir()) if p.is_file()}


def _files(cache: Path, key: str) -> tuple[Path, Path]:
    return cache / f"onnx-{key}.onnx", cache / f"onnx-{key}.json"


def _count_exports(mp) -> list:
    calls, real = [], runtime.write_graph

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    mp.setattr(runtime, "write_graph", counting)
    return calls


@pytest.fixture(scope="module")
def first_load(tmp_path_factory):
    """The chest bundle loaded once into an empty cache (the export is the slow part: shared)."""
    cache = tmp_path_factory.mktemp("cache") / "privmed"
    before = _snapshot(CHEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVMED_CACHE", str(cache))
        mp.delenv("PRIVMED_ONNX", raising=False)
        mp.delenv("PRIVMED_INT8", raising=False)
        calls = _count_exports(mp)
        model = load_model(CHEST)
    return model, cache, len(calls), before


@pytest.fixture
def cache_env(first_load, monkeypatch):
    monkeypatch.setenv("PRIVMED_CACHE", str(first_load[1]))
    monkeypatch.delenv("PRIVMED_ONNX", raising=False)
    monkeypatch.setattr(runtime, "_said", set())  # each test sees its own "said once"
    return first_load[1]


def test_default_bundle_serves_onnx_exported_into_the_cache(first_load, cache_env):
    model, cache, exports, before = first_load
    assert exports == 1
    assert (model.backend, model.runtime.graph, model.info["runtime"]) == ("onnxruntime", "cache", "onnxruntime")
    key = runtime.graph_key(model.metadata)
    graph, record = _files(cache, key)
    rec = json.loads(record.read_text())
    assert rec["key"] == key and rec["weights_sha256"] == sha256_file(CHEST / "weights.safetensors")
    assert rec["sha256"] == sha256_file(graph) and rec["max_abs_diff"] <= TOLERANCE
    assert all(p.stat().st_mode & 0o077 == 0 for p in (graph, record))  # owner-only, like the rest of the cache
    assert _snapshot(CHEST) == before and not (CHEST / "model.onnx").exists()  # the bundle is never written
    assert runtime.expected(CHEST, model.metadata) == "onnxruntime"


def test_cached_graph_answers_as_the_torch_weights(first_load, cache_env, data_root, monkeypatch):
    model = first_load[0]
    monkeypatch.setenv("PRIVMED_ONNX", "0")
    torch_model = load_model(CHEST)
    assert torch_model.backend == "torch" and torch_model.runtime.reason == "PRIVMED_ONNX=0"
    files = sorted((data_root / "chest_xray_pneumonia" / "test").glob("*/*"))[::150][:4]
    assert len(files) == 4
    for f in files:
        a, b = torch_model.predict(f), model.predict(f)
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < TOLERANCE
        assert abs(a.ood_score - b.ood_score) < 1e-3 * max(1.0, a.ood_score)


def test_second_load_reuses_the_cached_graph(first_load, cache_env, monkeypatch):
    graph, _ = _files(cache_env, runtime.graph_key(first_load[0].metadata))
    inode = graph.stat().st_ino
    calls = _count_exports(monkeypatch)
    again = load_model(CHEST)
    assert calls == [] and (again.backend, again.runtime.graph) == ("onnxruntime", "cache")
    assert graph.stat().st_ino == inode  # not rewritten


def test_graph_key_follows_weights_metadata_and_exporter(first_load, monkeypatch):
    meta = first_load[0].metadata
    key = runtime.graph_key(meta)
    assert runtime.graph_key(json.loads(json.dumps(meta))) == key
    assert runtime.graph_key({**meta, "weights_sha256": "0" * 64}) != key
    assert runtime.graph_key({**meta, "calibration": {"temperature": 1.5}}) != key
    monkeypatch.setattr(runtime, "EXPORTER_VERSION", runtime.EXPORTER_VERSION + 1)
    assert runtime.graph_key(meta) != key


def _damaged_copy(first_load, tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    cache = Path(shutil.copytree(first_load[1], tmp_path / "cache"))
    monkeypatch.setenv("PRIVMED_CACHE", str(cache))
    monkeypatch.delenv("PRIVMED_ONNX", raising=False)
    monkeypatch.setattr(runtime, "_said", set())
    graph, record = _files(cache, runtime.graph_key(first_load[0].metadata))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit in the weights of the graph: still a loadable graph
    graph.write_bytes(bytes(data))
    return cache, graph, record


def test_damaged_cached_graph_is_exported_again(first_load, tmp_path, monkeypatch, caplog):
    _, graph, record = _damaged_copy(first_load, tmp_path, monkeypatch)
    calls = _count_exports(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="privmed.inference.runtime"):
        m = load_model(CHEST)
    assert calls == [1] and (m.backend, m.runtime.graph) == ("onnxruntime", "cache")
    assert sha256_file(graph) == json.loads(record.read_text())["sha256"]
    assert "does not match its recorded SHA-256" in caplog.text


def _no_export(*a, **k):
    raise RuntimeError("no export")


def test_damaged_cached_graph_is_never_served(first_load, tmp_path, monkeypatch):
    """When the export that would replace it fails too, torch serves: never the damaged bytes."""
    _, graph, record = _damaged_copy(first_load, tmp_path, monkeypatch)
    served = []
    monkeypatch.setattr(runtime, "session", lambda g, *a: served.append(g))
    monkeypatch.setattr(runtime, "write_graph", _no_export)
    m = load_model(CHEST)
    assert (m.backend, m.session, served) == ("torch", None, [])


def test_failed_export_serves_torch_says_why_once_and_is_not_retried(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRIVMED_ONNX", raising=False)
    monkeypatch.setattr(runtime, "_said", set())
    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise RuntimeError("ONNX export differs from torch by 3.00e-03 (> 0.0001); not used")

    monkeypatch.setattr(runtime, "write_graph", failing)
    with caplog.at_level(logging.WARNING, logger="privmed.inference.runtime"):
        first, second = load_model(CHEST), load_model(CHEST)
    assert first.backend == second.backend == "torch" and "differs from torch" in first.runtime.reason
    assert calls == [1]  # the failure is recorded in the cache: the second load does not export again
    assert len([r for r in caplog.records if "served by torch" in r.getMessage()]) == 1
    assert runtime.expected(CHEST, first.metadata) == "torch"


def test_onnx_off_serves_torch_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRIVMED_CACHE", str(cache))
    monkeypatch.setenv("PRIVMED_ONNX", "0")
    m = load_model(CHEST)
    assert (m.backend, m.session, m.info["runtime"]) == ("torch", None, "torch")
    assert not cache.exists() or not list(cache.glob("onnx-*"))
    assert runtime.expected(CHEST, m.metadata) == "torch"


def test_signed_serving_exports_into_memory_only(tmp_path, monkeypatch):
    """Where bundles must be signed, only signed files decide predictions: no graph read from disk."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRIVMED_CACHE", str(cache))
    monkeypatch.delenv("PRIVMED_ONNX", raising=False)
    m = Model(CHEST, local_graphs=False)
    assert (m.backend, m.runtime.graph) == ("onnxruntime", "memory")
    assert not cache.exists() or not list(cache.glob("onnx-*"))


LOAD = """
import json, sys
from privmed.inference import runtime
from privmed.inference.predictor import load_model
calls, real = [], runtime.write_graph
runtime.write_graph = lambda *a, **k: calls.append(1) or real(*a, **k)
m = load_model(sys.argv[1])
print(json.dumps({"backend": m.backend, "graph": m.runtime.graph, "exports": len(calls)}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the cross-process lock needs fcntl")
def test_two_processes_loading_at_once_share_one_checked_export(tmp_path):
    env = {**os.environ, "PRIVMED_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("PRIVMED_ONNX", None)
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(CHEST)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    out = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert [(o["backend"], o["graph"]) for o in out] == [("onnxruntime", "cache")] * 2
    assert sum(o["exports"] for o in out) == 1  # the second waited for the first and read its graph
    assert len(list((tmp_path / "cache").glob("onnx-*.onnx"))) == 1


def test_views_say_which_runtime_serves(first_load, cache_env, monkeypatch, capsys):
    from privmed.cli import main
    from privmed.inference.registry import Registry

    calls = _count_exports(monkeypatch)
    main(["models", "--json", "--dir", str(CHEST.parent)])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[CHEST.name]["runtime"] == "onnxruntime"
    reg = Registry(extra=[CHEST], scan_default=False)
    entry = reg.entries()[0]
    assert reg.runtime(entry) == "onnxruntime"  # before loading: what it will load with
    assert reg.model(entry).backend == reg.runtime(entry) == "onnxruntime" and calls == []
    monkeypatch.setenv("PRIVMED_ONNX", "0")
    main(["models", "--json", "--dir", str(CHEST.parent)])
    assert {r["name"]: r for r in json.loads(capsys.readouterr().out)}[CHEST.name]["runtime"] == "torch"
