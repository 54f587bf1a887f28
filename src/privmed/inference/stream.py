"""Live camera stream, framework-free: the app's WebRTC glue hands every incoming frame to
``LiveStream.submit``; one worker thread predicts the newest frame through the caller's ``predict``
(the upload path: one call per frame, quality gate included). Frames are never queued: a new frame
replaces the one still waiting (counted as dropped), so a slow model shows fewer, fresher frames
instead of an ever-growing delay. The readout smooths over the last N frames."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Callable


class NewestSlot:
    """Holds at most one item. ``put`` replaces a waiting item (counted in ``dropped``)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            self.received += 1
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def take(self, timeout: float | None = None):
        """The newest item (removing it), or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def counts(self) -> tuple[int, int]:
        """(received, dropped), read together."""
        with self._cond:
            return self.received, self.dropped

    def reset_counts(self) -> None:
        with self._cond:
            self.received = self.dropped = 0

    def pending(self) -> bool:
        with self._cond:
            return self._full

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class FpsMeter:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def fps(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        # n events span n-1 intervals; a stalled stream decays because old ticks leave the window
        return (len(self._times) - 1) / max(now - self._times[0], 1e-9)


def label_of(probs: dict[str, float], decision: dict | None = None) -> str | None:
    """The class the model's rule picks: its two-class operating point (``decision``), else argmax."""
    if not probs:
        return None
    classes = list(probs)
    if decision and len(classes) == 2:
        return classes[int(probs[classes[1]] >= float(decision["threshold_probability"]))]
    return max(classes, key=probs.get)


class Smoother:
    """The last ``n`` frame results. Mean probabilities over the accepted ones (not abstained); the
    smoothed output abstains when fewer than ``min_share`` of those frames were accepted, giving the
    most frequent refusal reason, so a stream of refused frames never shows a stale label."""

    def __init__(self, n: int = 8, min_share: float = 0.5, decision: dict | None = None):
        if n < 1:
            raise ValueError(f"smoothing window must be >= 1 frame, got {n}")
        self.n, self.min_share, self.decision = n, min_share, decision
        self._frames: deque[tuple[dict | None, list[str]]] = deque(maxlen=n)

    def add(self, result: dict | None, refused: str | None = None) -> None:
        """A frame's result dict (the upload path's), or ``refused``: why no result came (bad frame)."""
        if result is None:
            self._frames.append((None, [refused or "frame could not be analysed"]))
        elif result.get("abstain"):
            self._frames.append((None, list(result.get("abstain_reasons") or ["abstained"])))
        else:
            self._frames.append((dict(result["probabilities"]), []))

    def state(self) -> dict:
        accepted = [p for p, _ in self._frames if p is not None]
        out = {"frames": len(self._frames), "accepted": len(accepted), "label": None,
               "probabilities": {}, "abstain": True, "reasons": []}
        if accepted:
            out["probabilities"] = {c: sum(p[c] for p in accepted) / len(accepted) for c in accepted[0]}
            out["label"] = label_of(out["probabilities"], self.decision)
        if not self._frames:
            out["reasons"] = ["no frames yet"]
        elif len(accepted) < self.min_share * len(self._frames):
            reasons = Counter(r for p, rs in self._frames if p is None for r in rs)
            out["reasons"] = [r for r, _ in reasons.most_common(2)]
        else:
            out["abstain"] = False
        return out


class LiveStream:
    """``submit(frame)`` from the video thread; a worker runs ``predict(frame) -> result dict`` on the
    newest one. ``predict`` raises ``refuse`` types (e.g. the backend's error) for a refused frame:
    its message is shown as the reason. ``stats()`` is the readout."""

    def __init__(self, predict: Callable[[Any], dict], *, n: int = 8, decision: dict | None = None,
                 refuse: tuple[type[BaseException], ...] = (ValueError,), idle: float = 2.0,
                 clock=time.monotonic):
        self.predict, self.refuse, self.clock, self.idle = predict, refuse, clock, idle
        self.n, self.decision = n, decision
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.slot = NewestSlot()
        self.reset()

    def reset(self) -> None:
        """Fresh counters and smoothing (a new camera session); a frame already waiting is kept."""
        with self._lock:
            self.smoother = Smoother(self.n, decision=self.decision)
            self.fps_in, self.fps_out = FpsMeter(), FpsMeter(5.0)  # a slow model: a few results per window
            self.latencies: deque[float] = deque(maxlen=30)  # frame arrival -> result
            self.busy: deque[float] = deque(maxlen=30)  # the predict call alone
            self.predicted = self.refused = self.errors = 0
            self.last: dict = {}
            self.slot.reset_counts()

    def submit(self, frame) -> None:
        """Cheap and non-blocking: keeps the frame (with its arrival time) for the worker."""
        now = self.clock()
        with self._lock:
            self.fps_in.tick(now)
        self.slot.put((now, frame))
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="privmed-live", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        # exits when no frame came for `idle` seconds (stream stopped); the next submit starts a new
        # one. The exit is decided under the lock, so a frame put meanwhile is never left waiting.
        while not self._stop.is_set():
            got = self.slot.take(timeout=self.idle)
            if got is not None:
                self.step(*got)
                continue
            with self._lock:
                if not self.slot.pending():
                    self._thread = None
                    return

    def step(self, arrived: float, frame) -> None:
        """Predict one frame and update the readout (the worker's body; tests call it directly)."""
        result, refused = None, None
        start = self.clock()
        try:
            result = self.predict(frame)
        except self.refuse as e:
            refused = str(e)
        except Exception as e:  # a broken frame must not kill the stream; its content is not logged
            refused = f"frame could not be analysed ({type(e).__name__})"
            with self._lock:
                self.errors += 1
        done = self.clock()
        with self._lock:
            self.fps_out.tick(done)
            self.latencies.append(done - arrived)
            self.busy.append(done - start)
            self.smoother.add(result, refused)
            if result is None or result.get("abstain"):
                self.refused += 1
            if result is not None:
                self.predicted += 1
            self.last = {"label": (result or {}).get("label"), "abstain": result is None or bool(result.get("abstain")),
                         "reasons": [refused] if refused else list((result or {}).get("abstain_reasons") or [])}

    def stats(self) -> dict:
        now = self.clock()
        with self._lock:
            lat, busy = sorted(self.latencies), sorted(self.busy)
            received, dropped = self.slot.counts()
            return {"received": received, "dropped": dropped, "predicted": self.predicted,
                    "refused": self.refused, "errors": self.errors,
                    "fps": self.fps_out.fps(now), "input_fps": self.fps_in.fps(now),
                    "latency_ms": 1000 * lat[len(lat) // 2] if lat else None,
                    "predict_ms": 1000 * busy[len(busy) // 2] if busy else None,
                    "smoothed": self.smoother.state(), "last": dict(self.last)}

    def stop(self) -> None:
        self._stop.set()
        self.slot.close()
        t = self._thread
        if t is not None:
            t.join(timeout=5)


def frame_bytes(rgb) -> bytes:
    """An RGB frame (H, W, 3 uint8) as BMP bytes: a camera frame then takes exactly the path of an
    uploaded image (format sniffing, decoding limits, quality gate). BMP: lossless (the model sees the
    frame as received) at the CPU cost of JPEG, half that of PNG (docs/notebook/BENCHMARKS.md, bench_live.py)."""
    import cv2
    import numpy as np

    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {a.dtype} {a.shape}")
    ok, buf = cv2.imencode(".bmp", np.ascontiguousarray(a[:, :, ::-1]))
    if not ok:
        raise ValueError("the frame could not be encoded")
    return buf.tobytes()
