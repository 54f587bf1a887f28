"""Process mode (``privmed federate --engine processes``): one ``flower-superlink`` and one
``flower-supernode`` per hospital as OS processes on 127.0.0.1, the app started with ``flwr run``.

Layout of the run folder (``<bundle>.run/processes/``, private):
  tls/              CA, SuperLink certificate and key, made at start (``tls=False``: plain HTTP)
  app/              the Flower app ``flwr run`` packs (pyproject.toml; code is privmed.federated.deployed)
  server/           plan.json, initial.npz, checkpoint.npz (per round, atomic), status.json
  hospital-<h>/     site.json (only that hospital's records), state.pt, ledger.json
  logs/             superlink.log, supernode-<h>.log, flwr-run.log
Every process started here (and every process they start: SuperExec, flwr-serverapp, flwr-clientapp)
carries a run token in its environment; shutdown ends exactly those, also after Ctrl-C or an error.
A SuperLink that dies is restarted with fresh SuperNodes and the run resumes from the checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from privmed.errors import PrivmedError
from privmed.files import atomic_write_text

TOKEN_VAR = "PRIVMED_FED_RUN"

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "privmed-federation"
version = "1.0.0"
description = "privmed federated DP-SGD (ClientApp/ServerApp in privmed.federated.deployed)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "privmed"

[tool.flwr.app.components]
serverapp = "privmed.federated.deployed:server"
clientapp = "privmed.federated.deployed:client"

[tool.flwr.app.config]
plan = ""
"""


def flower_commands() -> list[str]:
    """The Flower commands process mode needs that are missing (beside this Python, or on PATH)."""
    bindir = Path(sys.executable).parent
    return [c for c in ("flower-superlink", "flower-supernode", "flwr", "flower-superexec", "flwr-serverapp",
                        "flwr-clientapp") if not (bindir / c).is_file() and not _which(c)]


def _which(cmd: str) -> bool:
    import shutil
    return shutil.which(cmd) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(folder: Path) -> dict[str, Path]:
    """A CA and a SuperLink certificate for 127.0.0.1/localhost, valid one day. A real site uses its
    own (docs/FEDERATED.md)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, issuer, pub, sign_key, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privmed federation CA")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    server = cert(name, ca_name, key.public_key(), ca_key, False,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.crt", "cert": folder / "superlink.crt", "key": folder / "superlink.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(server.public_bytes(pem))
    atomic_write_text(paths["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()).decode(), private=True)
    return paths


def processes_with_token(token: str) -> list[int]:
    """Pids of this user's processes whose environment carries ``token`` (survives re-parenting)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


