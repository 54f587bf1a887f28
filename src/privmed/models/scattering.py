"""A fixed 2-D scattering transform (Mallat 2012) in plain torch, following kymatio 0.3's
``Scattering2D`` (same Morlet filter bank, padding, subsampling and channel order).

The filters are a closed-form function of (size, J, L): no data, no training, so the features it
produces carry no statistic of any private image (Tramer & Boneh 2021 train a DP model on them).
Order 2: 1 + J L + L^2 J (J - 1) / 2 channels (81 for J = 2, L = 8) at resolution size / 2^J.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def gabor_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """Gabor filter on an (M, N) grid, periodised over 5 x 5 copies (kymatio's ``gabor_2d``)."""
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    D = np.array([[1.0, 0.0], [0.0, slant * slant]])
    curv = R @ D @ R.T / (2 * sigma * sigma)
    gab = np.zeros((M, N), np.complex128)
    for ex in (-2, -1, 0, 1, 2):
        for ey in (-2, -1, 0, 1, 2):
            xx, yy = np.mgrid[ex * M:M + ex * M, ey * N:N + ey * N]
            arg = (-(curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy)
                   + 1j * xi * (xx * np.cos(theta) + yy * np.sin(theta)))
            gab += np.exp(arg)
    return gab / (2 * math.pi * sigma * sigma / slant)  # unit mass: the low-pass has gain 1 at 0


def morlet_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """Gabor minus a Gaussian so that the wavelet has zero mean (no response to flat regions)."""
    wv = gabor_2d(M, N, sigma, theta, xi, slant)
    env = gabor_2d(M, N, sigma, theta, 0.0, slant)
    return wv - wv.sum() / env.sum() * env


def periodize(f_hat: np.ndarray, res: int) -> np.ndarray:
    """The Fourier filter for a signal already subsampled by 2^res (kymatio's ``periodize_filter_fft``)."""
    if res == 0:
        return f_hat
    M, N = f_hat.shape
    k = 2 ** res
    mask = np.ones_like(f_hat)
    mask[int(M * 2 ** (-res - 1)):int(M * 2 ** (-res - 1)) + int(M * (1 - 2 ** -res)), :] = 0
    mask[:, int(N * 2 ** (-res - 1)):int(N * 2 ** (-res - 1)) + int(N * (1 - 2 ** -res))] = 0
    return (f_hat * mask).reshape(k, M // k, k, N // k).sum((0, 2))


def filter_bank(M: int, N: int, J: int, L: int) -> tuple[list[tuple[int, int, np.ndarray]], np.ndarray]:
    """([(j, theta, psi_hat)], phi_hat): Morlet wavelets at scales 2^j and L angles, Gaussian low-pass
    at 2^J, in the Fourier domain (real: the spatial filters are Hermitian)."""
    psi = []
    for j in range(J):
        for t in range(L):
            w = morlet_2d(M, N, 0.8 * 2 ** j, (int(L - L / 2 - 1) - t) * math.pi / L, 3.0 / 4.0 * math.pi / 2 ** j,
                          4.0 / L)
            psi.append((j, t, np.real(np.fft.fft2(w))))
    phi = np.real(np.fft.fft2(gabor_2d(M, N, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    return psi, phi


def padding(size: int, J: int) -> tuple[int, int, int]:
    """(padded size, pad before, pad after): reflect-pad by at least 2^J so that borders wrap less."""
    padded = ((size + 2 ** J) // 2 ** J + 1) * 2 ** J
    return padded, (padded - size) // 2, (padded - size + 1) // 2


def _sub(x_hat: torch.Tensor, k: int) -> torch.Tensor:
    """Subsample by k in space, done in Fourier: average the k x k aliased copies."""
    if k == 1:
        return x_hat
    *lead, M, N = x_hat.shape
    return x_hat.reshape(*lead, k, M // k, k, N // k).mean((-4, -2))


def _filt(x_hat: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Complex signal times real filter. Done on the (re, im) pairs: a complex-by-real product
    promotes the filter to complex on every call, 10x slower on a CPU."""
    return torch.view_as_complex((torch.view_as_real(x_hat) * f[..., None]).contiguous())


class Scattering2D(nn.Module):
    """(B, C, size, size) -> (B, C * K, size / 2^J, size / 2^J), K = 1 + J L + L^2 J (J - 1) / 2.

    The filters of one scale are applied together (a batch of L), which is what makes it fast."""

    def __init__(self, size: int, J: int = 2, L: int = 8):
        super().__init__()
        if size % 2 ** J:
            raise ValueError(f"scattering needs a size divisible by 2^J = {2 ** J}, got {size}")
        self.size, self.J, self.L = size, J, L
        padded, self.pad_lo, self.pad_hi = padding(size, J)
        psi, phi = filter_bank(padded, padded, J, L)
        levels = max(J - 1, 1)
        # psi_hat of scale j (L angles) at each resolution r it is applied at (input subsampled by 2^r)
        for j in range(J):
            for r in range(min(j + 1, levels)):
                bank = np.stack([periodize(f, r) for jj, _, f in psi if jj == j])
                self.register_buffer(f"psi_{j}_{r}", torch.tensor(bank, dtype=torch.float32), persistent=False)
        for r in range(J):
            self.register_buffer(f"phi_{r}", torch.tensor(periodize(phi, r), dtype=torch.float32), persistent=False)

    @property
    def channels(self) -> int:
        J, L = self.J, self.L
        return 1 + J * L + L * L * J * (J - 1) // 2

    def _psi(self, j: int, r: int) -> torch.Tensor:
        return getattr(self, f"psi_{j}_{r}")

    def _low(self, u_hat: torch.Tensor, r: int) -> torch.Tensor:
        """Low-pass at 2^J of a signal at resolution 2^r, subsampled to 2^J, unpadded."""
        s = torch.fft.ifft2(_sub(_filt(u_hat, getattr(self, f"phi_{r}")), 2 ** (self.J - r))).real
        return s[..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"scattering built for {self.size} px, got {tuple(x.shape[-2:])}")
        B, C = x.shape[:2]
        x = nn.functional.pad(x.float(), (self.pad_lo, self.pad_hi, self.pad_lo, self.pad_hi), mode="reflect")
        x_hat = torch.fft.fft2(x)[:, :, None]  # (B, C, 1, M, N)
        first, second = [], []
        for j1 in range(self.J):
            u1 = torch.fft.ifft2(_sub(_filt(x_hat, self._psi(j1, 0)), 2 ** j1)).abs()  # (B, C, L, m, n)
            u1_hat = torch.fft.fft2(u1)
            first.append(self._low(u1_hat, j1))
            per_j2 = []
            for j2 in range(j1 + 1, self.J):
                u2_hat = _filt(u1_hat[:, :, :, None], self._psi(j2, j1))  # (B, C, L1, L2, m, n)
                u2 = torch.fft.ifft2(_sub(u2_hat, 2 ** (j2 - j1))).abs()
                per_j2.append(self._low(torch.fft.fft2(u2), j2))
            if per_j2:  # kymatio's order: theta1, then j2, then theta2
                second.append(torch.stack(per_j2, 3).flatten(2, 4))
        h, w = first[0].shape[-2:]
        parts = [self._low(x_hat, 0)] + first + second
        s = torch.cat([p.reshape(B, C, -1, h, w) for p in parts], 2)  # (B, C, K, h, w)
        return s.reshape(B, C * s.shape[2], h, w)
