"""OCR-assisted labelling on real X-rays with the class name printed on them: propose, review, apply."""
from __future__ import annotations

import csv
import random

import numpy as np
import pytest

from privmed.cli import main
from privmed.deid.labelling import match
from privmed.deid.ocr import tesseract_path

pytestmark = pytest.mark.skipif(tesseract_path() is None, reason="Tesseract 5 is not installed (apt-get install "
                                                                 "tesseract-ocr; .ci/run does)")


def test_match_is_fuzzy_and_spans_words():
    assert match([("PNEUMON1A", 90.0)], ["normal", "pneumonia"])[0] == "pneumonia"
    label, conf, text, _ = match([("VIRAL", 95.0), ("PNEUMONIA", 95.0)], ["covid", "normal", "viral_pneumonia"])
    assert label == "viral_pneumonia" and conf > 0.9 and text == "VIRAL PNEUMONIA"
    assert match([], ["a"]) == ("", 0.0, "", 0.0)


def test_label_folder_propose_review_apply(tmp_path, data_root, capsys):
    from PIL import Image

    from privmed.data.datasets import open_dataset
    from support.burned_in import fonts
    from support.label_ocr import print_label

    rng = random.Random(3)
    folder = tmp_path / "scans"
    folder.mkdir()
    truth = {}
    for c in ("normal", "pneumonia"):
        for i, f in enumerate(sorted((data_root / "chest_xray_pneumonia" / "test" / c).iterdir())[:3]):
            img, _ = print_label(np.asarray(Image.open(f).convert("L")), c.upper(), rng, fonts())
            name = f"scan_{c[0]}{i}.png"
            Image.fromarray(img).save(folder / name)
            truth[name] = c
    out_csv = tmp_path / "labels.csv"
    assert main(["label", str(folder), "--from-ocr", "--classes", "normal,pneumonia", "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0]) == ["image", "proposed_label", "confidence", "text", "review"]
    right = sum(r["proposed_label"] == truth[r["image"]] for r in rows)
    assert right >= 5, f"{right}/6 labels read correctly"
    for r in rows:  # a reviewer confirms the proposals
        r["review"] = "no"
        r["proposed_label"] = truth[r["image"]] if r["proposed_label"] != truth[r["image"]] else r["proposed_label"]
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds_dir = tmp_path / "dataset"
    assert main(["label", "apply", str(out_csv), "--images", str(folder), "--out", str(ds_dir)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (ds_dir / "train").iterdir()) == ["normal", "pneumonia"]
    ds = open_dataset(str(ds_dir))
    assert ds is not None


def test_label_bad_inputs(tmp_path, capsys):
    assert main(["label", str(tmp_path / "missing"), "--from-ocr", "--classes", "a,b"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["label", str(tmp_path), "--classes", "a"]) == 2
    assert "--from-ocr" in capsys.readouterr().err
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["label", "apply", str(bad), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a label CSV" in capsys.readouterr().err
    esc = tmp_path / "esc.csv"
    esc.write_text("image,proposed_label,confidence,text,review\n../../etc/passwd,normal,1,NORMAL,no\n")
    assert main(["label", "apply", str(esc), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a file under" in capsys.readouterr().err
