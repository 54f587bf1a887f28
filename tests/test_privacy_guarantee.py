"""Proofs-by-test of the guarantee a bundle states (issue: the guarantee must hold as stated).

Each test names the behaviour of the code it replaced, which it failed on:
* noise and Poisson sampling were seeded from ``cfg.seed`` (stored in the bundle): two DP trainings
  with the same settings gave byte-identical weights;
* ``nn.CrossEntropyLoss(weight=w)`` divided by the batch's weight sum: removing one example moved
  the sum of clipped per-sample gradients by up to 3.35 C;
* the OOD block shipped exact validation statistics (a membership oracle, AUC 1.00 on covid);
* the bundle held exact training losses, dataset fingerprints and the audit block;
* the bundle stated add/remove epsilon but published exact unit counts and a delta, q and steps
  computed from them (``n_units_train``, ``n_units_validation``, delta = 0.1/N rounded): with N
  public only replace-one neighbours fit, under which the same noise gave epsilon 4.25-4.43.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn

from conftest import default_bundle
from privmed.config import TrainConfig, bundles_dir
from privmed.evaluation.metrics import roc_auc
from privmed.models import MODELS, get_model
from privmed.privacy import DPSGD, DPPlan
from privmed.privacy.ledger import recompute, statement
from privmed.privacy.randomness import SecretStream
from privmed.training.trainer import per_sample_loss

C = 1.0


def _engine(net, units, weight=None, n_units=None, mode="hooks"):
    n_units = n_units or int(units.max()) + 1
    plan = DPPlan(2.0, 1e-6, C, 0.25, 4, expected_units=n_units)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return DPSGD(net, opt, units, plan, weight, grad_sample_mode=mode)


def _inputs(name: str, n: int):
    """Small inputs of the shape each DP-trainable model's trainable part takes."""
    model = get_model(name, 2)
    if name == "cnn":
        x = torch.rand(n, 1, 32, 32)
    elif name == "effnet_lite0_head":
        x = torch.rand(n, 1280)
    else:  # the tail (and scatter_cnn) take the frozen part's activation map
        with torch.no_grad():
            x = model.frozen(torch.rand(n, 1, 96, 96))
    return model.trainable, x


def _max_change(engine, x, y, units, batched=False):
    """max over units u of || S(D) - S(D without u) ||, S = the clipped, weighted sum
    (``batched``: as ``step`` computes it, in physical batches)."""
    clipped_sum = engine.batch_clipped_sum if batched else engine.clipped_sum
    all_units = torch.unique(units)
    full = clipped_sum(x, y, *_local(units, all_units), per_sample_loss)
    worst = 0.0
    for u in all_units.tolist():
        keep = units != u
        rest = all_units[all_units != u]
        part = clipped_sum(x[keep], y[keep], *_local(units[keep], rest), per_sample_loss)
        worst = max(worst, float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(full, part)))))
    return worst


def _local(units, chosen):
    pos = {u: i for i, u in enumerate(chosen.tolist())}
    return torch.tensor([pos[u] for u in units.tolist()], dtype=torch.long), chosen


