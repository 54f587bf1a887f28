"""Micro-batching: single-image forwards from concurrent requests merged into one network call.

The first image to arrive opens a batch; the batch closes when ``max_batch`` images are in it or
``max_wait_s`` (<= 5 ms by default) has passed, and a worker thread runs it with ``Model.scores``.
``workers`` threads (1 by default) take batches from the one queue, so that several network calls can
run at once. A batch waits only while other requests are on their way (``coming()``: decoding, quality
gate): a lone request is never delayed. The queue is bounded: when it is full, ``scores`` raises
``Busy`` at once instead of letting requests pile up without limit. In-process callers of
``service.analyse`` (the app's sessions) come through here; the REST API does not: its prediction
workers (``service.Workers``) run each whole request in one thread, which costs less CPU per image
on a CPU where batches of two cost more per image than two single forwards.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np
import torch

from privmed.config import settings
from privmed.errors import Unavailable


class Busy(Unavailable):
    """A prediction queue (the batcher's, the API workers') is full: the caller should answer 503 and let
    the client retry."""

    def __init__(self, message: str = "the server is busy (prediction queue full); retry shortly"):
        super().__init__(message)


def settings_from_env() -> dict | None:
    """``PRIVMED_BATCH=off`` disables batching (None); else max batch, wait and queue bounds."""
    s = settings()
    if not s.batch:
        return None
    return {"max_batch": s.batch_max, "max_wait_s": min(5.0, s.batch_wait_ms) / 1000, "max_queue": s.batch_queue,
            "workers": s.batch_workers or 1}


class MicroBatcher:
    def __init__(self, scores_fn, *, max_batch: int = 16, max_wait_s: float = 0.005, max_queue: int = 64,
                 workers: int = 1):
        self.scores_fn, self.max_batch, self.max_wait_s = scores_fn, max(1, max_batch), max(0.0, max_wait_s)
        self._q: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.calls = self.images = 0  # for tests and benchmarks: images per network call
        self._coming, self._coming_lock = 0, threading.Lock()
        for i in range(max(1, workers)):
            threading.Thread(target=self._loop, name=f"privmed-batcher-{i}", daemon=True).start()

    def coming(self) -> "_Coming":
        """Context around a request's work before ``scores`` (decode, gate, preprocess): while any
        request is inside, an open batch waits (up to ``max_wait_s``) for it."""
        return _Coming(self)

    def _add(self, n: int) -> None:
        with self._coming_lock:
            self._coming += n

    def scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Same contract as ``Model.scores`` for one preprocessed image (1, 1, H, W)."""
        fut: Future = Future()
        try:
            self._q.put_nowait((x, fut))
        except queue.Full:
            raise Busy() from None
        return fut.result()

    def _collect(self) -> list:
        items = [self._q.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                items.append(self._q.get_nowait())
                continue
            except queue.Empty:
                pass
            if left <= 0 or self._coming <= 0:  # nobody else on the way: run now
                break
            try:
                items.append(self._q.get(timeout=min(left, 0.0005)))
            except queue.Empty:
                continue
        return items

    def _loop(self) -> None:
        while True:
            items = self._collect()
            futures = [f for _, f in items]
            try:
                # images of one model share one input size; anything else fails only its own batch
                probs, ood = self.scores_fn(torch.cat([x for x, _ in items]))
            except BaseException as e:  # noqa: BLE001 - hand every error to the waiting requests
                for f in futures:
                    f.set_exception(e)
                continue
            with self._coming_lock:
                self.calls, self.images = self.calls + 1, self.images + len(items)
            for i, f in enumerate(futures):
                f.set_result((probs[i:i + 1], None if ood is None else ood[i:i + 1]))


class _Coming:
    def __init__(self, b: MicroBatcher):
        self.b = b

    def __enter__(self):
        self.b._add(1)
        return self

    def __exit__(self, *exc):
        self.b._add(-1)
        return False
