"""Reports: one self-contained HTML file (plots embedded as PNG data URIs) plus Markdown with the
same content (plots as PNG files beside it).

* a bundle: training/validation curves with epsilon per epoch, test confusion matrix, ROC,
  reliability diagram, membership-inference ROC against the theoretical ceiling (from the
  private run log's ``audit.json``; run ``privmed privacy audit`` first), privacy ledger;
* a ``benchmarks/paper.py`` run directory: ``benchmarks/paper_report.py`` (comparison table, privacy-utility curve).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from privmed.bundle.format import read_run_log
from privmed.config import TrainConfig
from privmed.errors import PrivmedError
from privmed.evaluation.attacks import roc_curve
from privmed.evaluation.dp_bounds import ceiling_auc, ceiling_tpr
from privmed.evaluation.evaluate import predict_records
from privmed.evaluation.metrics import classification_report, roc_auc
from privmed.inference.predictor import load_model
from privmed.privacy.ledger import statement
from privmed.training.data import test_records


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Doc:
    """Collects sections once and renders both HTML and Markdown."""

    def __init__(self, title: str, out: Path):
        self.title, self.out, self.parts = title, out, []

    def h(self, text: str):
        self.parts.append(("h", text))

    def p(self, text: str):
        self.parts.append(("p", text))

    def table(self, header: list[str], rows: list[list]):
        self.parts.append(("table", (header, rows)))

    def fig(self, fig, name: str, caption: str):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        _plt().close(fig)
        data = buf.getvalue()
        (self.out / f"{name}.png").write_bytes(data)
        self.parts.append(("fig", (name, caption, base64.b64encode(data).decode())))

    def render(self) -> tuple[str, str]:
        h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:13px}.err{color:#b00;"
             "font-weight:bold}</style></head><body>", f"<h1>{html.escape(self.title)}</h1>"]
        md = [f"# {self.title}", ""]
        for kind, v in self.parts:
            if kind == "h":
                h.append(f"<h2>{html.escape(v)}</h2>")
                md += [f"## {v}", ""]
            elif kind == "p":
                cls = " class='err'" if v.startswith("ERROR") else ""
                h.append(f"<p{cls}>{html.escape(v)}</p>")
                md += [v, ""]
            elif kind == "table":
                header, rows = v
                h.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>" +
                         "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                                 for r in rows)
                         + "</table>")
                md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                md += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows] + [""]
            else:
                name, caption, b64 = v
                h.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                md += [f"![{caption}]({name}.png)", "", f"*{caption}*", ""]
        h.append("</body></html>")
        return "\n".join(h), "\n".join(md)


def _fmt(c) -> str:
    if isinstance(c, float):
        if np.isnan(c):
            return "n/a"
        if c != 0 and abs(c) < 1e-3:
            return f"{c:.3g}"
        return f"{c:.4f}" if abs(c) < 100 else f"{c:.1f}"
    return "—" if c is None else str(c)


# --------------------------------------------------------------------------- plots

def plot_history(history: list[dict]):
    """Left: train loss and validation accuracy per epoch; right: epsilon spent (DP runs)."""
    plt = _plt()
    has_eps = any("epsilon" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_eps else 1, figsize=(10 if has_eps else 6.5, 3.6), squeeze=False)
    ax = axes[0][0]
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h.get("train_loss", np.nan) for h in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_accuracy"] for h in history], "s-", color="tab:green", label="validation accuracy")
    ax2.set_ylabel("validation accuracy")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    if has_eps:
        ax3 = axes[0][1]
        ax3.plot(ep, [h.get("epsilon", np.nan) for h in history], "^-", color="tab:red")
        ax3.set_xlabel("epoch")
        ax3.set_ylabel("epsilon spent (cumulative)")
        ax3.set_ylim(0, None)
        ax3.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion(cm, classes):
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.3 * len(classes) + 2, 1.1 * len(classes) + 1.6))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def plot_roc(labels, probs, classes):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    targets = [1] if len(classes) == 2 else range(len(classes))
    for k in targets:
        y = np.asarray(labels) == k
        if y.all() or not y.any():
            continue
        f, t, _ = roc_curve(y, probs[:, k])
        ax.plot(f, t, label=f"{classes[k]} (AUC {roc_auc(y, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_reliability(labels, probs, bins: int = 10):
    plt = _plt()
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    mids, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            mids.append(conf[m].mean())
            accs.append(correct[m].mean())
            counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(mids, accs, "o-", label="model (calibrated)")
    for x, y, c in zip(mids, accs, counts):
        ax.annotate(str(c), (x, y), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return fig


def plot_mia(audit: dict):
    """Attack ROC curves (log axes) against the (eps, delta) ceiling."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    grid = np.logspace(-4, 0, 300)
    c = audit["ceiling"]
    if c.get("epsilon") is not None:
        ax.plot(grid, ceiling_tpr(grid, c["epsilon"], c["delta"]), "k-", lw=2,
                label=f"ceiling eps={c['epsilon']:.2f} (AUC {c['auc']:.3f})")
    for name, a in audit["attacks"].items():
        f = np.maximum(a["roc"]["fpr"], 1e-4)
        ax.step(f, a["roc"]["tpr"], where="post", label=f"{name} (AUC {a['auc']:.3f})")
    ax.plot(grid, grid, ":", color="grey", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(1e-4, 1.05)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_privacy_utility(rows: list[dict], metric: str = "accuracy"):
    """rows: {"epsilon": float | None, metric: float, "mia_auc": float | None}; None epsilon drawn at the right."""
    plt = _plt()
    dp = sorted([r for r in rows if r.get("epsilon") is not None], key=lambda r: r["epsilon"])
    nodp = [r for r in rows if r.get("epsilon") is None]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [r["epsilon"] for r in dp]
    ax.plot(xs, [r[metric] for r in dp], "o-", label=f"test {metric} (DP)")
    if any(r.get("mia_auc") is not None for r in dp):
        ax.plot(xs, [r.get("mia_auc", np.nan) for r in dp], "s--", color="tab:red", label="MIA AUC (best attack)")
        ee = np.linspace(min(xs), max(xs), 50)
        ax.plot(ee, [ceiling_auc(e, dp[0].get("delta") or 0.0) for e in ee], ":", color="tab:red",
                label="MIA AUC ceiling")
    for r in nodp:
        ax.axhline(r[metric], color="tab:blue", ls=":", lw=1)
        ax.annotate(f"no DP: {r[metric]:.3f}", (max(xs) if xs else 1, r[metric]), fontsize=8,
                    textcoords="offset points", xytext=(-60, 4))
        if r.get("mia_auc") is not None:
            ax.axhline(r["mia_auc"], color="tab:red", ls=":", lw=1)
    ax.set_xscale("log")
    if xs:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{x:.2g}" for x in xs])
    ax.set_xlabel("epsilon spent")
    ax.set_ylabel(f"test {metric} / MIA AUC")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- reports

def bundle_report(bundle: Path, out: Path, data_root: Path | None = None, progress: bool = False) -> Doc:
    model = load_model(bundle)
    meta = model.bundle
    doc = Doc(f"privmed report: {meta.model_id or bundle.name}", out)
    priv = meta.ledger
    doc.h("Model")
    doc.table(["field", "value"], [["bundle", str(bundle)], ["dataset", meta.dataset],
                                   ["classes", ", ".join(meta.classes)], ["model", meta.model.name],
                                   ["input size", meta.input.height],
                                   ["released weights", meta.released_weights or ""],
                                   ["weights sha256", (meta.weights_sha256 or "")[:16] + "…"]])
    doc.h("Privacy")
    if not priv.private:
        doc.p("Non-private model (no DP guarantee).")
    else:
        doc.table(["epsilon", "delta", "noise multiplier", "clip", "sample rate", "steps", "accountant", "unit"],
                  [[priv.epsilon, priv.delta, priv.noise_multiplier, priv.max_grad_norm,
                    priv.sample_rate, priv.steps, priv.accountant, priv.unit_of_privacy]])
        doc.p(statement(meta.raw) + " See docs/PRIVACY.md.")
    history = read_run_log(bundle).get("history")
    if history:  # from the private run log: this report is for whoever trained the model
        doc.h("Training (private run log)")
        doc.fig(plot_history(history), "training_curves",
                "Validation accuracy and epsilon spent per epoch (training loss without DP only)")
    cfg_kw = {"dataset": meta.dataset, "preprocess": meta.preprocess_args()}
    if data_root:
        cfg_kw["data_root"] = data_root
    try:
        cfg = TrainConfig(**cfg_kw)
        records, _ = test_records(cfg)  # how many leaked images were removed: private (issue 29), not shown
        probs = predict_records(model, records, progress)
        labels = np.array([r.label for r in records])
        rep = classification_report(labels, probs, model.classes, pred=model.label_index(probs))
        doc.h("Test set")
        doc.p(f"{len(records)} test images (after removing any with an exact or near copy in train). "
              f"Majority-class baseline accuracy {rep['majority_baseline_accuracy']:.4f}.")
        doc.table(["accuracy", "precision (macro)", "recall (macro)", "F1 (macro)", "AUC", "ECE"],
                  [[rep["accuracy"], rep["precision_macro"], rep["recall_macro"], rep["f1_macro"], rep["auc"],
                    rep["ece"]]])
        doc.fig(plot_confusion(rep["confusion_matrix"], model.classes), "confusion_matrix",
                "Confusion matrix on the test set (rows true, columns predicted)")
        doc.fig(plot_roc(labels, probs, model.classes), "roc", "ROC on the test set")
        doc.fig(plot_reliability(labels, probs), "reliability",
                "Reliability diagram (temperature-scaled probabilities; numbers are images per bin)")
    except Exception as e:  # noqa: BLE001 - a report without test data still shows training and privacy
        doc.h("Test set")
        doc.p(f"not evaluated: {e}")
    _audit_section(doc, bundle, read_run_log(bundle, "audit.json") or None)
    return doc


def _audit_section(doc, bundle, audit: dict | None) -> None:
    """The membership-inference audit as the report shows it: failed valid checks first, heuristics
    labelled as such."""
    doc.h("Membership-inference audit")
    if not audit:
        doc.p(f"No audit yet: run `privmed privacy audit {bundle}`.")
        return
    checks = audit.get("checks")
    if audit.get("exceeds_ceiling") and checks:  # a statistically valid check failed
        doc.p(f"ERROR: PRIVACY AUDIT FAILED ({checks['confidence']:.0%} jointly over the valid checks): "
              + "; ".join(audit["problems"]))
    elif audit.get("exceeds_ceiling"):  # an audit from before the valid checks: its flag was the heuristic
        doc.p("Warning (heuristic, from an older audit; not a valid test, rerun `privmed privacy audit`): "
              + "; ".join(audit["problems"]))
    for w in audit.get("warnings") or []:
        doc.p(f"Warning (heuristic, cannot fail the audit): {w}")
    rows = [[name, a["auc"], f"[{a['auc_ci95'][0]:.3f}, {a['auc_ci95'][1]:.3f}]", a["tpr_at_fpr"]["0.001"],
             a["tpr_at_fpr"]["0.01"], a["eps_lower_bound"]["eps_lb"]] for name, a in audit["attacks"].items()]
    c = audit["ceiling"]
    rows.append(["ceiling from (eps, delta)", c["auc"], "", c["tpr_at_fpr"]["0.001"], c["tpr_at_fpr"]["0.01"],
                 c.get("epsilon")])
    doc.table(["attack", "AUC", "95% CI", "TPR@0.1% FPR", "TPR@1% FPR",
               "heuristic eps (not a certified bound)"], rows)
    src = " + ".join(f"{v} {k}" for k, v in audit["nonmembers"]["source"].items() if v)
    doc.p(f"{audit['members']['n']} members (training images) vs {audit['nonmembers']['n']} non-members "
          f"({src} images), {audit['reference_models']['k']} reference models; with this many "
          f"images the heuristic can show at most eps = "
          f"{audit['empirical_epsilon']['max_certifiable_at_this_n']:.2f}, and FPRs below "
          f"{1 / audit['nonmembers']['n']:.4f} cannot be resolved.")
    ca = audit.get("canary_audit")
    if ca and "skipped" not in ca:  # the statistically valid check (docs/PRIVACY.md)
        pv = f", p-value {ca['p_value']:.3g} for the claimed (eps, delta)" if "p_value" in ca else ""
        doc.p(f"One-run canary audit of the recipe: {ca['correct']}/{ca['guesses']} correct guesses on "
              f"{ca['canaries']} canaries{pv}; eps >= {ca['eps_lower_bound']:.3f} certified at "
              f"{ca['confidence']:.1%}.")
    elif ca:
        doc.p(f"One-run canary audit: {ca['skipped']}")
    elif checks is not None and not checks.get("can_fail"):
        doc.p("No statistically valid check ran, so this audit cannot fail: the numbers above are heuristic.")
    doc.fig(plot_mia(audit), "mia_roc", "Membership-inference ROC (log axes) against the (eps, delta) ceiling")


def write_report(target: str | Path, out: str | Path, data_root: Path | None = None, progress: bool = False) -> dict:
    target, out = Path(target), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (target / "metadata.json").is_file():
        raise PrivmedError(f"{target} is not a bundle (no metadata.json)")
    return write_doc(bundle_report(target, out, data_root, progress), out)


def write_doc(doc: Doc, out: Path) -> dict:
    h, md = doc.render()
    (out / "report.html").write_text(h)
    (out / "report.md").write_text(md)
    figures = [v[0] for k, v in doc.parts if k == "fig"]
    (out / "report.json").write_text(json.dumps({"title": doc.title, "figures": figures}))
    return {"html": out / "report.html", "markdown": out / "report.md"}
