"""What signed audit checkpoints cost under load: the REST API with the hash-chained audit log only,
then with the Merkle tree, a signed checkpoint every N rows, an RFC 3161 timestamp on each (a local
openssl authority, tests/tsa.py) and a witness co-signing each (`privmed log witness serve`).

    python benchmarks/bench_audit_cost.py [--bundle PATH] [--clients 8] [--duration 30] [--rounds 2]
        [--every 100] [--append docs/notebook/BENCHMARKS.md]

ApacheBench (`ab`, apache2-utils) sends one prepared multipart body (a real chest X-ray JPEG) from
C concurrent connections, so the load generator is compiled and light. Configurations alternate
(off, on, off, on...) on one fresh server each, so drift of the shared machine hits both. After each
"on" round `privmed log verify` checks the rows against the sink, the witness and the timestamps.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str) -> None:
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error answer: the server is up
                return
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def multipart(path: Path, boundary: str = "privmedbenchboundary") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def ab(url: str, key: str, body: Path, ctype: str, clients: int, seconds: float) -> dict:
    out = subprocess.run(["ab", "-q", "-k", "-c", str(clients), "-t", str(seconds), "-n", "1000000", "-p", str(body),
                          "-T", ctype, "-H", f"Authorization: Bearer {key}", url],
                         capture_output=True, text=True, check=True).stdout
    num = {k: float(re.search(rf"{k}:\s+([\d.]+)", out).group(1))
           for k in ("Complete requests", "Failed requests", "Requests per second")}
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return {"requests": int(num["Complete requests"]), "rps": num["Requests per second"],
            "failed": int(num["Failed requests"]) + (int(non2xx.group(1)) if non2xx else 0)}


def serve(bundle: Path, db: str, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "privmed.cli", "api", "--port", str(port), "--bundle", str(bundle),
                             "--db-url", db, "--log-level", "warning"], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/health")
    return proc, base


def signed_env(tmp: Path, every: int, tsa_url: str) -> tuple[dict, subprocess.Popen, list[str]]:
    """Keys, a witness process and the variables that turn checkpoints on; plus verify's flags."""
    from privmed.cli import main as cli

    keys, state = tmp / "keys", tmp / "witness"
    cli(["log", "keygen", "--out", str(keys)])
    cli(["log", "witness", "init", "--state", str(state), "--log-pubkey", str(keys / "privmed-log.pub")])
    port = free_port()
    witness = subprocess.Popen([sys.executable, "-m", "privmed.cli", "log", "witness", "serve", "--state", str(state),
                                "--port", str(port)], stdout=subprocess.DEVNULL, start_new_session=True)
    wurl = f"http://127.0.0.1:{port}"
    wait_up(wurl + "/checkpoint")
    env = {"PRIVMED_LOG_SINK": str(tmp / "sink.jsonl"), "PRIVMED_LOG_KEY": str(keys / "privmed-log.key"),
           "PRIVMED_LOG_CHECKPOINT_EVERY": str(every), "PRIVMED_LOG_WITNESS_URL": wurl, "PRIVMED_LOG_TSA_URL": tsa_url}
    flags = ["--sink", env["PRIVMED_LOG_SINK"], "--pubkey", str(keys / "privmed-log.pub"), "--witness", wurl,
             "--witness-pubkey", str(state / "witness.pub")]
    return env, witness, flags


