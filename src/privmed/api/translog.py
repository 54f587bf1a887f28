"""Signed checkpoints of the audit log in an append-only sink (RFC 9162 transparency-log style).

The hash chain in ``store.py`` is unkeyed and its head sits in the same database: whoever can write
the database can rewrite a row, recompute every hash after it and the head, and ``verify`` passes.
Here the rows' chain hashes are the leaves of an RFC 9162 Merkle tree; every ``every`` rows (and on
demand) a checkpoint ``{tree_size, root_hash, time}`` is signed with an Ed25519 key kept outside the
database, optionally stamped by an RFC 3161 timestamp authority and co-signed by a witness
(``witness.py``), then appended to a JSON-lines file the database writer cannot rewrite.
``verify_sink`` recomputes each checkpoint's root from the rows, so rows up to a checkpoint's size
cannot be edited, removed or reordered unseen by anyone holding the sink and the public key;
``verify_witness`` does the same against the witness's own copy, which the log's operator cannot
rewrite even with the signing key.

Leaves are recomputed from the rows' content (``chain_hash``), not read from ``row_hash``, so an
edited row changes its leaf even when its stored hash was left alone.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from privmed.api import merkle, timestamp, witness
from privmed.api.merkle import leaf_hash, load_private
from privmed.api.store import GENESIS, Store, chain_hash
from privmed.bundle import signing
from privmed.config import settings
from privmed.errors import PrivmedError

KEY_NAME = "privmed-log"  # privmed-log.key (private, 0600) and privmed-log.pub
PAGE = 1000


def keygen(out: Path) -> tuple[Path, Path]:
    return signing.keygen(out, KEY_NAME)


# ---------- rows -> leaves
class Tree:
    """The leaves in memory, extended with only the rows appended since the last call: a checkpoint
    costs the new rows plus O(log^2 n) hashes, not a pass over the whole log."""

    def __init__(self):
        self.leaves: list[bytes] = []
        self.last_hash, self._cache = GENESIS, {}

    def extend(self, store: Store) -> None:
        for r, h, linked in _walk(store, len(self.leaves), self.last_hash):
            if not linked:
                raise PrivmedError(f"refusing to sign a tampered audit log: the hash chain breaks at row {r['seq']}")
            self.leaves.append(leaf_hash(bytes.fromhex(h)))
            self.last_hash = h

    def root(self, size: int) -> bytes:
        return merkle.root(self.leaves, 0, size, self._cache)

    def consistency(self, old: int, size: int) -> list[bytes]:
        return merkle.consistency_path(old, self.leaves, 0, size, cache=self._cache) if 0 < old < size else []


def _walk(store: Store, count: int = 0, prev: str = GENESIS):
    """(row, its chain hash recomputed from its content, whether it links to the row before) for the rows
    after the first ``count``, whose last hash is ``prev``, a page at a time."""
    after = count
    while page := store.rows(after, PAGE):
        for r in page:
            h = chain_hash(prev, r)
            count += 1
            yield r, h, r["seq"] == count and r["prev_hash"] == prev and r["row_hash"] == h
            prev = h
        after = page[-1]["seq"]


def chain_leaves(store: Store) -> tuple[list[bytes], list[dict], str | None]:
    """(leaf hashes, rows, first chain problem or None); leaves recomputed from each row's content."""
    leaves, rows, problem = [], [], None
    for r, h, linked in _walk(store):
        if problem is None and not linked:
            problem = f"the hash chain breaks at row {r['seq']}"
        leaves.append(leaf_hash(bytes.fromhex(h)))
        rows.append(r)
    return leaves, rows, problem


# ---------- the sink: one signed checkpoint per line, only ever appended to
def read_sink(path) -> list[dict | None]:
    """Checkpoints in file order; an unparseable line is None (reported as tampering)."""
    return [_parse(line) for line in Path(path).read_text().splitlines()]


def _parse(line: str) -> dict | None:
    try:
        cp = json.loads(line)
    except json.JSONDecodeError:
        return None
    return cp if isinstance(cp, dict) else None


