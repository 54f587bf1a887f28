"""How low the served path's CPU can go in Python on this machine: the bare ONNX forward, the thinnest
HTTP front around it (raw ASGI on the same uvicorn, no framework, no auth, no audit log) running only
the forward, the same front running the whole prediction step (``service.analyse``: decode, quality
gate, preprocess, forward, OOD, result), and ``privmed api`` itself, in one run.

    python benchmarks/served_floor.py [--bundle PATH] [--clients 8] [--duration 12] [--rounds 2]

Same load as bench_served_path.py: ApacheBench, one prepared multipart body (a real chest X-ray JPEG),
server CPU per image read from /proc. Both fronts use the API's prediction workers (``service.Workers``,
one per core, one ONNX Runtime thread each). What separates the third row from the fourth is what the
API adds per request (FastAPI, the multipart parser, the key lookup, the fsynced audit row); what
separates the second from the first is HTTP and the hand-off to a worker. Last, in this process: the
step before the network (``Model.prepare``: decode, gate, preprocess) and a one-thread forward, each
timed alone in a hot loop and then alternated in one thread, as a worker runs them.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_cost import free_port, wait_up  # noqa: E402
from bench_served_path import (  # noqa: E402
    best_bare,
    cpu_per_image,
    cpu_seconds,
    load_args,
    need_ab,
    prepare,
    served,
)


def thin_front(bundle: Path, image: Path, whole: bool):
    """The raw ASGI app: each POST runs ``service.analyse`` on the uploaded bytes (``whole``) or only
    the forward on the image's ready tensor, in one of the API's prediction workers."""
    import numpy as np

    import privmed.config as config
    from privmed.inference.predictor import Model
    from privmed.inference.service import Workers, analyse

    config.parallel_forwards()  # as `privmed api`: one worker per core, one ONNX Runtime thread each
    model = Model(bundle)
    x = model.batch([model.prepare(image.read_bytes())[0].pixels])
    workers = Workers(config.settings().batch_workers or 1)

    def job(body: bytes) -> dict:
        if whole:  # the file part of the one-part multipart body the benchmark sends
            data = body[body.index(b"\r\n\r\n") + 4:body.rindex(b"\r\n--")]
            return analyse(model, data, batch=False)[0]
        probs, _ = model.scores(x)
        return {"probabilities": np.round(probs[0], 6).tolist()}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        out = {} if scope["path"] == "/health" else await asyncio.wrap_future(workers.submit(job, body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})

    return app


def alternated(bundle: Path, image: Path, n: int = 300) -> dict:
    """Thread CPU ms of ``Model.prepare`` and of a one-thread forward, each repeated alone and then
    alternated (prepare, forward, prepare...) in one thread."""
    import time

    import numpy as np

    from privmed.inference.onnx_export import session
    from privmed.inference.predictor import Model

    model, data = Model(bundle), image.read_bytes()
    x = model.batch([model.prepare(data)[0].pixels]).numpy().astype(np.float32)
    sess = session(bundle / "model.onnx", threads=1)
    steps = {"prepare": lambda: model.prepare(data), "forward": lambda: sess.run(None, {"input": x})}
    out = {}
    for name, f in steps.items():
        for _ in range(20):
            f()
        t = time.thread_time()
        for _ in range(n):
            f()
        out[f"{name} alone"] = 1000 * (time.thread_time() - t) / n
    spent = dict.fromkeys(steps, 0.0)
    for i in range(n + 20):
        for name, f in steps.items():
            t = time.thread_time()
            f()
            spent[name] += (time.thread_time() - t) * (i >= 20)
    out.update({f"{name} alternated": 1000 * s / n for name, s in spent.items()})
    return out


def run_front(bundle: Path, image: Path, body: Path, ctype: str, whole: bool, clients: int, seconds: float) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--front", str(bundle), str(image), str(port),
                             "whole" if whole else "forward"], start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(url + "/health")
        r = cpu_per_image(lambda: cpu_seconds(proc.pid), url, "none", body, ctype, clients, seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return r


def main(argv=None) -> None:
    a = load_args(duration=12, rounds=2).parse_args(argv)
    need_ab()
    work = Path(tempfile.mkdtemp(prefix="privmed-floor-"))
    rows = []
    try:
        bundle, image, body, ctype = prepare(a.bundle, a.data_root, work)
        for i in range(a.rounds):
            bare = best_bare(bundle, image, min(a.duration, 16))
            runs = {"thin front, forward only": run_front(bundle, image, body, ctype, False, a.clients, a.duration),
                    "thin front, whole prediction step": run_front(bundle, image, body, ctype, True, a.clients,
                                                                   a.duration),
                    "privmed api (auth, audit log)": served(bundle, body, ctype, a.clients, a.duration)}
            rows.append((i + 1, os.getloadavg()[0], bare, runs, alternated(bundle, image)))
            print(f"round {i + 1}: bare {bare}, {runs}, {rows[-1][-1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nCommand: `python benchmarks/served_floor.py --clients {a.clients} --duration {a.duration:.0f} "
          f"--rounds {a.rounds}`; {os.cpu_count()} cores shared with ab.\n")
    print("| round | load avg | server | images/s | CPU ms/image | CPU ratio to bare | throughput ratio | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for i, load, bare, runs, _ in rows:
        print(f"| {i} | {load:.1f} | bare forward (batch 1, best of default and 1 thread) | {bare['images_per_s']:.1f} "
              f"| {bare['cpu_ms']:.1f} | 1.00 | 1.00 | - |")
        for name, r in runs.items():
            print(f"| {i} | {load:.1f} | {name} | {r['rps']:.1f} | {r['cpu_ms']:.1f} "
                  f"| {r['cpu_ms'] / bare['cpu_ms']:.2f} | {r['rps'] / bare['images_per_s']:.2f} | {r['failed']} |")
    print("\n| round | prepare alone | prepare alternated | forward alone | forward alternated (thread CPU ms) |")
    print("|---|---|---|---|---|")
    for i, *_, alt in rows:
        print(f"| {i} | {alt['prepare alone']:.2f} | {alt['prepare alternated']:.2f} | {alt['forward alone']:.2f} "
              f"| {alt['forward alternated']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--front":
        import uvicorn

        uvicorn.run(thin_front(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[5] == "whole"), host="127.0.0.1",
                    port=int(sys.argv[4]), log_level="warning")
    else:
        main()
