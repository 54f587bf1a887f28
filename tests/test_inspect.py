"""Dataset audit on real data: exact and near duplicates, leakage into test, patient counts."""
import hashlib
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import require_dataset
from privmed.config import default_data_root
from privmed.data.datasets import open_dataset
from privmed.data.inspect import format_report, hamming_pairs, inspect_dataset, leaked_test_records


def _real(name):
    return open_dataset(name, require_dataset(default_data_root(), name))


@pytest.fixture
def tiny(tmp_path):
    """Three real chest films: A copied byte for byte into test, B resized + re-encoded into test,
    C only in test; plus a truncated and a fake image in train."""
    src = _real("chest_xray_pneumonia")
    a, c = src.records("train")[0].path, src.records("train")[1].path
    b = next(r.path for r in src.records("train") if r.label == 1)
    for d in ("train/normal", "train/pneumonia", "test/normal", "test/pneumonia"):
        (tmp_path / d).mkdir(parents=True)
    shutil.copy(a, tmp_path / "train/normal/a.jpeg")
    shutil.copy(b, tmp_path / "train/pneumonia/b.jpeg")
    shutil.copy(a, tmp_path / "test/normal/a_copy.jpeg")
    shutil.copy(c, tmp_path / "test/normal/c.jpeg")
    img = PILImage.open(b).convert("L").resize((200, 200), PILImage.LANCZOS)
    img.save(tmp_path / "test/pneumonia/b_near.jpeg", quality=80)
    (tmp_path / "train/normal/cut.jpeg").write_bytes(a.read_bytes()[:3000])
    (tmp_path / "train/normal/fake.png").write_text("<html>404 not found</html>")
    return open_dataset(tmp_path)


def test_tiny_folder_leak_found(tiny):
    rep = inspect_dataset(tiny, show_paths=True)
    json.dumps(rep)  # JSON-able
    leak = rep["leakage"]["test"]
    assert leak["exact"] == 1 and leak["near_only"] == 1 and leak["leaked"] == 2
    assert sorted(leak["files"]) == ["test/normal/a_copy.jpeg", "test/pneumonia/b_near.jpeg"]
    assert leak["per_class"]["normal"] == {"images": 2, "exact": 1, "near": 0, "leaked": 1}
    assert leak["per_class"]["pneumonia"]["near"] == 1 and leak["label_conflicts"] == 0
    bad = {u["path"]: u["reason"] for u in rep["unreadable"]}
    assert set(bad) == {"train/normal/cut.jpeg", "train/normal/fake.png"}
    assert "truncated" in bad["train/normal/cut.jpeg"] and "html" in bad["train/normal/fake.png"].lower()
    assert rep["counts"]["train"] == {"normal": 3, "pneumonia": 1, "total": 4}
    assert rep["sizes"]["test"] == {"224x224": 2, "200x200": 1}
    leaked = leaked_test_records(tiny)
    assert sorted(r.path.name for r in leaked) == ["a_copy.jpeg", "b_near.jpeg"]
    assert [r.path.name for r in leaked_test_records(tiny, near_duplicates=False)] == ["a_copy.jpeg"]
    text = format_report(rep)
    assert "Leakage test -> train: 2 of 3" in text and "b_near.jpeg" in text


def test_report_hashes_file_names_unless_asked(tiny, capsys):
    """The report printed file names such as person123_bacteria_1.jpeg: patient ids in the output."""
    from privmed.cli import main

    (tiny.root / "test/normal/c.jpeg").rename(tiny.root / "test/normal/person123_virus_7.jpeg")
    # a val split holding a copy of a test film: reported under leakage_between ("val -> test")
    for d in ("val/normal", "val/pneumonia"):
        (tiny.root / d).mkdir(parents=True)
    shutil.copy(tiny.root / "test/normal/person123_virus_7.jpeg", tiny.root / "val/normal/person456_val.jpeg")
    other = [r.path for r in _real("chest_xray_pneumonia").records("train") if r.label == 1][1]
    shutil.copy(other, tiny.root / "val/pneumonia/d.jpeg")  # not in test
    from privmed.data.datasets import open_dataset as reopen

    ds = reopen(tiny.root)
    rep, again = inspect_dataset(ds), inspect_dataset(ds)
    blob = json.dumps(rep) + format_report(rep)
    for name in ("person123", "person456", "a_copy", "b_near", "cut.jpeg", "fake.png"):
        assert name not in blob, name
    leak = rep["leakage"]["test"]["files"]
    assert len(leak) == 2 and all(f.split("/")[-1].startswith("id-") for f in leak)
    assert {f.rsplit("/", 1)[0] for f in leak} == {"test/normal", "test/pneumonia"}  # folders stay
    assert set(leak).isdisjoint(again["leakage"]["test"]["files"])  # salted per run: not linkable
    between = rep["leakage_between"]["val -> test"]["files"]
    assert len(between) == 1 and between[0].startswith("val/normal/id-")
    assert main(["data", "inspect", str(tiny.root), "--exact-only"]) == 0
    out = capsys.readouterr().out
    assert "Leakage val -> test: 1 of 2" in out and "person123" not in out and "person456" not in out
    assert main(["data", "inspect", str(tiny.root), "--exact-only", "--show-paths"]) == 0
    out = capsys.readouterr().out
    assert "a_copy.jpeg" in out and "val/normal/person456_val.jpeg" in out


