"""Signed checkpoints of the audit log (issue 33): RFC 9162 Merkle hashing and proofs, the append-only
sink, and `privmed log verify/prove/check-proof` against the rewrite that the hash chain alone misses."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import stat

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("cryptography")
from privmed.api import merkle
from privmed.api import translog as t
from privmed.api.store import GENESIS, Store, chain_hash
from privmed.cli import main

# RFC 6962/9162 reference vectors (certificate-transparency's merkle tree tests): roots of the first n leaves
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             b"\x50\x51\x52\x53\x54\x55\x56\x57", bytes(range(0x60, 0x70))]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def brute_root(data: list[bytes]) -> bytes:
    """Independent MTH: hash level by level, a lone last node moves up unchanged (equivalent to RFC 9162)."""
    level = [hashlib.sha256(b"\x00" + d).digest() for d in data]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        level = nxt + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def leaves(n: int) -> tuple[list[bytes], list[bytes]]:
    data = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
    return data, [merkle.leaf_hash(d) for d in data]


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_rfc9162_root_matches_reference_and_brute_force():
    """New: there was no Merkle tree; the chain's head was a plain last hash."""
    hashes = [merkle.leaf_hash(d) for d in CT_LEAVES]
    assert [merkle.root(hashes[:n]).hex() for n in range(1, 9)] == CT_ROOTS
    data, hashes = leaves(20)
    fast = merkle.prefix_roots(hashes, range(1, 21))
    for n in range(1, 21):
        assert merkle.root(hashes[:n]) == brute_root(data[:n]) == fast[n], n


def test_inclusion_proofs_all_sizes_and_tampered_fail():
    """New: no row could be proved to belong to a signed log."""
    _, hashes = leaves(12)
    for n in range(1, 13):
        r = merkle.root(hashes[:n])
        for m in range(n):
            path = merkle.inclusion_path(m, hashes[:n])
            assert merkle.verify_inclusion(hashes[m], m, n, path, r)
            assert not merkle.verify_inclusion(flip(hashes[m]), m, n, path, r)
            assert not merkle.verify_inclusion(hashes[m], m, n, path, flip(r))
            assert not merkle.verify_inclusion(hashes[m], n, n, path, r)  # index out of range
            for i in range(len(path)):
                bad = path[:i] + [flip(path[i])] + path[i + 1:]
                assert not merkle.verify_inclusion(hashes[m], m, n, bad, r)
            if n > 1:
                assert not merkle.verify_inclusion(hashes[m], (m + 1) % n, n, path, r)


def test_consistency_proofs_all_pairs_and_tampered_fail():
    """New: no proof that a later checkpoint extends an earlier one."""
    _, hashes = leaves(12)
    for n in range(1, 13):
        rn = merkle.root(hashes[:n])
        for m in range(1, n + 1):
            rm = merkle.root(hashes[:m])
            path = merkle.consistency_path(m, hashes[:n])
            assert merkle.verify_consistency(m, n, rm, rn, path), (m, n)
            assert not merkle.verify_consistency(m, n, flip(rm), rn, path)
            assert not merkle.verify_consistency(m, n, rm, flip(rn), path)
            for i in range(len(path)):
                assert not merkle.verify_consistency(m, n, rm, rn, path[:i] + [flip(path[i])] + path[i + 1:]), (m, n, i)
            if m < n:  # a different old tree (one leaf changed) is not consistent
                other = hashes[:m - 1] + [flip(hashes[m - 1])]
                assert not merkle.verify_consistency(m, n, merkle.root(other), rn, path)


def make_log(tmp_path, n: int = 5):
    """A real SQLite store with n rows, a key pair and an empty sink."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = Store(url)
    for i in range(n):
        store.append(key_id="k1", role="clinician", method="POST", path="/v1/predict", status=200,
                     latency_ms=1.0 + i, input_sha256=[f"in{i}"],
                     output=[{"label": "normal", "probabilities": {"normal": 0.9 - i / 100, "pneumonia": 0.1}}])
    assert main(["log", "keygen", "--out", str(tmp_path / "keys")]) == 0
    key, pub, sink = tmp_path / "keys/privmed-log.key", tmp_path / "keys/privmed-log.pub", tmp_path / "sink.jsonl"
    return url, store, key, pub, sink


def rechain(db, *statements: str) -> None:
    """The issue's attack: edit rows, recompute every prev_hash/row_hash with chain_hash, update the head."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    for sql in statements:
        con.execute(sql)
    prev = GENESIS
    rows = [dict(r) for r in con.execute("SELECT * FROM audit_log ORDER BY seq")]
    for r in rows:
        h = chain_hash(prev, r)
        con.execute("UPDATE audit_log SET prev_hash = ?, row_hash = ? WHERE seq = ?", (prev, h, r["seq"]))
        prev = h
    con.execute("UPDATE audit_head SET count = ?, last_seq = ?, last_hash = ?",
                (len(rows), rows[-1]["seq"] if rows else 0, prev))
    con.commit()
    con.close()


