"""Public data: image corpora a model may use in the clear (no noise), declared here by name.

A corpus is public when it is published as it is and never trained on privately by this project:
the official test splits of the shared datasets are public benchmarks (docs/PRIVACY.md, *Assumptions*),
scored on but never trained on. A declared corpus is that split minus every image with a copy anywhere
else in the shared datasets (any split: the units of every bundle and the test sets they are scored on;
covid19_xray re-publishes 174 Kermany test films, brain MRI's test split holds hundreds of near copies of
its train split).
A copy: same bytes, pHash within 16 bits, or a contrast-proof thumbnail match (``inspect.copies_between``).

The corpus is a constant of the published data, not a function of a run's private data: removing a unit
from a training set never changes it (so it spends no epsilon). A dataset outside the shared ones is
*checked* against it instead: a copy of one of its images in the corpus is a refusal, not a silent drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import privmed.cache as cache
from privmed.config import DATASETS, cache_dir
from privmed.data import inspect as ins
from privmed.data.datasets import Record, fingerprint, open_dataset
from privmed.errors import DatasetError
from privmed.files import sha256_bytes, sha256_file

# name -> (dataset, split). Which corpus serves which task is written down in docs/PRIVACY.md.
CORPORA = {
    "kermany-test": ("chest_xray_pneumonia", "test"),  # 624 paediatric chest films (Kermany et al. 2018)
    "covid-ct-test": ("covid19_ct", "test"),  # 399 lung CT slices (Soares et al. 2020)
    "brain-mri-test": ("brain_tumor_mri", "test"),  # 1,311 brain MRI slices (Nickparvar 2021)
}


@dataclass
class PublicCorpus:
    name: str
    records: list[Record]
    dropped: int  # images with a copy elsewhere in the shared datasets

    def describe(self) -> dict:
        """What a bundle states about it: public facts only (the corpus is public, so is its hash)."""
        dataset, split = CORPORA[self.name]
        return {"name": self.name, "dataset": dataset, "split": split, "images": len(self.records),
                "dropped_as_copies_of_other_shared_images": self.dropped, "sha256": fingerprint(self.records)}


def public_corpus(name: str, private_dataset: str, data_root: Path | None = None) -> PublicCorpus:
    """The declared corpus ``name`` for training on ``private_dataset``."""
    if name not in CORPORA:
        raise DatasetError(f"unknown public corpus '{name}'; declared: {', '.join(CORPORA)}")
    dataset, split = CORPORA[name]
    if dataset == private_dataset:
        raise DatasetError(f"public corpus '{name}' is a split of {dataset}, the private dataset itself: pick "
                           "a corpus from another dataset (a public split must be disjoint from the test set "
                           "it is scored on)")
    pub = open_dataset(dataset, data_root)
    records = pub.records(split)
    copy = _copies([(pub, r) for r in records], _shared_images(dataset, split, data_root))
    kept = [r for r, c in zip(records, copy) if not c]
    if private_dataset not in DATASETS:  # a user's own data: check, never filter by it
        priv = open_dataset(private_dataset, data_root)
        hit = ins.copies_between([(pub, r) for r in kept], [(priv, r) for s in priv.splits for r in priv.records(s)])
        if hit.any():
            raise DatasetError(f"{int(hit.sum())} images of public corpus '{name}' have a copy in "
                               f"{private_dataset}: that corpus is not public with respect to these data; "
                               "train without a public projection or declare another corpus")
    return PublicCorpus(name, kept, int(copy.sum()))


def _shared_images(dataset: str, split: str, data_root: Path | None) -> list[tuple[object, Record]]:
    """(dataset, record) of every shared image outside the corpus's own split."""
    out = []
    for name in DATASETS:
        try:
            ds = open_dataset(name, data_root)
        except DatasetError:
            continue  # a shared dataset this machine lacks
        out += [(ds, r) for s in ds.splits if (name, s) != (dataset, split) for r in ds.records(s)]
    return out


def _copies(corpus: list[tuple[object, Record]], shared: list[tuple[object, Record]]) -> np.ndarray:
    """``inspect.copies_between`` of the corpus against the shared images, cached under the content of
    every image on both sides, in order, and the copy rule's code: the same files give the same answer,
    so only a changed, added or removed image (or rule) pays the scan again (~13 s on 15,000 images)."""
    files: dict[Path, str] = {}  # an .npz of rows is hashed once for all its rows

    def sha(path: Path) -> str:
        if path not in files:
            try:
                files[path] = sha256_file(path)
            except OSError:  # the scan treats an unreadable image as it always did; readable again: a new key
                files[path] = "unreadable"
        return files[path]

    def content(items):
        return "\n".join(f"{sha(r.path)}:{r.index}" for _, r in items)

    key = sha256_bytes("\n--\n".join([sha256_file(ins.__file__), content(corpus), content(shared)]).encode())
    path = cache_dir() / f"public-copies-{key[:32]}.npy"
    hit = cache.load(path)
    if hit is not None and hit.shape == (len(corpus),):
        return hit.astype(bool)
    flags = ins.copies_between(corpus, shared)
    cache.save(path, flags)
    return flags
