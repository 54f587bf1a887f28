"""A small DICOMweb client (PS3.18): QIDO-RS search, WADO-RS retrieve, STOW-RS store, over httpx.

Errors name the server and the HTTP status, never a patient value: query parameters (which can hold
a PatientID) are left out of every message.
"""
from __future__ import annotations

import io
import uuid
import warnings

from privmed.errors import PrivmedError


class PACSError(PrivmedError):
    pass


class DICOMwebClient:
    def __init__(self, url: str, timeout: float = 30.0, auth: tuple[str, str] | None = None):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise PACSError(f"the PACS URL must start with http:// or https:// (the DICOMweb root, e.g. "
                            f"http://127.0.0.1:8042/dicom-web), got {url!r}")
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, auth=auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method: str, path: str, **kw):
        import httpx

        try:
            r = self._http.request(method, self.url + path, **kw)
        except httpx.HTTPError as e:
            raise PACSError(f"cannot reach the PACS at {self.url} ({type(e).__name__}); check the URL and that "
                            "the server is up") from None
        if r.status_code >= 400:
            raise PACSError(f"the PACS at {self.url} answered HTTP {r.status_code} to {method} "
                            f"{path.split('?')[0]}")
        return r

    # QIDO-RS
    def search_studies(self, **params) -> list[dict]:
        return self._json("/studies", params)

    def search_series(self, study: str) -> list[dict]:
        return self._json(f"/studies/{_uid(study)}/series", {})

    def search_instances(self, study: str, series: str | None = None) -> list[dict]:
        path = f"/studies/{_uid(study)}" + (f"/series/{_uid(series)}" if series else "") + "/instances"
        return self._json(path, {})

    def _json(self, path: str, params: dict) -> list[dict]:
        r = self._request("GET", path, params=params, headers={"Accept": "application/dicom+json"})
        return r.json() if r.content else []

    # WADO-RS
    def retrieve_study(self, study: str) -> list:
        """Every instance of the study as pydicom Datasets (in memory; nothing written)."""
        r = self._request("GET", f"/studies/{_uid(study)}",
                          headers={"Accept": 'multipart/related; type="application/dicom"'})
        return [_dataset(part) for part in _multipart(r.headers.get("content-type", ""), r.content)]

    def retrieve_instance(self, study: str, series: str, instance: str):
        r = self._request("GET", f"/studies/{_uid(study)}/series/{_uid(series)}/instances/{_uid(instance)}",
                          headers={"Accept": 'multipart/related; type="application/dicom"'})
        parts = _multipart(r.headers.get("content-type", ""), r.content)
        if not parts:
            raise PACSError("the PACS returned no instance")
        return _dataset(parts[0])

    # STOW-RS
    def store(self, datasets: list, study: str | None = None) -> dict:
        """Store pydicom Datasets (or raw DICOM bytes); returns the server's response (DICOM JSON)."""
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for ds in datasets:
            data = ds if isinstance(ds, (bytes, bytearray)) else _bytes(ds)
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(data)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        path = "/studies" + (f"/{_uid(study)}" if study else "")
        r = self._request("POST", path, content=body.getvalue(),
                          headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
        res = r.json() if r.content else {}
        failed = (res.get("00081198") or {}).get("Value") or []
        if failed:
            raise PACSError(f"the PACS refused {len(failed)} of {len(datasets)} instance(s)")
        return res


def _uid(u: str) -> str:
    u = str(u).strip()
    if not u or not all(c.isdigit() or c == "." for c in u) or len(u) > 64:
        raise PACSError("a study/series/instance UID is digits and dots, at most 64 characters")
    return u


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dataset(data: bytes):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def _multipart(content_type: str, body: bytes) -> list[bytes]:
    """Split a multipart/related body into its parts' payloads."""
    boundary = None
    for p in content_type.split(";"):
        p = p.strip()
        if p.lower().startswith("boundary="):
            boundary = p.split("=", 1)[1].strip('"')
    if not boundary:
        raise PACSError("the PACS answered without a multipart boundary; is the URL the DICOMweb root?")
    delim = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    return parts
