"""Served-path probe: the same FastAPI app under uvicorn (``privmed api``) and under granian, a Rust HTTP
server, alternating; server CPU per image over the whole process group.

    pip install --target /tmp/granian granian==2.8.9     # not a privmed dependency
    python benchmarks/probes/served_granian.py --granian-path /tmp/granian [--rounds 3] [--duration 10]

Same load as bench_served_path.py (ApacheBench, 8 clients, one multipart body with a real chest X-ray JPEG,
auth and the SQLite audit log on). granian runs the app in one worker process with one runtime thread; the
app is ``create_app`` exactly as ``privmed api`` builds it (one prediction worker per core).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_audit_cost import free_port, serve, wait_up  # noqa: E402
from bench_served_path import cpu_per_image, prepare, stat_cpu  # noqa: E402


def make_app():
    """granian's factory: the app `privmed api` serves, from the variables the probe sets."""
    import privmed.config as config
    from privmed.api.server import Settings, create_app

    config.parallel_forwards()
    return create_app(Settings.from_env(db_url=os.environ["PROBE_DB"], bundles=[Path(os.environ["PROBE_BUNDLE"])],
                                        host="127.0.0.1"))


def group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in the group (granian serves from a child process)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                total += stat_cpu(stat)
        except OSError:  # a process that ended meanwhile
            continue
    return total


def start(server: str, bundle: Path, db: str, env: dict, granian_path: str) -> tuple[subprocess.Popen, str]:
    if server == "uvicorn":
        return serve(bundle, db, env)
    port = free_port()
    env = dict(env, PROBE_DB=db, PROBE_BUNDLE=str(bundle),
               PYTHONPATH=os.pathsep.join([granian_path, str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--port", str(port),
                             "--workers", "1", "--runtime-threads", "1", "--log-level", "warning",
                             "served_granian:make_app"], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/health")
    return proc, base


def one(server: str, bundle: Path, body: Path, ctype: str, seconds: float, granian_path: str) -> dict:
    from privmed.api.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="privmed-granian-"))
    db = f"sqlite:///{tmp / 'audit.db'}"
    key = Store(db).create_key("clinician", "load test")[1]
    proc, base = start(server, bundle, db, dict(os.environ, PRIVMED_BUNDLES=str(tmp / "none")), granian_path)
    try:
        r = cpu_per_image(lambda: group_cpu(proc.pid), base, key, body, ctype, 8, seconds)
    finally:
        os.killpg(proc.pid, 9)  # granian waits for open connections on SIGTERM; nothing here needs a clean stop
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return r


def main() -> None:
    from privmed.config import bundles_dir, default_data_root

    ap = argparse.ArgumentParser()
    ap.add_argument("--granian-path", required=True, help="where granian was pip-installed with --target")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="privmed-granian-work-"))
    bundle, _, body, ctype = prepare(bundles_dir() / "chest_xray_pneumonia", default_data_root(), work)
    for i in range(a.rounds):
        for server in ("uvicorn", "granian"):
            r = one(server, bundle, body, ctype, a.duration, a.granian_path)
            print(f"round {i + 1} {server}: {r['cpu_ms']:.2f} ms server CPU per image, {r['rps']:.1f} images/s, "
                  f"{r['requests']} requests, {r.get('failed', 0)} failed", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
