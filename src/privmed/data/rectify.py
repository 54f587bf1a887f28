"""Find the radiograph in a phone photo of a film or monitor and warp it to an upright rectangle.

The film is the largest convex quadrilateral that stands out from its surround. Candidates come from
thresholds at several grey levels (both polarities: a dark desk or bezel, or a lit surround) and from
Canny edges, on a copy whose long side is ``WORK_SIDE`` px; a quadrilateral must cover at least
``min_area`` of the frame and fill most of itself (a chest blob with dark lungs does not). If no
quadrilateral is found, the largest bright blob's ``minAreaRect`` is tried; if that fails too the photo
is returned unchanged and the quality gate and OOD check decide as for any upload.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 512
MIN_AREA = 0.15  # of the frame: a film photographed from further away is too small to read anyway
MAX_AREA = 0.97  # a "quadrilateral" that is the whole frame is the frame, not a film
MIN_FILL, MAX_FILL = 0.93, 1.03  # contour area / quadrilateral area: the outline is (nearly) that quadrilateral
MARGIN = 0.005  # cropped from each side after the warp: the outline's blur. More zooms the film and moves
# the chest model's output (2 % raised P(pneumonia) by up to 0.15)


@dataclass
class Rectified:
    pixels: np.ndarray  # grey [0, 1]; the input itself when nothing was found
    found: bool
    # 4x2 float, (x, y) in input pixels: top-left, top-right, bottom-right, bottom-left
    corners: np.ndarray | None = None
    method: str = "none"  # "quadrilateral", "min_area_rect" or "none"

    def to_dict(self) -> dict:
        c = None if self.corners is None else [[round(float(x), 1), round(float(y), 1)] for x, y in self.corners]
        return {"found": self.found, "method": self.method, "corners": c}


def rectify(pixels: np.ndarray, *, min_area: float = MIN_AREA, margin: float = MARGIN) -> Rectified:
    """Grey image in [0, 1] (HxW) -> the film, upright, inner margin cropped, grey levels stretched."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 32:
        return Rectified(pixels, False)
    corners, method = find_film(pixels, min_area=min_area)
    if corners is None:
        return Rectified(pixels, False)
    return Rectified(warp(pixels, corners, margin=margin), True, corners, method)


def find_film(pixels: np.ndarray, *, min_area: float = MIN_AREA) -> tuple[np.ndarray | None, str]:
    h, w = pixels.shape
    scale = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    u8 = cv2.GaussianBlur(np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8), (5, 5), 0)
    frame_area = float(u8.shape[0] * u8.shape[1])
    best, best_area = None, 0.0
    for mask in _masks(u8):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            area = cv2.contourArea(c)
            if area < min_area * frame_area or area <= best_area:
                continue
            quad = _quadrilateral(c)
            if quad is None:
                continue
            quad = _refine(c.reshape(-1, 2).astype(np.float64), quad)
            qa = cv2.contourArea(quad.astype(np.float32))
            if (qa <= MAX_AREA * frame_area and MIN_FILL * qa <= area <= MAX_FILL * qa
                    and not _on_border(quad, u8.shape)):
                best, best_area = quad, area
    if best is not None:
        return order_corners(best / scale), "quadrilateral"
    rect = _bright_blob_rect(u8, min_area * frame_area)
    if rect is not None:
        return order_corners(rect / scale), "min_area_rect"
    return None, "none"


