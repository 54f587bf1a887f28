"""Typed settings. Every field can be overridden from the CLI or the environment.

Every ``PRIVMED_*`` environment variable is a field of ``Settings``, read through ``settings()``
and documented in docs/SETTINGS.md (``python -m privmed.config --markdown`` writes it). The data root
defaults to ``../shared/datasets`` beside the project checkout; users point ``PRIVMED_DATA`` or
``--data-root`` at their own copy.
"""
from __future__ import annotations

import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from privmed.errors import PrivmedError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("chest_xray_pneumonia", "brain_tumor_mri", "covid19_xray", "covid19_ct")
ENV_PREFIX = "PRIVMED_"
OFF_WORDS = ("0", "off", "false", "no")
ON_WORDS = ("1", "on", "true", "yes")
# PRIVMED_* names privmed sets itself and never reads as a setting
INTERNAL_VARIABLES = {
    "PRIVMED_FED_RUN": "set by `privmed federate --engine processes` on the Flower processes it starts, to find "
                       "and stop them (read from /proc, never as a setting)",
}


class SettingsError(PrivmedError, ValueError):
    """A PRIVMED_* environment variable holds a value privmed cannot use."""


def _on_off(value) -> bool:
    # the words privmed always accepted; anything else was silently taken as the default before
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in OFF_WORDS or word in ON_WORDS:
        return word in ON_WORDS
    raise ValueError("not an on/off word")


def _auto_on_off(value) -> str:
    if str(value).lower() == "auto":
        return "auto"
    return "on" if _on_off(value) else "off"


def _paths(value) -> list:
    if isinstance(value, str):
        return [p for p in value.split(os.pathsep) if p.strip()]
    return value


OnOff = Annotated[bool, BeforeValidator(_on_off)]
AutoOnOff = Annotated[Literal["auto", "on", "off"], BeforeValidator(_auto_on_off)]
# int8 has no forced mode: on means auto (use an accepted graph)
AutoOff = Annotated[Literal["auto", "off"], BeforeValidator(lambda v: "off" if _auto_on_off(v) == "off" else "auto")]
PathList = Annotated[list[Path], NoDecode, BeforeValidator(_paths)]


