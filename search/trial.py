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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunetune.search._errors import ConfigError, format_pydantic


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["mlp", "lenet5", "cnn", "resnet"] = "mlp"
    widths: tuple[int, ...] = Field((64, 32), description="hidden fully connected widths")
    channels: tuple[int, ...] = Field((), description="conv channels (cnn/lenet5; resnet: [width])")
    depth: Literal[8, 14, 20, 32] = Field(20, description="resnet depth (6n + 2)")
    activation: Literal["relu", "silu", "tanh", "gelu"] = "relu"

    @field_validator("widths", "channels")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for w in v:
            if w < 1:
                raise ValueError(f"every width must be >= 1, got {w}")
        return v


class TrainSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=1 << 20)
    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    loss: Literal["auto", "cross_entropy", "mse", "l1"] = Field(
        "auto", description="auto: cross_entropy (classification) or mse (regression)"
    )


class TrialConfig(BaseModel):
    """Everything one trial needs; validated on construction, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "digits"
    data_dir: str | None = None
    model: ModelConfig = ModelConfig()
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "gumbel"})
    train: TrainSection = TrainSection()
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: leave)")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        from prunetune.datasets import DATASETS

        if v not in DATASETS:
            raise ValueError(f"must be one of {list(DATASETS)}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: dict[str, Any]) -> dict[str, Any]:
        from prunetune.prune import get_method, validate_config

        cfg = dict(v)
        name = cfg.pop("name", "gumbel")
        table = get_method(name).hparams
        return {"name": name, **validate_config(table, cfg, where="method")}


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
    _loss_for(cfg.train.loss, dataset_info(cfg.dataset).task, cfg.dataset)  # fits the task
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


def build_trial_model(config: Mapping[str, Any] | TrialConfig) -> torch.nn.Module:
    """The plain (unmasked, untrained) model of a trial config, built as ``run_trial`` builds
    it (same seed, same initial weights)."""
    from prunetune.datasets import dataset_info
    from prunetune.models import build_family

    cfg = parse_config(config)
    info = dataset_info(cfg.dataset)
    torch.manual_seed(cfg.train.seed)
    return build_family(
        cfg.model.family,
        info.input_shape,
        info.num_outputs,
        cfg.model.widths,
        cfg.model.channels,
        cfg.model.activation,
        depth=cfg.model.depth,
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
    model = build_trial_model(config)
    flat = load_masked_state(model, d / "model")
    masks: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        layer, _, part = key.rpartition(".")
        masks.setdefault(layer, {})[part] = t
    hard = {n: Mask(weight=m["weight"], bias=m.get("bias")) for n, m in masks.items()}
    example = torch.zeros(2, *inputs["shape"])
    return export_compact(model, hard, example).model.eval(), inputs


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
    allowed = ("cross_entropy",) if task == "classification" else ("mse", "l1")
    if loss == "auto":
        return allowed[0]
    if loss not in allowed:
        raise ConfigError(
            f"train.loss {loss!r} does not fit dataset {dataset!r} ({task}); "
            f"use one of {['auto', *allowed]}"
        )
    return loss


def run_trial(
    config: Mapping[str, Any] | TrialConfig,
    report: Callable[[dict[str, float]], None] | None = None,
) -> TrialResult:
    """Train one configuration, export its compact model and measure it.

    Validation and test accuracy are measured on the exported compact model (what a user
    fetches); test accuracy is recorded, never used to select.

    Args:
        config: a :class:`TrialConfig` or a mapping validated into one.
        report: called after each epoch with that epoch's metrics.

    Returns:
        metrics ``val_accuracy``, ``test_accuracy``, ``params``, ``params_dense``, ``density``,
        ``live_neurons``, ``seconds`` (training time), plus the history and the export.
    """
    from prunetune.datasets import batches, load_dataset
    from prunetune.prune import (
        Topology,
        TrainConfig,
        evaluate,
        export_compact,
        make_method,
        plain_copy,
        train,
    )

    cfg = parse_config(config)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, device=str(device))
    loss = _loss_for(cfg.train.loss, data.task, cfg.dataset)
    metric = "accuracy" if loss == "cross_entropy" else "loss"
    model = build_trial_model(cfg).to(device)
    topology = Topology.build(model, data.x_train[:2])
    method = make_method(cfg.method)
    try:
        type(method).check(topology)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tcfg = TrainConfig(loss=loss, **cfg.train.model_dump(exclude={"loss"}))

    def epoch_metrics() -> dict[str, float]:
        weights = {name: m.weight for name, m in method.masks().items()}
        params = topology.count(model, weights)
        return {"density": params / topology.dense, "params": float(params)}

    t0 = time.perf_counter()
    start_cpu = time.process_time()  # the process's CPU before its first training step
    result = train(
        model,
        method,
        data,
        tcfg,
        batches=lambda g: batches(data.x_train, data.y_train, tcfg.batch_size, generator=g),
        report=report,
        epoch_metrics=epoch_metrics,
        topology=topology,
    )
    masks = method.masks()
    ex = export_compact(model, masks, topology=topology)
    dense = plain_copy(model, masks).cpu()
    ex.model.to(device)
    val = evaluate(ex.model, data.x_val, data.y_val, loss=loss)
    test = evaluate(ex.model, data.x_test, data.y_test, loss=loss)
    ex.model.cpu()
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
    }
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
            "range": [0.0, 1.0],
            "mean": float(data.mean),
            "std": float(data.std),
        },
    )


__all__ = [
    "TrialConfig",
    "TrialResult",
    "build_trial_model",
    "flat_config",
    "parse_config",
    "rebuild_compact",
    "run_trial",
]
