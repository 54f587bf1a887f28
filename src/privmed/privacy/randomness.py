"""Secret randomness for DP mechanisms: a ChaCha20 keystream keyed with 256 bits from the OS.

DP-SGD's guarantee rests on noise and sampling the adversary cannot reproduce. A seeded
``torch.Generator`` cannot carry that: torch's CPU Mersenne Twister keeps only the low 32 bits of
a seed (2^32 guesses, checkable against any published noisy statistic) and is not a cryptographic
generator anyway. So every DP draw (Poisson sampling, gradient noise, class-count noise, the
validation releases, augmentation under DP, each federated hospital) comes from a
``SecretStream``: ChaCha20 (``cryptography``, i.e. OpenSSL) keyed with a 256-bit key and a 128-bit
nonce from ``os.urandom``, held in memory only, never logged, checkpointed or written into a
bundle; a resumed run draws a new key (the accountant still counts every step).

Uniforms take 53 keystream bits each, centred in their cell so they lie strictly inside (0, 1).
Gaussians use Box-Muller in float64, and each noise value is the sum of four such draws divided by
two (as Opacus's ``secure_mode``): the low-order bits of a single floating-point Gaussian can
identify the uniform behind it (Mironov 2012; Jin et al. 2022), a sum of four hides them.
"""
from __future__ import annotations

import math
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BITS = 256
SOURCE = (f"secret: ChaCha20 keystream (cryptography/OpenSSL) keyed per run with a {KEY_BITS}-bit key and a "
          "128-bit nonce from os.urandom, in memory only, never stored or replayable; uniforms from 53 bits, "
          "Gaussians by Box-Muller in float64, each the sum of 4 draws / 2 (Opacus secure_mode style); "
          "a resumed run draws a fresh key")


class SecretStream:
    """Uniforms, Bernoulli draws and Gaussians from a ChaCha20 keystream; one per DP run."""

    def __init__(self, key: bytes | None = None, nonce: bytes | None = None):
        """``key``/``nonce`` exist for the statistical tests only: every caller on a DP path leaves
        them out, so the key comes from the OS and lives in this object alone."""
        key = secrets.token_bytes(KEY_BITS // 8) if key is None else key
        nonce = secrets.token_bytes(16) if nonce is None else nonce
        if len(key) != 32 or len(nonce) != 16:
            raise ValueError("ChaCha20 needs a 32-byte key and a 16-byte nonce")
        self._cipher = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def __repr__(self) -> str:  # never show the key
        return "SecretStream(ChaCha20, key hidden)"

    def __getstate__(self):
        raise TypeError("a SecretStream cannot be pickled or stored: it would make the DP noise replayable")

    def words(self, n: int) -> np.ndarray:
        """n uniform 64-bit words of keystream."""
        return np.frombuffer(self._cipher.update(bytes(8 * n)), dtype="<u8")

    def uniform(self, n: int) -> np.ndarray:
        """n float64 uniforms, strictly inside (0, 1)."""
        return ((self.words(n) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def _standard_normal(self, n: int) -> np.ndarray:
        u = self.uniform(2 * ((n + 1) // 2)).reshape(2, -1)
        r = np.sqrt(-2.0 * np.log(u[0]))
        return np.concatenate([r * np.cos(2 * math.pi * u[1]), r * np.sin(2 * math.pi * u[1])])[:n]

    def normal(self, shape, std: float = 1.0) -> np.ndarray:
        """float64 N(0, std^2) of ``shape``: (g1 + g2 + g3 + g4) / 2."""
        n = int(np.prod(shape))
        g = self._standard_normal(4 * n).reshape(4, n).sum(0) / 2.0
        return (std * g).reshape(shape)

    # torch faces, for the loops and augmentation (duck-typed like data.transforms.SeededDraws)
    def rand(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.uniform(n)).float()

    def randn(self, shape) -> torch.Tensor:
        return torch.from_numpy(self.normal(tuple(shape))).float()

    def noise(self, shape, std: float) -> torch.Tensor:
        """float32 tensor of N(0, std^2): the Gaussian mechanism's noise."""
        return torch.from_numpy(self.normal(tuple(shape), std)).float()

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """n independent coin flips with probability p (Poisson sampling of units)."""
        return self.uniform(n) < p
