"""Our EfficientNet-Lite0 computes the same function as the reference loader of its ImageNet
weights (PyPI ``efficientnet-lite-pytorch``, TF "same" padding), on real images: a photograph
(the Grace Hopper picture matplotlib ships) and chest X-rays read by privmed's own pipeline.

The reference package is a test dependency only (``pip install -e .[test]``). Without it or
without the datasets these tests skip, except in CI (``CI=true``), where they fail.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from privmed.config import TrainConfig, default_data_root
from privmed.models import efficientnet_lite as effl
from privmed.models import get_model

TOL = 1e-4
MILITARY_UNIFORM = 652  # ImageNet class index


def _missing(why: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why} (CI=true: required)")
    pytest.skip(why)


def _reference(image_size=(224, 224)):
    """The reference model; its same-padding is static, computed for ``image_size``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        _missing("reference package efficientnet-lite-pytorch not installed; pip install -e .[test]")
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(effl.weights_path()),
                                        image_size=list(image_size)).eval()


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(scope="module")
def ours():
    return effl.pretrained_lite0()


def _ref_logits(ref, x):
    """The reference takes normalised 3-channel input; ours takes [0,1] grey (or RGB) and normalises."""
    return ref((x.expand(-1, 3, -1, -1) - effl.MEAN) / effl.STD)


def _ref_pooled(ref, x):
    return ref.extract_features((x.expand(-1, 3, -1, -1) - effl.MEAN) / effl.STD).mean((2, 3))


def _max_abs(a, b) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def grace_hopper() -> torch.Tensor:
    """(1, 3, 224, 224) RGB in [0, 1]: centre square crop, bilinear resize."""
    try:
        from matplotlib import cbook
    except ImportError:
        _missing("matplotlib (for its sample image grace_hopper.jpg) not installed; pip install -e .[test]")
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        arr = np.array(im.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def xrays() -> torch.Tensor:
    """(8, 1, 224, 224) chest X-rays of the official test split (4 normal, 4 pneumonia), read and
    preprocessed by privmed's training path (load_pixels -> pixels_to_tensor)."""
    from privmed.data.datasets import open_dataset
    from privmed.training.data import load_pixels, pixels_to_tensor

    root = default_data_root()
    if not (root / "chest_xray_pneumonia" / "test").is_dir():
        _missing(f"real dataset chest_xray_pneumonia/test not found under {root}; set PRIVMED_DATA")
    cfg = TrainConfig(dataset="chest_xray_pneumonia", data_root=root, model="effnet_lite0_head")
    recs = open_dataset(cfg.dataset, root).records("test")
    pick = []
    for label in sorted({r.label for r in recs}):
        pick += [r for r in recs if r.label == label][:4]
    return pixels_to_tensor(load_pixels(pick, cfg, progress=False))


def test_imagenet_logits_match_reference_on_a_photo(reference, ours, grace_hopper):
    with torch.no_grad():
        want, got = _ref_logits(reference, grace_hopper), ours(grace_hopper)
    assert _max_abs(got, want) <= TOL
    assert int(want.argmax()) == MILITARY_UNIFORM
    assert int(got.argmax()) == MILITARY_UNIFORM


def test_imagenet_logits_and_features_match_reference_on_chest_xrays(reference, ours, xrays):
    with torch.no_grad():
        assert _max_abs(ours(xrays), _ref_logits(reference, xrays)) <= TOL
        assert _max_abs(ours.features(xrays), _ref_pooled(reference, xrays)) <= TOL


def test_bn_folded_backbone_equals_unfolded(ours, grace_hopper, xrays):
    folded = effl.fold_all_bn(effl.pretrained_lite0())
    with torch.no_grad():
        for x in (grace_hopper, xrays):
            assert _max_abs(folded(x), ours(x)) <= TOL


def test_split_models_compute_the_reference_features(reference, xrays):
    """What DP training actually uses: the head model's frozen part (BN folded) and the tail
    model's truncated trunk + trainable blocks, for a non-square size too (padding per input size)."""
    head, tail = get_model("effnet_lite0_head", 2), get_model("effnet_lite0_tail", 2)
    t = tail.trainable
    odd = torch.nn.functional.interpolate(xrays[:2], size=(201, 237), mode="bilinear", align_corners=False)
    with torch.no_grad():
        for x, ref in ((xrays, reference), (odd, _reference(odd.shape[-2:]))):
            want = _ref_pooled(ref, x)
            assert _max_abs(head.frozen(x), want) <= TOL
            assert _max_abs(t.act(t.head(t.blocks(tail.frozen(x)))).mean((2, 3)), want) <= TOL


def test_frozen_feature_cache_key_names_the_backbone_code(monkeypatch):
    """Features of an older backbone implementation must not be reused from the cache."""
    import privmed.training.data as data

    keys = []
    monkeypatch.setattr(data, "frozen_outputs", lambda frozen, pixels, key, progress: keys.append(key))
    model = get_model("effnet_lite0_head", 2)
    px = np.zeros((1, 32, 32), np.uint8)
    data.model_inputs(model, px, progress=False)
    model.backbone = dict(model.backbone, code_version="something-else")
    data.model_inputs(model, px, progress=False)
    assert effl.BACKBONE_VERSION in keys[0]
    assert keys[0] != keys[1]
