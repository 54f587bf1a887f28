"""Membership-inference audit of a bundle: does the model leak more than its epsilon allows?

Members are the bundle's training images, rebuilt from its recorded training config (the split
is deterministic by seed; the dataset fingerprint must match or the audit refuses). Non-members
are validation images only (split from the training folder by patient: the members' own
distribution); members are drawn to the same count per class. Test images are never non-members:
an official test split can be shifted from train (chest X-ray: validation accuracy ~0.94 vs test
~0.75), and a loss attack against them measures that shift, not membership. Too few validation
images means fewer targets, said in ``notes``, never a mix.

Two attacks: loss threshold, and offline LiRA with K reference models trained with the bundle's
own recipe (DP noise multiplier, clipping norm, sample rate, epochs) on training images that are
not audited targets (so every reference model is OUT for every target). For head models the
reference models are linear heads on cached frozen features: seconds each.

The result goes into the bundle's ``audit`` metadata block: AUCs, TPR at 0.1 % and 1 % FPR, ROC
points, a heuristic empirical epsilon, the theoretical ceiling from (epsilon, delta) and a loud
``exceeds_ceiling`` flag.

What may fail the audit. The attacks above score targets of one released model whose membership
was not decided by independent coin flips before training (and whose release epoch was chosen on
the validation images), so neither their epsilon nor their AUC interval is a valid test of
(epsilon, delta): they only warn (``warnings``). Only statistically valid checks may fail the
audit, and ALPHA is split over them (Bonferroni), so "PRIVACY AUDIT FAILED" is wrong with
probability at most ALPHA jointly over all of them. Today there is one: the one-run canary audit
of the recipe (Steinke, Nasr & Jagielski 2023; ``canaries`` > 0, head models, central DP bundles).
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privmed.bundle.format import load_bundle, read_run_log, write_run_log
from privmed.config import TrainConfig
from privmed.errors import BundleError
from privmed.evaluation import attacks as A
from privmed.evaluation import dp_bounds as B
from privmed.files import sha256_file
from privmed.models import get_model
from privmed.models.registry import spec_of, with_public_basis
from privmed.training.data import load_pixels, model_inputs, split_records, test_records

log = logging.getLogger("privmed.audit")
FPRS = (0.001, 0.01)
ALPHA = 0.05  # the audit's total error rate: a truly (eps, delta)-DP recipe fails with probability <= 5 %
HEURISTIC = ("heuristic empirical epsilon (not a certified bound: members were not chosen by independent "
             "coin flips before training)")
GOAL = {"max_auc": 0.55, "max_tpr_at_1pct_fpr": 0.02, "applies_to_epsilon_at_most": 2.0}


def recipe_block(meta: dict) -> dict:
    p, t = A.dp_numbers(meta.get("privacy") or {}), meta["training"]
    return {"dp": p.get("epsilon") is not None, "epsilon": p.get("epsilon"), "delta": p.get("delta"),
            "noise_multiplier": p.get("noise_multiplier"), "max_grad_norm": p.get("max_grad_norm"),
            "sample_rate": p.get("sample_rate"), "steps": p.get("steps"), "epochs_run": p.get("epochs"),
            "best_epoch": meta.get("best_epoch"), "accountant": p.get("accountant"),
            "unit_of_privacy": p.get("unit_of_privacy", (t.get("privacy") or {}).get("unit")),
            "batch_size": t.get("batch_size"), "lr": t.get("lr"), "model": t.get("model")}


def _config(meta: dict, data_root: Path | None) -> TrainConfig:
    cfg = TrainConfig(**meta["training"])
    if cfg.device != "cpu" and not torch.cuda.is_available():  # trained on a GPU, audited here: same recipe
        cfg = cfg.model_copy(update={"device": "cpu"})
    if data_root:
        cfg = cfg.model_copy(update={"data_root": Path(data_root)})
    return cfg


def audit_data(meta: dict, model, cfg: TrainConfig, progress: bool = False):
    """(x_train, y_train, train_records, x_non, y_non, non_sources, non_records) for a bundle."""
    splits = split_records(cfg)
    want = (meta.get("_run_log", {}).get("dataset_fingerprint") or {}).get("train")
    if want and splits.fingerprint["train"] != want:
        raise BundleError("the dataset on disk differs from the one this bundle was trained on (train fingerprint "
                          "mismatch): its members cannot be reconstructed, so it cannot be audited")
    x_tr = model_inputs(model, load_pixels(splits.train, cfg, progress), progress)
    y_tr = torch.tensor([r.label for r in splits.train])
    test, _ = test_records(cfg)
    x_te = model_inputs(model, load_pixels(test, cfg, progress), progress)
    x_va = model_inputs(model, load_pixels(splits.val, cfg, progress), progress)
    x_non = torch.cat([x_te, x_va])
    y_non = torch.tensor([r.label for r in test] + [r.label for r in splits.val])
    src = np.array(["test"] * len(test) + ["validation"] * len(splits.val))
    return x_tr, y_tr, splits.train, x_non, y_non, src, list(test) + list(splits.val)


def _hash(r) -> str:
    return sha256_file(r.path) if r.index is None else f"{r.path}#{r.split}#{r.index}"


def choose_targets(y_members: np.ndarray, y_non: np.ndarray, src: np.ndarray, n_per_side: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-members: validation images only (a patient-grouped random part of the same training
    folder: the same distribution); never test images, whose split may be shifted: too few
    validation images give fewer targets instead. Members: drawn class by class to the same
    counts, so that a class mix cannot pass for membership either."""
    order = rng.permutation(np.nonzero(src == "validation")[0])
    n = min(n_per_side, len(y_members), len(y_non))
    non, need = [], {}
    for i in order:  # take non-members in preference order while members of that class remain
        c = int(y_non[i])
        if len(non) >= n:
            break
        if need.get(c, 0) < int((y_members == c).sum()):
            non.append(i)
            need[c] = need.get(c, 0) + 1
    if len(non) < 10:
        raise BundleError(f"too few images to audit ({len(non)} per side); need at least 10")
    mem = np.concatenate([rng.choice(np.nonzero(y_members == c)[0], k, replace=False) for c, k in sorted(need.items())])
    return np.sort(mem), np.sort(np.array(non))


