"""How the chest bundle's OOD detector varies from one DP release to the next (issue 32, item 2).

    .venv/bin/python benchmarks/ood_release_sim.py [--releases 50] [--out FILE]

The shipped bundle is one draw of its mechanism; this redraws the mechanism's noise on the same data many
times, with the code that trains bundles: the class-means release on the training units
(``privacy.validation.ood_means_release``, noise multiplier ``ood_noise``) and the validation releases
(``privacy.validation.validation_releases``, the same split and epsilon as the bundle). Each draw is scored on the
Kermany test split (in-distribution refusal; the issue's limit is 5 %) and on the covid19_xray films that are
not Kermany copies (refused, or answered normal by the bundle's head: the issue's goal, >= 90 %), and on
simulated phone photos of every 4th test film through the camera path (accepted at the camera threshold,
which the same release fits on photos of the validation films). For
comparison, the same detector with its class means from the validation units instead (what a site
calibration does). Private data are read (the Kermany training folder); only aggregates over public test
films are printed. Features are cached in a temporary folder deleted at exit.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

import privmed.pipeline as pipeline
import privmed.privacy.validation as validation
from privmed.calibrate import site_outputs
from privmed.config import PrivacyConfig, TrainConfig
from privmed.data.datasets import load_record, open_dataset
from privmed.inference.ood import ood_scores
from privmed.inference.predictor import load_model
from privmed.training.data import split_records, unit_ids

sys.path.insert(0, str(Path(__file__).parent))
from ood_shift import cached, kermany_copies  # noqa: E402  (same copy rule and feature cache)


def stats(x) -> str:
    x = 100 * np.asarray(x)
    return f"{x.mean():.1f} % ({x.min():.1f}-{x.max():.1f})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="chest_xray_pneumonia")
    ap.add_argument("--releases", type=int, default=50)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(2)
    model = load_model(a.bundle)
    meta = model.metadata
    cfg = TrainConfig(**meta["training"])
    splits = split_records(cfg)
    kds, cds = open_dataset("chest_xray_pneumonia"), open_dataset("covid19_xray")
    copy_of, _ = kermany_copies(kds, cds)
    c_new = [r for s in ("train", "test") for r in cds.records(s) if copy_of[r.path] is None]
    with tempfile.TemporaryDirectory(prefix="ood_release_") as tmp:
        f = {n: cached(Path(tmp), n, model, recs) for n, recs in
             (("train", splits.train), ("val", splits.val), ("id", kds.records("test")), ("covid_new", c_new))}
    k, p = len(model.classes), meta["privacy"]
    privacy = {"epsilon_target": p["epsilon_target"], "delta": p["delta"], "accountant": p["accountant"]}
    validation.validation_history = functools.cache(validation.validation_history)  # a pure function, ~1 s a call
    y_tr = np.array([r.label for r in splits.train])
    u_tr, _ = unit_ids(splits.train, p["unit_of_privacy"])
    y_va = np.array([r.label for r in splits.val])
    u_va, _ = unit_ids(splits.val, p["unit_of_privacy"])
    cam_val = site_outputs(model, pipeline.camera_photos(splits.val))[1]
    cam_test = site_outputs(model, pipeline.camera_photos(kds.records("test")[::4], load_record))[1]
    shipped_camera = model.ood.get("camera_threshold", model.ood["threshold"])
    normal = model.label_index(softmax(f["covid_new"][0] / model.temperature, 1)) == model.classes.index("normal")
    sigma_o = PrivacyConfig().ood_noise
    rows = {}
    for side in ("training units (shipped)", "validation units (as a site calibration)"):
        out = []
        for _ in range(a.releases):
            means = (validation.ood_means_release(f["train"][1], y_tr, u_tr.numpy(), k, sigma_o)
                     if side.startswith("training") else None)
            _, _, block, _, _ = validation.validation_releases(*f["val"], y_va, u_va.numpy(), k, privacy, means=means,
                                                             camera_emb=cam_val)
            thr = block["threshold"]
            out.append((np.mean(ood_scores(f["id"][1], block) > thr),
                        np.mean((r := ood_scores(f["covid_new"][1], block) > thr)), np.mean(r | normal), thr,
                        np.mean(ood_scores(cam_test, block) <= block["camera_threshold"])))
        rows[side] = np.array(out)
    lines = [f"### The chest OOD detector over {a.releases} DP releases (`{a.bundle}`, {meta.get('model_id')})", "",
             f"Command: `.venv/bin/python benchmarks/ood_release_sim.py --releases {a.releases}`; "
             f"{time.strftime('%Y-%m-%d')}, 2-core CPU, {time.time() - t0:.0f} s. Mean (min-max) over releases; "
             f"class-mean noise multiplier {sigma_o:g} on the training units, validation releases at the bundle's "
             f"epsilon {p['epsilon_target']:g} (delta {p['delta']:g}). The shipped bundle's own threshold: "
             f"{model.ood['threshold']:.3f} (camera {model.ood.get('camera_threshold', float('nan')):.3f}): it refuses "
             f"{100 * np.mean(ood_scores(f['id'][1], model.ood) > model.ood['threshold']):.1f} % of the test split and "
             f"accepts {100 * np.mean(ood_scores(cam_test, model.ood) <= shipped_camera):.1f} % of the phone "
             "photos.", "",
             "| class means from | threshold | Kermany test refused (limit 5 %) | covid19_xray not Kermany refused | "
             f"refused or normal (goal >= 90 %) | phone photos of test films accepted (n={len(cam_test)}) |",
             "|---|---|---|---|---|---|"]
    for side, r in rows.items():
        lines.append(f"| {side} | {r[:, 3].mean():.3f} ({r[:, 3].min():.3f}-{r[:, 3].max():.3f}) | {stats(r[:, 0])} | "
                     f"{stats(r[:, 1])} | {stats(r[:, 2])}; >= 90 % in {100 * np.mean(r[:, 2] >= 0.9):.0f} % of "
                     f"releases | {stats(r[:, 4])} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