@pytest.mark.parametrize("mode", ["hooks", "ew"])  # PrivacyConfig.grad_sample_mode: Opacus hooks or ExpandedWeights
@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.dp_ok])
def test_one_unit_moves_the_clipped_sum_by_at_most_C(name, mode):
    """Adversarial case: tiny gradients (below C, so clipping does nothing), a rare class, class
    weights (<= 1, after clipping), and patients with 1 to 5 images. Every removal moves the sum by <= C.
    The "ew" mode must also compute the same clipped sum as the default hooks."""
    torch.manual_seed(0)
    net, x = _inputs(name, 12)
    x = x * 1e-3
    y = torch.tensor([0] * 11 + [1])  # one example of the rare class
    units = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 4, 5, 6])
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    weight = torch.tensor([0.2, 1.0])[torch.tensor([0, 0, 0, 0, 0, 1, 0])]
    hooks = _engine(copy.deepcopy(net), units, weight) if mode == "ew" else None
    engine = _engine(net, units, weight, mode=mode)
    assert _max_change(engine, x, y, units) <= C * (1 + 1e-4)
    if hooks:
        everyone = _local(units, torch.unique(units))
        for a, b in zip(engine.clipped_sum(x, y, *everyone, per_sample_loss),
                        hooks.clipped_sum(x, y, *everyone, per_sample_loss)):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_physical_batches_give_the_same_clipped_sum_and_keep_the_bound():
    """privacy.physical_batch splits a sampled batch for GPU memory, whole units only: each unit is
    still clipped once, so the summed pieces equal the one-pass sum and removing a unit moves it <= C."""
    torch.manual_seed(0)
    net, x = _inputs("cnn", 12)
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    y = torch.tensor([0] * 11 + [1])
    units = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 4, 5, 6])  # patients with 1 to 5 images
    one = _engine(copy.deepcopy(net), units)
    split = _engine(net, units)
    split.physical_batch = 3
    everyone = _local(units, torch.unique(units))
    pieces = split.chunks(everyone[0])
    assert [(p.start, p.stop) for _, p in pieces] == [(0, 1), (1, 3), (3, 6), (6, 7)]  # the 5-image patient alone
    for a, b in zip(split.batch_clipped_sum(x, y, *everyone, per_sample_loss),
                    one.clipped_sum(x, y, *everyone, per_sample_loss)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert _max_change(split, x, y, units, batched=True) <= C * (1 + 1e-4)  # every removal in pieces of <= 3
    idx, local, chosen = split.sample()
    assert all(len(torch.unique(local[ex])) == p.stop - p.start for ex, p in split.chunks(local))
    with pytest.raises(ValueError, match="in order"):
        split.chunks(torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if not s.dp_ok])
def test_models_with_batchnorm_are_refused_under_dp(name):
    """resnet50 and vgg use BatchNorm (a batch statistic mixes every example's data): the trainer
    refuses them under DP before touching any data, and the engine refuses their modules too."""
    from privmed.training.trainer import train

    with pytest.raises(ValueError, match=f"model '{name}' uses BatchNorm and cannot train with DP; pass --no-dp"):
        train(TrainConfig(dataset="covid19_xray", model=name), progress=False)
    with pytest.raises(ValueError, match="not DP-compatible"):
        _engine(get_model(name, 2).trainable, torch.arange(4))


def test_the_old_batch_normalised_weighted_loss_broke_the_bound():
    """What the trainer used to do: CrossEntropyLoss(weight=w), mean over the batch's weights, then
    per-sample clipping (Opacus, loss_reduction='mean' rescales by the batch size). Removing the
    rare example changes every other example's gradient: far more than C. The check above would fail."""
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    x, y = torch.randn(8, 4) * 0.05, torch.tensor([0] * 7 + [1])
    w = torch.tensor([8 / 14, 8 / 2])

    def clipped_sum(xb, yb):
        grads = []
        for i in range(len(xb)):  # the per-sample gradient Opacus computes for a 'mean' loss
            net.zero_grad()
            loss = nn.CrossEntropyLoss(weight=w, reduction="none")(net(xb), yb)
            (loss[i] / w[yb].sum() * len(xb)).backward()
            g = torch.cat([p.grad.flatten() for p in net.parameters()])
            grads.append(g * min(1.0, C / float(g.norm())))
        return torch.stack(grads).sum(0)

    change = float((clipped_sum(x, y) - clipped_sum(x[:7], y[:7])).norm())
    assert change > 1.5 * C


def test_a_30_image_patient_moves_the_model_no_more_than_a_1_image_patient():
    torch.manual_seed(1)
    net = nn.Linear(16, 2)
    x = torch.randn(31, 16) * 5
    y = torch.randint(0, 2, (31,))
    units = torch.tensor([0] * 30 + [1])
    engine = _engine(net, units)
    full = engine.clipped_sum(x, y, *_local(units, torch.tensor([0, 1])), per_sample_loss)
    only1 = engine.clipped_sum(x[30:], y[30:], *_local(units[30:], torch.tensor([1])), per_sample_loss)
    big = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(full, only1))))
    only0 = engine.clipped_sum(x[:30], y[:30], *_local(units[:30], torch.tensor([0])), per_sample_loss)
    small = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(full, only0))))
    assert big <= C * (1 + 1e-4) and small <= C * (1 + 1e-4)


