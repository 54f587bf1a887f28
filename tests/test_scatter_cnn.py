"""scatter_cnn: the fixed scattering transform is the one of the paper (kymatio's), it is a
non-expansive, locally translation-invariant representation, per-sample gradients are per
sample, and a short DP-SGD run at epsilon 2 on real chest X-rays learns (AUC > 0.6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from privmed.config import TrainConfig
from privmed.evaluation.metrics import roc_auc
from privmed.models import get_model
from privmed.models.scattering import Scattering2D, filter_bank, padding
from privmed.privacy import DPSGD, DPPlan
from privmed.training import data as tdata
from privmed.training.data import load_pixels, model_inputs, pixels_to_tensor, split_records
from privmed.training.trainer import per_sample_loss


def test_output_shape_and_channels():
    s = Scattering2D(64)
    assert s.channels == 81
    assert s(torch.rand(2, 1, 64, 64)).shape == (2, 81, 16, 16)
    assert Scattering2D(32, J=2, L=4)(torch.rand(1, 3, 32, 32)).shape == (1, 3 * 25, 8, 8)
    m = get_model("scatter_cnn", 2)
    assert m.frozen(torch.rand(1, 1, 224, 224)).shape == (1, 81, 16, 16)  # the model resizes to 64 px itself
    assert m(torch.rand(3, 1, 224, 224)).shape == (3, 2)


def test_filters_are_normalised_and_form_a_non_expansive_frame():
    M, _, _ = padding(64, 2)
    psi, phi = filter_bank(M, M, 2, 8)
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-6)  # low-pass: unit gain at frequency 0
    assert phi.max() <= 1.0 + 1e-6
    for _, _, f in psi:
        assert abs(f[0, 0]) < 1e-9  # wavelets have zero mean
        assert 0.9 < f.max() <= 1.0 + 1e-6  # and peak near 1
    # Littlewood-Paley sum (symmetrised: inputs are real) <= 1: no frequency is amplified
    lp = phi ** 2 + sum(0.5 * (f ** 2 + np.roll(np.flip(f, (0, 1)), 1, (0, 1)) ** 2) for _, _, f in psi)
    assert lp.max() <= 1.0 + 1e-6
    s = Scattering2D(64)
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    y = x + 0.1 * torch.randn_like(x)
    # ||Sx - Sy|| <= ||x - y|| (coefficients are subsampled by 4 x 4: energy scales by 16)
    d = ((s(x) - s(y)) ** 2).sum((1, 2, 3)) * 16
    assert (d <= ((x - y) ** 2).sum((1, 2, 3))).all()


@pytest.mark.parametrize("size,J,channels", [(64, 2, 81), (128, 3, 217)])  # scatter_cnn, scatter_cnn_128
def test_matches_kymatio_when_installed(size, J, channels):
    front = pytest.importorskip("kymatio.scattering2d.frontend.torch_frontend")
    torch.manual_seed(1)
    x = torch.rand(2, 1, size, size)
    ref = front.ScatteringTorch2D(J=J, shape=(size, size), L=8)(x).reshape(2, channels, 16, 16)
    torch.testing.assert_close(Scattering2D(size, J)(x), ref, atol=1e-4, rtol=1e-3)


def _chest(data_root, size, split="train"):
    cfg = TrainConfig(dataset="chest_xray_pneumonia", data_root=data_root, preprocess={"size": size})
    recs = split_records(cfg).train if split == "train" else tdata.test_records(cfg)[0]
    return cfg, recs


def test_small_shifts_move_scattering_less_than_pixels(data_root):
    cfg, recs = _chest(data_root, 72)
    px = pixels_to_tensor(load_pixels(recs[:8], cfg, progress=False))
    s = Scattering2D(64)
    a, b = px[..., 4:68, 4:68], px[..., 5:69, 4:68]  # the same film, one pixel apart

    def rel(u, v):
        return ((u - v).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)).mean()
    assert rel(s(a), s(b)) < 0.7 * rel(a, b)  # measured 0.44x: invariance up to the 4 px scale


def _no_dropout(net):
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return net


def test_per_sample_gradient_depends_on_its_own_sample_only():
    torch.manual_seed(0)
    model = get_model("scatter_cnn", 2)
    with torch.no_grad():
        x = model.frozen(torch.rand(5, 1, 64, 64))
    y = torch.tensor([0, 1, 0, 1, 1])
    net = _no_dropout(model.trainable).train()

    def grads(xb, yb):
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
        gsm.zero_grad()
        per_sample_loss(gsm(xb), yb).sum().backward()
        out = [p.grad_sample[0].clone() for p in net.parameters()]
        gsm._close()
        return out

    alone = grads(x[:1], y[:1])
    for keep in ([0, 1, 2, 3, 4], [0, 2], [0, 4, 1]):  # remove / add other examples
        for g, want in zip(grads(x[keep], y[keep]), alone):
            torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-5)


N_TRAIN, EPOCHS = 500, 6


def short_dp_run(data_root) -> float:
    """AUC on 400 official test films after DP-SGD at epsilon 2 (per image) on N_TRAIN training films."""
    cfg, recs = _chest(data_root, 64)
    pick = np.random.RandomState(0).choice(len(recs), N_TRAIN, replace=False)
    recs = [recs[i] for i in pick]
    _, test = _chest(data_root, 64, "test")
    test = [test[i] for i in np.random.RandomState(1).choice(len(test), 400, replace=False)]
    torch.manual_seed(0)
    model = get_model("scatter_cnn", 2)
    x = model_inputs(model, load_pixels(recs, cfg, progress=False), progress=False)
    x_te = model_inputs(model, load_pixels(test, cfg, progress=False), progress=False)
    y = torch.tensor([r.label for r in recs])
    y_te = np.array([r.label for r in test])
    n = len(x)
    plan = DPPlan(2.0, 1 / (10 * n), 0.1, 0.25, 4 * EPOCHS, expected_units=n)
    net = model.trainable
    engine = DPSGD(net, torch.optim.SGD(net.parameters(), lr=4.0, momentum=0.9), torch.arange(n), plan)
    while engine.can_step():
        idx, local, chosen = engine.sample()
        engine.step(x[idx], y[idx], local, chosen, per_sample_loss)
    assert engine.spent() <= 2.0 + 1e-6
    net = engine.plain_module.eval()
    with torch.no_grad():
        p = torch.softmax(net(x_te), 1)[:, 1].numpy()
    return roc_auc(y_te, p)


def test_short_dp_training_on_real_chest_xrays_learns(data_root):
    assert short_dp_run(data_root) > 0.6
