"""One trial: config → train with a pruning method → export → metrics. No Ray, no MLflow.

``run_trial`` is a plain function taking a config and an optional ``report(metrics)`` callback,
so it runs the same in a notebook, under Ray Tune (``prunetune.search.runner``) or wrapped by
MLflow tracking.

Example:
    >>> from prunetune.search.trial import run_trial
    >>> out = run_trial({"dataset": "digits", "train": {"epochs": 1},
    ...                  "method": {"name": "gumbel", "lam": 1.0}})
    >>> sorted(out.metrics)[:3]
    ['density', 'live_neurons', 'params']
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from torch import nn

from prunetune._schema import ACTIVATIONS, DISTILL, FAMILIES, RESNET_DEPTHS, TRAIN, resolve_loss
from prunetune.search._errors import ConfigError, format_pydantic


class ModelConfig(BaseModel):
    """A built-in family's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal[FAMILIES] = "mlp"  # type: ignore[valid-type]
    widths: tuple[int, ...] = Field((64, 32), description="hidden fully connected widths")
    channels: tuple[int, ...] = Field((), description="conv channels (cnn/lenet5; resnet: [width])")
    depth: Literal[RESNET_DEPTHS] = Field(20, description="resnet depth (6n + 2)")  # type: ignore[valid-type]
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]

    @field_validator("widths", "channels")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for w in v:
            if w < 1:
                raise ValueError(f"every width must be >= 1, got {w}")
        return v


class FactoryModel(BaseModel):
    """A user's model: ``factory`` (``"package.module:callable"``) called with ``params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str
    params: dict[str, Any] = Field(default_factory=dict)


class FactoryData(BaseModel):
    """A user's data: ``factory`` called with ``params`` (see :mod:`prunetune.datasets`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str
    params: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = Field(None, ge=1)
    name: str | None = None


def _model_kind(v: Any) -> str:
    # tags start with "~": error messages leave them out of field paths
    if isinstance(v, FactoryModel) or (isinstance(v, dict) and "factory" in v):
        return "~factory"
    return "~family"


ModelChoice = Annotated[
    Annotated[ModelConfig, Tag("~family")] | Annotated[FactoryModel, Tag("~factory")],
    Discriminator(_model_kind),
]


def _distill_section() -> type[BaseModel]:
    """``train.distill`` of a trial config: :data:`prunetune._schema.DISTILL` and the teacher's
    architecture (``None``: the trial's own model, dense)."""

    def check(cls: Any, v: Any, info: ValidationInfo) -> Any:
        return DISTILL[info.field_name].check(f"train.distill.{info.field_name}", v)

    fields: dict[str, Any] = {
        name: (Any, Field(p.default, description=p.help)) for name, p in DISTILL.items()
    }
    fields["teacher"] = (
        ModelChoice | None,
        Field(None, description="the teacher's model (default: the trial's own, dense)"),
    )
    return create_model(
        "DistillSection",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __validators__={"_check": field_validator(*DISTILL)(check)},
        **fields,
    )


DistillSection = _distill_section()


def _train_section() -> type[BaseModel]:
    """``train`` of a trial config: one field per option of the schema, each checked by it."""

    def check(cls: Any, v: Any, info: ValidationInfo) -> Any:
        return TRAIN[info.field_name].check(f"train.{info.field_name}", v)

    fields: dict[str, Any] = {
        name: (Any, Field(p.default, description=p.help)) for name, p in TRAIN.items()
    }
    fields["distill"] = (DistillSection, Field(DistillSection(), description="distillation"))
    return create_model(
        "TrainSection",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __validators__={"_check": field_validator(*TRAIN)(check)},
        **fields,
    )


TrainSection = _train_section()


