"""The witness (issue 33, items 2-3): a separate process keeps its own copy of every checkpoint it
co-signs and refuses a fork. Without it, whoever holds the database and the log's signing key can
truncate and regrow the log, or show two auditors two histories, and sign each one."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("httpx")
from privmed.api import merkle, witness
from privmed.api import translog as t
from privmed.cli import main
from privmed.errors import PrivmedError
from test_translog import make_log, rechain, verify_args


@pytest.fixture
def witness_server(tmp_path):
    """A real witness (HTTP on a free port) of the key pair ``make_log`` writes under tmp_path/keys."""
    def start(log_pub):
        state = tmp_path / "witness"
        wpub = witness.init(state, log_pub)
        srv = witness.server(state, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}", wpub, state

    servers = []
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def append(store, n: int, label: str) -> None:
    for _ in range(n):
        store.append(method="POST", path="/v1/predict", status=200, latency_ms=1.0,
                     output=[{"label": label, "probabilities": {label: 0.9}}])


def checkpointer(store, sink, key, url=None) -> t.Checkpointer:
    return t.Checkpointer(store, t.LogConfig(sink=sink, key=key, every=1, witness_url=url))


def witness_args(url, wpub) -> list[str]:
    return ["--witness", url, "--witness-pubkey", str(wpub)]


def test_fork_shown_to_two_auditors_is_refused_and_detected(tmp_path, witness_server, capsys):
    """New. The operator keeps two databases that agree on 3 rows, then shows auditor A one history and
    auditor B another, each with a sink signed by the log's key: without the witness both verify."""
    url_a, store_a, key, pub, sink_a = make_log(tmp_path, 3)
    url, wpub, _ = witness_server(pub)
    assert merkle.cosigned_by(merkle.load_public(wpub), checkpointer(store_a, sink_a, key, url).write())
    with sqlite3.connect(tmp_path / "audit.db") as src, sqlite3.connect(tmp_path / "b.db") as dst:
        src.backup(dst)  # a file copy would miss the rows still in the WAL
    shutil.copyfile(sink_a, tmp_path / "sink_b.jsonl")
    url_b, sink_b = f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "sink_b.jsonl"
    store_b = t.Store(url_b)
    append(store_a, 2, "normal")
    append(store_b, 2, "pneumonia")
    assert checkpointer(store_a, sink_a, key, url).write()["tree_size"] == 5
    with pytest.raises(witness.Refused) as e:  # the witness will not co-sign the other history
        checkpointer(store_b, sink_b, key, url).write()
    assert e.value.status == 422 and "fork" in e.value.detail
    checkpointer(store_b, sink_b, key).write()  # so the operator signs it alone
    capsys.readouterr()
    assert main(verify_args(url_a, sink_a, pub) + witness_args(url, wpub)) == 0
    assert main(verify_args(url_b, sink_b, pub)) == 0  # the log's key alone cannot tell
    assert main(verify_args(url_b, sink_b, pub) + ["--witness-pubkey", str(wpub)]) == 1
    assert "no valid cosignature by the witness" in capsys.readouterr().err
    assert main(["log", "verify", "--db-url", url_b, "--pubkey", str(pub)] + witness_args(url, wpub)) == 1
    assert "not the history the witness co-signed" in capsys.readouterr().err


def test_truncated_and_regrown_log_is_refused_and_detected(tmp_path, witness_server, capsys):
    """New. Truncate 6 signed rows to 3, regrow to 7 and write a fresh sink with the log's key: the
    fresh sink verifies on its own, the witness refuses to co-sign it and its copy shows the rewrite."""
    url_db, store, key, pub, sink = make_log(tmp_path, 6)
    url, wpub, state = witness_server(pub)
    checkpointer(store, sink, key, url).write()
    rechain(tmp_path / "audit.db", "DELETE FROM audit_log WHERE seq > 3")
    append(store, 4, "normal")
    fresh = tmp_path / "fresh_sink.jsonl"
    with pytest.raises(witness.Refused) as e:  # from size 0 -> 409 (it holds 6) -> from 6: not consistent
        checkpointer(store, fresh, key, url).write()
    assert e.value.status == 422 and not fresh.read_text()
    checkpointer(store, fresh, key).write()
    capsys.readouterr()
    assert main(verify_args(url_db, fresh, pub)) == 0  # the reason a witness exists
    assert main(verify_args(url_db, sink, pub)) == 1  # the original sink, if it survived, sees it too
    assert main(["log", "verify", "--db-url", url_db, "--pubkey", str(pub)] + witness_args(url, wpub)) == 1
    assert "rows were rewritten" in capsys.readouterr().err
    assert [json.loads(x)["tree_size"] for x in (state / "checkpoints.jsonl").read_text().splitlines()] == [6]


