"""The per-dataset privacy budget registry (privmed.privacy.budget): composition over every run,
the data owner's limit, owner-only files, and `privmed privacy budget`. Synthetic ledgers, no training."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from privmed.config import budget_dir
from privmed.errors import PrivacyBudgetError
from privmed.privacy.budget import Registry, dataset_key

DELTA = 1e-5
KEY = dataset_key("synthetic-fingerprint")
SPLIT = "val_fraction=0.1;key=content"


def ledger(*releases) -> dict:
    """A bundle-style ledger from (on, sigma, q, steps) tuples."""
    return {"releases": [{"release": "r", "on": on, "noise_multiplier": s, "sample_rate": q, "steps": n}
                         for on, s, q, n in releases]}


RUN1 = ledger(("train", 10.0, 1.0, 1), ("train", 1.1, 0.02, 500), ("validation", 3.0, 1.0, 2))
RUN2 = ledger(("train", 10.0, 1.0, 1), ("train", 0.9, 0.05, 200), ("validation", 2.5, 1.0, 2))


def opacus_eps(history, accountant="prv", delta=DELTA) -> float:
    """Independent recomputation: step Opacus's accountant directly, without privmed's wrapper."""
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    for s, q, n in history:
        for _ in range(n):
            acc.step(noise_multiplier=s, sample_rate=q)
    return acc.get_epsilon(delta=delta)


def side(led, on):
    return [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in led["releases"] if r["on"] == on]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_two_runs_compose_like_the_accountant_over_the_concatenated_history(tmp_path, accountant):
    reg = Registry(tmp_path)
    reg.record(KEY, RUN1, what="trial", split=SPLIT)
    reg.record(KEY, RUN2, what="train", split=SPLIT, bundle="/bundles/x")
    want = max(opacus_eps(side(RUN1, s) + side(RUN2, s), accountant) for s in ("train", "validation"))
    assert reg.spent(KEY, DELTA, accountant) == pytest.approx(want, rel=1e-3)
    # more than either run alone: nothing is forgotten between runs
    assert reg.spent(KEY, DELTA, accountant) > max(opacus_eps(side(RUN1, "train"), accountant),
                                                    opacus_eps(side(RUN2, "train"), accountant))
    assert len(reg.releases(KEY)) == 6


def test_parallel_across_sides_with_one_split_sequential_when_splits_differ(tmp_path):
    same, diff = Registry(tmp_path / "same"), Registry(tmp_path / "diff")
    for reg, split2 in ((same, SPLIT), (diff, "val_fraction=0.2;key=content")):
        reg.record(KEY, RUN1, what="train", split=SPLIT)
        reg.record(KEY, RUN2, what="train", split=split2)
    train, val = side(RUN1, "train") + side(RUN2, "train"), side(RUN1, "validation") + side(RUN2, "validation")
    assert same.spent(KEY, DELTA) == pytest.approx(max(opacus_eps(train), opacus_eps(val)), rel=1e-3)
    assert diff.spent(KEY, DELTA) == pytest.approx(opacus_eps(train + val), rel=1e-3)
    assert diff.spent(KEY, DELTA) > same.spent(KEY, DELTA)
    assert "parallel" in same.summary(KEY, DELTA)["composition"]
    assert "sequentially (conservative)" in diff.summary(KEY, DELTA)["composition"]


def test_check_refuses_past_the_limit_with_a_clear_message_and_allows_under_it(tmp_path):
    reg = Registry(tmp_path)
    plan = {"train": side(RUN2, "train"), "validation": side(RUN2, "validation")}
    assert reg.check(KEY, plan, DELTA, split=SPLIT) is None  # no limit: never refuses
    reg.record(KEY, RUN1, what="train", split=SPLIT)
    spent = reg.spent(KEY, DELTA)
    reg.set_limit(KEY, spent + 100, DELTA)
    assert reg.check(KEY, plan, split=SPLIT) > spent
    reg.set_limit(KEY, spent * 1.05, DELTA)
    with pytest.raises(PrivacyBudgetError) as e:
        reg.check(KEY, plan, split=SPLIT)
    msg = str(e.value)
    for part in ("spent epsilon", "plans", f"limit {spent * 1.05:g}", "raise the limit", "lower this run's epsilon"):
        assert part in msg
    assert len(reg.releases(KEY)) == 3  # a refused plan records nothing


def test_limit_delta_is_the_one_composed_at(tmp_path):
    reg = Registry(tmp_path)
    reg.record(KEY, RUN1, what="train", split=SPLIT)
    s = reg.summary(KEY, DELTA)
    assert s["limit"] is None and "no limit" in s["limit_note"] and s["remaining"] is None and s["delta"] == DELTA
    reg.set_limit(KEY, 50.0, 1e-7)
    s = reg.summary(KEY, DELTA)
    assert s["delta"] == 1e-7 and "limit" in s["delta_from"]
    assert s["spent"] == pytest.approx(reg.spent(KEY, 1e-7), abs=1e-4) and s["spent"] > reg.summary(
        dataset_key("other"), DELTA)["spent"]
    assert s["remaining"] == pytest.approx(50.0 - s["spent"], abs=1e-3)
    other = Registry(tmp_path / "other")
    other.record(KEY, RUN1, what="train", split=SPLIT)
    with pytest.raises(PrivacyBudgetError, match="no limit"):  # neither a limit nor a delta: nothing to compose at
        other.spent(KEY)
    with pytest.raises(PrivacyBudgetError, match="no DP releases"):  # a non-private run cannot be composed
        reg.record(KEY, {"releases": []}, what="train", split=SPLIT)


def test_files_are_owner_only_and_hold_mechanism_parameters_only(tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    led = dict(RUN1, n_units_train=123, class_weights={"dp_counts": [41.3, 77.9]}, patients=["person12"])
    led["releases"] = [dict(r, patient="person12") for r in led["releases"]]
    reg.record(KEY, led, what="train", split=SPLIT, bundle="/b/chest")
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(reg.path(KEY)).st_mode) == 0o600
    text = reg.path(KEY).read_text()
    assert "person12" not in text and "41.3" not in text and "123" not in text
    run = json.loads(text)
    assert set(run) == {"kind", "at", "what", "split", "bundle", "releases"}
    assert {k for r in run["releases"] for k in r} == {"release", "on", "noise_multiplier", "sample_rate", "steps"}


def test_bad_key_and_cut_off_line_are_refused(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(PrivacyBudgetError, match="not a dataset key"):
        reg.path("../../etc/passwd")
    reg.record(KEY, RUN1, what="train", split=SPLIT)
    with open(reg.path(KEY), "a") as f:
        f.write('{"kind": "run", "rel')
    with pytest.raises(PrivacyBudgetError, match="line 2"):
        reg.spent(KEY, DELTA)


def test_budget_dir_is_outside_the_checkout_by_default(monkeypatch, tmp_path):
    from privmed.config import REPO_ROOT

    monkeypatch.delenv("PRIVMED_BUDGET_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert budget_dir() == tmp_path / "privmed" / "budget"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert REPO_ROOT not in budget_dir().parents


def test_cli_prints_spent_and_remaining(capsys):
    from privmed.cli import main

    Registry().record(KEY, RUN1, what="train", split=SPLIT)
    assert main(["privacy", "budget", "--key", KEY, "--limit", "30", "--delta", "1e-6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 1 and out["limit"]["epsilon"] == 30 and out["delta"] == 1e-6
    assert out["spent"] == pytest.approx(Registry().spent(KEY), abs=1e-4)
    assert out["remaining"] == pytest.approx(30 - out["spent"], abs=1e-3)
    assert main(["privacy", "budget", "--key", KEY]) == 0
    text = capsys.readouterr().out
    assert "remaining" in text and "epsilon 30 at delta 1e-06" in text


def test_key_depends_on_content_not_location_or_split(tmp_path):
    import shutil

    from PIL import Image

    from privmed.config import TrainConfig
    from privmed.privacy.budget import key_for_dataset, key_of, split_of
    from privmed.training.data import split_records

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "ds/train" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"ds/train/{cls}/{i}.png")
    shutil.copytree(tmp_path / "ds", tmp_path / "elsewhere")
    key = key_for_dataset(str(tmp_path / "ds"))
    assert key_for_dataset(str(tmp_path / "elsewhere")) == key
    s1 = split_records(TrainConfig(dataset=str(tmp_path / "ds"), val_fraction=0.2))
    s2 = split_records(TrainConfig(dataset=str(tmp_path / "elsewhere"), val_fraction=0.3))
    assert key_of(s1) == key_of(s2) == key
    assert split_of(s1) != split_of(s2)


def test_releases_compose_once_per_mechanism_with_the_same_epsilon(tmp_path):
    """Many runs of few recipes: composed per mechanism (steps summed), as the accountant would over the
    releases as recorded. RDP adds up, so there it is the same number; PRV within its error, checked on
    runs whose equal mechanisms are not adjacent (Opacus merges only adjacent ones)."""
    from privmed.privacy.budget import by_mechanism

    runs = [RUN1, RUN2, RUN1]
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for led in runs for r in led["releases"]]
    merged = by_mechanism(history)
    assert sorted(merged) == sorted([(10.0, 1.0, 3), (1.1, 0.02, 1000), (0.9, 0.05, 200), (3.0, 1.0, 4),
                                     (2.5, 1.0, 2)])
    reg = Registry(tmp_path)
    for i, led in enumerate(runs):
        reg.record(KEY, led, what="trial", split=f"split-{i}")  # different splits: one sequential history
    assert reg.spent(KEY, DELTA, "prv") == pytest.approx(opacus_eps(history, "prv"), rel=1e-3)
    many = Registry(tmp_path / "many")
    for i in range(40):
        many.record(KEY, RUN1 if i % 2 else RUN2, what="trial", split=f"split-{i}")
    as_recorded = [(r["noise_multiplier"], r["sample_rate"], r["steps"])
                   for i in range(40) for r in (RUN1 if i % 2 else RUN2)["releases"]]
    assert len(as_recorded) == 120 and len(by_mechanism(as_recorded)) == 5
    assert many.spent(KEY, DELTA, "rdp") == pytest.approx(opacus_eps(as_recorded, "rdp"), rel=1e-9)
