"""The app's live camera mode end to end in a real headless Chromium whose fake camera plays a
640x480 .y4m made here from real chest X-rays of the test split: frames travel over WebRTC
(localhost, no STUN), are predicted, and the readout shows the count and a class label.
Skips (saying why) when Chromium or Playwright is missing."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import require_dataset
from support.browser_check import CHROMIUM, live_session, running_app, write_y4m


@pytest.mark.browser
@pytest.mark.slow
def test_live_camera_in_chromium(xray_bundle, data_root, tmp_path):
    meta = json.loads((xray_bundle / "metadata.json").read_text())
    xrays = sorted((require_dataset(data_root, meta["dataset"]) / meta["dataset"] / "test").glob("*/*"))[::97][:3]
    assert xrays, f"{meta['dataset']} has no test images"
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PRIVMED_CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    video = write_y4m(tmp_path / "camera.y4m", xrays, seconds_each=1.0)
    log = tmp_path / "app.log"
    with running_app(xray_bundle, tmp_path / "none", log=log) as url:
        res = live_session(url, video, seconds=3, min_predicted=5, screenshot=tmp_path / "live.png",
                           start_timeout=120)
    last, text = res["last"], res["text"]
    assert last["predicted"] >= 5 and last["received"] >= last["predicted"] + last["dropped"]
    assert last["latency_ms"] is not None and last["input_fps"] > 0
    shown = [line for line in text.splitlines() if line.startswith(("Live result:", "latest frame:"))]
    assert shown, text[-800:]
    assert any(c in line for line in shown for c in meta["classes"])  # a class label is on screen
    assert not any(x.name in log.read_text(errors="replace") for x in xrays)
