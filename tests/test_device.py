"""Where training runs (``--device``) and the model's own arguments (``model_args``)."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from privmed.cli import main
from privmed.config import TrainConfig
from privmed.models import get_model
from privmed.training.trainer import torch_device


def test_device_names_are_checked_and_a_missing_gpu_is_an_error():
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(ValidationError, match="device must be"):
            TrainConfig(device=bad)
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="no such CUDA GPU"):
        torch_device(f"cuda:{torch.cuda.device_count()}")  # one past the last GPU, on any machine


def test_train_on_a_missing_gpu_fails_at_once_with_one_line(tmp_path, capsys, data_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "bundle"
    rc = main(["train", "--dataset", "covid19_xray", "--data-root", str(data_root), "--model", "cnn",
               "--device", "cuda", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "device=cuda" in err and "device=cpu" in err
    assert not out.exists()


def test_model_args_reach_the_bundle_and_a_misspelt_one_is_refused(tmp_path, data_root):
    from privmed.bundle.format import load_bundle, read_metadata
    from privmed.pipeline import train_bundle

    with pytest.raises(ValueError, match="takes no argument dropuot; its model_args: dropout"):
        get_model("cnn", 3, dropuot=0.1)
    cfg = TrainConfig(dataset="covid19_xray", data_root=data_root, model="cnn", model_args={"dropout": 0.05},
                      epochs=1, preprocess={"size": 32}, augment={"enabled": False})
    out = train_bundle(cfg, tmp_path / "b", progress=False)
    meta = read_metadata(out).raw
    assert meta["model"]["kwargs"] == {"dropout": 0.05} and meta["training"]["device"] == "cpu"
    model, _ = load_bundle(out)
    drop = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [d.p for d in drop] == [0.05]
    assert json.loads(json.dumps(meta["training"]))["model_args"] == {"dropout": 0.05}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dp_training_on_the_gpu_returns_a_cpu_model_with_the_same_ledger(data_root):
    from privmed.training.trainer import train

    cfg = dict(dataset="covid19_xray", data_root=data_root, model="cnn", epochs=1, preprocess={"size": 32})
    gpu, cpu = train(TrainConfig(**cfg, device="cuda"), progress=False), train(TrainConfig(**cfg), progress=False)
    assert all(p.device.type == "cpu" for p in gpu.model.parameters())
    assert gpu.privacy["epsilon"] == cpu.privacy["epsilon"] <= 2.0
    assert gpu.privacy["noise_multiplier"] == cpu.privacy["noise_multiplier"]
