"""Turn a dataset into tensors for training: decode + preprocess once, cache on disk by content.

Caches hold preprocessed pixels or frozen-backbone features (patient data: see ``privmed.cache``)
keyed by a content hash; never file names or patient ids.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import privmed.cache as cache
from privmed.config import TrainConfig, cache_dir
from privmed.data.datasets import Record, fingerprint, load_record, open_dataset, train_val_split
from privmed.data.transforms import Preprocess, to_uint8
from privmed.errors import DatasetError, ImageReadError
from privmed.files import sha256_bytes
from privmed.files import sha256_file as file_sha256
from privmed.models.batched import batched_forward
from privmed.models.registry import spec_of


@dataclass
class Splits:
    classes: list[str]
    train: list[Record]
    val: list[Record]
    fingerprint: dict


def split_records(cfg: TrainConfig) -> Splits:
    from privmed.data.inspect import copies_on_one_side, with_copy_groups

    ds = open_dataset(cfg.dataset, cfg.data_root)
    train = ds.records("train")
    # copies of one image: one unit, one side of the split. Found over train and validation together:
    # over train alone, a validation image kept its copy in training (covid19_ct's Covid_1173.jpg)
    # and copies inside validation were separate units
    records = with_copy_groups(ds, train + (ds.records("val") if "val" in ds.splits else []))
    train, val = records[: len(train)], records[len(train):]
    if "val" not in ds.splits:
        train, val = train_val_split(train, cfg.val_fraction, cfg.seed)
    train, val, moved = copies_on_one_side(ds, train, val)  # the dataset's own split, or groups split by patient
    if not val:
        raise DatasetError(f"the validation split is empty ({len(records)} training images in "
                           f"{len({r.group for r in records})} groups at --set val_fraction={cfg.val_fraction}); "
                           "raise val_fraction or add data")
    if len({r.label for r in train}) < len(ds.classes):
        raise DatasetError("after the validation split some class has no training image; add images")
    fp = {"train": fingerprint(train), "val": fingerprint(val), "n_train": len(train), "n_val": len(val),
          "n_patients_train": len({r.group for r in train}), "val_split": "dataset" if "val" in ds.splits
          else f"stratified by class, grouped by patient, fraction {cfg.val_fraction}, seed {cfg.seed}",
          "copies_moved": moved}
    return Splits(ds.classes, train, val, fp)


def unit_ids(records: list[Record], unit: str) -> tuple[torch.Tensor, str]:
    """(unit index of each record, unit name). ``auto``: the patient where the data carry patient
    ids, else the slice block where the data group slices (CT: one scan's neighbouring slices),
    else the image; a record without an id is its own unit."""
    has_ids = any(r.patient_id for r in records)
    has_blocks = any(r.block for r in records)
    if unit == "patient" and not (has_ids or has_blocks):
        raise DatasetError("--privacy-unit patient needs patient ids (file-name pattern, DICOM PatientID or a "
                           "patients.csv beside the dataset); this dataset has none: use --privacy-unit image")
    if unit == "image" or not (has_ids or has_blocks):
        name = "image"
    else:
        name = "patient" if has_ids else "slice block"
    keys = [r.image if name == "image" else r.group for r in records]  # an image with all its copies
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.long), name


def test_records(cfg: TrainConfig, split: str = "test") -> tuple[list[Record], int]:
    """Test records, minus images with an exact or near copy in train when asked (brain MRI leaks)."""
    from privmed.data.inspect import leaked_test_records

    ds = open_dataset(cfg.dataset, cfg.data_root)
    test = ds.records(split)
    if not cfg.exclude_leaked_test:
        return test, 0
    leaked = set(leaked_test_records(ds, split))
    return [r for r in test if r not in leaked], len(leaked)


def cache_key(*parts) -> str:
    """A cache file's name part: the hash of everything its content depends on."""
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:24]


def records_key(records: list[Record]) -> str:
    """What an array with one row per record depends on: each file's content and label, in the order of
    the rows (not the path: the same images linked into another folder hit the same cache)."""
    rows = (f"{file_sha256(r.path) if r.index is None else r.path.name}:{r.index}:{r.label}" for r in records)
    return sha256_bytes("\n".join(rows).encode())


def load_pixels(records: list[Record], cfg: TrainConfig, progress: bool = True) -> np.ndarray:
    """(N, size, size) uint8, cached by content fingerprint and preprocessing settings."""
    path = cache_dir() / f"pixels-{cache_key(records_key(records), cfg.preprocess.model_dump())}.npy"
    hit = cache.load(path)
    if hit is not None:
        return hit
    pre = Preprocess(cfg.preprocess)
    out = np.empty((len(records), cfg.preprocess.size, cfg.preprocess.size), np.uint8)
    for i, r in enumerate(tqdm(records, desc="decode", disable=not progress, leave=False)):
        try:
            img = load_record(r)
        except ImageReadError as e:
            # file names can carry patient ids (person123_...): name the image by class and position only
            raise DatasetError(f"image {i + 1} of {len(records)} (class folder '{r.path.parent.name}') is unreadable: "
                               f"{e}; `privmed data inspect` lists unreadable files by path") from None
        out[i] = to_uint8(pre(img.pixels))
    cache.save(path, out)
    return out


def frozen_outputs(frozen: torch.nn.Module, pixels: np.ndarray, key: str, progress: bool = True,
                   batch: int = 64) -> torch.Tensor:
    """Run the frozen part once over all images (cached): DP training then touches only the head."""
    path = cache_dir() / f"frozen-{cache_key(key, pixels.shape, sha256_bytes(pixels.tobytes()))}.npy"
    hit = cache.load(path)
    if hit is not None:
        return torch.from_numpy(hit.astype(np.float32))
    arr = batched_forward(lambda p: frozen(pixels_to_tensor(p)).numpy().astype(np.float16), pixels, batch,
                          progress=progress, desc="features")
    cache.save(path, arr)
    return torch.from_numpy(arr.astype(np.float32))


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N,H,W) -> float [0,1] tensor (N,1,H,W), the input every model takes."""
    return torch.from_numpy(pixels).float().div_(255).unsqueeze(1)


def model_inputs(model, pixels: np.ndarray, progress: bool = True) -> torch.Tensor:
    """What the model's trainable part sees: pixels (N,1,H,W), or the cached frozen features."""
    if spec_of(model.name).takes_pixels:
        return pixels_to_tensor(pixels)
    bb = model.backbone
    key = (f"{bb.get('sha256')}:{bb.get('code_version')}:{type(model.frozen).__name__}:"
           f"{getattr(model.frozen, 'upto', '')}")
    return frozen_outputs(model.frozen, pixels, key, progress)
