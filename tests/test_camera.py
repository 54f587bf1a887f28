"""Camera photos of films: rectification finds the film in simulated phone photos of real chest test
films, ``source="camera"`` makes them usable through the one prediction path (and the REST API's
``?source=camera``), non-X-ray photos stay refused, and an image with no film outline passes unchanged."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import default_bundle, require_dataset
from privmed.data.read import load_image
from privmed.data.rectify import rectify
from privmed.evaluation.camera_sim import phone_photo


def chest_films(data_root: Path, per_class: int = 2, seed: int = 3) -> list[Path]:
    require_dataset(data_root, "chest_xray_pneumonia")
    out, rng = [], np.random.default_rng(seed)
    for cls in ("normal", "pneumonia"):
        files = sorted((data_root / "chest_xray_pneumonia" / "test" / cls).iterdir())
        out += [files[i] for i in rng.choice(len(files), per_class, replace=False)]
    return out


@pytest.fixture(scope="module")
def chest_model():
    b = default_bundle("chest_xray_pneumonia")
    if b is None:
        pytest.skip("default chest bundle (bundles/chest_xray_pneumonia) not installed")
    from privmed.inference.predictor import load_model

    return load_model(b)


def near_operating_point(model, result: dict, within: float = 0.15) -> bool:
    """Whether p(pneumonia) lies near the bundle's decision threshold (not 0.5: a DP bundle's operating
    point is its own release, e.g. 0.90)."""
    t = (model.decision or {}).get("threshold_probability", 0.5)
    return abs(result["probabilities"]["pneumonia"] - t) < within


def film_side(corners: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(corners[i] - corners[(i + 1) % 4]) for i in range(4)]))


def test_rectify_finds_the_film_corners(data_root):
    rng = np.random.default_rng(0)
    for path in chest_films(data_root):
        for kind in ("desk", "monitor"):
            photo = phone_photo(load_image(path).pixels, rng, kind=kind)
            r = rectify(load_image(photo.jpeg).pixels)
            assert r.found and r.method == "quadrilateral", (path.name, kind)
            err = np.abs(r.corners - photo.corners).max()
            assert err <= 0.03 * film_side(photo.corners), (path.name, kind, err)  # ~1-2 % typically
            h, w = r.pixels.shape
            assert 0.7 < w / h < 1.4 and r.pixels.min() >= 0 and r.pixels.max() <= 1  # upright square film


def test_image_without_a_film_outline_passes_unchanged(data_root):
    clean = load_image(chest_films(data_root, 1)[0]).pixels  # a scan fills its frame: no film edge inside
    r = rectify(clean)
    assert not r.found and r.corners is None and np.array_equal(r.pixels, clean)
    from privmed.inference.predictor import camera_input

    img = camera_input(load_image(clean), "camera")
    assert img.meta["rectified"] == {"found": False, "method": "none", "corners": None}
    assert np.array_equal(img.pixels, clean)


def test_camera_photo_is_accepted_and_agrees_with_the_clean_film(chest_model, data_root):
    from privmed.inference.service import analyse

    rng = np.random.default_rng(1)
    checked = 0
    for path in chest_films(data_root, per_class=4, seed=11):
        clean = analyse(chest_model, path.read_bytes())[0]
        if near_operating_point(chest_model, clean):
            continue  # a photo may tip it either way (docs/notebook/BENCHMARKS.md)
        photo = phone_photo(load_image(path).pixels, rng)
        res = analyse(chest_model, photo.jpeg, source="camera")[0]
        assert res["image"]["source"] == "camera" and res["image"]["rectified"]["found"]
        assert not res["abstain"], (path.name, res["abstain_reasons"])
        assert res["label"] == clean["label"], path.name
        checked += 1
    assert checked >= 3


def grace_hopper() -> bytes:
    mpl = pytest.importorskip("matplotlib.cbook")
    return Path(mpl.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


def noise_png() -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("make", [grace_hopper, noise_png], ids=["grace_hopper", "noise"])
def test_non_xray_photos_stay_refused_as_camera(chest_model, make):
    from privmed.api.status import status_for
    from privmed.errors import PrivmedError
    from privmed.inference.service import analyse

    try:
        res = analyse(chest_model, make(), source="camera")[0]
    except PrivmedError as e:
        assert status_for(e) == 422
        return
    assert res["abstain"] and res["abstain_reasons"]


def test_bad_source_is_a_clear_error(chest_model, data_root):
    from privmed.api.status import status_for
    from privmed.errors import ImageReadError
    from privmed.inference.service import analyse

    with pytest.raises(ImageReadError) as e:
        analyse(chest_model, chest_films(data_root, 1)[0].read_bytes(), source="webcam")
    assert status_for(e.value) == 422 and "camera" in str(e.value)


def test_api_source_camera_and_bad_value(chest_model, data_root, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from privmed.api.server import Settings, create_app

    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'audit.db'}", bundles=[chest_model.path],
                              scan_default_bundles=False))
    key = app.state.store.create_key("clinician")[1]
    path = chest_films(data_root, 1, seed=5)[0]
    photo = phone_photo(load_image(path).pixels, np.random.default_rng(2))
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {key}"}
        files = {"file": ("photo.jpg", photo.jpeg, "image/jpeg")}
        r = client.post("/v1/predict?source=camera", files=files, headers=h)
        assert r.status_code == 200, r.text
        img = r.json()["results"][0]["image"]
        assert img["source"] == "camera" and img["rectified"]["found"] and len(img["rectified"]["corners"]) == 4
        r = client.post("/v1/predict", files=files, headers=h)  # default: a file, as before
        assert r.status_code == 200 and "rectified" not in r.json()["results"][0]["image"]
        r = client.post("/v1/predict?source=webcam", files=files, headers=h)
        assert r.status_code == 422 and "source" in r.json()["detail"] and "camera" in r.json()["detail"]
        params = {p["name"]: p for p in app.openapi()["paths"]["/v1/predict"]["post"]["parameters"]}
        assert params["source"]["schema"]["enum"] == ["file", "camera"]


def test_app_shows_the_film_as_the_model_saw_it(data_root):
    from privmed.app.backend import display_pixels
    from privmed.data.rectify import rectify

    photo = phone_photo(load_image(chest_films(data_root, 1)[0]).pixels, np.random.default_rng(4))
    r = rectify(load_image(photo.jpeg).pixels)
    shown = display_pixels(photo.jpeg, {"source": "camera", "rectified": r.to_dict()})
    assert shown.shape == r.pixels.shape and np.abs(shown - r.pixels).mean() < 0.01  # rounded corners only
    assert display_pixels(photo.jpeg, {}).shape == (photo.size[1], photo.size[0])  # an upload: as it is


def test_cli_predict_source_camera_straightens_a_photo(chest_model, data_root, tmp_path, capsys):
    """`privmed predict --source camera` takes the API's camera path: a phone photo of a film is found,
    straightened and answered like the clean film (before, the CLI had no way to ask: issue 32, item 4)."""
    import json

    from privmed.cli import main

    rng = np.random.default_rng(1)
    checked = 0
    for path in chest_films(data_root, per_class=4, seed=11):
        photo = tmp_path / f"{path.stem}-photo.jpeg"
        photo.write_bytes(phone_photo(load_image(path).pixels, rng).jpeg)
        assert main(["predict", str(default_bundle("chest_xray_pneumonia")), str(path), str(photo),
                     "--source", "camera", "--json"]) == 0
        clean, shot = json.loads(capsys.readouterr().out)
        if near_operating_point(chest_model, clean):
            continue  # a photo may tip it either way
        assert not shot["abstain"], shot["abstain_reasons"]
        assert shot["label"] == clean["label"], path.name
        checked += 1
    assert checked >= 3
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        main(["predict", str(default_bundle("chest_xray_pneumonia")), str(photo), "--source", "phone"])
    assert e.value.code == 2 and "camera" in capsys.readouterr().err
