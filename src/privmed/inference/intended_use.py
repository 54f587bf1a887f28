"""Intended use as data: who and what each task's model was trained on, and the refusals when a
DICOM header says the input lies outside it.

The table states only what the dataset sources state (``../shared/datasets/README.md`` and the
dataset publications); ``None`` means the source does not say, and nothing is then checked.
Refusal reasons are categorical: they reach API answers, FHIR reports and the audit log, so they
never carry the patient's age, a date or an identifier.
"""
from __future__ import annotations

import copy
import math
import re

ADULT_YEARS = 18
PREFIX = "outside intended use: "
_CHEST = ["CHEST", "THORAX", "LUNG"]

TABLE = {
    "pneumonia": {
        "population": "paediatric patients aged 1-5 years, retrospective cohorts from one centre",
        "age_years": [1, 5],
        # the source says anterior-posterior; PA is the other frontal projection, lateral views are refused
        "views": ["AP", "PA"],
        "body_parts": _CHEST,
        "acquisition": "frontal chest radiographs (the source describes them as anterior-posterior), "
                       "taken in routine clinical care",
        "source": "Kermany, Zhang, Goldbaum et al. 2018, Mendeley Data (CC BY 4.0): Guangzhou Women and "
                  "Children's Medical Center, Guangzhou, China",
    },
    "brain_tumor": {
        "population": "not stated by the source (a merge of the figshare, SARTAJ and Br35H collections)",
        "age_years": None,
        "views": None,
        "body_parts": ["BRAIN", "HEAD"],
        "acquisition": "brain MRI slices as 2-D images; sequences not stated by the source",
        "source": "Brain Tumor MRI Dataset, M. Nickparvar, Kaggle 2021 (figshare, SARTAJ and Br35H)",
    },
    "covid19": {
        "population": "not stated by the source",
        "age_years": None,
        "views": None,
        "body_parts": _CHEST,
        "acquisition": "chest X-ray images; projection not stated by the source",
        "source": "Covid-19 Image Dataset, P. Raikote, Kaggle 2020",
    },
    "covid19_ct": {
        "population": "COVID-19 positive and negative patients from hospitals in Sao Paulo, Brazil "
                      "(about 120 patients)",
        "age_years": None,
        "views": None,
        "body_parts": _CHEST,
        "acquisition": "2-D lung CT slices (display images, no Hounsfield units)",
        "source": "SARS-CoV-2 CT-scan dataset, Soares et al. 2020",
    },
}


def for_bundle(metadata: dict) -> dict | None:
    """The bundle's own ``intended_use`` block, else the table entry for its task (bundles made
    before the block existed are not rewritten: their metadata may be signed)."""
    m = metadata or {}
    if isinstance(m.get("intended_use"), dict):
        return copy.deepcopy(m["intended_use"])
    entry = TABLE.get(m.get("task") or "")
    return copy.deepcopy(entry) if entry else None


def describe(intended: dict | None) -> str:
    """One line for a face: population; acquisition (source)."""
    if not intended:
        return "intended use not stated"
    return f"{intended.get('population')}; {intended.get('acquisition')} (source: {intended.get('source')})"


def check(image_meta: dict | None, intended: dict | None) -> list[str]:
    """Refusal reasons from the DICOM header facts (``meta["header"]``); none for other input."""
    h = (image_meta or {}).get("header") or {}
    if not intended or not h:
        return []
    found = [_age(h.get("age_years"), intended), _allowed("ViewPosition", h.get("view"), intended.get("views")),
             _allowed("BodyPartExamined", h.get("body_part"), intended.get("body_parts"))]
    return [PREFIX + r for r in found if r]


def _age(age, intended: dict) -> str | None:
    span = intended.get("age_years")
    if age is None or not span or not isinstance(age, (int, float)) or not math.isfinite(age):
        return None
    lo, hi = span
    years = math.floor(age)  # completed years: "aged 1-5" includes a child of 5 years 11 months
    if lo <= years <= hi:
        return None
    if years > hi:
        who = (f"an adult patient ({ADULT_YEARS} years or older)" if years >= ADULT_YEARS
               else "a patient older than the intended ages")
    else:
        who = "a patient younger than the intended ages"
    return f"the DICOM header gives {who}; this model is for {intended.get('population')}"


def _allowed(tag: str, value, allowed) -> str | None:
    if not value or not allowed or str(value).strip().upper() in {a.upper() for a in allowed}:
        return None
    return f"the DICOM {tag} is {_code(value)}; this model reads {'/'.join(allowed)} images only"


def _code(value) -> str:
    """A DICOM code string as it is; anything else (free text may hold PHI) is not echoed."""
    v = str(value).strip().upper()
    return v if re.fullmatch(r"[A-Z0-9 _]{1,16}", v) else "an unrecognised value"
