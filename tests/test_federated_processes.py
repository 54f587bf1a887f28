"""Process mode of ``privmed federate`` (``--engine processes``): a real flower-superlink and one
flower-supernode per hospital as OS processes, TLS, ``flwr run``; covid19_xray (216 training images,
cached features), 3 hospitals, 2 rounds. Faults: a SuperNode killed mid-round, a SuperLink killed
mid-round (resume from the checkpoint). A few minutes each on 2 shared cores."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from privmed.federated.processes import flower_commands, processes_with_token  # noqa: E402

pytestmark = pytest.mark.skipif(bool(flower_commands()), reason=f"Flower commands missing: {flower_commands()}")


def _cfg(data_root, **kw):
    from privmed.federated.config import FederatedConfig

    base = {"train": {"dataset": "covid19_xray", "data_root": str(data_root)}, "hospitals": 3, "rounds": 2,
            "local_epochs": 1, "engine": "processes", "stage_timeout": 90}
    base.update(kw)
    return FederatedConfig(**base)


def _run(cfg, out, fault=None):
    from privmed.federated.run import federate_bundle

    seen = {}

    def on_tick(dep, done):
        seen["dep"] = dep
        if fault:
            fault(dep, done)

    federate_bundle(cfg, out, progress=False, on_tick=on_tick)
    return seen["dep"]


def _site_ledger(dep, h):
    p = dep.root / f"hospital-{h}" / "ledger.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _check_logs_and_processes(dep, data_root):
    assert processes_with_token(dep.token) == []  # nothing left running, children included
    logs = {p.name: p.read_text(errors="replace") for p in dep.logs.iterdir()}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log", "serverapp.log"} <= set(logs)
    assert "[ROUND 1]" in logs["serverapp.log"]  # Flower counts the rounds of its own run
    names = [p.name for p in (data_root / "covid19_xray" / "train").rglob("*") if p.is_file()]
    assert not any(n in text for n in names for text in logs.values())  # no image (patient) file names


def test_stop_ends_detached_grandchildren_and_the_certificate_verifies(tmp_path):
    import time

    from cryptography import x509

    from privmed.federated.processes import Deployment

    dep = Deployment(tmp_path, [0], tls=True)
    # a child that starts a detached grandchild (as Flower's SuperExec is started) and one that exits
    dep.superlink = dep._spawn(["bash", "-c", "setsid sleep 300 & sleep 300"], "superlink.log")
    time.sleep(0.5)
    assert len(processes_with_token(dep.token)) >= 2
    dep.stop(grace=2)
    assert processes_with_token(dep.token) == []
    ca = x509.load_pem_x509_certificate(dep.tls["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(dep.tls["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def test_a_checkpoint_is_resumed_only_by_the_same_federation(tmp_path, data_root):
    from types import SimpleNamespace

    import numpy as np

    from privmed.errors import PrivmedError
    from privmed.federated.processes import prepare

    setup = SimpleNamespace(site_records={}, n_units=216, initial=[np.zeros(3)], delta=4e-4,
                            splits=SimpleNamespace(classes=["a", "b"]))
    plan = prepare(tmp_path, _cfg(data_root), setup)
    (plan.parent / "checkpoint.npz").write_bytes(b"round 1")
    (plan.parent / "status.json").write_text('{"state": "failed"}')
    prepare(tmp_path, _cfg(data_root), setup)  # the same federation: resumes
    assert not (plan.parent / "status.json").exists()  # an old verdict never ends the new run
    with pytest.raises(PrivmedError, match="different federation"):
        prepare(tmp_path, _cfg(data_root, rounds=3), setup)
    assert (plan.parent / "checkpoint.npz").read_bytes() == b"round 1"


@pytest.mark.slow
def test_processes_mode_trains_a_bundle_over_tls(data_root, tmp_path):
    from privmed.bundle.format import read_metadata, read_run_log
    from privmed.inference import load_model
    from privmed.privacy.ledger import recompute

    out = tmp_path / "fed"
    dep = _run(_cfg(data_root), out)
    meta = read_metadata(out).raw
    p = meta["privacy"]
    assert recompute(p) == pytest.approx(p["epsilon"], abs=1e-3) and p["epsilon"] <= p["epsilon_target"] + 1e-9
    assert [r["hospitals"] for r in p["federation"]["participation"]] == [[1, 2, 3], [1, 2, 3]]
    assert "OS processes" in p["federation"]["framework"] and "TLS" in p["federation"]["framework"]
    for h in p["hospitals"]:
        assert h["steps"] == 2 * h["local_steps_per_round"] and h["rounds_run"] == [1, 2]
    run = read_run_log(out)
    assert run["engine"] == "processes" and run["processes"]["restarts"] == 0
    # each SuperNode got only its own hospital's records, disjoint from the others'
    sites = [{r["path"] for r in json.loads((dep.root / f"hospital-{h}" / "site.json").read_text())["records"]}
             for h in range(3)]
    assert all(sites[a].isdisjoint(sites[b]) for a in range(3) for b in range(a + 1, 3))
    link_log = (dep.root / "logs" / "superlink.log").read_text()
    assert "running on https://127.0.0.1" in link_log and "insecure" not in link_log.lower()  # TLS, our CA
    assert (dep.root / "tls" / "ca.crt").is_file() and (dep.root / "tls" / "superlink.key").stat().st_mode & 0o077 == 0
    _check_logs_and_processes(dep, data_root)
    # global class weights: one count exchange before round 1, the same weighting in every hospital
    import numpy as np
    import torch

    from privmed.federated.deployed import read_checkpoint
    from privmed.privacy.releases import weights_from_counts

    states = [torch.load(dep.root / f"hospital-{h}" / "state.pt", weights_only=False) for h in range(3)]
    w = np.asarray(read_checkpoint(dep.root / "server" / "checkpoint.npz")[1]["class_weight"])
    assert np.allclose(w, weights_from_counts(sum(st["counts"] for st in states)))
    assert all(np.allclose(st["class_weight"], w) for st in states)
    img = next((data_root / "covid19_xray" / "test" / "covid").iterdir())
    assert set(load_model(out).predict(str(img)).probabilities) == {"covid", "normal", "viral_pneumonia"}


@pytest.mark.slow
def test_a_supernode_killed_mid_round_and_the_run_finishes(data_root, tmp_path):
    from privmed.bundle.format import read_metadata
    from privmed.privacy.ledger import recompute

    killed = []

    def fault(dep, done):
        # round 1 is checkpointed, so round 2 has begun: hospital 3's SuperNode dies before it answers
        if not killed and done == 1:
            dep.kill_supernode(2)
            killed.append(done)

    out = tmp_path / "fed"
    # the dead hospital's stage waits out stage_timeout; a live hospital's slowest stage takes ~12 s here
    dep = _run(_cfg(data_root, tls=False, stage_timeout=45), out, fault)
    assert killed == [1]
    p = read_metadata(out).raw["privacy"]
    assert [r["hospitals"] for r in p["federation"]["participation"]] == [[1, 2, 3], [1, 2]]
    h3 = p["hospitals"][2]
    assert h3["rounds_run"] == [1] and h3["steps"] == h3["local_steps_per_round"]
    assert recompute(p) == pytest.approx(p["epsilon"], abs=1e-3)
    _check_logs_and_processes(dep, data_root)


@pytest.mark.slow
def test_a_killed_superlink_resumes_from_the_checkpoint(data_root, tmp_path):
    from privmed.bundle.format import read_metadata, read_run_log

    killed = []

    def fault(dep, done):
        # hospital 1 has started (or just finished) training round 2; the round is not checkpointed
        led = _site_ledger(dep, 0)
        if not killed and done == 1 and (led.get("pending_round") == 2 or 2 in led.get("rounds_run", [])):
            dep.kill_superlink()
            killed.append(done)

    out = tmp_path / "fed"
    # one spare round of budget: the lost round 2 is run again and both runs of it count
    dep = _run(_cfg(data_root, tls=False, spare_rounds=1), out, fault)
    assert killed == [1]
    assert read_run_log(out)["processes"]["restarts"] == 1
    p = read_metadata(out).raw["privacy"]
    assert [r["round"] for r in p["federation"]["participation"]] == [1, 2]
    h1 = p["hospitals"][0]
    # round 1, round 2 (lost with the SuperLink: counted by the write-ahead ledger), round 2 again
    assert h1["steps"] == 3 * h1["local_steps_per_round"] and h1["rounds_run"][0] == 1 and h1["rounds_run"][-1] == 2
    assert p["epsilon"] <= p["epsilon_target"] + 1e-9
    _check_logs_and_processes(dep, data_root)