def verify_args(url, sink, pub):
    return ["log", "verify", "--db-url", url, "--sink", str(sink), "--pubkey", str(pub)]


def test_key_file_is_owner_only(tmp_path):
    """New: there was no audit-log signing key; it is written 0600 and never overwritten."""
    _, _, key, pub, _ = make_log(tmp_path, 0)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    assert main(["log", "keygen", "--out", str(tmp_path / "keys")]) == 2  # refuses to overwrite


def test_rewrite_attack_passes_chain_but_fails_sink(tmp_path, capsys):
    """Before: rewriting row 2 and recomputing the chain and head made `log verify` say 'intact'."""
    url, store, key, pub, sink = make_log(tmp_path, 3)
    assert main(["log", "checkpoint", "--db-url", url, "--sink", str(sink), "--key", str(key)]) == 0
    assert main(verify_args(url, sink, pub)) == 0
    rechain(tmp_path / "audit.db", "UPDATE audit_log SET output = replace(output, 'normal', 'pneumonia') "
                                   "WHERE seq = 2")
    assert store.verify()["ok"]  # the old check is fooled
    assert main(["log", "verify", "--db-url", url]) == 0
    capsys.readouterr()
    assert main(verify_args(url, sink, pub)) == 1
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "checkpoint 1" in err


@pytest.mark.parametrize("attack", ["delete_tail", "reorder"])
def test_deleted_tail_and_reordered_pair_detected(tmp_path, attack):
    """Before: deleting the last rows (and fixing the head) or swapping two rows and rechaining passed."""
    _, store, key, pub, sink = make_log(tmp_path, 6)
    ck = t.Checkpointer(store, t.LogConfig(sink=sink, key=key, every=3))
    assert ck.after_append(3)["tree_size"] == 6
    if attack == "delete_tail":
        rechain(tmp_path / "audit.db", "DELETE FROM audit_log WHERE seq >= 5")
        expect = "rows were deleted"
    else:
        rechain(tmp_path / "audit.db", "UPDATE audit_log SET seq = -1 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = 4", "UPDATE audit_log SET seq = 4 WHERE seq = -1")
        expect = "do not reproduce"
    assert store.verify()["ok"]
    r = t.verify_sink(store, sink, merkle.load_public(pub))
    assert not r["ok"] and r["bad_checkpoint"] == 1 and expect in r["problem"], r


def test_sink_edits_and_second_checkpoint(tmp_path):
    """A later checkpoint must extend the earlier one; an edited sink line fails its signature."""
    _, store, key, pub, sink = make_log(tmp_path, 4)
    ck = t.Checkpointer(store, t.LogConfig(sink=sink, key=key, every=2))
    ck.write()
    store.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    assert ck.after_append(5) is None  # 1 row since the last checkpoint, every 2
    store.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    assert ck.after_append(6)["tree_size"] == 6
    pubk = merkle.load_public(pub)
    r = t.verify_sink(store, sink, pubk)
    assert r["ok"] and r["checkpoints"] == 2 and r["rows_covered"] == 6, r
    lines = sink.read_text().splitlines()
    cp = json.loads(lines[1])
    cp["tree_size"] = 5
    sink.write_text(lines[0] + "\n" + json.dumps(cp) + "\n")
    r = t.verify_sink(store, sink, pubk)
    assert not r["ok"] and r["bad_checkpoint"] == 2 and "signature" in r["problem"]


def test_prove_and_check_proof_offline(tmp_path, capsys):
    """New: a row's membership in the signed log could not be shown to anyone without the database."""
    url, _, key, pub, sink = make_log(tmp_path, 7)
    assert main(["log", "checkpoint", "--db-url", url, "--sink", str(sink), "--key", str(key)]) == 0
    capsys.readouterr()
    assert main(["log", "prove", "--seq", "3", "--db-url", url, "--sink", str(sink)]) == 0
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    doc = json.loads(proof.read_text())
    assert doc["leaf_index"] == 2 and doc["tree_size"] == 7 and len(doc["audit_path"]) == 3
    (tmp_path / "audit.db").unlink()  # offline: no database
    assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 0
    raw = proof.read_bytes()
    for target in (doc["audit_path"][1], doc["checkpoint"]["root_hash"], doc["leaf_hash"]):
        i = raw.index(target.encode()) + 5
        bad = raw[:i] + (b"0" if raw[i:i + 1] != b"0" else b"1") + raw[i + 1:]
        proof.write_bytes(bad)
        assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 1, target
    doc["row"]["output"] = doc["row"]["output"].replace("normal", "pneumonia")
    proof.write_text(json.dumps(doc))
    assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 1