def test_patient_sampler_keeps_patients_whole_at_rate_q():
    units = torch.tensor(sum([[u] * (u % 5 + 1) for u in range(400)], []))
    engine = _engine(nn.Linear(3, 2), units)
    q = engine.plan.sample_rate
    drawn = []
    for _ in range(200):
        idx, local, chosen = engine.sample()
        assert torch.equal(torch.unique(units[idx]), torch.sort(chosen).values)
        for u in chosen.tolist():  # every image of a sampled patient, in one clip group
            assert int((units[idx] == u).sum()) == int((units == u).sum())
            assert len(torch.unique(local[units[idx] == u])) == 1
        drawn.append(len(chosen))
    assert abs(np.mean(drawn) / 400 - q) < 0.2 * q


def test_delta_stays_below_one_over_the_images_when_the_unit_is_the_patient():
    """The budget check compared delta with 1/(patients) only: delta = 1/3000 passed for 2,000
    patients holding 5,000 images, although the project's rule is delta < 1/N images."""
    from privmed.errors import PrivacyBudgetError
    from privmed.training.trainer import dp_plan

    cfg = TrainConfig(privacy={"delta": 1 / 3000, "accountant": "rdp"})
    plan = dp_plan(cfg, torch.zeros(2000, dtype=torch.long), torch.arange(2000), 2, SecretStream())[0]  # 2,000 images
    assert plan.noise_multiplier > 0
    with pytest.raises(PrivacyBudgetError, match="N=5000"):  # 5,000 images of the same 2,000 patients
        dp_plan(cfg, torch.zeros(5000, dtype=torch.long), torch.arange(5000) % 2000, 2, SecretStream())


def test_noise_and_sampling_are_secret(data_root, tmp_path):
    """Same settings, same seed: the old trainer gave byte-identical weights (noise replayable
    from the stored seed). Now two runs differ, and the ledger names the randomness source."""
    from privmed.training.trainer import train

    cfg = TrainConfig(dataset="covid19_xray", model="cnn", epochs=1, batch_size=32, data_root=data_root,
                      preprocess={"size": 32}, augment={"enabled": False})
    a, b = train(cfg, progress=False), train(cfg, progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(a.model.trainable.state_dict().values(),
                                                      b.model.trainable.state_dict().values()))
    assert "os.urandom" in a.privacy["randomness"] and "never stored" in a.privacy["randomness"]
    nodp = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"enabled": False})})
    c, d = train(nodp, progress=False), train(nodp, progress=False)  # no DP: seeded, reproducible
    assert all(torch.equal(p, q) for p, q in zip(c.model.trainable.state_dict().values(),
                                                  d.model.trainable.state_dict().values()))


def test_released_bundle_holds_no_exact_private_statistics(small_bundle):
    """The bundle used to hold history[].train_loss, dataset_fingerprint, n_train, exact class
    weights, exact validation metrics and the audit block. They now live in the private run log."""
    from privmed.bundle.format import read_run_log

    meta = json.loads((small_bundle / "metadata.json").read_text())
    assert_no_private_statistics(meta)
    run = read_run_log(small_bundle)
    assert run["dataset_fingerprint"]["train"] and run["history"]
    p = meta["privacy"]
    assert recompute(p) == pytest.approx(p["epsilon"], rel=0.01)  # an independent recomputation
    assert p["epsilon"] <= 2.0 and p["randomness"].startswith("secret") and "ChaCha20" in p["randomness"]
    assert p["neighbouring_relation"].startswith("add/remove") and "Not published" in p["assumptions"]


PRIVATE_KEYS = ("history", "dataset_fingerprint", "train_loss", "audit", "n_train", "validation",
                # exact functions of the private units: under add/remove neighbours they must not be published
                "n_units_train", "n_units_validation", "n_units", "leaked_test_images_removed",
                "images_of_patient_ids_in_train_removed")


