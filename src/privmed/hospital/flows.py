"""PACS flows: pull a study (de-identified before anything touches the disk), predict a study and
store the result back as a Structured Report, push local DICOM files."""
from __future__ import annotations

import io
from pathlib import Path

from privmed.deid.header import DeidError, Options
from privmed.hospital.dicomweb import DICOMwebClient, PACSError


def pull(url: str, study: str, out: Path, secret: bytes | None, options: Options | None = None,
         pixels: str = "ocr", keep_identifiers: bool = False) -> dict:
    """Retrieve a study; write de-identified copies to ``out`` (named by their new SOPInstanceUID).
    Identified copies are written only with ``keep_identifiers`` (then named by the original UID)."""
    from privmed.deid.files import deid_dataset
    from privmed.files import atomic_write_bytes

    if secret is None and not keep_identifiers:
        raise DeidError("pull writes de-identified copies: give --secret-file (or PRIVMED_DEID_SECRET); "
                        "--keep-identifiers writes the identified originals instead")
    with DICOMwebClient(url) as c:
        datasets = c.retrieve_study(study)
    if not datasets:
        raise PACSError("the study holds no instances")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed, boxes = [], 0, 0
    for ds in datasets:
        try:
            if not keep_identifiers:
                rep = deid_dataset(ds, secret, options or Options(), pixels)
                boxes += (rep.get("pixels") or {}).get("boxes_redacted", 0)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            name = f"{ds.SOPInstanceUID}.dcm"
            atomic_write_bytes(out / name, buf.getvalue(), private=True)  # owner-only
            written.append(name)
        except DeidError:
            failed += 1
    return {"instances": len(datasets), "written": len(written), "failed": failed, "boxes_redacted": boxes,
            "deidentified": not keep_identifiers, "out": str(out), "files": written}


def predict_study(url: str, study: str, bundle, push: bool = False, window: str | None = None) -> dict:
    """Predict every image instance of a study (in memory) and, with ``push``, store a Basic Text SR
    linked to it. Returns labels and UIDs only."""
    from privmed.errors import ImageReadError
    from privmed.hospital.sr import build_sr
    from privmed.inference import load_model

    model = load_model(bundle)
    info = model.info  # a property
    with DICOMwebClient(url) as c:
        datasets = c.retrieve_study(study)
        results, skipped = [], 0
        for ds in datasets:
            if "PixelData" not in ds:
                skipped += 1
                continue
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
            try:
                p = model.predict(buf.getvalue(), window=window)
            except ImageReadError:
                skipped += 1
                continue
            results.append({"sop_class": str(ds.SOPClassUID), "sop_instance": str(ds.SOPInstanceUID),
                            "series": str(ds.SeriesInstanceUID), "label": p.label,
                            "probabilities": p.probabilities, "abstain": p.abstain})
        if not results:
            raise PACSError(f"no image in the study could be read ({skipped} instance(s) skipped)")
        sr_uid = None
        if push:
            sr = build_sr(next(d for d in datasets if "PixelData" in d), results, info)
            c.store([sr])
            sr_uid = str(sr.SOPInstanceUID)
    return {"study": study, "predictions": results, "skipped": skipped, "model": info["id"],
            "epsilon": (info["privacy"] or {}).get("epsilon"), "sr_stored": sr_uid}


def push(url: str, files: list[Path]) -> dict:
    """STOW-RS local DICOM files (e.g. de-identified copies). All are read first: a bad file stops the push
    before anything is sent."""
    from privmed.deid.files import read_dicom_dataset

    if not files:
        raise DeidError("nothing to push")
    paths = []
    for f in files:
        f = Path(f)
        paths += sorted(p for p in f.rglob("*.dcm")) if f.is_dir() else [f]
    datasets = []
    for i, p in enumerate(paths):
        if not p.is_file():
            raise DeidError(f"file {i + 1} of {len(paths)} does not exist")
        datasets.append(read_dicom_dataset(p.read_bytes()))
    with DICOMwebClient(url) as c:
        c.store(datasets)
    return {"stored": len(datasets)}


