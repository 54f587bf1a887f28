"""The bundle's ``metadata.json`` as typed models (pydantic v2).

Every block keeps keys it does not name (``extra="allow"``): metadata written by older or newer
code parses without losing anything, and ``tests/test_bundle_schema.py`` checks that parsing and
dumping every committed bundle gives back the same JSON. Numbers that the writers store either as
int or as float are typed ``Real`` so that a dump never turns ``2`` into ``2.0``.

Fields are declared in the order the writers put them, so a block dumped for a view keeps the key
order the file has.
"""
from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from privmed.errors import BundleError

Real = Union[int, float]
NON_PRIVATE = "none (non-private)"


class Block(BaseModel):
    """One block of the metadata: typed where named, anything else kept as it was written."""
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    def dump(self) -> dict:
        """The block as JSON values, only the keys that were written (no defaults added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class IntendedUse(Block):
    population: str | None = None
    age_years: list[Real] | None = None
    views: list[str] | None = None
    body_parts: list[str] | None = None
    acquisition: str | None = None
    source: str | None = None


class ModelArch(Block):
    name: str
    kwargs: dict[str, Any] = {}


class InputSpec(Block):
    channels: int = 1
    height: int
    width: int
    range: list[Real] = [0, 1]
    color: str = "grayscale"


class Preprocessing(Block):
    size: int = 224
    clahe: bool = False
    denoise: bool = False


class Release(Block):
    """One DP release: what the accountant needs to recompute epsilon (``privacy.ledger.recompute``)."""
    release: str | None = None
    on: str | None = None
    noise_multiplier: Real
    sample_rate: Real
    steps: int
    sensitivity: Real | None = None


class ClassWeights(Block):
    weights: list[Real] | None = None
    dp_counts: list[Real] | None = None
    applied: str | None = None


class BudgetLimit(Block):
    """The data owner's limit on the dataset (``privmed privacy budget``), as the registry records it."""
    epsilon: Real
    delta: Real
    at: str | None = None


class DatasetBudget(Block):
    epsilon_all_runs: Real | None = None
    delta: Real | None = None
    runs: int | None = None
    limit: BudgetLimit | None = None
    composition: str | None = None
    counted_since: str | None = None


class Federation(Block):
    """``privacy.federation``: who took part and how updates were combined."""
    hospitals: int | None = None
    participants: list[int] = []
    rounds: int | None = None
    aggregation: str | None = None
    secure_aggregation: dict[str, Any] | None = None
    framework: str | None = None


class PrivacyLedger(Block):
    """Every number needed to judge and recompute the guarantee; ``epsilon`` None: non-private."""
    mechanism: str = NON_PRIVATE
    unit_of_privacy: str | None = None
    epsilon: Real | None = None
    epsilon_train: Real | None = None
    epsilon_target: Real | None = None
    delta: Real | None = None
    noise_multiplier: Real | None = None
    max_grad_norm: Real | None = None
    sample_rate: Real | None = None
    steps: int | None = None
    epochs: int | None = None
    neighbouring_relation: str | None = None
    n_units_train_dp: Real | None = None
    accountant: str | None = None
    opacus_version: str | None = None
    randomness: str | None = None
    releases: list[Release] = []
    assumptions: str | None = None
    dp_class_counts: list[Real] | None = None
    class_weights: ClassWeights | None = None
    epsilon_validation: Real | None = None
    n_units_validation_dp: Real | None = None
    composition: str | None = None
    dataset_budget: DatasetBudget | None = None
    public_data: dict[str, Any] | None = None
    federation: Federation | None = None
    hospitals: list[dict[str, Any]] | None = None

    @property
    def private(self) -> bool:
        return self.epsilon is not None


class Calibration(Block):
    method: str = "none"
    temperature: Real = 1.0
    fitted_on: str | None = None
    class_prior: list[Real] | None = None
    note: str | None = None


class Decision(Block):
    """Two classes: the DP-chosen operating point on the positive class's probability."""
    positive_class_index: int = 1
    threshold_probability: Real
    threshold_margin: Real | None = None
    chosen_by: str | None = None


class OOD(Block):
    method: str
    embedding_dims: int | None = None
    columns: list[int] | None = None
    target_refusal: Real | None = None
    threshold: Real
    means: list[list[Real]] | None = None
    fitted_on: str | None = None
    score: str | None = None
    camera_threshold: Real | None = None
    camera_fitted_on: str | None = None


class Backbone(Block):
    name: str | None = None
    package: str | None = None
    sha256: str | None = None
    code_version: str | None = None


class Versions(Block):
    privmed: str | None = None
    torch: str | None = None
    opacus: str | None = None
    monai: str | None = None
    python: str | None = None


