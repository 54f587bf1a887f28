"""The secret randomness behind every DP draw (issue 29, item 1).

Failed before: ``privacy/randomness.py`` seeded a ``torch.Generator`` (Mersenne Twister) with
``secrets.randbits(63)``, but torch keeps only the low 32 bits of a seed, and the first draws (the
class-count noise) were published in the ledger: 2^32 guesses, each checked offline, replayed the
noise and the Poisson sampling. ``test_torch_keeps_only_32_bits_of_a_seed`` keeps that reason.
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from privmed.privacy import DPSGD, DPPlan, randomness
from privmed.privacy.randomness import KEY_BITS, SOURCE, SecretStream
from privmed.privacy.releases import gaussian_sum

SRC = Path(__file__).resolve().parents[1] / "src" / "privmed"
# every module that draws or passes on DP randomness
DP_MODULES = [*sorted((SRC / "privacy").glob("*.py")), SRC / "pipeline.py", SRC / "training" / "trainer.py",
              SRC / "federated" / "hospital.py"]
TORCH_DRAWS = {"rand", "randn", "normal", "randint", "bernoulli", "multinomial", "randperm", "poisson"}


def test_torch_keeps_only_32_bits_of_a_seed():
    """Why a seeded torch.Generator cannot carry a DP secret: s and s & 0xffffffff draw the same."""
    s = (0x5DEECE6 << 32) | 0x1234ABCD  # a 60-bit seed, as secrets.randbits(63) gave
    a = torch.randn(8, generator=torch.Generator().manual_seed(s))
    b = torch.randn(8, generator=torch.Generator().manual_seed(s & 0xFFFFFFFF))
    assert torch.equal(a, b)


@pytest.mark.parametrize("part", range(4))
def test_keys_sharing_a_64_bit_part_give_independent_streams(part):
    rng = np.random.default_rng(part)
    key_a = bytearray(rng.bytes(32))
    key_b = bytearray(rng.bytes(32))
    key_b[8 * part:8 * part + 8] = key_a[8 * part:8 * part + 8]  # one shared 64-bit quarter
    nonce = bytes(16)
    a = SecretStream(bytes(key_a), nonce).uniform(20000)
    b = SecretStream(bytes(key_b), nonce).uniform(20000)
    assert not np.intersect1d(a, b).size
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(len(a))
    assert stats.ks_2samp(a, b).pvalue > 1e-4  # same law, different values


def test_each_stream_is_keyed_with_fresh_os_randomness(monkeypatch):
    asked = []
    real = randomness.secrets.token_bytes

    def spy(n):
        asked.append(n)
        return real(n)

    monkeypatch.setattr(randomness.secrets, "token_bytes", spy)
    x, y = SecretStream().uniform(64), SecretStream().uniform(64)
    assert asked == [32, 16, 32, 16] and KEY_BITS == 256 >= 128
    assert not np.array_equal(x, y)
    assert "ChaCha20" in SOURCE and f"{KEY_BITS}-bit" in SOURCE and "os.urandom" in SOURCE


def test_a_stream_cannot_be_stored():
    with pytest.raises(TypeError, match="replayable"):
        pickle.dumps(SecretStream())
    assert "key hidden" in repr(SecretStream())


@pytest.mark.parametrize("n, std", [(6530, 5.6875), (1_000_000, 1.0)])  # one step of the 2-class head; a tail step
def test_gaussian_noise_has_the_stated_law(n, std):
    """Mean, variance and KS against N(0, std^2), at the sizes DP-SGD draws. Fixed test keys: no flakes."""
    g = SecretStream(bytes(range(32)), bytes(16)).normal((n,), std)
    assert g.dtype == np.float64 and g.shape == (n,)
    assert abs(g.mean()) < 5 * std / np.sqrt(n)
    assert abs(g.var() / std ** 2 - 1) < 5 * np.sqrt(2 / n)
    assert stats.kstest(g / std, "norm").pvalue > 1e-3


def test_uniforms_and_coin_flips():
    s = SecretStream(bytes(range(1, 33)), bytes(16))
    u = s.uniform(200_000)
    assert 0 < u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    flips = s.bernoulli(200_000, 0.2)
    assert abs(flips.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / 200_000)


def test_dp_draws_ignore_torch_and_numpy_global_seeds():
    """Same global seeds, same data: two engines still sample and add different noise."""
    units = torch.arange(200)
    grads = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        net = nn.Linear(4, 2)
        plan = DPPlan(2.0, 1e-5, 1.0, 0.25, 4, expected_units=200)
        engine = DPSGD(net, torch.optim.SGD(net.parameters(), lr=0.1), units, plan)
        idx, _, _ = engine.sample()
        grads.append(idx)
    assert not torch.equal(grads[0], grads[1])
    torch.manual_seed(0)
    a = gaussian_sum(np.zeros((3, 4)), 1.0, 1.0)
    torch.manual_seed(0)
    b = gaussian_sum(np.zeros((3, 4)), 1.0, 1.0)
    assert not np.array_equal(a, b)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


@pytest.mark.parametrize("path", DP_MODULES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_dp_module_draws_from_a_seeded_generator(path):
    """Checked from the source: in the modules on a DP path no call passes a ``generator=`` and no
    torch/numpy sampler is called, except the seeded ones of the non-private branch, listed here."""
    allowed = {("trainer.py", "randperm"), ("trainer.py", "manual_seed")}  # no-DP shuffling; init only
    allowed |= {("hospital.py", "manual_seed")}  # torch.manual_seed(seed): initial weights only
    bad = []
    for node, owner, name in _calls(ast.parse(path.read_text())):
        if (path.name, name) in allowed:
            continue
        if any(k.arg == "generator" for k in node.keywords):
            bad.append(f"line {node.lineno}: {name}(generator=...)")
        elif owner == "torch" and name in TORCH_DRAWS or owner == "random" or name in ("default_rng", "manual_seed"):
            bad.append(f"line {node.lineno}: {owner}.{name}")
    assert not bad, f"{path.name}: {bad}"