class Settings(BaseSettings):
    """One field per PRIVMED_* variable (the name is PRIVMED_ + the field name in capitals)."""
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    # data, caches and bundles
    data: Path | None = Field(None, description="datasets root (default: ../shared/datasets beside the checkout)")
    cache: Path | None = Field(None, description="training cache of patient pixels and features (default: "
                                                 "$XDG_CACHE_HOME/privmed, else ~/.cache/privmed)")
    cache_max_mb: float = Field(4096, ge=0, description="size cap of the training cache in MiB (oldest files go first)")
    bundles: Path | None = Field(None, description="folder of the default bundles (default: bundles/ in the checkout)")
    budget_dir: Path | None = Field(None, description="privacy budget registry (default: $XDG_DATA_HOME/privmed/"
                                                      "budget, else ~/.local/share/privmed/budget)")
    bundle_pubkey: str | None = Field(None, description="Ed25519 public key: the API and the app load only bundles "
                                                        "signed with it")
    deid_secret: SecretStr | None = Field(None, description="HMAC key of de-identification pseudonyms when no "
                                                            "--secret-file is given")
    # the REST API
    api_auth: OnOff = Field(True, description="API keys required (off is refused except on a loopback address)")
    home: Path = Field(Path("~/.privmed"), description="folder of the default SQLite database privmed.db")
    db_url: SecretStr | None = Field(None, description="SQLAlchemy URL of the keys and audit log database "
                                                       "(default: sqlite in PRIVMED_HOME); may hold a password")
    max_upload_mb: float | None = Field(None, gt=0, description="largest accepted upload in MiB (default: 64)")
    max_decodes: int | None = Field(None, description="images decoded at once (default: 1 per 8 GiB of RAM, 1-4; "
                                                      "at least 1)")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads of `privmed api` "
                                                              "(default: torch's choice)")
    batch: OnOff = Field(True, description="micro-batching of concurrent in-process predictions (the app; "
                                           "`privmed api` runs whole requests in its prediction workers)")
    batch_max: int = Field(16, description="most images in one micro-batch")
    batch_wait_ms: float = Field(5.0, description="longest wait to fill a micro-batch in ms (capped at 5)")
    batch_queue: int = Field(64, description="requests queued for a micro-batch or an API prediction worker "
                                             "before answering 503")
    batch_workers: int | None = Field(None, ge=1, description="micro-batches, or `privmed api` prediction workers, "
                                                              "run at once (default 1; `privmed api`: one per "
                                                              "core, at most 4)")
    onnx: AutoOnOff = Field("auto", description="ONNX Runtime: auto (the bundle's model.onnx when it was timed faster, "
                                                "else a checked graph exported into the cache on first load), on "
                                                "(the bundle's model.onnx even when timed slower), off (torch)")
    int8: AutoOff = Field("auto", description="the accepted int8 graph of a bundle: auto (or on) uses it, off never")
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: its default; `privmed api`: "
                                                  "the cores shared out among PRIVMED_BATCH_WORKERS)")
    ort_spin: OnOff = Field(False, description="ONNX Runtime threads spin while waiting for work")
    # signed checkpoints of the audit log (each also a `privmed log` flag, which wins)
    log_sink: Path | None = Field(None, description="append-only JSON-lines file of signed checkpoints")
    log_key: Path | None = Field(None, description="Ed25519 private key that signs checkpoints")
    log_pubkey: Path | None = Field(None, description="public key that verifies checkpoints")
    log_checkpoint_every: int = Field(100, description="audit rows between two checkpoints (at least 1)")
    log_witness_url: str | None = Field(None, description="witness that co-signs every checkpoint")
    log_witness_pubkey: Path | None = Field(None, description="the witness's public key (verify)")
    log_tsa_url: str | None = Field(None, description="RFC 3161 timestamp authority stamping every checkpoint")
    log_tsa_cert: Path | None = Field(None, description="the timestamp authority's certificate, PEM (verify)")
    log_tsa_roots: Path | None = Field(None, description="CA certificate(s) the authority chains to, PEM (verify)")
    # the clinician app
    app_password: SecretStr | None = Field(None, description="password of the app; required to listen beyond "
                                                             "localhost")
    app_bundles: PathList = Field(default_factory=list, description=f"extra bundles the app offers ('{os.pathsep}'"
                                                                    "-separated paths)")
    api_url: str | None = Field(None, description="the app uses this privmed REST API instead of in-process models")
    api_key: SecretStr | None = Field(None, description="API key the app sends to PRIVMED_API_URL")
    chromium: str = Field("/usr/bin/chromium", description="Chromium for the browser tests and the live benchmark")
    # tests
    test_bundle: Path | None = Field(None, description="tests: reuse this chest bundle instead of training one")
    test_effnet_bundle: Path | None = Field(None, description="tests: reuse this effnet_lite0_head bundle")
    test_ct_bundle: Path | None = Field(None, description="tests: reuse this CT bundle")
    fuzz_examples: int = Field(20, ge=1, description="tests: schemathesis examples per API operation")


_cached: tuple[tuple, Settings] | None = None
_seen: dict = {}  # a copy of the whole environment when ``_cached`` was last checked


def settings() -> Settings:
    """The PRIVMED_* settings as the environment holds them now (rebuilt when a PRIVMED_* variable
    changed since the last call, so tests and long-lived processes never see stale values)."""
    global _cached, _seen
    cached, raw = _cached, getattr(os.environ, "_data", None)  # CPython's own mapping: compared in C
    if cached is not None and raw is not None and raw == _seen:
        return cached[1]  # unchanged environment: served requests call this several times each
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)))
    if cached is None or cached[0] != key:
        try:
            value = Settings()
        except ValidationError as e:
            raise SettingsError(_explain(e)) from None
        cached = _cached = (key, value)
    _seen = dict(raw) if raw is not None else {}
    return cached[1]


