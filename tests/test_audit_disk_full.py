"""Disk full on the audit database during load (issue 33, item 4: fail closed).

A real uvicorn server on a real SQLite audit log serves several concurrent clients posting real X-rays
until well past the moment the database is full. Two ways to fill it, no mocks:

* ``page-cap``: SQLite's ``PRAGMA max_page_count`` (per connection, so installed on every connection of
  the store's pool) a few pages above the current size: "database or disk is full". Runs everywhere.
* ``tmpfs``: the database on a real tmpfs filled by a filler file to a few KiB (the write-ahead log then
  hits ENOSPC); space returns when the filler is deleted. Needs root and ``mount``; skipped otherwise.

Checked: every 200 has its audit row (same count, same input hashes, same key), every other answer is a
503 saying the audit log could not be written (no 500, nothing else), the chain and the SQLite file are
intact right after the failures (nothing half-written), and once space returns the next requests are
served and logged and ``privmed log verify`` (also against the signed checkpoints, every 5 rows, when
configured) says intact with the right row count.

The last three tests failed before (2026-12-05): the 503 and the log said "concurrent writers", not that
the disk was full; metrics counted refused requests as 200; a full disk under the checkpoint sink left a
torn line that made `log verify` report tampering once space returned.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event  # noqa: E402

from privmed.api import translog  # noqa: E402
from privmed.api.server import Settings, create_app  # noqa: E402
from privmed.api.store import Store  # noqa: E402
from privmed.cli import main  # noqa: E402

CLIENTS = 4
HEADROOM_PAGES = 3  # page-cap: ~20 prediction rows of ~600 bytes still fit
HEADROOM_BYTES = 96 * 1024  # tmpfs: ~10 commits of the write-ahead log (2-3 pages each)
FAILS_PER_CLIENT = 6  # each client goes on until it has seen this many 503s: well past the full point
MAX_PER_CLIENT = 80  # safety stop should the database never fill
AFTER_PER_CLIENT = 4  # requests per client once space returns
EVERY = 5  # a signed checkpoint every 5 rows
REFUSED = "audit log could not be written"


# ---------- ways to fill the audit database
class PageCap:
    """``PRAGMA max_page_count`` on every new connection of the store's pool (the pragma is per
    connection); the pool is emptied on each change so that no connection keeps the old limit."""

    def __init__(self, store: Store, db: Path):
        self.store, self.db, self.pages = store, db, None

        @event.listens_for(store.engine, "connect")
        def _limit(dbapi_conn, _):
            if self.pages is not None:
                dbapi_conn.execute(f"PRAGMA max_page_count = {int(self.pages)}")

    def fill(self) -> None:
        con = sqlite3.connect(self.db)
        self.pages = con.execute("PRAGMA page_count").fetchone()[0] + HEADROOM_PAGES
        con.close()
        self.store.engine.dispose()

    def is_full(self) -> bool:
        with self.store.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA page_count").scalar() == self.pages

    def free(self) -> None:
        self.pages = None
        self.store.engine.dispose()


class FullDisk:
    """A filler file takes all but ``headroom`` bytes of the filesystem; deleting it frees the space."""

    def __init__(self, folder: Path):
        self.folder, self.filler = folder, folder / "filler"

    def fill(self, headroom: int = HEADROOM_BYTES) -> None:
        chunk = b"\0" * 65536
        with open(self.filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
            f.truncate(max(0, os.fstat(f.fileno()).st_size - headroom))

    def free_bytes(self) -> int:
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize

    def is_full(self) -> bool:
        return self.free_bytes() < 16 * 1024

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 2 MiB tmpfs; skipped where this process may not mount one (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


# ---------- the server and its clients
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uvicorn:
    """The app served by a real uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def load(base: str, key: str, images: list[Path], stop) -> list[tuple[str, int, dict]]:
    """CLIENTS threads POST /v1/predict at once, each until ``stop(its answers so far)``; returns
    (sha256 of the image sent, status, JSON body) of every answer."""
    out: list[tuple[str, int, dict]] = []
    errors: list[BaseException] = []
    lock, go = threading.Lock(), threading.Barrier(CLIENTS)

    def client(c: int):
        mine = []
        try:
            with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {key}"}) as h:
                go.wait()
                i = c
                while not stop(mine):
                    f = images[i % len(images)]
                    data = f.read_bytes()
                    r = h.post("/v1/predict", files={"file": (f.name, data, "image/jpeg")})
                    mine.append((hashlib.sha256(data).hexdigest(), r.status_code, r.json()))
                    i += CLIENTS
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a client hung"
    return out


