"""DICOM header de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The attribute table (which tag gets D, Z, X, U or a combination) is not written by hand: it is
the DICOM 2026c Table E.1-1 as shipped by the maintained ``dicom-anonymizer`` package
(``dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c``). On top of it:

- private tags and overlay/curve groups (50xx, 60xx) are removed (profile rule; overlays can hold text);
- UIDs are remapped with HMAC-SHA256 under a site secret to ``2.25.<int>``, so every file of a study
  (and every study of a run, and later runs with the same secret) keeps its links;
- PatientID and PatientName become a keyed pseudonym ``PM<16 hex>``: one patient stays one patient
  within a secret, and nobody without the secret can link back or across secrets;
- options (PS3.15 E.3): Retain Longitudinal Temporal Information with Modified Dates (``dates="shift"``:
  every DA/DT shifted by a per-patient keyed offset, intervals kept) and Clean Descriptors
  (``clean_descriptors=True``: free-text descriptions kept with every identifying value cut out);
- PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence (CID 7050).

Identifying values never appear in what this module returns or raises: the report holds counts only.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from privmed.config import settings
from privmed.errors import PrivmedError

TABLE_SOURCE = "dicom-anonymizer dicomfields_2026c (DICOM PS3.15 2026c Table E.1-1)"
DATE_MODES = ("remove", "shift")

# CID 7050 codes (PS3.16) for DeidentificationMethodCodeSequence
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
CODE_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")

# Table E.1-1 attributes whose Clean Descriptors column is C: kept, cleaned, under that option.
DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ImageComments", "AcquisitionComments",
               "AdditionalPatientHistory", "PerformedProcedureStepDescription",
               "RequestedProcedureDescription", "ProtocolName", "DerivationDescription",
               "ReasonForStudy", "AcquisitionDeviceProcessingDescription")

_TAG_PSEUDONYM = {0x00100020, 0x00100010}  # PatientID, PatientName


class DeidError(PrivmedError):
    """A file that cannot be de-identified (no identifying value is ever part of the message)."""


class SecretError(DeidError):
    pass


def _action_table() -> dict[int, str]:
    """tag (as int) -> action letter, from the packaged PS3.15 table.

    Combined actions take the safe choice that keeps the file valid: X/Z, X/Z/D -> Z (empty, allowed for
    type 2/3), Z/D, X/D -> D (a dummy, required for type 1), X/Z/U* -> U (the UID-typed ones)."""
    try:
        from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as t
    except ModuleNotFoundError as e:  # pragma: no cover - declared in the 'hospital' extra
        raise DeidError("de-identification needs the 'dicom-anonymizer' package: "
                        "pip install 'privmed[hospital]'") from e
    out: dict[int, str] = {}
    for name, act in (("X_TAGS", "X"), ("Z_TAGS", "Z"), ("D_TAGS", "D"), ("U_TAGS", "U"),
                      ("X_Z_TAGS", "Z"), ("X_Z_D_TAGS", "Z"), ("Z_D_TAGS", "D"), ("X_D_TAGS", "D"),
                      ("X_Z_U_STAR_TAGS", "U")):
        for entry in getattr(t, name):
            if len(entry) == 2:  # 4-tuples are the masked 50xx/60xx groups, removed whole below
                out[(entry[0] << 16) | entry[1]] = act
    return out


_TABLE: dict[int, str] | None = None


def action_table() -> dict[int, str]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _action_table()
    return _TABLE


# --- the site secret -----------------------------------------------------------------------------

def load_secret(path: str | Path | None, out_dir: str | Path | None = None, create: bool = True) -> bytes:
    """The HMAC key: ``PRIVMED_DEID_SECRET`` (hex or text), else the file ``path`` (created 0600 with
    32 random bytes when missing and ``create``). Refused when the file lies inside ``out_dir``: whoever
    receives the de-identified data must not receive the key that links it back."""
    env = settings().deid_secret
    if path is None and env:
        return env.get_secret_value().encode()
    if path is None:
        raise SecretError("de-identification needs a site secret: --secret-file FILE (created if missing, keep "
                          "it off the output) or PRIVMED_DEID_SECRET")
    p = Path(path).expanduser().resolve()
    if out_dir is not None:
        o = Path(out_dir).expanduser().resolve()
        if p == o or o in p.parents:
            raise SecretError(f"the secret file {p} is inside the output folder {o}; keep the key apart from the "
                              "de-identified data")
    if not p.exists():
        if not create:
            raise SecretError(f"secret file {p} not found")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32).hex().encode())
    key = p.read_bytes().strip()
    if len(key) < 16:
        raise SecretError(f"secret file {p} holds fewer than 16 bytes; use a long random key")
    return key


def _mac(secret: bytes, kind: str, value: str) -> bytes:
    return hmac.new(secret, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()


def pseudonym(secret: bytes, patient_id: str) -> str:
    """Keyed pseudonym: same patient + same secret -> same value; nothing else links."""
    return "PM" + _mac(secret, "patient", patient_id.strip()).hex()[:16].upper()


def remap_uid(secret: bytes, uid: str) -> str:
    """A fresh UID under the 2.25 (UUID-derived) root; the same input UID always maps the same way."""
    return "2.25." + str(int.from_bytes(_mac(secret, "uid", uid.strip())[:16], "big"))


def date_offset_days(secret: bytes, patient_id: str) -> int:
    """Per-patient shift, 30 to 395 days back: intervals within a patient are kept."""
    return -(30 + int.from_bytes(_mac(secret, "date", patient_id.strip())[:4], "big") % 366)


# --- the de-identification ---------------------------------------------------------------------------

@dataclass
class Options:
    dates: str = "remove"            # "remove" (basic profile) or "shift" (modified dates option)
    clean_descriptors: bool = False  # keep descriptions, cut out identifying values
    pixels_cleaned: bool = False     # set by the caller after burned-in text was redacted


@dataclass
class Report:
    """What was done to one file: counts by action, never a value."""
    removed: int = 0
    emptied: int = 0
    dummied: int = 0
    uids_remapped: int = 0
    private_removed: int = 0
    dates_shifted: int = 0
    descriptors_cleaned: int = 0
    by_keyword: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
          "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED",
          "DA": "19000101", "TM": "000000.00", "DT": "19000101000000", "AS": "000D", "IS": "0", "DS": "0",
          "UR": "", "UI": None}
_NUMERIC = ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV")


def identifying_values(ds, words: bool = True) -> list[str]:
    """Every string in a table attribute that the profile removes or replaces (names, ids, dates,
    addresses), split into words too: what must not survive anywhere. Used by Clean Descriptors and
    by the tests' leak check."""
    table = action_table()
    descr = {_tag_of(k) for k in DESCRIPTORS}  # what Clean Descriptors cleans is not itself the evidence
    vals: set[str] = set()

    def visit(d):
        for el in d:
            if el.VR == "SQ":
                for item in el.value or []:
                    visit(item)
                continue
            if int(el.tag) in descr:
                continue
            if el.tag.is_private or (int(el.tag) in table and table[int(el.tag)] != "U"):
                for v in (el.value if el.VM > 1 else [el.value]):
                    if isinstance(v, (str, bytes)) or v.__class__.__name__ == "PersonName":
                        s = v.decode(errors="ignore") if isinstance(v, bytes) else str(v)
                        s = s.strip("\x00 ")
                        if len(s) >= 3:
                            vals.add(s)
                            if words:
                                vals.update(w for w in re.split(r"[\^\s,=/\\-]+", s) if len(w) >= 3)
    visit(ds)
    return sorted(vals, key=len, reverse=True)


