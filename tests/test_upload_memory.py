"""Memory under large concurrent uploads, measured on a real server process.

Before: every upload was decoded outside the prediction lock at full size in float (a 40-megapixel
RGB PNG took ~1.6 GB while decoded and checked), so six at once needed ~10 GB. Now concurrent
decodes are bounded (PRIVMED_MAX_DECODES) and huge 8-bit images are reduced while still 1 byte per
pixel: six 40-megapixel PNGs at once raise the server's peak RSS by < 1.3 GB (measured ~0.8 GB with
2 decode slots) and every one gets an answer.
"""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
BOUND_MB = 1300


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def _big_png(w: int = 6400, h: int = 6250) -> bytes:
    g = (np.add.outer(np.arange(h) % 256, np.arange(w) % 256) // 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([g, 255 - g, g // 2], -1)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_six_concurrent_40mp_uploads_bounded_memory(small_bundle, tmp_path):
    png = _big_png()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PRIVMED_BUNDLES=str(tmp_path / "none"), PRIVMED_MAX_DECODES="2",
               PRIVMED_TORCH_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "privmed.cli", "api", "--no-auth", "--port", str(port),
                             "--bundle", str(small_bundle), "--db-url", f"sqlite:///{tmp_path / 'a.db'}",
                             "--log-level", "warning"], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "privmed api exited"
                time.sleep(0.5)
        small = io.BytesIO()
        Image.fromarray(np.full((256, 256), 128, np.uint8)).save(small, "PNG")
        assert httpx.post(url + "/v1/predict", files={"file": ("s.png", small.getvalue(), "image/png")},
                          timeout=60).status_code == 200  # warm: model loaded, first forward done
        base = _peak_rss_mb(proc.pid)

        def one(i):
            return httpx.post(url + "/v1/predict", files={"file": (f"{i}.png", png, "image/png")}, timeout=300)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, range(6)))
        increase = _peak_rss_mb(proc.pid) - base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
    for r in answers:
        assert r.status_code in (200, 413), r.text
        assert r.status_code == 200 or len(r.json()["detail"]) > 15
    assert increase < BOUND_MB, f"peak RSS rose by {increase} MB for six concurrent 40-megapixel uploads"
