"""Reports and the bench orchestration on a tiny run (synthetic images, head model: seconds)."""
from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privmed.config import TrainConfig
from privmed.evaluation import robustness
from privmed.evaluation.audit import audit_bundle
from privmed.evaluation.report import write_report
from test_audit import make_folder, tiny_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paper  # noqa: E402  (benchmarks/paper.py: the paper's tables)
from paper_report import write_run_report  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVMED_CACHE", str(tmp / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_folder(tmp / "data", n_train=40, n_test=30)
        b = tiny_bundle(tmp, dp=True, epochs=3)
        audit_bundle(b, k_reference=1, n_per_side=30)
        yield tmp, b
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_bundle_report_is_self_contained(tiny, tmp_path):
    _, b = tiny
    out = write_report(b, tmp_path / "rep")
    html = out["html"].read_text()
    pngs = _pngs(html)
    assert len(pngs) == 5  # curves, confusion, ROC, reliability, MIA ROC
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert "src='http" not in html and "<script" not in html  # nothing loaded from elsewhere
    md = out["markdown"].read_text()
    for name in ("training_curves", "confusion_matrix", "roc", "reliability", "mia_roc"):
        assert f"({name}.png)" in md and (tmp_path / "rep" / f"{name}.png").is_file()
    assert "Membership-inference audit" in md and "ceiling from (eps, delta)" in md
    assert "ERROR" not in md


def test_report_without_audit_says_how_to_get_one(tiny, tmp_path):
    import shutil

    _, b = tiny
    c = tmp_path / "b"
    shutil.copytree(b, c)  # the private run log (and its audit) stays with the original
    assert not (tmp_path / "b.run").exists()
    md = write_report(c, tmp_path / "rep2")["markdown"].read_text()
    assert "privmed privacy audit" in md and "mia_roc.png" not in md


def test_degradations_change_images_monotonically():
    rng = np.random.default_rng(0)
    img = rng.random((64, 64)).astype(np.float32)
    for kind, levels in robustness.SEVERITIES.items():
        diffs = [np.abs(robustness.degrade(img, kind, lv, np.random.default_rng(1)) - img).mean() for lv in levels]
        assert all(d > 0 for d in diffs), kind
        assert diffs == sorted(diffs), kind  # severity 3 is the strongest
        out = robustness.degrade(img, kind, levels[-1])
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


def test_bench_entry_and_run_report(tiny, tmp_path, monkeypatch):
    tmp, _ = tiny
    monkeypatch.setenv("PRIVMED_CACHE", str(tmp / "cache"))
    torch.set_num_threads(1)
    run = tmp_path / "run"
    data = str(tmp / "data")
    for eps in (1.0, None):
        e = paper._e(f"tiny-head-{eps}", "privacy_utility", f"tiny eps={eps}", data, "effnet_lite0_head", eps,
                     epochs=3, batch_size=16, size=64, audit_k=0, robustness=12 if eps else None,
                     overrides={"val_fraction": 0.4})
        r = paper.run_entry(e, run, progress=False)
        assert 0 <= r["test"]["accuracy"] <= 1 and r["images_per_s"] > 0
        assert "privmed train" in r["commands"]["train"] and (f"--epsilon {eps:g}" if eps else "--no-dp") in \
            r["commands"]["train"]
        # non-members: validation images only (without a copy in train); as many members
        assert r["audit"]["members"]["n"] == r["audit"]["nonmembers"]["n"] >= 20
        # the stored triplets: copies of one image now stay on one side of the validation split
        assert r["audit"]["nonmembers"]["excluded_copies_of_training_images"] == 0
    res = paper.load_results(run)
    rob = next(r for r in res if r.get("robustness"))["robustness"]
    assert set(rob["degradations"]) == set(robustness.SEVERITIES)
    assert all(len(v) == 3 for v in rob["degradations"].values())
    md = paper.results_markdown(res, run)
    assert "privmed train" in md and "privmed privacy audit" in md and "Robustness" in md
    out = write_run_report(run, tmp_path / "runrep")
    assert len(_pngs(out["html"].read_text())) >= 1
    # a finished entry is not retrained
    before = (run / "tiny-head-1.0" / "result.json").stat().st_mtime_ns
    again = paper.run_entry(paper._e("tiny-head-1.0", "privacy_utility", "x", data, "effnet_lite0_head", 1.0),
                            run, progress=False)
    assert again["label"] == "tiny eps=1.0" and (run / "tiny-head-1.0" / "result.json").stat().st_mtime_ns == before


def test_quick_plan_covers_the_cheap_parts():
    quick = [e for e in paper.entries() if e["quick"]]
    ids = {e["id"] for e in quick}
    assert {"chest-best-eps0.5", "chest-best-eps1", "chest-best-eps2", "chest-best-eps5", "chest-best-eps8",
            "chest-best-nodp"} <= ids
    full = {e["id"] for e in paper.entries()}
    assert {"chest-resnet50-nodp", "chest-vgg-nodp", "chest-cnn-eps5", "chest-cnn-eps2"} <= full
    assert len(full) == len(paper.entries())  # ids are unique


def test_each_entry_trains_exactly_the_command_its_row_prints():
    """The row shows a ``privmed train`` command; the bench must train that config, not a look-alike."""
    by_id = {e["id"]: e for e in paper.entries()}
    scatter = paper.entry_config(by_id["chest-scatter-eps2"])
    assert (scatter.model, scatter.epochs, scatter.lr, scatter.ema, scatter.privacy.max_grad_norm) == \
        ("scatter_cnn", 15, 4.0, 0.9, 0.1)
    assert "--set privacy.max_grad_norm=0.1" in paper.train_command(by_id["chest-scatter-eps2"], "b")
    best = by_id["chest-best-eps2"]
    expected = TrainConfig(model=best["model"], privacy={"epsilon": 2.0}).model_dump()
    assert paper.entry_config(best).model_dump() == expected
    assert paper.entry_config(by_id["covid19-ct-best-eps2"]).privacy.unit == "image"
    assert paper.entry_config(by_id["chest-cnn-nodp"]).privacy.enabled is False
