"""Test corpus: real DICOM files (pydicom's CT_small, pydicom-data's RG1_UNCI chest radiograph) with a
distinct fake identifier put into every attribute that PS3.15 Table E.1-1 names, into a private block,
into a nested sequence, and optionally burned into the pixels."""
from __future__ import annotations

import datetime as dt
import random

import numpy as np


def real_dicom(name: str = "RG1_UNCI.dcm"):
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(name))


def fill_phi(ds, seed: int = 0) -> list[str]:
    """Put a unique value into every profile attribute whose VR allows one; return the strings that must
    not survive anywhere in the output (text tokens, dates, UIDs)."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataset import Dataset

    from privmed.deid.header import action_table

    secrets: list[str] = []
    for i, tag in enumerate(sorted(action_table())):
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if " or " in vr or (tag >> 16) in (0x0000, 0x0002) or tag in (0x7FE00010,):
            continue
        tok = f"PHI{seed}{i:04d}Z"
        date = (dt.date(1950, 1, 1) + dt.timedelta(days=i * 37 + seed)).strftime("%Y%m%d")
        uid = f"1.2.826.0.1.3680043.9.7777.{seed}.{i}"
        if vr in ("PN", "LO", "LT", "ST", "UT", "UC", "SH", "CS", "AE"):
            val = tok
            secrets.append(tok)
        elif vr == "DA":
            val = date
            secrets.append(date)
        elif vr == "DT":
            val = date + "101112"
            secrets.append(date)
        elif vr == "UI":
            val = uid
            secrets.append(uid)
        elif vr == "SQ":
            item = Dataset()
            item.PatientName = tok
            item.OperatorsName = tok + "O"
            val = [item]
            secrets += [tok, tok + "O"]
        elif vr in ("OB", "UN"):
            val = tok.encode() + b"\x00" * (len(tok) % 2)
            secrets.append(tok)
        elif vr == "TM":
            val = "101112"
        elif vr == "AS":
            val = "045Y"
        elif vr in ("IS",):
            val = str(90000 + i)
        elif vr == "DS":
            val = "71.5"
        elif vr in ("US", "UL", "SS", "SL", "FL", "FD"):
            val = 7
        elif vr == "UR":
            val = f"http://phi{i}.example"
            secrets.append(f"phi{i}.example")
        else:
            continue
        try:
            ds.add_new(tag, vr, val)
        except Exception:
            continue
    # the patient's own name/id, a private block and a nested sequence not named by the profile
    ds.PatientName, ds.PatientID = f"DOE{seed}^JANE", f"MRN{seed}55501"
    secrets += [f"DOE{seed}", f"MRN{seed}55501"]
    block = ds.private_block(0x0029, "ACME HOSPITAL", create=True)
    block.add_new(0x10, "LO", f"PRIVPHI{seed}X")
    secrets.append(f"PRIVPHI{seed}X")
    region = Dataset()
    region.AccessionNumber = f"ACCN{seed}77"
    region.InstitutionName = f"INSTPHI{seed}"
    ds.AnatomicRegionSequence = [region]
    secrets += [f"ACCN{seed}77", f"INSTPHI{seed}"]
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    # a few attributes share a value slot (set twice); keep the values really in the file
    return sorted(s for s in set(secrets) if s.encode() in data)


def burn_into_dicom(ds, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Draw fake identifiers into the pixel data with a real font (bright on MONOCHROME2, the
    displayed-bright value on MONOCHROME1); returns (string, ink mask) pairs."""
    from privmed.deid.ocr import to_uint8
    from support.burned_in import burn

    arr = ds.pixel_array
    b = burn(to_uint8(arr), random.Random(seed), n=3)
    lo, hi = int(arr.min()), int(arr.max())
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    out = arr.copy()
    for m in b.masks:  # bright or dark on display, as burn() chose for the local background
        bright = b.image[m].mean() > 127
        out[m] = (lo if inverted else hi) if bright else (hi if inverted else lo)
    ds.PixelData = out.astype(arr.dtype).tobytes()
    ds.BurnedInAnnotation = "YES"
    return list(zip(b.strings, b.masks))