def test_api_appends_checkpoints_and_is_unchanged_without_them(tmp_path, monkeypatch):
    """New: the API wrote no checkpoint; unset, it writes none, half set, it refuses to start."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app
    from privmed.errors import PrivmedError

    url, _, key, pub, sink = make_log(tmp_path, 0)
    for k in ("PRIVMED_LOG_SINK", "PRIVMED_LOG_KEY", "PRIVMED_LOG_PUBKEY", "PRIVMED_LOG_CHECKPOINT_EVERY"):
        monkeypatch.delenv(k, raising=False)
    assert Settings.from_env(db_url=url).translog.sink is None
    assert create_app(Settings(db_url=url, scan_default_bundles=False)).state.checkpointer is None
    with pytest.raises(PrivmedError):
        create_app(Settings(db_url=url, scan_default_bundles=False, translog=t.LogConfig(sink=sink)))
    monkeypatch.setenv("PRIVMED_LOG_SINK", str(sink))
    monkeypatch.setenv("PRIVMED_LOG_KEY", str(key))
    monkeypatch.setenv("PRIVMED_LOG_CHECKPOINT_EVERY", "2")
    app = create_app(Settings.from_env(db_url=url, scan_default_bundles=False))
    ck = app.state.store.create_key("clinician")[1]
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get("/v1/models", headers={"Authorization": f"Bearer {ck}"}).status_code == 200
    sizes = [cp["tree_size"] for cp in t.read_sink(sink)]
    assert sizes == [2, 4]
    assert main(verify_args(url, sink, pub)) == 0


def test_api_fails_closed_when_the_checkpoint_sink_fails(tmp_path, monkeypatch):
    """Failed before: a sink error was logged and the answer served anyway. Now the request that is due
    a checkpoint gets a 503 saying why, every later one too until the sink takes a checkpoint again."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app

    url, _, key, pub, sink = make_log(tmp_path, 0)
    app = create_app(Settings(db_url=url, scan_default_bundles=False,
                              translog=t.LogConfig(sink=sink, key=key, every=2)))
    ck = app.state.store.create_key("clinician")[1]
    h = {"Authorization": f"Bearer {ck}"}
    real = t.write_checkpoint
    monkeypatch.setattr(t, "write_checkpoint", lambda *a: (_ for _ in ()).throw(OSError("No space left on device")))
    with TestClient(app) as client:
        assert client.get("/v1/models", headers=h).status_code == 200  # row 1: no checkpoint due yet
        r = client.get("/v1/models", headers=h)
        assert r.status_code == 503 and "checkpoint" in r.json()["detail"]
        assert client.get("/v1/models", headers=h).status_code == 503  # still due, still failing
        monkeypatch.setattr(t, "write_checkpoint", real)
        assert client.get("/v1/models", headers=h).status_code == 200  # the sink is back
    assert [cp["tree_size"] for cp in t.read_sink(sink)] == [4]
    assert main(verify_args(url, sink, pub)) == 0


def test_consistency_proof_between_checkpoints_offline(tmp_path, capsys):
    """New: an auditor holding yesterday's checkpoint could not check offline that today's log kept it."""
    url, store, key, pub, sink = make_log(tmp_path, 5)
    ck = t.Checkpointer(store, t.LogConfig(sink=sink, key=key, every=1))
    ck.write()
    for _ in range(3):
        store.append(method="GET", path="/v1/models", status=200, latency_ms=1.0)
    ck.write()
    capsys.readouterr()
    proof = tmp_path / "consistency.json"
    assert main(["log", "prove", "--from", "5", "--db-url", url, "--sink", str(sink)]) == 0
    proof.write_text(capsys.readouterr().out)
    doc = json.loads(proof.read_text())
    assert doc["kind"] == "consistency" and doc["second"]["tree_size"] == 8 and doc["consistency_path"]
    assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 0
    assert "extends the one of 5 rows" in capsys.readouterr().out
    first = doc["consistency_path"][0]
    flipped = first[:-1] + ("0" if first[-1] != "0" else "1")
    proof.write_text(json.dumps(dict(doc, consistency_path=[flipped] + doc["consistency_path"][1:])))
    assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 1
    rechain(tmp_path / "audit.db",
            "UPDATE audit_log SET output = replace(output, 'normal', 'pneumonia') WHERE seq = 2")
    assert main(["log", "prove", "--from", "5", "--db-url", url, "--sink", str(sink)]) == 0
    proof.write_text(capsys.readouterr().out)
    assert main(["log", "check-proof", str(proof), "--pubkey", str(pub)]) == 1  # proof from tampered rows
    assert "does not extend" in capsys.readouterr().err