class TrialConfig(BaseModel):
    """Everything one trial needs; validated on construction, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str | FactoryData = "digits"
    data_dir: str | None = None
    model: ModelChoice = ModelConfig()
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "gumbel"})
    train: TrainSection = TrainSection()  # type: ignore[valid-type]
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: leave)")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        from prunetune.datasets import DATASETS

        if isinstance(v, str) and v not in DATASETS:
            raise ValueError(f"must be one of {list(DATASETS)} or {{factory: ...}}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: dict[str, Any]) -> dict[str, Any]:
        from prunetune.prune import get_method, validate_config

        cfg = dict(v)
        name = cfg.pop("name", "gumbel")
        table = get_method(name).hparams
        return {"name": name, **validate_config(table, cfg, where="method")}

    @property
    def dataset_label(self) -> str:
        d = self.dataset
        return d if isinstance(d, str) else d.name or d.factory


def parse_config(config: Mapping[str, Any] | TrialConfig) -> TrialConfig:
    """Validate a trial config.

    Raises:
        ConfigError: naming the field path and the bad value.
    """
    from prunetune.datasets import dataset_info

    if isinstance(config, TrialConfig):
        return config
    try:
        cfg = TrialConfig.model_validate(dict(config))
    except ValidationError as e:
        raise ConfigError(format_pydantic(e, "trial config")) from None
    if isinstance(cfg.dataset, str):  # a factory's task is known once its data loads
        _loss_for(cfg.train.loss, dataset_info(cfg.dataset).task, cfg.dataset)
    return cfg


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"device must be auto, cpu, cuda or cuda:N, but got {device!r}."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {device!r}, but CUDA is not available on this machine.")
    return dev


@dataclass
class TrialResult:
    """Metrics and the compact model of one finished trial."""

    metrics: dict[str, float | int]
    history: list[dict[str, float]]
    config: dict[str, Any]
    export: Any = None  # prunetune.prune.ExportResult
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    masks: dict[str, Any] = field(default_factory=dict)  # hard masks per prunable layer
    dense: Any = None  # the masked dense model with masks baked in (prunetune.prune.plain_copy)
    inputs: dict[str, Any] = field(default_factory=dict)  # what the model expects, raw

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "history": self.history, "config": self.config}

    def save(self, directory: str | Path) -> Path:
        """The trial's files (its checkpoint), tensors that ``weights_only`` loaders read and
        JSON: ``model/weights.safetensors`` + ``model/masks.safetensors`` (the masked dense
        model, re-trainable: :func:`prunetune.prune.deliver.load_masked_state`),
        ``model/input.json`` (shape, dtype, range and standardisation of raw inputs),
        ``model/kept_units.json``, for built-in ``nn.Sequential`` families also the compact
        ``model/{weights.pt,arch.json}``, and ``metrics/config/history/per_layer.json``."""
        from prunetune.prune.deliver import save_masked_state

        d = Path(directory)

        def dump(name: str, obj: Any) -> None:
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(json.dumps(obj, indent=2, default=float) + "\n")

        dump("metrics.json", self.metrics)
        dump("config.json", self.config)
        dump("history.json", self.history)
        dump("per_layer.json", self.per_layer)
        if (ex := self.export) is not None:
            dump("model/kept_units.json", ex.kept_units)
            dump("model/input.json", self.inputs)
            if ex.arch is not None:
                dump("model/arch.json", ex.arch)
                state = {k: v.detach().cpu().contiguous() for k, v in ex.model.state_dict().items()}
                torch.save(state, d / "model" / "weights.pt")
        if self.dense is not None:
            save_masked_state(self.dense, self.masks, d / "model")
        return d


def build_trial_model(config: Mapping[str, Any] | TrialConfig, info: Any = None) -> torch.nn.Module:
    """The plain (unmasked, untrained) model of a trial config, built as ``run_trial`` builds
    it (same seed, same initial weights).

    Args:
        info: the data's ``input_shape`` and ``num_outputs`` (e.g. its ``Splits``); default:
            the built-in data set's description. A factory-data config needs it.
    """
    from prunetune.models import build_family, build_from_factory

    cfg = parse_config(config)
    if info is None:
        if not isinstance(cfg.dataset, str):
            raise ValueError(
                "build_trial_model needs `info` (input_shape, num_outputs) for a data factory"
            )
        from prunetune.datasets import dataset_info

        info = dataset_info(cfg.dataset)
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    if isinstance(m, FactoryModel):
        from prunetune._factory import FactoryError, import_paths

        try:
            with import_paths(Path.cwd()):
                return build_from_factory(
                    m.factory,
                    m.params,
                    input_shape=info.input_shape,
                    num_outputs=info.num_outputs,
                )
        except FactoryError as e:
            raise ConfigError(str(e)) from None
    return build_family(
        m.family,
        info.input_shape,
        info.num_outputs,
        m.widths,
        m.channels,
        m.activation,
        depth=m.depth,
    )


def rebuild_compact(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The compact model of a saved trial (:meth:`TrialResult.save`) and its input description:
    the model is rebuilt from ``config.json``, loaded with the masked dense weights, and cut
    by :func:`prunetune.prune.export_compact` exactly as the trial cut it.

    Raises:
        ValueError: the directory lacks the files, or they do not fit the config's model.
    """
    from prunetune.prune import Mask, export_compact
    from prunetune.prune.deliver import load_masked_state

    d = Path(directory)
    for f in ("config.json", "model/weights.safetensors", "model/masks.safetensors"):
        if not (d / f).is_file():
            raise ValueError(f"{d} must contain {f} (a saved trial).")
    config = json.loads((d / "config.json").read_text())
    inputs = json.loads((d / "model" / "input.json").read_text())
    shape = _Shape(tuple(inputs["shape"]), inputs.get("num_outputs"))
    model = build_trial_model(config, shape if shape.num_outputs is not None else None)
    flat = load_masked_state(model, d / "model")
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        layer, _, part = key.rpartition(".")
        masks.setdefault(layer, {})[part] = t
    hard = {n: Mask(weight=m["weight"], bias=m.get("bias")) for n, m in masks.items()}
    example = torch.zeros(2, *inputs["shape"])
    return export_compact(model, hard, example).model.eval(), inputs