def assert_no_exact_counts(privacy: dict) -> None:
    """The ledger's counts are DP estimates (non-integers in general), never exact unit counts."""
    assert "n_units_train" not in privacy and "n_units_validation" not in privacy
    assert privacy.get("n_units_train_dp") is not None


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def assert_no_private_statistics(meta: dict) -> None:
    """No key of the private run log anywhere in a bundle's metadata (keys, not values: a release
    is "on": "validation"), and no metrics recorded on the training folder."""
    found = set(_keys(meta)) & set(PRIVATE_KEYS)
    assert not found, found
    assert all(m.get("split") != "train" for m in (meta.get("metrics") or {}).values())


def _opacus_epsilon(releases: list[dict], delta: float, accountant: str) -> float:
    """Opacus's own accountant, stepped once per DP step (not privmed's epsilon_of)."""
    acc = create_accountant(accountant)
    for r in releases:
        for _ in range(r["steps"]):
            acc.step(noise_multiplier=r["noise_multiplier"], sample_rate=r["sample_rate"])
    return float(acc.get_epsilon(delta=delta)) if acc.history else 0.0


@pytest.mark.parametrize("name", sorted(p.parent.name for p in bundles_dir().glob("*/metadata.json")))
def test_committed_bundle_states_a_guarantee_opacus_reproduces(name):
    """Every committed bundle: no private statistics, secret randomness, and epsilon recomputed
    independently with Opacus's accountant from the ledger's releases, composed as the ledger says:
    sequentially within each side (train, validation), the larger side is the bundle's epsilon."""
    meta = json.loads((default_bundle(name) / "metadata.json").read_text())
    assert_no_private_statistics(meta)
    p = meta["privacy"]
    assert p["randomness"].startswith("secret: ChaCha20") and p["neighbouring_relation"].startswith("add/remove")
    assert "epsilon = max(epsilon_train, epsilon_validation)" in p["composition"]
    assert p["epsilon"] <= p["epsilon_target"] and 0 < p["delta"] < 1 / p["n_units_train_dp"]
    assert_no_exact_counts(p)
    side = {s: [r for r in p["releases"] if r["on"] == s] for s in ("train", "validation")}
    assert sum(map(len, side.values())) == len(p["releases"])
    eps_train = _opacus_epsilon(side["train"], p["delta"], p["accountant"])
    eps_val = _opacus_epsilon(side["validation"], p["delta"], p["accountant"])
    assert eps_train == pytest.approx(p["epsilon_train"], rel=0.01)
    assert eps_val == pytest.approx(p["epsilon_validation"], rel=0.01, abs=1e-9)
    assert max(eps_train, eps_val) == pytest.approx(p["epsilon"], rel=0.01)
    # the four top-level numbers are the DP-SGD release alone; epsilon_train also composes the
    # class-count release, so DP-SGD alone spends less
    four = {k: p[k] for k in ("noise_multiplier", "sample_rate", "steps")}
    (sgd,) = [r for r in side["train"] if r["release"].startswith("DP-SGD")]
    assert {k: sgd[k] for k in four} == four
    eps_sgd = _opacus_epsilon([four], p["delta"], p["accountant"])
    assert 0 < eps_sgd <= p["epsilon_train"] * 1.01
    assert (eps_sgd < eps_train) == (len(side["train"]) > 1)
    # the clinician statement names the detector only where the bundle has one
    assert ("out-of-distribution" in statement(meta)) == bool(meta.get("ood"))


