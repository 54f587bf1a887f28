"""Intended use as data: who and what each task's model was trained on, and the refusals when a
DICOM header says the input lies outside it.

The entries live in the table of tasks (``privmed.bundle.tasks``): only what the dataset sources
state; ``None`` means the source does not say, and nothing is then checked.
Refusal reasons are categorical: they reach API answers, FHIR reports and the audit log, so they
never carry the patient's age, a date or an identifier.
"""
from __future__ import annotations

import copy
import math
import re

from privmed.bundle.schema import BundleMetadata
from privmed.bundle.tasks import TASKS

ADULT_YEARS = 18
PREFIX = "outside intended use: "

# task -> intended use, from the one table of tasks
TABLE = {t.task: t.intended_use for t in TASKS.values()}


def for_bundle(meta: BundleMetadata) -> dict | None:
    """The bundle's own ``intended_use`` block, else the table entry for its task (bundles made
    before the block existed are not rewritten: their metadata may be signed)."""
    if meta.intended_use is not None:
        return meta.intended_use.dump()
    entry = TABLE.get(meta.task or "")
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