@dataclass(frozen=True)
class _Shape:
    input_shape: tuple[int, ...]
    num_outputs: int | None


def flat_config(config: TrialConfig) -> dict[str, Any]:
    """``{"model.widths": "[300, 100]", "method.lam": 0.5, ...}`` — plain scalars for logging."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, tuple | list):
            out[prefix] = list(value)
        else:
            out[prefix] = value

    walk("", config.model_dump())
    return out


def _loss_for(loss: str, task: str, dataset: str) -> str:
    """``train.loss`` resolved for the dataset's task (``auto``: cross entropy or MSE)."""
    try:
        return resolve_loss(loss, task, repr(dataset))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_trial(
    config: Mapping[str, Any] | TrialConfig,
    report: Callable[[dict[str, float]], None] | None = None,
    *,
    teachers: Mapping[str, Any] | None = None,
) -> TrialResult:
    """Train one configuration, export its compact model and measure it.

    Validation and test accuracy are measured on the exported compact model (what a user
    fetches); test accuracy is recorded, never used to select.

    Args:
        config: a :class:`TrialConfig` or a mapping validated into one.
        report: called after each epoch with that epoch's metrics; ``settling`` is 1 in the
            epochs before a full one has followed the method's last scheduled prune or rewind.
        teachers: distillation teachers' weights by key (:mod:`prunetune.search._teacher`),
            as a study's driver ships them; a teacher not given is loaded from prunetune's
            cache or trained there, once.

    Returns:
        metrics ``val_accuracy``, ``test_accuracy``, ``params``, ``params_dense``, ``density``,
        ``live_neurons``, ``seconds`` (training time), plus the history and the export.
    """
    from prunetune.datasets._factory import load_data
    from prunetune.prune import (
        Topology,
        TrainConfig,
        evaluate_batches,
        export_compact,
        make_method,
        plain_copy,
        train,
    )

    cfg = parse_config(config)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    t = cfg.train
    data = _load(load_data, cfg, device)
    loss = _loss_for(t.loss, data.task, cfg.dataset_label)
    metric = "accuracy" if loss == "cross_entropy" else "loss"
    model = build_trial_model(cfg, data).to(device)
    topology = Topology.build(model, data.example(2))
    method = make_method(cfg.method)
    try:
        type(method).check(topology)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        tcfg = TrainConfig(
            loss=loss,
            distill_alpha=t.distill.alpha,
            distill_temperature=t.distill.temperature,
            **{k: getattr(t, k) for k in _TRAIN_KEYS},
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    teacher, teacher_trained = None, None
    if tcfg.distill_alpha > 0:
        from prunetune.search._teacher import teacher_for

        got = teacher_for(cfg, data, device, loss, given=teachers)
        teacher = got.model
        teacher_trained = int(got.trained)
    epoch_batches = None
    if t.augment:
        from prunetune.datasets._augment import augment_batches

        def epoch_batches(g: torch.Generator) -> Any:
            return augment_batches(data.train_batches(tcfg.batch_size, g), t.augment, generator=g)

    chance = _Chance.of(data) if loss == "cross_entropy" else None
    probe = _probe_inputs(data)

    def epoch_metrics(active: Any) -> dict[str, float]:
        weights = {name: m.weight for name, m in active.masks().items()}
        now = topology.count(model, weights)
        # what an early-stopping rung compares: a late pruner's budget, not its dense start
        params = active.budget_count(now)
        row = {"density": params / topology.dense, "params": float(params)}
        if params != now:
            row["params_current"] = float(now)
        if _input_independent(model, probe):
            row["collapsed"] = 1.0
        return row

    def report_epoch(row: dict[str, float]) -> None:
        # ``settling``: less than an epoch past the method's last scheduled prune or rewind (a
        # late pruner is still dense, a lottery ticket just rewound near chance). An
        # early-stopping rung lets such an epoch pass unjudged (search/_moasha.py).
        if not method.settled(int(row["epoch"])):
            row["settling"] = 1.0
        if report is not None:
            report(row)

    learned = [False]  # validation accuracy was above chance at some epoch

    def stop(row: dict[str, float]) -> bool:
        # At chance after having learned: the sparsity pressure destroyed the model. A model
        # that has not learned yet (the first epochs of a small data set) trains on, and so
        # does one within an epoch of its method's last scheduled prune or rewind (magnitude,
        # lottery, the neuron schedules), from which it recovers.
        if chance is not None:
            at_chance = chance.holds(row["val_accuracy"])
            if at_chance and learned[0] and method.settled(int(row["epoch"])):
                row["collapsed"] = 1.0
            learned[0] = learned[0] or not at_chance
        return bool(row.get("collapsed"))

    t0 = time.perf_counter()
    start_cpu = time.process_time()  # the process's CPU before its first training step
    result = train(
        model,
        method,
        data,
        tcfg,
        batches=epoch_batches,
        report=report_epoch,
        epoch_metrics=epoch_metrics,
        topology=topology,
        teacher=teacher,
        stop=stop,
    )
    masks = result.masks
    ex = export_compact(model, masks, topology=topology)
    dense = plain_copy(model, masks).cpu()
    ex.model.to(device)
    val = evaluate_batches(ex.model, data.eval_batches("val"), loss=loss)
    test = evaluate_batches(ex.model, data.eval_batches("test"), loss=loss)
    ex.model.cpu()
    collapsed = (
        result.stopped_early
        or _input_independent(ex.model, probe.cpu())
        or (chance is not None and learned[0] and chance.holds(val))
    )
    metrics: dict[str, float | int] = {
        f"val_{metric}": val,
        f"test_{metric}": test,
        "params": ex.params,
        "params_dense": ex.params_dense,
        "density": ex.density,
        "live_neurons": ex.live_neurons,
        "seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0,
        "start_cpu_s": start_cpu,
        "collapsed": int(collapsed),
    }
    if teacher_trained is not None:
        metrics["teacher_trained"] = teacher_trained  # 1: this trial trained its teacher
    return TrialResult(
        metrics=metrics,
        history=result.history,
        config=cfg.model_dump(mode="json"),
        export=ex,
        per_layer=ex.per_layer,
        masks=masks,
        dense=dense,
        inputs={
            "shape": list(data.input_shape),
            "dtype": "float32",
            # built-in data: raw pixels in [0, 1]; a factory's inputs: as it returns them
            "range": [0.0, 1.0] if isinstance(cfg.dataset, str) else None,
            "mean": float(data.mean),
            "std": float(data.std),
            "num_outputs": int(data.num_outputs),
        },
    )


_TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "seed",
    "lr_schedule",
    "finetune_epochs",
    "finetune_lr",
)

