"""The report of a ``benchmarks/paper.py`` run directory: comparison table, privacy-utility curve and the
membership-inference audits, rendered by ``privmed.evaluation.report``."""
from __future__ import annotations

import sys
from pathlib import Path

from privmed.evaluation.report import Doc, plot_mia, plot_privacy_utility, write_doc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper import load_results  # noqa: E402


def is_run_dir(target: Path) -> bool:
    return (target / "results.json").is_file() or any(Path(target).glob("*/result.json"))


def run_report(run_dir: Path, out: Path) -> Doc:
    results = load_results(run_dir)
    doc = Doc(f"privmed benchmark report: {run_dir.name}", out)
    doc.h("Results")
    main = [r for r in results if r.get("table") == "main"]
    if main:
        doc.table(["model", "dataset", "accuracy", "precision", "recall", "F1", "AUC", "images/s", "epsilon",
                   "MIA AUC"],
                  [[r["label"], r["dataset"], r["test"]["accuracy"], r["test"]["precision_macro"],
                    r["test"]["recall_macro"], r["test"]["f1_macro"], r["test"]["auc"], r.get("images_per_s"),
                    r.get("epsilon"), (r.get("audit") or {}).get("max_auc")] for r in main])
    curve = [r for r in results if r.get("table") == "privacy_utility" or (
        r["dataset"] == "chest_xray_pneumonia" and r["model"] == "effnet_lite0_head" and not r.get("clahe"))]
    curve.sort(key=lambda r: r["epsilon"] if r.get("epsilon") is not None else float("inf"))
    if curve:
        rows = [{"epsilon": r.get("epsilon"), "delta": r.get("delta"), "accuracy": r["test"]["accuracy"],
                 "auc": r["test"]["auc"], "mia_auc": (r.get("audit") or {}).get("max_auc")} for r in curve]
        doc.h("Privacy-utility curve")
        doc.fig(plot_privacy_utility(rows, "accuracy"), "privacy_utility_accuracy",
                "Test accuracy and MIA AUC against epsilon (head model); dotted: non-private twin")
        doc.table(["epsilon", "accuracy", "AUC", "MIA AUC"],
                  [[r["epsilon"] if r["epsilon"] is not None else "none", r["accuracy"], r["auc"], r["mia_auc"]]
                   for r in rows])
    audits = [r for r in results if r.get("audit")]
    if audits:
        doc.h("Membership-inference audits")
        best = max(audits, key=lambda r: r["audit"]["max_auc"])
        doc.fig(plot_mia(best["audit"]), "mia_roc",
                f"MIA ROC of the most leaking audited model ({best['label']}, {best['dataset']})")
        doc.table(["entry", "epsilon", "MIA AUC", "TPR@1%FPR", "ceiling AUC",
                   "heuristic empirical eps (not a certified bound)"],
                  [[r["id"], r.get("epsilon") if r.get("epsilon") is not None else "none", r["audit"]["max_auc"],
                    r["audit"]["max_tpr_at_fpr"]["0.01"], (r["audit"].get("ceiling") or {}).get("auc", "—"),
                    r["audit"]["empirical_epsilon"]["lower_bound"]] for r in audits])
    return doc


def write_run_report(run_dir: str | Path, out: str | Path) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_doc(run_report(run_dir, out), out)