def test_ood_detector_is_no_membership_oracle(monkeypatch):
    """Exact statistics of few, high-dimensional validation embeddings (the old detector) tell
    its validation images from fresh ones of the same distribution; the DP detector does not
    (issue 8 asks for attack AUC <= 0.55).

    The noise is secret, so each release differs. Over 400 releases on these data (2-core CPU,
    2026-12-03) the attack AUC ran 0.425-0.614: median 0.519, 95th percentile 0.565, 14 % of
    releases above 0.55 (0.5 % above 0.6); the exact fit 0.795. One release cannot hold 0.55, the
    median of 25 does: P(median of 25 > 0.55) is 8e-6 from those 14 % (1e-4 if they were 18 %,
    the upper end of their 95 % interval). The class-mean detector of 2026-12-05 (means only, no
    covariance): 25 releases 0.465-0.555, median 0.513; its exact fit 0.649. The noise multiplier is
    computed once (``validation_history`` is a pure function of epsilon, delta and the accountant; it
    takes about 1 s a call)."""
    import functools

    import privmed.privacy.validation
    from privmed.privacy.validation import validation_releases

    monkeypatch.setattr(privmed.privacy.validation, "validation_history",
                        functools.cache(privmed.privacy.validation.validation_history))

    rng = np.random.default_rng(0)
    d, n = 1280, 150
    base = rng.standard_normal(d)

    def draw(m):
        return np.abs(base + 0.8 * rng.standard_normal((m, d)))

    val, fresh = draw(n), draw(n)
    y = rng.integers(0, 2, n)
    logits = rng.standard_normal((n, 2))
    units = np.arange(n)
    privacy = {"epsilon_target": 2.0, "delta": 1e-6, "accountant": "prv"}

    def attack_auc(block):
        from privmed.inference.ood import ood_scores

        s = np.r_[ood_scores(val, block), ood_scores(fresh, block)]
        return roc_auc(np.r_[np.ones(n, bool), np.zeros(n, bool)], -s)  # members look closer

    _, _, exact, _, _ = validation_releases(logits, val, y, units, 2, None)
    aucs = []
    for _ in range(25):
        _, _, private, releases, _ = validation_releases(logits, val, y, units, 2, privacy)
        assert len(releases) == 2 and all(r["on"] == "validation" for r in releases)
        aucs.append(attack_auc(private))
    assert np.median(aucs) <= 0.55
    # non-DP exact fit, kept for non-private twins: its leak is what DP removes
    assert attack_auc(exact) >= 0.6 and attack_auc(exact) > max(aucs)


def test_dp_calibration_recovers_temperature_and_operating_point():
    """Temperature and the two-class threshold read off the DP margin histogram (500 units,
    epsilon 2) land near their exact values on data with a known answer."""
    from privmed.pipeline import validation_releases
    from privmed.privacy import calibration as cal

    rng = np.random.default_rng(3)
    n = 500
    y = (rng.random(n) < 0.7).astype(int)
    m = rng.normal(np.where(y == 1, 4.0, -2.0), 2.5) * 2.0  # overconfident margins: true T about 2
    logits = np.stack([np.zeros(n), m], 1)
    privacy = {"epsilon_target": 2.0, "delta": 1e-6, "accountant": "prv"}
    emb = np.abs(rng.standard_normal((n, 64)))
    exact_cal, exact_dec, *_ = validation_releases(logits, emb, y, np.arange(n), 2, None)
    assert 1.3 < exact_cal["temperature"] < 3.0
    t_exact = exact_dec["threshold_margin"]
    bal = lambda t: ((m[y == 1] >= t).mean() + (m[y == 0] < t).mean()) / 2  # noqa: E731
    # the noise is secret, each release differs; over 300 releases: log(T_dp / T_exact) from -0.63
    # to 0.47 (median 0.08), balanced accuracy lost 0.003 at the median, 0.027 at the 95th
    # percentile, 0.071 at worst. The median of 15 releases is held to a tight bound, each to a loose one
    # (rerun 2026-12-05 with the ChaCha20 stream, 300 releases: median 0.003, 95th percentile 0.027, 9 % at
    # or above 0.0209, so a median of 7 failed about 1 run in 600, which CI met once; of 15, about 1 in 50,000).
    log_t, lost = [], []
    for _ in range(15):
        dp_cal, dp_dec, *_ = validation_releases(logits, emb, y, np.arange(n), 2, privacy)
        log_t.append(np.log(dp_cal["temperature"] / exact_cal["temperature"]))
        lost.append(bal(t_exact) - bal(dp_dec["threshold_margin"]))
    assert abs(np.median(log_t)) < 0.3 and max(np.abs(log_t)) < 1.0
    assert np.median(lost) < 0.02 and max(lost) < 0.12
    assert cal.threshold_from_histogram(cal.margin_rows(logits, y, 2).sum(0))[0] == t_exact


