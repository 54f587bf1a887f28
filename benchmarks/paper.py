"""The comparison the paper reports, reproduced with privmed's own commands.

    python benchmarks/paper.py [--quick] [--out docs/PAPER.md] [--run-dir DIR] [--only ID ...]
    python benchmarks/paper.py --report RUN_DIR --out DIR     # HTML + Markdown report of a run directory


Every entry trains a bundle with ``train_bundle`` (the code path of ``privmed train``), evaluates
it on the official test split with ``evaluate`` (leaked test images removed), times inference,
optionally audits it (``privmed privacy audit``) and measures robustness. Each entry's raw
result is ``RUN/<id>/result.json`` (a rerun skips finished entries) and docs/PAPER.md (generated) shows the
exact command next to every number.

``--quick`` is the cheap subset: privmed's best model (the default bundles' recipe) on chest X-ray with
its privacy-utility curve and audits, its robustness on a test subset, and the COVID-19 X-ray set.
The full run (without ``--quick``) adds the paper's rows (from-scratch CNNs at 64 px for 10 epochs,
ResNet-50 and VGG at 64 px for 5 epochs), the ScatterNet DP CNN, the ablation, brain MRI and lung CT;
docs/PAPER.md records how long each entry took.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from privmed.bundle.format import read_metadata, read_run_log
from privmed.config import REPO_ROOT, TrainConfig, default_data_root
from privmed.data.datasets import load_record, open_dataset
from privmed.evaluation.evaluate import evaluate
from privmed.evaluation.robustness import robustness_table
from privmed.inference.predictor import load_model
from privmed.pipeline import train_bundle
from privmed.training.recipe import train_config, train_parser

CHEST, BRAIN, COVID, CT = "chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray", "covid19_ct"
QUICK_ROBUSTNESS_IMAGES = 150
# The from-scratch CNN rows: 64 px and 10 epochs so that each fits ~5 minutes on 2 CPU cores (at 128 px
# one DP epoch took 85 s); the loss attack only (no reference models to train).
CNN = {"epochs": 10, "batch_size": 256, "size": 64, "audit_k": 0}
# privmed's best recipes, as the default bundles are trained (benchmarks/train_defaults.sh): the model's
# own defaults (models.registry.MODELS), so these rows move when the defaults do.
BEST = {"epochs": None, "batch_size": None}
BEST_MODEL = {CHEST: "effnet_lite0_multi", BRAIN: "effnet_lite0_multi", CT: "effnet_lite0_multi",
              COVID: "effnet_lite0_head"}
# Tramer & Boneh's ScatterNet + small DP CNN, the recipe of docs/notebook/RESULTS.md ("A DP CNN that learns")
SCATTER = {"epochs": 15, "batch_size": None, "lr": 4, "audit_k": 0,
           "overrides": {"privacy.max_grad_norm": 0.1, "ema": 0.9}}


def _e(id, table, label, dataset, model, epsilon, *, epochs=30, batch_size=256, size=None, augment=True,
       clahe=False, lr=None, audit_k=None, robustness=None, quick=False, overrides=None):
    """One entry. ``epochs``/``batch_size`` None: the model's default; ``overrides``: ``--set KEY=VALUE``."""
    return {"id": id, "table": table, "label": label, "dataset": dataset, "model": model, "epsilon": epsilon,
            "epochs": epochs, "batch_size": batch_size, "size": size, "augment": augment, "clahe": clahe, "lr": lr,
            "audit_k": audit_k, "robustness": robustness, "quick": quick, "overrides": overrides or {}}