def test_witness_protocol_conflict_bad_signature_and_restart(tmp_path, witness_server):
    """409 names the size held (the log retries from it), a checkpoint not signed by the log's key is 403,
    and a restarted witness keeps its copy (state on disk)."""
    _, store, key, pub, sink = make_log(tmp_path, 4)
    url, wpub, state = witness_server(pub)
    tree = t.Tree()
    tree.extend(store)
    cp = merkle.sign_checkpoint(merkle.load_private(key), 4, tree.root(4))
    with pytest.raises(witness.Refused) as e:
        witness.request_cosignature(url, 2, tree.consistency(2, 4), cp)
    assert e.value.status == 409 and e.value.size == 0
    cos = witness.request_cosignature(url, 0, [], cp)
    assert merkle.cosigned_by(merkle.load_public(wpub), dict(cp, cosignatures=[cos]))
    other = tmp_path / "other"
    assert main(["log", "keygen", "--out", str(other)]) == 0
    forged = merkle.sign_checkpoint(merkle.load_private(other / "privmed-log.key"), 4, tree.root(4))
    with pytest.raises(witness.Refused) as e:
        witness.request_cosignature(url, 4, [], forged)
    assert e.value.status == 403
    assert witness.Witness(state).latest()["tree_size"] == 4  # what a restarted witness reads
    again = merkle.sign_checkpoint(merkle.load_private(key), 4, tree.root(4))  # a retry after a failed sink write
    assert merkle.cosigned_by(merkle.load_public(wpub),
                              dict(again, cosignatures=[witness.request_cosignature(url, 4, [], again)]))
    other_root = merkle.sign_checkpoint(merkle.load_private(key), 4, tree.root(3))
    with pytest.raises(witness.Refused) as e:  # same size, another root: a fork
        witness.request_cosignature(url, 4, [], other_root)
    assert e.value.status == 422
    append(store, 3, "normal")
    assert checkpointer(store, sink, key, url).write()["tree_size"] == 7  # 409 from 0, then from 4
    assert witness.fetch_latest(url)["tree_size"] == 7


def test_witness_down_writes_nothing_and_checkpoint_cli_cosigns(tmp_path, witness_server, capsys):
    """Fail closed: with the witness unreachable no checkpoint is appended (the API answers 503, see
    test_translog). The CLI co-signs through a real `privmed log witness serve` process."""
    url_db, store, key, pub, sink = make_log(tmp_path, 2)
    with pytest.raises(witness.Refused) as e:
        checkpointer(store, sink, key, "http://127.0.0.1:9").write()
    assert e.value.status == 503 and "could not be reached" in str(e.value) and not sink.read_text()
    state = tmp_path / "w2"
    assert main(["log", "witness", "init", "--state", str(state), "--log-pubkey", str(pub)]) == 0
    proc = subprocess.Popen([sys.executable, "-c", "from privmed.cli import main; main()", "log", "witness",
                             "serve", "--state", str(state), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert main(["log", "checkpoint", "--db-url", url_db, "--sink", str(sink), "--key", str(key),
                     "--witness", url]) == 0
        wpub = state / "witness.pub"
        assert main(verify_args(url_db, sink, pub) + witness_args(url, wpub)) == 0
        capsys.readouterr()
        assert main(["log", "prove", "--seq", "2", "--db-url", url_db, "--sink", str(sink)]) == 0
        proof = tmp_path / "proof.json"
        proof.write_text(capsys.readouterr().out)
        assert main(["log", "check-proof", str(proof), "--pubkey", str(pub), "--witness-pubkey", str(wpub)]) == 0
        assert main(["log", "check-proof", str(proof), "--pubkey", str(pub),
                     "--witness-pubkey", str(pub)]) == 1  # not the witness's key
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tree_cache_matches_full_recomputation(tmp_path):
    """The checkpointer's incremental tree (cached perfect subtrees) gives the roots and proofs of a
    fresh computation at every size, across several extensions."""
    _, store, *_ = make_log(tmp_path, 0)
    tree = t.Tree()
    for grow in (1, 15, 17, 40):
        append(store, grow, "normal")
        tree.extend(store)
        n = len(tree.leaves)
        for m in range(1, n + 1):
            assert tree.root(m) == merkle.root(tree.leaves[:m])
            assert tree.consistency(m, n) == (merkle.consistency_path(m, tree.leaves) if m < n else [])
    assert n == 73


def test_checkpoints_stamped_by_a_real_timestamp_authority(tmp_path, witness_server, capsys):
    """New: a checkpoint's `time` was the signer's own clock. Each checkpoint now carries an RFC 3161
    token from a (local, openssl) authority; verify requires it; with the authority down nothing is
    written; a stamp moved to another checkpoint fails."""
    tsa_mod = pytest.importorskip("tsa")
    if not tsa_mod.openssl_available():
        pytest.skip("openssl not installed: no local timestamp authority")
    url_db, store, key, pub, sink = make_log(tmp_path, 3)
    url, wpub, _ = witness_server(pub)
    with tsa_mod.LocalTSA(tmp_path / "tsa") as tsa:
        cfg = t.LogConfig(sink=sink, key=key, every=1, witness_url=url, tsa_url=tsa.url)
        assert "timestamp" in t.Checkpointer(store, cfg).write()
        append(store, 2, "normal")
        tsa.mode = "unavailable"
        with pytest.raises(PrivmedError, match="503"):
            t.Checkpointer(store, cfg).write()
        tsa.mode = "ok"
        t.Checkpointer(store, cfg).write()
        stamp = ["--tsa-cert", str(tsa.cert), "--tsa-roots", str(tsa.root)]
        assert [c["tree_size"] for c in t.read_sink(sink)] == [3, 5]
        assert main(verify_args(url_db, sink, pub) + witness_args(url, wpub) + stamp) == 0
        with tsa_mod.LocalTSA(tmp_path / "tsa2", name="other") as other:
            capsys.readouterr()
            assert main(verify_args(url_db, sink, pub) + ["--tsa-cert", str(other.cert),
                                                          "--tsa-roots", str(other.root)]) == 1
            assert "RFC 3161" in capsys.readouterr().err
    lines = [json.loads(x) for x in sink.read_text().splitlines()]
    lines[1]["timestamp"] = lines[0]["timestamp"]  # a stamp of another checkpoint: the signature still holds
    sink.write_text("".join(json.dumps(c) + "\n" for c in lines))
    assert main(verify_args(url_db, sink, pub) + stamp) == 1
    assert "checkpoint 2: no valid RFC 3161 timestamp" in capsys.readouterr().err