class Deployment:
    """The OS processes of one federation run."""

    def __init__(self, root: Path, hospitals: list[int], tls: bool):
        self.root, self.hospitals = root, hospitals
        self.token = uuid.uuid4().hex
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tls = make_tls(root / "tls") if tls else None
        home = root / "flwr-home"
        home.mkdir(exist_ok=True, mode=0o700)
        src = str(Path(__file__).resolve().parents[2])  # privmed's source root, for Flower's processes
        self.env = dict(os.environ, FLWR_HOME=str(home),
                        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                        PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                        FLWR_TELEMETRY_ENABLED="0", **{TOKEN_VAR: self.token})
        # each SecAgg+ stage starts a ClientApp task per hospital; Flower's SuperExec looks for one every 1 s
        self.env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[int, subprocess.Popen] = {}
        self.port = 0
        self.starts = 0

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen:
        with open(self.logs / log, "ab") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                    start_new_session=True)  # Ctrl-C reaches privmed, which ends them

    def _secure(self, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if server:
            return ["--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["cert"]),
                    "--ssl-keyfile", str(self.tls["key"])]
        return ["--root-certificates", str(self.tls["ca"])]

    def start(self) -> None:
        """SuperLink, then one SuperNode per hospital, each told only its own hospital folder."""
        self.starts += 1
        self.port = free_port()
        self.superlink = self._spawn(["flower-superlink", *self._secure(True), "--port", str(self.port),
                                      "--disable-runtime-dependency-installation"], "superlink.log")
        _wait_port(self.port, self.superlink, 120)
        for h in self.hospitals:
            site = self.root / f"hospital-{h}"
            self.supernodes[h] = self._spawn(
                ["flower-supernode", *self._secure(False), "--superlink", f"127.0.0.1:{self.port}",
                 "--port", str(free_port()), "--node-config", f'hospital={h} site="{site}"'],
                f"supernode-{h}.log")
        conf = [f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"']
        conf.append(f'root-certificates = "{self.tls["ca"]}"' if self.tls else "insecure = true")
        (Path(self.env["FLWR_HOME"]) / "config.toml").write_text("\n".join(conf) + "\n")

    def flwr_run(self, plan: Path) -> str:
        cmd = ["flwr", "run", str(self.root / "app"), "local", "--format", "json", "--run-config", f'plan="{plan}"']
        with open(self.logs / "flwr-run.log", "ab") as f:
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, env=self.env, cwd=self.root, timeout=300)
            except subprocess.TimeoutExpired:
                raise PrivmedError(f"flwr run did not answer in 300 s; see {self.logs / 'flwr-run.log'}") from None
        f_out = p.stdout.decode(errors="replace")
        with open(self.logs / "flwr-run.log", "a") as f:
            f.write(f_out)
        try:
            res = json.loads(f_out[f_out.index("{"):])
        except ValueError:
            res = {}
        if p.returncode != 0 or not res.get("success"):
            raise PrivmedError(f"flwr run failed (exit {p.returncode}); see {self.logs / 'flwr-run.log'}")
        return str(res["run-id"])

    def save_serverapp_log(self, run_id: str) -> None:
        """The ServerApp's output lives in the SuperLink; copy it into logs/serverapp.log."""
        if self.superlink is None or self.superlink.poll() is not None:
            return
        with open(self.logs / "serverapp.log", "ab") as f:
            try:
                subprocess.run(["flwr", "log", run_id, "local", "--show"], stdout=f, stderr=subprocess.STDOUT,
                               env=self.env, cwd=self.root, timeout=60)
            except subprocess.TimeoutExpired:
                pass

    def kill_supernode(self, h: int) -> None:
        """Fault injection (tests): the SuperNode of hospital ``h`` and its ClientApp processes die."""
        p = self.supernodes[h]
        kids = _children_tree(p.pid)
        for pid in [p.pid, *kids]:
            _signal(pid, signal.SIGKILL)
        p.wait()

    def kill_superlink(self) -> None:
        """Fault injection (tests): the SuperLink dies, with the ServerApp it runs."""
        kids = _children_tree(self.superlink.pid)
        for pid in [self.superlink.pid, *kids]:
            _signal(pid, signal.SIGKILL)
        self.superlink.wait()

    def stop(self, grace: float = 5.0) -> None:
        """End every process of this run (by run token, so re-parented children too)."""
        for _ in range(2):
            pids = processes_with_token(self.token)
            for pid in pids:
                _signal(pid, signal.SIGTERM)
            deadline = time.time() + grace
            while pids and time.time() < deadline:
                time.sleep(0.2)
                _reap([self.superlink, *self.supernodes.values()])
                pids = processes_with_token(self.token)
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.2)
        _reap([self.superlink, *self.supernodes.values()], block=True)


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(procs, block: bool = False) -> None:
    for p in procs:
        if p is not None:
            try:
                p.wait(timeout=1 if block else 0)
            except subprocess.TimeoutExpired:
                pass


def _children_tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise PrivmedError(f"flower-superlink exited with code {proc.returncode} at start (see its log)")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise PrivmedError(f"flower-superlink did not listen on port {port} within {timeout:.0f} s")


