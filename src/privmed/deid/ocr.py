"""Text in pixels: Tesseract 5 (the Debian ``tesseract-ocr`` binary, run as a subprocess, TSV output).

Burned-in text on a radiograph sits on busy anatomy, where Tesseract alone reads nothing. So each
image is upscaled (small glyphs), then a morphological top-hat keeps only thin strokes brighter
(white top-hat) or darker (black top-hat) than their surroundings, thresholded to black text on
white, and Tesseract runs in sparse-text mode on each polarity. Words on one line are merged into
one box, so a glyph that Tesseract misread between two found words is still covered.

Recognised text stays in memory: callers report counts and boxes, never the words (they are PHI).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from privmed.errors import PrivmedError


class OCRError(PrivmedError):
    pass


@dataclass
class TextBox:
    left: int
    top: int
    width: int
    height: int
    conf: float
    text: str = ""  # PHI: never log or store

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height

    def public(self) -> dict:
        """What may be reported: where, how sure, how long. Not what."""
        return {"box": [self.left, self.top, self.width, self.height], "conf": round(self.conf, 1),
                "chars": len(self.text)}


def tesseract_path() -> str | None:
    return shutil.which("tesseract")


def languages() -> list[str]:
    exe = _exe()
    out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30)
    return [x.strip() for x in out.stdout.splitlines()[1:] if x.strip()]


def _exe() -> str:
    exe = tesseract_path()
    if exe is None:
        raise OCRError("OCR needs the Tesseract 5 binary: apt-get install tesseract-ocr (then `tesseract --version`)")
    return exe


def ocr(gray: np.ndarray, psm: int = 11, lang: str = "eng", timeout: float = 60) -> list[TextBox]:
    """One Tesseract run on a uint8 grayscale image; word boxes in that image's pixels."""
    import cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(gray, dtype=np.uint8))
    if not ok:
        raise OCRError("could not encode the image for OCR")
    try:
        r = subprocess.run([_exe(), "stdin", "stdout", "--psm", str(psm), "-l", lang, "tsv"], input=png.tobytes(),
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OCRError(f"Tesseract took over {timeout:.0f} s on one image") from None
    if r.returncode != 0:  # stderr names a missing language or a bad image, never the text
        raise OCRError(f"Tesseract failed: {r.stderr.decode(errors='replace').strip()[:200]}")
    return parse_tsv(r.stdout.decode("utf-8", errors="replace"))


def parse_tsv(tsv: str) -> list[TextBox]:
    """Word rows (level 5) of Tesseract's TSV with some letter or digit in them."""
    out = []
    for line in tsv.splitlines()[1:]:
        f = line.split("\t")
        if len(f) < 12 or f[0] != "5":
            continue
        text = f[11].strip()
        if not any(c.isalnum() for c in text):
            continue
        out.append(TextBox(int(f[6]), int(f[7]), int(f[8]), int(f[9]), float(f[10]), text))
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0,1] or integer image -> uint8 grayscale (colour averaged)."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if a.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.round(a * 255).astype(np.uint8)
    return np.round((a - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)


def stroke_views(gray: np.ndarray, target: int = 1000) -> tuple[list[np.ndarray], float]:
    """Upscaled binarised views (bright strokes, dark strokes) as black text on white, and the scale."""
    import cv2

    h, w = gray.shape
    # Tesseract reads 20-60 px glyphs best: small images are enlarged, large ones shrunk to ~target px
    scale = target / max(h, w)
    interp = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    big = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=interp) if scale != 1 else gray
    k = max(15, round(max(big.shape) / 45)) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    views = []
    for op in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        th = cv2.morphologyEx(big, op, kernel)
        # a stroke must stand out by a fixed contrast, or Otsu's on a faint-only image marks noise
        level, _ = cv2.threshold(th, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        _, b = cv2.threshold(th, max(level * 0.8, 45), 255, cv2.THRESH_BINARY)
        views.append(255 - b)
    # burned-in text is usually drawn at the extreme value (the display's white or black): a view of
    # just those pixels reads text that touches bright anatomy, where the top-hat loses strokes
    lo, hi = int(big.min()), int(big.max())
    for m in (big >= hi - 2, big <= lo + 2):
        if 0 < m.mean() < 0.25:  # a view that is mostly "extreme" is background, not text
            views.append(np.where(m, 0, 255).astype(np.uint8))
    return views, scale


def find_text(img: np.ndarray, min_conf: float = 30.0, lang: str = "eng", grow: bool = False) -> list[TextBox]:
    """Words in ``img`` (any grayscale/colour array), boxes in its own pixel coordinates.

    ``grow``: extend each word's box over the stroke components that continue its line (a glyph or word
    Tesseract skipped or misread next to one it read); the grown boxes carry no text."""
    gray = to_uint8(img)
    views, scale = stroke_views(gray)
    words: list[TextBox] = []
    for v in views:
        found = [b for b in ocr(v, psm=11, lang=lang)
                 if plausible(b, min_conf) and 8 <= b.height <= 0.12 * v.shape[0]]  # not specks or rib blobs
        if grow:
            found = found + _grow(v, found)
        for b in found:
            words.append(TextBox(int(b.left / scale), int(b.top / scale), max(1, round(b.width / scale)),
                                 max(1, round(b.height / scale)), b.conf, b.text))
    return words


def _grow(view: np.ndarray, seeds: list[TextBox]) -> list[TextBox]:
    """Boxes of ink components that continue a seed word's line: similar height, vertically overlapping,
    within 2 line heights of the growing box on either side."""
    import cv2

    if not seeds:
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats((view < 128).astype(np.uint8), connectivity=8)
    comps = [tuple(int(x) for x in stats[i][:4]) for i in range(1, n)]
    out = []
    for s in seeds:
        left, t, r, b = s.left, s.top, s.right, s.bottom
        h = b - t
        changed = True
        while changed:
            changed = False
            for cl, ct, cw, ch in comps:
                cr, cb = cl + cw, ct + ch
                if cl >= left and cr <= r and ct >= t and cb <= b:
                    continue
                if ch > 1.6 * h or cw > 4 * h:
                    continue
                overlap = min(b, cb) - max(t, ct)
                gap = max(cl - r, left - cr)
                # the line may not grow taller than 1.5 seed heights: chained anatomy blobs grew
                # single words into boxes over the whole lung field
                if overlap > 0.3 * min(h, ch) and gap < 2.0 * h and max(b, cb) - min(t, ct) <= 1.5 * h:
                    left, t, r, b = min(left, cl), min(t, ct), max(r, cr), max(b, cb)
                    changed = True
        if (left, t, r, b) != (s.left, s.top, s.right, s.bottom):
            out.append(TextBox(left, t, r - left, b - t, s.conf, ""))
    return out


def plausible(b: TextBox, min_conf: float = 30.0) -> bool:
    """Texture on a radiograph reads as short junk ('ae', 'oy'); identifiers are digits, capitals or
    long words. Keep a word when it looks like one of those and Tesseract is sure enough."""
    alnum = [c for c in b.text if c.isalnum()]
    digits = sum(c.isdigit() for c in alnum)
    capsdigits = sum(c.isupper() or c.isdigit() for c in alnum)
    # identifier-shaped reads count at any confidence: a stray blob beside a number drives the
    # word's confidence to 0 while the digits are right, and texture never reads as 4 digits
    if digits >= 4 or (len(alnum) >= 5 and capsdigits >= 0.8 * len(alnum)):
        return True
    if digits >= 2 and b.conf >= min_conf:
        return True
    if len(alnum) >= 4 and b.conf >= min_conf:
        return True
    if len(alnum) >= 2 and all(c.isupper() or c.isdigit() for c in alnum) and b.conf >= max(min_conf, 60):
        return True
    return b.conf >= 85 and len(alnum) >= 2


def line_boxes(words: list[TextBox], pad: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Merge words that share a line and lie within 1.5 text heights, then pad by ``pad`` of the
    height up and down and by 2.4 x that sideways: (left, top, right, bottom), exclusive."""
    boxes = [[w.left, w.top, w.right, w.bottom] for w in words]
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                h = max(b[3] - b[1], o[3] - o[1])
                same_line = min(b[3], o[3]) - max(b[1], o[1]) > 0.4 * min(b[3] - b[1], o[3] - o[1])
                gap = max(b[0], o[0]) - min(b[2], o[2])
                if same_line and gap < 1.5 * h:
                    o[:] = [min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3])]
                    merged = True
                    break
            else:
                out.append(list(b))
        boxes = out
    res = []
    for left, t, r, b in boxes:
        p = max(2, round(pad * (b - t)))
        px = max(2, round(2.4 * pad * (b - t)))  # ~ one glyph sideways: OCR often drops the first/last one
        res.append((left - px, t - p, r + px, b + p))
    return res