def test_covid_cross_split_copies(capsys):
    ds = _real("covid19_xray")
    rep = inspect_dataset(ds)
    leak = rep["leakage"]["test"]
    # every reported exact copy really is byte-identical to a train file
    train_sha = {hashlib.sha256(r.path.read_bytes()).hexdigest() for r in ds.records("train")}
    exact = [r for r in ds.records("test") if hashlib.sha256(r.path.read_bytes()).hexdigest() in train_sha]
    assert leak["exact"] == len(exact) == 6
    assert leak["leaked"] > leak["exact"]  # re-encoded copies exist too
    assert {f.split("/")[1] for f in leak["files"]} == {"covid"}
    assert rep["sizes"]["train"] == {"640x640": 251} and set(rep["modes"]["train"]) == {"L", "RGB"}
    assert rep["unreadable"] == [] and not rep["patients"]["available"]
    print(format_report(rep))


def test_brain_mri_has_216_exact_test_leaks():
    ds = _real("brain_tumor_mri")
    start = time.perf_counter()
    rep = inspect_dataset(ds)
    secs = time.perf_counter() - start
    leak = rep["leakage"]["test"]
    print(f"brain_tumor_mri audit: {secs:.1f} s; leak {leak['exact']} exact + {leak['near_only']} near")
    assert leak["exact"] == 216  # the known defect of the source (datasets README)
    assert leak["near_only"] > 0 and leak["leaked"] == len(leak["files"])
    assert sum(c["exact"] for c in leak["per_class"].values()) == 216
    assert rep["counts"]["test"]["total"] == 1311 and rep["counts"]["train"]["total"] == 5708
    assert rep["within_split"]["train"]["exact_groups"] > 0  # duplicates inside each split too
    assert rep["within_split"]["test"]["exact_groups"] > 0
    assert secs < 60


def test_chest_patients_counted_not_named():
    ds = _real("chest_xray_pneumonia")
    rep = inspect_dataset(ds, near_duplicates=False)
    pat = rep["patients"]
    assert pat["available"]
    assert pat["per_split"]["train"]["pneumonia"]["patients"] == 1635
    assert pat["per_split"]["train"]["normal"]["patients"] == 1211
    assert pat["shared_with_train"]["test"] == 170
    per = pat["images_per_patient"]
    train, test = per["train"], per["test"]
    assert train["patients"] == 1635 + 1211 and train["images_with_id"] == 5216 == 1341 + 3875
    assert train["max"] == 30 and test["max"] == 9  # one pneumonia id with 30 films (datasets README)
    for r in (train, test):
        hist = r["histogram"]
        assert sum(hist.values()) == r["patients"]  # every patient in one bin
        assert hist["1"] > r["patients"] / 2 and r["median"] == 1.0  # most ids have one film: median 1
        assert abs(r["mean"] - r["images_with_id"] / r["patients"]) < 0.01
    assert train["histogram"]["1"] == 1771 and train["histogram"]["10+"] == 21  # 21 ids with 10..30 films
    assert test["histogram"] == {"1": 345, "2": 30, "3": 23, "4": 11, "5": 10, "6": 4, "7": 2, "9": 2}
    assert sum(int(k) * v for k, v in test["histogram"].items()) == 624  # all under 10: exact image count
    text = format_report(rep)
    assert "train: 2846 patients, images per patient max 30, median 1" in text
    blob = json.dumps(pat) + text.split("Patients")[-1]
    assert "person" not in blob and "IM-" not in blob  # counts only, never ids
    assert rep["leakage"]["test"]["exact"] == 0  # README: exact duplicates only within splits
    assert rep["within_split"]["train"]["exact_groups"] > 0


def test_npz_dataset_leak(tmp_path):
    rng = np.random.default_rng(0)
    train = (rng.random((6, 28, 28)) * 255).astype(np.uint8)
    test = (rng.random((3, 28, 28)) * 255).astype(np.uint8)
    test[1] = train[4]
    np.savez(tmp_path / "mini.npz", train_images=train, train_labels=np.array([0, 1, 0, 1, 0, 1]),
             test_images=test, test_labels=np.array([0, 0, 1]))
    ds = open_dataset(tmp_path / "mini.npz")
    rep = inspect_dataset(ds, near_duplicates=False)
    assert rep["leakage"]["test"]["files"] == ["test#1"]
    assert rep["leakage"]["test"]["label_conflicts"] == 0
    assert [r.index for r in leaked_test_records(ds, near_duplicates=False)] == [1]


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(1)
    a = rng.random((50, 40)) > 0.5
    b = rng.random((70, 40)) > 0.5
    b[3] = a[7]
    dist = (a[:, None, :] != b[None, :, :]).sum(-1)
    expect = {(i, j) for i, j in zip(*np.nonzero(dist <= 12))}
    assert set(hamming_pairs(a, b, 12)) == expect and (7, 3) in expect
    same = set(hamming_pairs(a, a, 12, same=True))
    d2 = (a[:, None, :] != a[None, :, :]).sum(-1)
    assert same == {(i, j) for i, j in zip(*np.nonzero(d2 <= 12)) if i < j}