def entries() -> list[dict]:
    """The full plan; ``quick`` marks the subset run by ``--quick``."""
    best = BEST_MODEL[CHEST]
    e = []
    # main table, chest X-ray (official test set, 624 images): the paper's four rows, then privmed's
    e += [
        _e("chest-resnet50-nodp", "main", "ResNet-50, no DP (64 px, 5 epochs)", CHEST, "resnet50", None,
           epochs=5, batch_size=64, size=64, audit_k=0),
        _e("chest-vgg-nodp", "main", "VGG-style, no DP (64 px, 5 epochs)", CHEST, "vgg", None,
           epochs=5, batch_size=64, size=64, audit_k=0),
        _e("chest-cnn-eps5", "main", "CNN, DP eps=5 (64 px, 10 epochs)", CHEST, "cnn", 5.0, **CNN),
        _e("chest-cnn-eps2", "main", "CNN, DP eps=2 (64 px, 10 epochs)", CHEST, "cnn", 2.0, **CNN),
        _e("chest-scatter-eps2", "main", "ScatterNet + DP CNN, eps=2 (64 px, 15 epochs)", CHEST, "scatter_cnn", 2.0,
           **SCATTER),
        _e("chest-best-eps2", "main", "privmed best: EfficientNet-Lite0 multi-tap head, DP eps=2 (default bundle)",
           CHEST, best, 2.0, **BEST, audit_k=4, robustness=624, quick=True),
    ]
    # privacy-utility curve of the best model (cheap: linear heads on cached features); eps=2 is above
    for eps in (0.5, 1.0, 5.0, 8.0, None):
        tag = f"eps{eps:g}" if eps else "nodp"
        e.append(_e(f"chest-best-{tag}", "privacy_utility", f"multi-tap head, {'DP eps=%g' % eps if eps else 'no DP'}",
                    CHEST, best, eps, **BEST, audit_k=4, quick=True))
    # ablation of the paper's DP CNN (augmentation, CLAHE, DP) and of the best model (CLAHE)
    e += [
        _e("chest-cnn-eps2-noaug", "ablation", "CNN eps=2, no augmentation", CHEST, "cnn", 2.0, **CNN, augment=False),
        _e("chest-cnn-eps2-clahe", "ablation", "CNN eps=2, + CLAHE", CHEST, "cnn", 2.0, **CNN, clahe=True),
        _e("chest-cnn-nodp", "ablation", "CNN, no DP", CHEST, "cnn", None, **CNN),
        _e("chest-best-eps2-clahe", "ablation", "multi-tap head eps=2, + CLAHE", CHEST, best, 2.0, **BEST,
           clahe=True),
    ]
    # shorter tables: brain MRI (leak-free test), COVID-19 X-ray, lung CT (no patient ids: the image is the unit)
    for ds, quick in ((BRAIN, False), (COVID, True), (CT, False)):
        short = ds.split("_")[0] + ("-ct" if ds == CT else "")
        unit = {"overrides": {"privacy.unit": "image"}} if ds == CT else {}
        name = "EfficientNet-Lite0 " + ("head" if BEST_MODEL[ds] == "effnet_lite0_head" else "multi-tap head")
        e += [
            _e(f"{short}-best-eps2", "datasets", f"{name}, DP eps=2 (default bundle)", ds, BEST_MODEL[ds], 2.0,
               **BEST, **unit, audit_k=4, quick=quick),
            _e(f"{short}-best-nodp", "datasets", f"{name}, no DP", ds, BEST_MODEL[ds], None, **BEST, **unit,
               audit_k=4, quick=quick),
        ]
        if ds != CT:  # the paper's CNN on the other sets
            e.append(_e(f"{short}-cnn-eps2", "datasets", "CNN, DP eps=2 (64 px, 10 epochs)", ds, "cnn", 2.0, **CNN,
                        quick=quick))
    return e


def train_command(entry: dict, bundle: str) -> str:
    parts = ["privmed train", f"--dataset {shlex.quote(str(entry['dataset']))}", f"--model {entry['model']}"]
    parts.append(f"--epsilon {entry['epsilon']:g}" if entry["epsilon"] else "--no-dp")
    if entry["epochs"]:
        parts.append(f"--epochs {entry['epochs']}")
    if entry["batch_size"]:
        parts.append(f"--batch-size {entry['batch_size']}")
    if entry["lr"]:
        parts.append(f"--lr {entry['lr']}")
    if not entry["augment"]:
        parts.append("--no-augment")
    if entry["clahe"]:
        parts.append("--clahe")
    if entry["size"]:
        parts.append(f"--set preprocess.size={entry['size']}")
    parts += [f"--set {k}={v}" for k, v in entry.get("overrides", {}).items()]
    parts.append(f"--out {shlex.quote(str(bundle))}")
    return " ".join(parts)


