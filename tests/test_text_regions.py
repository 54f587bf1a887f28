"""Burned-in text found without OCR (``deid.text_regions``), the full redaction on clean chest X-rays
(lungs stay), and the API's redact=true."""
from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest

from privmed.deid.ocr import tesseract_path
from privmed.deid.text_regions import extend, hidden_ends, text_regions
from support.burned_in import burn, covered, tokens


def real_gray(data_root, ds: str, n: int, offset: int = 0) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((data_root / ds / "test").glob("*/*"))[offset:offset + n]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def test_detector_covers_burned_strings_and_nothing_on_clean_images(data_root):
    """No OCR: flat, sharp-edged glyphs on a row. Alone it is a complement, not a redactor; the floor
    (measured: 18 of 19 strings fully covered, 0 boxes on the 12 clean images) guards it."""
    rng = random.Random(4)
    n_full = n_strings = clean_boxes = 0
    for g in real_gray(data_root, "chest_xray_pneumonia", 6, 40) + real_gray(data_root, "covid19_xray", 6, 10):
        clean_boxes += len(text_regions(g))
        b = burn(g, rng)
        boxes = extend(b.image, text_regions(b.image))
        for m in b.masks:
            n_strings += 1
            n_full += covered(m, boxes) >= 0.98
    assert n_strings >= 12
    assert n_full / n_strings >= FLOOR, (n_full, n_strings)
    assert clean_boxes <= 1


def test_extend_reaches_faint_glyphs_of_the_same_value():
    """A box over the first half of a flat-valued string grows over the rest, not over the background."""
    from PIL import Image, ImageDraw, ImageFont

    from support.burned_in import fonts

    mask = Image.new("L", (400, 200), 0)
    ImageDraw.Draw(mask).text((20, 80), "ACC486095", fill=255, font=ImageFont.truetype(str(fonts()[0]), 30))
    a = np.tile(np.linspace(170, 190, 400).astype(np.uint8), (200, 1))  # shaded, like bone
    a[np.asarray(mask) > 127] = 200  # faint text, one value (as burn() draws it)
    ys, xs = np.nonzero(np.asarray(mask) > 127)
    half = (xs.min() - 2, ys.min() - 2, (xs.min() + xs.max()) // 2, ys.max() + 3)
    (left, t, r, b), = extend(a, [half])
    assert left <= xs.min() and r > xs.max() and (t, b) == (half[1], half[3])
    assert r - left < 1.3 * (xs.max() - xs.min())


def test_hidden_ends_cover_text_on_a_background_of_its_own_value():
    """Bright text on black that runs onto bone of its own value: the box of the visible part grows over
    the bone where glyphs can hide (across the space), and not over plain bone of another value."""
    from PIL import Image, ImageDraw, ImageFont

    from support.burned_in import fonts

    mask = Image.new("L", (480, 120), 0)
    ImageDraw.Draw(mask).text((20, 40), "MRN 8547138", fill=255, font=ImageFont.truetype(str(fonts()[0]), 32))
    ink = np.asarray(mask) > 127
    ys, xs = np.nonzero(ink)
    for bone, grows in ((228, True), (150, False)):
        a = np.zeros((120, 480), np.uint8)
        a[ink] = 228
        a[:, 130:] = bone + (np.arange(350) % 5).astype(np.uint8)  # bone from x = 130, faintly textured
        if grows:
            a[:, 130:][ink[:, 130:]] = 228  # the digits, drawn at the value of the bone
        visible = (xs.min() - 2, ys.min() - 3, 128, ys.max() + 4)  # "MRN" on black
        (left, t, r, b), = hidden_ends(a, [visible])
        assert (left, t, b) == visible[:2] + (visible[3],)
        if grows:
            assert r >= xs.max() and r - left < 1.5 * (xs.max() - xs.min())
        else:
            assert r == visible[2]


def test_text_regions_rejects_bad_input():
    with pytest.raises(ValueError):
        text_regions(np.zeros((10, 10, 3), np.uint8))


needs_ocr = pytest.mark.skipif(tesseract_path() is None,
                               reason="Tesseract 5 is not installed (apt-get install tesseract-ocr)")


@needs_ocr
def test_lungs_of_clean_chest_xrays_are_not_blacked_out(data_root):
    from privmed.deid.redact import text_boxes

    for g in real_gray(data_root, "chest_xray_pneumonia", 3, 0) + real_gray(data_root, "covid19_xray", 2, 0):
        _, boxes = text_boxes(g)
        h, w = g.shape
        black = np.zeros(g.shape, bool)
        for left, t, r, b in boxes:
            black[max(0, t):b, max(0, left):r] = True
        assert black.mean() < 0.03
        assert black[h // 4:3 * h // 4, w // 8:7 * w // 8].mean() < 0.01  # the lung fields


@needs_ocr
def test_api_redact_true_round_trip(small_bundle, tmp_path, data_root, caplog):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from privmed.api.server import Settings, create_app

    g = real_gray(data_root, "covid19_xray", 1, 3)[0]
    b = burn(g, random.Random(9), n=2)
    buf = io.BytesIO()
    Image.fromarray(b.image).save(buf, format="PNG")
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'a.db'}", bundles=[small_bundle], scan_default_bundles=False)
    app = create_app(settings)
    key = app.state.store.create_key("clinician")[1]
    hdr = {"Authorization": f"Bearer {key}"}
    files = {"file": ("x.png", buf.getvalue(), "image/png")}
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as c:
        plain = c.post("/v1/predict", files=files, headers=hdr)
        red = c.post("/v1/predict", files=files, data={"redact": "true"}, headers=hdr)
        bad = c.post("/v1/predict", files=files, data={"redact": "maybe"}, headers=hdr)
    assert plain.status_code == 200 and "redacted_regions" not in plain.json()["results"][0]
    assert red.status_code == 200, red.text
    assert red.json()["results"][0]["redacted_regions"] >= len(b.strings)
    assert bad.status_code == 400 and "redact" in bad.json()["detail"]
    said = (red.text + caplog.text).upper()
    assert not [t for s in b.strings for t in tokens(s) if t in said]  # counts only, never the text


FLOOR = 0.8
