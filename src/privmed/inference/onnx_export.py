"""Export a bundle's whole network (frozen + trainable) to ``BUNDLE/model.onnx``.

The graph takes ``input`` (N, 1, H, W) float in [0, 1] and returns ``logits`` (N, classes) and
``embedding`` (N, d), the same pair ``SplitModel.forward_with_embedding`` gives (the OOD score needs
the embedding). After export the outputs are compared with torch (max abs difference <= 1e-4 or the
export is refused) and both back ends are timed; the bundle's metadata gets an ``onnx`` block
recording the weights checksum it was made from, the difference and the timings. ``Model`` uses
that graph only when that checksum matches the bundle's weights and ONNX Runtime was faster; a bundle
without one is served from a graph ``write_graph`` exports into the cache (``inference.runtime``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privmed.config import settings
from privmed.files import atomic_path, sha256_file

ONNX_FILE = "model.onnx"
TOLERANCE = 1e-4


class _WithEmbedding(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.frozen = net.frozen
        self.trainable = net.trainable
        self._net = [net]  # not a submodule: keep the export graph free of duplicates

    def forward(self, x):
        return self._net[0].trainable_forward_with_embedding(self.frozen(x))


def session(path: Path | bytes, threads: int | None = None):
    """ONNX Runtime CPU session of a graph file, or of its bytes (read and hash-checked by the caller,
    so the bytes checked are the bytes run). Worker threads do not spin-wait between runs (spinning doubled the
    whole-path latency on a shared 2-core machine: it steals the cores decoding and the quality gate
    need); ``PRIVMED_ORT_SPIN=1`` turns it back on, ``PRIVMED_ORT_THREADS`` sets the thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or settings().ort_threads
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings().ort_spin else "0")
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _time(fn, x, repeats: int) -> float:
    fn(x)
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn(x)
        t.append(time.perf_counter() - s)
    return float(np.median(t) * 1000)


def input_size(meta: dict) -> tuple[int, int]:
    inp = meta.get("input") or {}
    return int(inp.get("height", 224)), int(inp.get("width", 224))


def write_graph(net, meta: dict, out: Path, *, opset: int = 17, check_images: int = 4,
                gen: torch.Generator | None = None) -> tuple[float, object]:
    """Export ``net`` to ``out`` (a temporary path: the caller renames it into place), stamp the
    weights it came from, and check it against torch on ``check_images`` random inputs: raises
    ``RuntimeError`` when any logit or embedding differs by more than ``TOLERANCE``. Returns the
    difference and the ONNX Runtime session. ``privmed onnx`` and the served graph cache both use it."""
    import onnx

    h, w = input_size(meta)
    gen = gen or torch.Generator().manual_seed(0)
    wrapper = _WithEmbedding(net).eval()
    example = torch.rand(2, 1, h, w, generator=gen)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(out), input_names=["input"],
                          output_names=["logits", "embedding"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}})
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    for k, v in {"privmed.weights_sha256": meta.get("weights_sha256") or "",
                 "privmed.model_id": meta.get("model_id") or ""}.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(out))

    sess = session(out)
    x = torch.rand(check_images, 1, h, w, generator=gen)
    with torch.no_grad():
        t_logits, t_emb = net.forward_with_embedding(x)
    o_logits, o_emb = sess.run(["logits", "embedding"], {"input": x.numpy()})
    diff = max(float(np.abs(o_logits - t_logits.numpy()).max()), float(np.abs(o_emb - t_emb.numpy()).max()))
    if diff > TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> {TOLERANCE:g}); not used")
    return diff, sess


def export(bundle_path: str | Path, *, opset: int = 17, repeats: int = 10, check_images: int = 4,
           seed: int = 0) -> dict:
    """Write ``model.onnx``, verify it against torch, time both, record the ``onnx`` block."""
    from privmed.bundle.format import load_bundle, update_metadata

    bundle_path = Path(bundle_path)
    net, bundle = load_bundle(bundle_path)
    meta = bundle.raw
    h, w = input_size(meta)
    gen = torch.Generator().manual_seed(seed)
    out = bundle_path / ONNX_FILE
    with atomic_path(out) as tmp:  # a graph that fails its check never replaces model.onnx
        diff, sess = write_graph(net, meta, tmp, opset=opset, check_images=check_images, gen=gen)

    one = torch.rand(1, 1, h, w, generator=gen)

    def run_torch(t):
        with torch.no_grad():
            net.forward_with_embedding(t)

    torch_ms = _time(run_torch, one, repeats)
    onnx_ms = _time(lambda t: sess.run(None, {"input": t.numpy()}), one, repeats)
    block = {"file": ONNX_FILE, "sha256": sha256_file(out), "opset": opset,
             "weights_sha256": meta.get("weights_sha256"), "max_abs_diff": diff, "tolerance": TOLERANCE,
             "torch_ms": round(torch_ms, 3), "onnxruntime_ms": round(onnx_ms, 3), "faster": bool(onnx_ms < torch_ms),
             "onnxruntime_version": _ort_version(), "outputs": ["logits", "embedding"],
             "input": {"name": "input", "shape": ["batch", 1, h, w], "dtype": "float32"}}
    update_metadata(bundle_path, onnx=block)
    return block


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def onnx_mode() -> str:
    """``PRIVMED_ONNX`` (``Settings.onnx``): "off" (always torch), "on" (the bundle's ``model.onnx``
    even where it was timed slower than torch) or "auto" (default: ONNX Runtime, from the bundle's
    graph when it was timed faster, else from a graph exported into the cache)."""
    return settings().onnx


def usable(bundle_path: Path, meta: dict) -> bool:
    """True when ``model.onnx`` exists, was made from these weights, and was faster than torch."""
    mode = onnx_mode()
    if mode == "off":
        return False
    block = meta.get("onnx") or {}
    path = Path(bundle_path) / ONNX_FILE
    if not (path.is_file() and block.get("weights_sha256") == meta.get("weights_sha256")
            and (mode == "on" or bool(block.get("faster")))):
        return False
    return sha256_file(path) == block.get("sha256")  # a replaced or stale graph is never used


def timed_slower(bundle_path: Path, meta: dict) -> bool:
    """The bundle's own current ``model.onnx`` was timed slower than torch (``privmed onnx``): torch
    serves it under the default ``PRIVMED_ONNX=auto``, as it always has."""
    block = meta.get("onnx") or {}
    return (onnx_mode() == "auto" and (Path(bundle_path) / ONNX_FILE).is_file()
            and block.get("weights_sha256") == meta.get("weights_sha256") and block.get("faster") is False)