class Metrics(Block):
    """One ``metrics[<dataset>/<split>]`` entry (``privmed evaluate --record``); the model card shows
    its numbers and words in this order."""
    n: int | None = None
    accuracy: Real | None = None
    precision_macro: Real | None = None
    recall_macro: Real | None = None
    f1_macro: Real | None = None
    auc: Real | None = None
    ece: Real | None = None
    per_class: dict[str, Any] | None = None
    confusion_matrix: list[list[int]] | None = None
    majority_baseline_accuracy: Real | None = None
    sensitivity: Real | None = None
    specificity: Real | None = None
    model_id: str | None = None
    dataset: str | None = None
    split: str | None = None
    test_images: Any = None


class Training(Block):
    """The ``TrainConfig`` the bundle was trained with, as written (``config.TrainConfig``)."""
    dataset: str | None = None
    model: str | None = None
    epochs: int | None = None
    seed: int | None = None
    privacy: dict[str, Any] | None = None


class FederatedRun(Block):
    """The ``FederatedConfig`` of a federated bundle, its training config left out."""
    hospitals: int | None = None
    rounds: int | None = None
    engine: str | None = None
    partition: str | None = None


class Onnx(Block):
    """``privmed onnx``: the exported graph, checked against the weights and timed."""
    file: str = "model.onnx"
    sha256: str | None = None
    weights_sha256: str | None = None
    faster: bool = False


class Dicom(Block):
    default_window: str | None = None


class Abstain(Block):
    min_confidence: Real = 0.0


class BundleMetadata(Block):
    """``metadata.json``. ``raw`` is the document as read (or as it will be written): the writers
    merge blocks into it, the views read the typed fields."""
    model_id: str | None = None
    task: str | None = None
    dataset: str | None = None
    classes: list[str]
    intended_use: IntendedUse | None = None
    model: ModelArch
    input: InputSpec | None = None
    preprocessing: Preprocessing | None = None
    training: Training | None = None
    federated: FederatedRun | None = None
    released_weights: str | None = None
    privacy: PrivacyLedger | None = None
    calibration: Calibration | None = None
    decision: Decision | None = None
    ood: OOD | None = None
    run_log: str | None = None
    best_epoch: int | None = None
    format_version: int | None = None
    weights_sha256: str | None = None
    backbone: Backbone | None = None
    created_at: str | None = None
    versions: Versions | None = None
    metrics: dict[str, Metrics] = {}
    onnx: Onnx | None = None
    dicom: Dicom | None = None
    abstain: Abstain | None = None

    _raw: dict | None = PrivateAttr(default=None)

    @classmethod
    def parse(cls, raw: dict, where: str = "metadata.json") -> BundleMetadata:
        """Validate ``raw`` (after ``migrate``); ``BundleError`` naming the first bad field otherwise."""
        if not isinstance(raw, dict):
            raise BundleError(f"{where} is not a JSON object; the bundle is damaged")
        raw = migrate(raw)
        try:
            meta = cls.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"] if not _union_member(p)) or "(top level)"
            raise BundleError(f"{where}: field '{field}' is invalid ({err['msg']}); the bundle is damaged or was "
                              f"written by an incompatible privmed") from None
        meta._raw = raw
        return meta

    @property
    def raw(self) -> dict:
        """The JSON document (the file as read; what ``update_metadata`` merges blocks into)."""
        return self._raw if self._raw is not None else self.model_dump(mode="json", exclude_unset=True)

    @property
    def ledger(self) -> PrivacyLedger:
        """The privacy ledger; a bundle without one was trained without DP."""
        return self.privacy or PrivacyLedger()

    @property
    def temperature(self) -> float:
        return float(self.calibration.temperature) if self.calibration else 1.0

    def preprocess_args(self) -> dict:
        """The preprocessing block as ``config.PreprocessConfig`` arguments (none written: its defaults)."""
        return self.preprocessing.dump() if self.preprocessing else {}

    def test_metrics(self) -> Metrics | None:
        """The bundle's own test split's metrics (``privmed evaluate`` on ``<dataset>/test``)."""
        return self.metrics.get(f"{self.dataset}/test")


def _union_member(part) -> bool:
    """pydantic names the member of a union in an error's location (``epsilon.int``): not a field."""
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "none") or "[" in part)


def migrate(raw: dict) -> dict:
    """Older spellings to the current ones. Every format-1 bundle written so far uses the current
    keys (missing blocks such as ``intended_use`` or ``backbone.code_version`` are optional), so
    this returns ``raw`` itself; a renamed key gets its line here, with a test."""
    return raw
