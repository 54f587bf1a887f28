"""Accuracy of OCR-assisted labelling on real images with their true class name printed on them
(several fonts, sizes, positions, contrasts, optional noise), as a scanner or a report would."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np


def print_label(gray: np.ndarray, text: str, rng: random.Random, font_files: list[Path]) -> tuple[np.ndarray, dict]:
    from PIL import Image, ImageDraw, ImageFont

    h, w = gray.shape
    img = Image.fromarray(gray)
    size_frac = rng.choice([0.06, 0.08, 0.11])
    font_file = rng.choice(font_files)
    font = ImageFont.truetype(str(font_file), max(10, round(h * size_frac)))
    left, t, r, b = font.getbbox(text)
    while r - left > w - 6 and font.size > 8:
        font = ImageFont.truetype(str(font_file), font.size - 2)
        left, t, r, b = font.getbbox(text)
    x = rng.choice([4, (w - (r - left)) // 2, w - (r - left) - 4])
    y = rng.choice([4, h - (b - t) - 6, rng.randint(4, h - (b - t) - 6)])
    box = rng.random() < 0.3  # a label on a white or black patch, like a printed sticker
    d = ImageDraw.Draw(img)
    if box:
        bg = rng.choice([0, 255])
        d.rectangle([x - 3, y - 3, x + (r - left) + 3, y + (b - t) + 3], fill=bg)
        fill = 255 - bg
    else:
        fill = rng.choice([255, 230])
    d.text((x - left, y - t), text, fill=fill, font=font)
    out = np.asarray(img).copy()
    noisy = rng.random() < 0.3
    if noisy:
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, out.shape)
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return out, {"font": font_file.stem, "size": size_frac, "patch": box, "noise": noisy}


def measure(dataset_dir: Path, split: str, per_class: int, seed: int = 0, upper: bool = True) -> dict:
    """Print each true class name on ``per_class`` real images per class, read it back."""
    from PIL import Image

    from privmed.deid.labelling import match, read_words
    from privmed.deid.ocr import to_uint8

    from .burned_in import fonts

    rng = random.Random(seed)
    classes = sorted(p.name for p in (Path(dataset_dir) / split).iterdir() if p.is_dir())
    font_files = fonts()
    rows = []
    for c in classes:
        files = sorted((Path(dataset_dir) / split / c).iterdir())
        for f in rng.sample(files, min(per_class, len(files))):
            gray = to_uint8(np.asarray(Image.open(f).convert("L")))
            text = c.replace("_", " ")
            text = text.upper() if upper else text
            img, how = print_label(gray, text, rng, font_files)
            label, conf, _, second = match(read_words(img), classes)
            rows.append({"true": c, "pred": label, "conf": conf, "review": not (conf >= 0.7 and conf - second >= 0.15),
                         **how})
    n = len(rows)
    correct = sum(r["true"] == r["pred"] for r in rows)
    auto = [r for r in rows if not r["review"]]
    by_font: dict[str, list[int]] = {}
    by_size: dict[str, list[int]] = {}
    for r in rows:
        by_font.setdefault(r["font"], []).append(r["true"] == r["pred"])
        by_size.setdefault(f"{r['size']:.2f}", []).append(r["true"] == r["pred"])
    return {"dataset": str(dataset_dir), "split": split, "images": n, "correct": correct,
            "accuracy": correct / max(n, 1),
            "auto_accepted": len(auto),
            "auto_accepted_accuracy": sum(r["true"] == r["pred"] for r in auto) / max(len(auto), 1),
            "sent_to_review": n - len(auto),
            "by_font": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_font.items())},
            "by_size_fraction_of_height": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_size.items())},
            "seed": seed}
