"""``load_model(path)`` and ``Model.predict(image)``: the one prediction path every face uses.

image -> read -> quality gate -> preprocess -> network -> temperature-scaled probabilities ->
abstain decision (bad quality, out of distribution, low confidence).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

import privmed.inference.intended_use as intended_use
import privmed.inference.site as site_calibration
from privmed.bundle.format import load_bundle
from privmed.config import PreprocessConfig, bundle_search_dirs
from privmed.data.read import MAX_BYTES, Image, load_image
from privmed.data.transforms import Preprocess
from privmed.errors import BundleError, ImageReadError
from privmed.inference.report import check_modality, default_window, model_card
from privmed.inference.runtime import choose as choose_runtime
from privmed.privacy.ledger import statement


@dataclass
class Prediction:
    label: str | None
    probabilities: dict[str, float]
    quality: dict
    abstain: bool
    abstain_reasons: list[str] = field(default_factory=list)
    ood_score: float | None = None
    model: dict = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    dicom: dict | None = None  # DICOM input only: modality, window used (HU for CT), frame

    def to_dict(self, heatmap: bool = False, model: bool = True) -> dict:
        """``model=False``: without the model's summary (the served result carries the card instead;
        deep-copying the summary for every image cost more than the rest of the dict)."""
        if not model:
            d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "model"}
        else:
            d = asdict(self)
        d["heatmap"] = self.heatmap.round(3).tolist() if heatmap and self.heatmap is not None else None
        return d


class Model:
    """A loaded bundle. ``predict`` takes a path, bytes, numpy array or PIL image. ``local_graphs=False``
    never serves the unsigned int8 graph from ``BUNDLE.local/`` (the registry passes it when bundles
    must be signed). ``bundle``: the typed metadata; ``metadata``: the same as its JSON document."""

    def __init__(self, path: Path, local_graphs: bool = True, site: Path | bool = True):
        self.path = Path(path)
        self.net, self.bundle = load_bundle(self.path)
        self.metadata = self.bundle.raw
        meta = self.bundle
        self.classes: list[str] = list(meta.classes)
        self.preprocess = Preprocess(PreprocessConfig(**meta.preprocess_args()))
        self.temperature = float(meta.temperature)
        self.min_confidence = float(meta.abstain.min_confidence if meta.abstain else 0.0)
        self.ood = meta.ood.dump() if meta.ood else None
        self.decision = meta.decision.dump() if meta.decision else None  # two classes: DP-chosen operating point
        self.intended = intended_use.for_bundle(meta)  # population and acquisition it was trained on
        self.site = None  # a site calibration beside the bundle (BUNDLE.site/), applied over the above
        if site is not False:
            self.use_site(site_calibration.load(self.path, self.metadata, None if site is True else site))
        # ONNX Runtime where a graph of these weights serves (inference.runtime), else torch
        self.runtime = choose_runtime(self.path, self.metadata, self.net, local_graphs=local_graphs)
        self.session, self.backend = self.runtime.session, self.runtime.backend

    def use_site(self, site: dict | None) -> None:
        """Serve with a site's DP calibration (``inference.site``) instead of the bundle's own."""
        if site is None:
            return
        self.site = site
        self.temperature = float(site["calibration"].get("temperature", 1.0))
        self.decision, self.ood = site["decision"], site["ood"]

    @property
    def info(self) -> dict:
        """The model's summary in every prediction; built once per site calibration in use."""
        cached = self.__dict__.get("_info")
        if cached is not None and cached[0] is self.site:
            return cached[1]
        meta = self.bundle
        p = meta.ledger
        info = {"id": meta.model_id if "model_id" in meta.model_fields_set else self.path.name, "task": meta.task,
                "dataset": meta.dataset, "weights_sha256": meta.weights_sha256,
                "intended_use": self.intended,
                "privacy": {"mechanism": p.mechanism, "epsilon": p.epsilon, "delta": p.delta,
                            "unit_of_privacy": p.unit_of_privacy, "statement": statement(self.metadata)},
                "site_calibration": site_calibration.summary(self.site) if self.site else None,
                "runtime": self.backend}
        self._info = (self.site, info)
        return info

    def card(self, name: str | None = None) -> dict:
        """``report.model_card`` for this model and the site calibration it serves with, built once
        (a site calibrated later loads a new ``Model``: the registry re-verifies changed bundles)."""
        cached = self.__dict__.get("_card")
        if cached is None or cached[0] != name or cached[1] is not self.site:
            cached = self._card = (name, self.site, model_card(self.bundle, name, self.site))
        return cached[2]

    def label_index(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class per row of probabilities: the operating point for two classes, else argmax."""
        probs = np.atleast_2d(probs)
        if self.decision and probs.shape[1] == 2:
            return (probs[:, 1] >= float(self.decision["threshold_probability"])).astype(int)
        return probs.argmax(1)

    def tensor(self, image: Image) -> torch.Tensor:
        return self.batch([image.pixels])

    def batch(self, pixels) -> torch.Tensor:
        """Decoded grayscale images (arrays in [0, 1], any size) -> the preprocessed batch (N, 1, H, W)
        that ``scores`` takes: the preprocessing an upload gets."""
        return torch.from_numpy(np.stack([self.preprocess(p) for p in pixels])).float()[:, None]

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.session is not None:
            logits, emb = self.session.run(["logits", "embedding"], {"input": x.numpy().astype(np.float32)})
            return torch.from_numpy(logits), torch.from_numpy(emb)
        with torch.no_grad():
            return self.net.forward_with_embedding(x)

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        return self.scores(x)[0]

    def scores(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Batched: (calibrated probabilities (N, C), OOD scores (N,) or None) for preprocessed
        images (N, 1, H, W). ``predict`` and ``evaluate`` both come through here."""
        logits, emb = self.logits_and_embedding(x)
        probs = torch.softmax(torch.as_tensor(logits) / self.temperature, 1).numpy()
        if not self.ood:
            return probs, None
        from privmed.inference.ood import ood_scores

        return probs, ood_scores(np.asarray(emb), self.ood)

    def scores_many(self, pixels, batch: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """``scores`` for any number of decoded images (an iterable of [0, 1] arrays, read ``batch``
        at a time, so a split streams): each batch preprocessed as an upload (``self.batch``), then
        ``self.scores``. Evaluation, robustness, the benchmark and the int8 check predict through here."""
        from itertools import islice

        it, probs, ood = iter(pixels), [], []
        while chunk := list(islice(it, batch)):
            p, o = self.scores(self.batch(chunk))
            probs.append(p)
            ood.append(o)
        if not probs:
            return np.zeros((0, len(self.classes)), np.float32), None
        return np.concatenate(probs), None if ood[0] is None else np.concatenate(ood)

    def dicom_options(self, window: str | None = None, frame: int | None = None) -> dict:
        """How this model reads a DICOM: the file's window, else its task's named CT window."""
        return {"window": window or "file", "default_window": default_window(self.bundle), "frame": frame}

    def predict(self, image, *, explain: bool = False, check_quality: bool = True, window: str | None = None,
                frame: int | None = None, scores=None, source: str = "file") -> Prediction:
        """``window`` ("file", "lung", "mediastinal") and ``frame`` apply to DICOM input; a
        decoded ``Image`` is used as it is. A DICOM of the wrong Modality is refused. ``scores``
        replaces ``self.scores`` for the forward (the API's micro-batcher). ``source="camera"``:
        a photo of a film or monitor; the film is found and rectified first (``data.rectify``)."""
        img, verdict, x = self.prepare(image, check_quality=check_quality, window=window, frame=frame,
                                       source=source)
        probs, ood = (scores or self.scores)(x)
        return self.finish(img.meta, verdict, x, probs, ood, explain=explain)

    def decode(self, image, *, window: str | None = None, frame: int | None = None,
               max_bytes: int = MAX_BYTES) -> Image:
        """Decode (``data.read``, typed errors, ``max_bytes`` the upload limit) and refuse what this model
        cannot read: a DICOM of another modality (``WrongModality``), an image under 2 px."""
        img = load_image(image, max_bytes=max_bytes, **self.dicom_options(window, frame))
        check_modality(img.meta, self.bundle)
        if min(img.pixels.shape) < 2:
            raise ImageReadError(f"the image is {img.pixels.shape[1]}x{img.pixels.shape[0]} px; too small to classify")
        return img

    def prepare(self, image, *, check_quality: bool = True, window: str | None = None,
                frame: int | None = None, source: str = "file", max_bytes: int = MAX_BYTES,
                edit=None) -> tuple[Image, dict, torch.Tensor]:
        """Decode, modality check, ``edit`` (e.g. redaction, on the decoded image), (camera: rectify),
        quality gate, preprocess: everything before the network, once per upload."""
        from privmed.data.quality import assess

        img = self.decode(image, window=window, frame=frame, max_bytes=max_bytes)
        if edit is not None:
            img = edit(img)
        img = camera_input(img, source)
        verdict = assess(img).to_dict() if check_quality else {"ok": True, "reasons": [], "metrics": {}}
        return img, verdict, self.tensor(img)

    def finish(self, meta: dict, verdict: dict, x: torch.Tensor, batch_probs: np.ndarray, batch_ood,
               *, explain: bool = False) -> Prediction:
        """Everything after the network: abstain reasons, label, optional Grad-CAM."""
        probs = batch_probs[0]
        reasons = [f"image quality: {r['message']}" for r in verdict["reasons"]]
        if self.site is None:  # a site calibration governs where the site has calibrated
            reasons += intended_use.check(meta, self.intended)
        ood_score = None
        if batch_ood is not None:
            ood_score = float(batch_ood[0])
            camera = meta.get("source") == "camera" and "camera_threshold" in self.ood
            if ood_score > self.ood["camera_threshold" if camera else "threshold"]:
                reasons.append("image does not look like the images this model was trained on "
                               "(out of distribution)")
        if probs.max() < self.min_confidence:
            reasons.append(f"low confidence ({probs.max():.2f} < {self.min_confidence:.2f})")
        heat = None
        if explain:
            from privmed.inference.explain import gradcam

            heat = gradcam(self.net, x, int(self.label_index(probs)[0]))
        return Prediction(
            label=self.classes[int(self.label_index(probs)[0])],
            probabilities={c: float(p) for c, p in zip(self.classes, probs)},
            quality=verdict, abstain=bool(reasons), abstain_reasons=reasons, ood_score=ood_score,
            model=self.info, heatmap=heat, dicom=_dicom_info(meta),
        )


SOURCES = ("file", "camera")


def camera_input(img: Image, source: str = "file") -> Image:
    """``source="camera"``: the film found in the photo, upright, and ``meta["rectified"]`` saying
    whether it was found (and where); the photo itself when not. ``"file"``: ``img`` unchanged."""
    if source not in SOURCES:
        raise ImageReadError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "file":
        return img
    from privmed.data.rectify import rectify

    r = rectify(img.pixels)
    return Image(r.pixels, {**img.meta, "source": "camera", "rectified": r.to_dict()})


def _dicom_info(meta: dict) -> dict | None:
    if meta.get("format") != "dicom":
        return None
    keep = ("modality", "window", "voi", "rescale", "frames", "frame")
    return {k: meta[k] for k in keep if k in meta}


def resolve_bundle(name_or_path: str | Path) -> Path:
    """A bundle directory, or the name of a default bundle (``chest_xray_pneumonia``...)."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    roots = bundle_search_dirs()
    for root in roots:
        if (root / str(name_or_path)).is_dir():
            return root / str(name_or_path)
    known = sorted({d.name for root in roots for d in root.glob("*") if (d / "metadata.json").is_file()})
    raise BundleError(f"no bundle at '{name_or_path}'; pass a bundle directory or one of: {', '.join(known) or 'none'}")


def load_model(name_or_path: str | Path) -> Model:
    return Model(resolve_bundle(name_or_path))
