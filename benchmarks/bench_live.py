"""Live camera mode, measured in the browser: ``privmed app`` on localhost, headless Chromium whose fake
camera plays a 640x480 30 FPS .y4m made from real chest X-rays (test split), the live tab started,
the on-screen readout sampled once a second. Reports frames predicted per second (from the
counter's growth), the share of camera frames dropped (newest-frame policy), and latency (frame
arrival at the server -> prediction done, the readout's median). Also the in-process cost (wall and CPU) of one
640x480 frame through the same path (BMP bytes -> decode -> quality gate -> model), as the ceiling.

    python benchmarks/bench_live.py [--bundle PATH] [--seconds 20] [--onnx] [--append docs/notebook/BENCHMARKS.md]

``--onnx`` repeats the browser run with an ONNX Runtime export of the bundle (made in a temporary copy).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser harness: tests/support


def in_process_ms(bundle: Path, frames: list) -> tuple[float, float]:
    """Median wall ms and CPU ms (all threads of this process: little affected by other processes)
    of one frame through LocalBackend.analyse, what the live worker calls."""
    from privmed.app.backend import LocalBackend
    from privmed.inference.stream import frame_bytes

    be = LocalBackend([bundle])
    mid = json.loads((bundle / "metadata.json").read_text()).get("model_id")
    for f in frames[:3]:
        be.analyse(mid, frame_bytes(f), "live-frame.bmp", explain=False)
    wall, cpu = [], []
    for f in frames * 3:
        t, c = time.perf_counter(), time.process_time()
        be.analyse(mid, frame_bytes(f), "live-frame.bmp", explain=False)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def format_ms(frames: list, reps: int = 10) -> dict:
    """Median CPU ms (this thread's CPU time: little affected by other processes on the cores) to
    encode a frame and decode it with the upload reader, per format, the formats interleaved."""
    import cv2

    from privmed.data.read import load_image

    times: dict[str, list] = {"bmp": [], "jpg": [], "png": []}
    for _ in range(reps):
        for f in frames:
            bgr = np.ascontiguousarray(f[:, :, ::-1])
            for ext in times:
                t = time.thread_time()
                load_image(cv2.imencode("." + ext, bgr)[1].tobytes())
                times[ext].append(time.thread_time() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def browser_run(bundle: Path, video: Path, seconds: float, work: Path) -> dict:
    from support.browser_check import live_session, running_app

    with running_app(bundle, work / "none", log=work / f"app-{bundle.name}.log") as url:
        r = live_session(url, video, seconds=seconds, min_predicted=3, start_timeout=120)
    a, b = r["first"], r["last"]
    got = b["received"] - a["received"]
    lat = [s["latency_ms"] for s in r["samples"][1:] if s["latency_ms"] is not None]
    busy = [s["predict_ms"] for s in r["samples"][1:] if s["predict_ms"] is not None]
    return {"fps": (b["predicted"] - a["predicted"]) / r["seconds"], "camera_fps": got / r["seconds"],
            "dropped_share": (b["dropped"] - a["dropped"]) / got if got else None,
            "latency_ms": statistics.median(lat) if lat else None,
            "latency_max_ms": max(lat) if lat else None, "predict_ms": statistics.median(busy) if busy else None,
            "predicted": b["predicted"], "seconds": r["seconds"]}


def main(argv=None) -> int:
    from privmed.config import bundles_dir, default_data_root
    from support.browser_check import CHROMIUM, write_y4m

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--onnx", action="store_true")
    ap.add_argument("--append", type=Path)
    a = ap.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        sys.exit(f"no Chromium at {CHROMIUM}; set PRIVMED_CHROMIUM")
    meta = json.loads((a.bundle / "metadata.json").read_text())
    files = sorted((a.data_root / meta["dataset"] / "test").glob("*/*"))[::100][:4]
    work = Path(tempfile.mkdtemp(prefix="privmed-live-"))
    try:
        video = write_y4m(work / "camera.y4m", files, seconds_each=1.0)
        import cv2

        frames = []
        for f in files:  # the frames of the video, as RGB, for the in-process ceiling
            g = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (480, 480))
            fr = np.zeros((480, 640), np.uint8)
            fr[:, 80:560] = g
            frames.append(np.repeat(fr[:, :, None], 3, 2))
        formats = format_ms(frames)
        runs = {}
        os.environ["PRIVMED_ONNX"] = "off"
        runs["torch"] = {"bundle": a.bundle, "in_process_ms": in_process_ms(a.bundle, frames)}
        if a.onnx:
            from privmed.inference.onnx_export import export

            ob = Path(shutil.copytree(a.bundle, work / "bundle-onnx"))
            export(ob)
            os.environ["PRIVMED_ONNX"] = "on"
            runs["onnxruntime"] = {"bundle": ob, "in_process_ms": in_process_ms(ob, frames)}
        for name, run in runs.items():
            os.environ["PRIVMED_ONNX"] = "on" if name == "onnxruntime" else "off"  # the app inherits it
            run.update(browser_run(run["bundle"], video, a.seconds, work))
            print(name, {k: v for k, v in run.items() if k != "bundle"}, file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    cmd = "python benchmarks/bench_live.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"### Live camera mode in the browser (issue 14), {dt.date.today()}", "",
             f"Command: `{cmd.strip()}`  ",
             f"Machine: 2-core CPU (x86_64), no GPU, shared with other work (load average "
             f"{os.getloadavg()[0]:.1f} at the end); headless Chromium with a fake camera (640x480, 30 FPS .y4m of "
             f"{len(files)} real {meta['dataset']} test images, streamed over WebRTC on localhost), "
             "the app in-process; "
             f"torch {torch.__version__}.  ",
             f"Bundle: `{meta.get('model_id')}`; {a.seconds:g} s sampled after the first predicted frames.", "",
             "| back end | predicted FPS | camera FPS at the server | frames dropped | latency median (ms) | "
             "latency worst sample (ms) | prediction in the app (ms) | one frame in-process: wall / CPU (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        share = f"{100 * r['dropped_share']:.0f} %" if r["dropped_share"] is not None else "n/a"
        lat = f"{r['latency_ms']:.0f}" if r["latency_ms"] is not None else "n/a"
        worst = f"{r['latency_max_ms']:.0f}" if r["latency_max_ms"] is not None else "n/a"
        busy = f"{r['predict_ms']:.0f}" if r["predict_ms"] is not None else "n/a"
        wall, cpu = r["in_process_ms"]
        lines.append(f"| {name} | {r['fps']:.1f} | {r['camera_fps']:.1f} | {share} | {lat} | {worst} | {busy} | "
                     f"{wall:.0f} / {cpu:.0f} |")
    lines += ["", "Frame hand-off (encode a 640x480 RGB frame, decode it with the upload reader; median CPU ms): "
              + ", ".join(f"{k.upper()} {v:.1f}" for k, v in formats.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:  # newest first, under the file's title
        old = a.append.read_text() if a.append.exists() else "# Benchmarks\n"
        head, _, rest = old.partition("\n\n")
        a.append.write_text(f"{head}\n\n{text}\n{rest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
