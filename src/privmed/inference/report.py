"""Reports shared by the REST API and the clinician app: JSON results and FHIR R4.

A FHIR ``DiagnosticReport`` carries one contained ``Observation`` per class (the calibrated
probability), a contained ``Device`` naming the model and its weights checksum, and the HL7
AI transparency label ``AIAST`` (artificial-intelligence asserted) in ``meta.security``. No patient
identifier is ever written: the report has no ``subject`` (the receiving system links it to the
study) and names the input only by its SHA-256.

No web framework is imported here.
"""
from __future__ import annotations

import datetime as dt
import uuid

import privmed.inference.site as site_calibration
from privmed.bundle.schema import NON_PRIVATE, BundleMetadata
from privmed.bundle.tasks import for_task
from privmed.errors import WrongModality
from privmed.inference.intended_use import describe, for_bundle
from privmed.privacy.ledger import statement

AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
         "display": "Artificial Intelligence asserted"}
ABSTAIN_MESSAGE = "The model abstains: refer this image to a radiologist."

_MODALITY_NAMES = {"CR": "computed radiography", "DX": "digital X-ray", "DR": "digital radiography",
                   "RG": "radiographic imaging", "MR": "MRI", "CT": "CT", "US": "ultrasound",
                   "NM": "nuclear medicine", "PT": "PET", "MG": "mammography", "XA": "angiography"}


def check_modality(image_meta: dict, meta: BundleMetadata) -> None:
    """Refuse a DICOM whose Modality tag says it is not what the model reads (MR to an X-ray model):
    the task's DICOM modalities (``bundle.tasks``); OT and an absent tag pass."""
    modality = (image_meta or {}).get("modality")
    task = for_task(meta.task)
    allowed = task.dicom_modalities if task else None
    if not modality or not allowed or modality in allowed or modality == "OT":
        return
    name = _MODALITY_NAMES.get(modality, modality)
    raise WrongModality(
        f"the DICOM Modality is {modality} ({name}) but this model reads {'/'.join(allowed)} images "
        f"({meta.task}); choose a model for this modality"
    )


def default_window(meta: BundleMetadata) -> str | None:
    """The named CT window a bundle's task was trained for (its metadata may say otherwise)."""
    task = for_task(meta.task)
    return (meta.dicom.default_window if meta.dicom else None) or (task.default_window if task else None)


def safe_image_meta(meta: dict) -> dict:
    """The technical image description that may be shown or stored: no patient-derived values."""
    keep = ("format", "width", "height", "mode", "modality", "photometric_interpretation", "bits_stored",
            "transfer_syntax", "voi", "inverted", "converted_to_gray_from", "window", "rescale", "frames", "frame",
            "source", "rectified")
    return {k: meta[k] for k in keep if k in (meta or {})}


LEDGER_KEYS = ("mechanism", "epsilon", "epsilon_target", "epsilon_train", "epsilon_validation", "delta",
               "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "epochs", "accountant", "unit_of_privacy",
               "neighbouring_relation", "n_units_train_dp", "n_units_validation_dp", "randomness", "releases",
               "composition", "assumptions", "class_weights", "opacus_version")


def _block(block) -> dict | None:
    return block.dump() if block is not None else None


def model_card(meta: BundleMetadata, name: str | None = None, site: dict | None = None) -> dict:
    """What a clinician or auditor needs to judge a bundle; the full privacy ledger included, and the
    site calibration in use (``site``: ``inference.site.load``'s document) with its own guarantee."""
    ledger = _block(meta.privacy) or {}
    test = _block(meta.test_metrics()) or {}
    ood = meta.ood.model_dump(mode="json", exclude_unset=True, exclude={"means", "components", "variances"}) \
        if meta.ood else None
    return {
        "id": meta.model_id or name, "name": name, "task": meta.task,
        "dataset": meta.dataset, "classes": meta.classes,
        "architecture": meta.model.name, "backbone": _block(meta.backbone),
        "version": meta.weights_sha256, "created_at": meta.created_at,
        "input": _block(meta.input), "preprocessing": _block(meta.preprocessing),
        "privacy": {k: ledger[k] for k in LEDGER_KEYS if k in ledger} or {"mechanism": NON_PRIVATE},
        "privacy_statement": statement(meta.raw),
        "calibration": _block(meta.calibration) or {},
        "decision": _block(meta.decision),
        "ood": ood or None,
        "test_metrics": {k: v for k, v in test.items() if isinstance(v, (int, float, str))},
        "versions": _block(meta.versions),
        "intended_use": for_bundle(meta),  # population and acquisition; a DICOM outside it is refused
        "site_calibration": site_calibration.summary(site) if site else None,
        "use": "research decision support only; not a medical device. Trained on public research "
               "datasets; abstains (refer to a radiologist) on poor-quality or unfamiliar images.",
    }