def test_the_dp_operating_point_is_the_centre_of_the_plateau_and_steadier_than_the_argmax():
    """A flat balanced-accuracy curve makes the noisy histogram's argmax a random draw from the plateau
    (chest: margin sd 1.2 over redraws); the centre of the thresholds within noise of the best moves
    less and loses no balanced accuracy."""
    from privmed.privacy import calibration as cal

    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.6).astype(int)
    m = rng.normal(np.where(y == 1, 3.0, -3.0), 1.5)
    exact = cal.margin_rows(np.stack([np.zeros(n), m], 1), y, 2).sum(0)
    bal = lambda t: ((m[y == 1] >= t).mean() + (m[y == 0] < t).mean()) / 2  # noqa: E731
    std = 3.5  # the chest bundle's histogram noise (noise multiplier 2.84 at weight 0.8)
    draws = [exact + rng.normal(0, std, exact.shape) for _ in range(200)]
    argmax = np.array([cal.threshold_from_histogram(h)[0] for h in draws])
    centre = np.array([cal.threshold_from_histogram(h, std)[0] for h in draws])
    assert centre.std() < 0.7 * argmax.std()
    assert np.mean([bal(t) for t in centre]) >= np.mean([bal(t) for t in argmax]) - 0.002
    assert min(bal(t) for t in centre) > min(bal(t) for t in argmax)


def test_statement_names_the_unit_and_the_per_image_caveat():
    base = {"epsilon": 2.0, "delta": 1e-5}
    per_image = statement({"privacy": {**base, "unit_of_privacy": "image"}})
    per_patient = statement({"privacy": {**base, "unit_of_privacy": "patient"}})
    assert "each image" in per_image and "k times more weakly" in per_image
    assert "each patient" in per_patient and "weakly" not in per_patient
    assert "without differential privacy" in statement({"privacy": {}})


def test_statement_names_only_what_the_bundle_has():
    """It used to name calibration, threshold and OOD detector for every bundle, also for covid19_xray
    whose 35 validation units gave none of them."""
    privacy = {"privacy": {"epsilon": 2.0, "delta": 1e-5, "unit_of_privacy": "patient"}}
    bare = statement({**privacy, "calibration": {"method": "none", "temperature": 1.0}, "decision": None, "ood": None})
    assert "the released model changes little" in bare
    assert not any(w in bare for w in ("calibration", "threshold", "out-of-distribution"))
    full = statement({**privacy, "calibration": {"method": "temperature scaling", "temperature": 1.5},
                      "decision": {"threshold_probability": 0.5}, "ood": {"threshold": 3.0}})
    assert "model and its calibration, decision threshold and out-of-distribution detector change little" in full
    no_threshold = statement({**privacy, "calibration": {"method": "temperature scaling"}, "ood": {"threshold": 3.0}})
    assert "its calibration and out-of-distribution detector change little" in no_threshold


