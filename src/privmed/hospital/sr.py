"""The result as a DICOM Basic Text Structured Report linked to the study it reads.

It copies the study's Patient and Study identification from the source instance (it must land in that
patient's study in the hospital's PACS), names the model, its epsilon, and says NOT FOR DIAGNOSTIC USE.
Built in memory; written nowhere but the PACS."""
from __future__ import annotations

import datetime as _dt

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DISCLAIMER = "NOT FOR DIAGNOSTIC USE: research software (privmed); a clinician must read the images."
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                  "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text(name: str, value: str, rel: str = "CONTAINS"):
    from pydicom.dataset import Dataset

    it = Dataset()
    it.RelationshipType, it.ValueType = rel, "TEXT"
    it.ConceptNameCodeSequence = [_code("121071", "DCM", name)] if name == "Finding" else \
        [_code("113011" if name == "Model" else "121106", "DCM", name)]
    it.TextValue = value[:1024]
    return it


def build_sr(source, results: list[dict], model_info: dict):
    """``source``: one instance of the study (pydicom Dataset); ``results``: per instance
    {sop_class, sop_instance, label, probabilities, abstain}; ``model_info``: Model.info()."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    for k in _PATIENT_STUDY:
        if k in source:
            setattr(ds, k, source.data_element(k).value)
    now = _dt.datetime.now()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 9001, 1
    ds.SeriesDescription = "privmed result (not for diagnostic use)"
    ds.Manufacturer = "privmed"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    eps = (model_info.get("privacy") or {}).get("epsilon")
    items = [_text("Comment", DISCLAIMER),
             _text("Model", f"{model_info.get('id')} (task {model_info.get('task')}, DP epsilon {eps})")]
    for r in results:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
        flag = " ABSTAINED" if r.get("abstain") else ""
        items.append(_text("Finding", f"image {r['sop_instance']}: {r['label']} ({probs}){flag}"))
    ds.ContentSequence = items
    evid = Dataset()
    evid.StudyInstanceUID = ds.get("StudyInstanceUID", "")
    refs = []
    for r in results:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = r["sop_class"], r["sop_instance"]
        refs.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = results[0].get("series", "") if results else ""
    series.ReferencedSOPSequence = refs
    evid.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evid]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def read_sr_text(ds) -> list[str]:
    return [str(it.TextValue) for it in ds.get("ContentSequence", []) if "TextValue" in it]