#: A classifier within this (or two standard errors of the validation estimate, if more) of
#: always answering the validation split's most frequent class is at chance.
CHANCE_MARGIN = 0.01


@dataclass(frozen=True)
class _Chance:
    """Chance level on the validation split: the share of its most frequent class."""

    share: float
    margin: float

    @classmethod
    def of(cls, data: Any) -> _Chance:
        counts = torch.zeros(0, dtype=torch.long)
        for _, y in data.eval_batches("val"):
            c = torch.bincount(y.detach().long().flatten().cpu())
            n = max(len(counts), len(c))
            counts = nn.functional.pad(counts, (0, n - len(counts))) + nn.functional.pad(
                c, (0, n - len(c))
            )
        total = int(counts.sum())
        if total == 0:
            return cls(0.0, 0.0)
        p = float(counts.max()) / total
        return cls(p, max(CHANCE_MARGIN, 2.0 * math.sqrt(p * (1.0 - p) / total)))

    def holds(self, accuracy: float) -> bool:
        return accuracy <= self.share + self.margin


#: Validation inputs the collapse check feeds a model. A handful is not enough: in a net of a
#: dozen ReLU units, eight inputs can leave every unit of a layer off, and the model then gives
#: them one output though it still tells other inputs apart (magnitude_neuron keeping 0.6% of
#: Fashion-MNIST LeNet-300-100 was stopped as collapsed at 25.6% with 14 units live, with 8;
#: unstopped, it ends at 41.9% with 3).
PROBE_INPUTS = 256


