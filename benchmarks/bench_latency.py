"""Latency of one image, bytes -> calibrated probabilities, torch vs ONNX Runtime.

For each back end: the bare network forward (preprocessed tensor -> logits + embedding) and the
whole prediction path (decode -> quality gate -> preprocess -> forward -> OOD score -> probabilities),
p50 and p99 over real 224x224 chest X-ray JPEGs, one request at a time. The bundle is copied to a
temporary folder and exported to ONNX there (the original is not modified).

    python benchmarks/bench_latency.py [--bundle PATH] [--n 200] [--append docs/BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def measure(fn, items, warmup=5):
    for it in items[:warmup]:
        fn(it)
    out = []
    for it in items:
        t = time.perf_counter()
        fn(it)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None):
    from privmed.config import bundles_dir, default_data_root
    from privmed.data.read import load_image
    from privmed.inference.bundle import read_metadata
    from privmed.inference.onnx_export import export
    from privmed.inference.predictor import Model

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--append", type=Path)
    a = ap.parse_args(argv)

    files = sorted((a.data_root / "chest_xray_pneumonia" / "test").glob("*/*"))
    files = files[:: max(1, len(files) // a.n)][: a.n]
    blobs = [f.read_bytes() for f in files]
    sizes = {load_image(b).pixels.shape for b in blobs[:5]}
    tmp = Path(tempfile.mkdtemp(prefix="privmed-bench-"))
    try:
        bundle = Path(shutil.copytree(a.bundle, tmp / "bundle"))
        for p in bundle.glob("model.onnx*"):
            p.unlink()
        block = export(bundle)
        meta = read_metadata(bundle)
        rows = {}
        default_threads = torch.get_num_threads()
        for backend, threads in (("torch", default_threads), ("torch", 1), ("onnxruntime", None)):
            os.environ["PRIVMED_ONNX"] = "on" if backend == "onnxruntime" else "off"
            torch.set_num_threads(threads or default_threads)
            m = Model(bundle)
            assert m.backend == backend, (m.backend, backend)
            xs = [m.tensor(load_image(b)) for b in blobs]
            fwd = measure(m.logits_and_embedding, xs)
            e2e = measure(lambda b: m.predict(b), blobs)
            rows[f"{backend} ({threads} thread{'s' if threads > 1 else ''})" if threads else backend] = (fwd, e2e)
        os.environ.pop("PRIVMED_ONNX", None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"### Prediction latency (bytes -> probabilities), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `python benchmarks/bench_latency.py --bundle {a.bundle} --n {a.n}`  ",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, shared with "
        f"other work (load average {os.getloadavg()[0]:.1f} at the end); torch {torch.__version__}, onnxruntime "
        f"{block['onnxruntime_version']}.  ",
        f"Bundle: `{meta.get('model_id')}` (model `{(meta.get('model') or {}).get('name')}`, input "
        f"{meta['input']['height']}x{meta['input']['width']}); {len(blobs)} real chest X-ray JPEGs of "
        f"{sorted(sizes)[0][1]}x{sorted(sizes)[0][0]} px from chest_xray_pneumonia/test, one at a time. ONNX "
        f"export max abs difference to torch: {block['max_abs_diff']:.1e}.",
        "",
        "| back end | forward p50 (ms) | forward p99 (ms) | bytes->probs p50 (ms) | bytes->probs p99 (ms) "
        "| end-to-end / forward (p50) |",
        "|---|---|---|---|---|---|",
    ]
    for backend, (fwd, e2e) in rows.items():
        lines.append(f"| {backend} | {pct(fwd, 50):.1f} | {pct(fwd, 99):.1f} | {pct(e2e, 50):.1f} | {pct(e2e, 99):.1f} "
                     f"| {pct(e2e, 50) / pct(fwd, 50):.2f} |")
    t = min(pct(v[1], 50) for k, v in rows.items() if k.startswith("torch"))
    o = pct(rows["onnxruntime"][1], 50)
    lines += ["", f"ONNX Runtime vs the faster torch setting, whole path p50: {t / o:.2f}x. The rest of the path is "
              "decoding, the quality gate (OpenCV), resizing and the OOD score.", ""]
    text = "\n".join(lines)
    print(text)
    if a.append:
        a.append.parent.mkdir(parents=True, exist_ok=True)
        with a.append.open("a") as f:
            f.write(("\n" if a.append.exists() and a.append.stat().st_size else "# Benchmarks\n\n") + text)


if __name__ == "__main__":
    main()
