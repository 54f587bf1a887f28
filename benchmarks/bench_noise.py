"""Cost of the secret Gaussian noise per DP-SGD step: privmed's ChaCha20 stream (4 Box-Muller draws
summed, float64) against torch's seeded Mersenne Twister (what it replaced, not secret), at the
parameter counts of the trainable parts. Minimum and median of REPEATS calls, seconds.

    python benchmarks/bench_noise.py
"""
import time

import numpy as np
import torch

from privmed.privacy.randomness import SecretStream

SIZES = {"effnet_lite0_multi head, 2 classes": 6_530, "effnet_lite0_tail start=15": 1_016_258,
         "effnet_lite0_tail start=11": 2_659_874, "effnet_lite0_tail start=0": 3_351_666}
REPEATS = 5


def timed(fn) -> tuple[float, float]:
    t = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t), float(np.median(t))


if __name__ == "__main__":
    stream, gen = SecretStream(), torch.Generator().manual_seed(0)
    print("| trainable part | parameters | ChaCha20 stream min / median s | torch.normal (old) min / median s |")
    print("|---|---|---|---|")
    for name, n in SIZES.items():
        new = timed(lambda: stream.noise((n,), 5.9))
        old = timed(lambda: torch.normal(0.0, 5.9, size=(n,), generator=gen))
        print(f"| {name} | {n:,} | {new[0]:.4f} / {new[1]:.4f} | {old[0]:.4f} / {old[1]:.4f} |")