def deidentify(ds, secret: bytes, options: Options | None = None) -> Report:
    """De-identify a pydicom Dataset in place; return counts. Raises ``DeidError``."""
    opt = options or Options()
    if opt.dates not in DATE_MODES:
        raise DeidError(f"dates must be one of {', '.join(DATE_MODES)}, got {opt.dates!r}")
    table = action_table()
    pid = str(ds.get("PatientID", "") or "")
    run = _Pass(root=ds, secret=secret, opt=opt, table=table, pid=pid,
                offset=date_offset_days(secret, pid) if opt.dates == "shift" else 0,
                leak_words=identifying_values(ds) if opt.clean_descriptors else [],
                keep_descr={_tag_of(k) for k in DESCRIPTORS} if opt.clean_descriptors else set())
    run.visit(ds)
    if hasattr(ds, "file_meta") and ds.file_meta is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or remap_uid(
            secret, ds.file_meta.MediaStorageSOPInstanceUID)
    _record(ds, opt)
    return run.rep


@dataclass
class _Pass:
    """One de-identification pass: what each element's action needs, and the counts so far."""
    root: object  # the top-level dataset (the patient's pseudonym replaces its own attributes only)
    secret: bytes
    opt: Options
    table: dict
    pid: str
    offset: int
    leak_words: list
    keep_descr: set
    rep: Report = field(default_factory=Report)

    def count(self, kw: str, what: str) -> None:
        setattr(self.rep, what, getattr(self.rep, what) + 1)
        self.rep.by_keyword[kw or "private"] = self.rep.by_keyword.get(kw or "private", 0) + 1

    def visit(self, d) -> None:
        for el in list(d):
            if not self._before_table(d, el):
                self._by_table(d, el, self.table.get(int(el.tag)))

    def _items(self, el) -> None:
        for item in el.value or []:
            self.visit(item)

    def _before_table(self, d, el) -> bool:
        """Private tags, curves and overlays, the pseudonym, descriptors and shifted dates come first;
        True when the element was handled here."""
        tag = int(el.tag)
        if el.tag.is_private:
            del d[el.tag]
            self.count("", "private_removed")
        elif (tag >> 16) & 0xFF00 in (0x5000, 0x6000):  # curves and overlays
            del d[el.tag]
            self.count(el.keyword or "overlay", "removed")
        elif tag in _TAG_PSEUDONYM and d is self.root:
            el.value = pseudonym(self.secret, self.pid)
            self.count(el.keyword, "dummied")
        elif tag in self.keep_descr:
            cleaned = _clean_text(str(el.value or ""), self.leak_words)
            if cleaned != el.value:
                el.value = cleaned
            self.count(el.keyword, "descriptors_cleaned")
        elif (self.opt.dates == "shift" and el.VR in ("DA", "DT") and self.table.get(tag) in ("D", "Z", "X")
              and el.value):
            el.value = _shift(el.value, el.VR, self.offset)
            self.count(el.keyword, "dates_shifted")
        else:
            return False
        return True

    def _by_table(self, d, el, act: str | None) -> None:
        if act is None:
            if el.VR == "UI" and el.value and _is_instance_uid(el.keyword):
                el.value = _remap(self.secret, el.value)
                self.count(el.keyword, "uids_remapped")
            elif el.VR == "SQ":
                self._items(el)
        elif act == "X":
            del d[el.tag]
            self.count(el.keyword, "removed")
        elif act == "Z" or (act == "D" and el.VR in ("OB", "OW", "UN")):
            el.value = [] if el.VR == "SQ" else (b"" if el.VR in ("OB", "OW", "UN") else
                                                 (None if el.VR in _NUMERIC else ""))
            self.count(el.keyword, "emptied")
        elif act == "U":
            self._keep(el)
        elif act == "D":
            self._dummy(el)

    def _keep(self, el) -> None:
        """U: a UID replaced consistently; a sequence's items cleaned, any other value emptied."""
        if el.VR == "UI" and el.value:
            el.value = _remap(self.secret, el.value)
            self.count(el.keyword, "uids_remapped")
        elif el.VR == "SQ":
            self._items(el)
        else:
            el.value = ""
            self.count(el.keyword, "emptied")

    def _dummy(self, el) -> None:
        """D: a dummy value of the same VR."""
        if el.VR == "SQ":  # a dummy sequence: keep items, each cleaned by the same table
            self._items(el)
            self.count(el.keyword, "dummied")
        elif el.VR == "UI":
            el.value = _remap(self.secret, el.value) if el.value else el.value
            self.count(el.keyword, "uids_remapped")
        else:
            el.value = 0 if el.VR in _NUMERIC else _DUMMY.get(el.VR, "ANONYMIZED")
            self.count(el.keyword, "dummied")


