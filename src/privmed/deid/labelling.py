"""OCR-assisted labelling: read the class name printed on an image (or its scanned report) and
propose it as the label, with a confidence and a review flag; a person checks the CSV, then
``apply`` lays the folder out as a privmed dataset ``<out>/<split>/<class>/<image>``.

The CSV keeps only the words that matched a class name, not everything OCR read (that could be PHI).
"""
from __future__ import annotations

import csv
import difflib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privmed.errors import DatasetError
from privmed.files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
FIELDS = ("image", "proposed_label", "confidence", "text", "review")


@dataclass
class Proposal:
    image: str
    label: str       # "" when nothing matched
    confidence: float
    text: str        # the matched words only
    review: bool


def _norm(s: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", s.upper())


def match(words: list[tuple[str, float]], classes: list[str]) -> tuple[str, float, str, float]:
    """Best class for OCR words [(text, conf)]: (label, confidence, matched text, runner-up confidence).

    A class name may span words ('viral pneumonia'), so runs of 1-3 neighbouring words are compared.
    confidence = string similarity x (0.5 + Tesseract confidence / 200): an exact, confident read scores 1."""
    scores: dict[str, tuple[float, str]] = {}
    for i in range(len(words)):
        for n in (1, 2, 3):
            run = words[i:i + n]
            if len(run) < n:
                break
            text = " ".join(t for t, _ in run)
            conf = min(c for _, c in run)
            for c in classes:
                target = _norm(c)
                got = _norm(text)
                if not target or not got:
                    continue
                ratio = difflib.SequenceMatcher(None, got, target).ratio()
                s = ratio * (0.5 + max(0.0, min(conf, 100.0)) / 200)
                if s > scores.get(c, (0.0, ""))[0]:
                    scores[c] = (s, text)
    if not scores:
        return "", 0.0, "", 0.0
    ranked = sorted(scores.items(), key=lambda kv: -kv[1][0])
    best, (s, text) = ranked[0]
    second = ranked[1][1][0] if len(ranked) > 1 else 0.0
    return best, s, text, second


def read_words(img: np.ndarray, lang: str = "eng") -> list[tuple[str, float]]:
    """Words on the image in reading order, from the plain image and both stroke views."""
    from privmed.deid.ocr import ocr, stroke_views, to_uint8

    gray = to_uint8(img)
    views, _ = stroke_views(gray)
    out = []
    for v in [gray] + views:
        ws = sorted(ocr(v, psm=11, lang=lang), key=lambda b: (b.top // max(b.height, 1), b.left))
        out += [(w.text, w.conf) for w in ws]
    return out


def propose_one(path: Path, classes: list[str], threshold: float = 0.7, lang: str = "eng") -> Proposal:
    from privmed.data.read import load_image

    img = load_image(path)
    arr = img.pixels if hasattr(img, "pixels") else np.asarray(img)
    label, conf, text, second = match(read_words(arr, lang), classes)
    ok = bool(label) and conf >= threshold and conf - second >= 0.15
    return Proposal(str(path), label if conf >= 0.4 else "", round(conf, 3), text if conf >= 0.4 else "", not ok)


def images_in(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def propose(folder: Path, classes: list[str], out_csv: Path, threshold: float = 0.7, lang: str = "eng") -> dict:
    """Write the reviewable CSV for every image under ``folder``; return counts."""
    classes = [c.strip() for c in classes if c.strip()]
    if len(classes) < 1:
        raise DatasetError("give the class names to look for: --classes NORMAL,PNEUMONIA")
    files = images_in(folder)
    if not files:
        raise DatasetError(f"no images under {folder}")
    rows, review = [], 0
    from privmed.errors import ImageReadError

    for f in files:
        try:
            p = propose_one(f, classes, threshold, lang)
        except ImageReadError:
            p = Proposal(str(f), "", 0.0, "", True)
        p.image = str(f.relative_to(folder))
        review += p.review
        rows.append(p)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        for p in rows:
            w.writerow([p.image, p.label, f"{p.confidence:.3f}", p.text, "yes" if p.review else "no"])
    by = {}
    for p in rows:
        by[p.label or "(none)"] = by.get(p.label or "(none)", 0) + 1
    return {"images": len(rows), "to_review": review, "proposed": by, "csv": str(out_csv)}


def apply(csv_path: Path, images: Path, out: Path, split: str = "train", include_review: bool = False) -> dict:
    """Copy each labelled image to ``out/split/label/``. Rows still marked review=yes (unless
    ``include_review``) or with an empty label are skipped."""
    csv_path, images, out = Path(csv_path), Path(images), Path(out)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} not found")
    with open(csv_path, newline="") as fh:
        r = csv.DictReader(fh)
        if r.fieldnames is None or not {"image", "proposed_label"} <= set(r.fieldnames):
            raise DatasetError(f"{csv_path} is not a label CSV (needs columns {', '.join(FIELDS)})")
        rows = list(r)
    done = skipped = 0
    for row in rows:
        label = (row.get("proposed_label") or "").strip()
        if not label or (row.get("review", "no").strip().lower() == "yes" and not include_review):
            skipped += 1
            continue
        if "/" in label or label.startswith("."):
            raise DatasetError(f"label {label!r} is not a folder name")
        src = (images / row["image"]).resolve()
        if images.resolve() not in src.parents or not src.is_file():
            raise DatasetError(f"{row['image']} is not a file under {images}")
        dst = out / split / label / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        done += 1
    return {"copied": done, "skipped": skipped, "dataset": str(out)}