def test_copies_of_one_image_are_one_unit_and_move_the_clipped_sum_by_at_most_C(tmp_path):
    """Brain MRI's training split holds the same image up to 16-22 times (exact and near copies). With
    one unit per file, removing one image (every copy of it) moved the clipped sum by k C (group
    privacy: about k times epsilon). Copies now share one unit and one side of the validation split."""
    import shutil

    from PIL import Image

    from privmed.config import default_data_root
    from privmed.data.datasets import open_dataset, train_val_split
    from privmed.data.inspect import with_copy_groups
    from privmed.training.data import unit_ids

    src = sorted((default_data_root() / "covid19_xray" / "train" / "normal").iterdir())[:4]
    root = tmp_path / "ds" / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    shutil.copy(src[0], root / "a" / f"x0{src[0].suffix}")
    shutil.copy(src[0], root / "a" / f"x0-copy{src[0].suffix}")  # byte copy
    Image.open(src[0]).convert("L").resize((500, 500)).save(root / "a" / "x0-small.png")  # near copy
    for i in (1, 2, 3):
        shutil.copy(src[i], root / "b" / f"x{i}{src[i].suffix}")
    ds = open_dataset(tmp_path / "ds")
    recs = with_copy_groups(ds, ds.records("train"))
    keys = {r.path.stem: r.copies for r in recs}
    assert keys["x0"] and keys["x0"] == keys["x0-copy"] == keys["x0-small"]
    assert len({keys["x0"], keys["x1"], keys["x2"], keys["x3"]}) == 4  # a lone image: its own content key
    units, name = unit_ids(recs, "image")
    assert name == "image" and len(torch.unique(units)) == 4
    for seed in range(20):  # copies never straddle the validation split
        train, val = train_val_split(recs, 0.5, seed)
        assert not {r.copies for r in train} & {r.copies for r in val}
        assert sum(r.path.stem.startswith("x0") for r in train) in (0, 3)
    # the sensitivity: three identical copies (same features) are one unit, so removing the image moves
    # the clipped sum by at most C; one unit per file moved it by 3 C
    torch.manual_seed(0)
    net = nn.Linear(8, 2)
    net2 = copy.deepcopy(net)  # a second engine needs its own module (Opacus hooks it)
    x = torch.cat([torch.full((3, 8), 5.0), torch.randn(3, 8) * 5])
    with torch.no_grad():  # the copies' label: the class the model gives least, so each gradient exceeds C
        wrong = int(net(x[:1]).argmin())
    y = torch.tensor([wrong, wrong, wrong, 1, 1, 0])
    order = [r.path.stem for r in recs]
    grouped = units[[order.index(s) for s in ("x0", "x0-copy", "x0-small", "x1", "x2", "x3")]]
    assert _max_change(_engine(net, grouped), x, y, grouped) <= C + 1e-5
    per_file = torch.arange(6)
    engine = _engine(net2, per_file)
    full = engine.clipped_sum(x, y, *_local(per_file, per_file), per_sample_loss)
    keep = torch.arange(3, 6)
    part = engine.clipped_sum(x[keep], y[keep], *_local(torch.arange(3), torch.arange(3)), per_sample_loss)
    moved = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(full, part))))
    assert moved > 2.9 * C


# fields that are DP outputs (or functions of them) and may differ between neighbouring datasets
DP_FIELDS = ("privacy.dp_class_counts", "privacy.class_weights.weights", "privacy.class_weights.dp_counts",
             "privacy.n_units_train_dp", "privacy.n_units_validation_dp", "calibration", "decision", "ood",
             "weights_sha256", "created_at")


def _flat(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{path}[{i}]")
    else:
        yield path, obj


def _neighbour_folders(data_root, tmp_path, n_per_class=30):
    """Two image-folder datasets (links to real COVID-19 X-ray films) that differ by one training film."""
    picked = []
    for cls in ("covid", "normal"):
        files = sorted((data_root / "covid19_xray" / "train" / cls).iterdir())[:n_per_class]
        picked += [(cls, f) for f in files]
    roots = []
    for name, drop in (("d", None), ("d_minus_one", picked[3])):
        for cls, f in picked:
            if (cls, f) != drop:
                link = tmp_path / name / "train" / cls / f.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f)
        roots.append(tmp_path / name)
    return roots


def test_neighbouring_datasets_give_bundles_that_differ_only_in_dp_outputs(data_root, tmp_path):
    """Add/remove one unit: every field of the bundle that is not a DP output is identical, so no
    exact function of the private count is published. Failed before on privacy.n_units_train
    (59 vs 60) and n_units_validation, and could on delta (0.1/N rounded) and q (1/ceil(N/B))."""
    from privmed.pipeline import train_bundle

    metas = []
    for root in _neighbour_folders(data_root, tmp_path):
        cfg = TrainConfig(dataset=str(root), model="cnn", epochs=1, preprocess={"size": 32},
                          augment={"enabled": False})
        out = train_bundle(cfg, tmp_path / "bundles" / root.name, progress=False)
        metas.append(json.loads((out / "metadata.json").read_text()))
    named = ("training", "dataset", "task", "model_id")  # they name the two folders, compared below
    a, b = (dict(_flat({k: v for k, v in m.items() if k not in named})) for m in metas)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert differ, "the two bundles should at least differ in their DP outputs"
    assert all(k.startswith(DP_FIELDS) for k in differ), [k for k in differ if not k.startswith(DP_FIELDS)]
    assert {k: v for k, v in metas[0]["training"].items() if k not in ("dataset", "data_root")} == \
        {k: v for k, v in metas[1]["training"].items() if k not in ("dataset", "data_root")}


