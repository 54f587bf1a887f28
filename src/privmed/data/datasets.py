"""Labelled image datasets: folders ``<root>/<split>/<class>/<file>`` and MedMNIST ``.npz``.

A ``Record`` keeps the patient id next to every image where the data has one, so that splits
(and, later, privacy) can be per patient. Patient ids stay in memory: never logged or cached.
A ``manifest.csv`` beside the splits (column ``file``, relative path) may name a grouping the
file names do not carry: ``patient_id``, else ``group``/``slice_block`` (covid19_ct: blocks of
neighbouring CT slices, no patient ids published).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privmed.config import DATASETS, default_data_root
from privmed.data.read import Image, _to_gray01, load_image
from privmed.errors import DatasetError
from privmed.files import sha256_bytes
from privmed.files import sha256_file as file_sha256

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}

# chest_xray_pneumonia names carry a patient id: person<id>_bacteria_<n>, IM-<id>-<n>, NORMAL2-IM-<id>-<n>
_PATIENT_PATTERNS = [
    re.compile(r"^(person\d+)_"),
    re.compile(r"^(NORMAL2-IM-\d+)-"),
    re.compile(r"^(IM-\d+)-"),
]


def dicom_patient_key(path: Path) -> str | None:
    """The DICOM PatientID as a domain-separated SHA-256, kept in memory only (never logged or
    stored): groups a patient's files without holding the raw id. Deterministic on purpose:
    ``train_val_split`` hashes this key, so a resumed run or an audit in another process must
    get the same key to see the same validation split (a per-process salt moved patients)."""
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        pid = str(header.get("PatientID", "") or "")
    except Exception:
        return None
    return "dicom-" + sha256_bytes(b"privmed-dicom-patient\x00" + pid.encode())[:16] if pid.strip() else None


def patient_id_from_name(name: str) -> str | None:
    for pat in _PATIENT_PATTERNS:
        m = pat.match(name)
        if m:
            return m.group(1)
    return None


def file_patient_id(path: Path) -> str | None:
    """The patient a file names: the DICOM PatientID (as a key), else the file-name pattern."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return dicom_patient_key(path)
    return patient_id_from_name(path.name)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; none when it is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Record:
    path: Path
    label: int
    patient_id: str | None = None
    index: int | None = None  # row in an .npz file; None for image files
    split: str | None = None  # .npz split the row belongs to
    block: str | None = None  # a grouping coarser than the image but not a patient (CT slice block)
    copies: str | None = None  # content key of an image and its exact/near copies (data.inspect.with_copy_groups)

    @property
    def image(self) -> str:
        """The image as a unit: all its copies together."""
        return self.copies or f"{self.path}#{self.index}"

    @property
    def group(self) -> str:
        """Unit that must not straddle a split: the patient, else the slice block, else the image."""
        return self.patient_id or self.block or self.image


class FolderDataset:
    """``<root>/<split>/<class>/<file>``; classes are the sorted sub-folder names of train."""

    def __init__(self, root: Path, name: str | None = None):
        self.root = Path(root)
        self.name = name or self.root.name
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset folder {self.root} does not exist; set PRIVMED_DATA or --data-root to the folder "
                "that holds it (layout <root>/<split>/<class>/<image>)"
            )
        splits = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not splits:
            raise DatasetError(f"{self.root} has no split folders (expected train/ and test/)")
        self.splits = splits
        first = "train" if "train" in splits else splits[0]
        self.classes = sorted(p.name for p in (self.root / first).iterdir() if p.is_dir())
        if not self.classes:
            raise DatasetError(f"{self.root / first} has no class folders")
        self.group_kind, self._groups = _manifest_groups(self.root)

    def records(self, split: str) -> list[Record]:
        folder = self.root / split
        if not folder.is_dir():
            raise DatasetError(f"{self.name} has no '{split}' split (found: {', '.join(self.splits)})")
        out = []
        for label, cls in enumerate(self.classes):
            files = image_files(folder / cls)
            if not files:
                raise DatasetError(
                    f"class folder {folder / cls} is missing or holds no images; every class of train "
                    f"({', '.join(self.classes)}) needs images in every split"
                )
            out += [self._record(p, label) for p in files]
        return out

    def _record(self, path: Path, label: int) -> Record:
        pid = self._patient_id(path)
        kind, value = self._groups.get(path.relative_to(self.root).as_posix(), (None, None))
        if kind == "patient_id":
            return Record(path, label, pid or value)
        return Record(path, label, pid, block=value)

    @functools.cached_property
    def _csv_ids(self) -> dict[str, str]:
        """``patients.csv`` beside the splits (columns image,patient; image relative to the dataset
        folder or a bare file name): ids for data whose names carry none."""
        import csv

        path = self.root / "patients.csv"
        if not path.is_file():
            return {}
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"image", "patient"} <= set(rows[0]):
            raise DatasetError(f"{path} needs the columns image,patient")
        return {r["image"].strip(): r["patient"].strip() for r in rows if r.get("patient", "").strip()}

    def _patient_id(self, path: Path) -> str | None:
        ids = self._csv_ids
        if ids:
            pid = ids.get(str(path.relative_to(self.root))) or ids.get(path.name)
            if pid:
                return pid
        return file_patient_id(path)

    def load(self, record: Record):
        return load_image(record.path)


