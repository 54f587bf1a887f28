"""A witness of the audit log: an independent process that co-signs checkpoints and refuses forks.

Whoever holds the log's database and signing key can truncate the rows, regrow them and sign a fresh
history, or show two auditors two different histories, each one signed. A witness run by someone
else (the hospital's data protection officer, a partner site) closes that gap: it keeps its own copy
of every checkpoint it co-signs and co-signs a new one only with an RFC 9162 consistency proof that
the new tree extends the last one it signed. Shaped after the C2SP tlog-witness protocol:

    POST /add-checkpoint  {"old_size": m, "consistency_proof": [hex], "checkpoint": {...}}
        200 {"cosignature": {...}}         co-signed and appended to the witness's copy
        409 {"size": m', "detail": ...}    old_size is not the size the witness holds: retry from m'
        422 {"detail": ...}                not consistent with what the witness signed: a fork, refused
        403 {"detail": ...}                not signed by the log's key
    GET /checkpoint  the latest co-signed checkpoint, with its cosignature (404 before the first)

The first checkpoint is trusted on first use (the witness has nothing to compare it with). The state
folder holds ``witness.key`` (0600), ``witness.pub``, the log's ``log.pub`` and ``checkpoints.jsonl``.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from privmed.api import merkle
from privmed.bundle import signing
from privmed.errors import PrivmedError

log = logging.getLogger("privmed.witness")
KEY_NAME = "witness"
MAX_BODY = 1 << 20


class Refused(PrivmedError):
    """The witness will not co-sign; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str, size: int | None = None):
        super().__init__(detail)
        self.status, self.detail, self.size = status, detail, size


def init(state: Path, log_pubkey: Path) -> Path:
    """Create a witness's state folder for the log whose public key is ``log_pubkey``; returns witness.pub."""
    state = Path(state)
    merkle.load_public(log_pubkey)  # refuse a file that is not a key before creating anything
    _, pub = signing.keygen(state, KEY_NAME)
    shutil.copyfile(log_pubkey, state / "log.pub")
    (state / "checkpoints.jsonl").touch()
    return pub


class Witness:
    def __init__(self, state: Path):
        self.state = Path(state)
        self.key = merkle.load_private(self.state / f"{KEY_NAME}.key", "witness signing key")
        self.log_pub = merkle.load_public(self.state / "log.pub", "the witnessed log's public key")
        self.copy = self.state / "checkpoints.jsonl"
        self._lock = threading.Lock()

    def latest(self) -> dict | None:
        lines = self.copy.read_text().splitlines() if self.copy.exists() else []
        return json.loads(lines[-1]) if lines else None

    def add(self, old_size: int, proof: list[str], cp: dict) -> dict:
        """Co-sign ``cp`` if it extends the latest checkpoint held; raise ``Refused`` otherwise."""
        if not merkle.signature_ok(self.log_pub, cp):
            raise Refused(403, "the checkpoint is not signed by the log's key")
        with self._lock:
            last = self.latest()
            size, last_root = (last["tree_size"], bytes.fromhex(last["root_hash"])) if last else (0, b"")
            if old_size != size:
                raise Refused(409, f"the witness holds a checkpoint of size {size}, not {old_size}", size)
            path = [bytes.fromhex(p) for p in proof]
            if not merkle.verify_consistency(size, cp["tree_size"], last_root, bytes.fromhex(cp["root_hash"]), path):
                raise Refused(422, f"refusing a fork: this checkpoint of size {cp['tree_size']} does not extend "
                                   f"the checkpoint of size {size} this witness co-signed")
            # the same tree again (a log whose sink write failed after our cosignature) is co-signed again:
            # its time and signature differ, and the cosignature must verify on the line the log keeps
            signed = dict(cp, cosignatures=[merkle.cosign(self.key, cp)])
            with open(self.copy, "a") as f:
                f.write(json.dumps(signed, sort_keys=True) + "\n")
            return signed["cosignatures"][0]


def _handler(witness: Witness):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/checkpoint":
                return self._send(404, {"detail": "GET /checkpoint or POST /add-checkpoint"})
            last = witness.latest()
            return self._send(200, last) if last else self._send(404, {"detail": "nothing co-signed yet"})

        def do_POST(self):
            if self.path != "/add-checkpoint":
                return self._send(404, {"detail": "POST /add-checkpoint"})
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if not 0 < n <= MAX_BODY:
                    raise ValueError("body missing or too large")
                req = json.loads(self.rfile.read(n))
                cos = witness.add(int(req["old_size"]), list(req["consistency_proof"]), dict(req["checkpoint"]))
                return self._send(200, {"cosignature": cos})
            except Refused as e:
                log.warning("refused a checkpoint: %s", e.detail)
                return self._send(e.status, {"detail": e.detail, "size": e.size})
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"detail": f"malformed request ({type(e).__name__}: {e})"})

        def log_message(self, fmt, *args):  # requests go to logging, not stderr
            log.info("%s " + fmt, self.client_address[0], *args)

    return Handler


def server(state: Path, host: str = "127.0.0.1", port: int = 8790) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), _handler(Witness(state)))


# ---------- the log's side
def request_cosignature(url: str, old_size: int, proof: list[bytes], cp: dict, timeout: float = 10.0) -> dict:
    """POST one checkpoint; returns the cosignature or raises ``Refused`` (the status and reason)."""
    import httpx

    body = {"old_size": old_size, "consistency_proof": [p.hex() for p in proof], "checkpoint": cp}
    try:
        r = httpx.post(url.rstrip("/") + "/add-checkpoint", json=body, timeout=timeout)
    except httpx.HTTPError as e:
        raise Refused(503, f"the witness at {url} could not be reached ({type(e).__name__}); "
                           "no checkpoint was written") from None
    doc = _json(r)
    if r.status_code != 200:
        raise Refused(r.status_code, f"the witness at {url} refused: {doc.get('detail')}", doc.get("size"))
    return doc["cosignature"]


def fetch_latest(url: str, timeout: float = 10.0) -> dict | None:
    """The witness's latest co-signed checkpoint (None before its first)."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/checkpoint", timeout=timeout)
    except httpx.HTTPError as e:
        raise PrivmedError(f"the witness at {url} could not be reached ({type(e).__name__})") from None
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise PrivmedError(f"the witness at {url} answered {r.status_code}")
    return _json(r)


def _json(r) -> dict:
    try:
        doc = r.json()
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {"detail": f"HTTP {r.status_code} without a JSON body"}
