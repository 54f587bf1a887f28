"""The one table of tasks: for each shipped dataset, the task its model answers, what images it
reads (modality words, DICOM Modality codes, the CT window), its classes and its intended use.

The intended-use entries state only what the dataset sources state (``../shared/datasets/README.md``
and the dataset publications); ``None`` means the source does not say, and nothing is then checked.
A dataset not in the table (a folder or ``.npz`` of the user's) is its own task, with nothing known.
"""
from __future__ import annotations

from dataclasses import dataclass

# X-ray DICOM Modality codes: computed radiography, digital X-ray, digital radiography, radiographic
XRAY = ("CR", "DX", "DR", "RG")
_CHEST = ["CHEST", "THORAX", "LUNG"]


@dataclass(frozen=True)
class Task:
    dataset: str
    task: str
    modality: str  # in words, for people
    dicom_modalities: tuple[str, ...]  # a DICOM of another Modality is refused (OT and absent pass)
    classes: tuple[str, ...]  # the sorted class folders of the shared dataset
    intended_use: dict
    default_window: str | None = None  # named HU window (data.dicom.CT_WINDOWS) for a CT DICOM without one


TASKS: dict[str, Task] = {t.dataset: t for t in (
    Task("chest_xray_pneumonia", "pneumonia", "chest X-ray", XRAY, ("normal", "pneumonia"), {
        "population": "paediatric patients aged 1-5 years, retrospective cohorts from one centre",
        "age_years": [1, 5],
        # the source says anterior-posterior; PA is the other frontal projection, lateral views are refused
        "views": ["AP", "PA"],
        "body_parts": _CHEST,
        "acquisition": "frontal chest radiographs (the source describes them as anterior-posterior), "
                       "taken in routine clinical care",
        "source": "Kermany, Zhang, Goldbaum et al. 2018, Mendeley Data (CC BY 4.0): Guangzhou Women and "
                  "Children's Medical Center, Guangzhou, China",
    }),
    Task("brain_tumor_mri", "brain_tumor", "brain MRI", ("MR",), ("glioma", "meningioma", "notumor", "pituitary"), {
        "population": "not stated by the source (a merge of the figshare, SARTAJ and Br35H collections)",
        "age_years": None,
        "views": None,
        "body_parts": ["BRAIN", "HEAD"],
        "acquisition": "brain MRI slices as 2-D images; sequences not stated by the source",
        "source": "Brain Tumor MRI Dataset, M. Nickparvar, Kaggle 2021 (figshare, SARTAJ and Br35H)",
    }),
    Task("covid19_xray", "covid19", "chest X-ray", XRAY, ("covid", "normal", "viral_pneumonia"), {
        "population": "not stated by the source",
        "age_years": None,
        "views": None,
        "body_parts": _CHEST,
        "acquisition": "chest X-ray images; projection not stated by the source",
        "source": "Covid-19 Image Dataset, P. Raikote, Kaggle 2020",
    }),
    Task("covid19_ct", "covid19_ct", "lung CT", ("CT",), ("covid", "non_covid"), {
        "population": "COVID-19 positive and negative patients from hospitals in Sao Paulo, Brazil "
                      "(about 120 patients)",
        "age_years": None,
        "views": None,
        "body_parts": _CHEST,
        "acquisition": "2-D lung CT slices (display images, no Hounsfield units)",
        "source": "SARS-CoV-2 CT-scan dataset, Soares et al. 2020",
    }, default_window="lung"),
)}
BY_TASK: dict[str, Task] = {t.task: t for t in TASKS.values()}


def task_of(dataset: str) -> str:
    """The task a dataset's model answers (the dataset's own name when it is not in the table)."""
    t = TASKS.get(dataset)
    return t.task if t else dataset


def for_task(task: str | None) -> Task | None:
    return BY_TASK.get(task or "")
