"""Micro-batching of concurrent predictions: same results as one at a time, fewer network calls,
bounded queue (503 when full), errors reach every waiting request."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from privmed.inference.batcher import Busy, MicroBatcher
from privmed.inference.service import Workers


def fake_scores(x):
    return x.reshape(len(x), -1)[:, :2].numpy() * 2, x.reshape(len(x), -1)[:, 0].numpy()


def test_concurrent_images_share_calls_and_keep_their_results():
    b = MicroBatcher(fake_scores, max_batch=8, max_wait_s=0.005)
    out = {}

    def one(i):
        with b.coming():
            x = torch.full((1, 1, 2, 2), float(i))
        out[i] = b.scores(x)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for i in range(24):
        probs, ood = out[i]
        assert probs.shape == (1, 2) and np.all(probs == 2 * i) and ood[0] == i
    assert b.images == 24 and b.calls <= 24


def test_workers_run_batches_at_once():
    both, started = threading.Barrier(2, timeout=10), []

    def meet(x):  # returns only when two calls are running at the same time
        started.append(len(x))
        both.wait()
        return fake_scores(x)

    b = MicroBatcher(meet, max_batch=1, max_wait_s=0, workers=2)
    out = {}
    ts = [threading.Thread(target=lambda i=i: out.update({i: b.scores(torch.full((1, 1, 2, 2), float(i)))}))
          for i in range(2)]
    [t.start() for t in ts]
    [t.join(10) for t in ts]
    assert sorted(float(out[i][0][0, 0]) for i in range(2)) == [0.0, 2.0] and (b.calls, b.images) == (2, 2)


def test_lone_requests_each_run_alone():
    b = MicroBatcher(fake_scores, max_batch=8, max_wait_s=0.005)
    for i in range(3):
        b.scores(torch.zeros(1, 1, 2, 2))
    assert (b.calls, b.images) == (3, 3)


def test_full_queue_is_busy_and_errors_reach_the_caller():
    gate, entered = threading.Event(), threading.Event()

    def slow(x):
        entered.set()
        gate.wait(10)
        return fake_scores(x)

    b = MicroBatcher(slow, max_batch=1, max_wait_s=0, max_queue=1)

    def request():
        return threading.Thread(target=b.scores, args=(torch.zeros(1, 1, 2, 2),), daemon=True)

    running, waiting = request(), request()
    running.start()  # the worker takes it and blocks in slow ...
    assert entered.wait(10)
    waiting.start()  # ... so this one stays in the queue (started only now: on a loaded machine both
    for _ in range(1000):  # could otherwise meet the queue before the worker empties it)
        if b._q.full():
            break
        threading.Event().wait(0.01)
    assert b._q.full()
    with pytest.raises(Busy):
        b.scores(torch.zeros(1, 1, 2, 2))
    gate.set()
    [t.join(10) for t in (running, waiting)]

    def broken(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        MicroBatcher(broken).scores(torch.zeros(1, 1, 2, 2))


def test_api_service_batches_and_matches_single_predictions(small_bundle, data_root):
    from privmed.inference.predictor import load_model
    from privmed.inference.service import analyse

    m = load_model(small_bundle)
    files = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[:12]
    ref = {f: m.predict(f) for f in files}
    out = {}
    ts = [threading.Thread(target=lambda f=f: out.__setitem__(f, analyse(m, f.read_bytes())[0])) for f in files]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert m._privmed_batcher.images == len(files)
    for f in files:
        assert out[f]["label"] == ref[f].label and out[f]["abstain"] == ref[f].abstain
        for k, p in ref[f].probabilities.items():
            assert abs(out[f]["probabilities"][k] - p) < 1e-5


def test_workers_run_whole_requests_at_once_and_refuse_beyond_their_queue():
    both, release = threading.Barrier(2, timeout=10), threading.Event()

    def job(i):  # two run at once, each in a worker thread, until released
        both.wait()
        release.wait(10)
        if i == 1:
            raise ValueError("boom")
        return i, threading.current_thread().name

    w = Workers(2, max_queue=1)
    running = [w.submit(job, i) for i in range(2)]
    queued = w.submit(str, "queued")  # the one place in the queue
    with pytest.raises(Busy, match="busy"):
        w.submit(str, "one too many")
    release.set()
    assert running[0].result(10)[0] == 0 and running[0].result()[1].startswith("privmed-worker")
    with pytest.raises(ValueError, match="boom"):
        running[1].result(10)
    assert queued.result(10) == "queued"
    later = [w.submit(lambda: 1) for _ in range(3)]  # every place freed, also by the failed job
    assert [f.result(10) for f in later] == [1, 1, 1]
    w.close()
