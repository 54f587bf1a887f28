"""Typed settings. Every field can be overridden from the CLI or the environment.

The data root defaults to ``../shared/datasets`` beside the project checkout; users point
``PRIVMED_DATA`` or ``--data-root`` at their own copy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray", "covid19_ct")


def default_data_root() -> Path:
    env = os.environ.get("PRIVMED_DATA")
    if env:
        return Path(env).expanduser()
    beside_repo = REPO_ROOT.parent / "shared" / "datasets"
    if beside_repo.is_dir():
        return beside_repo
    return Path("../shared/datasets")


def cache_dir() -> Path:
    """The training/evaluation cache: decoded preprocessed pixels and frozen-backbone features of
    patient images, so patient data (see ``privmed.cache``). Outside the checkout by default:
    ``PRIVMED_CACHE``, else ``$XDG_CACHE_HOME/privmed``, else ``~/.cache/privmed``."""
    env = os.environ.get("PRIVMED_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "privmed"


def bundles_dir() -> Path:
    return Path(os.environ.get("PRIVMED_BUNDLES", REPO_ROOT / "bundles")).expanduser()


def budget_dir() -> Path:
    """The privacy budget registry (``privmed.privacy.budget``): private, outside the checkout.
    ``PRIVMED_BUDGET_DIR``, else ``$XDG_DATA_HOME/privmed/budget``, else ``~/.local/share/privmed/budget``."""
    env = os.environ.get("PRIVMED_BUDGET_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "privmed" / "budget"


class PreprocessConfig(BaseModel):
    size: int = Field(224, ge=16, le=1024)
    clahe: bool = False
    denoise: bool = False


class AugmentConfig(BaseModel):
    enabled: bool = True
    rotate_degrees: float = 10.0
    flip: bool = False  # chest films are not left-right symmetric; off by default
    zoom: float = 0.1
    contrast: float = 0.2
    noise_std: float = 0.02


class PrivacyConfig(BaseModel):
    enabled: bool = True
    epsilon: float = 2.0
    # None -> 1e-5, a public rule: a delta computed from the exact number of images would publish it.
    # Training refuses a delta of 1/N or more (N = training images)
    delta: float | None = None
    # Poisson rate of DP-SGD, public and fixed before the data are read (a rate from the exact number
    # of units would publish it). None: the model's default (its MODELS entry), else 0.2. Under DP the
    # batch is Poisson with mean q N and ``batch_size`` applies only to non-private training
    sample_rate: float | None = Field(None, gt=0, le=0.5)
    max_grad_norm: float = 1.0
    accountant: Literal["prv", "rdp"] = "prv"  # not gdp: it understates epsilon (issue 29)
    # auto: the patient wherever the data carry patient ids, else the image
    unit: Literal["auto", "patient", "image"] = "auto"
    # noise multiplier of the DP class counts (always released under DP: the DP estimate of the number
    # of units that scales the noisy gradient sum; and the class weights when class_weights is on)
    count_noise: float = Field(10.0, gt=0)
    # noise multiplier of the out-of-distribution detector's class means, released on the training units
    # after training (planned with the class counts before any private data is touched)
    ood_noise: float = Field(10.0, gt=0)
    grad_sample_mode: Literal["hooks", "ew"] = "hooks"
    # most images per forward/backward pass (GPU memory); a sampled batch is split into whole units,
    # so each unit is still clipped once and the sum is the same. None: the whole sampled batch at once
    physical_batch: int | None = Field(None, ge=1)

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"epsilon must be > 0 (got {v}); use --no-dp to train without privacy")
        return v


class TrainConfig(BaseModel):
    dataset: str = "chest_xray_pneumonia"
    data_root: Path = Field(default_factory=default_data_root)
    model: str = "effnet_lite0_head"
    # builder arguments of the model, recorded in the bundle (effnet_lite0_tail: start=0 trains every block)
    model_args: dict[str, int | float | str] = Field(default_factory=dict)
    # a declared public corpus (privmed.data.public.CORPORA) for the head's public projection
    # (model_args.public_k > 0): used in the clear, so never one of the private dataset's own splits
    public_data: str | None = None
    # where the trainable part trains: cpu, cuda, cuda:N or auto (cuda when present). Not part of the
    # recipe: noise and sampling still come from the secret CPU generator (privacy/engine.py)
    device: str = "cpu"
    epochs: int | None = Field(None, ge=1, le=100)  # None: the model's default (its MODELS entry)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    optimizer: Literal["adam", "sgd"] | None = None  # None: the model's default, else adam; sgd: momentum 0.9
    # balance classes with weights <= 1 applied after clipping; under DP from noisy class counts
    # (a Gaussian release composed into epsilon), never from exact private counts
    class_weights: bool = True
    ema: float = Field(0.0, ge=0, lt=1)  # exponential moving average of the weights (post-processing)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    patience: int = Field(10, ge=1)
    # without DP, the released epoch: the best on validation, or the last (DP always releases the last)
    release: Literal["best", "last"] = "best"
    seed: int = 0
    workers: int = 0
    exclude_leaked_test: bool = True
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        head, _, index = v.partition(":")
        if head not in ("cpu", "cuda", "auto") or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto (got '{v}')")
        return v

    @model_validator(mode="after")
    def _fill_model_defaults(self) -> "TrainConfig":
        from privmed.models.registry import MODELS  # here, not at the top: importing config must not load torch

        defaults = {"optimizer": "adam", "sample_rate": 0.2, **MODELS.get(self.model, MODELS["cnn"]).defaults}
        for key, value in defaults.items():
            holder = self.privacy if key == "sample_rate" else self
            if getattr(holder, key) is None:
                setattr(holder, key, value)
        return self
