"""Text lines found by a learned detector: PP-OCRv6's small DB (differentiable binarisation) network, the
ONNX graph that the ``rapidocr`` wheel ships, run by onnxruntime alone (no OpenCV). It sees thin
serif strokes on bone that Tesseract and the glyph detector miss; it also sees rib stripes as text
lines, so its boxes are kept only when shaped like a line of burned-in text (``line_shaped``).
Optional: without the wheel ``detect`` returns no boxes and ``available()`` says so."""
from __future__ import annotations

import functools
import warnings

import numpy as np

DIST, MODEL = "rapidocr", "rapidocr/models/PP-OCRv6_det_small.onnx"


@functools.cache
def _session():
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        import onnxruntime as ort
        path = distribution(DIST).locate_file(MODEL)
    except (ImportError, PackageNotFoundError):
        return None
    if not path.is_file():
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def available() -> bool:
    return _session() is not None


def probability_map(gray: np.ndarray, side: int = 736) -> np.ndarray:
    """DB text probability (H', W') for a uint8 grayscale image, its shorter side scaled to ``side``
    (both sides multiples of 32, as the network needs)."""
    from PIL import Image

    h, w = gray.shape
    s = side / min(h, w)
    nh, nw = max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)
    x = np.asarray(Image.fromarray(gray).resize((nw, nh), Image.BILINEAR), np.float32) / 127.5 - 1.0
    x = np.repeat(x[None, None], 3, axis=1)
    sess = _session()
    return sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]


def detect(gray: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.6) -> list[tuple]:
    """(left, top, right, bottom) boxes of text lines in ``gray``'s pixels, before the shape filter.
    DB's own post-processing, axis-aligned: threshold the map, dilate 2x2, keep components whose mean
    probability is >= ``box_thresh``, grow each by area * unclip / perimeter."""
    from scipy import ndimage

    if _session() is None:
        return []
    prob = probability_map(gray)
    mask = ndimage.binary_dilation(prob > thresh, structure=np.ones((2, 2), bool))
    labels, _ = ndimage.label(mask)
    slices = ndimage.find_objects(labels)
    sy, sx = gray.shape[0] / prob.shape[0], gray.shape[1] / prob.shape[1]
    out = []
    for i, sl in enumerate(slices, 1):
        if sl is None:
            continue
        comp = labels[sl] == i
        if prob[sl][comp].mean() < box_thresh:
            continue
        t, b, left, r = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        bw, bh = r - left, b - t
        d = bw * bh * unclip / (2 * (bw + bh))
        out.append((int(np.floor((left - d) * sx)), int(np.floor((t - d) * sy)),
                    int(np.ceil((r + d) * sx)), int(np.ceil((b + d) * sy))))
    return out


def line_shaped(box: tuple, shape: tuple, max_height: float = 0.15, min_aspect: float = 1.0) -> bool:
    """A burned-in text line is short and at least as wide as tall; anatomy boxed as text (rib
    stripes, a clavicle) is tall, or narrow."""
    left, t, r, b = box
    return (b - t) <= max_height * shape[0] and (r - left) >= min_aspect * (b - t)


def text_lines(gray: np.ndarray) -> list[tuple]:
    """The detector's boxes that look like lines of burned-in text."""
    if not available():
        warnings.warn("rapidocr is not installed: burned-in text is searched by Tesseract and the glyph detector "
                      "only, which miss more (docs/HOSPITAL.md); `make setup` installs it (the serve extra), or "
                      "pip install rapidocr==3.10.0", stacklevel=2)
        return []
    return [b for b in detect(gray) if line_shaped(b, gray.shape)]
