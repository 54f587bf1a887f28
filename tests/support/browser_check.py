"""Drive the app's live camera mode in a real headless Chromium with a fake camera (a .y4m file made
from real images): used by the browser tests and ``benchmarks/bench_live.py``. Needs Chromium and
the playwright package."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from privmed.config import settings

CHROMIUM = settings().chromium  # PRIVMED_CHROMIUM
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
READOUT = re.compile(r"Frames predicted: (\d+) · dropped: (\d+) of (\d+) · ([\d.]+) FPS predicted "
                     r"\(camera ([\d.]+) FPS\) · latency (n/a|[\d.]+ ms) "
                     r"\(median; of which prediction (n/a|[\d.]+ ms)\)")


def write_y4m(path: Path, images: list, *, width: int = 640, height: int = 480, fps: int = 30,
              seconds_each: float = 1.0) -> Path:
    """A YUV4MPEG2 (C420) video: each image (a path or grey array) letterboxed into the frame and
    shown for ``seconds_each``, drifting 1 px per frame as a hand-held camera would."""
    import cv2

    per = max(1, int(round(fps * seconds_each)))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        chroma = np.full((height // 2) * (width // 2), 128, np.uint8).tobytes()
        for im in images:
            g = cv2.imread(str(im), cv2.IMREAD_GRAYSCALE) if not isinstance(im, np.ndarray) else im
            if g is None:
                raise ValueError(f"cannot read image {im}")
            side = min(width, height)
            g = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA)
            for k in range(per):
                frame = np.zeros((height, width), np.uint8)
                x0 = min(max((width - side) // 2 + (k % 8) - 4, 0), width - side)
                frame[(height - side) // 2:(height - side) // 2 + side, x0:x0 + side] = g
                f.write(b"FRAME\n" + frame.tobytes() + chroma + chroma)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"privmed app exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


@contextlib.contextmanager
def running_app(bundle: Path, bundles_dir: Path, log: Path | None = None):
    """``privmed app --bundle BUNDLE`` on a free localhost port (only that bundle); yields its URL."""
    port = free_port()
    exe = shutil.which("privmed") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "privmed.cli"]
    env = dict(os.environ, PRIVMED_BUNDLES=str(bundles_dir), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("PRIVMED_API_URL", None)
    env.pop("PRIVMED_APP_PASSWORD", None)
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd + ["app", "--port", str(port), "--bundle", str(bundle)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        if log:
            out.close()


def parse_readout(text: str) -> dict | None:
    m = READOUT.search(text)
    if not m:
        return None
    lat, busy = m.group(6), m.group(7)
    return {"predicted": int(m.group(1)), "dropped": int(m.group(2)), "received": int(m.group(3)),
            "fps": float(m.group(4)), "input_fps": float(m.group(5)),
            "predict_ms": None if busy == "n/a" else float(busy.split()[0]),
            "latency_ms": None if lat == "n/a" else float(lat.split()[0])}


def live_session(url: str, y4m: Path, *, seconds: float, min_predicted: int = 1, screenshot: Path | None = None,
                 start_timeout: float = 90) -> dict:
    """Open the app, start the live tab with ``y4m`` as the camera, wait until ``min_predicted``
    frames were predicted, then sample the readout for ``seconds``. Returns the last readout,
    the samples and the page text."""
    from playwright.sync_api import sync_playwright

    args = ARGS + FAKE_CAMERA + [f"--use-file-for-fake-video-capture={y4m}"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Privacy ledger").first.wait_for(state="attached", timeout=60_000)
            page.get_by_role("tab", name="Live camera").click()
            frame = page.frame_locator("iframe[title*='streamlit_webrtc']").first
            frame.get_by_role("button", name="Start").click(timeout=60_000)
            end = time.time() + start_timeout
            first = None
            while time.time() < end:
                first = parse_readout(page.inner_text("body"))
                if first and first["predicted"] >= min_predicted:
                    break
                time.sleep(0.5)
            else:
                raise TimeoutError(f"fewer than {min_predicted} frames predicted in {start_timeout}s "
                                   f"(readout: {first})")
            samples = [first]
            t0 = time.time()
            while time.time() - t0 < seconds:
                time.sleep(1.0)
                s = parse_readout(page.inner_text("body"))
                if s:
                    samples.append(s)
            text = page.inner_text("body")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"first": first, "last": samples[-1], "samples": samples, "seconds": time.time() - t0, "text": text}