def _is_instance_uid(keyword: str) -> bool:
    # UIDs that identify instances (not classes/syntaxes) but are missing from the table; class UIDs
    # (SOPClassUID, TransferSyntaxUID, CodingSchemeUID...) must stay as they are.
    return keyword.endswith("InstanceUID") and "Class" not in keyword


def _remap(secret: bytes, value):
    if isinstance(value, (list, tuple)) or getattr(value, "__iter__", None) and not isinstance(value, str):
        return [remap_uid(secret, str(v)) for v in value]
    return remap_uid(secret, str(value))


def _tag_of(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return int(tag_for_keyword(keyword))


def _clean_text(text: str, words: list[str]) -> str:
    for w in words:
        text = re.sub(re.escape(w), "***", text, flags=re.IGNORECASE)
    text = re.sub(r"\b(19|20)\d{2}[-/.]?\d{2}[-/.]?\d{2}\b", "***", text)  # dates in free text
    return text


def _shift(value, vr: str, days: int):
    def one(v: str) -> str:
        v = str(v).strip()
        if len(v) < 8 or not v[:8].isdigit():
            return ""  # unparseable: empty rather than leak
        try:
            d = _dt.date(int(v[:4]), int(v[4:6]), int(v[6:8])) + _dt.timedelta(days=days)
        except ValueError:
            return ""
        return d.strftime("%Y%m%d") + (v[8:] if vr == "DT" else "")
    if isinstance(value, str):
        return one(value)
    return [one(v) for v in value]


def _record(ds, opt: Options) -> None:
    from pydicom.dataset import Dataset

    codes = [CODE_BASIC]
    names = ["PS3.15 Basic Application Level Confidentiality Profile"]
    if opt.dates == "shift":
        codes.append(CODE_MODIFIED_DATES)
        names.append("Modified Dates")
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
    if opt.clean_descriptors:
        codes.append(CODE_CLEAN_DESCRIPTORS)
        names.append("Clean Descriptors")
    if opt.pixels_cleaned:
        codes.append(CODE_CLEAN_PIXELS)
        names.append("Clean Pixel Data")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ("privmed deid: " + ", ".join(names))[:64]
    seq = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        seq.append(item)
    ds.DeidentificationMethodCodeSequence = seq
