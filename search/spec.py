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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
)

from prunetune.search._errors import ConfigError, format_pydantic

SAMPLERS = ("nsga2", "tpe", "gp", "random")

# Training options: the trial-config schema (one table; a spec's ranges are checked against it,
# the search space samples within it). TRAIN_TABLE: the options a spec may search.
from prunetune._factory import Dim, FactoryError, check_signature, parse_params, resolve  # noqa: E402
from prunetune._hparams import check_range  # noqa: E402
from prunetune._schema import (  # noqa: E402
    ADDED_LATER,
    DISTILL,
    DISTILL_SEARCHABLE,
    FAMILIES,
    LOSSES_OF_TASK,
    METRIC_OF_TASK,
    RESNET_DEPTHS,
    RUN_SETTINGS,
    SEARCHABLE,
    TRAIN,
)

TRAIN_TABLE = {k: TRAIN[k] for k in SEARCHABLE}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpace(_Strict):
    """A built-in family (``mlp``, ``lenet5``, ``cnn``, ``resnet``) and its ranges."""

    family: Literal[FAMILIES] = "mlp"  # type: ignore[valid-type]
    depth: tuple[int, int] | int = Field(
        (1, 2), description="number of hidden FC layers [min, max] (mlp/lenet5/cnn)"
    )
    width: tuple[int, int] | int = Field(
        (16, 128), description="per-layer width [min, max]; resnet: the first stage's width"
    )
    resnet_depth: tuple[Literal[RESNET_DEPTHS], ...] | Literal[RESNET_DEPTHS] = Field(  # type: ignore[valid-type]
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

    def build_extreme(self, info: Any, *, largest: bool) -> Any:
        """The largest (or smallest) plain model this space builds for data shaped as ``info``
        (``input_shape``, ``num_outputs``)."""
        from prunetune.models import build_family

        pick = 1 if largest else 0
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


class FactorySpace(_Strict):
    """A user's model: ``factory: "package.module:callable"`` called with ``params`` (each a
    fixed value, a ``[low, high]`` range, ``{low, high, log}``, a list of choices or
    ``{value: ...}``; see :mod:`prunetune._factory`)."""

    factory: str = Field(description="import path 'package.module:callable' of the model")
    params: dict[str, Any] = Field(default_factory=dict, description="the factory's parameters")

    def dims(self) -> dict[str, Dim]:
        return parse_params(self.params, "model.params")

    def build_extreme(self, info: Any, *, largest: bool) -> Any:
        """The factory's model at each parameter's largest (or smallest) value."""
        from prunetune.models import build_from_factory

        pick = 1 if largest else 0
        params = {k: d.extreme_values[pick] for k, d in self.dims().items()}
        return build_from_factory(
            self.factory, params, input_shape=info.input_shape, num_outputs=info.num_outputs
        )


class DataFactory(_Strict):
    """A user's data: ``factory: "package.module:callable"`` called with ``params`` (fixed
    values); it returns a mapping of tensors or a tuple of three Datasets
    (:mod:`prunetune.datasets`)."""

    factory: str = Field(description="import path 'package.module:callable' of the data")
    params: dict[str, Any] = Field(default_factory=dict, description="its (fixed) arguments")
    num_classes: int | None = Field(
        None, ge=1, description="classes (default: the factory's, else the largest label + 1)"
    )
    name: str | None = Field(None, description="a name for reports (default: the import path)")

    @property
    def label(self) -> str:
        return self.name or self.factory


def _model_kind(v: Any) -> str:
    # tags start with "~": error messages leave them out of field paths; at serialisation
    # time ``v`` is the model itself
    if isinstance(v, FactorySpace) or (isinstance(v, dict) and "factory" in v):
        return "~factory"
    return "~family"


ModelSection = Annotated[
    Annotated[ModelSpace, Tag("~family")] | Annotated[FactorySpace, Tag("~factory")],
    Discriminator(_model_kind),
]


def _distill_space() -> type[BaseModel]:
    """``train.distill:`` of a spec: :data:`prunetune._schema.DISTILL` (``alpha`` and
    ``temperature`` searchable) and the teacher's model."""
    fields: dict[str, Any] = {
        name: (Any, Field(p.default, description=p.help)) for name, p in DISTILL.items()
    }
    fields["teacher"] = (
        dict[str, Any] | None,
        Field(
            None,
            description="the teacher's model, as a trial config's model (family fields or "
            "{factory, params}); default: the largest model the space builds",
        ),
    )
    return create_model("DistillSpace", __base__=_Strict, **fields)


DistillSpace = _distill_space()


def _train_space() -> type[BaseModel]:
    """``train:`` of a spec, one field per option of the schema (ranges are checked in
    :func:`_validate_train`)."""
    fields: dict[str, Any] = {
        name: (Any, Field(p.default, description=p.help)) for name, p in TRAIN.items()
    }
    fields["distill"] = (
        DistillSpace,
        Field(DistillSpace(), description="distillation from a dense teacher: {alpha, ...}"),
    )
    return create_model("TrainSpace", __base__=_Strict, **fields)


TrainSpace = _train_space()


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


class Scheduler(_Strict):
    """Early stopping across trials: multi-objective asynchronous successive halving."""

    name: Literal["mo-asha"] = Field(description="mo-asha (Schmucker et al. 2021)")
    grace_epochs: int = Field(1, ge=1, description="epochs every trial trains (the first rung)")
    reduction_factor: int = Field(
        3, ge=2, description="η: a rung keeps the best 1/η of the trials that reach it"
    )


def _seconds(v: Any) -> Any:
    """``600``, ``"600s"``, ``"10m"``, ``"1.5h"`` → seconds."""
    if isinstance(v, str):
        text = v.strip().lower()
        unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
        try:
            return float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise ValueError(
                f"must be seconds or a duration like '10m' or '2h', got {v!r}"
            ) from None
    return v


class SearchSettings(_Strict):
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "nsga2"
    n_trials: int = Field(16, ge=1, le=100_000)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    max_failures: int = Field(3, ge=0)
    resources: Resources = Resources()
    seed: int = Field(0, ge=0)
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///optuna.db")
    population_size: int = Field(8, ge=2, description="NSGA-II population")
    scheduler: Scheduler | None = Field(
        None, description="early stopping: {name: mo-asha, grace_epochs, reduction_factor}"
    )
    time_budget: float | None = Field(
        None,
        gt=0,
        description="wall time (seconds, or '10m', '2h') after which no new trial starts; "
        "running trials finish",
    )
    heartbeat_grace: float = Field(
        60.0,
        ge=2,
        description="seconds without a driver's heartbeat before its running trials are failed "
        "and replaced (a second driver on the same study joins it meanwhile)",
    )

    _duration = field_validator("time_budget", mode="before")(
        classmethod(lambda cls, v: _seconds(v))
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
    dataset: str | DataFactory
    data_dir: str | None = None
    model: ModelSection = ModelSpace()
    methods: dict[str, dict[str, Any]]
    train: TrainSpace = TrainSpace()  # type: ignore[valid-type]
    objectives: Objectives = Objectives()
    search: SearchSettings = SearchSettings()
    tracking: Tracking = Tracking()

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        from prunetune.datasets import DATASETS

        if isinstance(v, str) and v not in DATASETS:
            raise ValueError(
                f"must be one of {list(DATASETS)} or {{factory: 'package.module:callable'}}, "
                f"got {v!r}"
            )
        return v

    @property
    def dataset_label(self) -> str:
        """The data set's name in reports: a built-in's name or the factory's."""
        return self.dataset if isinstance(self.dataset, str) else self.dataset.label

    @property
    def metric(self) -> str:
        """The first objective: ``val_accuracy`` (max) or ``val_loss`` (min)."""
        if self.objectives.metric is not None:
            return self.objectives.metric
        return METRIC_OF_TASK[data_info(self).task]

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
                    "scheduler",
                    "time_budget",
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
        if d["model"].get("family", "resnet") != "resnet":
            del d["model"]["resnet_depth"]
        for k in RUN_SETTINGS:
            del t[k]
        for k in ADDED_LATER:
            if k in t and _at_default(k, t[k]):
                del t[k]
        if t.get("distill") == DistillSpace().model_dump(mode="json"):
            del t["distill"]
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


def _at_default(option: str, value: Any) -> bool:
    default = TRAIN[option].default
    if isinstance(default, tuple):
        return isinstance(value, list | tuple) and list(value) == list(default)
    return bool(value == default)


# -- the data: a built-in's description, or a factory's (probed once per process) ---------------
_PROBED: dict[str, Any] = {}


def data_info(spec: StudySpec) -> Any:
    """What the study's data looks like: ``name``, ``task``, ``input_shape``, ``num_outputs``.

    A built-in's is known without loading; a data factory is called once (per process and
    factory config) and its data described.

    Raises:
        ConfigError: the factory does not resolve, raises or returns something else.
    """
    if isinstance(spec.dataset, str):
        from prunetune.datasets import dataset_info

        return dataset_info(spec.dataset)
    return _probe(spec.dataset)[0]


def _probe(d: DataFactory) -> tuple[Any, Any]:
    """(info, data) of a data factory: its data on the CPU, loaded once per process."""
    key = json.dumps(d.model_dump(mode="json"), sort_keys=True, default=repr)
    if key not in _PROBED:
        from prunetune.datasets._factory import load_factory_data

        try:
            data = load_factory_data(d.factory, d.params, num_classes=d.num_classes, name=d.label)
        except FactoryError as e:
            raise ConfigError(str(e)) from None
        from prunetune.datasets import DatasetInfo

        info = DatasetInfo(
            name=d.label,
            task=data.task,
            input_shape=tuple(data.input_shape),
            num_outputs=data.num_outputs,
            classes=tuple(data.classes),
            description=f"data factory {d.factory}",
        )
        _PROBED[key] = (info, data)
    return _PROBED[key]


def _validate_objectives(spec: StudySpec) -> None:
    """The metric, its floor and the loss must fit the dataset's task."""
    task = data_info(spec).task
    metric, o = METRIC_OF_TASK[task], spec.objectives
    where = f"for dataset {spec.dataset_label!r} ({task})"
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
    losses = ["auto", *LOSSES_OF_TASK[task]]
    if spec.train.loss not in losses:
        raise ConfigError(f"train.loss: must be one of {losses} {where}, got {spec.train.loss!r}")


def _validate_train(train: Any) -> dict[str, tuple[Any, ...]]:
    """Searchable options: their ranges (``(low, high)``, choices or ``(value,)``); every
    other option is checked as one value."""
    return _check_table(TRAIN, SEARCHABLE, train, "train")


def _check_table(
    table: dict[str, Any], searchable: tuple[str, ...], section: Any, where: str
) -> dict[str, tuple[Any, ...]]:
    """``section``'s values against ``table``: the ranges of the ``searchable`` options."""
    out = {}
    for name, param in table.items():
        value = getattr(section, name)
        try:
            if name in searchable:
                out[name] = check_range(param, f"{where}.{name}", value)
            else:
                param.check(f"{where}.{name}", value)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return out


def _validate_distill(spec: StudySpec) -> dict[str, tuple[Any, ...]]:
    """``train.distill``: searchable options' ranges, the others' values, the teacher's model;
    distillation (``alpha`` above 0 anywhere in its range) needs a classification data set."""
    d = spec.train.distill
    out = _check_table(DISTILL, DISTILL_SEARCHABLE, d, "train.distill")
    if max(out["alpha"]) > 0:
        task = data_info(spec).task
        if task != "classification":
            raise ConfigError(
                f"train.distill.alpha: distillation needs a classification data set; "
                f"{spec.dataset_label!r} is {task}, got {d.alpha!r}"
            )
    if d.teacher is not None:
        from prunetune.search.trial import DistillSection

        try:
            DistillSection.model_validate({"teacher": d.teacher})
        except ValidationError as e:
            raise ConfigError(format_pydantic(e, "train.distill")) from None
        if "factory" in d.teacher:
            try:
                resolve(d.teacher["factory"], "train.distill.teacher.factory")
            except FactoryError as e:
                raise ConfigError(str(e)) from None
    return out


def _validate_model_factory(spec: StudySpec) -> dict[str, Dim]:
    """The model factory resolves and takes the spec's parameters; its dimensions."""
    m = spec.model
    if not isinstance(m, FactorySpace):
        return {}
    try:
        dims = m.dims()
        fn = resolve(m.factory, "model.factory")
        check_signature(fn, dims, "model.params", m.factory)
    except FactoryError as e:
        raise ConfigError(str(e)) from None
    return dims


def _validate_scheduler(spec: StudySpec) -> None:
    """A rung must come before the last epoch."""
    sch = spec.search.scheduler
    epochs = spec.train.epochs
    if sch is not None and sch.grace_epochs >= epochs:
        raise ConfigError(
            f"search.scheduler.grace_epochs: must be below train.epochs ({epochs}) so that a "
            f"rung can stop a trial while it learns its masks, got {sch.grace_epochs}"
        )


def _validate_augment(spec: StudySpec) -> None:
    """Crops and flips need image batches."""
    shape = tuple(data_info(spec).input_shape)
    if spec.train.augment and len(shape) != 3:
        raise ConfigError(
            f"train.augment: {list(spec.train.augment)} needs image inputs (C, H, W), but "
            f"dataset {spec.dataset_label!r} has input shape {shape}"
        )


def _validate_family(spec: StudySpec) -> None:
    """A built-in family fits the data's shape."""
    if not isinstance(spec.model, ModelSpace):
        return
    shape = data_info(spec).input_shape
    family = spec.model.family
    least = {"lenet5": 20, "resnet": 8}.get(family)
    if least is not None and (len(shape) != 3 or min(shape[1:]) < least):
        raise ConfigError(
            f"model.family {family!r} needs images of at least {least}x{least}, but dataset "
            f"{spec.dataset_label!r} has input shape {tuple(shape)}"
        )


def _check_one_batch(spec: StudySpec) -> Any:
    """Build the study's smallest model, run two training samples through it and the loss:
    its outputs must fit the labels. Returns the model (for the methods' structure check)."""
    import torch

    from prunetune._schema import resolve_loss
    from prunetune.prune._train import LOSSES

    info = data_info(spec)
    field = "model.factory" if isinstance(spec.model, FactorySpace) else "model"
    try:
        model = spec.model.build_extreme(info, largest=False)
    except FactoryError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if isinstance(spec.dataset, str):
        x = torch.zeros(2, *info.input_shape)
        y = (
            torch.zeros(2, dtype=torch.long)
            if info.task == "classification"
            else torch.zeros(2, info.num_outputs)
        )
    else:
        data = _probe(spec.dataset)[1]
        x, y = data.sample(min(2, data.num_train), torch.Generator().manual_seed(0))
    what = getattr(spec.model, "factory", spec.model.model_dump().get("family"))
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ConfigError(
            f"{field}: {what!r} cannot take a batch of the data (x of shape "
            f"{tuple(x.shape)}): {type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"{field}: {what!r} returns a {type(out).__name__}, not a tensor of outputs"
        )
    top = info.num_outputs - 1
    if info.task == "classification":
        if out.dim() != 2 or out.shape[1] <= top:
            raise ConfigError(
                f"{field}: {what!r} outputs shape {tuple(out.shape)} for a batch of 2, but the "
                f"labels of {spec.dataset_label!r} run to {top} ({info.num_outputs} classes): "
                f"it needs (batch, {info.num_outputs}) logits (set num_classes?)"
            )
    elif tuple(out.shape) != tuple(y.shape):
        raise ConfigError(
            f"{field}: {what!r} outputs shape {tuple(out.shape)}, but the regression targets "
            f"of {spec.dataset_label!r} have shape {tuple(y.shape)}"
        )
    loss = resolve_loss(spec.train.loss, info.task, repr(spec.dataset_label))
    try:
        value = LOSSES[loss](out, y)
    except Exception as e:
        raise ConfigError(
            f"train.loss: {loss} of {what!r}'s outputs {tuple(out.shape)} and the labels "
            f"{tuple(y.shape)} fails: {type(e).__name__}: {e}"
        ) from None
    if not torch.isfinite(value):
        raise ConfigError(f"{field}: {what!r} gives a non-finite {loss} loss on a data batch")
    return model.train()


def _validate_methods_fit_model(spec: StudySpec, model: Any) -> None:
    """The study's model has a topology (every prunable layer used, one output tensor), and
    methods that cannot prune some structures (``PruningMethod.check``: KFAC needs a chain,
    GraSP second derivatives) are tried on it now, not mid-study."""
    import torch

    from prunetune.prune import METHODS, PruningMethod, Topology

    try:
        topology = Topology.build(model, torch.zeros(2, *data_info(spec).input_shape))
    except ValueError as e:
        what = getattr(spec.model, "factory", spec.model.model_dump().get("family"))
        raise ConfigError(f"model: {what!r}: {e}") from None
    picky = [
        n for n in spec.methods if METHODS[n].check.__func__ is not PruningMethod.check.__func__
    ]
    for name in picky:
        try:
            METHODS[name].check(topology)
        except ValueError as e:
            raise ConfigError(f"methods.{name}: {e}") from None


def _on_import_path(base_dir: Path | None) -> None:
    """The spec's folder and the working directory join ``sys.path`` (for this process: the
    driver; Ray workers get them through ``PYTHONPATH``), so factories resolve from there."""
    import sys

    for folder in (base_dir, Path.cwd()):
        if folder is not None and str(folder.resolve()) not in sys.path:
            sys.path.append(str(folder.resolve()))


class ValidatedSpec:
    """A :class:`StudySpec` plus its method and training ranges as checked tuples, its model
    factory's dimensions, and where its factories are imported from.

    Validation resolves every factory and runs one small batch of the data through the
    study's smallest model and the loss; a data factory is called once here.
    """

    def __init__(
        self, spec: StudySpec, source: str | None = None, base_dir: Path | None = None
    ) -> None:
        self.spec = spec
        self.source = source
        self.base_dir = base_dir
        _on_import_path(base_dir)
        self.method_ranges = _validate_methods(spec.methods)
        self.train_ranges = _validate_train(spec.train)
        self.distill_ranges = _validate_distill(spec)
        _validate_scheduler(spec)
        self.model_dims = _validate_model_factory(spec)
        _validate_objectives(spec)
        _validate_family(spec)
        _validate_augment(spec)
        model = _check_one_batch(spec)
        _validate_methods_fit_model(spec, model)

    @property
    def data_info(self) -> Any:
        """``name``, ``task``, ``input_shape``, ``num_outputs`` of the study's data."""
        return data_info(self.spec)

    @property
    def import_paths(self) -> list[str]:
        """Folders Ray workers need on their import path: the spec's and the working one."""
        dirs = [self.base_dir, Path.cwd()] if self.base_dir is not None else [Path.cwd()]
        return list(dict.fromkeys(str(d.resolve()) for d in dirs))

    def dataset_config(self) -> str | dict[str, Any]:
        """The trial configs' ``dataset``: a built-in's name, or the factory with its classes
        resolved (so trials need not count them again)."""
        d = self.spec.dataset
        if isinstance(d, str):
            return d
        info = self.data_info
        out = d.model_dump(mode="json")
        if info.task == "classification":
            out["num_classes"] = info.num_outputs
        return out

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial reports: mask learning plus the longest fine-tune phase."""
        return self.spec.train.epochs + max(self.train_ranges["finetune_epochs"])

    @property
    def distills(self) -> bool:
        """Some trial may distil from a teacher (``train.distill.alpha`` can exceed 0)."""
        return max(self.distill_ranges["alpha"]) > 0

    def teacher_model(self) -> dict[str, Any]:
        """The teacher's model as a trial config's ``model``: ``train.distill.teacher``, else
        the largest model the space builds (every range at its top, the largest choice, the
        first activation)."""
        t = self.spec.train.distill.teacher
        m = self.spec.model
        info = self.data_info
        if t is None and isinstance(m, ModelSpace):
            acts = (m.activation,) if isinstance(m.activation, str) else m.activation
            width = m.bounds("width")[1]
            return {
                "family": m.family,
                "widths": []
                if m.family == "resnet"
                else list(m.widths or (width,) * m.bounds("depth")[1]),
                "channels": [width] if m.family == "resnet" else list(m.channels),
                "activation": acts[0],
                "depth": max(m.resnet_depths),
            }
        if t is None:
            assert isinstance(m, FactorySpace)
            t = {
                "factory": m.factory,
                "params": {k: d.extreme_values[1] for k, d in self.model_dims.items()},
            }
        if "factory" in t:
            from prunetune.models import data_params

            fn = resolve(t["factory"], "train.distill.teacher.factory")
            params = data_params(fn, dict(t.get("params", {})), info.input_shape, info.num_outputs)
            return {"factory": t["factory"], "params": params}
        return dict(t)

    def load_data(self, device: str = "cpu") -> Any:
        """The study's data (a built-in loaded, or the factory's, probed once)."""
        d = self.spec.dataset
        if isinstance(d, str):
            from prunetune.datasets import load_dataset

            return load_dataset(d, data_dir=self.spec.data_dir, device=device)
        return _probe(d)[1].to(device)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.spec, item)


def parse_spec(
    data: Any, source: str = "study spec", base_dir: str | Path | None = None
) -> ValidatedSpec:
    """Validate a spec given as a mapping; factories are imported from ``base_dir`` (and the
    working directory) as well as the installed packages.

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
        return ValidatedSpec(spec, source, Path(base_dir) if base_dir is not None else None)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_spec(path: str | Path) -> ValidatedSpec:
    """Read and validate a study spec file (nothing is created on disk). Factories resolve
    from the spec's folder, the working directory and the installed packages; a data factory
    is called once.

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
    return parse_spec(data, str(p), p.parent)
