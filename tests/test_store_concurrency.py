"""Several processes (each with several threads) append to one audit log at once, on SQLite and on a
real PostgreSQL: the hash chain verifies, no row is lost or duplicated, and keys work on both.
The database URL's password never reaches the CLI's output."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("sqlalchemy")
from privmed.api.store import Store  # noqa: E402

# One writer process: waits for a common start time (so the processes really overlap), then its
# threads append N rows each. Prints how many rows it appended.
WORKER = r"""
import sys, threading, time
from privmed.api.store import Store
url, tag, threads, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
store = Store(url)
done = []
def run(t):
    for i in range(n):
        store.append(key_id=f"{tag}{t}", role="clinician", method="POST", path="/v1/predict", status=200,
                     latency_ms=1.5 + i / 7, epsilon=2.0, input_sha256=[f"{tag}-{t}-{i}"],
                     output=[{"label": "normal", "probabilities": {"normal": 0.25, "pneumonia": 0.75}}])
        done.append(1)
time.sleep(max(0.0, start - time.time()))
ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(done))
"""


def hammer(url: str, procs: int, threads: int, n: int) -> None:
    start = time.time() + 3.0  # every process has imported and connected by then
    ps = [subprocess.Popen([sys.executable, "-c", WORKER, url, f"p{p}", str(threads), str(n), str(start)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(procs)]
    for p in ps:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert int(out.strip()) == threads * n


def check_chain(url: str, expected: int) -> None:
    store = Store(url)
    v = store.verify()
    assert v["ok"], v
    assert v["rows"] == expected
    rows = store.rows(0, expected + 10)
    assert [r["seq"] for r in rows] == list(range(1, expected + 1))
    # every append is there exactly once (no row lost, none written twice)
    inputs = [r["input_sha256"] for r in rows]
    assert len(set(inputs)) == expected


def test_sqlite_two_processes_append_concurrently(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    Store(url)  # create the tables once
    hammer(url, procs=2, threads=2, n=40)
    check_chain(url, 2 * 2 * 40)


def test_postgres_several_processes_append_concurrently(postgres_url):
    store = Store(postgres_url)
    before = store.verify()["rows"]
    hammer(postgres_url, procs=4, threads=3, n=25)
    check_chain(postgres_url, before + 4 * 3 * 25)


def test_postgres_keys_and_log_verify_cli(postgres_url, capsys):
    from sqlalchemy.engine import make_url

    from privmed.cli import main

    store = Store(postgres_url)
    key_id, key = store.create_key("auditor", "pg test")
    assert store.authenticate(key).role == "auditor"
    assert any(k["key_id"] == key_id for k in store.list_keys())
    assert store.revoke_key(key_id) and store.authenticate(key) is None
    store.append(method="GET", path="/v1/models", status=200, latency_ms=0.5)
    capsys.readouterr()
    assert main(["log", "verify", "--db-url", postgres_url]) == 0
    assert main(["log", "verify", "--db-url", postgres_url, "--json"]) == 0
    out = capsys.readouterr()
    password = make_url(postgres_url).password
    assert password and password not in out.out + out.err


def test_postgres_tampering_is_detected(postgres_url):
    from sqlalchemy import text

    store = Store(postgres_url)
    for i in range(3):
        store.append(method="GET", path="/v1/models", status=200, latency_ms=float(i))
    assert store.verify()["ok"]
    last = store.verify()["rows"]
    with store.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET status = 500 WHERE seq = :s"), {"s": last - 1})
    r = store.verify()
    assert not r["ok"] and r["first_bad_seq"] == last - 1 and "edited" in r["problem"]
    with store.engine.begin() as c:  # put it back: the session-wide cluster is shared
        c.execute(text("UPDATE audit_log SET status = 200 WHERE seq = :s"), {"s": last - 1})
    assert store.verify()["ok"]
    json.dumps(r)


def test_api_on_postgres_and_no_password_in_errors(postgres_url, small_bundle, data_root):
    """The REST API on PostgreSQL: keys, a prediction, audit rows, verify; a wrong password fails
    with a message that does not contain the password."""
    from fastapi.testclient import TestClient
    from sqlalchemy.engine import make_url

    from privmed.api.server import Settings, create_app

    app = create_app(Settings(db_url=postgres_url, bundles=[small_bundle], scan_default_bundles=False))
    clin, aud = (app.state.store.create_key(r)[1] for r in ("clinician", "auditor"))
    f = sorted((data_root / "covid19_xray" / "test").glob("*/*"))[0]
    with TestClient(app) as c:
        r = c.post("/v1/predict", files={"file": (f.name, f.read_bytes(), "image/jpeg")},
                   headers={"Authorization": f"Bearer {clin}"})
        assert r.status_code == 200, r.text
        v = c.get("/v1/audit/verify", headers={"Authorization": f"Bearer {aud}"}).json()
        assert v["ok"] and v["rows"] >= 2
    url = make_url(postgres_url)
    wrong = url.set(password="not-the-" + url.password).render_as_string(hide_password=False)
    with pytest.raises(Exception) as e:
        Store(wrong)
    assert url.password not in str(e.value) and "not-the-" not in str(e.value)
