"""Core pipeline on real data: reading, patient-grouped splits, transforms, DP training with a
strict budget, kill-and-resume, bundles (tamper detection), evaluation and the CLI's errors."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from privmed.cli import main
from privmed.config import TrainConfig
from privmed.data.datasets import open_dataset, patient_id_from_name, train_val_split
from privmed.data.read import load_image
from privmed.data.transforms import Augment, Preprocess
from privmed.errors import BundleError, DatasetError, ImageReadError, PrivacyBudgetError
from privmed.privacy import check_budget, epsilon_for, sigma_for


def test_patient_ids_and_grouped_split(data_root):
    ds = open_dataset("chest_xray_pneumonia", data_root)
    train = ds.records("train")
    assert len(train) == 5216 and ds.classes == ["normal", "pneumonia"]
    assert all(r.patient_id for r in train)
    pneu = {r.patient_id for r in train if r.label == 1}
    assert len(pneu) == 1635  # the dataset README's count
    tr, va = train_val_split(train, 0.1, seed=0)
    assert len(tr) + len(va) == len(train)
    assert not {r.patient_id for r in tr} & {r.patient_id for r in va}
    for label in (0, 1):  # a keyed hash per patient: class shares close to the whole (not forced)
        share_all = np.mean([r.label == label for r in train])
        assert abs(np.mean([r.label == label for r in va]) - share_all) < 0.08
    assert 0.07 < len(va) / len(train) < 0.13
    assert train_val_split(train, 0.1, seed=0)[1] == va  # seeded
    # one patient's side depends on that patient alone: removing others moves no one
    others_removed = [r for r in train if r.patient_id != train[0].patient_id]
    val_ids = {id(r) for r in train_val_split(others_removed, 0.1, seed=0)[1]}
    assert val_ids == {id(r) for r in va if r in others_removed}


def test_split_and_units_do_not_depend_on_where_the_dataset_lives(tmp_path, data_root):
    """COVID-19 X-ray has no patient ids: its images are the units. Keyed by path, a user whose data
    sat elsewhere got another validation split (231/20 train/val instead of 216/35 here) and an
    audit of the shipped bundle would have labelled training images as non-members."""
    from privmed.training.data import split_records, unit_ids

    (tmp_path / "elsewhere").symlink_to(data_root, target_is_directory=True)
    here, there = (split_records(TrainConfig(dataset="covid19_xray", data_root=root))
                   for root in (data_root, tmp_path / "elsewhere"))
    assert here.fingerprint == there.fingerprint and 0 < len(here.val) < len(here.train)
    assert [r.image for r in here.train] == [r.image for r in there.train]
    assert all(r.image.startswith("copies:") for r in here.train + here.val)
    assert torch.equal(unit_ids(here.train, "auto")[0], unit_ids(there.train, "auto")[0])


def test_patient_id_patterns():
    assert patient_id_from_name("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_id_from_name("NORMAL2-IM-0381-0001.jpeg") == "NORMAL2-IM-0381"
    assert patient_id_from_name("IM-0011-0001-0002.jpeg") == "IM-0011"
    assert patient_id_from_name("Tr-glTr_0000.jpg") is None


def test_read_real_jpeg_png_and_errors(data_root):
    img = load_image(next((data_root / "chest_xray_pneumonia/test/normal").glob("*.jpeg")))
    assert img.pixels.shape == (224, 224) and img.pixels.dtype == np.float32
    assert 0 <= img.pixels.min() < img.pixels.max() <= 1
    png = next((data_root / "covid19_xray/train/covid").glob("*.png"))
    assert load_image(png.read_bytes()).meta["format"] == "png"
    with pytest.raises(ImageReadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageReadError, match="not an image"):
        load_image(b"hello, this is text renamed to .png")
    buf = io.BytesIO()
    PILImage.fromarray((np.arange(64 * 64).reshape(64, 64) % 65535).astype(np.uint16)).save(buf, "PNG")
    assert load_image(buf.getvalue()).pixels.max() <= 1.0  # 16-bit PNG scales by its range


def test_preprocess_and_augment_shapes():
    x = np.random.default_rng(0).random((300, 280)).astype(np.float32)
    out = Preprocess()(x)
    assert out.shape == (224, 224) and 0 <= out.min() and out.max() <= 1
    from privmed.config import PreprocessConfig

    assert Preprocess(PreprocessConfig(size=64, clahe=True, denoise=True))(x).shape == (64, 64)
    batch = torch.rand(4, 1, 64, 64)
    aug = Augment(seed=0)(batch)
    assert aug.shape == batch.shape and not torch.equal(aug, batch)
    from privmed.config import AugmentConfig

    assert torch.equal(Augment(AugmentConfig(enabled=False))(batch), batch)


def test_accounting_matches_opacus_and_budget_checks():
    q, steps, delta = 0.05, 400, 1e-5
    sigma = sigma_for(2.0, delta, q, steps)
    eps = epsilon_for(sigma, q, steps, delta)
    assert eps <= 2.0 and eps > 1.95  # calibrated from above, tight
    assert epsilon_for(sigma, q, steps * 2, delta) > eps  # more steps, more epsilon
    with pytest.raises(PrivacyBudgetError, match="delta"):
        check_budget(2.0, 1 / 1000, 1000)
    with pytest.raises(PrivacyBudgetError, match="epsilon"):
        check_budget(0.0, 1e-6, 1000)


def _cfg(data_root, **kw):
    base = dict(dataset="covid19_xray", model="cnn", epochs=3, batch_size=32, data_root=data_root,
                preprocess={"size": 32}, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_dp_training_respects_budget_and_resumes_with_fresh_noise(data_root, tmp_path, monkeypatch):
    """A killed and resumed run takes the same steps and spends the same epsilon; its noise after
    the resume is fresh (secret), so its weights differ from an uninterrupted run's."""
    from privmed.training import trainer

    full = trainer.train(_cfg(data_root), checkpoint_dir=tmp_path / "a", progress=False)
    assert full.privacy["epsilon"] <= 2.0
    assert full.privacy["delta"] < 1 / len(full.splits.train)
    # q and steps are public settings, not functions of the private number of units
    assert full.privacy["sample_rate"] == 0.1 and full.privacy["steps"] == 3 * 10
    assert [h["epsilon"] for h in full.history] == sorted(h["epsilon"] for h in full.history)

    # kill the run right after the first checkpoint is written, then resume it
    real_save, calls = trainer._save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(data_root), checkpoint_dir=tmp_path / "b", progress=False)
    resumed = trainer.train(_cfg(data_root), checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.privacy["steps"] == full.privacy["steps"]  # none forgotten, none twice
    assert resumed.privacy["epsilon"] == full.privacy["epsilon"]
    # the DP class counts were released once, before the kill, and reused (a redraw would be a 2nd release)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["dp_class_counts"]
    assert resumed.privacy["class_weights"]["dp_counts"] == [round(c, 2) for c in saved]
    assert any(not torch.equal(a, b) for a, b in zip(full.model.trainable.state_dict().values(),
                                                     resumed.model.trainable.state_dict().values()))


def _patient_folder(data_root, dest, per_class=24, per_patient=3):
    """Real covid19_xray films (covid, normal) in a folder whose names carry no ids, with a
    ``patients.csv`` (image,patient) giving each patient ``per_patient`` films."""
    rows = ["image,patient"]
    for cls in ("covid", "normal"):
        (dest / "train" / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((data_root / "covid19_xray/train" / cls).glob("*"))[:per_class]):
            rel = f"train/{cls}/{i:03d}{src.suffix.lower()}"
            shutil.copy(src, dest / rel)
            rows.append(f"{rel},{cls}-patient-{i // per_patient}")
    (dest / "patients.csv").write_text("\n".join(rows) + "\n")
    return dest


def test_patient_unit_resume_after_a_kill_mid_epoch(data_root, tmp_path, monkeypatch):
    """Killed inside a DP step in the middle of epoch 2 (the last checkpoint is epoch 1's), then
    resumed: the run ends with the steps and epsilon of an uninterrupted run's plan, per patient,
    and the kill left neither a half-written checkpoint nor a bundle."""
    from privmed.bundle.format import read_metadata
    from privmed.pipeline import train_bundle
    from privmed.privacy.engine import DPSGD

    folder = _patient_folder(data_root, tmp_path / "data")
    cfg = TrainConfig(dataset=str(folder), model="cnn", epochs=3, batch_size=32, preprocess={"size": 32},
                      augment={"enabled": False}, val_fraction=0.25, seed=1, privacy={"accountant": "rdp"})
    plan = read_metadata(train_bundle(cfg, tmp_path / "full", progress=False)).raw["privacy"]
    assert plan["unit_of_privacy"] == "patient" and plan["epsilon"] <= 2.0
    per_epoch = round(1 / plan["sample_rate"])
    assert plan["steps"] == 3 * per_epoch and per_epoch >= 3
    assert "n_units_train" not in plan and plan["n_units_train_dp"] is not None  # a DP estimate only

    real_step, calls = DPSGD.step, []

    def step_then_die(self, *args):
        real_step(self, *args)
        calls.append(1)
        if len(calls) == per_epoch + 2:  # two steps into epoch 2: epoch 1's checkpoint is the last
            raise KeyboardInterrupt

    monkeypatch.setattr(DPSGD, "step", step_then_die)
    out = tmp_path / "b" / "bundle"
    with pytest.raises(KeyboardInterrupt):
        train_bundle(cfg, out, progress=False)
    work = out.with_name("bundle.partial")
    assert [p.name for p in work.iterdir()] == ["checkpoint.pt"]  # no temporary file beside it
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["bundle.partial"]
    ckpt = torch.load(work / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and sum(n for _, _, n in ckpt["privacy"]["history"]) == per_epoch

    monkeypatch.setattr(DPSGD, "step", real_step)
    resumed = read_metadata(train_bundle(cfg, out, progress=False)).raw["privacy"]
    assert resumed["unit_of_privacy"] == "patient"
    assert resumed["steps"] == plan["steps"]  # the 2 lost steps redone from the checkpoint, none twice
    assert resumed["epsilon"] == plan["epsilon"] and resumed["epochs"] == 3
    assert not work.exists() and sorted(p.name for p in out.parent.iterdir()) == ["bundle", "bundle.run"]
    from privmed.privacy.budget import Registry, key_of
    from privmed.training.data import split_records

    # two runs spent the dataset's budget (the full one and the killed one); the resume spent nothing new
    assert Registry().summary(key_of(split_records(cfg)), delta=1e-5)["runs"] == 2


def test_bundle_roundtrip_tamper_and_evaluate(small_bundle, tmp_path, data_root):
    import privmed

    meta = json.loads((small_bundle / "metadata.json").read_text())
    p = meta["privacy"]
    for key in ("mechanism", "epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps",
                "epochs", "accountant", "unit_of_privacy", "opacus_version"):
        assert key in p
    assert p["epsilon"] <= 2.0 and p["delta"] == 1e-5 and "n_units_train" not in p
    model = privmed.load_model(small_bundle)
    img = next((data_root / "covid19_xray/test/normal").glob("*"))
    pred = model.predict(img)
    assert pred.label in model.classes
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-5

    bad = tmp_path / "tampered"
    shutil.copytree(small_bundle, bad)
    raw = bytearray((bad / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (bad / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum"):
        privmed.load_model(bad)

    from privmed.evaluation.evaluate import evaluate

    r = evaluate(small_bundle, "covid19_xray", "test", data_root, progress=False)
    assert r["n"] + r["private"]["leaked_test_images_removed"] == 66
    assert 0 <= r["accuracy"] <= 1 and len(r["confusion_matrix"]) == 3
    with pytest.raises(BundleError, match="classes"):
        evaluate(small_bundle, "chest_xray_pneumonia", "test", data_root, progress=False)


def test_record_keeps_private_counts_out_of_the_bundle(small_bundle, tmp_path, data_root, capsys):
    """`privmed evaluate --record` writes only public test metrics into the bundle (the whole official
    test split); the leak-free subset, a function of the training images, goes to the private run log,
    or nowhere for a copy without one. Failed before issue 29: `leaked_test_images_removed` (covid19_xray: 8)
    went into metadata.json, and `--record --split val` wrote exact validation metrics into the released bundle."""
    from privmed.bundle.format import PRIVATE_METRICS, read_metadata, read_run_log, run_dir, update_metadata

    bundle = Path(shutil.copytree(small_bundle, tmp_path / "b"))
    update_metadata(bundle, metrics={"old/test": {"n": 1, "leaked_test_images_removed": 3}})  # an older record
    args = ["evaluate", str(bundle), "--data-root", str(data_root), "--record", "--json"]

    def recorded() -> dict:
        text = (bundle / "metadata.json").read_text()
        assert not any(k in text for k in PRIVATE_METRICS)
        return read_metadata(bundle).raw["metrics"]

    assert main(args) == 0  # no run log beside the copy: the private counts are not recorded anywhere
    out = capsys.readouterr()
    assert "leaked_test_images_removed" in json.loads(out.out)["private"]  # shown to the data owner
    assert "no private run log" in out.err and not run_dir(bundle).exists()
    assert set(recorded()) == {"old/test", "covid19_xray/test"}

    shutil.copytree(run_dir(small_bundle), run_dir(bundle))
    assert main(args) == 0
    entry = recorded()["covid19_xray/test"]
    private = read_run_log(bundle)["metrics"]["covid19_xray/test"]
    # the bundle: the whole official test split (its size says nothing of the training images);
    # the run log: the leak-free subset and how many test images it dropped
    assert entry["n"] == 66 and "whole official test split" in entry["test_images"]
    assert private["n"] + private["private"]["leaked_test_images_removed"] == 66

    before = (bundle / "metadata.json").read_bytes()
    assert main(["evaluate", str(bundle), "--data-root", str(data_root), "--record", "--split", "val"]) == 2
    assert "only the public test split" in capsys.readouterr().err
    assert (bundle / "metadata.json").read_bytes() == before


def test_checkpoint_is_owner_only(tmp_path):
    """The checkpoint holds exact per-epoch validation accuracy: 0600 in a 0700 folder like the run log
    (before issue 29: 0644 in 0755 under the usual umask)."""
    from privmed.training.trainer import _save_checkpoint

    ckpt = tmp_path / "out.partial" / "checkpoint.pt"
    _save_checkpoint(ckpt, {"history": [{"val_accuracy": 0.5}]})
    assert ckpt.stat().st_mode & 0o777 == 0o600 and ckpt.parent.stat().st_mode & 0o777 == 0o700


def test_gdp_accountant_is_refused(tmp_path):
    """GDP is not offered where a guarantee is stated (issue 29; see the next test for why)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="accountant"):
        TrainConfig(privacy={"accountant": "gdp"})
    for argv in (["train", "--dataset", "covid19_xray", "--accountant", "gdp", "--out", str(tmp_path / "x")],
                 ["privacy", "account", "--sigma", "1", "--sample-rate", "0.25", "--steps", "20", "--delta", "1e-5",
                  "--accountant", "gdp"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert not (tmp_path / "x").exists()


def test_gdp_understates_epsilon():
    """Why GDP was removed: at sigma 1, q 0.25, 20 steps, delta 1e-5 Opacus's GDP accountant (a central
    limit approximation) gives epsilon 6.86 where PRV (numerically tight, with error bounds) gives 8.09:
    a stated guarantee 15 % too strong."""
    from opacus.accountants import GaussianAccountant, PRVAccountant

    eps = {}
    for name, acc in (("gdp", GaussianAccountant()), ("prv", PRVAccountant())):
        acc.history = [(1.0, 0.25, 20)]
        eps[name] = acc.get_epsilon(delta=1e-5)
    assert eps["gdp"] == pytest.approx(6.86, abs=0.01) and eps["prv"] == pytest.approx(8.09, abs=0.02)
    assert eps["prv"] - eps["gdp"] > 1


def test_cli_errors_are_one_line(capsys, tmp_path, data_root):
    assert main(["train", "--dataset", "no_such_set", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["train", "--dataset", "covid19_xray", "--epsilon", "0", "--out", str(tmp_path / "x")]) == 2
    assert "epsilon" in capsys.readouterr().err
    assert main(["train", "--dataset", "covid19_xray", "--delta", "0.5", "--epochs", "1", "--set",
                 "preprocess.size=32", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "delta must be" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert main(["evaluate", str(tmp_path), "--dataset", "covid19_xray"]) == 2
    assert "not a privmed bundle" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_empty_class_folder_is_a_clear_error(tmp_path, data_root):
    src = next((data_root / "covid19_xray/train/covid").glob("*.jpeg"))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    shutil.copy(src, tmp_path / "train" / "a" / "x.jpeg")
    with pytest.raises(DatasetError, match="holds no images"):
        open_dataset(tmp_path).records("train")


def test_privacy_account_cli(capsys):
    assert main(["privacy", "account", "--sigma", "1.0", "--sample-rate", "0.01", "--steps", "1000",
                 "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accountant"] == "prv" and 0 < out["epsilon"] < 10


def test_medmnist_style_npz_trains_like_a_folder(tmp_path, data_root):
    """A MedMNIST-layout .npz made from real images reads, splits and trains like an image folder."""
    from privmed.data.medmnist import classes_for, md5
    from privmed.training.trainer import train

    ds = open_dataset("covid19_xray", data_root)
    arrays = {}
    for split in ("train", "test"):
        recs = ds.records(split)[::4]
        arrays[f"{split}_images"] = np.stack(
            [(Preprocess(PreprocessConfig(size=28))(load_image(r.path).pixels) * 255).astype(np.uint8) for r in recs])
        arrays[f"{split}_labels"] = np.array([[r.label] for r in recs])
    path = tmp_path / "covid_sample.npz"
    np.savez(path, **arrays)
    npz = open_dataset(path)
    assert npz.splits == ["test", "train"] and npz.classes == ["0", "1", "2"]
    assert classes_for(Path("x/pneumoniamnist.npz")) == ["normal", "pneumonia"]
    recs = npz.records("train")
    assert len(recs) == len(arrays["train_labels"]) and recs[3].split == "train"
    assert npz.load(recs[3]).pixels.shape == (28, 28)
    res = train(TrainConfig(dataset=str(path), model="cnn", epochs=1, batch_size=8, preprocess={"size": 28},
                            augment={"enabled": False}), progress=False)
    assert res.privacy["epsilon"] <= 2.0 and len(res.history) == 1
    assert len(md5(path)) == 32


from privmed.config import PreprocessConfig  # noqa: E402


def test_unreadable_training_image_error_names_no_patient(tmp_path):
    from privmed.data.datasets import Record
    from privmed.training.data import load_pixels

    bad = tmp_path / "normal" / "person999_bacteria_1.jpeg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg")
    with pytest.raises(DatasetError) as err:
        load_pixels([Record(bad, 0, "person999")], TrainConfig(), progress=False)
    assert "person999" not in str(err.value) and "unreadable" in str(err.value)
