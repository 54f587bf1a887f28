"""One training loop in Opacus's shape (issue 30, item 2): a unit-level Poisson sampler, a
clip-and-noise optimizer and a physical-batch splitter as separate parts, driven by one plain loop
(``trainer.run_steps``) in ``fit``, in a federated hospital and in the audit's reference models.

The refactor changed no behaviour. ``GOLDEN`` holds, per tensor, (sum, sum of squares) of the weights
each path trained *before* the refactor (commit f2b1973), with every secret stream keyed by a fixed
test key so that DP runs are repeatable: the same sampling, clipping, noise and accounting give the
same weights (bit for bit on the machine that recorded them; within float rounding elsewhere).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privmed.config import TrainConfig
from privmed.privacy import DPSGD, DPOptimizer, DPPlan, UnitPoissonSampler, physical_batches, randomness
from privmed.privacy.randomness import SecretStream
from privmed.training import trainer

GOLDEN = {
    "nodp_fit": {"0.bias": (-0.5829278, 0.1997146), "0.weight": (-3.7453451, 1.9587246),
        "4.bias": (-0.109677, 0.0358058), "4.weight": (0.2361642, 0.5797044)},
    "nodp_fit_sgd_ema": {"0.bias": (-0.5214375, 0.1287942), "0.weight": (-2.63076, 1.7846726),
        "4.bias": (-0.1096769, 0.0086357), "4.weight": (0.2361643, 0.5910357)},
    "dp_fit": {"0.bias": (-0.8351959, 0.3263302), "0.weight": (-0.8731744, 3.1491975),
        "4.bias": (-0.2786456, 0.0445105), "4.weight": (0.9955747, 1.5679861)},
    "ref_dp": {"0.bias": (-0.2545106, 0.1302912), "0.weight": (-3.5120165, 2.4932135),
        "4.bias": (0.1551287, 0.0535351), "4.weight": (1.1291826, 1.7104957)},
    "ref_nodp": {"0.bias": (-1.1628566, 0.4331416), "0.weight": (-9.0686836, 4.0964382),
        "4.bias": (-0.109677, 0.0065434), "4.weight": (0.2361641, 0.9014613)},
    "hospital": {"0": (-0.865387, 5.3400394), "1": (-0.3394092, 0.7189692), "10": (63.70401, 63.4836536),
        "11": (-0.2640128, 0.0582703), "12": (6.5420723, 125.7346199), "13": (0.5479048, 0.2125014),
        "14": (128.284256, 128.7320531), "15": (0.9996593, 0.1414049), "16": (-8.7925491, 60.4622372),
        "17": (-0.8601031, 0.4894485), "18": (-0.2064808, 1.054097), "19": (0.0220071, 0.0061034),
        "2": (15.977396, 15.9652399), "3": (0.0084636, 0.0158947), "4": (-7.9580517, 15.9779735),
        "5": (-0.2916985, 0.098398), "6": (31.9750061, 31.993944), "7": (0.2943084, 0.0337358),
        "8": (-3.7697051, 41.5622083), "9": (-0.1543557, 0.0975083)},
    "train_dp": {"classifier.1.bias": (-0.2202926, 0.3450173), "classifier.1.weight": (1.7091904, 43.1872226),
        "classifier.3.bias": (0.1287332, 0.0131877), "classifier.3.weight": (1.0111816, 0.9949719),
        "features.0.0.bias": (0.1091768, 0.5183559), "features.0.0.weight": (2.2192111, 5.1387885),
        "features.0.1.bias": (0.0100497, 0.0006508), "features.0.1.weight": (16.0074463, 16.0154812),
        "features.1.0.bias": (0.0926156, 0.0721575), "features.1.0.weight": (-6.0685592, 10.894464),
        "features.1.1.bias": (-0.0211572, 0.0010403), "features.1.1.weight": (32.0178871, 32.0367707),
        "features.2.0.bias": (0.2950018, 0.0830081), "features.2.0.weight": (2.1077271, 21.9678489),
        "features.2.1.bias": (-0.0137026, 0.0017543), "features.2.1.weight": (63.9772148, 63.9562031),
        "features.3.0.bias": (-0.0651991, 0.0786491), "features.3.0.weight": (4.1584692, 44.3613234),
        "features.3.1.bias": (0.0167382, 0.0039156), "features.3.1.weight": (127.9075394, 127.8182572)},
    "train_nodp": {"classifier.1.bias": (-0.3516364, 0.3444829), "classifier.1.weight": (-5.1929207, 42.9559511),
        "classifier.3.bias": (0.1348214, 0.0142035), "classifier.3.weight": (0.8195727, 0.9871087),
        "features.0.0.bias": (0.1159118, 0.5316798), "features.0.0.weight": (2.1582546, 5.1599706),
        "features.0.1.bias": (0.0068115, 0.000101), "features.0.1.weight": (16.0059471, 16.0119991),
        "features.1.0.bias": (0.0563429, 0.0681704), "features.1.0.weight": (-6.5540152, 10.7362502),
        "features.1.1.bias": (-0.0193112, 0.000322), "features.1.1.weight": (31.9945107, 31.9892584),
        "features.2.0.bias": (0.2878509, 0.0781723), "features.2.0.weight": (4.6867557, 21.6583828),
        "features.2.1.bias": (-0.0396617, 0.0005165), "features.2.1.weight": (63.9854965, 63.9716333),
        "features.3.0.bias": (-0.0772921, 0.08155), "features.3.0.weight": (-15.7556238, 43.2923215),
        "features.3.1.bias": (-0.0866436, 0.0010434), "features.3.1.weight": (127.8965302, 127.7942891)},
}

# the ledger train() wrote before the refactor (covid19_xray, paper CNN at 32 px, 2 epochs, rdp, fixed key)
LEDGER_BEFORE = {"steps": 20, "sample_rate": 0.1, "noise_multiplier": 1.51953125, "epsilon": 1.9992,
                 "epsilon_train": 1.9992, "epsilon_target": 2.0, "delta": 1e-05, "max_grad_norm": 1.0, "epochs": 2,
                 "accountant": "rdp", "n_units_train_dp": 228.2, "dp_class_counts": [91.03, 61.08, 76.1],
                 "unit_of_privacy": "image"}
RELEASES_BEFORE = [("class counts per unit (Gaussian mechanism, sensitivity 1)", 10.0, 1.0, 1),
                   ("OOD detector class means (Gaussian mechanism, rows of norm sqrt(2) scaled to 1)", 10.0, 1.0, 1),
                   ("DP-SGD (per-unit clipping, Gaussian noise, Poisson sampling of units)", 1.51953125, 0.1, 20)]


@pytest.fixture
def fixed_key(monkeypatch):
    """Every SecretStream keyed with a fixed test key: DP draws repeat (tests only, never a DP run)."""
    monkeypatch.setattr(randomness.secrets, "token_bytes", lambda n: bytes(range(n)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recording ran on one thread: the same summation order
    yield
    torch.set_num_threads(threads)


def _matches(name: str, weights: dict) -> None:
    want = GOLDEN[name]
    assert sorted(weights) == sorted(want)
    for k, (s, sq) in want.items():
        a = weights[k].detach().double()
        np.testing.assert_allclose([float(a.sum()), float((a ** 2).sum())], [s, sq], rtol=1e-5, atol=2e-6,
                                   err_msg=f"{name}: {k}")


def _data(n=48, size=16, seed=5):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % 2
    x[y == 1] += 0.3
    return x, y


def _net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))


BASE = dict(epochs=3, batch_size=8, lr=0.05, seed=4, augment={"enabled": True}, preprocess={"size": 16})


def test_non_private_fit_gives_the_weights_it_gave_before(fixed_key):
    """Seeded shuffles, seeded augmentation, class weights, the best validation epoch; and SGD with EMA."""
    x, y = _data()
    val = _data(16, seed=9)
    cfg = TrainConfig(**BASE, privacy={"enabled": False})
    f = trainer.fit(_net(), x, y, cfg, torch.arange(48), trainer.count_weights(y[:40].clone(), 2), None,
                    pixels=True, val=val)
    _matches("nodp_fit", f.net.state_dict())
    assert f.best_epoch == 1 and f.engine is None
    assert [round(h["train_loss"], 6) for h in f.history] == [0.726542, 0.703055, 0.696693]
    cfg = TrainConfig(**{**BASE, "optimizer": "sgd", "ema": 0.5}, privacy={"enabled": False})
    f = trainer.fit(_net(), x, y, cfg, torch.arange(48))
    _matches("nodp_fit_sgd_ema", f.net.state_dict())
    assert f.best_epoch == 3 and [round(h["train_loss"], 6) for h in f.history] == [0.696863, 0.694667, 0.693277]


def test_dp_fit_gives_the_weights_steps_and_epsilon_it_gave_before(fixed_key):
    """Patients of two images, class weights after clipping, physical batches of 3, EMA, augmentation
    from the secret stream: same weights, 12 steps (3 epochs of round(1/q)), the same epsilon per epoch."""
    x, y = _data()
    cfg = TrainConfig(**{**BASE, "ema": 0.5}, privacy={"enabled": True, "physical_batch": 3, "sample_rate": 0.25})
    plan = DPPlan(4.0, 1e-5, 1.0, 0.25, 3 * 4, "rdp", [(10.0, 1.0, 1)], expected_units=23.5)
    f = trainer.fit(_net(), x, y, cfg, torch.arange(48) // 2, torch.tensor([1.0, 0.6]), plan, pixels=True,
                    val=_data(16, seed=9), stream=SecretStream())
    _matches("dp_fit", f.net.state_dict())
    assert f.engine.steps == 12 and plan.noise_multiplier == 1.45703125 and f.best_epoch == 3
    assert [round(h["epsilon"], 6) for h in f.history] == [2.634599, 3.39322, 3.991417]


def test_audit_reference_models_give_the_weights_they_gave_before(fixed_key):
    from privmed.evaluation import attacks as A

    x, y = _data()
    recipe = A.Recipe(epochs=2, lr=0.05, batch_size=8, class_weights=[1.0, 0.5], dp=True, noise_multiplier=1.3,
                      max_grad_norm=0.7, sample_rate=0.2, steps=9)
    _matches("ref_dp", A.train_reference(_net, x, y, 2, recipe, seed=7, units=torch.arange(48) // 2).state_dict())
    recipe = A.Recipe(epochs=2, lr=0.05, batch_size=8, class_weights=None, dp=False, balance=True)
    _matches("ref_nodp", A.train_reference(_net, x[:40], y[:40], 2, recipe, seed=7, augment=True).state_dict())


def test_a_hospital_gives_the_updates_and_ledger_it_gave_before(fixed_key):
    """Two rounds of local DP-SGD with FedProx and physical batches: same global weights, same ledger."""
    from privmed.federated.config import FederatedConfig
    from privmed.federated.hospital import Hospital

    fc = FederatedConfig(train={"model": "cnn", "epochs": 1, "batch_size": 8, "lr": 0.01, "seed": 2,
                                "preprocess": {"size": 32}, "privacy": {"sample_rate": 0.25, "physical_batch": 5}},
                         hospitals=2, rounds=2, local_epochs=1, fedprox_mu=0.1)
    x = torch.rand(40, 1, 32, 32, generator=torch.Generator().manual_seed(11))
    h = Hospital(0, x, torch.arange(40) % 2, torch.arange(40) // 2, 2, fc, 1e-5)
    g = h.get_weights()
    for r in range(2):
        g = [a + b for a, b in zip(g, h.fit(g, round_no=r + 1))]
    _matches("hospital", {str(i): torch.from_numpy(a) for i, a in enumerate(g)})
    led = h.ledger()
    assert (led["steps"], led["sample_rate"], led["noise_multiplier"], led["epsilon"], led["n_units_dp"]) == \
        (8, 0.25, 1.9140625, 1.9961, 45.6)
    assert [(r["release"], r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in led["releases"]] == [
        ("class counts per unit (Gaussian mechanism, sensitivity 1)", 10.0, 1.0, 1),
        ("local DP-SGD (per-unit clipping, Gaussian noise, Poisson sampling of units)", 1.9140625, 0.25, 8)]
    assert all("on" not in r for r in led["releases"])  # the federated ledger names the hospital


def test_train_writes_the_ledger_it_wrote_before(fixed_key, data_root):
    """Real images, DP on: steps, sampling rate, sigma, epsilon and every release as before (and the
    DP class counts: the same fixed key); the weights of the DP and of the non-private run too."""
    def run(privacy):
        cfg = TrainConfig(dataset="covid19_xray", model="cnn", epochs=2, batch_size=32, data_root=data_root,
                          preprocess={"size": 32}, seed=1, privacy=privacy)
        return trainer.train(cfg, progress=False)

    dp = run({"accountant": "rdp"})
    _matches("train_dp", dp.model.trainable.state_dict())
    assert {k: dp.privacy[k] for k in LEDGER_BEFORE} == LEDGER_BEFORE
    assert [(r["release"], r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in dp.privacy["releases"]] \
        == RELEASES_BEFORE and all(r["on"] == "train" for r in dp.privacy["releases"])
    plain = run({"enabled": False})
    _matches("train_nodp", plain.model.trainable.state_dict())
    assert plain.privacy is None and plain.best_epoch == 1


class _CountingStream(SecretStream):
    """A secret stream that records the Gaussian draws asked of it."""

    def __init__(self):
        super().__init__()
        self.noise_calls = []

    def noise(self, shape, std):
        self.noise_calls.append((tuple(shape), std))
        return super().noise(shape, std)


def test_dp_noise_comes_from_the_secret_stream_and_never_from_torch():
    """The clip-and-noise optimizer draws one Gaussian per parameter tensor, std sigma * C, from its
    stream; torch's global generator is untouched (a seeded torch generator is no secret)."""
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    plan = DPPlan(2.0, 1e-5, 0.5, 0.25, 4, "rdp", expected_units=40)
    stream = _CountingStream()
    engine = DPSGD(net, torch.optim.SGD(net.parameters(), lr=0.1), torch.arange(40), plan, stream=stream)
    before = torch.get_rng_state()
    idx, local, units = engine.sample()
    engine.step(x[idx], y[idx], local, units, trainer.per_sample_loss)
    assert torch.equal(torch.get_rng_state(), before)
    std = plan.noise_multiplier * plan.max_grad_norm
    assert stream.noise_calls == [((3, 6), std), ((3,), std)]
    # the gradient is (clipped sum + that noise) / (q N^): with the stream's noise zeroed, no noise is left
    stream.noise = lambda shape, std: torch.zeros(shape)
    idx, local, units = engine.sample()
    expect = engine.clipped_sum(x[idx], y[idx], local, units, trainer.per_sample_loss)
    engine.step(x[idx], y[idx], local, units, trainer.per_sample_loss)
    for p, s in zip(engine.params, expect):
        assert torch.allclose(p.grad, s / (plan.sample_rate * 40))


def test_the_parts_are_separate_and_compose_to_the_engine(fixed_key):
    """A sampler and a clip-and-noise optimizer built apart, sharing one stream, driven by run_steps,
    train the same weights as the assembled DPSGD; the splitter keeps units whole."""
    x, y = _data()
    units = torch.arange(48) // 3
    plan = DPPlan(3.0, 1e-5, 1.0, 0.25, 6, "rdp", expected_units=16)
    out = []
    for assembled in (True, False):
        net, stream = _net(), SecretStream()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        if assembled:
            engine = DPSGD(net, opt, units, plan, stream=stream, physical_batch=4)
            sampler = engine.sampler
        else:
            sampler = UnitPoissonSampler(units, plan.sample_rate, stream)
            engine = DPOptimizer(net, opt, plan, sampler.n_units, stream=stream, physical_batch=4)
        trainer.run_steps(sampler, engine, x, y, 10)
        assert engine.steps == 6  # stops at the plan's steps
        out.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(out[0], out[1])
    local = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    assert physical_batches(local, 4) == [(slice(0, 4), slice(0, 2)), (slice(4, 7), slice(2, 4))]
    assert physical_batches(local, None) == [(slice(0, 7), slice(0, 4))]
