"""ScatterNet + small CNN (Tramer & Boneh 2021, "Differentially Private Learning Needs Better
Features"): a fixed scattering transform does the early-layer work a CNN would otherwise have to
learn under DP noise, and a small tanh CNN on top is trained with DP-SGD.

Every normalisation is per sample (GroupNorm, never BatchNorm), so an example's gradient depends
on that example alone; the scattering filters are data-independent (no statistic of private
images), so the frozen part can be run once and cached.
"""
from __future__ import annotations

import torch
from torch import nn

from privmed.models.scattering import Scattering2D

VERSION = "scattering2d-kymatio0.3-v1"  # changes whenever the frozen features would change


class ScatterFrozen(nn.Module):
    """Pixels (B, 1, H, W) of any size -> resized to ``size`` -> scattering (B, C, size/2^J, size/2^J),
    C = 81 for J = 2, 217 for J = 3.

    The model picks its own resolution: the scattering of a 224 px film would feed the CNN a
    56 x 56 map, too slow for per-sample gradients on a CPU."""

    def __init__(self, size: int = 64, J: int = 2, L: int = 8):
        super().__init__()
        self.size = size
        self.scatter = Scattering2D(size, J, L)

    @property
    def channels(self) -> int:
        return self.scatter.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x.float(), (self.size, self.size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return self.scatter(x)


class ScatterCNN(nn.Module):
    """GroupNorm of the scattering channels, then conv-tanh-pool twice and a linear classifier
    (Tramer & Boneh's ScatterNet CNN, "cfg [64, M, 64]", with a second pool for 16 x 16 maps).
    tanh, not ReLU: bounded activations keep per-sample gradients small, so clipping loses less."""

    def __init__(self, num_classes: int, in_channels: int = 81, width: int = 64):
        super().__init__()
        # per-sample, no learned statistics; groups of about 3 channels (27 for 81, 31 of 7 for J = 3's 217)
        groups = max(g for g in range(1, in_channels // 3 + 1) if in_channels % g == 0)
        self.norm = nn.GroupNorm(groups, in_channels, affine=False)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(width * 16, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.norm(h)))
