"""Where the served path's CPU goes: `privmed api` under ApacheBench, its CPU per image split by thread
(event loop, request threads, prediction workers; from /proc, names from `py-spy dump` when installed) and
by the steps the request threads run (thread CPU time around each, measured inside the server).

    python benchmarks/served_breakdown.py [--bundle PATH] [--clients 8] [--duration 15]

Same server, key, audit log and request body as bench_served_path.py; the step timers add a few
microseconds per call. Each row is CPU ms per image (a step that runs once per micro-batch, the forward,
is divided by the images it served).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_cost import ab, free_port, wait_up  # noqa: E402
from bench_served_path import load_args, need_ab, prepare, stat_cpu  # noqa: E402

# (module, attribute path) timed inside the server: what a request thread or a forward worker runs
STEPS = [("privmed.api.store", "Store.authenticate"), ("privmed.inference.registry", "Registry.find"),
         ("privmed.inference.registry", "Registry.model"), ("privmed.inference.predictor", "Model.decode"),
         ("privmed.data.quality", "assess"), ("privmed.inference.predictor", "Model.tensor"),
         ("privmed.inference.predictor", "Model.scores"), ("privmed.inference.predictor", "Model.finish"),
         ("privmed.inference.service", "result_dict"), ("privmed.api.store", "Store.append")]


def server_main() -> None:
    """Run inside the server process: wrap STEPS with thread-CPU timers, write them on SIGUSR1."""
    import collections
    import functools
    import importlib
    import threading

    totals, lock = collections.defaultdict(lambda: [0, 0.0]), threading.Lock()

    def timed(f, label):
        @functools.wraps(f)
        def g(*a, **k):
            t = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                with lock:
                    totals[label][0] += 1
                    totals[label][1] += time.thread_time() - t
        return g

    for module, attr in STEPS:
        owner = importlib.import_module(module)
        *cls, name = attr.split(".")
        target = getattr(owner, cls[0]) if cls else owner
        setattr(target, name, timed(getattr(target, name), attr))

    def dump(*_):
        Path(os.environ["BREAKDOWN_OUT"]).write_text(
            "\n".join(f"{k}\t{n}\t{s}" for k, (n, s) in totals.items()) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, lambda *_: totals.clear())  # after the warm-up
    from privmed.cli import main

    main(sys.argv[2:])


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` (utime + stime)."""
    return {tid: stat_cpu(Path(f"/proc/{pid}/task/{tid}/stat")) for tid in os.listdir(f"/proc/{pid}/task")}


def thread_names(pid: int) -> dict[str, str]:
    """tid -> Python thread name (py-spy dump), grouped: anyio's request threads are one group."""
    spy = shutil.which("py-spy")
    if not spy:
        return {str(pid): "event loop"}
    dump = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    names = {m.group(1): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)}
    names[str(pid)] = "event loop"
    return {t: "request threads (anyio)" if n.startswith("AnyIO") else n for t, n in names.items()}


def main(argv=None) -> None:
    from privmed.api.store import Store

    a = load_args(duration=15, rounds=None).parse_args(argv)
    need_ab()
    work = Path(tempfile.mkdtemp(prefix="privmed-breakdown-"))
    try:
        bundle, _, body, ctype = prepare(a.bundle, a.data_root, work)
        db = f"sqlite:///{work / 'audit.db'}"
        key = Store(db).create_key("clinician", "load test")[1]
        port, out = free_port(), work / "steps.tsv"
        env = dict(os.environ, PRIVMED_BUNDLES=str(work / "none"), BREAKDOWN_OUT=str(out))
        proc = subprocess.Popen([sys.executable, __file__, "--server", "api", "--port", str(port), "--bundle",
                                 str(bundle), "--db-url", db, "--log-level", "warning"], env=env,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}/v1/predict"
        try:
            wait_up(f"http://127.0.0.1:{port}/health")
            ab(url, key, body, ctype, a.clients, 3)  # warm-up, not counted
            os.kill(proc.pid, signal.SIGUSR2)
            c0 = thread_cpu(proc.pid)
            r = ab(url, key, body, ctype, a.clients, a.duration)
            c1, names = thread_cpu(proc.pid), thread_names(proc.pid)
            os.kill(proc.pid, signal.SIGUSR1)
            steps = _wait_read(out)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(a, r, c1, c0, names, steps)


def _wait_read(path: Path) -> dict[str, tuple[int, float]]:
    for _ in range(100):
        if path.exists() and path.read_text().endswith("\n"):
            break
        time.sleep(0.1)
    rows = [line.split("\t") for line in path.read_text().splitlines() if line]
    return {k: (int(n), float(s)) for k, n, s in rows}


def report(a, r: dict, c1: dict, c0: dict, names: dict, steps: dict) -> None:
    n = max(r["requests"], 1)
    groups: dict[str, float] = {}
    for tid, cpu in c1.items():
        g = names.get(tid, "other")
        g = "prediction workers" if g.startswith(("privmed-batcher", "privmed-worker")) else g
        groups[g] = groups.get(g, 0.0) + cpu - c0.get(tid, 0.0)
    print(f"{r['requests']} requests, {r['rps']:.1f}/s, {r['failed']} failed; server CPU "
          f"{1000 * sum(groups.values()) / n:.2f} ms per image ({a.clients} clients, {a.duration:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f})\n")
    print("| thread group | CPU ms per image |\n|---|---|")
    for g, s in sorted(groups.items(), key=lambda x: -x[1]):
        print(f"| {g} | {1000 * s / n:.2f} |")
    print("\n| step (thread CPU, inside the server) | calls per image | CPU ms per image |\n|---|---|---|")
    for k, (calls, s) in sorted(steps.items(), key=lambda x: -x[1][1]):
        print(f"| {k} | {calls / n:.2f} | {1000 * s / n:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--server":
        server_main()
    else:
        main()
