"""What a bundle states about its privacy: the ledger, and one sentence a clinician can read.

The ledger keeps every number an independent accountant needs to recompute epsilon: for each
release, (noise multiplier, sample rate, steps), and delta. Releases on the training units and on
the validation units compose separately; the two sets of units are disjoint (the validation split
assigns each patient by a keyed hash of its own id, independent of everyone else), so by parallel
composition each unit's guarantee is the larger of the two.
"""
from __future__ import annotations

import numpy as np

from privmed.privacy.accounting import epsilon_of
from privmed.privacy.randomness import SOURCE
from privmed.privacy.releases import units_estimate

RELATION = "add/remove one unit (all of a unit's images together)"
ASSUMPTIONS = ("public: the list of classes, the model, every mechanism setting (epsilon, delta, C, q, steps, "
               "sigma) and the official test split (a public benchmark: its metrics are published, not "
               "protected). Not published: the numbers of units and images; the bundle holds DP estimates only "
               "(add/remove neighbours assume these counts stay private)")


COUNTS = "class counts per unit (Gaussian mechanism, sensitivity 1)"
OOD_MEANS = "OOD detector class means (Gaussian mechanism, rows of norm sqrt(2) scaled to 1)"
DP_SGD = "DP-SGD (per-unit clipping, Gaussian noise, Poisson sampling of units)"


def release(what: str, noise_multiplier: float, sample_rate: float = 1.0, steps: int = 1, on: str | None = None,
            **extra) -> dict:
    """One ledger record: a release and the (noise multiplier, sample rate, steps) an accountant
    needs; ``on``: the side whose units it is on ("train", "validation"; a hospital's records get
    theirs in the federated ledger). Every ledger record is built here."""
    out = {"release": what}
    if on is not None:
        out["on"] = on
    return {**out, "noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps, **extra}


def dp_sgd_release(engine, on: str | None = "train", what: str = DP_SGD) -> dict:
    """The DP-SGD record of a clip-and-noise optimizer: its plan's sigma and q, the steps it took."""
    return release(what, engine.plan.noise_multiplier, engine.plan.sample_rate, engine.steps, on)


def training_ledger(engine, unit: str, epochs: int, class_counts=None, class_weights=None, count_noise=None,
                    ood_noise=None) -> dict:
    """The training side's releases and every number needed to recompute its epsilon; no exact
    function of the private data (counts appear only as their DP release)."""
    from opacus import __version__ as opacus_version

    plan = engine.plan
    releases = []
    if count_noise is not None:
        releases.append(release(COUNTS, count_noise, on="train"))
    if ood_noise is not None:
        releases.append(release(OOD_MEANS, ood_noise, on="train"))
    releases.append(dp_sgd_release(engine))
    out = {
        "mechanism": "DP-SGD (Gaussian, per-unit clipping, Poisson sampling of units)",
        "unit_of_privacy": unit,
        "epsilon": round(engine.spent(), 4), "epsilon_train": round(engine.spent(), 4),
        "epsilon_target": plan.epsilon, "delta": plan.delta,
        "noise_multiplier": plan.noise_multiplier, "max_grad_norm": plan.max_grad_norm,
        "sample_rate": plan.sample_rate, "steps": engine.steps, "epochs": epochs,
        "neighbouring_relation": RELATION,
        "n_units_train_dp": None if class_counts is None else round(units_estimate(class_counts), 1),
        "accountant": plan.accountant, "opacus_version": opacus_version, "randomness": SOURCE,
        "releases": releases,
        "assumptions": ASSUMPTIONS,
    }
    if class_counts is not None:
        out["dp_class_counts"] = [round(float(c), 2) for c in np.asarray(class_counts)]
    if class_weights is not None:
        out["class_weights"] = {"weights": [round(float(w), 6) for w in class_weights],
                                "dp_counts": out.get("dp_class_counts"),
                                "applied": "after clipping, each <= 1 (sensitivity stays C)"}
    return out


def add_validation_releases(ledger: dict, releases: list[dict], n_val_units_dp: float | None) -> dict:
    """Compose the validation-side releases and set the bundle's epsilon to the larger side."""
    hist = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
    eps_val = epsilon_of(hist, ledger["delta"], ledger["accountant"]) if hist else 0.0
    out = dict(ledger)
    out["releases"] = list(ledger.get("releases", [])) + releases
    out["epsilon_validation"] = round(eps_val, 4)
    out["n_units_validation_dp"] = None if n_val_units_dp is None else round(float(n_val_units_dp), 1)
    out["epsilon"] = round(max(ledger["epsilon_train"], eps_val), 4)
    out["composition"] = ("sequential within train and within validation (accountant over each side's releases); "
                          "parallel across the two (disjoint units): epsilon = max(epsilon_train, epsilon_validation)")
    return out


def recompute(ledger: dict) -> float:
    """Epsilon from the ledger's releases alone, with Opacus's accountant (an independent check)."""
    sides: dict[str, list] = {}
    for r in ledger.get("releases", []):
        sides.setdefault(r.get("on", "train"), []).append((r["noise_multiplier"], r["sample_rate"], r["steps"]))
    return max(epsilon_of(h, ledger["delta"], ledger["accountant"]) for h in sides.values())


def statement(meta: dict) -> str:
    """One sentence on what the model's privacy guarantee covers."""
    p = meta.get("privacy") or {}
    if p.get("epsilon") is None:
        return ("This model was trained without differential privacy: it may reveal information about the "
                "patients whose images trained it.")
    unit = p.get("unit_of_privacy", "image")
    if p.get("federation"):
        f = p["federation"]
        return (f"Federated training across {len(f['participants'])} hospitals; differential privacy inside each "
                f"hospital (epsilon <= {p['epsilon']:g}, delta = {p['delta']:.1g} per hospital) protects each {unit} "
                f"of that hospital against everyone outside it, the coordinating server included: the released "
                f"model changes little whether or not that {unit}'s data were used; it does not cover images sent "
                f"to the model for prediction, nor the public test set.")
    who = {"patient": "patient (all of a patient's images together)",
           "slice block": "block of neighbouring CT slices (one scan's slices together)"}.get(unit, "image")
    relation = ", add/remove one unit" if p.get("neighbouring_relation", "").startswith("add/remove") else ""
    public = (p.get("public_data") or {}).get("name")
    return (f"Differential privacy (epsilon = {p['epsilon']:g}, delta = {p['delta']:.1g}{relation}) protects each "
            f"{who} used for training and validation: {_released(meta)} little whether or not that "
            f"{unit.split()[-1]}'s data were used; "
            f"it does not cover images sent to the model for prediction, nor the public test set"
            + (f", nor the public images its features are projected with ({public})." if public else ".")
            + (" A patient with k training images (for example a scan's slices) is protected about k times more "
               "weakly (group privacy)." if unit == "image" else ""))


def _released(meta: dict) -> str:
    """The released model, and whichever validation-fitted parts the bundle has, with the verb."""
    has = (("calibration", (meta.get("calibration") or {}).get("method", "none") != "none"),
           ("decision threshold", meta.get("decision")), ("out-of-distribution detector", meta.get("ood")))
    parts = [name for name, present in has if present]
    if not parts:
        return "the released model changes"
    return f"the released model and its {', '.join(parts[:-1]) + ' and ' if len(parts) > 1 else ''}{parts[-1]} change"