def parallel_forwards() -> None:
    """``privmed api``'s network calls: one per core at once (at most 4), each on its share of the
    cores in ONNX Runtime, unless ``PRIVMED_BATCH_WORKERS`` or ``PRIVMED_ORT_THREADS`` is set (then
    nothing changes). Set in this process's environment, where the API's prediction workers
    (``service.Workers``), the batcher and the sessions read them.
    Concurrent requests cost less CPU each than one call at a time spread over every core, whose
    threads wake and wait on each other at every layer (docs/notebook/BENCHMARKS.md, "Served path")."""
    env = settings()
    if env.batch_workers or env.ort_threads:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(4, cores))
    os.environ[ENV_PREFIX + "BATCH_WORKERS"] = str(workers)
    os.environ[ENV_PREFIX + "ORT_THREADS"] = str(max(1, cores // workers))


def _explain(error: ValidationError) -> str:
    problems = []
    for e in error.errors():
        name = str(e["loc"][0])
        field = Settings.model_fields[name]
        shown = "" if _plain(field.annotation) is SecretStr else f"={e['input']!r}"  # never echo a secret
        words = " (or 1/0, true/false, yes/no)" if "on" in type_label(field).split(" / ") else ""
        problems.append(f"{ENV_PREFIX}{name.upper()}{shown}: expected {type_label(field)}{words}")
    return "invalid environment: " + "; ".join(problems) + " (fix or unset it; docs/SETTINGS.md lists every variable)"


def _plain(annotation):
    """The annotation without ``| None``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def type_label(field) -> str:
    """A reader's name for a field's type, with its bounds."""
    kind = _plain(field.annotation)
    if typing.get_origin(kind) is Literal:
        label = " / ".join(typing.get_args(kind))
    elif typing.get_origin(kind) is list:
        label = f"paths separated by '{os.pathsep}'"
    else:
        label = {bool: "on / off", int: "integer", float: "number", Path: "path", str: "text",
                 SecretStr: "secret text"}.get(kind, str(kind))
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            label += f" >= {bound.ge:g}"
        elif isinstance(bound, annotated_types.Gt):
            label += f" > {bound.gt:g}"
    return label


def _default_text(field) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown() -> str:
    """docs/SETTINGS.md, rendered from ``Settings`` (a test keeps the file equal to this)."""
    lines = ["# Settings (environment variables)", "",
             "Every `PRIVMED_*` variable privmed reads, with its type and default. Generated from",
             "`privmed.config.Settings` by `python -m privmed.config --markdown > docs/SETTINGS.md`; do not edit.",
             "An empty variable counts as unset; a value of the wrong type stops privmed with a message naming",
             "the variable. On/off variables take on/off, 1/0, true/false or yes/no. Command-line flags win over",
             "the environment.", "",
             "| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | {type_label(field)} | {_default_text(field)} "
                     f"| {field.description} |")
    lines += ["", "Set by privmed itself, not settings:", ""]
    lines += [f"- `{name}`: {text}" for name, text in INTERNAL_VARIABLES.items()]
    return "\n".join(lines) + "\n"


def default_data_root() -> Path:
    env = settings().data
    if env:
        return env.expanduser()
    beside_repo = REPO_ROOT.parent / "shared" / "datasets"
    if beside_repo.is_dir():
        return beside_repo
    return Path("../shared/datasets")


def cache_dir() -> Path:
    """The training/evaluation cache: decoded preprocessed pixels and frozen-backbone features of
    patient images, so patient data (see ``privmed.cache``). Outside the checkout by default:
    ``PRIVMED_CACHE``, else ``$XDG_CACHE_HOME/privmed``, else ``~/.cache/privmed``."""
    env = settings().cache
    if env:
        return env.expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "privmed"


# The default bundles ship inside the package (a link to the checkout's bundles/, followed when a wheel
# is built), so a wheel install finds them without a checkout.
SHIPPED_BUNDLES = Path(__file__).resolve().parent / "bundles"


def _checkout_bundles() -> Path | None:
    """bundles/ of a source checkout (an editable install); None in a wheel install."""
    d = REPO_ROOT / "bundles"
    return d if (REPO_ROOT / "pyproject.toml").is_file() and d.is_dir() else None


def bundles_dir() -> Path:
    """Where bundles are found by name and written by default: ``PRIVMED_BUNDLES``, else the checkout's
    bundles/, else ``$XDG_DATA_HOME/privmed/bundles`` (a wheel install: the package folder may be read-only)."""
    chosen = settings().bundles or _checkout_bundles()
    if chosen:
        return chosen.expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "privmed" / "bundles"


def bundle_search_dirs() -> list[Path]:
    """Folders searched for bundles by name: ``bundles_dir()``, then the bundles shipped in the package
    unless ``PRIVMED_BUNDLES`` names the only place to look."""
    dirs = [bundles_dir()]
    if not settings().bundles and SHIPPED_BUNDLES.is_dir() and SHIPPED_BUNDLES.resolve() != dirs[0].resolve():
        dirs.append(SHIPPED_BUNDLES)
    return [d for d in dirs if d.is_dir()]


def budget_dir() -> Path:
    """The privacy budget registry (``privmed.privacy.budget``): private, outside the checkout.
    ``PRIVMED_BUDGET_DIR``, else ``$XDG_DATA_HOME/privmed/budget``, else ``~/.local/share/privmed/budget``."""
    env = settings().budget_dir
    if env:
        return env.expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "privmed" / "budget"


class PreprocessConfig(BaseModel):
    size: int = Field(224, ge=16, le=1024)
    clahe: bool = False
    denoise: bool = False


class AugmentConfig(BaseModel):
    enabled: bool = True
    rotate_degrees: float = 10.0
    flip: bool = False  # chest films are not left-right symmetric; off by default
    zoom: float = 0.1
    contrast: float = 0.2
    noise_std: float = 0.02


class PrivacyConfig(BaseModel):
    enabled: bool = True
    epsilon: float = 2.0
    # None -> 1e-5, a public rule: a delta computed from the exact number of images would publish it.
    # Training refuses a delta of 1/N or more (N = training images)
    delta: float | None = None
    # Poisson rate of DP-SGD, public and fixed before the data are read (a rate from the exact number
    # of units would publish it). None: the model's default (its MODELS entry), else 0.2. Under DP the
    # batch is Poisson with mean q N and ``batch_size`` applies only to non-private training
    sample_rate: float | None = Field(None, gt=0, le=0.5)
    max_grad_norm: float = 1.0
    accountant: Literal["prv", "rdp"] = "prv"  # not gdp: it understates epsilon (issue 29)
    # auto: the patient wherever the data carry patient ids, else the image
    unit: Literal["auto", "patient", "image"] = "auto"
    # noise multiplier of the DP class counts (always released under DP: the DP estimate of the number
    # of units that scales the noisy gradient sum; and the class weights when class_weights is on)
    count_noise: float = Field(10.0, gt=0)
    # noise multiplier of the out-of-distribution detector's class means, released on the training units
    # after training (planned with the class counts before any private data is touched)
    ood_noise: float = Field(10.0, gt=0)
    grad_sample_mode: Literal["hooks", "ew"] = "hooks"
    # most images per forward/backward pass (GPU memory); a sampled batch is split into whole units,
    # so each unit is still clipped once and the sum is the same. None: the whole sampled batch at once
    physical_batch: int | None = Field(None, ge=1)

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"epsilon must be > 0 (got {v}); use --no-dp to train without privacy")
        return v


class TrainConfig(BaseModel):
    dataset: str = "chest_xray_pneumonia"
    data_root: Path = Field(default_factory=default_data_root)
    model: str = "effnet_lite0_head"
    # builder arguments of the model, recorded in the bundle (effnet_lite0_tail: start=0 trains every block)
    model_args: dict[str, int | float | str] = Field(default_factory=dict)
    # a declared public corpus (privmed.data.public.CORPORA) for the head's public projection
    # (model_args.public_k > 0): used in the clear, so never one of the private dataset's own splits
    public_data: str | None = None
    # where the trainable part trains: cpu, cuda, cuda:N or auto (cuda when present). Not part of the
    # recipe: noise and sampling still come from the secret CPU generator (privacy/engine.py)
    device: str = "cpu"
    epochs: int | None = Field(None, ge=1, le=100)  # None: the model's default (its MODELS entry)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    optimizer: Literal["adam", "sgd"] | None = None  # None: the model's default, else adam; sgd: momentum 0.9
    # balance classes with weights <= 1 applied after clipping; under DP from noisy class counts
    # (a Gaussian release composed into epsilon), never from exact private counts
    class_weights: bool = True
    ema: float = Field(0.0, ge=0, lt=1)  # exponential moving average of the weights (post-processing)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    patience: int = Field(10, ge=1)
    # without DP, the released epoch: the best on validation, or the last (DP always releases the last)
    release: Literal["best", "last"] = "best"
    seed: int = 0
    workers: int = 0
    exclude_leaked_test: bool = True
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        head, _, index = v.partition(":")
        if head not in ("cpu", "cuda", "auto") or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto (got '{v}')")
        return v

    @model_validator(mode="after")
    def _fill_model_defaults(self) -> "TrainConfig":
        from privmed.models.registry import MODELS  # here, not at the top: importing config must not load torch

        defaults = {"optimizer": "adam", "sample_rate": 0.2, **MODELS.get(self.model, MODELS["cnn"]).defaults}
        for key, value in defaults.items():
            holder = self.privacy if key == "sample_rate" else self
            if getattr(holder, key) is None:
                setattr(holder, key, value)
        return self



if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m privmed.config --markdown > docs/SETTINGS.md")
    print(markdown(), end="")
