"""Where the clinician app gets predictions: in-process (default) or a privmed REST API
(``PRIVMED_API_URL`` + ``PRIVMED_API_KEY``). No Streamlit import here, so it is testable alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from privmed.config import settings

TASK_LABELS = {"pneumonia": "Pneumonia (paediatric chest X-ray)", "brain_tumor": "Brain tumour (MRI)",
               "covid19": "COVID-19 (chest X-ray)", "covid19_ct": "COVID-19 (lung CT slice)"}


def task_label(task: str | None) -> str:
    return TASK_LABELS.get(task or "", task or "unknown task")


class BackendError(Exception):
    """A refused upload or unreachable service, with a message to show the user."""


def extra_bundles() -> list[Path]:
    return list(settings().app_bundles)  # PRIVMED_APP_BUNDLES


class LocalBackend:
    name = "in-process"

    def __init__(self, bundles: list[Path] | None = None):
        from privmed.inference.registry import Registry

        # the same rule as the API: with a public key configured, only bundles signed with it load
        self.registry = Registry(bundles if bundles is not None else extra_bundles(),
                                 pubkey=settings().bundle_pubkey)

    def models(self) -> list[dict]:
        from privmed.inference.report import model_card

        return [model_card(e["metadata"], e["name"], self.registry.site(e)) for e in self.registry.entries()]

    def analyse(self, model_id: str, data: bytes, filename: str, explain: bool, source: str = "file") -> dict:
        return self.analyse_for_display(model_id, data, filename, explain, source)[0]

    def analyse_for_display(self, model_id: str, data: bytes, filename: str, explain: bool,
                            source: str = "file") -> tuple[dict, np.ndarray | None]:
        """The result and the decoded image as the model saw it before preprocessing (windowed,
        rectified), from the one decode of the upload: nothing is decoded a second time to show it."""
        from privmed.errors import BundleError, PrivmedError
        from privmed.inference.registry import UnknownModel
        from privmed.inference.service import analyse

        try:
            entry = self.registry.find(model_id)
        except UnknownModel as e:
            raise BackendError(str(e)) from None
        try:
            model = self.registry.model(entry)
        except BundleError as e:
            raise BackendError(f"model '{model_id}' is unavailable: {e}") from None
        try:
            result, img = analyse(model, data, filename=filename, explain=explain, source=source, keep_decoded=True)
        except PrivmedError as e:  # the typed upload errors: their message says what was wrong and what to do
            raise BackendError(str(e)) from None
        return result, img.pixels


class RemoteBackend:
    name = "REST API"

    def __init__(self, url: str, key: str | None, timeout: float = 60.0):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _get(self, path: str) -> dict:
        import httpx

        try:
            r = self.client.get(path)
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach the privmed API at {self.url} ({type(e).__name__})") from None
        if r.status_code >= 400:
            raise BackendError(_detail(r))
        return r.json()

    def models(self) -> list[dict]:
        return [self._get(f"/v1/models/{m['id']}") for m in self._get("/v1/models")["models"]]

    def analyse(self, model_id: str, data: bytes, filename: str, explain: bool, source: str = "file") -> dict:
        import httpx

        try:
            r = self.client.post("/v1/predict", params={"source": source},
                                 files={"file": (filename, data, "application/octet-stream")},
                                 data={"model": model_id, "explain": "true" if explain else "false"})
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach the privmed API at {self.url} ({type(e).__name__})") from None
        if r.status_code >= 400:
            raise BackendError(_detail(r))
        return r.json()["results"][0]

    def analyse_for_display(self, model_id: str, data: bytes, filename: str, explain: bool,
                            source: str = "file") -> tuple[dict, np.ndarray | None]:
        """The server's result; the image to show is decoded here (the server sends no pixels)."""
        res = self.analyse(model_id, data, filename, explain, source)
        return res, display_pixels(data, res.get("image"))


def _detail(r) -> str:
    try:
        return str(r.json().get("detail"))
    except Exception:
        return f"HTTP {r.status_code}"


def make_backend():
    s = settings()
    if s.api_url:
        return RemoteBackend(s.api_url, s.api_key.get_secret_value() if s.api_key else None)
    return LocalBackend()


def display_pixels(data: bytes, image_meta: dict | None = None) -> np.ndarray | None:
    """Grey pixels for display (decoded locally; None if the bytes are not an image). ``image_meta``
    (a result's ``image``) makes a CT show in the window and frame the model saw."""
    from privmed.data.read import load_image
    from privmed.errors import ImageReadError

    m = image_meta or {}
    w = m.get("window") or {}
    named = w.get("name") if w.get("source") in ("default", "requested") else None
    try:
        pixels = load_image(data, window=named, frame=m.get("frame")).pixels
    except (ImageReadError, Exception):
        return None
    r = m.get("rectified") or {}
    if r.get("found") and r.get("corners"):  # a camera photo: show the film as the model saw it
        from privmed.data.rectify import warp

        pixels = warp(pixels, np.asarray(r["corners"], np.float64))
    return pixels