def entry_config(entry: dict) -> TrainConfig:
    """The config ``privmed train`` builds from the entry's printed command: the row's command is what ran."""
    argv = shlex.split(train_command(entry, "bundle"))[2:]  # after "privmed train"
    return train_config(train_parser().parse_args(argv))


def images_per_second(bundle: Path, dataset: str, n: int = 128) -> float:
    """Model throughput on this machine's CPUs: decoded test images -> ``Model.scores_many``, the
    served path (the upload's preprocessing, calibrated probabilities and OOD scores, batch 32,
    frozen backbone included). Decoding the files is not timed."""
    model = load_model(bundle)
    recs = open_dataset(dataset, default_data_root()).records("test")[:n]  # any test images: only speed counts
    model.scores_many([load_record(r).pixels for r in recs[:4]])  # warm-up
    seconds = 0.0
    for i in range(0, len(recs), 32):
        pixels = [load_record(r).pixels for r in recs[i:i + 32]]
        t = time.perf_counter()
        model.scores_many(pixels, 32)
        seconds += time.perf_counter() - t
    return len(recs) / seconds


def run_entry(entry: dict, run_dir: Path, progress: bool = True) -> dict:
    d = run_dir / entry["id"]
    res_path = d / "result.json"
    if res_path.is_file():
        return json.loads(res_path.read_text())
    bundle = d / "bundle"
    rel = _rel(bundle)
    t0 = time.time()
    if not (bundle / "metadata.json").is_file():
        train_bundle(entry_config(entry), bundle, progress=progress)
    meta = read_metadata(bundle)
    run = read_run_log(bundle)
    test = evaluate(bundle, progress=progress)
    res = {**entry, "bundle": str(bundle), "commands": {"train": train_command(entry, rel),
                                                        "evaluate": f"privmed evaluate {rel} --json"},
           "test": {k: v for k, v in test.items() if k != "per_class"}, "validation_accuracy":
           run["validation"]["accuracy"], "training_seconds": run.get("training_seconds"),
           "privacy": meta.privacy.dump() if meta.privacy else None, "epsilon": meta.ledger.epsilon,
           "delta": meta.ledger.delta}
    res["images_per_s"] = images_per_second(bundle, entry["dataset"])
    if entry["audit_k"] is not None:
        from privmed.evaluation.audit import audit_bundle

        res["audit"] = audit_bundle(bundle, k_reference=entry["audit_k"], progress=progress)
        res["commands"]["audit"] = f"privmed privacy audit {rel} --k {entry['audit_k']} --json"
    if entry["robustness"]:
        from privmed.evaluation.robustness import robustness

        res["robustness"] = robustness(bundle, max_images=entry["robustness"], progress=progress)
        res["commands"]["robustness"] = (f"python -c \"from privmed.evaluation.robustness import robustness; "
                                         f"print(robustness('{rel}', max_images={entry['robustness']}))\"")
    res["seconds"] = round(time.time() - t0, 1)
    d.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(res, indent=2, default=str))
    return res


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def load_results(run_dir: Path) -> list[dict]:
    order = {e["id"]: i for i, e in enumerate(entries())}
    res = [json.loads(p.read_text()) for p in Path(run_dir).glob("*/result.json")]
    return sorted(res, key=lambda r: order.get(r["id"], 1e9))