def assert_every_200_logged(store: Store, answers, key_id: str) -> None:
    rows = [r for r in store.rows(0, 100_000) if r["path"] == "/v1/predict"]
    served = [(h, body) for h, status, body in answers if status == 200]
    # a row for each prediction served and for nothing else (a 503 was refused because its row failed)
    assert sorted(r["status"] for r in rows) == [200] * len(served)
    assert {r["key_id"] for r in rows} <= {key_id}
    for h, body in served:
        assert [res["input_sha256"] for res in body["results"]] == [h]
    assert Counter(h for r in rows for h in json.loads(r["input_sha256"])) == Counter(h for h, _ in served)


def verify_cli(url: str, capsys, *extra: str) -> tuple[int, dict, str]:
    """``privmed log verify``: (exit code, its --json report, its plain-text line)."""
    capsys.readouterr()
    rc = main(["log", "verify", "--db-url", url, "--json", *extra])
    report = json.loads(capsys.readouterr().out)
    assert main(["log", "verify", "--db-url", url, *extra]) == rc
    return rc, report, capsys.readouterr().out


def images_of(data_root: Path) -> list[Path]:
    images = sorted((data_root / "covid19_xray" / "test").glob("*/*"))
    assert len(images) >= 20
    return images


def signing_config(tmp_path: Path, sink: Path, every: int = EVERY) -> tuple[translog.LogConfig, list[str]]:
    """A fresh key pair (`privmed log keygen`), the LogConfig the API uses and the verify flags."""
    assert main(["log", "keygen", "--out", str(tmp_path / "keys")]) == 0
    cfg = translog.LogConfig(sink=sink, key=tmp_path / "keys/privmed-log.key", every=every)
    return cfg, ["--sink", str(sink), "--pubkey", str(tmp_path / "keys/privmed-log.pub")]


# ---------- the goal
@pytest.mark.parametrize("signed", [False, True], ids=["chain", "signed"])
@pytest.mark.parametrize("medium", ["page-cap", "tmpfs"])
def test_full_audit_database_under_load_fails_closed_and_recovers(medium, signed, small_bundle, data_root,
                                                                  tmp_path, capsys, request):
    folder = request.getfixturevalue("tiny_fs") if medium == "tmpfs" else tmp_path
    db = folder / "audit.db"
    url = f"sqlite:///{db}"
    # the sink lives apart from the database (another disk or host in production): here its own folder
    cfg, flags = signing_config(tmp_path, tmp_path / "sink.jsonl") if signed else (None, [])
    app = create_app(Settings(db_url=url, bundles=[small_bundle], scan_default_bundles=False, translog=cfg))
    store: Store = app.state.store
    key_id, key = store.create_key("clinician", "disk-full test")
    images = images_of(data_root)
    medium_ = PageCap(store, db) if medium == "page-cap" else FullDisk(folder)
    medium_.fill()

    with Uvicorn(app) as base:
        # ---- load until the database is full, and well past it
        answers = load(base, key, images, stop=lambda mine: sum(s != 200 for _, s, _ in mine) >= FAILS_PER_CLIENT
                       or len(mine) >= MAX_PER_CLIENT)
        statuses = Counter(s for _, s, _ in answers)
        assert set(statuses) <= {200, 503}, statuses  # no 500, nothing else
        assert statuses[503] >= CLIENTS * FAILS_PER_CLIENT, statuses
        assert statuses[200] >= 3, statuses  # rows were written until the database filled up
        for _, s, body in answers:
            if s == 503:
                assert REFUSED in body["detail"] and "results" not in body, body  # the prediction is withheld
        assert medium_.is_full()  # the failures are the full database, not anything else
        assert httpx.get(f"{base}/health").status_code == 200  # and the server is still up

        # ---- right after the failures: every served prediction logged, nothing half-written
        assert_every_200_logged(store, answers, key_id)
        v = store.verify()
        assert v["ok"] and v["rows"] == statuses[200], v
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()

        # ---- space returns: the next requests are served and logged
        medium_.free()
        after = load(base, key, images, stop=lambda mine: len(mine) >= AFTER_PER_CLIENT)
        assert Counter(s for _, s, _ in after) == {200: CLIENTS * AFTER_PER_CLIENT}, [b for _, _, b in after]
        assert_every_200_logged(store, answers + after, key_id)

    total = statuses[200] + CLIENTS * AFTER_PER_CLIENT
    v = store.verify()
    assert v["ok"] and v["rows"] == total, v
    store.engine.dispose()
    rc, report, text = verify_cli(url, capsys, *flags)
    assert rc == 0 and report["ok"] and report["rows"] == total, report
    assert f"audit log intact: {total} rows" in text, text
    if signed:
        sink = report["sink"]
        assert sink["ok"] and sink["checkpoints"] >= 2 and sink["rows_uncovered"] < EVERY, sink
        assert "signed checkpoints verify" in text, text