_GROUP_COLUMNS = ("patient_id", "group", "slice_block")  # first present wins


def _manifest_groups(root: Path) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """``root/manifest.csv`` -> (column used, {relative file: (kind, value)}); (None, {}) without one."""
    path = root / "manifest.csv"
    if not path.is_file():
        return None, {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            column = next((c for c in _GROUP_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None or "file" not in (reader.fieldnames or []):
                return None, {}
            kind = "patient_id" if column == "patient_id" else "block"
            return column, {row["file"]: (kind, row[column]) for row in reader if row.get(column)}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path} is unreadable ({e}); fix or remove it (it only adds grouping)") from None


class NpzDataset:
    """A MedMNIST-style ``.npz`` with ``{split}_images`` and ``{split}_labels`` arrays."""

    def __init__(self, path: Path, classes: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"no such .npz file: {self.path}")
        self._npz = np.load(self.path)
        self.name = self.path.stem
        self.splits = sorted(k[: -len("_images")] for k in self._npz.files if k.endswith("_images"))
        if not self.splits:
            raise DatasetError(f"{self.path} has no '<split>_images' arrays (keys: {self._npz.files})")
        n_cls = int(np.max(self._npz[f"{self.splits[0]}_labels"])) + 1
        self.classes = classes or [str(i) for i in range(n_cls)]

    def records(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise DatasetError(f"{self.path} has no '{split}' split (found: {', '.join(self.splits)})")
        labels = np.asarray(self._npz[f"{split}_labels"]).reshape(len(self._npz[f"{split}_labels"]), -1)[:, 0]
        return [Record(self.path, int(y), None, i, split) for i, y in enumerate(labels)]

    def load(self, record: Record):
        arr = self._images(record.split)[record.index]
        return Image(_to_gray01(arr), {"format": "npz"})

    @functools.lru_cache(maxsize=4)
    def _images(self, split: str) -> np.ndarray:
        return self._npz[f"{split}_images"]


@functools.lru_cache(maxsize=8)
def _npz(path: Path) -> NpzDataset:
    return NpzDataset(path)


def load_record(record: Record):
    """Decode one record's image (a file, or a row of an .npz)."""
    return load_image(record.path) if record.index is None else _npz(record.path).load(record)


def open_dataset(name_or_path: str | Path, data_root: Path | None = None):
    """A shared dataset by name (``chest_xray_pneumonia``...), a folder, or an ``.npz`` file."""
    p = Path(name_or_path)
    if p.suffix == ".npz":
        from privmed.data.medmnist import classes_for

        return NpzDataset(p, classes_for(p))
    if p.is_dir():
        return FolderDataset(p)
    name = str(name_or_path)
    if name not in DATASETS and ("/" in name or p.exists()):
        raise DatasetError(f"{name} is neither a dataset folder nor an .npz file")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}, or pass a folder path")
    root = Path(data_root) if data_root else default_data_root()
    if not root.is_dir():
        raise DatasetError(
            f"data root {root} does not exist; set PRIVMED_DATA or --data-root to the folder holding {name}/"
        )
    return FolderDataset(root / name, name)


def train_val_split(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Grouped by patient: each patient (or image, without an id) goes to validation when a keyed
    hash of its own id falls below ``val_fraction``. The choice for one patient depends on nobody
    else, so adding or removing a patient moves no one else across the split: training and
    validation hold disjoint units and DP releases on each compose in parallel."""
    def to_val(group: str) -> bool:
        h = hashlib.sha256(f"privmed-split:{seed}:{group}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2 ** 64 < val_fraction

    train, val = [], []
    for r in records:
        (val if to_val(r.group) else train).append(r)
    return train, val


def fingerprint(records: list[Record]) -> str:
    """Content hash of a list of records (file bytes + labels); stable across machines."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (str(r.path), r.index or 0)):
        h.update(file_sha256(r.path).encode() if r.index is None else f"{r.path.name}:{r.index}".encode())
        h.update(str(r.label).encode())
    return h.hexdigest()
