"""DP-SGD clips each example's own gradient: check that Opacus's per-sample gradients of every
DP-trainable model equal the gradient of that example alone, on real chest X-rays."""
import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from privmed.config import TrainConfig
from privmed.models import get_model
from privmed.training.data import load_pixels, model_inputs, pixels_to_tensor, split_records


def _real_batch(data_root, size, n=4):
    cfg = TrainConfig(dataset="chest_xray_pneumonia", data_root=data_root, model="cnn", preprocess={"size": size})
    recs = split_records(cfg).train
    pick = [recs[i] for i in np.random.RandomState(0).choice(len(recs), n, replace=False)]
    return load_pixels(pick, cfg, progress=False), torch.tensor([r.label for r in pick])


@pytest.mark.parametrize("name,size", [("cnn", 64), ("scatter_cnn", 64), ("effnet_lite0_tail", 224)])
def test_opacus_per_sample_grads_match_autograd(data_root, name, size):
    """In float64: in float32 a batch of 4 and a batch of 1 differ by ~1e-5 in the forward, which can move
    a pre-activation across a ReLU6 kink and flip its gradient (effnet_lite0_tail: 1.45e-3 relative
    error on a fresh machine). In float64 they agree to ~1e-15, so the tolerance can be tighter."""
    torch.manual_seed(0)
    px, y = _real_batch(data_root, size)
    model = get_model(name, 2)
    x = model_inputs(model, px, progress=False).double()
    net = model.trainable.double()
    for m in net.modules():  # dropout would make the two passes differ
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    net.train()
    ref = {}
    for i in range(len(x)):
        net.zero_grad()
        nn.CrossEntropyLoss()(net(x[i:i + 1]), y[i:i + 1]).backward()
        ref[i] = {k: p.grad.clone() for k, p in net.named_parameters() if p.requires_grad}
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
    gsm.zero_grad()
    nn.CrossEntropyLoss()(gsm(x), y).backward()
    checked = 0
    for k, p in net.named_parameters():
        if not p.requires_grad:
            continue
        for i in range(len(x)):
            want = ref[i][k]
            assert torch.allclose(p.grad_sample[i], want, rtol=1e-9, atol=1e-9 * (1 + float(want.abs().max()))), k
        checked += 1
    assert checked >= 2
    gsm._close()


def test_tail_split_computes_the_same_features_as_the_whole_backbone(data_root):
    px, _ = _real_batch(data_root, 224, n=2)
    x = pixels_to_tensor(px)
    head, tail = get_model("effnet_lite0_head", 2), get_model("effnet_lite0_tail", 2)
    with torch.no_grad():
        want = head.frozen(x)
        t = tail.trainable
        got = t.act(t.head(t.blocks(tail.frozen(x)))).mean((2, 3))
    assert want.shape == (2, 1280)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