def _f(x, nd=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and np.isnan(x):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _mia(r: dict) -> tuple[str, str, str]:
    a = r.get("audit")
    if not a:
        return "—", "—", "—"
    return _f(a["max_auc"]), _f(a["max_tpr_at_fpr"]["0.01"]), _f(a["empirical_epsilon"]["lower_bound"], 2)


TABLE_COLUMNS = ["| model | acc | prec | rec | F1 | AUC | img/s | eps | MIA AUC | TPR@1%FPR | eps_lb | commands |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
TABLE_TITLES = {"main": "Chest X-ray pneumonia: models compared (624 test images)",
                "privacy_utility": "Privacy-utility curve: the multi-tap head (privmed's best) on chest X-ray",
                "ablation": "Ablation (chest X-ray)", "datasets": "Brain MRI, COVID-19 X-ray and lung CT"}


def results_markdown(results: list[dict], run_dir: Path | None = None, quick: bool = False,
                     with_commands: bool = True) -> str:
    L = _intro(results, run_dir, quick)
    for key in TABLE_TITLES:
        L += _table(key, results, with_commands)
    L += _mia_goal(results) + _robustness(results) + _run_time(results) + _reproduce(results)
    return "\n".join(L)


def _intro(results: list[dict], run_dir: Path | None, quick: bool) -> list[str]:
    L = ["# Results", "",
         f"Generated by `python benchmarks/paper.py{' --quick' if quick else ''}` on "
         f"{dt.datetime.now(dt.timezone.utc).date()} ({platform.machine()}, {_cpu()} CPU cores, CPU only). "
         f"Raw results: `{_rel(run_dir) if run_dir else 'RUN'}/<id>/result.json`. "
         "Every number comes from the commands in its row; `RUN` is the run directory.", "",
         "Test metrics are on each dataset's official test split (`privmed evaluate`; brain MRI and COVID-19 "
         "with test images that have an exact or near copy in train removed). Precision, recall and F1 are macro "
         "averages; AUC is "
         "the finding's (binary) or the mean one-vs-rest AUC. images/s: end-to-end CPU throughput of the model "
         "on preprocessed images, batch 32, frozen backbone included. MIA: best of the loss-threshold and "
         "offline-LiRA attacks of `privmed privacy audit` (up to 500 members = training images vs as many "
         "non-members = validation images only, matched per class; 4 reference models for head "
         "models); TPR@1%FPR is a point estimate; eps_lb: heuristic empirical epsilon at a nominal 95% (not a "
         "certified bound: members were not chosen by independent coin flips before training). eps: the "
         "epsilon actually spent (early stopping can end a run below its target). images/s was measured on 2 "
         "CPU cores shared with other jobs: treat it as +-50%. A dash: not measured.", "",
         "The full run is `python benchmarks/paper.py`; the quick subset is `python benchmarks/paper.py --quick`. "
         "Entries not run are listed at the end.", ""]
    if any(one_class(r) for r in results):
        L += ["Rows marked \"one class only\" predict the same class for every test image: their accuracy is the "
              "majority baseline and their AUC says only how the scores rank. See docs/notebook/BENCHMARKS.md "
              "(\"DP CNN from scratch\") for why the from-scratch CNN collapses under DP-SGD here.", ""]
    return L


def _row(r: dict, with_commands: bool) -> str:
    t = r["test"]
    cmds = "<br>".join(f"`{c}`" for c in r["commands"].values()) if with_commands else ""
    mark = " (one class only)" if one_class(r) else ""
    return (f"| {r['label']}{mark} | {_f(t['accuracy'])} | {_f(t['precision_macro'])} | {_f(t['recall_macro'])} | "
            f"{_f(t['f1_macro'])} | {_f(t['auc'])} | {_f(r.get('images_per_s'), 1)} | "
            f"{_f(r.get('epsilon'), 2) if r.get('epsilon') is not None else 'none'} | "
            + " | ".join(_mia(r)) + f" | {cmds} |")


def _table(key: str, results: list[dict], with_commands: bool) -> list[str]:
    """One of the four comparison tables; the privacy-utility curve also takes the chest rows of the
    best model from the other tables (not the ablation's, not CLAHE), ordered by epsilon."""
    if key == "privacy_utility":
        rows = sorted([r for r in results if r["table"] == "privacy_utility" or (
            r["dataset"] == CHEST and r["model"] == BEST_MODEL[CHEST] and not r["clahe"] and r["table"] != "ablation")],
            key=lambda r: r["epsilon"] if r["epsilon"] is not None else 1e9)
    else:
        rows = [r for r in results if r["table"] == key]
    L = [f"## {TABLE_TITLES[key]}", ""]
    if not rows:
        return L + ["Not run yet (full benchmark only).", ""]
    if key != "datasets":
        return L + TABLE_COLUMNS + [_row(r, with_commands) for r in rows] + [""]
    for ds in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == ds]
        test = sub[0]["test"]
        leaked = test.get("private", test)["leaked_test_images_removed"]  # flat before issue 29
        L += [f"### {ds} ({test['n']} test images, {leaked} leaked removed)", ""] + TABLE_COLUMNS + \
             [_row(r, with_commands) for r in sub] + [""]
    return L


def _mia_goal(results: list[dict]) -> list[str]:
    """The eps = 2 goal: each eps = 2 bundle's audit against its non-private twin's."""
    pairs = []
    for r in results:
        goal = (r.get("audit") or {}).get("goal") or {}
        if r.get("epsilon") is not None and goal.get("applies_to_epsilon_at_most") and r.get("epsilon") <= 2.05 \
                and entry_target(r) == 2.0:
            twin = next((t for t in results if t.get("audit") and t.get("epsilon") is None
                         and t["dataset"] == r["dataset"] and t["model"] == r["model"]), None)
            pairs.append((r, twin))
    if not pairs:
        return []
    L = ["## Membership inference: eps = 2 bundles against their non-private twins", "",
         "Goal: attack AUC <= 0.55 and TPR at 1% FPR <= 2%, below the theoretical ceiling. With n non-members, "
         "FPRs below 1/n are not resolvable; TPR@0.1% FPR is then the TPR at zero false positives. With 500 "
         "non-members, TPR@1%FPR is read at 5 false positives: a point estimate (binomial standard error "
         "0.6 points at 2% over 500 members, before the threshold's own noise); eps_lb is a heuristic "
         "empirical epsilon (not a certified bound), so it can only warn. \"NOT met\" with eps_lb = 0 means "
         "the point estimate crossed the goal without the heuristic showing a leak.", "",
         "| bundle | MIA AUC | TPR@0.1%FPR | TPR@1%FPR | ceiling AUC | ceiling TPR@1% | eps_lb (heuristic) | goal | "
         "twin MIA AUC | twin TPR@1%FPR | command |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    return L + [_mia_goal_row(r, t) for r, t in pairs] + [""]


def _mia_goal_row(r: dict, twin: dict | None) -> str:
    a = r["audit"]
    ta = (twin or {}).get("audit")
    goal = "met" if (a.get("goal") or {}).get("met") else "NOT met"
    if a.get("exceeds_ceiling"):  # a failed valid check; before the "checks" block, the heuristic
        goal += " — PRIVACY AUDIT FAILED" if a.get("checks") else " — above the ceiling (heuristic, old audit)"
    return (f"| {r['id']} (eps {r['epsilon']:.2f}) | {_f(a['max_auc'])} | {_f(a['max_tpr_at_fpr']['0.001'])} | "
            f"{_f(a['max_tpr_at_fpr']['0.01'])} | {_f(a['ceiling']['auc'])} | "
            f"{_f(a['ceiling']['tpr_at_fpr']['0.01'])} | {_f(a['empirical_epsilon']['lower_bound'], 2)} | {goal} | "
            f"{_f(ta['max_auc']) if ta else '—'} | {_f(ta['max_tpr_at_fpr']['0.01']) if ta else '—'} | "
            f"`{r['commands'].get('audit', '')}` |")


def _robustness(results: list[dict]) -> list[str]:
    rob = [r for r in results if r.get("robustness")]
    if not rob:
        return []
    L = ["## Robustness to image degradations", ""]
    for r in rob:
        rr = r["robustness"]
        L += [f"### {r['label']} ({rr['n']} test images, degradations {rr['applied']})", "",
              robustness_table(rr), "", f"Command: `{r['commands']['robustness']}`", ""]
    return L


def _run_time(results: list[dict]) -> list[str]:
    timed = [r for r in results if r.get("seconds") is not None]
    if not timed:
        return []
    return (["## Run time", "", "Wall time of each entry on this machine (training, including decoding images and "
             "extracting backbone features when not cached yet, evaluation, throughput, audit and robustness).", "",
             "| entry | minutes |", "|---|---|"] + [f"| {r['id']} | {r['seconds'] / 60:.1f} |" for r in timed]
            + [f"| total | {sum(r['seconds'] for r in timed) / 60:.1f} |", ""])


def _reproduce(results: list[dict]) -> list[str]:
    done = {r["id"] for r in results}
    return ["## How to reproduce", "", "```", "python benchmarks/paper.py --quick    # this file's quick subset",
            "python benchmarks/paper.py            # everything (adds the paper's CNN, ResNet-50, VGG, ScatterNet, "
            "ablation, brain MRI, CT)",
            "privmed report RUN --out reports/paper   # HTML + Markdown with the privacy-utility curve", "```", "",
            "Not run: " + (", ".join(e["id"] for e in entries() if e["id"] not in done) or "nothing"), ""]


def one_class(r: dict) -> bool:
    """True when the model predicted a single class for every test image."""
    cm = r["test"].get("confusion_matrix")
    return bool(cm) and sum(1 for col in zip(*cm) if sum(col) > 0) == 1


def entry_target(r: dict) -> float | None:
    """The epsilon an entry asked for (the bundle's spent epsilon can be lower)."""
    return ((r.get("privacy") or {}).get("epsilon_target")) or r.get("epsilon")


def _cpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_paper(quick: bool = False, out: Path | str = "docs/PAPER.md", run_dir: Path | None = None,
              only: list[str] | None = None, progress: bool = True) -> dict:
    run_dir = Path(run_dir) if run_dir else REPO_ROOT / "runs" / ("paper-quick" if quick else "paper")  # git-ignored
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = [e for e in entries()
            if (e["quick"] or not quick) and (not only or any(e["id"].startswith(o) for o in only))]
    if quick:  # robustness on a test subset: every degradation re-runs the frozen backbone
        plan = [{**e, "robustness": min(e["robustness"], QUICK_ROBUSTNESS_IMAGES) if e["robustness"] else None}
                for e in plan]
    failed = {}
    for i, e in enumerate(plan, 1):
        if progress:
            print(f"[{i}/{len(plan)}] {e['id']}", file=sys.stderr)
        try:
            run_entry(e, run_dir, progress)
        except Exception as err:  # noqa: BLE001 - one failed entry must not lose the others
            failed[e["id"]] = f"{type(err).__name__}: {err}"
            print(f"error: {e['id']} failed: {failed[e['id']]}", file=sys.stderr)
    results = load_results(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_markdown(results, run_dir, quick))
    return {"markdown": out, "run_dir": run_dir, "results": results, "failed": failed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the paper's comparison tables, ablation, robustness and "
                                             "privacy-utility curve, or (--report) the report of a run directory")
    ap.add_argument("--quick", action="store_true",
                    help="the cheap subset (privmed's best model, its privacy-utility curve, COVID-19 X-ray)")
    ap.add_argument("--out", type=Path, help="the generated tables (default docs/PAPER.md, overwritten); "
                                             "with --report, the report's folder")
    ap.add_argument("--run-dir", type=Path, help="where bundles and raw results go (default runs/paper[-quick], "
                                                 "git-ignored)")
    ap.add_argument("--only", action="append", help="run only entries whose id starts with this (repeatable)")
    ap.add_argument("--report", type=Path, metavar="RUN_DIR", help="write the HTML + Markdown report of RUN_DIR")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.report:
        from paper_report import write_run_report

        out = write_run_report(a.report, a.out or a.report / "report")
        print(f"report written: {out['html']} and {out['markdown']}")
        return 0
    res = run_paper(quick=a.quick, out=a.out or Path("docs/PAPER.md"), run_dir=a.run_dir, only=a.only,
                    progress=not a.quiet)
    print(f"results written to {res['markdown']} (raw results in {res['run_dir']})")
    for k, v in res["failed"].items():
        print(f"error: {k}: {v}")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
