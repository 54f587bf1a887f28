"""REST API under load: N concurrent clients POST real 224x224 chest X-ray JPEGs to
``/v1/predict`` on a uvicorn server (``privmed api``, auth and audit log on) for D seconds.

    python benchmarks/bench_api_load.py [--bundle PATH] [--clients 8] [--duration 60]
        [--append docs/notebook/BENCHMARKS.md]
        [--replicas 2] [--postgres]

``--replicas N`` starts N API processes on one database (client i talks to replica i mod N);
``--postgres`` puts the audit log in a throwaway PostgreSQL cluster (tests/pgcluster.py) instead of
SQLite. ``PRIVMED_BATCH=off`` in the environment turns micro-batching off in the servers.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    import httpx

    from privmed.api.store import Store
    from privmed.bundle.format import read_metadata
    from privmed.config import bundles_dir, default_data_root

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--append", type=Path)
    ap.add_argument("--onnx", action="store_true", help="serve a temporary copy exported to ONNX")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--postgres", action="store_true")
    a = ap.parse_args(argv)

    bundle = a.bundle
    if a.onnx:
        from privmed.inference.onnx_export import export

        bundle = Path(shutil.copytree(a.bundle, Path(tempfile.mkdtemp(prefix="privmed-onnx-")) / "bundle"))
        export(bundle)
    meta = read_metadata(bundle)
    files = sorted((a.data_root / "chest_xray_pneumonia" / "test").glob("*/*"))[::10]
    blobs = [(f.name, f.read_bytes()) for f in files]
    tmp = Path(tempfile.mkdtemp(prefix="privmed-load-"))
    cluster = None
    if a.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from pgcluster import Cluster

        cluster = Cluster()
        url = cluster.start()
    else:
        url = f"sqlite:///{tmp / 'audit.db'}"
    key = Store(url).create_key("clinician", "load test")[1]
    env = dict(os.environ, PRIVMED_BUNDLES=str(tmp / "none"))
    ports = [free_port() for _ in range(a.replicas)]
    servers = [subprocess.Popen([sys.executable, "-m", "privmed.cli", "api", "--port", str(port), "--bundle",
                                 str(bundle), "--db-url", url, "--log-level", "warning"], env=env,
                                start_new_session=True) for port in ports]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for base in bases:
            for _ in range(240):
                try:
                    urllib.request.urlopen(base + "/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
        lat, status, lock = [], {}, threading.Lock()
        stop = time.time() + a.duration + 5  # 5 s warm-up, not counted

        def client(i):
            rng = random.Random(i)
            auth = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=bases[i % len(bases)], headers=auth, timeout=120) as c:
                while time.time() < stop:
                    name, data = rng.choice(blobs)
                    t = time.perf_counter()
                    try:
                        r = c.post("/v1/predict", files={"file": (name, data, "image/jpeg")})
                        code = r.status_code
                    except httpx.HTTPError as e:
                        code = type(e).__name__
                    dt = time.perf_counter() - t
                    if time.time() > stop - a.duration:
                        with lock:
                            lat.append(dt)
                            status[code] = status.get(code, 0) + 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0 - 5
        verify = Store(url).verify()
    finally:
        for server in servers:
            os.killpg(server.pid, 15)
            server.wait(20)
        if cluster:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if a.onnx:
            shutil.rmtree(bundle.parent, ignore_errors=True)

    ok = status.get(200, 0)
    errors = sum(v for k, v in status.items() if k != 200)
    ms = np.asarray(lat) * 1000
    torch_threads = os.environ.get("PRIVMED_TORCH_THREADS")
    torch_threads = f" (PRIVMED_TORCH_THREADS={torch_threads})" if torch_threads else ""
    text = "\n".join([
        f"### REST API load ({a.clients} concurrent clients, {a.duration:.0f} s), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `python benchmarks/bench_api_load.py --bundle {a.bundle} --clients {a.clients} "
        f"--duration {a.duration:.0f}{' --onnx' if a.onnx else ''}"
        f"{f' --replicas {a.replicas}' if a.replicas > 1 else ''}{' --postgres' if a.postgres else ''}`"
        f"{' with PRIVMED_BATCH=off' if os.environ.get('PRIVMED_BATCH') == 'off' else ''}  ",
        f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end); server and clients on the same cores. uvicorn, "
        f"{a.replicas} process(es), auth on, "
        f"every request appended to the {'PostgreSQL' if a.postgres else 'SQLite'} audit log "
        f"(chain verified after the run: {verify['ok']}, "
        f"{verify['rows']} rows).  ",
        f"Bundle: `{meta.model_id}` (model `{meta.model.name}`), backend "
        f"{'onnxruntime' if meta.onnx and meta.onnx.faster else 'torch'}"
        f"{torch_threads}; {len(blobs)} real 224x224 "
        "chest X-ray JPEGs, one per request.",
        "",
        "| clients | requests | images/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|---|",
        f"| {a.clients} | {ok + errors} | {ok / wall:.1f} | {np.percentile(ms, 50):.0f} | "
        f"{np.percentile(ms, 99):.0f} | {errors} {dict((k, v) for k, v in status.items() if k != 200) or ''} |",
        "",
    ])
    print(text)
    if a.append:
        with a.append.open("a") as f:
            f.write(("\n" if a.append.exists() and a.append.stat().st_size else "# Benchmarks\n\n") + text)


if __name__ == "__main__":
    main()
