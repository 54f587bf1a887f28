"""The physical-batch splitter (memory only, Opacus's ``BatchMemoryManager``, per unit).

A sampled batch is cut into pieces of at most ``cap`` images for the forward/backward passes,
whole units only: each unit is clipped in one piece, so the summed pieces equal the one-piece
clipped sum and the bound C holds. The logical batch, and so the privacy accounting, is unchanged.
"""
from __future__ import annotations

import torch


def physical_batches(local: torch.Tensor, cap: int | None) -> list[tuple[slice, slice]]:
    """(example slice, unit slice) pieces of a sampled batch; ``local`` is each example's local unit
    index, sorted (as the sampler returns it). ``cap`` None: one piece."""
    if not len(local):
        return []
    if bool((local[1:] < local[:-1]).any()):
        raise ValueError("physical batches need each unit's images together, in order (as sample() gives them)")
    sizes = torch.bincount(local.cpu()).tolist()
    cap = cap or sum(sizes)
    out, ex0, un0, n = [], 0, 0, 0
    for u, k in enumerate(sizes):
        if n and n + k > cap:
            out.append((slice(ex0, ex0 + n), slice(un0, u)))
            ex0, un0, n = ex0 + n, u, 0
        n += k
    out.append((slice(ex0, ex0 + n), slice(un0, len(sizes))))
    return out
