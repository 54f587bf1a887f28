"""Trusted timestamps from an RFC 3161 timestamp authority (TSA) for audit-log checkpoints.

A checkpoint's own ``time`` is the signer's clock: whoever holds the log key can write any time. A
TSA token binds sha256(checkpoint) to the TSA's clock under the TSA's key, so a checkpoint cannot be
back- or forward-dated without also forging the TSA's signature.

The "token" this module hands out and takes back is the whole DER ``TimeStampResp`` (status +
TimeStampToken), not the bare TimeStampToken: rfc3161-client only decodes and verifies responses.
``openssl ts -verify -in token.tsr`` reads the same bytes.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ObjectIdentifier
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    TimeStampTokenInfo,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from privmed.errors import PrivmedError

SHA256_OID = ObjectIdentifier("2.16.840.1.101.3.4.2.1")
QUERY_TYPE = "application/timestamp-query"


# ---------- asking a TSA
def request_token(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """A TSA's DER TimeStampResp over sha256(``data``), checked to answer this very request (imprint, nonce).

    This does not check the TSA's signature (that needs its certificate): store the bytes and call
    ``verify_token``.
    """
    if not data:
        raise PrivmedError("nothing to timestamp: the data is empty")
    req = TimestampRequestBuilder(data, HashAlgorithm.SHA256, nonce=True, cert_req=True).build()
    body = _post(url, req.as_bytes(), timeout)
    resp = _decode(body, f"the answer of the timestamp authority at {url}")
    _check_granted(resp, url)
    tst = _tst_info(resp, f"the answer of the timestamp authority at {url}")
    if tst.message_imprint.hash_algorithm != SHA256_OID or tst.message_imprint.message != req.message_imprint.message:
        raise PrivmedError(f"the timestamp authority at {url} stamped other data than was sent (message imprint "
                           "mismatch); the service or something between is misbehaving, do not use this token")
    if tst.nonce != req.nonce:
        # a stale or replayed answer: the nonce is what ties the reply to this request
        raise PrivmedError(f"the timestamp authority at {url} answered with another request's nonce (a replayed "
                           "or mixed-up reply); retry, and check no cache or proxy sits in between")
    return body


def _post(url: str, query: bytes, timeout: float) -> bytes:
    try:
        r = httpx.post(url, content=query, headers={"Content-Type": QUERY_TYPE}, timeout=timeout)
    except httpx.HTTPError as exc:  # refused, DNS, TLS, timeout...
        raise PrivmedError(f"could not reach the timestamp authority at {url} ({type(exc).__name__}: {exc}); "
                           "check the URL and the network, or retry later") from None
    if r.status_code != 200:
        raise PrivmedError(f"the timestamp authority at {url} answered HTTP {r.status_code} "
                           f"{r.reason_phrase}; retry later or use another timestamp authority")
    return r.content


def _check_granted(resp: TimeStampResponse, url: str) -> None:
    # only GRANTED: rfc3161-client's verifier refuses GRANTED_WITH_MODS too
    if resp.status != PKIStatus.GRANTED:
        name = PKIStatus(resp.status).name if resp.status in {s.value for s in PKIStatus} else str(resp.status)
        said = "; ".join(resp.status_string) or "no reason given"
        raise PrivmedError(f"the timestamp authority at {url} did not grant a timestamp (status {name}: {said}); "
                           "check it accepts SHA-256 requests, or use another timestamp authority")


# ---------- checking a token
def verify_token(token: bytes, data: bytes, tsa_cert_pem: Path | bytes, roots_pem: Path | bytes | None = None
                 ) -> dt.datetime:
    """The TSA's genTime (aware, UTC) once ``token`` is shown to cover sha256(``data``) and to be signed by
    ``tsa_cert_pem``, chaining to one of ``roots_pem`` (PEM, several allowed).

    Without roots the TSA certificate itself must be self-signed (it is then the trust anchor); a
    TSA certificate issued by a CA needs that CA in ``roots_pem``.
    """
    resp = _decode(token, "the timestamp token")
    if resp.status != PKIStatus.GRANTED:
        raise PrivmedError(f"the timestamp token is not a granted timestamp (status {resp.status})")
    tsa = _one_cert(tsa_cert_pem)
    roots = _certs(roots_pem, "root certificates") if roots_pem is not None else [tsa]
    if roots_pem is not None and _self_signed(tsa) and tsa not in roots:
        # a self-signed TSA certificate is its own anchor to OpenSSL: the given roots would not be used
        raise PrivmedError("the TSA certificate is self-signed and not one of the given roots; "
                           "pass the TSA certificate its root CA issued")
    if roots_pem is None and not _self_signed(tsa):
        raise PrivmedError("the TSA certificate is issued by a CA: pass that CA's certificate as roots_pem")
    tst = _tst_info(resp, "the timestamp token")
    imprint = tst.message_imprint
    if imprint.hash_algorithm != SHA256_OID or imprint.message != hashlib.sha256(data).digest():
        raise PrivmedError("the timestamp token does not cover this data (its message imprint is not sha256 of it): "
                           "the data was changed after it was stamped, or the token belongs to other data")
    builder = VerifierBuilder(tsa_certificate=tsa, roots=list(roots))
    try:
        builder.build().verify(resp, imprint.message)
    except (VerificationError, ValueError, x509.InvalidVersion) as exc:  # damaged embedded cert: InvalidVersion
        raise PrivmedError(f"the timestamp token does not verify against the given TSA certificate: {_reason(exc)}; "
                           "check the TSA certificate and root, or the token was altered") from None
    when = tst.gen_time
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _decode(der: bytes, what: str) -> TimeStampResponse:
    try:
        return decode_timestamp_response(der)
    except ValueError as exc:  # the Rust parser raises ValueError with the ASN.1 path
        raise PrivmedError(f"{what} is not a DER RFC 3161 TimeStampResp ({_reason(exc)}); "
                           "it is damaged or the URL is not a timestamp service") from None


def _tst_info(resp: TimeStampResponse, what: str) -> TimeStampTokenInfo:
    try:  # parsed lazily: a damaged token fails here, not in decode_timestamp_response
        return resp.tst_info
    except ValueError as exc:
        raise PrivmedError(f"{what} holds a malformed TSTInfo ({_reason(exc)}); it is damaged") from None


def _reason(exc: Exception) -> str:
    """The useful part of a library message (OpenSSL error stacks say it in ``data: "..."``)."""
    text = str(exc)
    found = re.search(r'data: "([^"]+)"', text) or re.search(r'reason: "([^"]+)"', text)
    return (found.group(1) if found else text[:200]).rstrip(".")


def _pem(source: Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _certs(source: Path | bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_pem(source))
    except (OSError, ValueError) as exc:
        raise PrivmedError(f"could not read the {what} ({exc}); give PEM certificate(s)") from None
    return certs


def _one_cert(source: Path | bytes) -> x509.Certificate:
    certs = _certs(source, "TSA certificate")
    if len(certs) != 1:
        raise PrivmedError(f"the TSA certificate file holds {len(certs)} certificates; give only the TSA's own "
                           "(its CA goes in roots_pem)")
    return certs[0]


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):  # another key signed it, or an unsupported key type
        return False
    return True


# ---------- storing a token in a JSON line
def token_to_text(token: bytes) -> str:
    return base64.b64encode(token).decode("ascii")


def token_from_text(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PrivmedError("the stored timestamp token is not valid base64; the record was damaged") from None