def test_training_spends_the_datasets_one_budget_and_refuses_past_its_limit(data_root, tmp_path):
    """Each run records its planned releases in the dataset's registry before training; the bundle
    states the dataset's total; a run that would pass the data owner's limit is refused before any
    DP output exists. Failed before: nothing added runs up (no registry)."""
    from privmed.errors import PrivacyBudgetError
    from privmed.pipeline import train_bundle
    from privmed.privacy.budget import Registry, key_of
    from privmed.training.data import split_records
    from support.round_trip import assert_round_trip

    root, _ = _neighbour_folders(data_root, tmp_path, n_per_class=15)
    cfg = TrainConfig(dataset=str(root), model="cnn", epochs=1, preprocess={"size": 32}, augment={"enabled": False})
    key = key_of(split_records(cfg))
    Registry().set_limit(key, 2.5, 1e-5)  # one run fits (about 2), two compose to more
    meta = json.loads((train_bundle(cfg, tmp_path / "one", progress=False) / "metadata.json").read_text())
    total = meta["privacy"]["dataset_budget"]
    assert total["runs"] == 1 and meta["privacy"]["epsilon"] <= total["epsilon_all_runs"] <= 2.0 + 1e-3
    assert total["limit"]["epsilon"] == 2.5 and key not in json.dumps(meta)  # the key would identify the data
    assert_round_trip(tmp_path / "one")  # the typed schema reads the limit block back key for key
    with pytest.raises(PrivacyBudgetError, match="limit"):
        train_bundle(cfg, tmp_path / "two", progress=False)
    assert not (tmp_path / "two").exists() and Registry().summary(key)["runs"] == 1


def test_ood_class_means_move_by_at_most_their_bound_and_are_in_the_ledger(small_bundle):
    """The OOD detector's class means are a Gaussian release on the training units: removing any one
    unit (here patients of 1 to 30 images) moves the per-unit sum by at most sqrt(2), the sensitivity
    the noise is scaled to; the bundle's ledger lists the release at the planned noise multiplier,
    and its epsilon (recomputed independently) covers it."""
    from privmed.config import PrivacyConfig
    from privmed.privacy import ood
    from privmed.privacy.validation import per_unit_mean as _per_unit_mean

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 31, 40)
    units = np.repeat(np.arange(40), sizes)
    emb = rng.standard_normal((len(units), 3264)) * rng.uniform(0.1, 50, (len(units), 1))  # any scale
    rows = _per_unit_mean(ood.mean_rows(emb, rng.integers(0, 2, len(units)), 2), units)
    total = rows.sum(0)
    moves = [np.linalg.norm(total - np.delete(rows, u, 0).sum(0)) for u in range(40)]
    assert max(moves) <= ood.MEAN_SENSITIVITY * (1 + 1e-9) and max(moves) > 0.99 * ood.MEAN_SENSITIVITY
    meta = json.loads((small_bundle / "metadata.json").read_text())
    (rel,) = [r for r in meta["privacy"]["releases"] if r["release"].startswith("OOD detector class means")]
    assert rel["on"] == "train" and rel["noise_multiplier"] == PrivacyConfig().ood_noise
    p = meta["privacy"]
    train = [r for r in p["releases"] if r["on"] == "train"]
    assert _opacus_epsilon(train, p["delta"], p["accountant"]) == pytest.approx(p["epsilon_train"], rel=0.01)
    assert meta["ood"] is None or meta["ood"]["method"] == ood.MEAN_METHOD


def test_a_simulated_camera_photo_depends_on_its_own_image_alone(data_root):
    """The camera threshold's histogram takes one simulated phone photo per validation image: its
    randomness comes from the image's own bytes, so removing another unit leaves it unchanged (a shared
    generator would shift every later photo, and one unit would move the others' rows)."""
    from conftest import require_dataset
    from privmed.data.datasets import open_dataset
    from privmed.pipeline import camera_photos

    require_dataset(data_root, "chest_xray_pneumonia")
    r1, r2 = open_dataset("chest_xray_pneumonia", data_root).records("test")[:2]
    both, alone = list(camera_photos([r1, r2])), list(camera_photos([r2]))
    assert np.array_equal(both[1], alone[0]) and not np.array_equal(both[0], both[1])