def one_round(a, bundle: Path, body: Path, ctype: str, signed: bool, tsa) -> dict:
    from privmed.api.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="privmed-audit-cost-"))
    db = f"sqlite:///{tmp / 'audit.db'}"
    key = Store(db).create_key("clinician", "load test")[1]
    env, witness, flags = dict(os.environ, PRIVMED_BUNDLES=str(tmp / "none")), None, []
    if signed:
        extra, witness, flags = signed_env(tmp, a.every, tsa.url)
        env.update(extra)
        flags += ["--tsa-cert", str(tsa.cert), "--tsa-roots", str(tsa.root)]
    proc, base = serve(bundle, db, env)
    try:
        ab(base + "/v1/predict", key, body, ctype, a.clients, 5)  # warm-up, not counted
        r = ab(base + "/v1/predict", key, body, ctype, a.clients, a.duration)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    verify = subprocess.run([sys.executable, "-m", "privmed.cli", "log", "verify", "--db-url", db, *flags],
                            capture_output=True, text=True)
    if witness:
        os.killpg(witness.pid, 15)
        witness.wait(10)
    r["verify"] = (verify.stdout or verify.stderr).strip()
    r["verified"] = verify.returncode == 0
    r["checkpoints"] = len((tmp / "sink.jsonl").read_text().splitlines()) if signed else 0
    shutil.rmtree(tmp, ignore_errors=True)
    return r


def main(argv=None):
    from privmed.config import bundles_dir, default_data_root
    from privmed.inference.onnx_export import export
    from tsa import LocalTSA

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=bundles_dir() / "chest_xray_pneumonia")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--append", type=Path)
    a = ap.parse_args(argv)
    if not shutil.which("ab"):
        sys.exit("ab (ApacheBench) not found: apt-get install apache2-utils")
    work = Path(tempfile.mkdtemp(prefix="privmed-audit-bench-"))
    bundle = Path(shutil.copytree(a.bundle, work / "bundle"))
    export(bundle)  # the served path of issue 30's goal: ONNX Runtime
    image = sorted((a.data_root / "chest_xray_pneumonia" / "test" / "normal").glob("*.jpeg"))[0]
    data, ctype = multipart(image)
    body = work / "body.bin"
    body.write_bytes(data)
    rows = {False: [], True: []}
    with LocalTSA(work) as tsa:
        for i in range(a.rounds):
            for signed in (False, True):
                r = one_round(a, bundle, body, ctype, signed, tsa)
                print(f"round {i + 1} {'signed' if signed else 'chain only'}: {r}", flush=True)
                rows[signed].append(r)
    shutil.rmtree(work, ignore_errors=True)
    report(a, image, rows)


def report(a, image: Path, rows: dict) -> None:
    off = sum(r["rps"] for r in rows[False]) / len(rows[False])
    on = sum(r["rps"] for r in rows[True]) / len(rows[True])
    lines = [f"### Cost of signed audit checkpoints under load ({a.clients} clients), {time.strftime('%Y-%m-%d')}", "",
             f"Command: `python benchmarks/bench_audit_cost.py --clients {a.clients} --duration {a.duration:.0f} "
             f"--rounds {a.rounds} --every {a.every}`  ",
             f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU; ApacheBench and the server on the "
             f"same cores (load average {os.getloadavg()[0]:.1f} at the end). One uvicorn process, ONNX Runtime, "
             "auth on, "
             f"SQLite audit log; one real chest X-ray JPEG ({image.name}) per request.  ",
             f"Signed: Merkle tree, an Ed25519 checkpoint every {a.every} rows, each stamped by a local RFC 3161 "
             "authority (openssl) and co-signed by a witness process.",
             "", "| configuration | round | requests | images/s | failed | checkpoints | log verify |",
             "|---|---|---|---|---|---|---|"]
    for signed in (False, True):
        for i, r in enumerate(rows[signed], 1):
            name, ok = "signed checkpoints" if signed else "hash chain only", "ok" if r["verified"] else "FAILED"
            lines.append(f"| {name} | {i} | {r['requests']} | {r['rps']:.1f} | {r['failed']} | {r['checkpoints']} | "
                         f"{ok} |")
    lines += ["", f"Mean images/s: chain only {off:.1f}, signed {on:.1f}: cost {100 * (1 - on / off):+.1f} % "
                  "(positive = slower).", ""]
    text = "\n".join(lines)
    print(text)
    if a.append:
        with a.append.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
