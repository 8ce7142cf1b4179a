"""Study specs: YAML in ``studies/`` → a typed, frozen :class:`StudySpec`.

Every range is checked against the hyperparameter table of the method or training option it
belongs to, so a spec cannot ask for a value the trial would reject. Errors are
:class:`~prunetune.search._errors.ConfigError` naming the field path and the bad value; loading
a spec creates nothing on disk.

Example:
    >>> from prunetune.search.spec import load_spec
    >>> spec = load_spec("studies/quickstart.yaml")
    >>> spec.search.sampler
    'nsga2'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prunetune.search._errors import ConfigError, format_pydantic

SAMPLERS = ("nsga2", "tpe", "gp", "random")

# Training options a spec may search, with the values a trial accepts (one table; the spec's
# ranges are checked against it, the search space samples within it).
from prunetune.prune._hparams import Choice, Float, Int, check_range  # noqa: E402

TRAIN_TABLE = {
    "lr": Float(1e-5, 1.0, 1e-3, log=True, help="weight learning rate"),
    "batch_size": Int(1, 1 << 16, 128, help="samples per step"),
    "optimizer": Choice(("adam", "adamw", "sgd"), "adam", help="optimiser"),
    "weight_decay": Float(0.0, 1.0, 0.0, help="weight decay"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpace(_Strict):
    family: Literal["mlp", "lenet5", "cnn", "resnet"] = "mlp"
    depth: tuple[int, int] | int = Field(
        (1, 2), description="number of hidden FC layers [min, max] (mlp/lenet5/cnn)"
    )
    width: tuple[int, int] | int = Field(
        (16, 128), description="per-layer width [min, max]; resnet: the first stage's width"
    )
    resnet_depth: tuple[Literal[8, 14, 20, 32], ...] | Literal[8, 14, 20, 32] = Field(
        20, description="resnet depth (6n + 2), or a list to choose from"
    )
    width_log: bool = True
    widths: tuple[int, ...] | None = Field(
        None, description="fixed hidden widths; overrides depth/width"
    )
    channels: tuple[int, ...] = Field((), description="conv channels (cnn/lenet5), fixed")
    activation: tuple[str, ...] | str = "relu"

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: Any) -> Any:
        for w in v or ():
            if w < 1:
                raise ValueError(f"every width must be >= 1, got {w}")
        return v

    @field_validator("depth", "width")
    @classmethod
    def _range(cls, v: Any) -> Any:
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1:
            raise ValueError(f"must be >= 1, got {lo}")
        if lo > hi:
            raise ValueError(f"`low <= high` must hold, got [{lo}, {hi}]")
        return v

    @field_validator("activation")
    @classmethod
    def _act(cls, v: Any) -> Any:
        from prunetune.models import ACTIVATIONS

        for a in (v,) if isinstance(v, str) else v:
            if a not in ACTIVATIONS:
                raise ValueError(f"must be among {sorted(ACTIVATIONS)}, got {a!r}")
        if not isinstance(v, str) and not v:
            raise ValueError("must list at least one activation")
        return v

    def bounds(self, name: str) -> tuple[int, int]:
        v = getattr(self, name)
        return (v, v) if isinstance(v, int) else (v[0], v[1])

    def build_extreme(self, dataset: str, *, largest: bool) -> Any:
        """The largest (or smallest) plain model this space builds for ``dataset``."""
        from prunetune.datasets import dataset_info
        from prunetune.models import build_family

        pick = 1 if largest else 0
        info = dataset_info(dataset)
        widths = self.widths or (self.bounds("width")[pick],) * self.bounds("depth")[pick]
        channels = [self.bounds("width")[pick]] if self.family == "resnet" else self.channels
        depths = self.resnet_depths
        return build_family(
            self.family,
            info.input_shape,
            info.num_outputs,
            widths,
            channels,
            "relu",
            depth=max(depths) if largest else min(depths),
        )

    @property
    def resnet_depths(self) -> tuple[int, ...]:
        v = self.resnet_depth
        return (v,) if isinstance(v, int) else tuple(v)


class TrainSpace(_Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int | list[int] = 128
    lr: float | list[float] = 1e-3
    optimizer: str | list[str] = "adam"
    weight_decay: float | list[float] = 0.0
    seed: int = Field(0, ge=0, description="training seed shared by every trial")
    loss: Literal["auto", "cross_entropy", "mse", "l1"] = Field(
        "auto", description="auto: cross_entropy (classification) or mse (regression)"
    )


class Objectives(_Strict):
    """Two objectives: the validation metric (accuracy ↑ or loss ↓) and the kept parameters ↓."""

    metric: Literal["val_accuracy", "val_loss"] | None = Field(
        None,
        validation_alias=AliasChoices("metric", "accuracy"),
        description="val_accuracy (max) or val_loss (min); default: by the dataset's task",
    )
    size: Literal["params"] = "params"
    min_val_accuracy: float | None = Field(None, ge=0, le=1, description="floor for 'smallest'")
    max_val_loss: float | None = Field(None, ge=0, description="ceiling for 'smallest' (val_loss)")
    reference_point: tuple[float, float] | None = Field(
        None,
        description="hypervolume reference (metric, params); default (0 accuracy or the worst "
        "loss, params_dense)",
    )


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SearchSettings(_Strict):
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "nsga2"
    n_trials: int = Field(16, ge=1, le=100_000)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    max_failures: int = Field(3, ge=0)
    resources: Resources = Resources()
    seed: int = Field(0, ge=0)
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///optuna.db")
    population_size: int = Field(8, ge=2, description="NSGA-II population")
    heartbeat_grace: float = Field(
        60.0,
        ge=2,
        description="seconds without a driver's heartbeat before its running trials are failed "
        "and replaced (a second driver on the same study joins it meanwhile)",
    )

    @field_validator("storage")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"must be a storage URL such as sqlite:///optuna.db, got {v!r}")
        return v


class Tracking(_Strict):
    enabled: bool = Field(True, description="log to MLflow (parent run + one child run per trial)")
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    experiment: str | None = None
    explain: bool = Field(
        True, description="log pathway/importance figures for Pareto-optimal trials"
    )
    register_models: bool = Field(
        True, alias="register", description="register selected models at the end"
    )


class StudySpec(_Strict):
    """A validated study: what to search, how long to train, how to run and track it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    dataset: str
    data_dir: str | None = None
    model: ModelSpace = ModelSpace()
    methods: dict[str, dict[str, Any]]
    train: TrainSpace = TrainSpace()
    objectives: Objectives = Objectives()
    search: SearchSettings = SearchSettings()
    tracking: Tracking = Tracking()

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        from prunetune.datasets import DATASETS

        if v not in DATASETS:
            raise ValueError(f"must be one of {list(DATASETS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _family_fits_dataset(self) -> StudySpec:
        from prunetune.datasets import dataset_info

        info = dataset_info(self.dataset)
        shape = info.input_shape
        if self.model.family == "lenet5" and (len(shape) != 3 or min(shape[1:]) < 20):
            raise ValueError(
                f"model.family 'lenet5' needs images of at least 20x20, but dataset "
                f"{self.dataset!r} has input shape {tuple(shape)}"
            )
        if self.model.family == "resnet" and (len(shape) != 3 or min(shape[1:]) < 8):
            raise ValueError(
                f"model.family 'resnet' needs images of at least 8x8, but dataset "
                f"{self.dataset!r} has input shape {tuple(shape)}"
            )
        return self

    @property
    def metric(self) -> str:
        """The first objective: ``val_accuracy`` (max) or ``val_loss`` (min)."""
        from prunetune.datasets import dataset_info

        return self.objectives.metric or _METRIC_OF_TASK[dataset_info(self.dataset).task]

    def fingerprint(self) -> str:
        """Hash of what defines the search space (not run settings like n_trials)."""
        d = self.model_dump(
            mode="json",
            exclude={
                "search": {
                    "n_trials",
                    "max_concurrent",
                    "max_failures",
                    "resources",
                    "storage",
                    "heartbeat_grace",
                },
                "tracking": True,
                "description": True,
            },
        )
        # Settings added later hash as before at their defaults, so older studies resume.
        o, t = d["objectives"], d["train"]
        if o.pop("metric") in (None, "val_accuracy"):
            o["accuracy"] = "val_accuracy"
        else:
            o["metric"] = self.objectives.metric
        if o["max_val_loss"] is None:
            del o["max_val_loss"]
        if t["loss"] == "auto":
            del t["loss"]
        if d["model"]["family"] != "resnet":
            del d["model"]["resnet_depth"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _validate_methods(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[Any, ...]]]:
    from prunetune.prune import METHODS

    if not methods:
        raise ConfigError(
            f"methods: must name at least one pruning method of {sorted(METHODS)}, got {{}}."
        )
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name, ranges in methods.items():
        if name not in METHODS:
            raise ConfigError(
                f"methods.{name}: unknown pruning method {name!r}; expected one of {sorted(METHODS)}."
            )
        ranges = ranges or {}
        if not isinstance(ranges, dict):
            raise ConfigError(
                f"methods.{name}: must be a mapping of hyperparameter ranges, got {ranges!r}."
            )
        table = METHODS[name].hparams
        out[name] = {}
        for hp, value in ranges.items():
            if hp not in table:
                raise ConfigError(
                    f"methods.{name}.{hp}: not a hyperparameter of {name!r}; expected one of {sorted(table)}, got {hp!r}."
                )
            try:
                out[name][hp] = check_range(table[hp], f"methods.{name}.{hp}", value)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    return out


_METRIC_OF_TASK = {"classification": "val_accuracy", "regression": "val_loss"}
_LOSSES_OF_TASK = {"classification": ("cross_entropy",), "regression": ("mse", "l1")}


def _validate_objectives(spec: StudySpec) -> None:
    """The metric, its floor and the loss must fit the dataset's task."""
    from prunetune.datasets import dataset_info

    task = dataset_info(spec.dataset).task
    metric, o = _METRIC_OF_TASK[task], spec.objectives
    where = f"for dataset {spec.dataset!r} ({task})"
    if o.metric not in (None, metric):
        raise ConfigError(f"objectives.metric: must be {metric!r} {where}, got {o.metric!r}")
    if metric == "val_loss" and o.min_val_accuracy is not None:
        raise ConfigError(
            f"objectives.min_val_accuracy: applies to val_accuracy; a val_loss study "
            f"takes objectives.max_val_loss, got {o.min_val_accuracy!r}"
        )
    if metric == "val_accuracy" and o.max_val_loss is not None:
        raise ConfigError(
            f"objectives.max_val_loss: applies to val_loss; a val_accuracy study "
            f"takes objectives.min_val_accuracy, got {o.max_val_loss!r}"
        )
    losses = ["auto", *_LOSSES_OF_TASK[task]]
    if spec.train.loss not in losses:
        raise ConfigError(f"train.loss: must be one of {losses} {where}, got {spec.train.loss!r}")


def _validate_train(train: TrainSpace) -> dict[str, tuple[Any, ...]]:
    out = {}
    for name, param in TRAIN_TABLE.items():
        try:
            out[name] = check_range(param, f"train.{name}", getattr(train, name))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return out


def _validate_methods_fit_model(spec: StudySpec) -> None:
    """Methods that cannot prune some structures (``PruningMethod.check``: KFAC needs a chain,
    GraSP second derivatives) are tried on the study's model now, not mid-study."""
    from prunetune.prune import METHODS, PruningMethod

    picky = [
        n for n in spec.methods if METHODS[n].check.__func__ is not PruningMethod.check.__func__
    ]
    if not picky:
        return
    import torch

    from prunetune.datasets import dataset_info
    from prunetune.prune import Topology

    model = spec.model.build_extreme(spec.dataset, largest=False)
    topology = Topology.build(model, torch.zeros(2, *dataset_info(spec.dataset).input_shape))
    for name in picky:
        try:
            METHODS[name].check(topology)
        except ValueError as e:
            raise ConfigError(f"methods.{name}: {e}") from None


class ValidatedSpec:
    """A :class:`StudySpec` plus its method and training ranges as checked tuples."""

    def __init__(self, spec: StudySpec, source: str | None = None) -> None:
        self.spec = spec
        self.source = source
        self.method_ranges = _validate_methods(spec.methods)
        self.train_ranges = _validate_train(spec.train)
        _validate_objectives(spec)
        _validate_methods_fit_model(spec)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.spec, item)


def parse_spec(data: Any, source: str = "study spec") -> ValidatedSpec:
    """Validate a spec given as a mapping.

    Raises:
        ConfigError: naming the field path and the bad value.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a study spec must be a YAML mapping, got {type(data).__name__}."
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_pydantic(e, source)) from None
    except ValueError as e:  # raised by dataset_info etc.
        raise ConfigError(f"{source}: {e}") from None
    try:
        return ValidatedSpec(spec, source)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_spec(path: str | Path) -> ValidatedSpec:
    """Read and validate a study spec file (nothing is created on disk).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid (message names field and value).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"study spec {str(p)!r} does not exist (expected a YAML file, e.g. studies/quickstart.yaml)."
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_spec(data, str(p))
