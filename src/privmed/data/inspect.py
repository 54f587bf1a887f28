"""Dataset audit: counts, sizes, unreadable files, exact and near duplicates, train/test leakage.

Exact duplicates are byte-identical files (sha256). Near duplicates are the same picture
re-encoded, resized or re-windowed: a 255-bit DCT perceptual hash (pHash) of the decoded
grayscale at 64x64, equal within ``NEAR_MAX_DISTANCE`` bits. Measured on the shared data: the
nearest two distinct chest X-rays are 38 bits apart; copies resized by 0.75-1.3x and re-saved
as JPEG (quality 70-90) land at a median of 4 and a 95th percentile of 12 bits (99 % found at
16 on brain MRI, 100 % on chest X-ray). Neighbouring slices of one MRI series start to match
at 16-20 bits: those are the same patient rather than the same image.

Patient ids are only counted, never reported, and file names (``person123_bacteria_1.jpeg`` carries
one) are replaced by ids salted per run (``test/normal/id-3f9a...``: stable within one report, not
linkable across runs) unless ``show_paths=True`` (``privmed data inspect --show-paths``).
"""
from __future__ import annotations

import io
import os
import secrets
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from scipy.fft import dctn
from scipy.stats import rankdata

from privmed.data.datasets import Record
from privmed.data.patients import format_images_per_patient, images_per_patient
from privmed.data.read import MAX_PIXELS, decode_bytes, sniff_format
from privmed.errors import PrivmedError
from privmed.files import sha256_bytes

HASH_SIDE = 64  # decode to 64x64, keep the 16x16 lowest DCT frequencies minus DC: the lowest
HASH_FREQS = 16  # quarter of the band, so sampling phase after a resize barely flips bits
NEAR_MAX_DISTANCE = 16
# contrast-enhanced re-saves land 17-50 pHash bits from their source; the rank correlation of 32x32
# thumbnails still finds them (measured on covid19_xray's Kermany copies: copies >= 0.992, others <= 0.929)
THUMB_SIDE, THUMB_MIN_CORR = 32, 0.98
TRAIN = "train"
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"}  # others (16-bit PNG) via read.py


@dataclass
class _Item:
    """What the audit keeps about one image; no pixels, no patient id."""

    rel: str
    split: str
    label: int
    sha: str | None = None
    phash: np.ndarray | None = None  # bool[255]
    size: str | None = None
    mode: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- per-file work

def _fingerprint(ds, record: Record, split: str) -> _Item:
    item = _Item(_rel(ds, record), split, record.label)
    try:
        item.sha, gray, item.size, item.mode = _read_small(ds, record)
        item.phash = _phash(gray)
    except OSError as e:  # str(e) would carry the file's path
        item.error = e.strerror or type(e).__name__
    except (PrivmedError, ValueError) as e:
        item.error = str(e) or type(e).__name__
    return item


def _read_small(ds, record: Record) -> tuple[str, PILImage.Image, str, str]:
    """(content hash, small grayscale rendering, size, mode) of one image; an .npz row hashes its pixels."""
    if record.index is not None:
        pixels = ds.load(record).pixels
        return (sha256_bytes(np.ascontiguousarray(pixels).tobytes()), _to_pil(pixels),
                f"{pixels.shape[1]}x{pixels.shape[0]}", "npz")
    data = record.path.read_bytes()
    return (sha256_bytes(data), *_small_gray(data))


def _small_gray(data: bytes) -> tuple[PILImage.Image, str, str]:
    """A small grayscale rendering for hashing. JPEGs decode at 1/2-1/8 scale (``draft``),
    which makes a 7000-image audit take seconds; anything odd goes through read.py so the
    reason given for an unreadable file is the same one an upload would get."""
    if sniff_format(data) in ("jpeg", "png"):
        try:
            pil = PILImage.open(io.BytesIO(data))
            size, mode = f"{pil.width}x{pil.height}", pil.mode
            plain = pil.mode in _EIGHT_BIT_MODES and getattr(pil, "n_frames", 1) == 1
            if plain and pil.width * pil.height <= MAX_PIXELS:
                if pil.format == "JPEG":
                    pil.draft("L", (HASH_SIDE, HASH_SIDE))
                return pil.convert("L"), size, mode
        except Exception:
            pass  # fall through to the full reader for its error message
    img = decode_bytes(data)
    h, w = img.pixels.shape
    mode = img.meta.get("mode") or img.meta.get("photometric_interpretation") or img.meta.get("format", "?")
    return _to_pil(img.pixels), f"{w}x{h}", str(mode)


