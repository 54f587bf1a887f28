"""fp32 vs int8 ONNX Runtime forward, side by side: the two sessions are timed in alternation (same
load on a shared machine), batch 1 and batch 32, on real preprocessed images of the bundle's test split.

    python benchmarks/bench_int8.py BUNDLE [--repeats 200]
Needs BUNDLE/model.onnx (privmed onnx) and BUNDLE.local/model.int8.onnx (privmed quantize)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from privmed.config import default_data_root
from privmed.data.datasets import open_dataset
from privmed.inference.onnx_export import session
from privmed.inference.predictor import load_model
from privmed.inference.quantize import INT8_FILE, RECORD_FILE, _tensors, local_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    model = load_model(a.bundle)
    recs = open_dataset(model.metadata["dataset"], default_data_root()).records("test")[:32]
    x = _tensors(model, recs)
    s = {"fp32": session(a.bundle / "model.onnx", a.threads or None),
         "int8": session(local_dir(a.bundle) / INT8_FILE, a.threads or None)}
    out = {}
    for batch, reps in ((1, a.repeats), (32, max(5, a.repeats // 20))):
        xb = x[:batch]
        t = {k: [] for k in s}
        for _ in range(3):
            for sess in s.values():
                sess.run(None, {"input": xb})
        for _ in range(reps):
            for k, sess in s.items():  # alternate: both see the same background load
                t0 = time.perf_counter()
                sess.run(None, {"input": xb})
                t[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v) * 1000) for k, v in t.items()}
        out[f"batch{batch}"] = {"fp32_ms": round(med["fp32"], 2), "int8_ms": round(med["int8"], 2),
                                "speedup": round(med["fp32"] / med["int8"], 2),
                                "fp32_images_per_s": round(batch * 1000 / med["fp32"], 1),
                                "int8_images_per_s": round(batch * 1000 / med["int8"], 1)}
    rec = json.loads((local_dir(a.bundle) / RECORD_FILE).read_text())
    out["accuracy"] = rec["evaluation"]
    out["accepted"] = rec["accepted"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
