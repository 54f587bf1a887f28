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
from support.round_trip import assert_round_trip  # noqa: E402


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
    total = sum(h.fedavg_weight() for h in hs)  # DP numbers of units: the exact ones are never sent
    return [sum(h.fedavg_weight() * h.updates[r][i] for h in hs) / total for i in range(len(hs[0].updates[r]))]


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
    from privmed.bundle.format import run_dir
    from privmed.cli import main
    from privmed.inference import load_model
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
    assert_round_trip(out)  # the federated blocks read through the schema without loss
    typed = model.bundle
    assert typed.federated.hospitals == 3 and typed.ledger.federation.participants == [1, 2, 3]
    assert typed.model_id == "covid19-effnet_lite0_head-fed3-eps2" and typed.intended_use is not None


def test_partitions_are_patient_disjoint_and_reproducible():
    from conftest import require_dataset
    from privmed.config import TrainConfig, default_data_root
    from privmed.training.data import split_records, unit_ids

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


def test_a_pixel_cnn_trains_federated_into_a_loadable_bundle(data_root, tmp_path, capsys):
    """The same model families as privmed train: the paper's CNN on pixels (no frozen features),
    DP-SGD in each hospital, SecAgg+; the bundle loads, predicts and moved away from its start."""
    from privmed.cli import main
    from privmed.inference import load_model

    out = tmp_path / "fedcnn"
    rc = main(["federate", "--dataset", "covid19_xray", "--data-root", str(data_root), "--model", "cnn",
               "--set", "preprocess.size=32", "--rounds", "2", "--local-epochs", "1", "--out", str(out),
               "--quiet", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["secure_aggregation"] and len(summary["hospitals"]) == 3
    model = load_model(out)
    assert model.metadata["model"]["name"] == "cnn" and model.metadata["input"]["height"] == 32
    led = model.metadata["privacy"]
    assert led["federation"]["participants"] == [1, 2, 3]
    assert all(h["steps"] > 0 and h["epsilon"] <= 2.0 + 1e-9 for h in led["hospitals"])
    p = model.predict(str(next((data_root / "covid19_xray" / "test" / "normal").iterdir())))
    assert abs(sum(p.probabilities.values()) - 1) < 1e-5
    from privmed.config import TrainConfig
    from privmed.federated.run import _initial_weights

    start = _initial_weights(TrainConfig(**model.metadata["training"]), 3)  # the global model of round 1
    trained = [p.detach().numpy() for p in model.net.trainable.parameters()]
    assert [a.shape for a in start] == [b.shape for b in trained]
    assert any(not np.allclose(a, b) for a, b in zip(start, trained))


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


def _server_rounds(strategy, rounds):
    """Feed ``strategy`` rounds of (update, units) per hospital, as the workflow would."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    for r, hospitals in enumerate(rounds, start=1):
        res = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), n, {"hospital": h + 1}))
               for h, (u, n) in enumerate(hospitals)]
        strategy.aggregate_fit(r, res, [])
    return strategy.current


_W0 = [np.array([1.0, 2.0], np.float32), np.array([[0.5]], np.float32)]
# two hospitals of 1 and 3 units: weighted means [1, 4], [[2]] in round 1 and [3, 1], [[-1]] in round 2
_ROUND1 = [([np.array([4.0, -8.0], np.float32), np.array([[2.0]], np.float32)], 1),
           ([np.array([0.0, 8.0], np.float32), np.array([[2.0]], np.float32)], 3)]
_ROUND2 = [([np.array([0.0, 4.0], np.float32), np.array([[-4.0]], np.float32)], 1),
           ([np.array([4.0, 0.0], np.float32), np.array([[0.0]], np.float32)], 3)]


def _assert_arrays(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, np.array(w, np.float32))


def test_fedavgm_server_momentum_algebra():
    """v <- beta v + mean update, w <- w + server_lr v. By hand, beta 0.5, lr 2: v1 = [1, 4], [[2]];
    w1 = [3, 10], [[4.5]]; v2 = [0.5 + 3, 2 + 1], [[1 - 1]] = [3.5, 3], [[0]]; w2 = [10, 16], [[4.5]].
    beta 0, lr 1 is plain FedAvg: w0 + both means = [5, 7], [[1.5]]."""
    from privmed.federated.apps import UpdateFedAvg

    m = UpdateFedAvg(_W0, 2, None, momentum=0.5, server_lr=2.0)
    _assert_arrays(_server_rounds(m, [_ROUND1]), [[3, 10], [[4.5]]])
    _assert_arrays(m.velocity, [[1, 4], [[2]]])
    _assert_arrays(_server_rounds(m, [_ROUND2]), [[10, 16], [[4.5]]])
    _assert_arrays(m.velocity, [[3.5, 3], [[0]]])
    plain = UpdateFedAvg(_W0, 2, None)
    _assert_arrays(_server_rounds(plain, [_ROUND1, _ROUND2]), [[5, 7], [[1.5]]])
    _assert_arrays(plain.aggregates[1], [[3, 1], [[-1]]])


def test_process_checkpoint_carries_the_server_velocity(tmp_path):
    """The process engine's checkpoint holds the FedAvgM velocity: a run resumed after round 1 ends
    where the uninterrupted one does (w2 above); resumed without it, it would not."""
    from privmed.federated.apps import UpdateFedAvg
    from privmed.federated.deployed import read_checkpoint, write_checkpoint

    first = UpdateFedAvg(_W0, 2, None, momentum=0.5, server_lr=2.0)
    _server_rounds(first, [_ROUND1])
    path = tmp_path / "checkpoint.npz"
    write_checkpoint(path, first.current, {"round": 1, "rounds": []}, first.velocity)
    weights, meta, velocity = read_checkpoint(path)
    assert meta["round"] == 1 and list(tmp_path.iterdir()) == [path]  # atomic: no temporary left
    _assert_arrays(velocity, [[1, 4], [[2]]])
    resumed = UpdateFedAvg(weights, 2, None, round_offset=1, momentum=0.5, server_lr=2.0, velocity=velocity)
    _assert_arrays(_server_rounds(resumed, [_ROUND2]), [[10, 16], [[4.5]]])
    cold = UpdateFedAvg(weights, 2, None, round_offset=1, momentum=0.5, server_lr=2.0)
    _assert_arrays(_server_rounds(cold, [_ROUND2]), [[9, 12], [[2.5]]])
    write_checkpoint(path, first.current, {"round": 1, "rounds": []})  # plain FedAvg stores none
    assert read_checkpoint(path)[2] is None


def test_local_momentum_reset_empties_the_optimizer_state_each_round(data_root):
    """--local-momentum reset: a hospital starts every round with no optimizer state (SGD momentum
    buffers / Adam moments); keep (default) carries it over. The ledger names the options."""
    from privmed.cli import build_parser
    from privmed.cli.federated import federated_config
    from privmed.federated.run import Federation

    a = build_parser().parse_args(["federate", "--dataset", "covid19_xray", "--data-root", str(data_root),
                                   "--rounds", "2", "--local-epochs", "1", "--no-secagg", "--server-momentum",
                                   "0.5", "--server-lr", "2", "--local-momentum", "reset"])
    cfg = federated_config(a)
    assert (cfg.server_momentum, cfg.server_lr, cfg.local_momentum) == (0.5, 2.0, "reset")
    fed = Federation(cfg, progress=False)
    seen = {}
    for h in (0, 1):
        hosp = fed.hospitals[h]
        step = hosp.engine.step

        def counting(*args, _h=hosp, _step=step, _key=h):  # optimizer tensors held when a step starts
            seen.setdefault(_key, []).append(sum(len(s) for s in _h.engine.optimizer.state.values()))
            return _step(*args)

        hosp.engine.step = counting
    fed.hospitals[1].reset_momentum = False  # the control: keep
    for h in (0, 1):
        w = fed.hospitals[h].get_weights()
        fed.hospitals[h].fit(w)
        n1 = len(seen[h])
        assert sum(len(s) for s in fed.hospitals[h].engine.optimizer.state.values()) > 0
        fed.hospitals[h].fit(w)
        seen[h] = (seen[h][0], seen[h][n1])  # the first step of each round
    assert seen[0] == (0, 0)
    assert seen[1][0] == 0 and seen[1][1] > 0
    agg = fed.ledger()["federation"]["aggregation"]
    assert "FedAvgM server momentum 0.5, server lr 2" in agg and "resets its optimizer state" in agg
    assert "no privacy cost" in agg


def test_local_steps_one_is_fedsgd_with_its_budget_planned_for_those_steps(data_root):
    """--local-steps 1 (FedSGD): each hospital takes exactly one DP-SGD step per round, its noise is
    calibrated for rounds x 1 steps (less noise than rounds x whole epochs at the same epsilon), it
    refuses a step past them, and with its optimizer state reset the update it sends is one plain
    SGD step (-lr x its noisy gradient): the server's momentum then acts as centralised momentum."""
    from opacus.accountants import create_accountant

    from privmed.cli import build_parser
    from privmed.cli.federated import federated_config
    from privmed.errors import PrivacyBudgetError
    from privmed.evaluation.attacks import Recipe
    from privmed.federated.run import Federation

    a = build_parser().parse_args(["federate", "--dataset", "covid19_xray", "--data-root", str(data_root),
                                   "--rounds", "3", "--local-steps", "1", "--no-secagg", "--local-momentum", "reset",
                                   "--server-momentum", "0.9", "--set", "optimizer=sgd"])
    cfg = federated_config(a)
    assert cfg.local_steps == 1 and cfg.train.optimizer == "sgd"
    fed = Federation(cfg, progress=False)
    by_epochs = Federation(_cfg(data_root, rounds=3, secagg={"enabled": False}), progress=False)
    h0 = fed.hospitals[0]
    before = h0.get_weights()
    grads = []
    step = h0.engine.step

    def keep_grad(*args):
        out = step(*args)
        grads.append([p.grad.detach().clone().numpy() if p.grad is not None else None for p in h0.net.parameters()])
        return out

    h0.engine.step = keep_grad
    update = h0.fit(before)
    lr = h0.engine.optimizer.param_groups[0]["lr"]
    assert len(grads) == 1
    for u, g in zip(update, grads[0]):
        np.testing.assert_allclose(u, -lr * g, atol=1e-6)
    h0.engine.step = step
    for h in fed.hospitals.values():
        assert h.local_steps == 1 and h.plan.planned_steps == 3
        assert h.plan.noise_multiplier < by_epochs.hospitals[h.index].plan.noise_multiplier
    fed2 = Federation(cfg, progress=False)
    fed2.run()
    led = fed2.ledger()
    assert led["federation"]["local_steps_per_round"] == 1 and led["epochs"] is None
    for h in led["hospitals"]:
        assert h["steps"] == 3 and h["local_steps_per_round"] == 1
        acc = create_accountant(led["accountant"])
        acc.history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in h["releases"]]
        assert acc.get_epsilon(delta=led["delta"]) == pytest.approx(h["epsilon"], abs=1e-3)
        assert h["epsilon"] <= led["epsilon_target"] + 1e-9
    h = fed2.hospitals[1]
    with pytest.raises(PrivacyBudgetError, match="refuses round 4"):
        h.fit(h.get_weights())
    # the audit's reference models repeat a hospital's local DP-SGD (before: no top-level sigma, no DP)
    recipe = Recipe.from_metadata({"training": cfg.train.model_dump(mode="json"), "privacy": led})
    h1 = led["hospitals"][0]
    assert recipe.dp and recipe.noise_multiplier == h1["noise_multiplier"] and recipe.sample_rate == h1["sample_rate"]
    assert recipe.steps == h1["steps"] == 3 and recipe.epochs == 1  # one epoch is 4 steps at q 1/4


def test_simulation_engine_runs_the_same_apps_in_ray_and_keeps_hospital_state(data_root, tmp_path, capsys):
    """--engine simulation: Flower's simulation engine (Ray actors) runs process mode's ClientApp and
    ServerApp, SecAgg+ included. A hospital's state lives in its folder, so its second round continues
    its first (steps add up, rounds 1 and 2 recorded), whichever actor ran it; the bundle loads as any."""
    pytest.importorskip("ray")
    from opacus.accountants import create_accountant

    from privmed.bundle.format import read_run_log, run_dir
    from privmed.cli import main
    from privmed.inference import load_model

    out = tmp_path / "sim"
    rc = main(["federate", "--dataset", "covid19_xray", "--data-root", str(data_root), "--rounds", "2",
               "--local-epochs", "1", "--engine", "simulation", "--out", str(out), "--quiet", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "simulation" and summary["secure_aggregation"]
    model = load_model(out)
    led = model.metadata["privacy"]
    assert "simulation engine (Ray)" in led["federation"]["framework"]
    assert [r["hospitals"] for r in led["federation"]["participation"]] == [[1, 2, 3], [1, 2, 3]]
    for h in led["hospitals"]:
        assert h["rounds_run"] == [1, 2] and h["steps"] == 2 * h["local_steps_per_round"]
        acc = create_accountant(led["accountant"])
        acc.history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in h["releases"]]
        assert acc.get_epsilon(delta=led["delta"]) == pytest.approx(h["epsilon"], abs=1e-3)
        assert h["epsilon"] <= led["epsilon_target"] + 1e-9
    assert read_run_log(out)["engine"] == "simulation"
    assert (run_dir(out) / "simulation" / "hospital-0" / "state.pt").is_file()
    img = next((data_root / "covid19_xray" / "test" / "covid").iterdir())
    assert set(model.predict(str(img)).probabilities) == {"covid", "normal", "viral_pneumonia"}


def test_a_hospital_augments_pixels_but_never_scattering_maps():
    """As privmed train: only a model whose trainable part sees pixels gets pixel augmentation. The
    ScatterNet CNN's inputs are cached 4-d scattering maps (before: rotated and zoomed like pixels)."""
    import torch

    from privmed.federated.hospital import Hospital

    y = torch.arange(100) % 2
    for model, x, augments in (("scatter_cnn", torch.rand(100, 81, 16, 16), False),
                               ("cnn", torch.rand(100, 1, 32, 32), True)):
        cfg = FederatedConfig(train={"dataset": "covid19_xray", "model": model}, rounds=1, local_epochs=1)
        assert cfg.train.augment.enabled
        h = Hospital(0, x, y, torch.arange(100), 2, cfg, 1e-4)
        assert (h.augment is not None) is augments, model


def test_prompt_grid_collects_every_reply_as_it_arrives_and_stops_at_the_timeout():
    """Process mode's server grid: replies that come in over several pulls are all returned; a hospital
    that never answers ends the wait at the timeout with the replies that did come."""
    import time

    from flwr.app import Message, RecordDict

    from privmed.federated.grid import LocalGrid, PromptGrid

    class Slow(LocalGrid):  # a reply is pulled only on the third pull after its push
        pulls = 0

        def pull_messages(self, message_ids):
            Slow.pulls += 1
            return super().pull_messages(message_ids) if Slow.pulls >= 3 else []

    def answer(message, context):
        return Message(RecordDict(), reply_to=message)

    inner = Slow(answer, [11, 12, 13], [0, 1, 2])
    grid = PromptGrid(inner, interval=0.01)
    msgs = [grid.create_message(RecordDict(), "query", n, "g") for n in grid.get_node_ids()]
    replies = grid.send_and_receive(msgs, timeout=5)
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 12, 13] and Slow.pulls == 3
    inner.dropped = {13}  # offline: its message is never answered
    msgs = [grid.create_message(RecordDict(), "query", n, "g") for n in (11, 12, 13)]
    t0 = time.monotonic()
    replies = grid.send_and_receive(msgs, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2 and sorted(r.metadata.src_node_id for r in replies) == [11, 12]
