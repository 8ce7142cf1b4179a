"""Minimal training loop with pruning-method hooks (nanoGPT-style: one loop, no framework)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from prunetune.prune._base import PruneContext, PruningMethod
from prunetune.prune._topology import Topology


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Data(Protocol):
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


#: One epoch of ``(x, y)`` mini-batches over the training split, shuffled by the generator it
#: is given (the loop's, seeded with ``TrainConfig.seed``).
BatchFn = Callable[[torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
}


@dataclass(frozen=True)
class TrainConfig:
    """Training budget and optimiser.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per optimiser step.
        lr: learning rate of the weights (mask parameters have their own, see the method).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (SGD uses ``momentum``).
        weight_decay: L2 / decoupled decay on the weights (never on mask logits).
        momentum: SGD momentum.
        loss: ``cross_entropy`` for classification; ``mse`` / ``l1`` for regression.
        seed: seeds weight init, shuffling and mask noise; same seed → same metrics.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    loss: Literal["cross_entropy", "mse", "l1"] = "cross_entropy"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, but got {self.epochs!r}.")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, but got {self.batch_size!r}.")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, but got {self.lr!r}.")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(
                f"train.optimizer must be one of ['adam', 'adamw', 'sgd'], but got {self.optimizer!r}."
            )
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {sorted(LOSSES)}, but got {self.loss!r}.")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    batch_size: int = 4096,
) -> float:
    """Accuracy (classification) or mean loss (regression) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])  # (b, num_outputs)
        yb = y[i : i + batch_size]
        if loss == "cross_entropy":
            total += float((out.argmax(1) == yb).sum())
        else:
            total += float(LOSSES[loss](out, yb, reduction="sum"))
    model.train(was_training)
    return total / len(x)


def _optimizer(model: nn.Module, method: PruningMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    extra = method.param_groups()
    taken = {id(p) for g in extra for p in g["params"]}
    weights = [p for p in model.parameters() if id(p) not in taken and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": cfg.weight_decay}, *extra]
    # Fused kernels: one pass per parameter instead of ~10 (mask logits double the state).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, fused=fused or None)


def train(
    model: nn.Module,
    method: PruningMethod,
    data: _Data,
    cfg: TrainConfig,
    *,
    batches: BatchFn,
    report: Callable[[dict[str, float]], None] | None = None,
    epoch_metrics: Callable[[], dict[str, float]] | None = None,
    topology: Topology | None = None,
) -> TrainResult:
    """Train ``model`` with ``method``'s masks attached; returns the per-epoch history.

    Args:
        model: the plain model (no masks yet), on the same device as ``data``.
        method: a pruning method, not yet attached.
        data: in-memory splits, such as the datasets package's ``Splits``: ``input_shape``,
            ``x_train``/``y_train`` (what data-dependent methods score on) and
            ``x_val``/``y_val`` (the per-epoch metric).
        cfg: training budget and optimiser.
        batches: called once per epoch with the loop's generator (seeded with ``cfg.seed``);
            returns that epoch's mini-batches of ``cfg.batch_size`` over ``data``'s training
            split, e.g. ``lambda g: batches(data.x_train, data.y_train, cfg.batch_size,
            generator=g)`` with the datasets package's ``batches``.
        report: called after each epoch with ``{"epoch", "loss", "val_accuracy" | "val_loss",
            **method.stats(), **epoch_metrics()}``.
        epoch_metrics: extra per-epoch metrics (e.g. the kept parameters).
        topology: the model's topology, when the caller already built it.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    device = data.x_train.device
    # Pruned weights get zero gradients, so their optimiser state decays into denormal floats,
    # which are ~100x slower on CPUs; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    loss_fn = LOSSES[cfg.loss]
    n_train = len(data.x_train)
    steps = -(-n_train // cfg.batch_size)  # per epoch, for the methods' schedules

    def sample_batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(n_train, generator=gen, device=device)[:k]
        return data.x_train[idx], data.y_train[idx]

    ctx = PruneContext.for_model(
        model,
        data.input_shape,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        sample_batch=sample_batch,
        loss_fn=loss_fn,
        seed=cfg.seed,
        topology=topology,
    )
    method.attach(model, ctx)
    opt = _optimizer(model, method, cfg)
    ctx.extra["optimizer"] = opt
    result = TrainResult()
    start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        method.on_epoch_start(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        n_steps = 0
        for xb, yb in batches(gen):
            out = model(xb)  # (b, num_outputs)
            loss = loss_fn(out, yb)
            pen = method.penalty()
            total = loss + pen if pen is not None else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            step += 1
            n_steps += 1
            method.on_step(step)
            loss_sum += loss.detach()
        mean_loss = float(loss_sum) / max(n_steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"training loss is {mean_loss} at epoch {epoch + 1} (step {step})."
            )
        method.on_epoch_end(epoch)
        val = evaluate(model, data.x_val, data.y_val, loss=cfg.loss)
        row = {"epoch": epoch + 1, "loss": mean_loss}
        row["val_accuracy" if cfg.loss == "cross_entropy" else "val_loss"] = val
        row.update(method.stats())
        if epoch_metrics is not None:
            row.update(epoch_metrics())
        result.history.append(row)
        if report is not None:
            report(row)
    result.seconds = time.perf_counter() - start
    return result
