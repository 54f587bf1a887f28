"""Simulated phone photos of a radiograph, for ``benchmarks/bench_camera.py`` and ``tests/test_camera.py``.

A film (the X-ray, resized, grey levels lifted: a photographed film's black is never black,
sometimes with a thin clear margin) is laid on a darker surround: a textured desk, or a monitor
whose bezel is near black (then with faint moire lines on the screen). Then: a random perspective
(each corner moved 5-12 % of the film side), a slight rotation, a warm tint, a soft glare spot,
sensor noise, mild blur, JPEG quality 80. The film's corners in the photo are returned, so a test
can check that rectification finds them.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage

SIZES = ((1280, 960), (960, 1280))  # (width, height): landscape or portrait phone frames
KINDS = ("desk", "monitor")


@dataclass
class SimPhoto:
    jpeg: bytes
    corners: np.ndarray  # 4x2 (x, y) film corners in the photo: top-left, top-right, bottom-right, bottom-left
    kind: str
    size: tuple[int, int]  # (width, height)


def photo_of(film: np.ndarray, key: bytes) -> SimPhoto:
    """One phone photo of ``film`` whose random capture is fixed by ``key`` (e.g. the image file's bytes):
    the same image always gives the same photo, whatever else is simulated (a shared generator would make
    each photo depend on the ones drawn before it). Not a secret: a simulation, not DP noise."""
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return phone_photo(film, np.random.default_rng(seed))


def phone_photo(film: np.ndarray, rng: np.random.Generator, *, kind: str | None = None,
                size: tuple[int, int] | None = None, quality: int = 80, glare: float = 1.0,
                moire: float = 1.0) -> SimPhoto:
    """``film``: grey X-ray in [0, 1] (HxW). Returns the photo as JPEG bytes and where the film lies.
    ``glare`` and ``moire`` scale the highlight and the monitor's lines (0: none; the random draws
    stay the same, for ablations)."""
    kind = kind or KINDS[rng.integers(len(KINDS))]
    w, h = size or SIZES[rng.integers(len(SIZES))]
    film = _film(np.asarray(film, np.float32), rng, kind, moire)
    side = rng.uniform(0.55, 0.75) * min(w, h)  # film height in the photo
    fh, fw = side, side * film.shape[1] / film.shape[0]
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.06, 0.06) * h
    rect = np.array([[-fw / 2, -fh / 2], [fw / 2, -fh / 2], [fw / 2, fh / 2], [-fw / 2, fh / 2]])
    a = np.deg2rad(rng.uniform(-5, 5))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = rng.uniform(0.05, 0.12, 4)[:, None] * side * _unit(rng.uniform(0, 2 * np.pi, 4))
    corners = rect @ rot.T + [cx, cy] + shift
    src = np.array([[0, 0], [film.shape[1], 0], [film.shape[1], film.shape[0]], [0, film.shape[0]]], np.float32)
    m = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
    warped = cv2.warpPerspective(film, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones_like(film), m, (w, h), flags=cv2.INTER_LINEAR)
    grey = _surround(rng, kind, w, h) * (1 - mask) + warped * mask
    grey = grey + glare * _glare(rng, corners, w, h)
    rgb = grey[..., None] * np.array([1.0, rng.uniform(0.88, 0.95), rng.uniform(0.72, 0.85)], np.float32)  # warm
    rgb = rgb + rng.normal(0, 0.01, rgb.shape).astype(np.float32)
    rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.6, 1.2))
    buf = io.BytesIO()
    PILImage.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return SimPhoto(buf.getvalue(), corners, kind, (w, h))


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def _film(x: np.ndarray, rng: np.random.Generator, kind: str, moire: float = 1.0) -> np.ndarray:
    """Upscale the X-ray to roughly photo resolution and lift its black level; maybe a clear margin."""
    x = cv2.resize(x, (x.shape[1] * 3, x.shape[0] * 3), interpolation=cv2.INTER_CUBIC)
    black, white = rng.uniform(0.12, 0.2), rng.uniform(0.85, 0.97)
    x = black + (white - black) * np.clip(x, 0, 1)
    if kind == "monitor":  # faint moire from the screen's pixel grid
        yy = np.arange(x.shape[0], dtype=np.float32)[:, None]
        x = x + moire * 0.015 * np.sin(2 * np.pi * yy / rng.uniform(5, 9))
    elif rng.random() < 0.5:  # a film's clear margin, a few pixels wide
        b = int(rng.integers(6, 16))
        x = cv2.copyMakeBorder(x, b, b, b, b, cv2.BORDER_CONSTANT, value=float(rng.uniform(0.7, 0.85)))
    return x.astype(np.float32)


def _surround(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "monitor":  # near-black bezel with a soft reflection gradient
        return (rng.uniform(0.02, 0.05) + 0.02 * xx / w).astype(np.float32)
    base = rng.uniform(0.02, 0.06)  # dark desk: a slow light gradient and wood-like texture
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3) * 0.02
    grad = 0.02 * (np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h)
    return np.clip(base + grad + grain, 0, 1).astype(np.float32)


def _glare(rng: np.random.Generator, corners: np.ndarray, w: int, h: int) -> np.ndarray:
    """A soft Gaussian highlight somewhere on the film."""
    t = rng.uniform(0.2, 0.8, 2)
    top = corners[0] + t[0] * (corners[1] - corners[0])
    bottom = corners[3] + t[0] * (corners[2] - corners[3])
    cx, cy = top + t[1] * (bottom - top)
    s = rng.uniform(0.05, 0.1) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (rng.uniform(0.1, 0.25) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))).astype(np.float32)


def scene_photo(rng: np.random.Generator, size: tuple[int, int] = (1280, 960)) -> bytes:
    """A photo-like scene with no film: a lit wall and desk with a few objects, as JPEG."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.where(yy < h * rng.uniform(0.4, 0.6), 0.7 - 0.2 * yy / h, 0.35 + 0.1 * xx / w)[..., None]
    img = img * np.array([1.0, 0.9, 0.75], np.float32)
    for _ in range(6):  # mugs, books, a lamp: ellipses and blocks of random colour
        c = tuple(float(v) for v in rng.uniform(0.05, 0.95, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(h // 3, h))
        if rng.random() < 0.5:
            cv2.ellipse(img, (x, y), (int(rng.integers(30, 150)), int(rng.integers(30, 150))), 0, 0, 360, c, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(40, 200)), y + int(rng.integers(20, 120))), c, -1)
    img = cv2.GaussianBlur(img + rng.normal(0, 0.02, img.shape).astype(np.float32), (0, 0), 1.0)
    buf = io.BytesIO()
    PILImage.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()
