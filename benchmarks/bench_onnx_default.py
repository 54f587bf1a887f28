"""What a default bundle costs to load and to serve as it ships (no ``model.onnx`` in the bundle).

Load times, in this process after the imports (so they exclude importing torch and onnxruntime):
the first load with an empty cache (``PRIVMED_CACHE`` set to a fresh temporary folder: for ONNX
Runtime this includes the export into the cache and its check against the torch weights), a second
load (the cached graph, hash-checked), and a load with ``PRIVMED_ONNX=0`` (torch). Then
``Model.predict`` per image (decode, quality gate, preprocess, forward, OOD score) over ``--n`` real
chest X-ray JPEGs, the torch model and the default model alternating image by image so that a
change in the machine's load hits both alike.

    python benchmarks/bench_onnx_default.py [--bundle chest_xray_pneumonia] [--n 50] [--torch-threads 1]

``--torch-threads``: torch's intra-op threads (default: torch's own choice, one per core); 1 serves
better on a busy shared machine (``PRIVMED_TORCH_THREADS``, docs/SERVING.md).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="chest_xray_pneumonia")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--torch-threads", type=int)
    a = ap.parse_args(argv)
    if a.torch_threads:
        import torch

        torch.set_num_threads(a.torch_threads)
    os.environ["PRIVMED_CACHE"] = tempfile.mkdtemp(prefix="privmed-bench-cache-")
    os.environ.pop("PRIVMED_ONNX", None)

    from privmed.config import default_data_root
    from privmed.inference.predictor import load_model

    try:  # import them before timing any load
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    test = (a.data_root or default_data_root()) / "chest_xray_pneumonia" / "test"
    files = sorted(test.glob("*/*"))
    if not files:
        raise SystemExit(f"no chest X-ray test images under {test}; pass --data-root DATASETS")
    files = files[:: max(1, len(files) // a.n)][: a.n]
    _, t_first = timed(lambda: load_model(a.bundle))
    default, t_warm = timed(lambda: load_model(a.bundle))
    os.environ["PRIVMED_ONNX"] = "0"
    torch_model, t_torch = timed(lambda: load_model(a.bundle))
    os.environ.pop("PRIVMED_ONNX")
    print(f"bundle {a.bundle}; default runtime {default.backend}; cache {os.environ['PRIVMED_CACHE']}")
    print(f"load: first (empty cache) {t_first:.2f} s, second {t_warm:.2f} s, PRIVMED_ONNX=0 {t_torch:.2f} s")
    for f in files[:3]:  # warm-up
        torch_model.predict(f), default.predict(f)
    ms = {"torch": [], "default": []}
    diff = 0.0
    for f in files:
        pt, tt = timed(lambda: torch_model.predict(f))
        pd, td = timed(lambda: default.predict(f))
        ms["torch"].append(tt * 1000)
        ms["default"].append(td * 1000)
        diff = max(diff, max(abs(pt.probabilities[k] - pd.probabilities[k]) for k in pt.probabilities))
    for k, v in ms.items():
        name = torch_model.backend if k == "torch" else default.backend
        print(f"Model.predict, {name:12} ({k}): median {np.median(v):.1f} ms, mean {np.mean(v):.1f} ms, "
              f"p90 {np.percentile(v, 90):.1f} ms over {len(v)} images")
    print(f"speed-up (median): {np.median(ms['torch']) / np.median(ms['default']):.2f}x; max |probability "
          f"difference| {diff:.2e}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
