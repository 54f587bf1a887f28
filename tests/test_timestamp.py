"""RFC 3161 timestamps against a real local TSA (``openssl ts -reply`` over HTTP, see tests/tsa.py)."""
from __future__ import annotations

import datetime as dt
import socket
import subprocess

import pytest
from rfc3161_client import decode_timestamp_response

from privmed.api.timestamp import request_token, token_from_text, token_to_text, verify_token
from privmed.errors import PrivmedError
from tsa import OPENSSL, LocalTSA, openssl, openssl_available

pytestmark = pytest.mark.skipif(not openssl_available(), reason=f"{OPENSSL} not found: the local TSA needs openssl")

DATA = b'{"tree_size": 12, "root_hash": "ab", "time": "2026-01-01T00:00:00Z"}'


@pytest.fixture(scope="module")
def tsa(tmp_path_factory):
    with LocalTSA(tmp_path_factory.mktemp("tsa")) as t:
        yield t


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory):
    with LocalTSA(tmp_path_factory.mktemp("tsa2"), name="other") as t:
        yield t


@pytest.fixture(scope="module")
def token(tsa):
    return request_token(tsa.url, DATA)


@pytest.fixture(autouse=True)
def _mode_ok(tsa):
    tsa.mode = "ok"
    yield
    tsa.mode = "ok"


def test_token_verifies_and_gives_tsa_time(tsa, token):
    when = verify_token(token, DATA, tsa.cert, tsa.root)
    assert when.tzinfo is not None and when.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - when) < dt.timedelta(minutes=1)
    # PEM bytes work like paths; the JSON-line form round-trips
    again = token_from_text(token_to_text(token))
    assert verify_token(again, DATA, tsa.cert.read_bytes(), tsa.root.read_bytes()) == when


def test_each_request_is_fresh(tsa, token):
    again = request_token(tsa.url, DATA)
    assert decode_timestamp_response(again).tst_info.nonce != decode_timestamp_response(token).tst_info.nonce
    assert verify_token(again, DATA, tsa.cert, tsa.root) >= verify_token(token, DATA, tsa.cert, tsa.root)


def test_other_data_fails(tsa, token):
    with pytest.raises(PrivmedError, match="does not cover this data"):
        verify_token(token, DATA + b" ", tsa.cert, tsa.root)


def test_other_tsa_fails(tsa, other_tsa, token):
    with pytest.raises(PrivmedError, match="does not verify"):  # another TSA's certificate and root
        verify_token(token, DATA, other_tsa.cert, other_tsa.root)
    with pytest.raises(PrivmedError, match="does not verify"):  # right TSA certificate, but not under this root
        verify_token(token, DATA, tsa.cert, other_tsa.root)
    with pytest.raises(PrivmedError, match="does not verify"):  # the other TSA, under the right root
        verify_token(token, DATA, other_tsa.cert, tsa.root)
    with pytest.raises(PrivmedError, match="pass that CA"):  # a CA-issued TSA certificate needs its root
        verify_token(token, DATA, tsa.cert)


def test_self_signed_tsa_is_its_own_anchor(tmp_path):
    with LocalTSA(tmp_path, name="selfsigned") as t:  # re-issue the signer certificate self-signed, same key
        openssl("req", "-x509", "-key", t.dir / "tsa.key", "-days", "3", "-subj", "/CN=self-signed TSA", "-out",
                t.cert, "-addext", "extendedKeyUsage=critical,timeStamping")
        tok = request_token(t.url, DATA)
    assert verify_token(tok, DATA, t.cert) <= dt.datetime.now(dt.UTC)
    with pytest.raises(PrivmedError, match="self-signed and not one of the given roots"):
        verify_token(tok, DATA, t.cert, t.root)


def test_backdated_gen_time_fails(tsa, token):
    gen = decode_timestamp_response(token).tst_info.gen_time.strftime("%Y%m%d%H%M%S").encode()
    assert token.count(gen) == 1
    earlier = str(int(gen[:4]) - 1).encode() + gen[4:]
    with pytest.raises(PrivmedError, match="does not verify"):
        verify_token(token.replace(gen, earlier), DATA, tsa.cert, tsa.root)


def test_no_single_flipped_bit_changes_what_verifies(tsa, token):
    """Every flip fails with PrivmedError, or touches only unsigned CMS fields (version numbers, the
    signature algorithm identifier) and leaves time and imprint as signed."""
    good = decode_timestamp_response(token).tst_info
    passed = 0
    for i in range(len(token)):
        bad = bytearray(token)
        bad[i] ^= 0x01
        try:
            when = verify_token(bytes(bad), DATA, tsa.cert, tsa.root)
        except PrivmedError:
            continue
        passed += 1
        info = decode_timestamp_response(bytes(bad)).tst_info
        assert (when, info.message_imprint.message, info.nonce) == (good.gen_time, good.message_imprint.message,
                                                                    good.nonce)
    assert passed < 20


def test_garbage_and_bad_text_fail(tsa):
    with pytest.raises(PrivmedError, match="not a DER RFC 3161"):
        verify_token(b"not a token", DATA, tsa.cert, tsa.root)
    with pytest.raises(PrivmedError, match="not valid base64"):
        token_from_text("%%%")


def test_unavailable_tsa(tsa):
    tsa.mode = "unavailable"
    with pytest.raises(PrivmedError, match=r"answered HTTP 503 .*retry later"):
        request_token(tsa.url, DATA)


def test_closed_port():
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PrivmedError, match=r"could not reach the timestamp authority .*check the URL"):
        request_token(f"http://127.0.0.1:{port}/tsa", DATA, timeout=2)


def test_reply_for_other_data_is_refused(tsa):
    tsa.mode = "wrong_data"
    with pytest.raises(PrivmedError, match="stamped other data"):
        request_token(tsa.url, DATA)


def test_rejection_is_reported(tsa):
    tsa.mode = "reject"
    with pytest.raises(PrivmedError, match=r"did not grant a timestamp \(status REJECTION"):
        request_token(tsa.url, DATA)


def test_empty_data_is_refused(tsa):
    with pytest.raises(PrivmedError, match="nothing to timestamp"):
        request_token(tsa.url, b"")


def test_openssl_agrees(tsa, other_tsa, token, tmp_path):
    """``openssl ts -verify`` accepts the stored bytes for the right data only, and reads the same genTime."""
    (tmp_path / "token.tsr").write_bytes(token)
    (tmp_path / "data").write_bytes(DATA)
    (tmp_path / "other").write_bytes(DATA + b" ")

    def ossl_verify(data: str, t) -> subprocess.CompletedProcess:
        return subprocess.run([OPENSSL, "ts", "-verify", "-in", tmp_path / "token.tsr", "-data", tmp_path / data,
                               "-CAfile", t.root, "-untrusted", t.cert], capture_output=True, text=True, check=False)

    ok = ossl_verify("data", tsa)
    assert ok.returncode == 0 and "Verification: OK" in ok.stdout, ok.stderr
    assert ossl_verify("other", tsa).returncode != 0
    assert ossl_verify("data", other_tsa).returncode != 0
    text = subprocess.run([OPENSSL, "ts", "-reply", "-in", tmp_path / "token.tsr", "-text"], capture_output=True,
                          text=True, check=True).stdout
    stamp = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Time stamp:"))
    ossl_time = dt.datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
    assert ossl_time == verify_token(token, DATA, tsa.cert, tsa.root)