def _probe_inputs(data: Any, k: int = PROBE_INPUTS) -> torch.Tensor:
    """The first ``k`` validation inputs (fewer if the split is smaller), to tell whether a
    model's output still depends on its input."""
    xs, n = [], 0
    for x, _ in data.eval_batches("val"):
        xs.append(x[: k - n])
        n += len(xs[-1])
        if n >= k:
            break
    return torch.cat(xs)


@torch.no_grad()
def _input_independent(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """The model (in eval mode, hard masks) gives every input of ``x`` the same output: no live
    path from input to output is left. Residual nets with one dead branch still pass."""
    if len(x) < 2:
        return False
    was_training = model.training
    model.eval()
    try:
        out = model(x).float().flatten(1)
    finally:
        model.train(was_training)
    spread = (out - out[:1]).abs().max()
    return bool(spread <= 1e-6 * (1.0 + out.abs().max()))


def _load(load_data: Callable[..., Any], cfg: TrialConfig, device: torch.device) -> Any:
    """The trial's data on ``device``; a factory's failures as :class:`ConfigError`."""
    from prunetune._factory import FactoryError, import_paths

    dataset = cfg.dataset if isinstance(cfg.dataset, str) else cfg.dataset.model_dump()
    try:
        with import_paths(Path.cwd()):
            return load_data(
                dataset,
                data_dir=cfg.data_dir,
                device=str(device),
                num_workers=cfg.train.num_workers,
            )
    except FactoryError as e:
        raise ConfigError(str(e)) from None


__all__ = [
    "TrialConfig",
    "TrialResult",
    "build_trial_model",
    "flat_config",
    "parse_config",
    "rebuild_compact",
    "run_trial",
]
