"""Keys and roles (issue 33, item 5): API keys expire and rotate (store, API, ``privmed keys rotate``), a
database made before keys expired is migrated, CLI key actions are in the audit chain, and the auditor
can verify but never write (403 on every writing endpoint; a read-only store, also on a 0444 SQLite
file in a 0555 folder, and a SELECT-only PostgreSQL role)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from privmed.api.server import Settings, create_app
from privmed.api.store import ExpiredKey, ReadOnlyStore, RevokedKey, Store, UnknownKey, _hash_secret
from privmed.cli import main
from privmed.errors import PrivmedError

WRITING = {"POST", "PUT", "PATCH", "DELETE"}


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def expire(db: Path, key_id: str) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE api_keys SET expires_at = '2020-01-01T00:00:00.000+00:00' WHERE key_id = ?", (key_id,))
    con.commit()
    con.close()


@pytest.fixture
def api(tmp_path):
    db = tmp_path / "a.db"
    app = create_app(Settings(db_url=url_of(db), bundles=[], scan_default_bundles=False))
    store: Store = app.state.store
    keys = {role: store.create_key(role) for role in ("clinician", "auditor", "admin")}
    with TestClient(app) as client:
        client.db, client.store, client.keys = db, store, keys
        yield client


def auth(client, role: str) -> dict:
    return {"Authorization": f"Bearer {client.keys[role][1]}"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---------- expiry


def test_keys_expire_after_90_days_unless_never_is_asked_for(tmp_path):
    store = Store(url_of(tmp_path / "a.db"))
    key_id, key = store.create_key("clinician", "ward 3")
    info = store.key_info(key_id)
    days = (dt.datetime.fromisoformat(info["expires_at"]) - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    assert 89.9 < days <= 90 and info["expired"] is False
    never_id, _ = store.create_key("auditor", expires_days=None)
    assert store.key_info(never_id)["expires_at"] is None
    for bad in (0, -1, 5000):
        with pytest.raises(ValueError, match="never expires"):
            store.create_key("clinician", expires_days=bad)
    expire(tmp_path / "a.db", key_id)
    with pytest.raises(ExpiredKey, match=r"expired API key \(expired 2020-01-01.*\): ask an admin to rotate it"):
        store.authenticate(key)
    assert store.authenticate(key[:-2] + "xx") is None  # a wrong secret says nothing about expiry
    assert store.key_info(key_id)["expired"] is True


def test_expired_key_401_names_the_date_and_is_logged_under_its_id(api):
    key_id = api.keys["clinician"][0]
    expire(api.db, key_id)
    r = api.get("/v1/models", headers=auth(api, "clinician"))
    assert r.status_code == 401
    assert r.json()["detail"] == "expired API key (expired 2020-01-01T00:00:00.000+00:00): ask an admin to rotate it"
    row = api.store.rows(0, 100)[-1]
    assert row["key_id"] == key_id and row["status"] == 401 and "expired" in row["detail"]
    listed = {k["key_id"]: k for k in api.get("/v1/keys", headers=auth(api, "admin")).json()["keys"]}
    assert listed[key_id]["expired"] is True and listed[key_id]["expires_at"].startswith("2020")


def test_api_create_key_expiry(api):
    h = auth(api, "admin")
    r = api.post("/v1/keys", json={"role": "clinician", "expires_days": 7}, headers=h)
    assert r.status_code == 201 and r.json()["expires_at"]
    r = api.post("/v1/keys", json={"role": "clinician", "never_expires": True}, headers=h)
    assert r.status_code == 201 and r.json()["expires_at"] is None
    for bad in ({"expires_days": 0}, {"expires_days": "30"}, {"expires_days": True}, {"never_expires": "yes"}):
        r = api.post("/v1/keys", json={"role": "clinician", **bad}, headers=h)
        assert r.status_code == 400, bad


# ---------- migration


OLD_API_KEYS = """CREATE TABLE api_keys (key_id VARCHAR(32) NOT NULL PRIMARY KEY, role VARCHAR(16) NOT NULL,
    label VARCHAR(200), salt VARCHAR(64) NOT NULL, key_hash VARCHAR(64) NOT NULL, created_at VARCHAR(40) NOT NULL,
    revoked_at VARCHAR(40))"""


def test_database_from_before_expiry_is_migrated(tmp_path):
    """A database made before keys expired: the column is added at start-up, its keys never expire."""
    db = tmp_path / "old.db"
    salt, secret = "00" * 16, "s3cret"
    con = sqlite3.connect(db)
    con.execute(OLD_API_KEYS)
    con.execute("INSERT INTO api_keys VALUES ('oldkey', 'clinician', 'legacy', ?, ?, '2024-01-01T00:00:00+00:00', "
                "NULL)", (salt, _hash_secret(salt, secret)))
    con.commit()
    con.close()
    store = Store(url_of(db))
    assert "expires_at" in [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(api_keys)")]
    assert store.authenticate(f"pmk_oldkey_{secret}").role == "clinician"
    (k,) = store.list_keys()
    assert k["expires_at"] is None and k["expired"] is False and k["label"] == "legacy"
    Store(url_of(db))  # a second start-up finds the column and changes nothing
    _, new_key = store.rotate_key("oldkey")
    assert store.authenticate(new_key).role == "clinician" and store.key_info("oldkey")["expires_at"]


# ---------- rotation


def test_rotate_in_the_store(tmp_path):
    store = Store(url_of(tmp_path / "a.db"))
    old_id, old_key = store.create_key("clinician", "ward 3")
    new_id, new_key = store.rotate_key(old_id, grace_hours=2, expires_days=30)
    assert new_id != old_id and new_key != old_key
    new, old = store.key_info(new_id), store.key_info(old_id)
    assert (new["role"], new["label"]) == ("clinician", "ward 3")
    grace = dt.datetime.fromisoformat(old["expires_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1.9) < grace <= dt.timedelta(hours=2)
    assert store.authenticate(old_key).key_id == old_id  # clients can switch within the grace period
    store.rotate_key(old_id, grace_hours=48)  # never moves an expiry later
    assert store.key_info(old_id)["expires_at"] == old["expires_at"]
    store.rotate_key(old_id, grace_hours=0)
    with pytest.raises(ExpiredKey):
        store.authenticate(old_key)
    store.rotate_key(old_id)  # an expired key can be rotated (that is what its holder is told to ask for)
    with pytest.raises(UnknownKey, match="no key with id 'nope'"):
        store.rotate_key("nope")
    store.revoke_key(new_id)
    with pytest.raises(RevokedKey, match="was revoked .* create a new one"):
        store.rotate_key(new_id)
    assert store.key_info(store.rotate_key(old_id, expires_days=None)[0])["expires_at"] is None


def test_rotate_endpoint(api):
    h, (cid, ckey) = auth(api, "admin"), api.keys["clinician"]
    r = api.post(f"/v1/keys/{cid}/rotate", params={"grace_hours": 1, "expires_days": 10}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["replaces"] == cid and body["role"] == "clinician" and body["key"].startswith("pmk_")
    assert api.get("/v1/models", headers=bearer(body["key"])).status_code == 200
    assert api.get("/v1/models", headers=bearer(ckey)).status_code == 200  # grace period
    assert api.post(f"/v1/keys/{cid}/rotate", params={"grace_hours": 0}, headers=h).status_code == 201
    r = api.get("/v1/models", headers=bearer(ckey))
    assert r.status_code == 401 and "rotate" in r.json()["detail"]
    assert api.post("/v1/keys/nope/rotate", headers=h).status_code == 404
    assert api.delete(f"/v1/keys/{body['key_id']}", headers=h).status_code == 200
    r = api.post(f"/v1/keys/{body['key_id']}/rotate", headers=h)
    assert r.status_code == 400 and "revoked" in r.json()["detail"]
    assert api.post(f"/v1/keys/{cid}/rotate", params={"grace_hours": -1}, headers=h).status_code == 422
    r = api.post(f"/v1/keys/{cid}/rotate", params={"never_expires": "true"}, headers=h)
    assert r.status_code == 201 and r.json()["expires_at"] is None
    rot = [x for x in api.store.rows(0, 1000) if x["path"] == "/v1/keys/{key_id}/rotate" and x["status"] == 201]
    assert json.loads(rot[0]["output"]) == {"rotated_key_id": cid, "created_key_id": body["key_id"],
                                            "role": "clinician"}
    schema = api.get("/openapi.json").json()["paths"]["/v1/keys/{key_id}/rotate"]["post"]
    assert {p["name"] for p in schema["parameters"]} == {"key_id", "grace_hours", "expires_days", "never_expires"}


# ---------- CLI: rotate, list, and every key action in the audit chain


def test_cli_key_actions_are_in_the_audit_chain(tmp_path, capsys):
    db = tmp_path / "a.db"
    url = url_of(db)
    assert main(["keys", "create", "--role", "clinician", "--label", "ward 3", "--db-url", url, "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main(["keys", "rotate", created["key_id"], "--grace-hours", "0", "--expires-days", "30",
                 "--db-url", url, "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["role"] == "clinician" and rotated["key"] != created["key"]
    assert main(["keys", "revoke", rotated["key_id"], "--db-url", url]) == 0
    assert main(["keys", "revoke", "nope", "--db-url", url]) == 2
    assert main(["keys", "rotate", "nope", "--db-url", url]) == 2
    assert "no key with id 'nope'" in capsys.readouterr().err
    assert main(["keys", "create", "--role", "admin", "--never-expires", "--db-url", url]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # one or the other
        main(["keys", "create", "--role", "admin", "--never-expires", "--expires-days", "5", "--db-url", url])
    assert main(["keys", "list", "--db-url", url]) == 0
    listing = capsys.readouterr().out
    assert f"{created['key_id']}  clinician" in listing and "EXPIRED" in listing and "REVOKED" in listing
    assert "never expires" in listing

    store = Store(url)
    rows = [r for r in store.rows(0, 100) if r["method"] == "CLI"]
    assert [(r["path"], r["status"]) for r in rows] == [("keys create", 0), ("keys rotate", 0), ("keys revoke", 0),
                                                         ("keys revoke", 2), ("keys rotate", 2), ("keys create", 0)]
    assert json.loads(rows[1]["output"]) == {"rotated_key_id": created["key_id"],
                                             "created_key_id": rotated["key_id"], "role": "clinician"}
    assert all("OS user" in r["detail"] for r in rows)
    assert store.verify()["ok"]
    dump = "\n".join(json.dumps(r) for r in store.rows(0, 100))
    assert created["key"] not in dump and rotated["key"] not in dump
    secret = rotated["key"].split("_", 2)[2]
    assert secret.encode() not in db.read_bytes()


def test_a_revoked_key_stops_at_the_next_request(api):
    key_id, key = api.keys["clinician"]
    assert api.store.reads_never_wait  # a SQLite file in WAL mode: the key is looked up on the event loop
    assert api.get("/v1/models", headers=bearer(key)).status_code == 200
    Store(url_of(api.db)).revoke_key(key_id)  # another process's store, as `privmed keys revoke` does
    r = api.get("/v1/models", headers=bearer(key))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert not Store("sqlite://").reads_never_wait  # no WAL in memory: lookups go to a thread


# ---------- the auditor verifies but never writes


def test_auditor_gets_403_on_every_writing_endpoint(api):
    # every route, read from the OpenAPI (included routers are not flattened into app.routes)
    writing = [(m.upper(), path) for path, ops in api.app.openapi()["paths"].items() for m in ops
               if m.upper() in WRITING]
    paths = {p for _, p in writing}
    assert {"/v1/predict", "/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/rotate"} <= paths
    target = api.keys["clinician"][0]
    before = len(api.store.list_keys())
    for method, path in writing:
        r = api.request(method, path.replace("{key_id}", target), headers=auth(api, "auditor"), json={"role": "admin"})
        assert r.status_code == 403, (method, path, r.status_code)
    assert len(api.store.list_keys()) == before and api.store.key_info(target)["revoked_at"] is None
    assert api.get("/v1/keys", headers=auth(api, "auditor")).status_code == 403
    for path in ("/v1/audit", "/v1/audit/verify"):
        assert api.get(path, headers=auth(api, "auditor")).status_code == 200
    assert api.get("/v1/audit/verify", headers=auth(api, "auditor")).json()["ok"] is True


def test_read_only_store_refuses_every_write(tmp_path):
    url = url_of(tmp_path / "a.db")
    with pytest.raises(PrivmedError, match="no audit database"):
        Store(url, readonly=True)
    assert not (tmp_path / "a.db").exists()  # never created
    w = Store(url)
    key_id, _ = w.create_key("clinician")
    w.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    ro = Store(url, readonly=True)
    assert ro.verify()["ok"] and len(ro.rows()) == 1
    for write in (lambda: ro.append(method="GET", path="/x", status=200, latency_ms=1.0),
                  lambda: ro.create_key("admin"), lambda: ro.revoke_key(key_id), lambda: ro.rotate_key(key_id)):
        with pytest.raises(ReadOnlyStore, match=r"this store is opened read-only \(auditor\)"):
            write()
    with ro.engine.connect() as c, pytest.raises(Exception, match="readonly|read-only|query_only"):
        c.exec_driver_sql("DELETE FROM audit_log")
    assert len(w.rows()) == 1 and w.key_info(key_id)["revoked_at"] is None


def _populated(db: Path) -> None:
    store = Store(url_of(db))
    store.create_key("auditor")
    for i in range(5):
        store.append(method="GET", path="/v1/models", status=200, latency_ms=1.0 + i)
    store.engine.dispose()  # the last connection merges the write-ahead log into the file


def _as_unprivileged(fn) -> int:
    """``fn()``'s return code, run as user nobody when the tests run as root (root ignores file modes)."""
    if os.geteuid() != 0:
        return fn()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            rc = fn()
        finally:
            os._exit(rc)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_auditor_verifies_a_read_only_file_in_a_read_only_folder(tmp_path, capfd):
    warm = tmp_path / "warm.db"  # imports everything `log verify` needs before dropping root
    _populated(warm)
    assert main(["log", "verify", "--db-url", url_of(warm)]) == 0
    folder = Path(tempfile.mkdtemp(prefix="privmed-ro-"))  # outside pytest's 0700 folders, for user nobody
    db = folder / "audit.db"
    try:
        _populated(db)
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        db.chmod(0o444)
        folder.chmod(0o555)
        capfd.readouterr()
        assert _as_unprivileged(lambda: main(["log", "verify", "--db-url", url_of(db)])) == 0
        assert "audit log intact: 5 rows" in capfd.readouterr().out
        assert _as_unprivileged(lambda: main(["log", "show", "--db-url", url_of(db), "--limit", "2"])) == 0
        assert len(capfd.readouterr().out.splitlines()) == 2
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
        assert sorted(x.name for x in folder.iterdir()) == ["audit.db"]  # no -shm could be made: immutable
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
        shutil.rmtree(folder)