@dataclass
class LogConfig:
    """Where signed checkpoints go: the PRIVMED_LOG_* settings, each overridden by its `privmed log` flag."""
    sink: Path | None = None
    key: Path | None = None
    pubkey: Path | None = None
    every: int = 100
    witness_url: str | None = None  # co-signs every checkpoint (`privmed log witness serve`)
    witness_pubkey: Path | None = None  # verify: the witness's public key
    tsa_url: str | None = None  # RFC 3161 timestamp authority stamping every checkpoint
    tsa_cert: Path | None = None  # verify: the authority's certificate (PEM)
    tsa_roots: Path | None = None  # verify: the CA certificate(s) it chains to (PEM; none if self-signed)

    @classmethod
    def from_env(cls, **over) -> LogConfig:
        env = settings()
        paths = ("sink", "key", "pubkey", "witness_pubkey", "tsa_cert", "tsa_roots")
        c = cls(**{k: getattr(env, f"log_{k}") for k in paths}, every=env.log_checkpoint_every,
                witness_url=env.log_witness_url, tsa_url=env.log_tsa_url)
        for k, v in over.items():
            if v is not None:
                setattr(c, k, Path(v) if k in paths else v)
        return c


def write_checkpoint(store: Store, tree: Tree, key, sink, cfg: LogConfig) -> dict:
    """Sign the current log, stamp it, have it co-signed, append it to ``sink``. The file lock makes
    concurrent writers (workers, the CLI) append in tree-size order; a broken chain is never signed,
    and nothing is appended unless every configured step succeeded."""
    with open(sink, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        tree.extend(store)
        n = len(tree.leaves)
        if not n:
            raise PrivmedError("the audit log is empty; nothing to sign")
        f.seek(0)
        whole = _mend_tail(f.fileno(), f.read())
        last = _parse(whole.decode(errors="replace").splitlines()[-1]) if whole else None
        if last and last.get("tree_size") == n:
            return last
        cp = merkle.sign_checkpoint(key, n, tree.root(n))
        if cfg.tsa_url:
            cp["timestamp"] = timestamp.token_to_text(timestamp.request_token(cfg.tsa_url, merkle.message(cp)))
        if cfg.witness_url:
            cp["cosignatures"] = [_cosignature(cfg.witness_url, tree, cp, last)]
        _append_line(f.fileno(), (json.dumps(cp, sort_keys=True) + "\n").encode())
    return cp


def _append_line(fd: int, data: bytes) -> None:
    """One whole line or nothing: a short or failed write (disk full) is cut back, so no torn line is
    left for the next checkpoint to be glued onto."""
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write to the checkpoint sink")
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):  # an append-only (chattr +a) sink cannot be cut: _mend_tail
            os.ftruncate(fd, end)
        raise


def _mend_tail(fd: int, raw: bytes) -> bytes:
    """The sink's complete lines. A tail torn by a crash is unsigned: cut it, or, where the file is
    append-only, end it with a newline so the next checkpoint is a line of its own (``verify`` then
    reports the fragment as an unreadable line)."""
    whole = raw[:raw.rfind(b"\n") + 1]
    if whole != raw:
        try:
            os.ftruncate(fd, len(whole))
        except OSError:
            os.write(fd, b"\n")
    return whole


def _cosignature(url: str, tree: Tree, cp: dict, last: dict | None) -> dict:
    """Ask the witness from the size it last co-signed here; on 409 once more from the size it names."""
    old = last["tree_size"] if last and last.get("cosignatures") else 0
    try:
        return witness.request_cosignature(url, old, tree.consistency(old, cp["tree_size"]), cp)
    except witness.Refused as e:
        if e.status != 409 or not isinstance(e.size, int) or not 0 <= e.size <= cp["tree_size"]:
            raise
        return witness.request_cosignature(url, e.size, tree.consistency(e.size, cp["tree_size"]), cp)


