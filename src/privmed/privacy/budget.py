"""One privacy budget per dataset, across every release made from it.

Every training run, hyperparameter trial and bundle made from a dataset spends privacy on the same
patients. The registry keeps, per dataset, the mechanism parameters of every DP release ever made
(one JSON line per run in an owner-only file under ``config.budget_dir()``) and composes them all
with Opacus's accountant (PRV or RDP). Hyperparameter search counts every trial: there is no private
selection, so each trial is recorded like any run.

A budget file holds mechanism parameters (noise multiplier, sample rate, steps, side), timestamps,
what produced them (a bundle path or "trial"), a split identity and the dataset key: never patient
ids, file names or statistics of the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from privmed.config import TrainConfig, budget_dir
from privmed.data.datasets import fingerprint, open_dataset
from privmed.errors import PrivacyBudgetError
from privmed.privacy.accounting import epsilon_of

SIDES = ("train", "validation")
ACCOUNTANTS = ("prv", "rdp")  # not gdp: Opacus's GDP accountant reads only the last history entry
_KEY = re.compile(r"^[0-9a-f]{64}$")


def dataset_key(records_fp: str) -> str:
    """The dataset's identity from the content fingerprint (``data.datasets.fingerprint``) of ALL its
    training-folder records, train and validation together: the same patients give the same key
    whatever the split and wherever the files live."""
    return hashlib.sha256(b"privmed-budget-key-v1\0" + records_fp.encode()).hexdigest()


def key_of(splits) -> str:
    """The key of the data behind a ``training.data.Splits`` (both sides: split-independent)."""
    return dataset_key(fingerprint(splits.train + splits.val))


def split_of(splits) -> str:
    """A short identity of the train/validation partition itself (which records are on the
    validation side), so a changed split rule is noticed even at the same val_fraction and seed."""
    return "val:" + hashlib.sha256(b"privmed-budget-split-v1\0" + splits.fingerprint["val"].encode()).hexdigest()[:16]


def key_for_dataset(dataset: str, data_root: Path | None = None) -> str:
    """The key of a dataset name/folder/.npz, opened as training opens it (same records as
    ``key_of(split_records(cfg))``, without the copy-group search, which does not change them)."""
    cfg = TrainConfig(dataset=dataset, **({"data_root": data_root} if data_root else {}))
    ds = open_dataset(cfg.dataset, cfg.data_root)
    records = ds.records("train") + (ds.records("val") if "val" in ds.splits else [])
    return dataset_key(fingerprint(records))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _release(r: dict) -> dict:
    """Only the mechanism parameters of a ledger release (nothing else reaches the file)."""
    side, sigma, q, steps = r.get("on", "train"), float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"])
    if side not in SIDES or not sigma > 0 or not 0 < q <= 1 or steps < 0:
        raise PrivacyBudgetError(f"not a DP release: on={side!r}, noise_multiplier={sigma}, sample_rate={q}, "
                                 f"steps={steps} (need on in {SIDES}, sigma > 0, 0 < q <= 1, steps >= 0)")
    return {"release": str(r.get("release", ""))[:120], "on": side, "noise_multiplier": sigma,
            "sample_rate": q, "steps": steps}


def by_mechanism(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The same composition with one entry per mechanism (noise multiplier, sample rate), its steps summed.
    Composition does not depend on order, and the accountant composes n steps of one mechanism at once:
    a dataset's hundred trials are some 600 releases of a handful of mechanisms, which PRV composes in
    seconds as such and not at all as recorded (137 runs: over 16 GB of memory)."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        steps[(sigma, q)] = steps.get((sigma, q), 0) + n
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _compose(runs: list[dict], delta: float, accountant: str) -> tuple[float, str]:
    """(epsilon, rule): sequential within each side over all runs, parallel across sides only when
    every run used the same split (then each patient sits on one side in every run)."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyBudgetError(f"the budget composes with {' or '.join(ACCOUNTANTS)}, not '{accountant}'")
    if not runs:
        return 0.0, "nothing recorded"
    sides: dict[str, list] = {}
    for run in runs:
        for r in run["releases"]:
            sides.setdefault(r["on"], []).append((r["noise_multiplier"], r["sample_rate"], r["steps"]))
    n_splits = len({run["split"] for run in runs})
    if n_splits == 1:
        eps = max(epsilon_of(by_mechanism(h), delta, accountant) for h in sides.values())
        return eps, (f"sequential within train and within validation over all {len(runs)} runs; parallel across "
                     "the two sides (every run used the same split, so they hold disjoint units): "
                     "epsilon = max(train, validation)")
    eps = epsilon_of(by_mechanism([x for h in sides.values() for x in h]), delta, accountant)
    return eps, (f"the runs used {n_splits} different train/validation splits, so a patient may be on the "
                 "training side of one run and the validation side of another: every release of every run "
                 "composed sequentially (conservative)")


