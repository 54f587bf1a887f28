"""Secret randomness for DP mechanisms.

DP-SGD's guarantee rests on noise and sampling the adversary cannot reproduce. Opacus's
``secure_mode`` needs torchcsprng, which does not build against current torch, so each run draws a
64-bit seed from the OS CSPRNG (``secrets``), seeds a private ``torch.Generator`` with it and keeps
it only in memory: it is never logged, checkpointed or written into a bundle. A resumed run draws a
new seed (the accountant still counts every step).
"""
from __future__ import annotations

import secrets

import torch

SOURCE = ("secret: torch.Generator (Mersenne Twister) seeded per run with 64 bits from os.urandom "
          "(secrets), kept in memory only, never stored; a resumed run draws a fresh seed")


def secret_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


def secret_seed() -> int:
    return secrets.randbits(63)
