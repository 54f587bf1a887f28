"""RFC 9162 Merkle trees and signed tree heads ("checkpoints") of the audit log.

Pure functions over leaf hashes (already 0x00-prefixed and hashed): roots, inclusion and consistency
proofs and their verification, and the Ed25519 signatures on a checkpoint ``{tree_size, root_hash,
time}`` by the log and, separately, by a witness. Nothing here reads the database.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

from privmed.bundle import signing
from privmed.errors import PrivmedError

CHECKPOINT_DOMAIN = b"privmed-audit-checkpoint-v1\n"
COSIGN_DOMAIN = b"privmed-audit-witness-v1\n"
CACHE_MIN = 16  # perfect subtrees of at least this many leaves are hashed once (they never change)


# ---------- RFC 9162 section 2.1 hashing
def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(hashes: list[bytes], lo: int = 0, hi: int | None = None, cache: dict | None = None) -> bytes:
    """MTH(D[lo:hi]); ``cache`` keeps the roots of large perfect subtrees between calls on a growing list."""
    hi = len(hashes) if hi is None else hi
    n = hi - lo
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[lo]
    perfect = cache is not None and n >= CACHE_MIN and n & (n - 1) == 0
    if perfect and (lo, hi) in cache:
        return cache[lo, hi]
    k = _split(n)
    r = node_hash(root(hashes, lo, lo + k, cache), root(hashes, lo + k, hi, cache))
    if perfect:
        cache[lo, hi] = r
    return r


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


def inclusion_path(m: int, hashes: list[bytes], lo: int = 0, hi: int | None = None,
                   cache: dict | None = None) -> list[bytes]:
    """PATH(m, D[lo:hi]) of RFC 9162 2.1.3.1."""
    hi = len(hashes) if hi is None else hi
    if hi - lo <= 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return inclusion_path(m, hashes, lo, lo + k, cache) + [root(hashes, lo + k, hi, cache)]
    return inclusion_path(m - k, hashes, lo + k, hi, cache) + [root(hashes, lo, lo + k, cache)]


def consistency_path(m: int, hashes: list[bytes], lo: int = 0, hi: int | None = None,
                     whole: bool = True, cache: dict | None = None) -> list[bytes]:
    """PROOF(m, D[lo:hi]) = SUBPROOF(m, D[lo:hi], true) of RFC 9162 2.1.4.1 (0 < m <= n)."""
    hi = len(hashes) if hi is None else hi
    n = hi - lo
    if m == n:
        return [] if whole else [root(hashes, lo, hi, cache)]
    k = _split(n)
    if m <= k:
        return consistency_path(m, hashes, lo, lo + k, whole, cache) + [root(hashes, lo + k, hi, cache)]
    return consistency_path(m - k, hashes, lo + k, hi, False, cache) + [root(hashes, lo, lo + k, cache)]


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


# ---------- keys and signatures: the log signs a checkpoint, a witness co-signs it
def load_private(path, what: str = "audit-log signing key") -> object:
    return signing.load_private_key(path, what, PrivmedError)


def load_public(path, what: str = "audit-log public key") -> object:
    return signing.load_public_key(path, what, PrivmedError)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def message(cp: dict) -> bytes:
    """The bytes the log signs (and a timestamp authority stamps): size, root and the signer's time."""
    body = {"tree_size": cp["tree_size"], "root_hash": cp["root_hash"], "time": cp["time"]}
    return CHECKPOINT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_checkpoint(key, size: int, root_hash: bytes) -> dict:
    cp = {"tree_size": size, "root_hash": root_hash.hex(), "time": now()}
    cp["signature"] = base64.b64encode(key.sign(message(cp))).decode()
    return cp


def _verify(pub, signature: str, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(base64.b64decode(signature, validate=True), data)
        return True
    except (InvalidSignature, TypeError, ValueError):
        return False


def signature_ok(pub, cp) -> bool:
    try:
        if not isinstance(cp["tree_size"], int) or cp["tree_size"] < 1:
            return False
        bytes.fromhex(cp["root_hash"])
        return _verify(pub, cp["signature"], message(cp))
    except (KeyError, TypeError, ValueError):
        return False


def key_id(pub) -> str:
    """A short name for a public key (SHA-256 of its raw bytes), so a line says which witness signed it."""
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _cosign_message(cp: dict, witness: str, time: str) -> bytes:
    return COSIGN_DOMAIN + json.dumps({"witness": witness, "time": time}, sort_keys=True).encode() + message(cp)


def cosign(key, cp: dict) -> dict:
    """A witness's signature over the log's checkpoint and the witness's own time."""
    w, t = key_id(key.public_key()), now()
    return {"witness": w, "time": t, "signature": base64.b64encode(key.sign(_cosign_message(cp, w, t))).decode()}


def cosigned_by(pub, cp: dict) -> dict | None:
    """The cosignature on ``cp`` by the witness holding ``pub`` that verifies, else None."""
    w = key_id(pub)
    for c in cp.get("cosignatures") or []:
        try:
            if c["witness"] == w and _verify(pub, c["signature"], _cosign_message(cp, w, c["time"])):
                return c
        except (KeyError, TypeError):
            continue
    return None
