"""Classification metrics from labels and probabilities: accuracy, precision/recall/F1 (macro and
per class), AUC (one-vs-rest for multi-class), confusion matrix, sensitivity/specificity, ECE.
Computed by ``sklearn.metrics``; this module fixes the report's shape and the conventions."""
from __future__ import annotations

import numpy as np

from privmed.inference.calibration import expected_calibration_error


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC (``sklearn.metrics.roc_auc_score``: ties count one half); nan if one class is missing."""
    from sklearn.metrics import roc_auc_score

    y_true, score = np.asarray(y_true).astype(bool), np.asarray(score, dtype=float)
    if y_true.all() or not y_true.any():
        return float("nan")
    return float(roc_auc_score(y_true, score))


def classification_report(labels, probs, classes: list[str], pred=None) -> dict:
    """``pred``: the served decision (an operating point for two classes); argmax when omitted."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = probs.argmax(1) if pred is None else np.asarray(pred)
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(classes)
    cm = confusion_matrix(labels, pred, labels=range(k))  # rows: true class, columns: predicted
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
    per = {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i]),
               "auc": roc_auc(labels == i, probs[:, i])} for i, c in enumerate(classes)}
    out = {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "precision_macro": float(np.mean([v["precision"] for v in per.values()])),
        "recall_macro": float(np.mean([v["recall"] for v in per.values()])),
        "f1_macro": float(np.mean([v["f1"] for v in per.values()])),
        "auc": per[classes[1]]["auc"] if k == 2 else float(np.nanmean([v["auc"] for v in per.values()])),
        "ece": expected_calibration_error(probs, labels),
        "per_class": per,
        "confusion_matrix": cm.tolist(),
        "majority_baseline_accuracy": float(np.bincount(labels, minlength=k).max() / len(labels)),
    }
    if k == 2:  # class 1 is the finding (pneumonia): sensitivity = its recall
        out["sensitivity"] = per[classes[1]]["recall"]
        out["specificity"] = per[classes[0]]["recall"]
    return out