def patient_targets(mem, non, train_recs, non_recs, src):
    """Expand image targets to whole patients: (member image indices, non-member image indices,
    one group key per target image, members first)."""
    mem_groups = {train_recs[i].group for i in mem}
    non_groups = {non_recs[j].group for j in non}
    mem = np.array([i for i, r in enumerate(train_recs) if r.group in mem_groups])
    non = np.array([j for j, r in enumerate(non_recs) if r.group in non_groups and src[j] == "validation"])
    groups = [("in", train_recs[i].group) for i in mem] + [("out", non_recs[j].group) for j in non]
    return mem, non, groups


def _units(records) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(r.group, len(index)) for r in records], dtype=torch.long)


def _by_group(scores: np.ndarray, is_member: np.ndarray, groups: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean score per group (a patient), and whether the group is a member."""
    keys = list(dict.fromkeys(groups))
    pos = {k: i for i, k in enumerate(keys)}
    idx = np.array([pos[g] for g in groups])
    total = np.bincount(idx, weights=scores, minlength=len(keys))
    mean = total / np.bincount(idx, minlength=len(keys))
    member = np.zeros(len(keys), bool)
    member[idx[is_member]] = True
    return mean, member


def run_attacks(target_logits, y, is_member, ref_logits: list, delta: float | None, seed: int = 0,
                groups: list | None = None) -> dict:
    """Attack summaries + a heuristic empirical epsilon per attack (Clopper-Pearson, Bonferroni over
    attacks; heuristic because the targets are not independent trials). With ``groups`` (one key per
    image), scores are averaged per group and a group is the unit attacked."""
    y = np.asarray(y)
    is_member = np.asarray(is_member, bool)
    scores = {"loss": A.loss_scores(target_logits, y)}
    if ref_logits:
        phi = A.logit_confidence(target_logits, y)
        ref_phi = np.stack([A.logit_confidence(r, y) for r in ref_logits])
        scores["lira_offline"] = A.lira_offline_scores(phi, ref_phi)
    if groups is not None:
        grouped = {k: _by_group(v, is_member, groups) for k, v in scores.items()}
        scores = {k: v[0] for k, v in grouped.items()}
        is_member = next(iter(grouped.values()))[1]
    out = {}
    conf = 1 - 0.05 / len(scores)
    for name, s in scores.items():
        summ = A.attack_summary(s[is_member], s[~is_member], FPRS)
        lb = B.eps_lower_bound(s[is_member], s[~is_member], delta=delta or 0.0, confidence=conf, seed=seed)
        summ["eps_lower_bound"] = {**lb.to_dict(), "heuristic": True}
        out[name] = summ
    return out


def canary_audit(build, x_tr, y_tr, x_pool, y_pool, num_classes: int, recipe: A.Recipe, m: int = 500,
                 guess_fraction: float = 0.2, seed: int = 0, eps: float | None = None, delta: float = 0.0,
                 alpha: float = ALPHA) -> dict:
    """One-run audit of a training *recipe* (Steinke, Nasr & Jagielski 2023): a fresh model, not the
    released weights (head models: one training, seconds).

    m pool images get a wrong label (canaries); each enters the training set by its own fair coin,
    flipped before training; one model is trained from ``build()`` with ``recipe``; the attacker
    guesses IN for the r canaries most confident in their wrong label, OUT for the r least, and
    abstains on the rest (r fixed in advance, so nothing is chosen after seeing the outcome).
    ``alpha``: this check's share of the audit's error rate; with ``eps`` it fails when the correct
    guesses reject (eps, delta)-DP at that level (delta paid once per canary)."""
    rng = np.random.default_rng(seed + 7)
    k = num_classes
    m = min(m, len(x_pool))
    idx = rng.choice(len(x_pool), m, replace=False)
    wrong = (y_pool[idx] + torch.from_numpy(rng.integers(1, k, m))) % k
    inside = rng.random(m) < 0.5  # the independent coin flips: drawn before training
    keep = torch.from_numpy(inside)
    x = torch.cat([x_tr, x_pool[idx][keep]])
    y = torch.cat([y_tr, wrong[keep]])
    net = A.train_reference(build, x, y, k, recipe, seed + 11)
    score = A.logit_confidence(A.logits_of(net, x_pool[idx]), wrong.numpy())
    r = max(1, int(guess_fraction * m / 2))
    order = np.argsort(-score)
    top, bottom = order[:r], order[-r:]
    correct = int(inside[top].sum() + (~inside[bottom]).sum())
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(inside, score)) if 0 < inside.sum() < m else None
    d = float(delta or 0.0)
    out = {"canaries": m, "inserted": int(inside.sum()), "guesses": 2 * r, "correct": correct,
           "score_auc": auc,  # all canaries, not only the guessed ones: a less noisy view of the same signal
           "eps_lower_bound": B.one_run_eps_lower_bound(correct, 2 * r, m, d, 1 - alpha), "confidence": 1 - alpha,
           "delta": d, "canary": "held-out image with a wrong label, included by an independent fair coin",
           "audits": "the training recipe (a fresh model), not the released weights",
           "method": "Steinke, Nasr & Jagielski (2023) one-run bound for (eps, delta)-DP, delta counted once "
                     "per canary (2 m delta term)"}
    if eps is not None:
        out["p_value"] = B.one_run_p_value(correct, 2 * r, m, float(eps), d)
        out["failed"] = out["p_value"] <= alpha
    return out


def _builder(meta: dict, model):
    """A fresh trainable part of the bundle's model (reference and canary models start from it), with
    the bundle's public projection (a public fact, not trained)."""
    return lambda: with_public_basis(
        get_model(meta["model"]["name"], len(meta["classes"]), **meta["model"].get("kwargs", {})).trainable,
        model.trainable)


def _reference_logits(meta, model, recipe, x, y, units, x_targets, k_reference: int, seed: int, augment: bool,
                      progress: bool) -> tuple[list, float]:
    """Logits of the targets under K reference models trained with the bundle's recipe on ``x``
    (training images that are not targets): every reference is OUT for every target."""
    logits, seconds = [], 0.0
    for k in range(k_reference):
        t1 = time.time()
        ref_seed = seed * 1000 + k + 1
        torch.manual_seed(ref_seed)
        ref = A.train_reference(_builder(meta, model), x, y, len(meta["classes"]), recipe, ref_seed, augment=augment,
                                units=units)
        logits.append(A.logits_of(ref, x_targets))
        seconds += time.time() - t1
        if progress:
            print(f"reference model {k + 1}/{k_reference}: {time.time() - t1:.1f}s", file=sys.stderr)
    return logits, seconds


def _heuristic_findings(results: dict, eps: float, eps_lb: float, ceiling: dict, n: int, notes: list) -> list[str]:
    """Warnings from statistics over targets of one model (not independent trials): they never fail
    the audit. Point estimates above the ceiling go to ``notes``."""
    warnings = [f"{HEURISTIC} {eps_lb:.3f} > claimed epsilon {eps}"] if eps_lb > eps + 1e-9 else []
    for name, r in results.items():
        if r["auc_ci95"][0] > ceiling["auc"]:
            warnings.append(f"{name}: AUC 95% interval [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}] lies "
                            f"above the ceiling {ceiling['auc']:.3f} (heuristic: the targets are not "
                            "independent trials)")
        for f in FPRS:
            if r["tpr_at_fpr"][str(f)] > ceiling["tpr_at_fpr"][str(f)]:
                notes.append(f"{name}: TPR@{f:g} FPR point estimate {r['tpr_at_fpr'][str(f)]:.4f} is above the "
                             f"ceiling {ceiling['tpr_at_fpr'][str(f)]:.4f} (a point estimate at n={n}; "
                             "it cannot fail the audit)")
        if r["auc"] > ceiling["auc"]:
            notes.append(f"{name}: AUC point estimate {r['auc']:.4f} is above the ceiling {ceiling['auc']:.4f} "
                         "(within sampling error)")
    return warnings


@dataclass
class _Targets:
    """The audit's targets: members (training images or patients) and non-members (validation)."""
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    train_recs: list
    train_hash: list[str]
    x_non: torch.Tensor
    y_non: torch.Tensor
    src: np.ndarray
    dup: np.ndarray
    mem: np.ndarray
    non: np.ndarray
    groups: list | None
    x: torch.Tensor
    y: torch.Tensor
    is_member: np.ndarray
    notes: list[str]

    @property
    def by_patient(self) -> bool:
        return self.groups is not None


def _targets(meta: dict, model, cfg: TrainConfig, n_per_side: int, rng, progress: bool) -> _Targets:
    """Members and non-members, matched per class; a patient's images together under patient-level DP."""
    x_tr, y_tr, train_recs, x_non, y_non, src, non_recs = audit_data(meta, model, cfg, progress)
    train_hash = [_hash(r) for r in train_recs]
    # a held-out image with a byte-identical copy in train is a member in all but name
    dup = np.array([_hash(r) in set(train_hash) for r in non_recs]) if non_recs else np.zeros(0, bool)
    src = np.where(dup, "duplicate_of_member", src)
    by_patient = (meta.get("privacy") or {}).get("unit_of_privacy") == "patient"
    mem, non = choose_targets(y_tr.numpy(), y_non.numpy(), src, n_per_side, rng)
    notes = []
    if len(non) < n_per_side and int((src == "validation").sum()) < n_per_side:
        notes.append(f"only {len(non)} validation images could be non-members ({n_per_side} asked): audited with "
                     "fewer targets; test images are never used (their split may be shifted from train)")
    groups = None
    if by_patient:  # a member is a patient: all their images in, scored together
        mem, non, groups = patient_targets(mem, non, train_recs, non_recs, src)
    return _Targets(x_tr, y_tr, train_recs, train_hash, x_non, y_non, src, dup, mem, non, groups,
                    torch.cat([x_tr[mem], x_non[non]]), torch.cat([y_tr[mem], y_non[non]]),
                    np.r_[np.ones(len(mem), bool), np.zeros(len(non), bool)], notes)


def _reference_pool(t: _Targets) -> np.ndarray:
    """Training images that are not targets, and no byte-identical copy of one."""
    target_hashes = {t.train_hash[i] for i in t.mem}
    return np.array([i for i in np.setdiff1d(np.arange(len(t.x_tr)), t.mem) if t.train_hash[i] not in target_hashes])


def _checks(priv: dict, canaries: int, pixel_model: bool) -> list[str]:
    """The checks that may fail the audit, fixed before any outcome is seen; ALPHA is split over them.
    Federated bundles are left out: their canary model repeats hospital 1's recipe centrally, which
    the bundle's epsilon need not cover exactly."""
    central = priv.get("noise_multiplier") is not None
    return ["one_run_canary_audit"] if canaries and not pixel_model and priv.get("epsilon") is not None and central \
        else []


def _n_units(t: _Targets, member: bool) -> int:
    """Targets on one side: images, or patients under patient-level DP."""
    if t.groups is None:
        return int(len(t.mem))
    return int(len({g for g, m in zip(t.groups, t.is_member) if m == member}))


def _block(meta: dict, t: _Targets, results: dict, recipe, ref: dict, n_per_side: int, seed: int, can_fail: list,
           warnings: list, problems: list) -> dict:
    """The audit block (before the canary audit): what was attacked, how, and against which ceiling."""
    priv = meta.get("privacy") or {}
    eps, delta = priv.get("epsilon"), priv.get("delta")
    n = _n_units(t, True)
    best = max(results.values(), key=lambda r: float(r["eps_lower_bound"]["eps_lb"]))
    goal = None
    if eps is not None and eps <= GOAL["applies_to_epsilon_at_most"]:
        goal = {**GOAL, "met": all(r["auc"] <= GOAL["max_auc"] and r["tpr_at_fpr"]["0.01"] <= GOAL[
            "max_tpr_at_1pct_fpr"] for r in results.values())}
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "method": "loss-threshold and offline LiRA (fixed variance) membership inference",
        "unit": "patient" if t.by_patient else "image",
        "members": {"n": n, "source": ("training patients (all their images, scores averaged per patient)"
                                       if t.by_patient else
                                       "training images of the bundle (rebuilt from its training config)")},
        "nonmembers": {"n": n if not t.by_patient else _n_units(t, False),
                       "source": {s: int((t.src[t.non] == s).sum()) for s in ("validation", "test")},
                       "requested": n_per_side,
                       "excluded_copies_of_training_images": int(t.dup.sum()),
                       "note": "validation images only (same distribution, patient-disjoint), never test images "
                                "(a shifted split); members matched per class"},
        "reference_models": {"k": ref["k"], "trained_on": f"{ref['pool']} training images that are not audit "
                             "targets (every reference is OUT for every target)", "recipe": recipe.__dict__,
                             "seconds": round(ref["seconds"], 1)},
        "seed": seed,
        "attacks": results,
        "best_attack": max(results, key=lambda k: results[k]["auc"]),
        "max_auc": max(r["auc"] for r in results.values()),
        "max_tpr_at_fpr": {str(f): max(r["tpr_at_fpr"][str(f)] for r in results.values()) for f in FPRS},
        # key names kept for their readers; the value is a heuristic, not a lower bound
        "empirical_epsilon": {"lower_bound": float(best["eps_lower_bound"]["eps_lb"]), "confidence": 0.95,
                              "attack": next(k for k, r in results.items() if r is best),
                              "max_certifiable_at_this_n": B.max_certifiable_eps(
                                  n - n // 2, n - n // 2, delta or 0.0, 1 - 0.05 / len(results)),
                              "heuristic": True, "label": HEURISTIC,
                              "method": "best attack threshold chosen on half the targets, Clopper-Pearson on the "
                                        "other half; Bonferroni over attacks; nominal 95 %: the targets are not "
                                        "independent trials"},
        "ceiling": B.ceiling_summary(eps, delta, FPRS),
        "checks": {"confidence": 1 - ALPHA, "can_fail": can_fail, "alpha_each": ALPHA / max(1, len(can_fail)),
                   "method": "Bonferroni: each check that can fail runs at ALPHA / (number of such checks), so "
                             "a truly (eps, delta)-DP recipe fails the audit with probability <= ALPHA",
                   "warn_only": ["empirical_epsilon", "AUC 95% interval vs ceiling", "TPR point estimates"]},
        "exceeds_ceiling": bool(problems),
        "problems": problems,
        "warnings": warnings,
        "notes": t.notes,
        "goal": goal,
        "recipe": recipe_block(meta),
        "dataset_fingerprint": (meta.get("_run_log", {}).get("dataset_fingerprint") or {}).get("train"),
    }


def _canary_check(block: dict, meta: dict, model, t: _Targets, recipe, canaries: int, seed: int,
                  pixel_model: bool) -> None:
    """The one-run canary audit of the recipe (head models), into ``block``; a failure is a problem."""
    if pixel_model:
        block["canary_audit"] = {"skipped": "one-run canary audit is implemented for head models only"}
        return
    priv = meta.get("privacy") or {}
    eps, delta = priv.get("epsilon"), priv.get("delta")
    alpha_each = block["checks"]["alpha_each"]
    pool_non = np.setdiff1d(np.arange(len(t.x_non)), t.non)  # canaries are not audit targets
    ca = canary_audit(_builder(meta, model), t.x_tr, t.y_tr, t.x_non[pool_non], t.y_non[pool_non],
                      len(meta["classes"]), recipe, canaries, seed=seed,
                      eps=eps if block["checks"]["can_fail"] else None, delta=delta or 0.0, alpha=alpha_each)
    block["canary_audit"] = ca
    if ca.get("failed"):
        block["problems"].append(f"one-run canary audit: {ca['correct']}/{ca['guesses']} correct guesses on "
                                 f"{ca['canaries']} canaries, p = {ca['p_value']:.2g} <= {alpha_each:.3g} under "
                                 f"(eps={eps}, delta={delta or 0.0:.3g}); eps >= {ca['eps_lower_bound']:.3f}")
        block["exceeds_ceiling"] = True


def _report(block: dict, path: Path) -> None:
    """Warnings to the log; a failed audit loudly, to the log and stderr."""
    for w in block["warnings"]:
        log.warning(w)
    if block["problems"]:
        ch = block["checks"]
        msg = (f"PRIVACY AUDIT FAILED at {1 - ALPHA:.0%} confidence jointly over its {len(ch['can_fail'])} "
               f"statistically valid check(s) (Bonferroni, each at {ch['alpha_each']:.3g}): a recipe that is "
               f"(eps, delta)-DP fails with probability at most {ALPHA:.0%}, so this is a bug (training, sampling or "
               "accounting), not bad luck: " + "; ".join(block["problems"]) + f" [bundle {path}]")
        log.error(msg)
        print(f"ERROR: {msg}", file=sys.stderr)


def audit_bundle(path: str | Path, k_reference: int = 4, n_per_side: int = 500, seed: int = 0,
                 data_root: Path | None = None, progress: bool = False, store: bool = True,
                 canaries: int = 0) -> dict:
    """Audit one bundle; returns (and, with ``store``, writes into its private run log) the audit block."""
    t0 = time.time()
    path = Path(path)
    model, bundle = load_bundle(path)
    meta = {**bundle.raw, "_run_log": read_run_log(path)}
    cfg = _config(meta, data_root)
    torch.manual_seed(seed)
    t = _targets(meta, model, cfg, n_per_side, np.random.default_rng(seed), progress)
    target_logits = A.logits_of(model.trainable, t.x)

    pool = _reference_pool(t)
    recipe = A.Recipe.from_metadata(meta)
    pixel_model = spec_of(model.name).takes_pixels
    pool_units = _units([t.train_recs[i] for i in pool]) if t.by_patient else None
    ref_logits, ref_seconds = _reference_logits(meta, model, recipe, t.x_tr[pool], t.y_tr[pool], pool_units, t.x,
                                                k_reference, seed, pixel_model, progress)

    priv = meta.get("privacy") or {}
    eps, delta = priv.get("epsilon"), priv.get("delta")
    results = run_attacks(target_logits, t.y.numpy(), t.is_member, ref_logits, delta, seed, groups=t.groups)
    n = _n_units(t, True)
    eps_lb = max(float(r["eps_lower_bound"]["eps_lb"]) for r in results.values())
    ceiling = B.ceiling_summary(eps, delta, FPRS)
    warnings = _heuristic_findings(results, eps, eps_lb, ceiling, n, t.notes) if eps is not None else []
    block = _block(meta, t, results, recipe, {"k": k_reference, "pool": len(pool), "seconds": ref_seconds},
                   n_per_side, seed, _checks(priv, canaries, pixel_model), warnings, [])
    block["seconds"] = round(time.time() - t0, 1)
    if canaries:
        _canary_check(block, meta, model, t, recipe, canaries, seed, pixel_model)
    _report(block, path)
    if store:  # private: scores and thresholds of training images; the run log, never the bundle
        write_run_log(path, block, name="audit.json")
    return block


def format_audit(block: dict) -> str:
    c, e = block["ceiling"], block["empirical_epsilon"]
    r = block["recipe"]
    lines = [f"membership-inference audit ({block['members']['n']} members vs {block['nonmembers']['n']} "
             f"non-members, {block['reference_models']['k']} reference models)"]
    if r["dp"]:
        lines.append(f"  recipe: eps={r['epsilon']} delta={r['delta']:.3g} sigma={r['noise_multiplier']:.4g} "
                     f"clip={r['max_grad_norm']} q={r['sample_rate']:.4g} steps={r['steps']} "
                     f"accountant={r['accountant']} unit={r['unit_of_privacy']}")
    else:
        lines.append("  recipe: non-private (no DP)")
    for name, a in block["attacks"].items():
        lines.append(f"  {name:13} AUC {a['auc']:.4f} [{a['auc_ci95'][0]:.3f}, {a['auc_ci95'][1]:.3f}]  "
                     f"TPR@0.1%FPR {a['tpr_at_fpr']['0.001']:.4f}  TPR@1%FPR {a['tpr_at_fpr']['0.01']:.4f}")
    lines.append(f"  ceiling from (eps, delta): AUC <= {c['auc']:.4f}, TPR@0.1% <= {c['tpr_at_fpr']['0.001']:.4f}, "
                 f"TPR@1% <= {c['tpr_at_fpr']['0.01']:.4f}")
    lines.append(f"  {HEURISTIC}: {e['lower_bound']:.3f} (at most {e['max_certifiable_at_this_n']:.2f} with "
                 "this many images)")
    if block.get("goal"):
        lines.append(f"  goal (AUC <= 0.55, TPR@1% <= 2%): {'met' if block['goal']['met'] else 'NOT met'}")
    if "canary_audit" in block:
        ca = block["canary_audit"]
        lines.append(f"  one-run canary audit: {ca}" if "skipped" in ca else
                     f"  one-run canary audit: {ca['correct']}/{ca['guesses']} correct guesses on {ca['canaries']} "
                     f"canaries -> eps >= {ca['eps_lower_bound']:.3f} ({ca['confidence']:.1%}, certified)")
    ch = block.get("checks") or {}
    if ch.get("can_fail"):
        lines.append(f"  checks that can fail the audit ({ch['confidence']:.0%} jointly, Bonferroni, each at "
                     f"{ch['alpha_each']:.3g}): " + ", ".join(ch["can_fail"]))
    else:
        lines.append("  no statistically valid check ran, so this audit cannot fail (run --canaries M on a DP head "
                     "model for the one-run audit)")
    lines.append("  PRIVACY AUDIT FAILED: " + "; ".join(block["problems"]) if block["exceeds_ceiling"]
                 else "  below the theoretical ceiling: OK (no valid check failed)")
    lines += [f"  warning (heuristic, cannot fail the audit): {w}" for w in block.get("warnings", [])]
    lines += [f"  note: {n}" for n in block["notes"]]
    return "\n".join(lines)