class Checkpointer:
    """Appends a signed checkpoint to the sink once every ``every`` rows (called after each append)."""

    def __init__(self, store: Store, cfg: LogConfig):
        if not (cfg.sink and cfg.key) or cfg.every < 1:
            raise PrivmedError("signed audit checkpoints need both PRIVMED_LOG_SINK and PRIVMED_LOG_KEY "
                               "and PRIVMED_LOG_CHECKPOINT_EVERY >= 1")
        self.store, self.sink, self.every, self.cfg = store, cfg.sink, cfg.every, cfg
        self.key = load_private(cfg.key)  # fail at start, not at the hundredth request
        self.sink.parent.mkdir(parents=True, exist_ok=True)
        self.sink.touch()
        sized = [cp["tree_size"] for cp in read_sink(self.sink) if cp and isinstance(cp.get("tree_size"), int)]
        self.last, self.tree, self._lock = max(sized, default=0), Tree(), threading.Lock()

    @classmethod
    def from_config(cls, store: Store, cfg: LogConfig | None) -> Checkpointer | None:
        if cfg is None or not (cfg.sink or cfg.key):
            return None  # not configured: the API behaves as without checkpoints
        return cls(store, cfg)

    def after_append(self, seq: int) -> dict | None:
        # by distance, not seq % every: rows appended elsewhere (aggregated refusals) may skip a multiple
        return self.write(due_after=seq) if seq - self.last >= self.every else None

    def write(self, due_after: int | None = None) -> dict | None:
        """Sign now; with ``due_after``, only if still due once the lock is ours (concurrent requests
        that all found a checkpoint due would otherwise sign one each)."""
        with self._lock:  # one tree per process; the sink's file lock orders the processes
            if due_after is not None and due_after - self.last < self.every:
                return None
            cp = write_checkpoint(self.store, self.tree, self.key, self.sink, self.cfg)
            self.last = max(self.last, cp["tree_size"])
        return cp


# ---------- verification
def _bad(i: int, n: int, problem: str) -> dict:
    return {"ok": False, "checkpoints": n, "bad_checkpoint": i, "problem": f"checkpoint {i}: {problem}"}


def _extras_problem(cp: dict, witness_pub, tsa: tuple | None) -> str | None:
    """What a checkpoint lacks of the witness's cosignature or the authority's timestamp, if asked for."""
    if witness_pub is not None and not merkle.cosigned_by(witness_pub, cp):
        return "no valid cosignature by the witness (the witness never saw it: a fork or a rewritten sink)"
    if tsa is not None:
        try:
            timestamp.verify_token(timestamp.token_from_text(cp.get("timestamp") or ""), merkle.message(cp), *tsa)
        except (PrivmedError, ValueError) as e:
            return f"no valid RFC 3161 timestamp ({e})"
    return None


def verify_sink(store: Store, sink, pub, witness_pub=None, tsa: tuple | None = None,
                leaves: list[bytes] | None = None) -> dict:
    """Check every checkpoint in ``sink`` (numbered from 1, in file order) against the rows, and, when
    given, its witness cosignature and its timestamp by the authority ``tsa`` = (cert, roots). Roots that
    all reproduce from one list of rows are prefixes of it, hence consistent: no proof needed here."""
    cps = read_sink(sink)
    leaves = chain_leaves(store)[0] if leaves is None else leaves
    roots = merkle.prefix_roots(leaves, [cp["tree_size"] for cp in cps if cp and isinstance(cp.get("tree_size"), int)])
    prev = 0
    for i, cp in enumerate(cps, 1):
        if cp is None or not merkle.signature_ok(pub, cp):
            return _bad(i, len(cps), "bad signature or unreadable line (the sink was edited, or another key)")
        size = cp["tree_size"]
        if size < prev:
            return _bad(i, len(cps), f"tree size went back from {prev} to {size}")
        if size > len(leaves):
            return _bad(i, len(cps), f"signed {size} rows but the database holds {len(leaves)}: rows were deleted")
        if roots[size] != bytes.fromhex(cp["root_hash"]):
            return _bad(i, len(cps), f"the database's first {size} rows do not reproduce the signed root: "
                                     "rows were edited, removed or reordered")
        if problem := _extras_problem(cp, witness_pub, tsa):
            return _bad(i, len(cps), problem)
        prev = size
    return {"ok": True, "checkpoints": len(cps), "bad_checkpoint": None, "problem": None,
            "rows_covered": prev, "rows_uncovered": len(leaves) - prev}


def verify_witness(store: Store, url: str, pub, witness_pub, leaves: list[bytes] | None = None) -> dict:
    """Check the rows against the witness's own latest checkpoint, which the log cannot rewrite."""
    cp = witness.fetch_latest(url)
    if cp is None:
        return {"ok": False, "problem": f"the witness at {url} has co-signed nothing yet"}
    if not merkle.signature_ok(pub, cp) or not merkle.cosigned_by(witness_pub, cp):
        return {"ok": False, "problem": "the witness's checkpoint does not verify with these public keys"}
    leaves = chain_leaves(store)[0] if leaves is None else leaves
    size = cp["tree_size"]
    if size > len(leaves):
        return {"ok": False, "problem": f"the witness co-signed {size} rows but the database holds {len(leaves)}: "
                                        "rows were deleted"}
    if merkle.root(leaves, 0, size) != bytes.fromhex(cp["root_hash"]):
        return {"ok": False, "problem": f"the database's first {size} rows are not the history the witness co-signed: "
                                        "rows were rewritten (or this is a fork shown only to you)"}
    return {"ok": True, "problem": None, "tree_size": size, "time": cp["time"]}


