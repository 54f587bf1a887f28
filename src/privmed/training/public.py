"""Fit a model's public projection (``models.registry.PublicBasis``) on a declared public corpus.

The projection depends on public images and public settings only (the corpus, the frozen backbone, k),
so it is released in the clear, like the ImageNet backbone: it spends no epsilon. Why it helps: DP-SGD
adds noise of the same size to every weight, so the noise-to-signal ratio grows with sqrt(k x classes);
k public directions keep the directions that vary most in this kind of image (PILLAR, Pinto et al. 2023).
Centred, not whitened: whitening would blow up low-variance directions, noise and all.
"""
from __future__ import annotations

import torch

from privmed.config import TrainConfig
from privmed.data.public import public_corpus
from privmed.models.registry import SplitModel, public_basis
from privmed.training.data import load_pixels, model_inputs


def fit_public_basis(model: SplitModel, cfg: TrainConfig, progress: bool = False) -> dict | None:
    """Fill ``model``'s public projection from ``cfg.public_data``; what the bundle states about it.
    None when the model has no projection."""
    proj = public_basis(model.trainable)
    if proj is None:
        if cfg.public_data:
            raise ValueError(f"--set public_data={cfg.public_data} needs a model with a public projection: "
                             "add --set model_args.public_k=K")
        return None
    if not cfg.public_data:
        raise ValueError("model_args.public_k needs a declared public corpus: --set public_data=NAME "
                         "(privmed.data.public.CORPORA)")
    corpus = public_corpus(cfg.public_data, cfg.dataset, cfg.data_root)
    k = proj.basis.shape[1]
    if k >= len(corpus.records):
        raise ValueError(f"public_k={k} needs more than {k} public images; {cfg.public_data} keeps "
                         f"{len(corpus.records)} after dropping copies of images elsewhere in the shared datasets")
    h = model_inputs(model, load_pixels(corpus.records, cfg, progress), progress).double()
    mean, directions, share = principal_directions(h, k)
    # one public factor: projected public features keep their raw RMS norm, so the learning rate and
    # clipping norm tuned on raw features mean what they meant
    scale = h.pow(2).sum(1).mean().sqrt() / ((h - mean) @ directions).pow(2).sum(1).mean().sqrt()
    proj.mean.copy_(mean.float())
    proj.basis.copy_((directions * scale).float())
    return {**corpus.describe(), "k": k, "variance_explained": round(share, 4), "scale": round(float(scale), 4),
            "how": "mean and top-k principal directions of the corpus's frozen features, one scale factor"}


def principal_directions(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean, (d, k) top-k principal directions, share of variance they hold) of the rows of ``h``."""
    mean = h.mean(0)
    _, s, vt = torch.linalg.svd(h - mean, full_matrices=False)
    var = s.pow(2)
    # a direction's sign is arbitrary: fix it so the same corpus always gives the same basis
    v = vt[:k].T
    v = v * torch.sign(v[v.abs().argmax(0), torch.arange(k)])
    return mean, v, float(var[:k].sum() / var.sum())