def prepare(root: Path, cfg, setup) -> Path:
    """Write the app, the server plan and each hospital's own folder; returns the plan path."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    (root / "app").mkdir(exist_ok=True)
    (root / "app" / "pyproject.toml").write_text(PYPROJECT)
    server = root / "server"
    server.mkdir(exist_ok=True, mode=0o700)
    n = len(setup.site_records)
    secagg = cfg.secagg.enabled
    plan = {"hospitals": n, "rounds": cfg.rounds, "secagg": cfg.secagg.model_dump(), "total_units": 2 * setup.n_units,
            # a round goes on without one dead hospital (SecAgg+ threshold n - 1 allows it)
            "min_hospitals": max(2 if secagg else 1, n - 1), "stage_timeout": cfg.stage_timeout,
            "class_weight_scope": cfg.weight_scope(),
            "node_wait": 120}
    plan["config"] = cfg.model_dump(mode="json")
    path = server / "plan.json"
    (server / "status.json").unlink(missing_ok=True)  # a previous run's verdict
    if (server / "checkpoint.npz").is_file():  # an interrupted run: resume it only if it is the same one
        old = json.loads(path.read_text()) if path.is_file() else None
        if old != plan:
            raise PrivmedError(f"{root} holds the checkpoint of a different federation; delete that folder or "
                               "choose another --out")
    np.savez(server / "initial.npz", **{f"w{i}": w for i, w in enumerate(setup.initial)})
    for h, records in setup.site_records.items():
        site = root / f"hospital-{h}"
        site.mkdir(exist_ok=True, mode=0o700)
        rows = [{"path": str(r.path), "label": r.label, "patient_id": r.patient_id, "index": r.index,
                 "split": r.split, "block": r.block, "copies": r.copies} for r in records]
        atomic_write_text(site / "site.json", json.dumps({
            "hospital": h, "config": cfg.model_dump(mode="json"), "delta": setup.delta,
            "n_classes": len(setup.splits.classes), "records": rows}), private=True)
    atomic_write_text(path, json.dumps(plan))
    return path


def run_processes(cfg, setup, root: Path, progress: bool = True, on_tick=None) -> dict:
    """Run the federation as OS processes; returns weights, per-round log, hospital ledgers, timings.
    ``on_tick(deployment, status)`` is called about once a second (tests inject faults with it)."""
    from tqdm import tqdm

    from privmed.federated.deployed import read_checkpoint

    missing = flower_commands()
    if missing:
        raise PrivmedError(f"--engine processes needs Flower's commands, missing: {', '.join(missing)} "
                           "(pip install -e '.[federated]')")
    plan = prepare(root, cfg, setup)
    dep = Deployment(root, sorted(setup.site_records), cfg.tls)
    bar = tqdm(total=cfg.rounds, desc=f"federate ({len(setup.site_records)} processes)", disable=not progress)
    t0 = time.time()
    timing: dict = {"restarts": 0}
    old = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        dep.start()
        timing["run_ids"] = [dep.flwr_run(plan)]
        timing["startup_seconds"] = round(time.time() - t0, 2)
        status = root / "server" / "status.json"
        deadline = time.time() + cfg.rounds * 6 * cfg.stage_timeout + 600
        shown = 0
        while True:
            time.sleep(1.0)
            ck = read_checkpoint(root / "server" / "checkpoint.npz")
            done = ck[1]["round"] if ck else 0
            if done > shown:
                if shown == 0:
                    timing["first_round_seconds"] = round(time.time() - t0, 2)
                bar.update(done - shown)
                shown = done
            if on_tick:
                on_tick(dep, done)
            if status.is_file():
                st = json.loads(status.read_text())
                if st["state"] == "finished":
                    break
                raise PrivmedError(f"the federation's ServerApp stopped ({st['state']}: {st.get('error', '')}); "
                                   f"logs in {dep.logs}")
            if dep.superlink.poll() is not None:  # SuperLink died: restart all, resume from checkpoint
                if timing["restarts"] >= cfg.restarts:
                    raise PrivmedError(f"flower-superlink died {timing['restarts'] + 1} times; giving up "
                                       f"(checkpoint after round {done} in {root / 'server'})")
                timing["restarts"] += 1
                dep.stop()
                dep.start()
                timing["run_ids"].append(dep.flwr_run(plan))
            if time.time() > deadline:
                raise PrivmedError(f"the federation did not finish in time (round {done} of {cfg.rounds}); "
                                   f"logs in {dep.logs}")
        timing["seconds"] = round(time.time() - t0, 2)
    finally:
        bar.close()
        if timing.get("run_ids"):
            dep.save_serverapp_log(timing["run_ids"][-1])
        dep.stop()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return dict(collect(root, setup), timing=timing)


def collect(root: Path, setup) -> dict:
    """The finished run's global weights, per-round log and each hospital's own public ledger."""
    from privmed.federated.deployed import read_checkpoint

    weights, meta, _ = read_checkpoint(root / "server" / "checkpoint.npz")
    ledgers = {}
    for h in setup.site_records:
        p = root / f"hospital-{h}" / "ledger.json"
        ledgers[h] = json.loads(p.read_text()) if p.is_file() else None
    return {"weights": weights, "rounds": meta["rounds"], "ledgers": ledgers}


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
