"""Signed checkpoints of the audit log in an append-only sink (RFC 9162 transparency-log style).

The hash chain in ``store.py`` is unkeyed and its head sits in the same database: whoever can write
the database can rewrite a row, recompute every hash after it and the head, and ``verify`` passes.
Here the rows' chain hashes are the leaves of an RFC 9162 Merkle tree; every ``every`` rows (and on
demand) a checkpoint ``{tree_size, root_hash, time}`` is signed with an Ed25519 key kept outside the
database and appended to a JSON-lines file the database writer cannot rewrite. ``verify_sink``
recomputes each checkpoint's root from the rows, so rows up to a checkpoint's size cannot be edited,
removed or reordered unseen by anyone holding the sink and the public key.

Leaves are recomputed from the rows' content (``chain_hash``), not read from ``row_hash``, so an
edited row changes its leaf even when its stored hash was left alone.
"""
from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from privmed.api.store import GENESIS, Store, chain_hash
from privmed.errors import PrivmedError
from privmed.inference import signing

DOMAIN = b"privmed-audit-checkpoint-v1\n"
KEY_NAME = "privmed-log"  # privmed-log.key (private, 0600) and privmed-log.pub
PAGE = 1000


# ---------- RFC 9162 section 2.1 hashing (``hashes`` are leaf hashes, already 0x00-prefixed)
def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(hashes: list[bytes], lo: int = 0, hi: int | None = None) -> bytes:
    """MTH(D[lo:hi])."""
    hi = len(hashes) if hi is None else hi
    if hi - lo == 0:
        return hashlib.sha256(b"").digest()
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return node_hash(root(hashes, lo, lo + k), root(hashes, lo + k, hi))


def prefix_roots(hashes: list[bytes], sizes) -> dict[int, bytes]:
    """MTH(D[0:n]) for every n in ``sizes`` in one pass (a stack of perfect subtrees), not one per size."""
    want, out, stack = set(sizes), {}, []
    for i, h in enumerate(hashes, 1):
        height = 0
        while stack and stack[-1][0] == height:
            h, height = node_hash(stack.pop()[1], h), height + 1
        stack.append((height, h))
        if i in want:
            r = stack[-1][1]
            for _, left in reversed(stack[:-1]):
                r = node_hash(left, r)
            out[i] = r
    return out


def inclusion_path(m: int, hashes: list[bytes], lo: int = 0, hi: int | None = None) -> list[bytes]:
    """PATH(m, D[lo:hi]) of RFC 9162 2.1.3.1."""
    hi = len(hashes) if hi is None else hi
    if hi - lo <= 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return inclusion_path(m, hashes, lo, lo + k) + [root(hashes, lo + k, hi)]
    return inclusion_path(m - k, hashes, lo + k, hi) + [root(hashes, lo, lo + k)]


def consistency_path(m: int, hashes: list[bytes], lo: int = 0, hi: int | None = None,
                     whole: bool = True) -> list[bytes]:
    """PROOF(m, D[lo:hi]) = SUBPROOF(m, D[lo:hi], true) of RFC 9162 2.1.4.1 (0 < m <= n)."""
    hi = len(hashes) if hi is None else hi
    n = hi - lo
    if m == n:
        return [] if whole else [root(hashes, lo, hi)]
    k = _split(n)
    if m <= k:
        return consistency_path(m, hashes, lo, lo + k, whole) + [root(hashes, lo + k, hi)]
    return consistency_path(m - k, hashes, lo + k, hi, False) + [root(hashes, lo, lo + k)]


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root_hash: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root_hash


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       path: list[bytes]) -> bool:
    """RFC 9162 2.1.4.2, plus its trivial cases (equal sizes, empty first tree)."""
    if first > second:
        return False
    if first == second:
        return not path and first_root == second_root
    if first == 0:
        return not path
    if not path:
        return False
    if first & (first - 1) == 0:  # an exact power of two: its root is the first node
        path = [first_root] + list(path)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0


# ---------- keys and signed checkpoints
def keygen(out: Path) -> tuple[Path, Path]:
    return signing.keygen(out, KEY_NAME)


def load_private(path) -> object:
    return signing.load_private_key(path, "audit-log signing key", PrivmedError)


