"""Small composable transforms on grayscale float images (HxW numpy, [0,1]) or tensors.

Preprocessing is deterministic and recorded in every bundle; augmentation runs only in training.
Each step can be switched off (the ablation needs it).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from privmed.config import AugmentConfig, PreprocessConfig


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape == (size, size):
        return pixels.astype(np.float32, copy=False)
    im = PILImage.fromarray(pixels.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), PILImage.BILINEAR), dtype=np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0,1] floats -> the nearest of 256 levels, as uint8 (what the training cache stores)."""
    return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)


def from_uint8(u8: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 in [0,1]; the same float32 division as the training side's tensor, so
    the values are bit for bit those a cached training image gives."""
    return u8.astype(np.float32) / 255


def clahe(pixels: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV on 8-bit)."""
    import cv2

    return from_uint8(cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply(to_uint8(pixels)))


def denoise(pixels: np.ndarray, strength: float = 5.0) -> np.ndarray:
    """Non-local means (OpenCV) on 8-bit; mild by default."""
    import cv2

    return from_uint8(cv2.fastNlMeansDenoising(to_uint8(pixels), None, h=strength))


class Preprocess:
    """Grayscale float [0,1] image of any size -> (size, size) float32 in [0,1], on 256 levels.

    The last step rounds to 8-bit levels because the training cache stores uint8: training, the
    validation releases (temperature, threshold, OOD) and serving then see the same input values."""

    def __init__(self, cfg: PreprocessConfig | None = None):
        self.cfg = cfg or PreprocessConfig()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = resize(pixels, self.cfg.size)
        if self.cfg.denoise:
            x = denoise(x)
        if self.cfg.clahe:
            x = clahe(x)
        return from_uint8(to_uint8(x))


class SeededDraws:
    """Reproducible draws for non-private training (``rand(n)``, ``randn(shape)``). Under DP the
    trainer passes its secret stream (``privacy.randomness.SecretStream``) instead, same methods."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.gen)

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.gen)


class Augment:
    """Batched training augmentation on tensors (N,1,H,W): rotation, flip, zoom, contrast, noise.

    Done in torch on whole batches: per-image MONAI transforms cost ~6 ms an image here, which
    would dominate a DP epoch on two cores. ``draws``: where the randomness comes from (seeded by
    ``seed`` when not given).
    """

    def __init__(self, cfg: AugmentConfig | None = None, seed: int = 0, draws=None):
        self.cfg = cfg or AugmentConfig()
        self.draws = draws or SeededDraws(seed)

    def _u(self, n, lo, hi):
        return lo + (hi - lo) * self.draws.rand(n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if not c.enabled or x.shape[0] == 0:
            return x
        n = x.shape[0]
        ang = self._u(n, -c.rotate_degrees, c.rotate_degrees) * torch.pi / 180
        scale = 1.0 / self._u(n, 1 - c.zoom, 1 + c.zoom)
        flip = torch.where(self.draws.rand(n) < 0.5, -1.0, 1.0) if c.flip else torch.ones(n)
        cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
        theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(n)], 1),
                             torch.stack([sin * flip, cos, torch.zeros(n)], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
        if c.contrast:
            k = self._u(n, 1 - c.contrast, 1 + c.contrast).view(n, 1, 1, 1)
            m = x.mean((1, 2, 3), keepdim=True)
            x = (x - m) * k + m
        if c.noise_std:
            x = x + c.noise_std * self.draws.randn(x.shape)
        return x.clamp(0, 1)
