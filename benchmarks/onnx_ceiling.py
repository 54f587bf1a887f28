"""Upper bound for the API's images/s: the bare ONNX Runtime forward of a bundle's graph at
batch 1, 8 and 32 (logits + embedding, no decoding, no HTTP), on every core of this machine.

    python benchmarks/onnx_ceiling.py [--bundle PATH] [--repeats 30]

The bundle is copied to a scratch folder and exported there; inputs are real preprocessed chest
X-rays from chest_xray_pneumonia/test (the served preprocessing, ``Model.batch``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    from privmed.config import bundles_dir, default_data_root
    from privmed.data.read import load_image
    from privmed.inference.onnx_export import export, session

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="privmed-ceiling-"))
    try:
        bundle = Path(shutil.copytree(a.bundle, tmp / "bundle"))
        export(bundle)
        from privmed.inference.predictor import Model

        model = Model(bundle)
        files = sorted((default_data_root() / "chest_xray_pneumonia" / "test").glob("*/*"))[::20][:32]
        x = model.batch([load_image(f).pixels for f in files]).numpy().astype(np.float32)
        sess = session(bundle / "model.onnx")
        print(f"bundle {model.metadata.get('model_id')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        print("| batch | ms per batch (median) | images/s |\n|---|---|---|")
        for b in (1, 8, 32):
            xb = x[:b]
            for _ in range(3):
                sess.run(None, {"input": xb})
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                sess.run(None, {"input": xb})
                ts.append(time.perf_counter() - t)
            med = float(np.median(ts))
            print(f"| {b} | {med * 1000:.1f} | {b / med:.1f} |")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
