"""Which runtime serves a loaded bundle, and the graph cache that lets a bundle without ``model.onnx``
(the committed default bundles ship none) serve through ONNX Runtime.

The order: ``BUNDLE.local/model.int8.onnx`` when accepted and current (``privmed quantize``); the
bundle's own ``model.onnx`` when current and timed faster than torch (``privmed onnx``); else a graph
exported from the loaded weights on first load and checked against them exactly as ``privmed onnx``
checks (``onnx_export.write_graph``: max abs difference <= 1e-4 on logits and embedding). That graph
goes to the cache (``privmed.cache``), never into the bundle, which may be read-only or signed:
``onnx-KEY.onnx`` beside ``onnx-KEY.json``, its record. KEY is the SHA-256 of the weights' SHA-256,
the canonical metadata, the exporter's version and the versions of privmed, torch, onnx and
onnxruntime, so a changed bundle or toolchain never meets an old graph; the record's SHA-256 of the
graph is checked on the very bytes handed to ONNX Runtime, and a graph that fails it is exported
again. Writers take a lock and rename a finished file into place, so a second process never reads a
half-written graph. Where bundles must be signed (``local_graphs=False``) the graph is exported into
memory on each load and never read from disk: only signed files decide the predictions.

Torch serves with ``PRIVMED_ONNX=0``, without onnxruntime, or when the export or its check fails: the
log says why once per process, and a failed export is recorded so later loads do not retry it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as dist
from importlib.util import find_spec
from pathlib import Path

import torch

import privmed.cache as cache
from privmed.files import atomic_path, atomic_write_text, sha256_bytes, sha256_file
from privmed.inference.int8 import usable_int8
from privmed.inference.onnx_export import ONNX_FILE, TOLERANCE, onnx_mode, session, timed_slower, usable, write_graph

log = logging.getLogger(__name__)
EXPORTER_VERSION = 1  # bump when write_graph changes what it writes
_said: set[str] = set()
_export_lock = threading.Lock()  # one export at a time in a process (torch.onnx.export is not reentrant)


@dataclass
class Runtime:
    backend: str  # "onnxruntime-int8", "onnxruntime" or "torch"
    session: object | None = None  # the ONNX Runtime session; None for torch
    graph: str | None = None  # where the graph came from: "local int8", "bundle", "cache", "memory"
    reason: str | None = None  # why torch serves


def choose(path: Path, meta: dict, net, *, local_graphs: bool = True) -> Runtime:
    """The runtime for a bundle whose weights ``net`` were loaded (and checksum-verified) from ``path``."""
    path = Path(path)
    if onnx_mode() == "off":
        return Runtime("torch", reason="PRIVMED_ONNX=0")
    if find_spec("onnxruntime") is None:
        return _torch(meta, "onnxruntime is not installed (pip install 'privmed[serve]')", logging.INFO)
    try:
        int8 = usable_int8(path, meta) if local_graphs else None
        if int8 is not None:
            return Runtime("onnxruntime-int8", session(int8), "local int8")
        if usable(path, meta):
            return Runtime("onnxruntime", session(path / ONNX_FILE), "bundle")
    except Exception as e:  # an unreadable graph beside or in the bundle: the cache path still serves
        _say(f"{path}:graph", f"bundle '{meta.get('model_id')}': its ONNX graph did not load ({_why(e)})")
    if timed_slower(path, meta):
        return Runtime("torch", reason="the bundle's model.onnx was timed slower than torch")
    try:
        return exported(meta, net, persist=local_graphs)
    except Exception as e:  # whatever goes wrong in the cache or ONNX Runtime, the weights still serve
        return _torch(meta, f"its exported ONNX graph did not load ({_why(e)})")


def expected(path: Path, meta: dict, *, local_graphs: bool = True) -> str:
    """The backend ``choose`` would pick, without loading or exporting anything (``privmed models``)."""
    if onnx_mode() == "off" or find_spec("onnxruntime") is None:
        return "torch"
    if local_graphs and usable_int8(path, meta) is not None:
        return "onnxruntime-int8"
    if usable(path, meta):
        return "onnxruntime"
    if timed_slower(path, meta):
        return "torch"
    key = graph_key(meta)
    try:  # a recorded failed export serves torch; else the cached graph, or one exported on first load
        failed = bool(json.loads((cache.cache_dir() / f"onnx-{key}.json").read_text()).get("error"))
    except (OSError, ValueError, AttributeError):
        failed = False
    return "torch" if failed else "onnxruntime"


def exported(meta: dict, net, *, persist: bool = True) -> Runtime:
    """A graph of ``net`` checked against it: from the cache (``persist``) or exported into memory."""
    with _export_lock:
        if not persist:
            return _in_memory(meta, net)
        try:
            return _from_cache(cache.ensure_dir(), meta, net)
        except OSError as e:  # a read-only or full cache: the graph still serves, from memory
            _say(f"{cache.cache_dir()}:dir", f"the cache {cache.cache_dir()} is not usable ({_why(e)}); ONNX "
                                             "graphs are exported into memory on every load")
            return _in_memory(meta, net)


def graph_key(meta: dict) -> str:
    """SHA-256 naming the exact graph a bundle exports to. ``meta["weights_sha256"]`` was checked
    against the weights file when the bundle loaded; the canonical metadata covers the architecture,
    classes, input size and the frozen backbone's checksum."""
    canon = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode()
    parts = {"weights_sha256": meta.get("weights_sha256"), "metadata_sha256": sha256_bytes(canon),
             "exporter": EXPORTER_VERSION, "torch": torch.__version__,
             **{name: _version(name) for name in ("privmed", "onnx", "onnxruntime")}}
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def _from_cache(d: Path, meta: dict, net) -> Runtime:
    key = graph_key(meta)
    graph, record = d / f"onnx-{key}.onnx", d / f"onnx-{key}.json"
    hit = _read(graph, record, key)
    if hit is None:
        with _file_lock(d / f"onnx-{key}.lock"):
            hit = _read(graph, record, key)  # another process may have written it while this one waited
            if hit is None:
                hit = _export_to_cache(graph, record, key, meta, net)
    rec, sess = hit
    if sess is None:
        return _torch(meta, f"its ONNX export failed ({rec.get('error')}); PRIVMED_ONNX=0 hides this message")
    return Runtime("onnxruntime", sess, "cache")