def _masks(u8: np.ndarray):
    """Binary images whose outer contours may trace the film: grey-level thresholds, then edges."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
    levels = np.unique(np.percentile(u8, [5, 10, 20, 30, 40, 50, 60, 70, 80, 90]).astype(int))
    otsu, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    for t in sorted(set(levels.tolist()) | {int(otsu)}):
        above = (u8 > t).astype(np.uint8) * 255
        for m in (above, 255 - above):
            yield cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    med = float(np.median(u8))
    edges = cv2.Canny(u8, max(5, int(0.33 * med)), max(20, int(1.0 * med)))
    yield cv2.dilate(edges, kernel)


def _quadrilateral(contour: np.ndarray) -> np.ndarray | None:
    hull = cv2.convexHull(contour)
    peri = cv2.arcLength(hull, True)
    for eps in (0.02, 0.03, 0.04):
        approx = cv2.approxPolyDP(hull, eps * peri, True)
        if len(approx) == 4 and cv2.isContourConvex(approx):
            quad = approx.reshape(4, 2).astype(np.float64)
            return quad if _max_corner_cos(quad) < 0.5 else None  # corners within ~60-120 degrees
        if len(approx) < 4:
            return None
    return None


def _refine(points: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Fit a line to the contour points along each side (away from the corners, which blur and
    morphology round off) and intersect neighbouring lines: corners to about a pixel."""
    lines = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = b - a
        length = float(np.linalg.norm(d))
        if length < 1:
            return quad
        t = (points - a) @ d / length**2
        rel = points - a
        dist = np.abs(d[0] * rel[:, 1] - d[1] * rel[:, 0]) / length
        near = points[(t > 0.1) & (t < 0.9) & (dist < max(3.0, 0.02 * length))]
        if len(near) < 5:
            return quad
        vx, vy, x0, y0 = cv2.fitLine(near.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0], np.float64), np.array([vx, vy], np.float64)))
    out = []
    for i in range(4):
        (p, u), (q, v) = lines[i - 1], lines[i]
        den = u[0] * v[1] - u[1] * v[0]
        if abs(den) < 1e-6:
            return quad
        s = ((q[0] - p[0]) * v[1] - (q[1] - p[1]) * v[0]) / den
        out.append(p + s * u)
    out = np.array(out)
    return out if np.abs(out - quad).max() < 0.1 * np.ptp(quad, 0).max() else quad


def _on_border(q: np.ndarray, shape: tuple[int, int], px: float = 2.0) -> bool:
    """A corner on the frame's edge: the region is the surround (or a film cut off by the frame)."""
    h, w = shape
    return bool(((q[:, 0] <= px) | (q[:, 1] <= px) | (q[:, 0] >= w - 1 - px) | (q[:, 1] >= h - 1 - px)).any())


def _max_corner_cos(q: np.ndarray) -> float:
    cos = []
    for i in range(4):
        a, b = q[i - 1] - q[i], q[(i + 1) % 4] - q[i]
        cos.append(abs(float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9)))
    return max(cos)


def _bright_blob_rect(u8: np.ndarray, min_px: float) -> np.ndarray | None:
    """Fallback: the rotated bounding box of the largest bright blob, when the blob nearly fills it."""
    _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 15)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    rect = cv2.minAreaRect(c)
    rect_area = rect[1][0] * rect[1][1]
    frame_area = u8.shape[0] * u8.shape[1]
    box = cv2.boxPoints(rect).astype(np.float64)
    if area < min_px or rect_area > MAX_AREA * frame_area or area < MIN_FILL * rect_area or _on_border(box, u8.shape):
        return None
    return box


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Four (x, y) points -> top-left, top-right, bottom-right, bottom-left (by angle around the centre)."""
    pts = np.asarray(pts, dtype=np.float64).reshape(4, 2)
    c = pts.mean(0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))]  # clockwise on screen from ~-180 deg
    start = int(np.argmin(pts.sum(1)))  # top-left: smallest x + y
    return np.roll(pts, -start, axis=0)


def warp(pixels: np.ndarray, corners: np.ndarray, *, margin: float = MARGIN) -> np.ndarray:
    """Perspective-warp the quadrilateral ``corners`` (ordered) to an upright rectangle, crop ``margin``
    of each side, stretch grey levels to [0, 1] (a photographed film's black is never black)."""
    tl, tr, br, bl = np.asarray(corners, dtype=np.float32)
    w = int(round(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))))
    h = int(round(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))))
    w, h = max(w, 8), max(h, 8)
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    m = cv2.getPerspectiveTransform(np.array([tl, tr, br, bl]), dst)
    out = cv2.warpPerspective(np.asarray(pixels, np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    dx, dy = int(round(margin * w)), int(round(margin * h))
    out = out[dy:h - dy, dx:w - dx]
    lo, hi = np.percentile(out, [0.5, 99.5])
    if hi - lo > 0.05:  # leave a (nearly) flat crop to the quality gate
        out = (out - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
