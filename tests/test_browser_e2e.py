"""End to end in a real headless Chromium: ``privmed app`` on a free localhost port, upload a real
chest X-ray, see a prediction. Skips (saying why) when Chromium or Playwright is missing."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PRIVMED_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


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


@pytest.mark.browser
@pytest.mark.slow
def test_upload_xray_in_chromium(xray_bundle, data_root, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PRIVMED_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    xray = sorted((data_root / "chest_xray_pneumonia" / "test").glob("*/*"))
    if not xray:
        pytest.skip("chest_xray_pneumonia test images not found")
    port = free_port()
    exe = shutil.which("privmed") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "privmed.cli"]
    env = dict(os.environ, PRIVMED_BUNDLES=str(tmp_path / "none"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("PRIVMED_API_URL", None)
    env.pop("PRIVMED_APP_PASSWORD", None)
    proc = subprocess.Popen(cmd + ["app", "--port", str(port), "--bundle", str(xray_bundle)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                page.get_by_text("Privacy ledger").first.wait_for(state="attached", timeout=60_000)
                page.locator("input[type=file]").first.set_input_files(str(xray[0]))
                page.get_by_text("Model output").first.wait_for(timeout=90_000)
                page.get_by_text("Download FHIR report").first.wait_for(timeout=30_000)
                body = page.inner_text("body")
                page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            finally:
                browser.close()
        assert xray[0].name in body
        import json

        classes = json.loads((xray_bundle / "metadata.json").read_text())["classes"]
        assert any(c in body for c in classes)
        assert "Image quality" in body and "Download FHIR report" in body
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