def result_dict(pred, *, filename: str | None, input_sha256: str, image_meta: dict | None = None,
                heatmap: bool = False) -> dict:
    d = pred.to_dict(heatmap=heatmap, model=False)
    if not heatmap:
        d.pop("heatmap", None)
    out = {"filename": filename, "input_sha256": input_sha256, **d,
           "image": safe_image_meta(image_meta or {})}
    if pred.abstain:
        out["message"] = ABSTAIN_MESSAGE
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def diagnostic_report(result: dict, card: dict, issued: str | None = None) -> dict:
    """FHIR R4 DiagnosticReport for one ``result_dict``; Observations and Device contained."""
    issued = issued or _now()
    security = [dict(AIAST)]
    device = {
        "resourceType": "Device", "id": "model",
        "deviceName": [{"name": str(card.get("id")), "type": "model-name"}],
        "version": [{"type": {"text": "weights sha256"}, "value": str(card.get("version"))}],
        "type": {"text": "AI image classifier (differentially private)"},
        "note": [{"text": _privacy_note(card)}, {"text": "intended use: " + describe(card.get("intended_use"))}],
    }
    observations, refs = [], []
    for i, (cls, p) in enumerate((result.get("probabilities") or {}).items()):
        oid = f"obs-{i}"
        observations.append({
            "resourceType": "Observation", "id": oid, "meta": {"security": security},
            "status": "preliminary" if result.get("abstain") else "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "imaging", "display": "Imaging"}]}],
            "code": {"text": f"probability of {cls}"},
            "valueQuantity": {"value": round(float(p), 6), "unit": "probability",
                              "system": "http://unitsofmeasure.org", "code": "1"},
            "device": {"reference": "#model"},
            "issued": issued,
        })
        refs.append({"reference": f"#{oid}"})
    if result.get("abstain"):
        conclusion = ABSTAIN_MESSAGE + " Reasons: " + "; ".join(result.get("abstain_reasons") or [])
    else:
        p = (result.get("probabilities") or {}).get(result.get("label"), 0.0)
        conclusion = f"AI finding: {result.get('label')} (calibrated probability {p:.2f}). Not a diagnosis."
    report = {
        "resourceType": "DiagnosticReport", "id": str(uuid.uuid4()),
        "meta": {"security": security},
        "identifier": [{"system": "urn:privmed:input-sha256", "value": result.get("input_sha256")}],
        "status": "preliminary" if result.get("abstain") else "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"text": f"AI image classification: {card.get('task')}"},
        "issued": issued, "effectiveDateTime": issued,
        "performer": [{"reference": "#model", "display": str(card.get("id"))}],
        "contained": [device, *observations],
        "result": refs,
        "conclusion": conclusion,
    }
    if not result.get("abstain") and result.get("label") is not None:
        report["conclusionCode"] = [{"text": str(result["label"])}]
    return report


def fhir_bundle(reports: list[dict]) -> dict:
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection", "timestamp": _now(),
            "meta": {"security": [dict(AIAST)]}, "entry": [{"resource": r} for r in reports]}


def fhir(results: list[dict], card: dict) -> dict:
    """One DiagnosticReport for one image, a collection Bundle of them for several."""
    issued = _now()
    reports = [diagnostic_report(r, card, issued) for r in results]
    return reports[0] if len(reports) == 1 else fhir_bundle(reports)


def _privacy_note(card: dict) -> str:
    p = card.get("privacy") or {}
    if p.get("epsilon") is None:
        return f"privacy: {p.get('mechanism', 'none')}. {card.get('privacy_statement', '')}".strip()
    return (f"{card.get('privacy_statement', '')} [{p.get('mechanism')}; epsilon={p.get('epsilon')}, "
            f"delta={p.get('delta')}, unit={p.get('unit_of_privacy')}, accountant={p.get('accountant')}]")