def _read(graph: Path, record: Path, key: str) -> tuple[dict, object] | None:
    """(record, session) of a cached graph whose bytes match its record, (record, None) for a recorded
    failed export, None when there is nothing usable (missing, or damaged: then it is said once)."""
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("key") != key:
        return None
    if rec.get("error"):
        return rec, None
    try:
        data = graph.read_bytes()
    except OSError:
        return None
    if sha256_bytes(data) != rec.get("sha256"):
        _say(f"{graph}:damaged", f"cached ONNX graph {graph.name} does not match its recorded SHA-256 "
                                 "(damaged or replaced); it is not used and is exported again")
        return None
    for p in (graph, record):  # a hit refreshes the cache's LRU clock
        try:
            os.utime(p)
        except OSError:
            pass
    return rec, session(data)  # the bytes checked are the bytes run


def _export_to_cache(graph: Path, record: Path, key: str, meta: dict, net) -> tuple[dict, object]:
    rec = {"key": key, "model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
           "exporter": EXPORTER_VERSION, "tolerance": TOLERANCE}
    try:
        with atomic_path(graph, private=True) as tmp:  # renamed into place only once checked
            diff, sess = _write(tmp, meta, net)
            rec.update(sha256=sha256_file(tmp), max_abs_diff=diff, bytes=tmp.stat().st_size)
    except OSError as e:  # disk full, permissions: not the graph's fault, try again next load
        return {"error": _why(e)}, None
    except Exception as e:  # the model does not export, or the graph differs from torch: remember it
        rec["error"] = _why(e)
        sess = None
    else:
        log.info("bundle '%s': ONNX graph exported into the cache as %s (max abs difference to torch %.1e)",
                 meta.get("model_id"), graph.name, rec["max_abs_diff"])
    atomic_write_text(record, json.dumps(rec, indent=2), private=True)
    cache.evict(keep=graph)
    return rec, sess


def _in_memory(meta: dict, net) -> Runtime:
    with tempfile.TemporaryDirectory(prefix="privmed-onnx-") as tmp:
        try:
            _, sess = _write(Path(tmp) / ONNX_FILE, meta, net)
        except Exception as e:
            return _torch(meta, f"its ONNX export failed ({_why(e)})")
    return Runtime("onnxruntime", sess, "memory")


def _write(out: Path, meta: dict, net) -> tuple[float, object]:
    with warnings.catch_warnings():  # the tracer's notes on constant shapes are not for the server log
        warnings.simplefilter("ignore")
        return write_graph(net, meta, out)


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes (where ``fcntl`` exists; elsewhere two processes may both
    export, which costs time but stays correct: each renames a whole, checked file into place)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _torch(meta: dict, why: str, level: int = logging.WARNING) -> Runtime:
    _say(f"{meta.get('weights_sha256')}:{why}", f"bundle '{meta.get('model_id')}' is served by torch: {why}", level)
    return Runtime("torch", reason=why)


def _say(once: str, message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` once per process (bundle ids, file names and exception text: no patient data)."""
    if once not in _said:
        _said.add(once)
        log.log(level, message)


def _why(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def _version(name: str) -> str:
    try:
        return dist.version(name)
    except dist.PackageNotFoundError:
        return "none"
