"""Federated training (privmed.federated): real data, small and fast. covid19_xray (216 training
images, cached features) for runs; chest_xray_pneumonia records (no pixels) for patient partitions."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from privmed.errors import DatasetError  # noqa: E402
from privmed.federated.config import FederatedConfig  # noqa: E402
from privmed.federated.partition import partition  # noqa: E402


def _cfg(data_root, **kw):
    base = {"train": {"dataset": "covid19_xray", "data_root": str(data_root)}, "hospitals": 3, "rounds": 2,
            "local_epochs": 1}
    base.update(kw)
    return FederatedConfig(**base)


def _capture(fed):
    """Run ``fed``; return every array and every masked vector the server received."""
    from flwr.common import bytes_to_ndarray

    arrays, masked = [], []

    def on_reply(msg):
        if msg.has_error():
            return
        for rec in msg.content.array_records.values():
            arrays.extend(a.numpy() for a in rec.values())
        for rec in msg.content.config_records.values():
            if "masked_params" in rec:
                masked.append([bytes_to_ndarray(b) for b in rec["masked_params"]])

    fed.run(on_reply=on_reply)
    return arrays, masked


@pytest.fixture(scope="module")
def secagg_run(data_root):
    from privmed.federated.run import Federation

    fed = Federation(_cfg(data_root), progress=False)
    arrays, masked = _capture(fed)
    return fed, arrays, masked


def _weighted_mean(fed, r):
    hs = list(fed.hospitals.values())
    total = sum(h.n_units for h in hs)
    return [sum(h.n_units * h.updates[r][i] for h in hs) / total for i in range(len(hs[0].updates[r]))]


def _close_to_any(arr, updates, atol=1e-4):
    return any(a.shape == arr.shape and np.allclose(a, arr, atol=atol) for u in updates for a in u)


def test_server_aggregate_is_the_weighted_sum(secagg_run):
    fed, _, _ = secagg_run
    assert len(fed.strategy.aggregates) == 2
    for r, agg in enumerate(fed.strategy.aggregates):
        want = _weighted_mean(fed, r)
        for a, w in zip(agg, want):
            # SecAgg+ quantisation: step 2 * clipping_range / quantization_range, times a few hospitals
            np.testing.assert_allclose(a, w, atol=5e-5)
            assert np.abs(w).max() > 1e-3  # the updates are not trivially zero


def test_server_never_receives_an_individual_update(secagg_run):
    fed, arrays, masked = secagg_run
    updates = [u for h in fed.hospitals.values() for u in h.updates]
    assert len(masked) == 2 * 3  # one masked vector per hospital per round
    assert not any(_close_to_any(a, updates) for a in arrays)
    for vec in masked:
        # masked vectors are integers spread over the whole modulus, unlike a quantised update
        flat = np.concatenate([v.ravel() for v in vec]).astype(np.float64)
        assert flat.max() - flat.min() > 2 ** 31
        assert not _close_to_any(flat, updates, atol=1.0)
    # one count-exchange message per hospital, then 4 SecAgg+ stages per round
    assert fed.grid.bytes_to_server > 0 and fed.grid.messages == 3 + 2 * 4 * 3


def test_plain_fedavg_exposes_updates_so_the_check_can_fail(data_root):
    from privmed.federated.run import Federation

    fed = Federation(_cfg(data_root, rounds=1, secagg={"enabled": False}), progress=False)
    arrays, masked = _capture(fed)
    updates = [u for h in fed.hospitals.values() for u in h.updates]
    assert not masked and sum(_close_to_any(a, updates, atol=1e-6) for a in arrays) >= 3
    for a, w in zip(fed.strategy.aggregates[0], _weighted_mean(fed, 0)):  # same FedAvg without SecAgg+
        np.testing.assert_allclose(a, w, atol=1e-6)


def test_each_hospital_ledger_recomputes_with_opacus(secagg_run):
    from opacus.accountants import create_accountant

    from privmed.privacy.ledger import recompute

    fed, _, _ = secagg_run
    led = fed.ledger()
    assert len(led["hospitals"]) == 3 and led["federation"]["rounds"] == 2
    assert led["federation"]["secure_aggregation"]["protocol"].startswith("SecAgg+")
    for h in led["hospitals"]:
        acc = create_accountant(led["accountant"])
        acc.history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in h["releases"]]
        assert acc.get_epsilon(delta=led["delta"]) == pytest.approx(h["epsilon"], abs=1e-3)
        assert h["epsilon"] <= led["epsilon_target"] + 1e-9
        assert h["steps"] == 2 * h["local_steps_per_round"]
    assert recompute(led) == pytest.approx(led["epsilon"], abs=1e-3)


def test_hospital_refuses_a_round_past_its_budget(secagg_run):
    from privmed.errors import PrivacyBudgetError

    fed, _, _ = secagg_run
    h = fed.hospitals[0]
    with pytest.raises(PrivacyBudgetError, match="refuses round 3"):
        h.fit(h.get_weights())


def test_federate_cli_writes_a_loadable_bundle(data_root, tmp_path, capsys):
    from privmed.cli import main
    from privmed.inference import load_model
    from privmed.inference.bundle import run_dir
    from privmed.privacy.ledger import statement

    out = tmp_path / "fed"
    rc = main(["federate", "--dataset", "covid19_xray", "--data-root", str(data_root), "--rounds", "1",
               "--local-epochs", "1", "--out", str(out), "--quiet", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["secure_aggregation"] and len(summary["hospitals"]) == 3
    model = load_model(out)
    img = next((data_root / "covid19_xray" / "test" / "covid").iterdir())
    p = model.predict(str(img))
    assert set(p.probabilities) == {"covid", "normal", "viral_pneumonia"}
    meta = model.metadata
    assert meta["privacy"]["federation"]["participants"] == [1, 2, 3]
    assert "outside it, the coordinating server included" in statement(meta)
    assert (run_dir(out) / "run.json").is_file() and not (out / "run.json").exists()
    assert "class_counts" not in json.dumps(meta)  # exact per-hospital counts stay in the private run log


def test_partitions_are_patient_disjoint_and_reproducible():
    from privmed.config import TrainConfig, default_data_root
    from privmed.training.data import split_records, unit_ids
    from tests.conftest import require_dataset

    require_dataset(default_data_root(), "chest_xray_pneumonia")
    s = split_records(TrainConfig(dataset="chest_xray_pneumonia"))
    units, name = unit_ids(s.train, "auto")
    assert name == "patient"
    labels = np.array([r.label for r in s.train])
    for scheme in ("iid", "label-skew"):
        parts = partition(units.numpy(), labels, 2, 3, scheme, alpha=0.3, seed=1)
        owners = [{s.train[i].group for i in p} for p in parts]
        assert all(not (owners[a] & owners[b]) for a in range(3) for b in range(a + 1, 3))
        assert sum(len(p) for p in parts) == len(s.train)
        again = partition(units.numpy(), labels, 2, 3, scheme, alpha=0.3, seed=1)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
        other = partition(units.numpy(), labels, 2, 3, scheme, alpha=0.3, seed=2)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    iid = partition(units.numpy(), labels, 2, 3, "iid", seed=1)
    skew = partition(units.numpy(), labels, 2, 3, "label-skew", alpha=0.3, seed=1)
    frac = lambda ps: [labels[p].mean() for p in ps]  # noqa: E731
    assert np.ptp(frac(iid)) < 0.05 < np.ptp(frac(skew))


def test_global_class_weights_come_from_the_sum_of_dp_counts(secagg_run, data_root):
    """Default: before round 1 the server asks every hospital for its DP class counts (a Flower
    message each way, the release already in its ledger) and sends one weighting from their sum with
    every round; "local": each hospital weights by its own."""
    from privmed.federated.run import Federation
    from privmed.privacy.releases import weights_from_counts

    fed = secagg_run[0]
    hs = list(fed.hospitals.values())
    w = weights_from_counts(sum(h.counts for h in hs))
    assert np.allclose(fed.strategy.class_weight, w) and w.max() == 1.0 and (w > 0).all()
    assert all(np.allclose(h._class_weight, w) for h in hs)
    for h in hs:  # each unit's weight is its images' mean class weight, so sensitivity stays C
        expect = np.bincount(h.units.numpy(), weights=w[h.y.numpy()]) / np.bincount(h.units.numpy())
        assert np.allclose(h.engine.unit_weight.numpy(), expect, atol=1e-6) and h.engine.unit_weight.max() <= 1
    assert len({tuple(np.round(h.counts, 6)) for h in hs}) == len(hs)  # each its own noisy counts
    assert all(any("class counts" in r["release"] for r in h.ledger(with_epsilon=False)["releases"]) for h in hs)
    assert fed.ledger()["federation"]["class_weights"].startswith("one weighting")
    local = Federation(_cfg(data_root, partition="label-skew", class_weight_scope="local"), progress=False)
    lw = [h._class_weight for h in local.hospitals.values()]
    assert all(np.array_equal(h._class_weight, weights_from_counts(h.counts)) for h in local.hospitals.values())
    assert not all(np.allclose(lw[0], x) for x in lw[1:])
    with pytest.raises(ValueError, match=r"values in \(0, 1\]"):
        hs[0].use_class_weight(np.array([2.0, 1.0, 1.0]))


def test_fedprox_pulls_local_steps_toward_the_global_model(data_root):
    """FedProx's proximal step (data-independent, after each noisy step) keeps a hospital's round
    close to the global model: a strong mu shrinks the update; mu = 0 is plain FedAvg."""
    from privmed.federated.run import Federation

    norms = {}
    for mu in (0.0, 50.0):
        fed = Federation(_cfg(data_root, fedprox_mu=mu, secagg={"enabled": False}), progress=False)
        update = fed.hospitals[0].fit(fed.initial)
        norms[mu] = float(np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in update)))
    assert 0 < norms[50.0] < 0.2 * norms[0.0]
    assert "FedProx" in fed.ledger()["federation"]["aggregation"]


def test_bad_configs_give_clear_errors(data_root):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="DP inside each hospital only"):
        _cfg(data_root, train={"dataset": "covid19_xray", "privacy": {"enabled": False}})
    with pytest.raises(ValidationError, match="at least 2 hospitals"):
        _cfg(data_root, hospitals=1)
    with pytest.raises(ValidationError, match="only must list"):
        _cfg(data_root, only=[3])
    with pytest.raises(ValidationError, match="reconstruction_threshold"):
        _cfg(data_root, secagg={"reconstruction_threshold": 5})
    with pytest.raises(DatasetError, match="fewer than 20"):
        partition(np.arange(50), np.zeros(50, int), 1, 3)
    with pytest.raises(DatasetError, match="alpha"):
        partition(np.arange(90), np.zeros(90, int), 1, 3, "label-skew", alpha=0)