def _to_pil(pixels: np.ndarray) -> PILImage.Image:
    return PILImage.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "L")


def _phash(gray: PILImage.Image) -> np.ndarray:
    # BILINEAR: PIL widens the kernel when shrinking (antialiased); BOX at ratios like 1.3
    # aliases, and a copy resized by 10 % then hashed 18 bits away instead of 4
    a = np.asarray(gray.resize((HASH_SIDE, HASH_SIDE), PILImage.BILINEAR), dtype=np.float32)
    low = dctn(a, norm="ortho")[:HASH_FREQS, :HASH_FREQS].ravel()[1:]  # DC is brightness only
    return low > np.median(low)


def thumbnail(gray: PILImage.Image) -> np.ndarray:
    """Ranks of a 32x32 rendering, centred and scaled to unit norm: a dot product of two is the rank
    correlation of the pictures, blind to contrast curves."""
    a = rankdata(np.asarray(gray.resize((THUMB_SIDE, THUMB_SIDE), PILImage.BILINEAR), np.float64).ravel())
    return (a - a.mean()) / (a.std() or 1.0) / THUMB_SIDE


def _look(ds, record: Record) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(content hash, pHash, thumbnail) of one image; None if unreadable."""
    try:
        sha, gray, _, _ = _read_small(ds, record)
    except (OSError, PrivmedError, ValueError):
        return None
    return sha, _phash(gray), thumbnail(gray)


def copies_between(a: list[tuple[object, Record]], b: list[tuple[object, Record]],
                   max_distance: int = NEAR_MAX_DISTANCE, min_corr: float = THUMB_MIN_CORR) -> np.ndarray:
    """For each (dataset, record) of ``a``: does ``b`` hold a copy of its picture? Same bytes, pHash
    within ``max_distance`` bits (the audit's rule), or thumbnail rank correlation >= ``min_corr``. An
    unreadable image of ``a`` counts as a copy (it cannot be shown not to be one)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        la = list(pool.map(lambda job: _look(*job), a))
        lb = [x for x in pool.map(lambda job: _look(*job), b) if x is not None]
    out = np.array([x is None for x in la])
    seen = [x for x in la if x is not None]
    if not seen or not lb:
        return out
    shas = {x[0] for x in lb}
    near = {i for i, _ in hamming_pairs(np.array([x[1] for x in seen]), np.array([x[1] for x in lb]), max_distance)}
    th_a, th_b = np.array([x[2] for x in seen]), np.array([x[2] for x in lb])
    corr = np.concatenate([(th_a[s:s + 512] @ th_b.T).max(1) for s in range(0, len(th_a), 512)])
    out[~out] = [x[0] in shas or j in near or corr[j] >= min_corr for j, x in enumerate(seen)]
    return out


def _rel(ds, record: Record) -> str:
    if record.index is not None:
        return f"{record.split or record.path.name}#{record.index}"
    root = getattr(ds, "root", None)
    try:
        return record.path.relative_to(root).as_posix() if root else record.path.name
    except ValueError:
        return record.path.as_posix()


def _scan(ds, splits: list[str] | None = None, workers: int | None = None) -> list[_Item]:
    jobs = [(r, split) for split in (splits or ds.splits) for r in ds.records(split)]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes and hashlib release the GIL
        items = list(pool.map(lambda job: _fingerprint(ds, *job), jobs))
    return items


# ---------------------------------------------------------------- duplicate search

def hamming_pairs(a: np.ndarray, b: np.ndarray, max_distance: int, same: bool = False):
    """Index pairs (i, j) with Hamming(a[i], b[j]) <= max_distance, via one matmul per block."""
    if len(a) == 0 or len(b) == 0:
        return []
    af, bf = a.astype(np.float32), b.astype(np.float32)
    bc = bf.sum(1)
    out = []
    for s in range(0, len(af), 1024):
        blk = af[s : s + 1024]
        dist = blk.sum(1)[:, None] + bc[None, :] - 2 * blk @ bf.T
        ii, jj = np.nonzero(dist <= max_distance + 0.5)
        ii = ii + s
        keep = ii < jj if same else np.ones(len(ii), bool)
        out += list(zip(ii[keep].tolist(), jj[keep].tolist()))
    return out


def _groups(pairs, n: int) -> list[list[int]]:
    """Connected components (size > 1) of an undirected pair list."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        parent[find(i)] = find(j)
    comps = defaultdict(list)
    for i in range(n):
        comps[find(i)].append(i)
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def _within(items: list[_Item], k: int, near: bool) -> dict:
    by_sha = defaultdict(list)
    for i, it in enumerate(items):
        by_sha[it.sha].append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    out = {
        "exact_groups": len(exact),
        "exact_redundant_images": sum(len(g) - 1 for g in exact),
        "exact_label_conflicts": sum(len({items[i].label for i in g}) > 1 for g in exact),
        "exact_group_files": [[items[i].rel for i in g] for g in exact],
    }
    if near:
        hashes = np.array([it.phash for it in items]) if items else np.zeros((0, 1), bool)
        pairs = [(i, j) for i, j in hamming_pairs(hashes, hashes, k, same=True) if items[i].sha != items[j].sha]
        groups = _groups(pairs, len(items))
        out.update({
            "near_pairs": len(pairs),
            "near_groups": len(groups),
            "near_images": sum(len(g) for g in groups),
            "near_label_conflicts": sum(items[i].label != items[j].label for i, j in pairs),
            "near_group_files": [[items[i].rel for i in g] for g in groups],
        })
    return out


def _leakage(train: list[_Item], other: list[_Item], classes: list[str], k: int, near: bool) -> dict:
    """Images of ``other`` with a byte-identical or near copy in train."""
    train_sha = defaultdict(set)
    for it in train:
        train_sha[it.sha].add(it.label)
    exact = {i for i, it in enumerate(other) if it.sha in train_sha}
    conflicts = {i for i in exact if other[i].label not in train_sha[other[i].sha]}
    near_only: set[int] = set()
    if near and train and other:
        pairs = hamming_pairs(np.array([it.phash for it in other]), np.array([it.phash for it in train]), k)
        for i, j in pairs:
            if i not in exact:
                near_only.add(i)
                if other[i].label != train[j].label:
                    conflicts.add(i)
    leaked = sorted(exact | near_only)
    per_class = {}
    for label, cls in enumerate(classes):
        n = sum(it.label == label for it in other)
        ex = sum(other[i].label == label for i in exact)
        nr = sum(other[i].label == label for i in near_only)
        per_class[cls] = {"images": n, "exact": ex, "near": nr, "leaked": ex + nr}
    return {
        "images": len(other),
        "exact": len(exact),
        "near_only": len(near_only),
        "leaked": len(leaked),
        "fraction": round(len(leaked) / len(other), 4) if other else 0.0,
        "label_conflicts": len(conflicts),
        "per_class": per_class,
        "files": [other[i].rel for i in leaked],
    }


# ---------------------------------------------------------------- report

def _patients(ds) -> dict:
    """Images and distinct patients per split/class, and patients shared by train and test:
    counts only, the ids themselves never leave this function."""
    ids: dict[str, set] = {}
    per_split = {}
    any_ids = False
    for split in ds.splits:
        recs = ds.records(split)
        rows = {}
        for label, cls in enumerate(ds.classes):
            rs = [r for r in recs if r.label == label]
            pids = {r.patient_id for r in rs if r.patient_id}
            rows[cls] = {"images": len(rs), "with_id": sum(bool(r.patient_id) for r in rs), "patients": len(pids)}
        ids[split] = {r.patient_id for r in recs if r.patient_id}
        any_ids |= bool(ids[split])
        rows["total"] = {"images": len(recs), "with_id": sum(bool(r.patient_id) for r in recs),
                         "patients": len(ids[split])}
        per_split[split] = rows
    shared = {s: len(ids[TRAIN] & ids[s]) for s in ds.splits if s != TRAIN and TRAIN in ids}
    per_patient = {s: images_per_patient(ds.records(s)) for s in ds.splits} if any_ids else {}
    return {"available": any_ids, "per_split": per_split if any_ids else {}, "shared_with_train": shared,
            "images_per_patient": per_patient}


def _blocks(ds) -> dict:
    """Groups that are not patients (covid19_ct: blocks of neighbouring slices, from manifest.csv):
    how many per split, images per group, and groups found in two splits (should be none)."""
    kind = getattr(ds, "group_kind", None)
    if kind is None or kind == "patient_id":
        return {"available": False}
    seen: dict[str, set] = defaultdict(set)
    per_split = {}
    for split in ds.splits:
        sizes = Counter(r.block for r in ds.records(split) if r.block)
        for b in sizes:
            seen[b].add(split)
        n = sorted(sizes.values())
        per_split[split] = {"groups": len(n), "images": sum(n), "images_per_group":
                            {"min": n[0], "median": float(np.median(n)), "max": n[-1]} if n else None}
    return {"available": True, "kind": kind, "per_split": per_split,
            "in_two_splits": sum(len(v) > 1 for v in seen.values())}


def inspect_dataset(ds, near_duplicates: bool = True, max_distance: int = NEAR_MAX_DISTANCE,
                    show_paths: bool = False) -> dict:
    """JSON-able audit of a dataset from ``open_dataset``; file names hashed unless ``show_paths``."""
    start = time.perf_counter()
    items = _scan(ds)
    bad = [it for it in items if it.error]
    good = [it for it in items if not it.error]
    by_split = {s: [it for it in good if it.split == s] for s in ds.splits}
    report = {
        "dataset": ds.name,
        "classes": list(ds.classes),
        "splits": list(ds.splits),
        "counts": {s: _class_counts([it for it in items if it.split == s], ds.classes) for s in ds.splits},
        "sizes": {s: dict(Counter(it.size for it in by_split[s]).most_common()) for s in ds.splits},
        "modes": {s: dict(Counter(it.mode for it in by_split[s]).most_common()) for s in ds.splits},
        "unreadable": [{"path": it.rel, "reason": it.error} for it in bad],
        "near_duplicate_method": {"hash": "dct-phash-255", "max_distance": max_distance} if near_duplicates else None,
        "within_split": {s: _within(by_split[s], max_distance, near_duplicates) for s in ds.splits},
        "leakage": {},
        "patients": _patients(ds),
        "groups": _blocks(ds),
    }
    if TRAIN in by_split:
        for s in ds.splits:
            if s != TRAIN:
                report["leakage"][s] = _leakage(by_split[TRAIN], by_split[s], ds.classes, max_distance, near_duplicates)
    others = [s for s in ds.splits if s != TRAIN]
    if len(others) > 1:  # e.g. test against val (covid19_ct): the later split against the earlier one
        report["leakage_between"] = {f"{b} -> {a}": _leakage(by_split[a], by_split[b], ds.classes, max_distance,
                                                             near_duplicates)
                                     for i, a in enumerate(sorted(others)) for b in sorted(others)[i + 1:]}
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["file_names"] = "shown" if show_paths else "hashed (salted per run)"
    return report if show_paths else _hash_names(report)


def _hash_names(report: dict) -> dict:
    """Every file name in the report -> ``<folders>/id-<12 hex>``, salted with a fresh random salt."""
    salt = secrets.token_bytes(16)

    def h(rel: str) -> str:
        if "#" in rel:  # an .npz row: split#index names no one
            return rel
        folder, _, name = rel.rpartition("/")
        return (folder + "/" if folder else "") + "id-" + sha256_bytes(salt + rel.encode())[:12]

    report["unreadable"] = [dict(u, path=h(u["path"])) for u in report["unreadable"]]
    for w in report["within_split"].values():
        for k in ("exact_group_files", "near_group_files"):
            if k in w:
                w[k] = [[h(f) for f in g] for g in w[k]]
    for leak in [*report["leakage"].values(), *report.get("leakage_between", {}).values()]:
        leak["files"] = [h(f) for f in leak["files"]]
    return report


def _class_counts(items: list[_Item], classes: list[str]) -> dict:
    counts = Counter(it.label for it in items)
    out = {cls: counts.get(i, 0) for i, cls in enumerate(classes)}
    out["total"] = len(items)
    return out


def leaked_test_records(ds, split: str = "test", near_duplicates: bool = True,
                        max_distance: int = NEAR_MAX_DISTANCE) -> list[Record]:
    """Records of ``split`` whose image (exact bytes or near copy) is also in train: exclude
    them from evaluation. Only train and ``split`` are read."""
    if split == TRAIN or TRAIN not in ds.splits:
        return []
    items = _scan(ds, [TRAIN, split])
    train = [it for it in items if it.split == TRAIN and not it.error]
    test = [it for it in items if it.split == split and not it.error]
    leaked = set(_leakage(train, test, ds.classes, max_distance, near_duplicates)["files"])
    return [r for r in ds.records(split) if _rel(ds, r) in leaked]


def with_copy_groups(ds, records: list[Record], max_distance: int = NEAR_MAX_DISTANCE) -> list[Record]:
    """``records`` with a shared ``copies`` key on exact and near copies of one image (the rule that
    finds test leaks: same bytes or pHash within ``max_distance`` bits, joined transitively). A copied
    image is one unit of privacy, not k (as k units its epsilon would grow about k-fold by group
    privacy), and its copies fall on one side of the validation split. The key is the smallest content
    hash in the group (a lone image's own hash): it depends on the group's own pixels only, never on
    where the dataset lives. Records with a patient id keep it."""
    from dataclasses import replace

    todo = [i for i, r in enumerate(records) if not r.patient_id]
    if not todo:
        return list(records)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        items = list(pool.map(lambda i: _fingerprint(ds, records[i], records[i].split or TRAIN), todo))
    ok = [k for k, it in enumerate(items) if not it.error]
    first: dict[str, int] = {}
    pairs = []  # exact copies: each to the first file with its bytes
    for k in ok:
        j = first.setdefault(items[k].sha, k)
        if j != k:
            pairs.append((k, j))
    if max_distance > 0 and ok:
        bits = np.array([items[k].phash for k in ok])
        pairs += [(ok[i], ok[j]) for i, j in hamming_pairs(bits, bits, max_distance, same=True)]
    out = list(records)
    grouped = _groups(pairs, len(items))
    # a lone image is a group of one: its key is its own content hash, not its path, so the split
    # and the units do not change when the dataset is moved (an audit elsewhere sees the same members)
    seen = {k for g in grouped for k in g}
    for group in grouped + [[k] for k in ok if k not in seen]:
        key = "copies:" + min(items[k].sha for k in group)[:24]
        for k in group:
            out[todo[k]] = replace(records[todo[k]], copies=key)
    return out


def copies_on_one_side(ds, train: list[Record], val: list[Record]) -> tuple[list[Record], list[Record], int]:
    """(train, val, images moved) with every copy group (``with_copy_groups`` run over both sides
    together) moved whole to one side, so no validation image has a copy in training. The side is
    the one holding most of the group; on a tie, the side of the member whose content hash is the
    group's key (the smallest). Only the images pick the side: no path, name or patient id.
    A moved copy joins the slice block of the copies it joins (the same picture, the same scan),
    so blocks stay on one side too. Records with a patient id carry no copy key: never moved."""
    from dataclasses import replace

    tagged = [(0, r) for r in train] + [(1, r) for r in val]
    count: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s, r in tagged:
        if r.copies:
            count[r.copies][s] += 1
    side = {k: int(n[1] > n[0]) for k, n in count.items() if n[0] and n[1]}
    for s, r in tagged:  # a tie: the side of the member that names the group
        if r.copies in side and count[r.copies][0] == count[r.copies][1] and _copies_key(ds, r) == r.copies:
            side[r.copies] = s
    block = {k: min((r.block for s, r in tagged if r.copies == k and s == side[k] and r.block), default=None)
             for k in side}
    out: tuple[list[Record], list[Record]] = ([], [])
    moved = 0
    for s, r in tagged:
        if r.copies in side and s != side[r.copies]:
            r, s, moved = replace(r, block=block[r.copies]), side[r.copies], moved + 1
        out[s].append(r)
    return out[0], out[1], moved


def _copies_key(ds, record: Record) -> str:
    """The key ``with_copy_groups`` gives an image that is the smallest content hash of its group."""
    return "copies:" + (_fingerprint(ds, record, record.split or TRAIN).sha or "")[:24]


# ---------------------------------------------------------------- human output

def format_report(report: dict, max_files: int = 10) -> str:
    lines = [f"Dataset {report['dataset']}  ({report.get('seconds', 0):.1f} s)", ""]
    lines += _table(["split"] + report["classes"] + ["total"],
                    [[s] + [report["counts"][s][c] for c in report["classes"]] + [report["counts"][s]["total"]]
                     for s in report["splits"]])
    lines.append("")
    for s in report["splits"]:
        sizes = ", ".join(f"{k} x{v}" for k, v in list(report["sizes"][s].items())[:5])
        modes = ", ".join(f"{k} x{v}" for k, v in report["modes"][s].items())
        lines.append(f"{s}: sizes {sizes or '-'}; modes {modes or '-'}")
    lines.append("")
    lines.append(f"Unreadable files: {len(report['unreadable'])}")
    lines += [f"  {u['path']}: {u['reason']}" for u in report["unreadable"][:max_files]]
    lines.append("")
    near = report["near_duplicate_method"]
    head = ["split", "exact groups", "redundant", "label conflicts"]
    if near:
        head += ["near pairs", "near groups", "near conflicts"]
    rows = []
    for s, w in report["within_split"].items():
        row = [s, w["exact_groups"], w["exact_redundant_images"], w["exact_label_conflicts"]]
        if near:
            row += [w["near_pairs"], w["near_groups"], w["near_label_conflicts"]]
        rows.append(row)
    lines.append("Duplicates within each split"
                 + (f" (near = pHash distance <= {near['max_distance']})" if near else ""))
    lines += _table(head, rows)
    pairs = [(s, "train", leak) for s, leak in report["leakage"].items()]
    pairs += [(*k.split(" -> "), leak) for k, leak in (report.get("leakage_between") or {}).items()]
    for s, ref, leak in pairs:
        lines += ["", f"Leakage {s} -> {ref}: {leak['leaked']} of {leak['images']} {s} images "
                  f"({leak['fraction']:.1%}) have a copy in {ref}: {leak['exact']} exact, {leak['near_only']} near; "
                  f"{leak['label_conflicts']} with a different label"]
        lines += _table(["class", "images", "exact", "near", "leaked"],
                        [[c, v["images"], v["exact"], v["near"], v["leaked"]] for c, v in leak["per_class"].items()])
        lines += [f"  {f}" for f in leak["files"][:max_files]]
        if len(leak["files"]) > max_files:
            lines.append(f"  ... and {len(leak['files']) - max_files} more (use --json for all)")
    lines += ["", _patient_text(report["patients"])]
    g = report.get("groups") or {}
    if g.get("available"):
        lines += ["", f"Groups ({g['kind']}, from manifest.csv); groups in two splits: {g['in_two_splits']}"]
        lines += _table(["split", "groups", "images", "min/group", "median", "max"],
                        [[s, v["groups"], v["images"]] + ([v["images_per_group"][k] for k in ("min", "median", "max")]
                                                         if v["images_per_group"] else ["-"] * 3)
                         for s, v in g["per_split"].items()])
    return "\n".join(lines)


def _patient_text(p: dict) -> str:
    if not p["available"]:
        return "Patients: no patient ids in this dataset's records (cannot check patient overlap)"
    lines = ["Patients (counts only)"]
    rows = [[s, c, v["images"], v["patients"]] for s, per in p["per_split"].items() for c, v in per.items()]
    lines += _table(["split", "class", "images", "patients"], rows)
    lines += [f"patients in both train and {s}: {n}" for s, n in p["shared_with_train"].items()]
    lines += [format_images_per_patient(s, r) for s, r in p["images_per_patient"].items()]
    ev = p.get("shared_id_evidence")
    if ev and ev.get("same_id_pairs"):
        lines.append(f"same-id train/test pairs: thumbnail correlation {ev['same_id_similarity_mean']:.3f} vs "
                     f"{ev['random_pair_similarity_mean']:.3f} for random pairs ({ev['compared']} compared)")
    return "\n".join(lines)


def _table(head: list, rows: list[list]) -> list[str]:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]
