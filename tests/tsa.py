"""A real RFC 3161 timestamp authority on 127.0.0.1 for tests: ``openssl ts -reply`` behind http.server.

    with LocalTSA(tmp_path) as tsa:
        token = request_token(tsa.url, data)
        verify_token(token, data, tsa.cert, tsa.root)

``tsa.mode`` switches the answer for negative tests: "ok", "unavailable" (HTTP 503), "wrong_data" (a
granted reply for other data, so imprint and nonce differ) or "reject" (openssl's own rejection).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

CONFIG = """\
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def openssl_available() -> bool:
    return Path(OPENSSL).is_file()


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    done = subprocess.run([OPENSSL, *map(str, args)], input=stdin, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def make_pki(d: Path, name: str) -> None:
    """root.key/root.crt (a CA) and tsa.key/tsa.crt (EKU critical,timeStamping) signed by it, in ``d``."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-subj", f"/CN={name} Test Root", "-keyout", d / "root.key", "-out", d / "root.crt",
            "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name} Test TSA", "-keyout", d / "tsa.key", "-out", d / "tsa.csr")
    (d / "tsa.ext").write_text("basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
                               "extendedKeyUsage=critical,timeStamping\n")
    openssl("x509", "-req", "-in", d / "tsa.csr", "-CA", d / "root.crt", "-CAkey", d / "root.key",
            "-CAcreateserial", "-days", "30", "-extfile", d / "tsa.ext", "-out", d / "tsa.crt")
    (d / "serial").write_text("01\n")
    (d / "tsa.cnf").write_text(CONFIG.format(dir=d))


class LocalTSA:
    def __init__(self, directory: Path, name: str = "privmed"):
        self.dir = Path(directory) / f"tsa-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        make_pki(self.dir, name)
        self.cert, self.root = self.dir / "tsa.crt", self.dir / "root.crt"
        self.mode = "ok"
        self.requests = 0
        self._lock = threading.Lock()  # openssl ts -reply rewrites the serial file
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/tsa"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reply(self, query: bytes) -> bytes:
        """openssl's TimeStampResp DER for a DER TimeStampReq (as the mode says)."""
        with self._lock, tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            q, out = Path(tmp) / "req.tsq", Path(tmp) / "resp.tsr"
            if self.mode in ("wrong_data", "reject"):
                # sha1 is not in the config's digests: openssl answers with a rejection (badAlg)
                (Path(tmp) / "other").write_bytes(b"not what the client asked for")
                digest = "-sha1" if self.mode == "reject" else "-sha256"
                openssl("ts", "-query", "-data", Path(tmp) / "other", digest, "-cert", "-out", q)
            else:
                q.write_bytes(query)
            openssl("ts", "-reply", "-config", self.dir / "tsa.cnf", "-queryfile", q, "-out", out)
            return out.read_bytes()

    def _handler(self):
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                tsa.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if tsa.mode == "unavailable":
                    return self._send(503, b"down for maintenance", "text/plain")
                try:
                    self._send(200, tsa.reply(body), "application/timestamp-reply")
                except RuntimeError as exc:  # a malformed query: openssl could not even parse it
                    self._send(400, str(exc).encode(), "text/plain")

            def _send(self, status: int, body: bytes, ctype: str):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output quiet
                pass

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