# ---------- found wrong by this file's first version, fixed: the cause named, metrics, no torn sink line
def test_full_database_503_names_the_cause_and_metrics_count_it(small_bundle, data_root, tmp_path, caplog):
    db = tmp_path / "audit.db"
    app = create_app(Settings(db_url=f"sqlite:///{db}", bundles=[small_bundle], scan_default_bundles=False))
    store: Store = app.state.store
    key = store.create_key("clinician")[1]
    PageCap(store, db).fill()
    images = images_of(data_root)
    seen, refusals = Counter(), []
    with TestClient(app) as client:
        for i in range(200):
            f = images[i % len(images)]
            r = client.post("/v1/predict", files={"file": (f.name, f.read_bytes(), "image/jpeg")},
                            headers={"Authorization": f"Bearer {key}"})
            seen[r.status_code] += 1
            if r.status_code != 200:
                refusals.append(r.json()["detail"])
            if seen[503] >= 3:
                break
        text = client.get("/metrics").text
    assert seen[503] == 3 and all(REFUSED in d and "full" in d for d in refusals), refusals  # 503 says why
    assert "database or disk is full" in caplog.text  # the operator's log names the cause
    counted = {int(s): float(n) for s, n in
               re.findall(r'privmed_requests_total\{method="POST",route="/v1/predict",status="(\d+)"\} (\S+)', text)}
    assert counted == {s: float(n) for s, n in seen.items()}, (seen, counted)  # refusals counted as 503


def test_sink_on_a_full_disk_leaves_no_torn_line(small_bundle, tmp_path, tiny_fs, capsys):
    """The database has space; the checkpoint sink's disk is full. The request due a checkpoint gets a 503
    (by design the row is written, the answer is withheld); the sink must not keep half a line."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    sink = tiny_fs / "sink.jsonl"
    cfg, flags = signing_config(tmp_path, sink, every=1)
    app = create_app(Settings(db_url=url, bundles=[small_bundle], scan_default_bundles=False, translog=cfg))
    key = app.state.store.create_key("clinician")[1]
    h = {"Authorization": f"Bearer {key}"}
    disk = FullDisk(tiny_fs)
    with TestClient(app) as client:
        # checkpoints until the sink's last 4 KiB page cannot hold one more line: the next one needs a new page
        while True:
            assert client.get("/v1/models", headers=h).status_code == 200
            size, line = sink.stat().st_size, len(sink.read_text().splitlines()[-1]) + 1
            if 0 < 4096 - size % 4096 < line - 8:
                break
        disk.fill(headroom=0)
        r = client.get("/v1/models", headers=h)
        assert r.status_code == 503 and "checkpoint" in r.json()["detail"], r.text
        assert sink.stat().st_size == size and sink.read_bytes().endswith(b"\n")  # nothing half-written
        disk.free()
        assert client.get("/v1/models", headers=h).status_code == 200
    rc, report, _ = verify_cli(url, capsys, *flags)
    assert rc == 0 and report["sink"]["ok"], report
