"""The Markdown tables of the default bundles from runs/eval/ (written by benchmarks/train_defaults.sh):
test metrics, each ledger's full recipe, and each audit. Numbers are read, never typed in by hand.

    python benchmarks/summarize_defaults.py                      # print
    python benchmarks/summarize_defaults.py --write docs/RESULTS.md   # the block between markers of the results page
"""
import argparse
import json
from pathlib import Path

EVAL = Path("runs/eval")
DATASETS = ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray", "covid19_ct")
BEGIN, END = "<!-- defaults:begin (benchmarks/summarize_defaults.py) -->", "<!-- defaults:end -->"


def _load(name: str, what: str) -> dict | None:
    f = EVAL / f"{name}.{what}.json"
    return json.loads(f.read_text()) if f.is_file() and f.stat().st_size else None


def row(name: str) -> str:
    r, t = _load(name, "test"), _load(name, "train")
    p = t["privacy"]
    eps = f"{p['epsilon']:.3f}" if p.get("epsilon") is not None else "none"
    extra = (f"{r['sensitivity']:.3f} / {r['specificity']:.3f}" if "sensitivity" in r else "-")
    leaked = r.get("private", r).get("leaked_test_images_removed", 0)  # flat in runs from before issue 29
    return (f"| {name} | {r['n']} ({leaked} with copies in train removed) | {r['accuracy']:.4f} | "
            f"{r['auc']:.4f} | {r['f1_macro']:.4f} | {extra} | {r['ece']:.3f} | "
            f"{r['majority_baseline_accuracy']:.4f} | "
            f"{eps} | {t['training_seconds']} |")


def _ood_noise(p: dict) -> str:
    """Bundles since 2026-12-05 release their OOD class means on the training units."""
    r = [r for r in p["releases"] if r["release"].startswith("OOD detector class means")]
    return f"OOD class-mean noise {r[0]['noise_multiplier']} (train side), " if r else ""


def _public(p: dict) -> str:
    """Bundles since 2026-12-05 may project their features on a declared public corpus (no epsilon)."""
    pd = p.get("public_data")
    return f"public projection k {pd['k']} on {pd['name']} ({pd['images']} images, no epsilon), " if pd else ""


def ledger(name: str) -> str:
    p = _load(name, "train")["privacy"]
    budget = p.get("dataset_budget") or {}
    return (f"- {name}: epsilon {p['epsilon']} (train {p['epsilon_train']}, validation "
            f"{p.get('epsilon_validation', 0)}; target {p['epsilon_target']}), delta {p['delta']}, "
            f"{p.get('neighbouring_relation', 'add/remove')}, noise multiplier {p['noise_multiplier']:.4f}, "
            f"max_grad_norm {p['max_grad_norm']}, sample rate {p['sample_rate']:.4f}, steps {p['steps']}, "
            f"epochs {p['epochs']}, accountant {p['accountant']}, unit {p['unit_of_privacy']}, class-count noise "
            f"{p['releases'][0]['noise_multiplier']}, {_ood_noise(p)}{_public(p)}DP units train / validation "
            f"{p.get('n_units_train_dp')} / "
            f"{p.get('n_units_validation_dp')}, validation releases "
            f"{sum(r['on'] == 'validation' for r in p['releases'])}, dataset total "
            f"{budget.get('epsilon_all_runs')} over {budget.get('runs')} run(s) in this machine's registry, "
            f"Opacus {p['opacus_version']}, "
            f"randomness ChaCha20 ({'256-bit' if '256-bit' in p['randomness'] else '?'} key)")


def audit(name: str) -> str:
    a = _load(name, "audit")
    if not a:
        return f"| {name} | not run | | | | |"
    att = a.get("attacks", {})
    cells = []
    for k in ("loss", "lira_offline"):
        x = att.get(k)
        tpr = None if not x else x.get("tpr_at_1pct_fpr", x.get("tpr_at_fpr", {}).get("0.01", float("nan")))
        cells.append("-" if not x else f"{x['auc']:.3f} / {tpr:.3f}")
    canary = a.get("canary_audit") or (_load(name, "canary") or {}).get("canary_audit") or {}  # --k 0 run
    can = (f"{canary['correct']}/{canary['guesses']} guesses right, {canary['canaries']} canaries: p = "
           f"{canary['p_value']:.3g}, {'FAILED' if canary.get('failed') else 'passed'}"
           if canary.get("p_value") is not None else "not run")
    return (f"| {name} | {a['members']['n']} / {a['nonmembers']['n']} | {cells[0]} | {cells[1]} | "
            f"{a['empirical_epsilon']['lower_bound']:.3f} | {can} |")


def markdown() -> str:
    names = [ds for ds in DATASETS if _load(ds, "test") and _load(ds, "train")]
    lines = ["| bundle | test images | accuracy | AUC | F1 macro | sens / spec | ECE | majority baseline | epsilon "
             "| train s |",
             "|---|---|---|---|---|---|---|---|---|---|", *map(row, names), "", *map(ledger, names), "",
             "| bundle | audit members / non-members | loss AUC / TPR@1%FPR | LiRA AUC / TPR@1%FPR | heuristic eps "
             "| one-run canary check |",
             "|---|---|---|---|---|---|", *map(audit, names)]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    doc = path.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", type=Path, help="replace the block between the markers in this Markdown file")
    a = ap.parse_args()
    md = markdown()
    write(a.write, md) if a.write else print(md)
