"""Grad-CAM heat maps (MONAI's ``GradCAM``) and an RGB overlay for display.

``SplitModel.forward`` runs the frozen part under ``no_grad``, so Grad-CAM runs on a private
copy of the whole network (frozen + trainable as one ``nn.Sequential``) whose parameters all
require grad: gradients then flow through the frozen backbone to its last convolution (the
1x1 head conv of EfficientNet-Lite0, the last conv block of the paper CNN). The copy is made once
per network and reused; MONAI's hooks stay on the copy, never on the serving network.
"""
from __future__ import annotations

import copy
import threading
import weakref

import numpy as np
import torch
from torch import nn

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Whole(nn.Module):
    def __init__(self, frozen: nn.Module, trainable: nn.Module):
        super().__init__()
        self.frozen = frozen
        self.trainable = trainable

    def forward(self, x):
        return self.trainable(self.frozen(x))


def target_layer(net: nn.Module) -> str:
    """Name of the last spatial layer: the last Conv2d, or the activation right after it."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError("Grad-CAM needs a convolutional network; this model has no Conv2d layer")
    return names[-1]


def _cam_for(net) -> tuple:
    from monai.visualize import GradCAM

    with _LOCK:
        hit = _CACHE.get(net)
        if hit is None:
            whole = _Whole(copy.deepcopy(net.frozen), copy.deepcopy(net.trainable)).eval()
            whole.requires_grad_(True)
            layer = target_layer(whole)
            hit = (GradCAM(nn_module=whole, target_layers=layer), threading.Lock(), layer)
            _CACHE[net] = hit
    return hit


def gradcam(net, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Heat map (H, W) in [0, 1] for class ``class_index`` of input ``x`` (1, 1, H, W)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam takes one image shaped (1, C, H, W), got {tuple(x.shape)}")
    cam, lock, _ = _cam_for(net)
    with lock, torch.enable_grad():
        heat = cam(x=x.detach().clone().float(), class_idx=int(class_index))
    h = heat[0, 0].detach().cpu().numpy().astype(np.float32)
    h = np.nan_to_num(h, nan=0.0)
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    return np.clip(h, 0.0, 1.0)


def _jet(v: np.ndarray) -> np.ndarray:
    """A jet-like colour map without matplotlib: (H, W) in [0,1] -> (H, W, 3) in [0,1]."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], -1)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Grey image (H, W) in [0, 1] under a heat map (any size, resized) -> RGB uint8 (H, W, 3)."""
    from PIL import Image as PILImage

    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(-1)
    h, w = pixels.shape
    heat = np.asarray(heat, np.float32)
    if heat.shape != (h, w):
        heat = np.asarray(PILImage.fromarray(heat, mode="F").resize((w, h), PILImage.BILINEAR), np.float32)
    heat = np.clip(np.nan_to_num(heat), 0, 1)
    grey = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, -1)
    a = alpha * heat[..., None]  # weight the colour by the heat so cold areas stay readable
    rgb = (1 - a) * grey + a * _jet(heat)
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
