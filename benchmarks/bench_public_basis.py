"""Time the public projection's fixed cost per training run (issue 31): the copy scan that defines the
declared corpus (``data.public.public_corpus``: about 16k shared images hashed) and the basis fit (frozen
features of the 450 kept films, then an SVD), with a cold and a warm cache (the scan's answer and the
features are both cached by content).

    PRIVMED_CACHE=$(mktemp -d) .venv/bin/python benchmarks/bench_public_basis.py
"""
import time

from privmed.config import TrainConfig
from privmed.data.public import public_corpus
from privmed.models import get_model
from privmed.training.public import fit_public_basis


def main() -> None:
    for run in ("cold cache", "warm cache"):
        t = time.time()
        public_corpus("kermany-test", "covid19_xray")
        print(f"public_corpus ({run}): {time.time() - t:.1f} s")
    cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", model_args={"public_k": 22},
                      public_data="kermany-test")
    for run in ("cold feature cache", "warm cache"):
        model = get_model(cfg.model, 3, **cfg.model_args)
        t = time.time()
        fit_public_basis(model, cfg)
        print(f"fit_public_basis ({run}, scan included): {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
