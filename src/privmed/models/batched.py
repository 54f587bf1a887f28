"""The batched forward loop: a function over the rows of an input, a slice at a time, without
gradients, outputs concatenated. Used wherever a network runs over a whole array of images."""
from __future__ import annotations

import numpy as np
import torch


def _cat(parts):
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_cat([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts) if isinstance(first, torch.Tensor) else np.concatenate(parts)


def batched_forward(fn, x, batch: int = 512, *, progress: bool = False, desc: str = "forward"):
    """``fn(x[i:i + batch])`` for each slice under ``torch.no_grad``, concatenated along the first
    axis (a tuple output element by element; tensors with ``torch.cat``, arrays with numpy).
    ``x`` may be a tensor or an array (``fn`` converts it then). Needs at least one row."""
    from tqdm import tqdm

    with torch.no_grad():
        return _cat([fn(x[i:i + batch]) for i in tqdm(range(0, len(x), batch), desc=desc, disable=not progress,
                                                       leave=False)])