def load_public(path) -> object:
    return signing.load_public_key(path, "audit-log public key", PrivmedError)


def _message(cp: dict) -> bytes:
    body = {"tree_size": cp["tree_size"], "root_hash": cp["root_hash"], "time": cp["time"]}
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_checkpoint(key, size: int, root_hash: bytes) -> dict:
    cp = {"tree_size": size, "root_hash": root_hash.hex(),
          "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
    cp["signature"] = base64.b64encode(key.sign(_message(cp))).decode()
    return cp


def signature_ok(pub, cp) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        if not isinstance(cp["tree_size"], int) or cp["tree_size"] < 1:
            return False
        bytes.fromhex(cp["root_hash"])
        pub.verify(base64.b64decode(cp["signature"], validate=True), _message(cp))
        return True
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False


# ---------- rows -> leaves
def chain_leaves(store: Store) -> tuple[list[bytes], list[dict], str | None]:
    """(leaf hashes, rows, first chain problem or None); leaves recomputed from each row's content."""
    prev, leaves, rows, problem, after = GENESIS, [], [], None, 0
    while page := store.rows(after, PAGE):
        for r in page:
            h = chain_hash(prev, r)
            if problem is None and (r["seq"] != len(rows) + 1 or r["prev_hash"] != prev or r["row_hash"] != h):
                problem = f"the hash chain breaks at row {r['seq']}"
            leaves.append(leaf_hash(bytes.fromhex(h)))
            rows.append(r)
            prev = h
        after = page[-1]["seq"]
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


def write_checkpoint(store: Store, key, sink) -> dict:
    """Sign the current log and append it to ``sink``. The file lock makes concurrent writers (workers,
    the CLI) append in tree-size order; a log whose chain is already broken is never signed."""
    with open(sink, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        leaves, _, problem = chain_leaves(store)
        if problem:
            raise PrivmedError(f"refusing to sign a tampered audit log: {problem}")
        if not leaves:
            raise PrivmedError("the audit log is empty; nothing to sign")
        f.seek(0)
        lines = f.read().splitlines()
        last = _parse(lines[-1]) if lines else None
        if last and last.get("tree_size") == len(leaves):
            return last
        cp = sign_checkpoint(key, len(leaves), root(leaves))
        f.write(json.dumps(cp, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return cp


@dataclass
class LogConfig:
    """Where signed checkpoints go; every PRIVMED_LOG_* variable is read here and nowhere else."""
    sink: Path | None = None
    key: Path | None = None
    pubkey: Path | None = None
    every: int = 100

    @classmethod
    def from_env(cls, **over) -> LogConfig:
        env = os.environ.get
        c = cls(sink=Path(env("PRIVMED_LOG_SINK")) if env("PRIVMED_LOG_SINK") else None,
                key=Path(env("PRIVMED_LOG_KEY")) if env("PRIVMED_LOG_KEY") else None,
                pubkey=Path(env("PRIVMED_LOG_PUBKEY")) if env("PRIVMED_LOG_PUBKEY") else None,
                every=int(env("PRIVMED_LOG_CHECKPOINT_EVERY") or 100))
        for k, v in over.items():
            if v is not None:
                setattr(c, k, Path(v) if k in ("sink", "key", "pubkey") else v)
        return c


class Checkpointer:
    """Appends a signed checkpoint to the sink once every ``every`` rows (called after each append)."""

    def __init__(self, store: Store, cfg: LogConfig):
        if not (cfg.sink and cfg.key) or cfg.every < 1:
            raise PrivmedError("signed audit checkpoints need both PRIVMED_LOG_SINK and PRIVMED_LOG_KEY "
                               "and PRIVMED_LOG_CHECKPOINT_EVERY >= 1")
        self.store, self.sink, self.every = store, cfg.sink, cfg.every
        self.key = load_private(cfg.key)  # fail at start, not at the hundredth request
        self.sink.parent.mkdir(parents=True, exist_ok=True)
        self.sink.touch()
        sized = [cp["tree_size"] for cp in read_sink(self.sink) if cp and isinstance(cp.get("tree_size"), int)]
        self.last = max(sized, default=0)

    @classmethod
    def from_config(cls, store: Store, cfg: LogConfig | None) -> Checkpointer | None:
        if cfg is None or not (cfg.sink or cfg.key):
            return None  # not configured: the API behaves as without checkpoints
        return cls(store, cfg)

    def after_append(self, seq: int) -> dict | None:
        # by distance, not seq % every: rows appended elsewhere (aggregated refusals) may skip a multiple
        return self.write() if seq - self.last >= self.every else None

    def write(self) -> dict:
        cp = write_checkpoint(self.store, self.key, self.sink)
        self.last = max(self.last, cp["tree_size"])
        return cp


# ---------- verification
def _bad(i: int, n: int, problem: str) -> dict:
    return {"ok": False, "checkpoints": n, "bad_checkpoint": i, "problem": f"checkpoint {i}: {problem}"}


def verify_sink(store: Store, sink, pub) -> dict:
    """Check every checkpoint in ``sink`` (numbered from 1, in file order) against the rows."""
    cps = read_sink(sink)
    leaves, _, _ = chain_leaves(store)
    sizes = [cp["tree_size"] for cp in cps if cp and isinstance(cp.get("tree_size"), int)]
    roots = prefix_roots(leaves, sizes)
    prev = None
    for i, cp in enumerate(cps, 1):
        if cp is None or not signature_ok(pub, cp):
            return _bad(i, len(cps), "bad signature or unreadable line (the sink was edited, or another key)")
        size, signed_root = cp["tree_size"], bytes.fromhex(cp["root_hash"])
        if prev and size < prev[0]:
            return _bad(i, len(cps), f"tree size went back from {prev[0]} to {size}")
        if size > len(leaves):
            return _bad(i, len(cps), f"signed {size} rows but the database holds {len(leaves)}: "
                                     "rows were deleted")
        if roots[size] != signed_root:
            return _bad(i, len(cps), f"the database's first {size} rows do not reproduce the signed root: "
                                     "rows were edited, removed or reordered")
        if prev and not verify_consistency(prev[0], size, prev[1], signed_root,
                                           consistency_path(prev[0], leaves[:size])):
            return _bad(i, len(cps), f"not consistent with checkpoint {i - 1}")
        prev = (size, signed_root)
    covered = prev[0] if prev else 0
    return {"ok": True, "checkpoints": len(cps), "bad_checkpoint": None, "problem": None,
            "rows_covered": covered, "rows_uncovered": len(leaves) - covered}


def prove(store: Store, sink, seq: int) -> dict:
    """An inclusion proof of row ``seq`` against the sink's latest checkpoint, checkable offline."""
    cps = [cp for cp in read_sink(sink) if cp]
    if not cps:
        raise PrivmedError(f"no checkpoint in {sink}: run `privmed log checkpoint` first")
    cp = cps[-1]
    leaves, rows, _ = chain_leaves(store)
    if not 1 <= seq <= min(cp["tree_size"], len(leaves)):
        raise PrivmedError(f"row {seq} is not covered by the latest checkpoint (size {cp['tree_size']})")
    path = inclusion_path(seq - 1, leaves[:cp["tree_size"]])
    return {"row": rows[seq - 1], "leaf_hash": leaves[seq - 1].hex(), "leaf_index": seq - 1,
            "tree_size": cp["tree_size"], "audit_path": [p.hex() for p in path], "checkpoint": cp}


def check_proof(proof: dict, pub) -> str | None:
    """None if ``proof`` holds (row content -> leaf -> signed root), else the reason."""
    try:
        cp, row = proof["checkpoint"], proof["row"]
        if not signature_ok(pub, cp):
            return "the checkpoint's signature does not verify with this public key"
        leaf = leaf_hash(bytes.fromhex(chain_hash(row["prev_hash"], row)))
        if leaf.hex() != proof["leaf_hash"] or row["seq"] != proof["leaf_index"] + 1:
            return "the row does not match the proved leaf"
        if proof["tree_size"] != cp["tree_size"]:
            return "the proof's tree size is not the checkpoint's"
        path = [bytes.fromhex(p) for p in proof["audit_path"]]
        if not verify_inclusion(leaf, proof["leaf_index"], cp["tree_size"], path, bytes.fromhex(cp["root_hash"])):
            return "the audit path does not lead to the signed root"
        return None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"malformed proof ({type(e).__name__}: {e})"
