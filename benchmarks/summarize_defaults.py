"""Print the Markdown table of the default bundles' test metrics from runs/eval/ (written by
benchmarks/train_defaults.sh). Numbers are read, never typed in by hand."""
import json
from pathlib import Path

EVAL = Path("runs/eval")


def row(name: str) -> str:
    r = json.loads((EVAL / f"{name}.test.json").read_text())
    t = json.loads((EVAL / f"{name}.train.json").read_text())
    p = t["privacy"]
    eps = f"{p['epsilon']:.3f}" if p.get("epsilon") is not None else "none"
    extra = (f"{r['sensitivity']:.3f} / {r['specificity']:.3f}" if "sensitivity" in r else "-")
    return (f"| {name} | {r['n']} ({r['leaked_test_images_removed']} leaked removed) | {r['accuracy']:.4f} | "
            f"{r['auc']:.4f} | {r['f1_macro']:.4f} | {extra} | {r['ece']:.3f} | {r['majority_baseline_accuracy']:.4f} | "
            f"{eps} | {t['training_seconds']} |")


def ledger(name: str) -> str:
    p = json.loads((EVAL / f"{name}.train.json").read_text())["privacy"]
    return (f"- {name}: epsilon {p['epsilon']} (target {p['epsilon_target']}), delta {p['delta']}, noise multiplier "
            f"{p['noise_multiplier']:.4f}, max_grad_norm {p['max_grad_norm']}, sample rate {p['sample_rate']:.4f}, "
            f"steps {p['steps']}, epochs {p['epochs']}, accountant {p['accountant']}, unit {p['unit_of_privacy']}, "
            f"Opacus {p['opacus_version']}")


if __name__ == "__main__":
    names = [n for ds in ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray") for n in (ds, f"{ds}_nodp")
             if (EVAL / f"{n}.test.json").is_file()]
    print("| bundle | test images | accuracy | AUC | F1 macro | sens / spec | ECE | majority baseline | epsilon | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        print(row(n))
    print()
    for n in names:
        if not n.endswith("_nodp"):
            print(ledger(n))
