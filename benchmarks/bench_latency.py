"""Latency of one image, bytes -> calibrated probabilities, torch vs ONNX Runtime.

For each back end: the bare network forward (preprocessed tensor -> logits + embedding) and the
whole prediction path (decode -> quality gate -> preprocess -> forward -> OOD score -> probabilities),
p50 and p99 over real 224x224 chest X-ray JPEGs, one request at a time. The bundle is copied to a
temporary folder and exported to ONNX there (the original is not modified).

    python benchmarks/bench_latency.py [--bundle PATH] [--n 200] [--append docs/notebook/BENCHMARKS.md]
    python benchmarks/bench_latency.py --device cuda      # + torch CUDA and ONNX Runtime CUDA provider

``--device cuda`` adds the bare forward on the GPU, images/s at batch 1 and 32, for torch (CUDA
build) and ONNX Runtime's CUDAExecutionProvider (the ``onnxruntime-gpu`` package), each only when
present, with a message saying what is missing otherwise (the paper's 43.6 FPS was on an RTX 3060).
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


def gpu_throughput(bundle: Path, net, x1: torch.Tensor, repeats: int = 50) -> tuple[dict, list[str]]:
    """images/s at batch 1 and 32 on CUDA for torch and ONNX Runtime; notes for what is absent."""
    rows, notes = {}, []
    batches = {b: x1.repeat(b, 1, 1, 1) for b in (1, 32)}
    if torch.cuda.is_available():
        gnet = net.to("cuda").eval()
        name = torch.cuda.get_device_name(0)

        def run_torch(x):
            with torch.no_grad():
                gnet.forward_with_embedding(x)
            torch.cuda.synchronize()

        rows[f"torch cuda ({name})"] = {b: _ips(run_torch, x.to("cuda"), b, repeats) for b, x in batches.items()}
        net.to("cpu")
    else:
        notes.append(f"torch: no CUDA device (torch {torch.__version__}, cuda build: {torch.version.cuda or 'no'}); "
                     "install a CUDA build of torch on a GPU machine")
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            sess = ort.InferenceSession(str(bundle / "model.onnx"),
                                        providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                rows["onnxruntime CUDAExecutionProvider"] = {
                    b: _ips(lambda x: sess.run(None, {"input": x}), x.numpy(), b, repeats) for b, x in batches.items()}
            else:
                notes.append("onnxruntime: the CUDA provider is installed but did not load (no GPU or driver)")
        else:
            notes.append(f"onnxruntime {ort.__version__}: no CUDAExecutionProvider (providers: "
                         f"{', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu on a GPU machine")
    except ImportError:
        notes.append("onnxruntime not installed")
    return rows, notes


def _ips(fn, x, batch: int, repeats: int) -> float:
    for _ in range(5):
        fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return batch * repeats / (time.perf_counter() - t)


def main(argv=None):
    from privmed.bundle.format import read_metadata
    from privmed.config import bundles_dir, default_data_root
    from privmed.data.read import load_image
    from privmed.inference.onnx_export import export
    from privmed.inference.predictor import Model

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--append", type=Path)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
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
        gpu_rows, gpu_notes = gpu_throughput(bundle, m.net, xs[0]) if a.device == "cuda" else ({}, [])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"### Prediction latency (bytes -> probabilities), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `python benchmarks/bench_latency.py --bundle {a.bundle} --n {a.n}`  ",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, shared with "
        f"other work (load average {os.getloadavg()[0]:.1f} at the end); torch {torch.__version__}, onnxruntime "
        f"{block['onnxruntime_version']}.  ",
        f"Bundle: `{meta.model_id}` (model `{meta.model.name}`, input "
        f"{meta.input.height}x{meta.input.width}); {len(blobs)} real chest X-ray JPEGs of "
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
    if a.device == "cuda":
        lines += ["GPU, bare forward (logits + embedding), images/s:", ""]
        if gpu_rows:
            lines += ["| back end | batch 1 | batch 32 |", "|---|---|---|"]
            lines += [f"| {k} | {v[1]:.1f} | {v[32]:.1f} |" for k, v in gpu_rows.items()]
        lines += [f"- not measured: {n}" for n in gpu_notes] + [""]
    text = "\n".join(lines)
    print(text)
    if a.append:
        a.append.parent.mkdir(parents=True, exist_ok=True)
        with a.append.open("a") as f:
            f.write(("\n" if a.append.exists() and a.append.stat().st_size else "# Benchmarks\n\n") + text)


if __name__ == "__main__":
    main()
