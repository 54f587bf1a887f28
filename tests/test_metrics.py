"""``evaluation.metrics`` against scikit-learn (and a brute-force AUC) on real predictions: the test
split of covid19_xray through the served batched predictor."""
from __future__ import annotations

import numpy as np
import pytest

skm = pytest.importorskip("sklearn.metrics")

from privmed.data.datasets import open_dataset  # noqa: E402
from privmed.evaluation.evaluate import predict_records  # noqa: E402
from privmed.evaluation.metrics import classification_report, roc_auc  # noqa: E402
from privmed.inference import load_model  # noqa: E402


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney by counting every (positive, negative) pair; ties count one half."""
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def real(small_bundle, data_root):
    model = load_model(small_bundle)
    records = open_dataset("covid19_xray", data_root).records("test")
    probs = predict_records(model, records, progress=False)
    return model, np.array([r.label for r in records]), probs


def test_multiclass_report_equals_scikit_learn(real):
    model, y, probs = real
    k = len(model.classes)
    pred = model.label_index(probs)
    rep = classification_report(y, probs, model.classes, pred=pred)
    assert rep["n"] == len(y) and k >= 3 and len(set(y)) == k
    assert rep["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, c in enumerate(model.classes):
        got = rep["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert got["auc"] == pytest.approx(_pairwise_auc(y == i, probs[:, i]))
    for name in ("precision", "recall", "f1"):
        want = getattr(skm, f"{name}_score")(y, pred, labels=range(k), average="macro", zero_division=0)
        assert rep[f"{name}_macro"] == pytest.approx(want)
    assert rep["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_binary_report_equals_scikit_learn(real):
    """One class against the rest: AUC on the finding's score, sensitivity and specificity."""
    model, y, probs = real
    yb = (y == 0).astype(int)
    pb = np.stack([1 - probs[:, 0], probs[:, 0]], 1)
    rep = classification_report(yb, pb, ["rest", model.classes[0]])
    pred = pb.argmax(1)
    assert rep["auc"] == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]))
    assert rep["auc"] == pytest.approx(_pairwise_auc(yb == 1, pb[:, 1]))
    assert rep["sensitivity"] == pytest.approx(skm.recall_score(yb, pred, pos_label=1, zero_division=0))
    assert rep["specificity"] == pytest.approx(skm.recall_score(yb, pred, pos_label=0, zero_division=0))
    assert np.isnan(roc_auc(np.ones(5, bool), np.arange(5)))  # one class only: undefined, not an error
