"""Classification metrics from labels and probabilities: accuracy, precision/recall/F1 (macro and
per class), AUC (one-vs-rest for multi-class), confusion matrix, sensitivity/specificity, ECE."""
from __future__ import annotations

import numpy as np

from privmed.inference.calibration import expected_calibration_error


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC via the rank statistic (ties averaged); nan if one class is missing."""
    y_true, score = np.asarray(y_true).astype(bool), np.asarray(score, dtype=float)
    n_pos, n_neg = y_true.sum(), (~y_true).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_s = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_report(labels, probs, classes: list[str], pred=None) -> dict:
    """``pred``: the served decision (an operating point for two classes); argmax when omitted."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = probs.argmax(1) if pred is None else np.asarray(pred)
    k = len(classes)
    cm = np.zeros((k, k), int)
    np.add.at(cm, (labels, pred), 1)
    per = {}
    for i, c in enumerate(classes):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        per[c] = {"precision": float(p), "recall": float(r), "f1": float(2 * p * r / (p + r) if p + r else 0.0),
                  "support": int(cm[i].sum()), "auc": roc_auc(labels == i, probs[:, i])}
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
