"""Synthetic burned-in PHI on real images, and how well OCR redaction removes it.

Each image gets 1-3 fake identifiers (name, date, record number, accession) drawn with a real TrueType
font at several sizes, positions and contrasts (bright or dark text, optional noise), as scanners and
workstations burn them in. A string counts as redacted when >= 98 % of its ink pixels fall inside the
redaction boxes; afterwards OCR runs again on the redacted image and no token of the string may be read.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation")
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf",
              "LiberationSans-Regular.ttf", "LiberationMono-Regular.ttf")
SURNAMES = ("SMITH", "GARCIA", "MUELLER", "NGUYEN", "OKAFOR", "ROSSI", "KOWALSKI", "TANAKA", "DUBOIS", "SILVA")
GIVEN = ("JOHN", "MARIA", "AHMED", "LENA", "PIOTR", "YUKI", "CHLOE", "RAVI", "ELENA", "OMAR")


def fonts() -> list[Path]:
    out = []
    for d in FONT_DIRS:
        for n in FONT_NAMES:
            if (Path(d) / n).is_file():
                out.append(Path(d) / n)
    return out


def fake_phi(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    if kind == 1:
        return f"DOB {rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if kind == 2:
        return f"MRN {rng.randint(1000000, 9999999)}"
    return f"ACC{rng.randint(100000, 999999)}"


@dataclass
class Burned:
    image: np.ndarray                  # uint8 grayscale with the text drawn in
    strings: list[str] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)  # ink of each string


def burn(gray: np.ndarray, rng: random.Random, n: int | None = None, font_files: list[Path] | None = None) -> Burned:
    """Draw 1-3 PHI strings on a uint8 grayscale image, in free rows, never overlapping."""
    from PIL import Image, ImageDraw, ImageFont

    font_files = font_files or fonts()
    if not font_files:
        raise RuntimeError("no TrueType fonts found (apt-get install fonts-dejavu-core)")
    h, w = gray.shape
    img = Image.fromarray(gray)
    out = Burned(np.asarray(img).copy())
    used_rows: list[tuple[int, int]] = []
    for _ in range(n or rng.randint(1, 3)):
        text = fake_phi(rng)
        size = max(10, round(h * rng.uniform(0.045, 0.085)))
        font = ImageFont.truetype(str(rng.choice(font_files)), size)
        left, t, r, b = font.getbbox(text)
        tw, th = r - left, b - t
        if tw >= w - 4:
            continue
        for _try in range(20):
            x = rng.randint(2, w - tw - 2)
            y = rng.choice([rng.randint(2, max(2, h // 6)), rng.randint(h - h // 6 - th, h - th - 2),
                            rng.randint(2, h - th - 2)])
            if all(y + th + 4 < a or y > bb + 4 for a, bb in used_rows):
                break
        else:
            continue
        used_rows.append((y, y + th))
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((x - left, y - t), text, fill=255, font=font)
        m = np.asarray(mask) > 127
        region = out.image[m]
        bright = region.mean() < 150 if region.size else True
        value = rng.choice([255, 230, 200]) if bright else rng.choice([0, 25])
        out.image[m] = value
        out.strings.append(text)
        out.masks.append(m)
    if rng.random() < 0.3:  # sensor-like noise on top of everything
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 6, out.image.shape)
        out.image = np.clip(out.image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return out


def covered(mask: np.ndarray, boxes) -> float:
    """Fraction of the ink in ``mask`` inside the union of boxes (left, top, right, bottom)."""
    cover = np.zeros_like(mask)
    h, w = mask.shape
    for left, t, r, b in boxes:
        cover[max(0, t):min(h, b), max(0, left):min(w, r)] = True
    ink = mask.sum()
    return float((mask & cover).sum() / ink) if ink else 1.0


def tokens(s: str) -> list[str]:
    import re

    return [x for x in re.split(r"[\^\s:-]+", s.upper()) if len(x) >= 3]


def measure(images: list[Path], seed: int = 0, progress: bool = False) -> dict:
    """Redaction recall over ``images`` with burned-in PHI; counts only."""
    from PIL import Image

    from privmed.deid.ocr import find_text, to_uint8
    from privmed.deid.redact import covered_fraction, redact_array, text_boxes

    rng = random.Random(seed)
    n_strings = n_redacted = n_read_after = clean_fp = 0
    fractions, clean_fraction = [], []
    misses = []
    for i, p in enumerate(images):
        gray = to_uint8(np.asarray(Image.open(p).convert("L")))
        # the clean image first: how much OCR redacts where nothing was burned in
        _, clean_boxes = text_boxes(gray)
        clean_fp += len(clean_boxes)
        clean_fraction.append(covered_fraction(clean_boxes, gray.shape))
        burned = burn(gray, rng)
        _, boxes = text_boxes(burned.image)
        red = redact_array(burned.image, boxes, 0)
        after = " ".join(w.text.upper() for w in find_text(red))
        for s, m in zip(burned.strings, burned.masks):
            n_strings += 1
            c = covered(m, boxes)
            fractions.append(c)
            if c >= 0.98:
                n_redacted += 1
            else:
                misses.append({"image": i, "covered": round(c, 3), "chars": len(s)})
            if any(t in after for t in tokens(s)):
                n_read_after += 1
        if progress and (i + 1) % 10 == 0:
            print(f"{i + 1}/{len(images)} images, recall so far {n_redacted}/{n_strings}", flush=True)
    return {"images": len(images), "strings": n_strings, "redacted": n_redacted,
            "recall": n_redacted / max(n_strings, 1), "strings_read_after_redaction": n_read_after,
            "mean_ink_covered": float(np.mean(fractions)) if fractions else None,
            "clean_images_boxes": clean_fp, "clean_images_mean_redacted_fraction": float(np.mean(clean_fraction)),
            "misses": misses, "seed": seed}
