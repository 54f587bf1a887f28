"""The head's public projection (issue 31): a declared public corpus, disjoint from every private image,
a basis that is a constant of public data, and a DP guarantee the projection does not touch."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from privmed.bundle.format import load_bundle, save_bundle
from privmed.config import TrainConfig, default_data_root
from privmed.data import inspect as ins
from privmed.data.datasets import open_dataset
from privmed.data.public import CORPORA, public_corpus
from privmed.errors import DatasetError
from privmed.models import get_model
from privmed.models.registry import public_basis, with_public_basis
from privmed.training.public import fit_public_basis, principal_directions
from test_privacy_guarantee import C, _engine, _max_change

ROOT = default_data_root()


def _all(name):
    ds = open_dataset(name, ROOT)
    return [(ds, r) for s in ds.splits for r in ds.records(s)]


@pytest.fixture(scope="module")
def kermany():
    return public_corpus("kermany-test", "covid19_xray", ROOT)


def test_the_public_corpus_holds_no_copy_of_a_private_image_and_does_not_depend_on_who_trains(kermany):
    """covid19_xray's normal and viral-pneumonia films are Kermany re-saves (pHash misses 120 of them);
    the corpus keeps none, and it is the same corpus whichever dataset trains on it."""
    pub = open_dataset(*CORPORA["kermany-test"][:1], ROOT)
    kept = [(pub, r) for r in kermany.records]
    assert 400 < len(kermany.records) < 624 and kermany.dropped == 624 - len(kermany.records)
    assert not ins.copies_between(kept, _all("covid19_xray")).any()
    copies = ins.copies_between(_all("covid19_xray"), [(pub, r) for r in pub.records("test")])
    assert copies.sum() > 0  # the full split does hold copies: the check above can fail
    other = public_corpus("kermany-test", "covid19_ct", ROOT)
    assert other.describe()["sha256"] == kermany.describe()["sha256"]


def test_a_public_corpus_is_refused_for_its_own_dataset_and_for_data_holding_its_copies(kermany, tmp_path):
    with pytest.raises(DatasetError, match="the private dataset itself"):
        public_corpus("kermany-test", "chest_xray_pneumonia", ROOT)
    with pytest.raises(DatasetError, match="unknown public corpus"):
        public_corpus("imagenet", "covid19_xray", ROOT)
    own = tmp_path / "site"
    for cls, src in (("a", kermany.records[0].path), ("b", kermany.records[-1].path)):
        (own / "train" / cls).mkdir(parents=True)
        shutil.copy(src, own / "train" / cls / "x.jpeg")  # a hospital set that holds two corpus films
    with pytest.raises(DatasetError, match="2 images of public corpus 'kermany-test' have a copy"):
        public_corpus("kermany-test", str(own), ROOT)


def test_the_copy_scan_is_cached_by_content_and_redone_when_an_image_changes(tmp_path, monkeypatch):
    from privmed.data import public

    monkeypatch.setenv("PRIVMED_CACHE", str(tmp_path / "cache"))
    scans = []
    real = ins.copies_between
    monkeypatch.setattr(ins, "copies_between", lambda a, b: scans.append(1) or real(a, b))
    pub = open_dataset("chest_xray_pneumonia", ROOT)
    corpus = [(pub, r) for r in pub.records("test")[:20]]
    others = [r.path for r in open_dataset("covid19_xray", ROOT).records("test")[:10]]
    site = tmp_path / "shared" / "train" / "a"
    site.mkdir(parents=True)
    for i, src in enumerate(others):
        shutil.copy(src, site / f"{i}.jpeg")
    shutil.copy(corpus[3][1].path, site / "copy.jpeg")  # a copy of corpus film 3
    shared_ds = open_dataset(str(tmp_path / "shared"), ROOT)
    shared = [(shared_ds, r) for r in shared_ds.records("train")]
    first = public._copies(corpus, shared)
    assert first[3] and first.sum() == 1 and len(scans) == 1
    assert np.array_equal(public._copies(corpus, shared), first) and len(scans) == 1  # answered from the cache
    shutil.copy(others[0], site / "copy.jpeg")  # the same file name, other content: scanned again
    again = public._copies(corpus, shared)
    assert not again.any() and len(scans) == 2
    (site / "copy.jpeg").unlink()  # gone after it was listed: scanned as the rule treats unreadable images
    assert np.array_equal(public._copies(corpus, shared), real(corpus, shared)) and len(scans) == 3


def test_principal_directions_match_scikit_learn():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30))
    mean, v, share = principal_directions(torch.from_numpy(h), 5)
    pca = PCA(5).fit(h)
    assert np.allclose(mean.numpy(), pca.mean_)
    assert np.allclose(np.abs(v.numpy().T @ pca.components_.T), np.eye(5), atol=1e-6)
    assert share == pytest.approx(pca.explained_variance_ratio_.sum())


def test_a_projected_bundle_keeps_its_basis_and_its_full_embedding(tmp_path, kermany):
    cfg = TrainConfig(dataset="covid19_xray", model="effnet_lite0_head", model_args={"public_k": 8},
                      public_data="kermany-test")
    model = get_model(cfg.model, 3, **cfg.model_args)
    info = fit_public_basis(model, cfg)
    assert info["k"] == 8 and info["sha256"] == kermany.describe()["sha256"] and 0 < info["variance_explained"] < 1
    proj = public_basis(model.trainable)
    assert torch.linalg.matrix_rank(proj.basis) == 8 and proj.mean.abs().sum() > 0
    x = torch.rand(2, 1, 224, 224)
    logits, emb = model.forward_with_embedding(x)
    assert emb.shape == (2, 1280)  # OOD scores see the features, not the projection
    save_bundle(tmp_path / "b", model, {"classes": ["a", "b", "c"], "model": {"name": cfg.model,
                                        "kwargs": cfg.model_args}})
    loaded, _ = load_bundle(tmp_path / "b")
    assert torch.allclose(loaded(x), logits, atol=1e-5)
    fresh = with_public_basis(get_model(cfg.model, 3, **cfg.model_args).trainable, model.trainable)
    assert torch.equal(public_basis(fresh).basis, proj.basis)  # the audit's reference models share it


def test_a_projected_head_still_moves_the_clipped_sum_by_at_most_C():
    """The projection is fixed (no parameter), so each unit's clipped gradient still bounds the sum."""
    torch.manual_seed(0)
    net = get_model("effnet_lite0_multi", 2, public_k=6).trainable
    public_basis(net).basis.copy_(torch.randn(3264, 6) * 10)  # large: gradients well above C
    x = torch.randn(12, 3264)
    y = torch.tensor([0] * 11 + [1])
    units = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 3, 4, 5, 6])
    engine = _engine(net, units)
    assert 0.9 * C < _max_change(engine, x, y, units) <= C * (1 + 1e-4)  # clipped, not vanished
    assert not any(p.requires_grad for p in public_basis(net).parameters())


def test_public_data_and_public_k_come_together():
    model = get_model("effnet_lite0_multi", 2)
    with pytest.raises(ValueError, match="public_k"):
        fit_public_basis(model, TrainConfig(model="effnet_lite0_multi", public_data="kermany-test"))
    with pytest.raises(ValueError, match="public_data"):
        fit_public_basis(get_model("effnet_lite0_multi", 2, public_k=4), TrainConfig(model="effnet_lite0_multi"))
    with pytest.raises(ValueError, match="public_k must be"):
        get_model("effnet_lite0_multi", 2, public_k=-1)


def test_the_statement_names_the_public_corpus():
    from privmed.privacy.ledger import statement

    base = {"epsilon": 2.0, "delta": 1e-5, "unit_of_privacy": "image"}
    assert "kermany-test" in statement({"privacy": {**base, "public_data": {"name": "kermany-test"}}})
    assert "projected" not in statement({"privacy": base})


def test_federated_training_refuses_a_public_projection():
    from privmed.federated.run import _check_model

    with pytest.raises(ValueError, match="no public projection"):
        _check_model(TrainConfig(model="effnet_lite0_multi", model_args={"public_k": 8}, public_data="kermany-test"))
