"""Quality gate run before any prediction: reject images a classifier should not be asked about.

Metrics are computed on a fixed-size copy (``WORK_SIZE`` square, area-downscaled, never
upscaled) so that blur and noise measures do not depend on the upload's resolution. Exposure
uses percentiles, not the mean or dark-pixel fraction, because brain MRIs are mostly black
background and must not be called underexposed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from privmed.data.read import Image, load_image
from privmed.errors import ImageReadError

WORK_SIZE = 224


@dataclass(frozen=True)
class QualityThresholds:
    """Defaults calibrated by ``benchmarks/calibrate_quality.py`` on the test splits of
    chest_xray_pneumonia, brain_tumor_mri and covid19_xray (see the numbers it prints):
    all 2001 real test images pass, and every blurred (sigma 4 px at 224 px), darkened (x0.05),
    washed-out (0.95 + 0.05 x), uniform-noise and constant copy is rejected. Each threshold
    sits in the gap between the worst real image and the best degraded one (values below)."""

    min_side: int = 32
    min_std: float = 0.005  # near_constant below this (constant grey: 0; real min 0.082)
    min_p99: float = 0.15  # underexposed: even the brightest 1 % is dark (real min 0.33; x0.05 max 0.05)
    max_p01: float = 0.6  # overexposed: even the darkest 1 % is bright (real max 0.27; washed-out min 0.95)
    min_contrast: float = 0.12  # low_contrast: p99 - p01 (real min 0.33; x0.05 max 0.05)
    min_sharpness: float = 0.004  # blurred: var(Laplacian)/var(image) (real min 0.010; blur s4 max 0.0018)
    min_neighbour_corr: float = 0.5  # noise field: adjacent-pixel correlation (real min 0.87; noise max 0.07)

@dataclass
class QualityVerdict:
    ok: bool
    reasons: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def codes(self) -> list[str]:
        return [r["code"] for r in self.reasons]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reasons": list(self.reasons), "metrics": dict(self.metrics)}


def work_copy(pixels: np.ndarray, size: int = WORK_SIZE) -> np.ndarray:
    """Area-downscale to ``size`` x ``size``; smaller images keep their own pixels (no upscale blur)."""
    h, w = pixels.shape
    if h < size or w < size:
        return pixels.astype(np.float32, copy=False)
    return cv2.resize(pixels.astype(np.float32, copy=False), (size, size), interpolation=cv2.INTER_AREA)


def compute_metrics(pixels: np.ndarray) -> dict[str, float]:
    pixels = np.asarray(pixels, dtype=np.float32)
    h, w = pixels.shape
    small = work_copy(pixels)
    mean = float(small.mean())
    p01, p50, p99 = percentiles(small, (1, 50, 99)) if np.isfinite(mean) else np.percentile(small, [1, 50, 99])
    var = float(small.var())
    lap = cv2.Laplacian(small, cv2.CV_32F, ksize=1)
    return {
        "height": float(h),
        "width": float(w),
        "mean": mean,
        "std": float(np.sqrt(var)),
        "p01": float(p01),
        "p50": float(p50),
        "p99": float(p99),
        "contrast": float(p99 - p01),
        # high-frequency share of the signal: scale and contrast free, falls with blur
        "sharpness": float(lap.var() / var) if var > 1e-12 else 0.0,
        "neighbour_corr": _neighbour_corr(small),
    }


def percentiles(x: np.ndarray, qs) -> list[float]:
    """``np.percentile(x, qs)`` (linear method) of a finite array, from one partition of the order
    statistics it needs and numpy's own arithmetic: the same numbers, bit for bit, for a third of the
    CPU (the gate runs on every upload)."""
    flat, n = x.ravel(), x.size
    q = np.true_divide(np.asarray(qs, np.float64), 100)
    v = (n - 1) * q  # numpy's virtual index for the linear method
    below = np.floor(v).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    part = np.partition(flat, np.unique(np.concatenate((below, above))))
    lo, hi, t = part[below], part[above], v - below
    diff = hi - lo  # in the array's dtype, as numpy's _lerp
    out = lo + diff * t
    np.subtract(hi, diff * (1 - t), out=out, where=t >= 0.5)
    return [float(o) for o in out]


def _neighbour_corr(x: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent pixels (~0 for a noise field)."""
    if min(x.shape) < 2 or x.std() < 1e-6:
        return 1.0  # constant images are caught by near_constant, not as noise
    return float(np.mean([_corr(x[:, :-1], x[:, 1:]), _corr(x[:-1], x[1:])]))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = (a - a.mean()).ravel()  # centred first: one copy of a strided slice, not two
    b = (b - b.mean()).ravel()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 1.0


def assess(image: Image | np.ndarray, thresholds: QualityThresholds | None = None) -> QualityVerdict:
    t = thresholds or QualityThresholds()
    pixels = image.pixels if isinstance(image, Image) else load_image(image).pixels
    m = compute_metrics(pixels)
    reasons: list[dict] = []

    def reject(code: str, message: str, value: float, threshold: float) -> None:
        reasons.append({"code": code, "message": message, "value": round(value, 6), "threshold": threshold})

    side = min(m["height"], m["width"])
    if side < t.min_side:
        reject("too_small", f"image is {int(m['width'])}x{int(m['height'])} px; need at least "
               f"{t.min_side} px per side", side, t.min_side)
    flat = m["std"] < t.min_std
    if flat:
        reject("near_constant", "image is (nearly) one flat grey level; nothing to classify", m["std"], t.min_std)
    if m["p99"] < t.min_p99:
        reject("underexposed", "image is too dark: even its brightest areas are near black", m["p99"], t.min_p99)
    if m["p01"] > t.max_p01:
        reject("overexposed", "image is washed out: even its darkest areas are near white", m["p01"], t.max_p01)
    if m["contrast"] < t.min_contrast and not flat:
        reject("low_contrast", "grey levels span too narrow a range to show anatomy", m["contrast"], t.min_contrast)
    if flat:
        return QualityVerdict(False, reasons, m)  # blur and noise are undefined on a flat image
    if m["neighbour_corr"] < t.min_neighbour_corr:
        reject("noise_field", "image looks like a random noise field, not anatomy", m["neighbour_corr"],
               t.min_neighbour_corr)
    elif m["sharpness"] < t.min_sharpness:  # noise is never 'blurred'; report one cause
        reject("blurred", "image is too blurred: almost no fine detail", m["sharpness"], t.min_sharpness)
    return QualityVerdict(not reasons, reasons, m)


def assess_bytes(data: bytes, thresholds: QualityThresholds | None = None) -> QualityVerdict:
    """Decode and assess in one go; an undecodable upload becomes a verdict, not an exception."""
    try:
        image = load_image(data)
    except ImageReadError as e:
        return QualityVerdict(False, [{"code": "undecodable", "message": str(e), "value": 0.0, "threshold": 0.0}])
    return assess(image, thresholds)


def thresholds_dict(t: QualityThresholds | None = None) -> dict:
    return asdict(t or QualityThresholds())
