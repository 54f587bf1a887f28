"""The live camera's per-frame logic (privmed.inference.stream) without a browser: only the newest
frame is predicted, older ones are dropped and counted; smoothing and the abstain state; real
chest X-ray frames through the app's upload path (LocalBackend.analyse)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from privmed.app.backend import BackendError, LocalBackend
from privmed.inference.stream import FpsMeter, LiveStream, NewestSlot, Smoother, frame_bytes, label_of


def xray_frame(path, width=640, height=480) -> np.ndarray:
    """A 640x480 RGB camera frame showing a real X-ray (letterboxed)."""
    import cv2

    g = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (height, height))
    frame = np.zeros((height, width), np.uint8)
    frame[:, (width - height) // 2:(width + height) // 2] = g
    return np.repeat(frame[:, :, None], 3, 2)


@pytest.fixture(scope="module")
def chest(xray_bundle, data_root):
    be = LocalBackend([xray_bundle])
    meta = json.loads((xray_bundle / "metadata.json").read_text())
    card = next(c for c in be.models() if c["id"] == meta.get("model_id"))
    dataset = meta["dataset"]
    files = sorted((data_root / dataset / "test").glob("*/*"))[::40][:6]
    return be, card, [xray_frame(f) for f in files]


def backend_predict(be, card):
    return lambda rgb: be.analyse(card["id"], frame_bytes(rgb), "live-frame.bmp", explain=False)


def test_slot_keeps_only_the_newest():
    slot = NewestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(timeout=0) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(timeout=0.01) is None
    slot.close()
    assert slot.take(timeout=None) is None  # closed: a waiting worker wakes up


def test_worker_predicts_newest_and_drops_the_rest(chest):
    be, card, frames = chest
    predict = backend_predict(be, card)
    started, release, seen = threading.Event(), threading.Event(), []

    def slow_first(rgb):
        seen.append(rgb)
        if len(seen) == 1:  # hold the worker busy on frame 0 while frames 1..5 arrive
            started.set()
            release.wait(30)
        return predict(rgb)

    live = LiveStream(slow_first, decision=card.get("decision"), refuse=(BackendError, ValueError))
    try:
        live.submit(frames[0])
        assert started.wait(30)
        for f in frames[1:]:
            live.submit(f)
        release.set()
        for _ in range(600):
            if live.stats()["predicted"] == 2:
                break
            threading.Event().wait(0.05)
        s = live.stats()
    finally:
        live.stop()
    assert len(seen) == 2 and seen[1] is frames[-1]  # the newest frame, not the next in line
    assert (s["received"], s["dropped"], s["predicted"]) == (len(frames), len(frames) - 2, 2)
    assert s["smoothed"]["frames"] == 2 and s["latency_ms"] is not None
    if not s["smoothed"]["abstain"]:
        assert s["smoothed"]["label"] in card["classes"]


def test_refused_frames_are_shown_with_the_reason(chest):
    be, card, frames = chest
    live = LiveStream(backend_predict(be, card), n=4, refuse=(BackendError, ValueError))
    black = np.zeros_like(frames[0])  # a covered lens: the quality gate refuses it
    for _ in range(3):
        live.step(0.0, black)
    s = live.stats()
    assert s["last"]["abstain"] and s["refused"] == 3
    assert s["smoothed"]["abstain"] and any("quality" in r for r in s["smoothed"]["reasons"])
    live.step(0.0, np.zeros((10, 10), np.uint8))  # not an RGB frame: refused with the reason, no crash
    assert "RGB" in live.stats()["last"]["reasons"][0]
    assert live.errors == 0


def test_smoothing_is_the_mean_over_the_last_n_accepted(chest):
    be, card, frames = chest
    results = [be.analyse(card["id"], frame_bytes(f), "f.bmp", explain=False) for f in frames]
    sm = Smoother(n=4, decision=card.get("decision"))
    for r in results:
        sm.add({**r, "abstain": False})
    st = sm.state()
    want = {c: np.mean([r["probabilities"][c] for r in results[-4:]]) for c in card["classes"]}
    assert st["frames"] == st["accepted"] == 4 and not st["abstain"]
    assert st["probabilities"] == pytest.approx(want)
    assert st["label"] == label_of(want, card.get("decision"))
    # refused frames push accepted ones out; with fewer than half accepted, the output abstains
    sm.add(None, "image quality: too dark")
    sm.add({**results[0], "abstain": True, "abstain_reasons": ["low confidence (0.51 < 0.60)"]})
    assert not sm.state()["abstain"]  # 2 of 4 accepted
    sm.add(None, "image quality: too dark")
    st = sm.state()
    assert st["abstain"] and st["accepted"] == 1 and st["reasons"][0] == "image quality: too dark"


def test_label_rule_and_window_checks():
    decision = {"threshold_probability": 0.3}
    assert label_of({"normal": 0.65, "pneumonia": 0.35}, decision) == "pneumonia"
    assert label_of({"normal": 0.65, "pneumonia": 0.35}) == "normal"
    assert label_of({}) is None
    with pytest.raises(ValueError, match="window"):
        Smoother(n=0)
    assert Smoother().state()["reasons"] == ["no frames yet"]


def test_fps_meter_counts_a_window_and_decays():
    m = FpsMeter(window=2.0)
    for i in range(21):
        m.tick(i * 0.1)
    assert m.fps(2.0) == pytest.approx(10.0)
    assert m.fps(10.0) == 0.0  # stream stopped: no stale rate


def test_broken_predict_does_not_stop_the_stream():
    def boom(frame):
        raise RuntimeError("decoder bug")

    live = LiveStream(boom)
    live.step(0.0, object())
    s = live.stats()
    assert s["errors"] == 1 and s["last"]["abstain"] and "RuntimeError" in s["last"]["reasons"][0]


def test_reset_starts_a_new_session_at_zero():
    live = LiveStream(lambda frame: {"label": "a", "probabilities": {"a": 0.9, "b": 0.1}, "abstain": False})
    live.slot.put((0.0, None))
    live.step(*live.slot.take(0))
    assert live.stats()["predicted"] == 1
    live.reset()
    s = live.stats()
    assert (s["predicted"], s["received"], s["smoothed"]["frames"]) == (0, 0, 0)


def test_idle_worker_exits_and_a_new_frame_restarts_it():
    done = threading.Event()
    live = LiveStream(lambda frame: done.set() or {"label": "a", "probabilities": {"a": 1.0}, "abstain": False},
                      idle=0.05)
    live.submit("frame 1")
    assert done.wait(30)
    for _ in range(600):  # the worker leaves once nothing came for `idle` seconds
        if live._thread is None:
            break
        threading.Event().wait(0.05)
    assert live._thread is None
    done.clear()
    live.submit("frame 2")
    assert done.wait(30)
    live.stop()
    assert live.stats()["predicted"] == 2
