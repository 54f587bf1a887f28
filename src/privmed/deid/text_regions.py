"""Text regions found without reading them: a complement to OCR (``deid.ocr``) for redaction.

Burned-in annotations are drawn by a scanner or workstation at one flat value, brighter or darker than
what is around them. So: a top-hat (bright) or black-hat (dark) keeps thin strokes, connected components
of those strokes become glyph candidates when they are glyph-sized and flat (their pixels in the image
share nearly one value; a rib or a bone edge shades along its length), and glyphs of one colour and
height that sit side by side on a row make a line. Only lines of >= 3 glyphs count: one or two blobs
on a radiograph are anatomy far more often than text.

No text is read here, so nothing here can leak any; the boxes are what the caller blacks out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Glyph:
    left: int
    t: int
    r: int
    b: int
    mean: float
    n: int


def glyphs(gray: np.ndarray, bright: bool, min_h: int, max_h: int, levels: tuple = (40, 70, 110),
           flat: float = 14.0, strong: float = 50.0, sharp: float = 2.5) -> list[_Glyph]:
    """Flat, glyph-sized stroke components of one polarity in a uint8 image. Several contrast levels,
    because on bright noisy anatomy the low level joins text and background into one blob."""
    import cv2

    k = max(7, max_h | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    hat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT if bright else cv2.MORPH_BLACKHAT, kernel)
    grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    grad = cv2.dilate(grad, np.ones((3, 3))).ravel()
    flat_hat, flat_gray = hat.ravel(), gray.ravel()
    out: list[_Glyph] = []
    for level in levels:
        n, lab, stats, _ = cv2.connectedComponentsWithStats((hat >= level).astype(np.uint8), connectivity=8)
        order = np.argsort(lab.ravel(), kind="stable")
        starts = np.searchsorted(lab.ravel()[order], np.arange(n + 1))
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            # a glyph piece: not a speck, not taller than a line, not a long streak
            if h > max_h or w > 3 * max_h or max(w, h) < max(3, min_h // 3) or area < 4:
                continue
            if any(g.left <= x and g.t <= y and g.r >= x + w and g.b >= y + h for g in out[-50:]):
                continue  # the same glyph seen at a lower level
            idx = order[starts[i]:starts[i + 1]]
            vals = flat_gray[idx].astype(np.float64)
            # flat value: burned-in strokes are one value (plus sensor noise); anatomy shades
            if vals.std() > flat:
                continue
            # a drawn stroke is a step: the 3x3 Sobel of a step of height c peaks at 4c beside it; anatomy ramps
            c = float(np.median(flat_hat[idx]))
            if c < strong or float(np.median(grad[idx])) < sharp * c:
                continue
            out.append(_Glyph(x, y, x + w, y + h, float(vals.mean()), area))
    return out


def lines(gs: list[_Glyph], min_h: int, min_glyphs: int = 3, same_value: float = 12.0) -> list[tuple]:
    """Chains of glyphs that share a row and a value: (left, top, right, bottom, glyph count)."""
    gs = sorted(gs, key=lambda g: g.left)
    used = [False] * len(gs)
    out = []
    for i, g in enumerate(gs):
        if used[i]:
            continue
        left, t, r, b, count, vals = g.left, g.t, g.r, g.b, 1, [g.mean]
        used[i] = True
        changed = True
        while changed:
            changed = False
            for j, o in enumerate(gs):
                if used[j]:
                    continue
                h = max(b - t, min_h)
                overlap = min(b, o.b) - max(t, o.t)
                gap = max(o.left - r, left - o.r)
                if overlap >= 0.3 * min(h, o.b - o.t) and gap <= 2.5 * h and abs(o.mean - np.mean(vals)) <= same_value \
                        and (o.b - o.t) <= 1.8 * h and max(b, o.b) - min(t, o.t) <= 1.6 * h:
                    left, t, r, b = min(left, o.left), min(t, o.t), max(r, o.r), max(b, o.b)
                    count += 1
                    vals.append(o.mean)
                    used[j] = True
                    changed = True
        if count >= min_glyphs and b - t >= min_h and r - left >= 1.5 * (b - t):
            out.append((left, t, r, b, count))
    return out


def text_regions(img: np.ndarray, min_frac: float = 0.02, max_frac: float = 0.12, pad: float = 0.3,
                 work: int = 800) -> list[tuple[int, int, int, int]]:
    """Padded (left, top, right, bottom) boxes of text lines in a uint8 grayscale image, its pixels.

    ``min_frac``/``max_frac``: glyph height range as a fraction of the image height."""
    import cv2

    gray = np.asarray(img)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("text_regions needs a 2-D uint8 image")
    H, W = gray.shape
    scale = min(1.0, work / max(H, W))  # large DICOMs: find lines on a smaller copy, boxes scaled back
    g = cv2.resize(gray, (round(W * scale), round(H * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else gray
    h = g.shape[0]
    min_h, max_h = max(4, round(min_frac * h)), max(8, round(max_frac * h))
    boxes = []
    for bright in (True, False):
        for left, t, r, b, _ in lines(glyphs(g, bright, min_h, max_h), min_h):
            p = max(2, round(pad * (b - t)))
            boxes.append((int((left - 2 * p) / scale), int((t - p) / scale), int(np.ceil((r + 2 * p) / scale)),
                          int(np.ceil((b + p) / scale))))
    return boxes


def extend(img: np.ndarray, boxes, tol: int = 3) -> list[tuple[int, int, int, int]]:
    """Grow each (left, top, right, bottom) box sideways over glyphs of the text's own value.

    Faint text (200 on bone at 190) has too little contrast for a top-hat, so the end of a string is
    often outside the found box. Its pixels still share one exact value: the most common value of the
    box's pixels away from its median (the background), when that value is spiky (text), not a broad
    hump (anatomy). Components of that value on the box's
    rows that are glyph-sized and sparse extend the box when they lie within 1.5 heights of it."""
    import cv2

    def grow(box, found, smooth):
        (left, t, r, b), (v, src, spread), W = box, found[0], smooth.shape[1]
        band = (np.abs(src[t:b].astype(np.int16) - v) <= tol * spread).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
        h = b - t
        comps = [(int(x), int(x + w)) for x, y, w, hh, a in stats[1:]
                 if 0.3 * h <= hh <= h and w <= 2 * h and a <= 0.6 * w * hh and a >= 4]
        changed = True
        while changed:
            changed = False
            for cl, cr in comps:
                if cl < left and left - cr <= 1.2 * h:
                    left, changed = max(0, cl - 2), True
                if cr > r and cl - r <= 1.2 * h:
                    r, changed = min(W, cr + 2), True
        return left, t, r, b

    return _grow_boxes(img, boxes, grow)


def hidden_ends(img: np.ndarray, boxes, tol: int = 12, frac: float = 0.5, gap: float = 0.6,
                glyphs: float = 12.0) -> list[tuple]:
    """Grow each box's ends over the columns where the background has the text's own value.

    A glyph drawn on a background of its own value (the "MR" of "MRN" at 230 on bright bone) leaves no
    edge to find, but it can only hide where at least ``frac`` of the box's rows sit within ``tol`` of
    the text value; the ends grow over such columns, across gaps of up to ``gap`` heights (a space),
    by at most ``glyphs`` glyph widths (0.6 of the height each). Two candidate values per box: on a
    flat black or white background that background is itself the commonest spiky value."""

    def grow(box, found, smooth):
        left, t, r, b = box
        nl, nr = left, r
        reach, g = int(glyphs * 0.6 * (b - t)), int(gap * (b - t))
        for v, _, _ in found:
            near = (np.abs(smooth[t:b].astype(np.int16) - v) <= tol).mean(0) >= frac
            nl = min(nl, left - _run_end(near[:left][::-1], reach, g))
            nr = max(nr, r + _run_end(near[r:], reach, g))
        return nl, t, nr, b

    return _grow_boxes(img, boxes, grow, k=2)


def _run_end(near: np.ndarray, reach: int, gap: int) -> int:
    """How far a run of True columns reaches from index 0, across gaps of up to ``gap``, within ``reach``."""
    last = 0
    for x in range(min(reach, len(near))):
        if near[x]:
            last = x + 1
        elif x - last >= gap:
            break
    return last


def _grow_boxes(img: np.ndarray, boxes, grow, k: int = 1) -> list[tuple[int, int, int, int]]:
    """Each box clipped to the image, then ``grow(box, values, smoothed image)`` where the box holds up to
    ``k`` text values (``_box_values``); boxes without one stay as they are."""
    import cv2

    gray = np.asarray(img)
    H, W = gray.shape
    smooth = cv2.medianBlur(gray, 3)
    out = []
    for left, t, r, b in boxes:
        box = (max(0, left), max(0, t), min(W, r), min(H, b))
        found = _box_values(gray, smooth, box, k)
        out.append(grow(box, found, smooth) if found else box)
    return out


def _box_values(gray: np.ndarray, smooth: np.ndarray, box, k: int) -> list[tuple[int, np.ndarray, int]]:
    """Up to ``k`` spiky values in a box, each as (value, the image it was read from, its spread): exact
    values first, then after a 3x3 median (``smooth``: noisy text has no exact value); each next value at
    least 8 away from those found; none when the box is too small."""
    left, t, r, b = box
    out: list = []
    if r - left < 3 or b - t < 3:
        return out
    for src, spread in ((gray, 1), (smooth, 2)):
        px = src[t:b, left:r].ravel()
        while len(out) < k:
            keep = np.ones(px.shape, bool)
            for v, _, _ in out:
                keep &= np.abs(px.astype(np.int16) - v) >= 8
            v = _text_value(px[keep], spread) if keep.sum() >= 8 else None
            if v is None:
                break
            out.append((v, src, spread))
    return out


def _text_value(box: np.ndarray, spread: int) -> int | None:
    """The value text in this box was drawn at: the commonest value away from the box's median (the
    background), if it is spiky (+-spread holds most (on a median-filtered box 45 %) of +-8, and >= 4 %
    of those pixels)."""
    ink = box[np.abs(box.astype(np.int16) - int(np.median(box))) >= 8]
    if ink.size < 8:
        return None
    hist = np.bincount(ink, minlength=256)
    v = int(hist.argmax())
    peak = hist[max(0, v - spread):v + spread + 1].sum()
    if peak < (0.6 if spread < 2 else 0.45) * hist[max(0, v - 8):v + 9].sum() or peak < 0.04 * ink.size:
        return None
    return v


def confirmed(img: np.ndarray, boxes, need: int = 2, work: int = 800) -> list[tuple[int, int, int, int]]:
    """The boxes (OCR's) holding >= ``need`` drawn-looking glyphs (flat, sharp-edged, contrast >= 30):
    Tesseract reads rib and vessel texture on a radiograph as short words, and those boxes black out lung."""
    import cv2

    gray = np.asarray(img)
    H, W = gray.shape
    k = min(1.0, work / max(H, W))  # as in text_regions: large images are checked on a smaller copy
    g = cv2.resize(gray, (round(W * k), round(H * k)), interpolation=cv2.INTER_AREA) if k < 1 else gray
    h = g.shape[0]
    min_h, max_h = max(4, round(0.02 * h)), max(8, round(0.12 * h))
    gs = [x for bright in (True, False) for x in glyphs(g, bright, min_h, max_h, levels=(25, 40, 70, 110), strong=30)]
    e = 1 if k < 1 else 0  # rounding slack on the smaller copy
    return [(left, t, r, b) for left, t, r, b in boxes
            if sum(x.left >= left * k - e and x.r <= r * k + e and x.t >= t * k - e and x.b <= b * k + e
                   for x in gs) >= need]
