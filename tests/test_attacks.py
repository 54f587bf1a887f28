"""Membership attacks on known cases: a memorising model is caught, chance stays chance."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from privmed.evaluation import attacks as A
from privmed.evaluation import dp_bounds as B


def test_roc_curve_matches_brute_force_and_integrates_to_auc():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    fpr, tpr, thr = A.roc_curve(y, s)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):  # each point: "member if score >= threshold"
        assert t == pytest.approx((s[y] >= th).mean()) and f == pytest.approx((s[~y] >= th).mean())
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and len(thr) == len(np.unique(s)) + 1
    pairs = (s[y][:, None] > s[~y][None, :]).mean() + 0.5 * (s[y][:, None] == s[~y][None, :]).mean()
    assert A.roc_auc(y, s) == pytest.approx(pairs)  # Mann-Whitney, ties count one half
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs)


def test_tpr_at_fpr_never_interpolates_above_a_real_point():
    fpr = np.array([0, 0.0, 0.02, 0.5, 1])
    tpr = np.array([0, 0.1, 0.6, 0.9, 1])
    assert A.tpr_at_fpr(fpr, tpr, 0.01) == 0.1
    assert A.tpr_at_fpr(fpr, tpr, 0.02) == 0.6
    d = A.downsample_roc(fpr, tpr)
    assert all((f, t) in set(zip(fpr, tpr)) for f, t in zip(d["fpr"], d["tpr"]))
    assert np.all(np.diff(d["tpr"]) >= 0)


def test_random_scores_give_chance_auc():
    # under H0 the AUC has sd sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.0091 for 2000 + 2000: allow 4 sd
    n = 2000
    rng = np.random.default_rng(3)
    s = A.attack_summary(rng.normal(size=n), rng.normal(size=n))
    sd = math.sqrt((2 * n + 1) / (12 * n * n))
    assert abs(s["auc"] - 0.5) < 4 * sd
    assert s["auc_ci95"][0] < 0.5 < s["auc_ci95"][1] or abs(s["auc"] - 0.5) < 3 * sd
    assert s["tpr_at_fpr"]["0.01"] < 0.03  # chance TPR at 1% FPR is about 1%
    assert B.eps_lower_bound(rng.normal(size=n), rng.normal(size=n)).eps_lb < 0.2


def test_logit_confidence_is_stable_log_odds():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [100.0, -100.0, 0.0]])
    y = np.array([0, 2, 0])
    phi = A.logit_confidence(logits, y)
    p = torch.softmax(logits.double(), 1).numpy()
    py = p[np.arange(2), y[:2]]
    np.testing.assert_allclose(phi[:2], np.log(py / (1 - py)), rtol=1e-9)
    assert phi[2] == pytest.approx(100.0, rel=1e-6)  # log(p / (1 - p)) would be inf here
    np.testing.assert_allclose(-A.loss_scores(logits, y), -np.log(p[np.arange(3), y]), rtol=1e-6, atol=1e-12)


def _tiny_features(n, d, rng):
    """Small feature arrays (like cached backbone features) with weak class signal."""
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + 0.3 * y[:, None] * (np.arange(d) < 4)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _head(d):
    return lambda: nn.Sequential(nn.Linear(d, 2))


@pytest.fixture(scope="module")
def overfit_setup():
    rng = np.random.default_rng(0)
    d = 256  # more dimensions than examples: a linear head can memorise every member
    x_in, y_in = _tiny_features(48, d, rng)     # members
    x_out, y_out = _tiny_features(48, d, rng)   # non-members, same distribution
    x_ref, y_ref = _tiny_features(48, d, rng)   # disjoint data for reference models
    recipe = A.Recipe(epochs=100, lr=0.05, batch_size=16, class_weights=None, dp=False)
    target = A.train_reference(_head(d), x_in, y_in, 2, recipe, seed=1)
    x_t, y_t = torch.cat([x_in, x_out]), torch.cat([y_in, y_out]).numpy()
    refs = [A.logits_of(A.train_reference(_head(d), x_ref, y_ref, 2, recipe, seed=10 + k), x_t) for k in range(4)]
    return d, (x_in, y_in, x_out, y_out), recipe, A.logits_of(target, x_t), y_t, refs


def test_overfit_non_private_model_is_detected(overfit_setup):
    _, _, _, logits, y, refs = overfit_setup
    member = np.r_[np.ones(48, bool), np.zeros(48, bool)]
    loss = A.loss_scores(logits, y)
    assert A.roc_auc(member, loss) > 0.8
    phi = A.logit_confidence(logits, y)
    ref_phi = np.stack([A.logit_confidence(r, y) for r in refs])
    lira = A.lira_offline_scores(phi, ref_phi)
    assert A.roc_auc(member, lira) > 0.8
    assert B.eps_lower_bound(loss[member], loss[~member], seed=0).eps_lb > 0


def test_strong_dp_noise_removes_the_leak(overfit_setup):
    # same data and recipe, but DP-SGD with a large noise multiplier: eps is small, so AUC <= ceiling
    d, (x_in, y_in, x_out, y_out), recipe, _, y, _ = overfit_setup
    from privmed.privacy.accounting import epsilon_for

    dp = A.Recipe(epochs=20, lr=0.02, batch_size=16, class_weights=None, dp=True, noise_multiplier=8.0,
                  max_grad_norm=1.0, sample_rate=16 / 48)
    eps = epsilon_for(8.0, 16 / 48, 20 * 3, 1e-3, "rdp")
    aucs = []
    for seed in range(3):
        target = A.train_reference(_head(d), x_in, y_in, 2, dp, seed=seed)
        logits = A.logits_of(target, torch.cat([x_in, x_out]))
        member = np.r_[np.ones(48, bool), np.zeros(48, bool)]
        aucs.append(A.roc_auc(member, A.loss_scores(logits, y)))
    # eps ~0.95 allows some leak (a run measured mean AUC 0.639): the bound DP promises is the ceiling
    assert np.mean(aucs) < B.ceiling_auc(eps, 1e-3)


def test_lira_uses_reference_spread():
    ref = np.array([[0.0, 10.0], [1.0, 11.0], [-1.0, 9.0]])
    s = A.lira_offline_scores(np.array([1.0, 10.0]), ref)
    assert s[0] > s[1]  # 1 sd above its OUT mean vs exactly at it
    s2 = A.lira_offline_scores(np.array([1.0, 10.0]), ref, fixed_variance=False)
    assert s2[0] == pytest.approx(1.0)


def test_recipe_from_bundle_metadata():
    meta = {"training": {"lr": 0.001, "batch_size": 64, "epochs": 30, "class_weights": True,
                         "privacy": {"enabled": True, "max_grad_norm": 1.0}, "augment": {"enabled": False}},
            "best_epoch": 7,
            "privacy": {"epsilon": 2.0, "noise_multiplier": 1.3, "max_grad_norm": 0.5, "sample_rate": 0.05,
                        "epochs": 7, "class_weights": {"weights": [0.5, 1.0]}}}
    r = A.Recipe.from_metadata(meta)
    assert (r.epochs, r.dp, r.noise_multiplier, r.max_grad_norm, r.sample_rate) == (7, True, 1.3, 0.5, 0.05)
    assert r.class_weights == [0.5, 1.0]  # the public (DP) weights from the ledger, not recomputed counts
    meta["training"]["privacy"]["enabled"] = False
    meta["privacy"] = {"mechanism": "none (non-private)", "epsilon": None}
    assert not A.Recipe.from_metadata(meta).dp


def test_reference_model_is_trained_by_the_trainers_loop(data_root):
    """Non-DP, same seed, same real data: a reference model and `privmed train` end with identical
    weights (one loop: batch rule, class weights, augmentation, shuffling, released epoch)."""
    from privmed.config import TrainConfig
    from privmed.models import get_model
    from privmed.training import trainer
    from privmed.training.data import load_pixels, model_inputs, unit_ids

    cfg = TrainConfig(dataset="covid19_xray", model="cnn", epochs=3, batch_size=32, data_root=data_root,
                      preprocess={"size": 32}, seed=1, privacy={"enabled": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float summation order in both runs
    try:
        res = trainer.train(cfg, progress=False)
        meta = {"training": cfg.model_dump(mode="json"), "best_epoch": res.best_epoch,
                "privacy": {"mechanism": "none (non-private)", "epsilon": None}}
        recipe = A.Recipe.from_metadata(meta)
        x = model_inputs(res.model, load_pixels(res.splits.train, cfg, False), False)
        y = torch.tensor([r.label for r in res.splits.train])
        units, _ = unit_ids(res.splits.train, cfg.privacy.unit)
        k = len(res.splits.classes)
        ref = A.train_reference(lambda: get_model(cfg.model, k).trainable, x, y, k, recipe, cfg.seed,
                                augment=True, units=units)
    finally:
        torch.set_num_threads(threads)
    assert not recipe.dp and recipe.balance and recipe.augment and recipe.epochs == res.best_epoch
    released = res.model.trainable.state_dict()
    assert released.keys() == ref.state_dict().keys()
    for name, w in ref.state_dict().items():
        assert torch.equal(w, released[name]), name
    torch.manual_seed(cfg.seed)
    init = get_model(cfg.model, k).trainable.state_dict()
    assert any(not torch.equal(init[n], released[n]) for n in released)  # it did train
