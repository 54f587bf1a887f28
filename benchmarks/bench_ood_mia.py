"""Membership attack on the DP out-of-distribution detector of the default bundles (issue 8, finding 3).

    python benchmarks/bench_ood_mia.py [--n 500] [--seed 0] [--bundles DIR ...]

The old detector shipped exact validation statistics: an image's distance to them told validation
images from others (AUC 1.00 / 0.79 / 0.76). Here the same attack runs against each bundle's DP
detector, through the served path (``Model.batch`` + ``Model.scores``). Members: the bundle's
validation units, rebuilt with the training code's split (``split_records``; the unit count is
checked against the bundle's ``fitted_on``). A unit's score is the mean OOD score of its images
(chest X-ray: a patient). Two non-member sets of the same size: (a) test units (``privmed evaluate``'s
leak-free test), (b) training units: members of DP-SGD but no input of the OOD releases, drawn from
the same folder as validation, so (b) isolates the detector's leak from a train/test shift.
Attack AUC: the better of "lower score => member" and the reverse, with a 95 % Hanley-McNeil interval.
At most ``--n`` units per side, drawn with ``--seed``. Where the split keeps groups coarser than the
unit together (covid19_ct: 40-slice blocks, unit image), also block means and a null: random training
blocks in validation's place. Results: docs/notebook/RESULTS.md, "The OOD detector is no membership oracle"."""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from privmed.config import TrainConfig, bundles_dir
from privmed.data.datasets import load_record
from privmed.evaluation.dp_bounds import auc_confidence_interval
from privmed.evaluation.metrics import roc_auc
from privmed.inference.predictor import load_model
from privmed.training.data import split_records, test_records, unit_ids

SETS = ["chest_xray_pneumonia", "brain_tumor_mri", "covid19_ct", "covid19_xray"]


def unit_scores(model, records, unit: str, n: int | None, rng: np.random.Generator,
                batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(mean OOD score, split group) of each of at most ``n`` randomly drawn units (all units if None)."""
    units = unit_ids(records, unit)[0].numpy()
    chosen = rng.permutation(int(units.max()) + 1)[:n]
    idx = np.nonzero(np.isin(units, chosen))[0]
    s = np.concatenate([model.scores(model.batch([load_record(records[i]).pixels for i in idx[j:j + batch]]))[1]
                        for j in range(0, len(idx), batch)])
    _, first, inverse = np.unique(units[idx], return_index=True, return_inverse=True)
    return np.bincount(inverse, weights=s) / np.bincount(inverse), np.array([records[idx[i]].group for i in first])


def group_means(s: np.ndarray, groups: np.ndarray) -> np.ndarray:
    keys, inverse = np.unique(groups, return_inverse=True)
    return np.bincount(inverse, weights=s) / np.bincount(inverse)


def attack(members: np.ndarray, non: np.ndarray) -> tuple[float, float, float, str]:
    """(AUC of the better direction, 95 % interval, direction)."""
    auc = roc_auc(np.r_[np.ones(len(members), bool), np.zeros(len(non), bool)], -np.r_[members, non])
    auc, how = (auc, "lower") if auc >= 0.5 else (1 - auc, "higher")
    return (auc, *auc_confidence_interval(auc, len(members), len(non)), how)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="units per side at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null", type=int, default=200, help="draws of the group-level null (grouped splits only)")
    ap.add_argument("--bundles", nargs="*", type=Path, default=[bundles_dir() / ds for ds in SETS])
    args = ap.parse_args()
    print("| bundle | unit | members (validation) | non-members | units per side | attack AUC [95 % CI] "
          "| member if score is | median score member / non-member |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.bundles:
        t0 = time.time()
        m = load_model(path)
        if not m.ood:
            print(f"| {path.name} | - | no OOD detector in the bundle | - | - | - | - | - |")
            continue
        cfg = TrainConfig(**m.metadata["training"])
        splits = split_records(cfg)
        unit = cfg.privacy.unit
        val_units, unit_name = unit_ids(splits.val, unit)
        fitted = int(re.search(r"\((\d+) units\)", m.ood["fitted_on"]).group(1))
        if int(val_units.max()) + 1 != fitted:
            raise SystemExit(f"{path}: rebuilt validation has {int(val_units.max()) + 1} units, the bundle {fitted}")
        test, n_leaked = test_records(cfg)
        rng = np.random.default_rng(args.seed)
        mem, mem_groups = unit_scores(m, splits.val, unit, args.n, rng)
        # the split keeps groups coarser than the unit on one side (covid19_ct: 40-slice blocks, unit image):
        # score all of train, to compare block means and to see how far chance moves AUC between blocks
        grouped = len(set(mem_groups)) < len(mem)
        non_test = unit_scores(m, test, unit, len(mem), rng)[0]
        tr, tr_groups = unit_scores(m, splits.train, unit, None if grouped else len(mem), rng)
        rows = [(f"test (leak-free, {n_leaked} leaked removed)", mem, non_test),
                ("train (same folder)", mem, tr[rng.permutation(len(tr))[:len(mem)]])]
        if grouped:
            rows.append((f"train, {unit_name} level -> mean per split group (validation groups vs train groups)",
                         group_means(mem, mem_groups), group_means(tr, tr_groups)))
        for name, a, b in rows:
            auc, lo, hi, how = attack(a, b)
            print(f"| {path.name} | {unit_name} | {fitted} units | {name} | {len(a)} / {len(b)} | "
                  f"{auc:.3f} [{lo:.3f}, {hi:.3f}] | {how} | {np.median(a):.3f} / {np.median(b):.3f} |", flush=True)
        if grouped:  # null: as many train groups as validation has, in place of validation (never in the release)
            keys, k, observed = np.unique(tr_groups), len(set(mem_groups)), attack(*rows[1][1:])[0]
            null = []
            for _ in range(args.null):
                inside = np.isin(tr_groups, rng.choice(keys, k, replace=False))
                null.append(attack(tr[inside], rng.choice(tr[~inside], len(mem), replace=False))[0])
            print(f"| {path.name} | {unit_name} | null: {k} random train groups in place of validation | "
                  f"train (same folder), other groups | about {len(mem)} / {len(mem)} | median {np.median(null):.3f}, "
                  f"95th percentile {np.percentile(null, 95):.3f}, {np.mean(np.array(null) >= observed):.0%} of "
                  f"{args.null} draws >= {observed:.3f} | either | - |", flush=True)
        print(f"<!-- {path.name}: {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