class Registry:
    """Per-dataset append-only JSON-lines files: run lines (releases) and limit lines (last one wins)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else budget_dir()

    def path(self, key: str) -> Path:
        if not _KEY.match(key or ""):
            raise PrivacyBudgetError(f"not a dataset key: {key!r} "
                                     "(64 hex digits, from `privmed privacy budget DATASET`)")
        return self.root / f"{key}.jsonl"

    def _lines(self, key: str) -> list[dict]:
        p = self.path(key)
        if not p.is_file():
            return []
        out = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                # never guess what was spent: an unreadable line could hide a release
                raise PrivacyBudgetError(f"budget file {p} line {i} is not valid JSON (a cut-off write?); "
                                         "repair or remove that line by hand") from None
        return out

    def _append(self, key: str, entry: dict) -> None:
        path = self.path(key)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o777 != 0o700:
            os.chmod(self.root, 0o700)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file predates us with looser bits
            # one write per line: O_APPEND keeps concurrent writers' lines whole
            if os.write(fd, line) != len(line):
                raise PrivacyBudgetError(f"short write to {path}; check the disk and the file's last line")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _runs(self, key: str) -> list[dict]:
        return [e for e in self._lines(key) if e.get("kind") == "run"]

    def releases(self, key: str) -> list[dict]:
        """Every release ever recorded for the key, each with its run's time, origin and split."""
        return [{**r, "run": i, "at": run["at"], "what": run["what"], "bundle": run["bundle"], "split": run["split"]}
                for i, run in enumerate(self._runs(key)) for r in run["releases"]]

    def record(self, key: str, ledger: dict, *, what: str, split: str, bundle: str | None = None) -> None:
        """Append one run: the ledger's releases (mechanism parameters only), its split and origin."""
        releases = [_release(r) for r in ledger.get("releases") or []]
        if not releases:
            raise PrivacyBudgetError("the ledger has no DP releases: the registry composes DP releases only "
                                     "(a non-private model released from the data has no finite epsilon)")
        self._append(key, {"kind": "run", "at": _now(), "what": str(what), "split": str(split),
                           "bundle": None if bundle is None else str(bundle), "releases": releases})

    def set_limit(self, key: str, epsilon: float, delta: float) -> None:
        """The data owner's limit for the dataset (replaces an earlier one; the file keeps both)."""
        if not epsilon > 0 or not 0 < delta < 1:
            raise PrivacyBudgetError(f"a limit needs epsilon > 0 and 0 < delta < 1 (got {epsilon}, {delta})")
        self._append(key, {"kind": "limit", "at": _now(), "epsilon": float(epsilon), "delta": float(delta)})

    def limit(self, key: str) -> dict | None:
        """{"epsilon", "delta", "at"} of the latest limit, or None."""
        limits = [e for e in self._lines(key) if e.get("kind") == "limit"]
        return {k: limits[-1][k] for k in ("epsilon", "delta", "at")} if limits else None

    def _delta(self, key: str, delta: float | None) -> tuple[float | None, str]:
        lim = self.limit(key)
        if lim:
            return lim["delta"], "the limit's delta"
        return delta, "the delta asked for (no limit set)"

    def spent(self, key: str, delta: float | None = None, accountant: str = "prv") -> float:
        """Epsilon of every release ever recorded for the key, at the limit's delta if one is set."""
        d, _ = self._delta(key, delta)
        runs = self._runs(key)
        if runs and d is None:
            raise PrivacyBudgetError("no limit is set for this dataset: pass the delta to compose at")
        return _compose(runs, d, accountant)[0]

    def check(self, key: str, planned: dict[str, list[tuple[float, float, int]]], delta: float | None = None,
              accountant: str = "prv", *, split: str) -> float | None:
        """Epsilon of everything recorded plus the planned run (side -> history); raises
        PrivacyBudgetError when it would exceed the key's limit. No limit set: never refuses (None)."""
        lim = self.limit(key)
        if lim is None:
            return None
        runs = self._runs(key)
        plan = {"split": split, "releases": [_release({"on": side, "noise_multiplier": s, "sample_rate": q, "steps": n})
                                             for side, h in planned.items() for s, q, n in h]}
        spent = _compose(runs, lim["delta"], accountant)[0]
        alone = _compose([plan], lim["delta"], accountant)[0]
        total = _compose(runs + [plan], lim["delta"], accountant)[0]
        if total > lim["epsilon"]:
            raise PrivacyBudgetError(
                f"privacy budget of dataset {key[:12]}… exceeded: {len(runs)} earlier runs spent epsilon {spent:.3g}, "
                f"this run plans {alone:.3g}, together {total:.3g} > the data owner's limit {lim['epsilon']:g} "
                f"(delta {lim['delta']:g}, {accountant.upper()}); lower this run's epsilon (more noise, fewer steps "
                f"or trials), or ask the data owner to raise the limit "
                f"(`privmed privacy budget DATASET --limit EPS --delta D`)")
        return total

    def summary(self, key: str, delta: float | None = None, accountant: str = "prv") -> dict:
        lim = self.limit(key)
        d, d_from = self._delta(key, delta)
        runs = self._runs(key)
        if runs and d is None:
            raise PrivacyBudgetError("no limit is set for this dataset: pass --delta to compose at")
        eps, rule = _compose(runs, d, accountant)
        return {"dataset_key": key, "limit": lim,
                "limit_note": None if lim else ("no limit set: training is not refused "
                                                "(set one with --limit EPS --delta D)"),
                "spent": round(eps, 4), "remaining": round(lim["epsilon"] - eps, 4) if lim else None,
                "delta": d, "delta_from": d_from, "accountant": accountant,
                "runs": len(runs), "trials": sum(r["what"] == "trial" for r in runs),
                "releases": sum(len(r["releases"]) for r in runs), "composition": rule}


def format_summary(s: dict) -> str:
    lim, rem = s["limit"], s["remaining"]
    at = f" at delta {s['delta']:g} ({s['delta_from']})" if s["delta"] else ""
    return "\n".join([
        f"dataset    {s['dataset_key']}",
        "limit      " + (f"epsilon {lim['epsilon']:g} at delta {lim['delta']:g}" if lim else s["limit_note"]),
        f"spent      epsilon {s['spent']:g}{at}",
        "remaining  " + ("-" if rem is None else f"epsilon {rem:g} (a new run must fit when composed with the rest)"),
        (f"runs       {s['runs']} ({s['trials']} hyperparameter trials), {s['releases']} releases, "
         f"{s['accountant'].upper()} accountant"),
        f"rule       {s['composition']}"])
