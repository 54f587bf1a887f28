"""The validation releases: the Gaussian mechanism on the validation units that the bundle's
temperature, decision threshold and OOD refusal threshold are read from, and the OOD detector's
class means released on the training units. Each unit contributes one row of bounded norm (its
images' rows averaged); the noise is planned before training, with the budget
(``releases.validation_history``). Serving applies the results (``inference/``).
"""
from __future__ import annotations

import numpy as np

from privmed.privacy import calibration as cal
from privmed.privacy import ood
from privmed.privacy.ledger import release
from privmed.privacy.randomness import SecretStream
from privmed.privacy.releases import gaussian_sum, validation_history

W_STAT, W_HIST = 0.6, 0.8


def per_unit_mean(rows: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Average each unit's rows: a unit with many images still contributes one row of norm <= the bound."""
    n = int(units.max()) + 1
    out = np.zeros((n, rows.shape[1]))
    np.add.at(out, units, rows)
    return out / np.bincount(units, minlength=n)[:, None]


def validation_releases(logits: np.ndarray, emb: np.ndarray, y: np.ndarray, units: np.ndarray, k: int,
                        privacy: dict | None, data: str = "validation", means: dict | None = None,
                        camera_emb: np.ndarray | None = None,
                        ) -> tuple[dict, dict | None, dict | None, list[dict], dict]:
    """(calibration, decision, ood block, ledger releases, run-log notes) from validation data (``data``
    names it in the texts: a site calibration passes "the site sample"; each release's side stays
    "validation" for the budget registry).

    Under DP two Gaussian releases, each on per-unit rows: (1) class counts + margin histogram, and the
    OOD class means unless ``means`` (``ood.means_from_release`` of the training side's release) are
    given, (2) histogram of OOD scores, and with ``camera_emb`` (the embeddings of simulated phone photos of
    the same images, ``camera_photos``) a second histogram of theirs for the camera path's threshold, each
    at half the squared norm. Whether there are enough units for (2) and for using (1) is
    decided on (1)'s own noisy unit count, never on the exact one. Without DP the same, exact."""
    dp = privacy is not None
    sigma = validation_history(privacy["epsilon_target"], privacy["delta"], privacy["accountant"])[0][0] if dp else 0.0
    stream = SecretStream()
    # one release, rows of norm 1, each part scaled to its share W of the unit norm (sum of W^2 <= 1):
    # the margin histogram (temperature, operating point) gets the larger share
    parts = ([(ood.mean_rows(emb, y, k), ood.MEAN_SENSITIVITY, W_STAT)] if means is None else
             [(np.eye(k)[y], 1.0, W_STAT)]) + [(cal.margin_rows(logits, y, k), 1.0, W_HIST)]
    rows = np.concatenate([r * (w / sens) for r, sens, w in parts], 1)
    rel1 = gaussian_sum(per_unit_mean(rows, units), 1.0, sigma, stream)
    out, start = [], 0
    for r, sens, w in parts:  # undo each part's scaling: (release, noise std on that scale)
        out.append((rel1[start:start + r.shape[1]] * sens / w, sigma * sens / w))
        start += r.shape[1]
    (first, _), (hist, hist_std) = out
    noisy_counts = np.maximum(first[-k:], 1.0)
    n_units = float(noisy_counts.sum()) if dp else int(units.max()) + 1
    release1 = release(f"{data}: class counts + margin histogram" + ("" if means else " + OOD class means") +
                       " (Gaussian mechanism)", sigma, on="validation", sensitivity=1.0)
    if dp and n_units < ood.MIN_UNITS:
        note = (f"{data} has about {n_units:.0f} units (DP estimate), too few for DP statistics: temperature "
                "1, argmax decision, no out-of-distribution detector (the quality gate still runs)")
        return ({"method": "none", "temperature": 1.0, "note": note}, None, None, [release1],
                {"note": note, "n_units_validation_dp": n_units})
    temperature = cal.temperature_from_histogram(cal.denoise(hist, hist_std))  # raw: unbounded as T -> 0
    how = (f"Gaussian mechanism on {data} (noise multiplier {sigma:.4g})" if dp else f"exact, on {data}")
    det = means or ood.means_from_release(first, k, emb.shape[1])
    fitted_on = means["fitted_on"] if means else f"class means: {how}"
    s, camera = ood.mean_scores(emb, det), None if camera_emb is None else ood.mean_scores(camera_emb, det)
    thresholds = score_thresholds([s] if camera is None else [s, camera], units, sigma, stream)
    block = ood.mean_block(det, thresholds[0], f"{fitted_on}; threshold: score histogram of {data} (about "
                                               f"{n_units:.0f} units), {how}")
    if camera is not None:
        block["camera_threshold"] = thresholds[1]
        block["camera_fitted_on"] = (f"simulated phone photos of the same {data} images (evaluation.camera_sim), "
                                     "rectified as the camera path does; the same release")
    prior = noisy_counts / noisy_counts.sum()  # post-processing of release (1)'s class counts
    calibration = {"method": "temperature scaling on a histogram of true-class margins", "temperature": temperature,
                   "fitted_on": how, "class_prior": [round(float(v), 4) for v in prior]}
    decision = None
    if k == 2:
        t, _ = cal.threshold_from_histogram(hist, hist_std)  # raw noisy counts: sums over bins stay unbiased
        decision = {"positive_class_index": 1, "threshold_probability": float(1 / (1 + np.exp(-t / temperature))),
                    "threshold_margin": t,
                    "chosen_by": f"centre of the thresholds within noise of the largest balanced accuracy, {how}"}
    releases = [] if not dp else [
        release1,
        release(f"{data}: OOD score histogram (Gaussian mechanism)", sigma, on="validation", sensitivity=1.0)]
    notes = {"exact_in_sample_ood_refusal": float(np.mean(s > thresholds[0])), "n_units_validation_dp": n_units}
    return calibration, decision, block, releases, notes


def score_thresholds(scores: list[np.ndarray], units: np.ndarray, sigma: float, stream) -> list[float]:
    """One Gaussian release of the score histograms side by side (each part scaled to norm 1/sqrt(len)),
    and the refusal threshold read off each (post-processing)."""
    w = 1 / np.sqrt(len(scores))
    rows = np.concatenate([ood.score_rows(s, ood.MEAN_EDGES) * w for s in scores], 1)
    rel = gaussian_sum(per_unit_mean(rows, units), 1.0, sigma, stream) / w
    return [ood.threshold_from_histogram(h, noise_std=sigma / w, edges=ood.MEAN_EDGES)
            for h in np.split(rel, len(scores))]


def ood_means_release(emb: np.ndarray, y: np.ndarray, units: np.ndarray, k: int, sigma: float,
                      stream: SecretStream | None = None) -> dict:
    """Class means of the embeddings' mid-level part from one Gaussian release on per-unit rows
    (sensitivity sqrt(2)); ``sigma`` 0: exact."""
    rows = per_unit_mean(ood.mean_rows(emb, y, k), units)
    det = ood.means_from_release(gaussian_sum(rows, ood.MEAN_SENSITIVITY, sigma, stream), k, emb.shape[1])
    det["fitted_on"] = (f"class means: Gaussian mechanism on the training units (noise multiplier {sigma:g})"
                        if sigma else "class means: exact, on the training images")
    return det
