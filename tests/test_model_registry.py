"""What a model takes (pixels, or its frozen part's features) and its training recipe for unset values
live on its ``MODELS`` entry; training, the audit and federated hospitals look them up there."""
from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from privmed.config import TrainConfig
from privmed.models import MODELS, SplitModel, get_model, spec_of
from privmed.training.data import model_inputs

RECIPE = ("epochs", "batch_size", "lr", "optimizer")


@pytest.mark.parametrize("name", list(MODELS))
def test_takes_pixels_says_what_the_built_model_has(name):
    model = get_model(name, 2)
    assert model.name == name
    assert MODELS[name].takes_pixels == isinstance(model.frozen, nn.Identity)


@pytest.mark.parametrize("name", list(MODELS))
def test_unset_recipe_values_come_from_the_registry(name, tmp_path):
    cfg = TrainConfig(model=name, data_root=tmp_path)
    want = {"optimizer": "adam", "sample_rate": 0.2, **MODELS[name].defaults}
    assert {"epochs", "batch_size", "lr"} <= set(MODELS[name].defaults)
    assert {k: getattr(cfg, k) for k in RECIPE} == {k: want[k] for k in RECIPE}
    assert cfg.privacy.sample_rate == want["sample_rate"]


def test_values_given_win_and_an_unknown_model_gets_the_cnn_recipe(tmp_path):
    cfg = TrainConfig(model="effnet_lite0_multi", data_root=tmp_path, epochs=3, lr=0.7, optimizer="adam",
                      privacy={"sample_rate": 0.05})
    assert (cfg.epochs, cfg.lr, cfg.optimizer, cfg.privacy.sample_rate) == (3, 0.7, "adam", 0.05)
    assert cfg.batch_size == MODELS["effnet_lite0_multi"].defaults["batch_size"]
    other = TrainConfig(model="no_such_model", data_root=tmp_path)
    assert (other.epochs, other.batch_size, other.lr) == tuple(MODELS["cnn"].defaults[k] for k in RECIPE[:3])


def test_a_pixel_model_trains_on_pixels_and_a_nameless_model_is_refused():
    pixels = np.full((2, 8, 8), 255, np.uint8)
    x = model_inputs(get_model("cnn", 2), pixels, progress=False)
    assert x.shape == (2, 1, 8, 8) and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="unknown model ''; choose one of"):
        model_inputs(SplitModel(nn.Identity(), nn.Linear(64, 2)), pixels, progress=False)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        spec_of("nope")