def prove(store: Store, sink, seq: int) -> dict:
    """An inclusion proof of row ``seq`` against the sink's latest checkpoint, checkable offline."""
    cps = [cp for cp in read_sink(sink) if cp]
    if not cps:
        raise PrivmedError(f"no checkpoint in {sink}: run `privmed log checkpoint` first")
    cp = cps[-1]
    leaves, rows, _ = chain_leaves(store)
    if not 1 <= seq <= min(cp["tree_size"], len(leaves)):
        raise PrivmedError(f"row {seq} is not covered by the latest checkpoint (size {cp['tree_size']})")
    path = merkle.inclusion_path(seq - 1, leaves[:cp["tree_size"]])
    return {"row": rows[seq - 1], "leaf_hash": leaves[seq - 1].hex(), "leaf_index": seq - 1,
            "tree_size": cp["tree_size"], "audit_path": [p.hex() for p in path], "checkpoint": cp}


def prove_consistency(store: Store, sink, first: int) -> dict:
    """A consistency proof that the sink's latest checkpoint extends its checkpoint of ``first`` rows,
    checkable offline: the later log kept every row the earlier one signed, unchanged and in order."""
    cps = [cp for cp in read_sink(sink) if cp]
    old = next((cp for cp in cps if cp.get("tree_size") == first), None)
    if old is None:
        sizes = ", ".join(str(cp.get("tree_size")) for cp in cps) or "none"
        raise PrivmedError(f"no checkpoint of {first} rows in {sink} (its sizes: {sizes})")
    new = cps[-1]
    leaves, _, _ = chain_leaves(store)
    if new["tree_size"] > len(leaves):
        raise PrivmedError(f"the latest checkpoint signed {new['tree_size']} rows but the database holds "
                           f"{len(leaves)}: rows were deleted")
    path = merkle.consistency_path(first, leaves[:new["tree_size"]]) if first < new["tree_size"] else []
    return {"kind": "consistency", "first": old, "second": new, "consistency_path": [p.hex() for p in path]}


def _signed_by(cp: dict, pub, witness_pub) -> str | None:
    if not merkle.signature_ok(pub, cp):
        return "the checkpoint's signature does not verify with this public key"
    if witness_pub is not None and not merkle.cosigned_by(witness_pub, cp):
        return "the checkpoint carries no valid cosignature by this witness"
    return None


def _check_consistency(proof: dict, pub, witness_pub) -> str | None:
    a, b = proof["first"], proof["second"]
    if problem := _signed_by(a, pub, witness_pub) or _signed_by(b, pub, witness_pub):
        return problem
    path = [bytes.fromhex(p) for p in proof["consistency_path"]]
    if not merkle.verify_consistency(a["tree_size"], b["tree_size"], bytes.fromhex(a["root_hash"]),
                                     bytes.fromhex(b["root_hash"]), path):
        return "the later checkpoint does not extend the earlier one (a fork, or rows rewritten in between)"
    return None


def check_proof(proof: dict, pub, witness_pub=None) -> str | None:
    """None if ``proof`` holds, else the reason. An inclusion proof: row content -> leaf -> signed root
    [-> witness]; a consistency proof (``kind``): the later signed root extends the earlier one."""
    try:
        if proof.get("kind") == "consistency":
            return _check_consistency(proof, pub, witness_pub)
        cp, row = proof["checkpoint"], proof["row"]
        if problem := _signed_by(cp, pub, witness_pub):
            return problem
        leaf = leaf_hash(bytes.fromhex(chain_hash(row["prev_hash"], row)))
        if leaf.hex() != proof["leaf_hash"] or row["seq"] != proof["leaf_index"] + 1:
            return "the row does not match the proved leaf"
        if proof["tree_size"] != cp["tree_size"]:
            return "the proof's tree size is not the checkpoint's"
        path = [bytes.fromhex(p) for p in proof["audit_path"]]
        if not merkle.verify_inclusion(leaf, proof["leaf_index"], cp["tree_size"], path,
                                       bytes.fromhex(cp["root_hash"])):
            return "the audit path does not lead to the signed root"
        return None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"malformed proof ({type(e).__name__}: {e})"