def test_unmerged_log_in_a_read_only_folder_is_refused_clearly(tmp_path, monkeypatch):
    """No -shm (so no writer is active) but a -wal with rows: immutable would miss them, so refuse."""
    import privmed.api.store as store_mod

    db = tmp_path / "a.db"
    _populated(db)
    (tmp_path / "a.db-wal").write_bytes(b"\0" * 64)
    real = sqlite3.connect

    def connect(database, *a, **k):  # what mode=ro answers when it cannot create the -shm
        if str(database).endswith("?mode=ro"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(database, *a, **k)

    monkeypatch.setattr(store_mod.sqlite3, "connect", connect)
    with pytest.raises(PrivmedError, match="not yet merged .* ask its owner"):
        Store(url_of(db), readonly=True).verify()


def test_verify_does_not_change_a_writable_database(tmp_path, capsys):
    db = tmp_path / "a.db"
    _populated(db)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for cmd in (["log", "verify"], ["log", "show"], ["log", "verify", "--json"]):
        assert main([*cmd, "--db-url", url_of(db)]) == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    live = Store(url_of(db))  # a live writer: the auditor reads through its WAL index, sees its new rows
    live.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    assert Store(url_of(db), readonly=True).verify()["rows"] == 6
    capsys.readouterr()
    assert main(["log", "verify", "--db-url", url_of(db)]) == 0
    assert "6 rows" in capsys.readouterr().out


def test_postgres_auditor_role_with_select_only(postgres_url):
    """The docstring's advice: an auditor connecting as a SELECT-only role, read-only store on top."""
    import secrets

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    admin = Store(postgres_url)
    admin.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    role, pw = f"auditor_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with admin.engine.begin() as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'"))
        c.execute(text(f"GRANT SELECT ON audit_log, audit_head TO {role}"))
    url = make_url(postgres_url).set(username=role, password=pw).render_as_string(hide_password=False)
    ro = Store(url, readonly=True)
    assert ro.verify()["ok"]
    with pytest.raises(ReadOnlyStore):
        ro.append(method="GET", path="/x", status=200, latency_ms=1.0)
    with ro.engine.connect() as c, pytest.raises(Exception, match="read-only transaction|permission denied"):
        c.execute(text("DELETE FROM audit_log"))
    assert admin.verify()["ok"]
    plain = Store(postgres_url, readonly=True)  # even the owner's role: every transaction is READ ONLY
    with plain.engine.connect() as c, pytest.raises(Exception, match="read-only transaction"):
        c.execute(text("DELETE FROM audit_log"))
    assert admin.verify()["ok"]
