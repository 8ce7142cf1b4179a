"""Minimal training loop with pruning-method hooks (nanoGPT-style: one loop, no framework)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

import torch
from torch import nn

from prunetune._schema import DISTILL, TRAIN
from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._frozen import FrozenMasks, bake_masks
from prunetune.prune._topology import Topology


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _Data(Protocol):
    """What the loop reads of its data: the datasets package's in-memory ``Splits`` and its
    ``DatasetSplits`` (Datasets through a ``DataLoader``) both provide it."""

    input_shape: tuple[int, ...]

    @property
    def device(self) -> torch.device: ...

    @property
    def num_train(self) -> int: ...

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def eval_batches(self, split: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class _Tensors:
    """Plain in-memory tensors (an object with ``input_shape``, ``x_train``, ``y_train``,
    ``x_val``, ``y_val``) as :class:`_Data`."""

    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.num_train, generator=generator, device=generator.device)
        order = order.to(self.device)
        for i in range(0, self.num_train, batch_size):
            idx = order[i : i + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def eval_batches(self, split: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        for i in range(0, len(x), 4096):
            yield x[i : i + 4096], y[i : i + 4096]

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(self.num_train, generator=generator, device=generator.device)[:k]
        idx = idx.to(self.device)
        return self.x_train[idx], self.y_train[idx]


def _as_data(data: Any) -> _Data:
    if hasattr(data, "train_batches"):
        return data
    return _Tensors(tuple(data.input_shape), data.x_train, data.y_train, data.x_val, data.y_val)


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
    """Training budget and optimiser; values are checked against the trial-config schema
    (:data:`prunetune._schema.TRAIN`), the one table that bounds them everywhere.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per optimiser step.
        lr: learning rate of the weights (mask parameters have their own, see the method).
        optimizer: ``adam``, ``adamw`` or ``sgd`` (SGD uses ``momentum``).
        weight_decay: L2 / decoupled decay on the weights (never on mask logits).
        momentum: SGD momentum.
        loss: ``cross_entropy`` for classification; ``mse`` / ``l1`` for regression.
        seed: seeds weight init, shuffling and mask noise; same seed → same metrics.
        lr_schedule: the weights' learning rate over each phase: ``constant``, or ``cosine``
            (decays to 0 by the phase's last step; mask parameters keep theirs).
        finetune_epochs: epochs of a phase after the ``epochs`` of mask learning in which the
            masks are frozen at their hard values (:class:`~prunetune.prune._frozen.FrozenMasks`)
            and only the weights train, with a fresh optimiser at ``finetune_lr``.
        finetune_lr: the fine-tune phase's learning rate.
        distill_alpha: weight of a teacher's soft targets in the loss (0: no distillation; a
            teacher must be passed to :func:`train` otherwise). Classification only.
        distill_temperature: softmax temperature of teacher and student.
    """

    epochs: int = TRAIN["epochs"].default
    batch_size: int = TRAIN["batch_size"].default
    lr: float = TRAIN["lr"].default
    optimizer: Literal["adam", "adamw", "sgd"] = TRAIN["optimizer"].default
    weight_decay: float = TRAIN["weight_decay"].default
    momentum: float = TRAIN["momentum"].default
    loss: Literal["cross_entropy", "mse", "l1"] = "cross_entropy"
    seed: int = TRAIN["seed"].default
    lr_schedule: Literal["constant", "cosine"] = TRAIN["lr_schedule"].default
    finetune_epochs: int = TRAIN["finetune_epochs"].default
    finetune_lr: float = TRAIN["finetune_lr"].default
    distill_alpha: float = DISTILL["alpha"].default
    distill_temperature: float = DISTILL["temperature"].default

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.startswith("distill_"):
                key = f.name.removeprefix("distill_")
                DISTILL[key].check(f"train.distill.{key}", getattr(self, f.name))
            elif f.name != "loss":
                TRAIN[f.name].check(f"train.{f.name}", getattr(self, f.name))
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {sorted(LOSSES)}, but got {self.loss!r}.")
        if self.distill_alpha > 0 and self.loss != "cross_entropy":
            raise ValueError(
                f"train.distill.alpha {self.distill_alpha} needs a classification loss "
                f"(cross_entropy), but the loss is {self.loss!r}."
            )

    @property
    def total_epochs(self) -> int:
        """Mask learning and fine-tuning: the epochs a trial reports."""
        return self.epochs + self.finetune_epochs


@dataclass
class TrainResult:
    """What :func:`train` leaves: the per-epoch history, the training time and the final hard
    masks (the method's, or after a fine-tune phase the frozen ones: the same masks).

    Attributes:
        stopped_early: ``stop`` ended training after the last epoch of ``history``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    masks: dict[str, Mask] = field(default_factory=dict)
    method: PruningMethod | None = None
    stopped_early: bool = False


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    batch_size: int = 4096,
) -> float:
    """Accuracy (classification) or mean loss (regression) of ``model`` in eval mode."""
    return evaluate_batches(
        model,
        ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)),
        loss=loss,
    )


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss: str = "cross_entropy",
) -> float:
    """:func:`evaluate` over ``(x, y)`` batches (e.g. a data set's ``eval_batches("val")``)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for xb, yb in batches:
        out = model(xb)  # (b, num_outputs)
        if loss == "cross_entropy":
            total += float((out.argmax(1) == yb).sum())
        else:
            total += float(LOSSES[loss](out, yb, reduction="sum"))
        n += len(yb)
    model.train(was_training)
    return total / max(n, 1)


def _optimizer(
    model: nn.Module, method: PruningMethod, cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    extra = method.param_groups()
    taken = {id(p) for g in extra for p in g["params"]}
    weights = [p for p in model.parameters() if id(p) not in taken and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": cfg.weight_decay}, *extra]
    # Fused kernels: one pass per parameter instead of ~10 (mask logits double the state).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, fused=fused or None)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, fused=fused or None)


def _schedule(
    opt: torch.optim.Optimizer, kind: str, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Cosine decay of the weights' group (the first) over ``steps``; other groups constant."""
    if kind == "constant":
        return None

    def cosine(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))

    lambdas = [cosine] + [lambda _: 1.0] * (len(opt.param_groups) - 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def distill_loss(
    out: torch.Tensor,
    y: torch.Tensor,
    teacher_out: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - alpha) * CE(out, y) + alpha * T² * KL(softmax(teacher/T) || softmax(out/T))``
    (Hinton, Vinyals & Dean 2015; T² keeps the soft term's gradients on the hard term's scale)."""
    t = temperature
    hard = nn.functional.cross_entropy(out, y)
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(out / t, dim=1),
        nn.functional.log_softmax(teacher_out / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1.0 - alpha) * hard + (alpha * t * t) * soft


def train(
    model: nn.Module,
    method: PruningMethod,
    data: _Data,
    cfg: TrainConfig,
    *,
    batches: BatchFn | None = None,
    report: Callable[[dict[str, float]], None] | None = None,
    epoch_metrics: Callable[[PruningMethod], dict[str, float]] | None = None,
    topology: Topology | None = None,
    teacher: nn.Module | None = None,
    stop: Callable[[dict[str, float]], bool] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method``'s masks attached; returns the per-epoch history.

    Two phases: ``cfg.epochs`` of mask learning (the method's hooks run), then
    ``cfg.finetune_epochs`` in which the method's parametrizations are baked into the weights
    and its hard masks held fixed (:class:`~prunetune.prune._frozen.FrozenMasks`: the channels
    export would remove stay exactly zero) while the weights alone train with a fresh
    optimiser at ``cfg.finetune_lr``. Epochs are numbered across both phases.

    Args:
        model: the plain model (no masks yet), on the same device as ``data``.
        method: a pruning method, not yet attached.
        data: the datasets package's ``Splits`` (in memory) or ``DatasetSplits`` (through a
            ``DataLoader``), or any object with ``input_shape``, ``x_train``, ``y_train``,
            ``x_val`` and ``y_val`` tensors: its training split (batches, and random samples that
            data-dependent methods score on) and validation split (the per-epoch metric).
        cfg: training budget and optimiser.
        batches: called once per epoch with the loop's generator (seeded with ``cfg.seed``);
            returns that epoch's mini-batches over the training split. Default:
            ``data.train_batches(cfg.batch_size, g)``; pass one to transform them (e.g.
            ``augment_batches``).
        report: called after each epoch with ``{"epoch", "loss", "val_accuracy" | "val_loss",
            "phase" (0 mask learning, 1 fine-tuning), **method.stats(), **epoch_metrics(m)}``.
        epoch_metrics: extra per-epoch metrics (e.g. the kept parameters), given the method
            whose masks are current (``method``, then the frozen masks).
        topology: the model's topology, when the caller already built it.
        teacher: a trained model whose outputs the student distils (``cfg.distill_alpha``
            > 0); run in eval mode without gradients on every training batch.
        stop: called with each epoch's row after ``report``; true ends training there (e.g. a
            collapsed model), fine-tune phase included.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        ValueError: ``cfg.distill_alpha`` > 0 without a teacher.
    """
    data = _as_data(data)
    device = data.device
    if cfg.distill_alpha > 0 and teacher is None:
        raise ValueError(f"train.distill.alpha is {cfg.distill_alpha}, but no teacher was given.")
    if cfg.distill_alpha == 0:
        teacher = None
    if teacher is not None:
        teacher.eval()
    # Pruned weights get zero gradients, so their optimiser state decays into denormal floats,
    # which are ~100x slower on CPUs; flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    base_loss = LOSSES[cfg.loss]
    n_train = data.num_train
    steps = -(-n_train // cfg.batch_size)  # per epoch, for the methods' schedules
    if batches is None:

        def batches(g: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
            return data.train_batches(cfg.batch_size, g)

    def sample_batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return data.sample(k, gen)

    def loss_fn(out: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        if teacher is None:
            return base_loss(out, yb)
        with torch.no_grad():
            t_out = teacher(xb)
        return distill_loss(out, yb, t_out, cfg.distill_alpha, cfg.distill_temperature)

    ctx = PruneContext.for_model(
        model,
        data.input_shape,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        sample_batch=sample_batch,
        loss_fn=base_loss,
        seed=cfg.seed,
        topology=topology,
    )
    method.attach(model, ctx)
    result = TrainResult(method=method)
    start = time.perf_counter()
    phases = [(method, cfg.epochs, cfg.lr)]
    if cfg.finetune_epochs > 0:
        phases.append((None, cfg.finetune_epochs, cfg.finetune_lr))
    epoch = 0
    for phase, (active, n_epochs, lr) in enumerate(phases):
        if active is None:  # fine-tune: the masks reached so far, frozen
            masks = result.method.masks()
            result.method.detach()
            bake_masks(model)
            active = FrozenMasks(masks)
            active.attach(model, PruneContext(**{**vars(ctx), "epochs": n_epochs, "extra": {}}))
            result.method = active
        opt = _optimizer(model, active, cfg, lr)
        ctx.extra["optimizer"] = opt
        sched = _schedule(opt, cfg.lr_schedule, n_epochs * steps)
        step = 0
        for phase_epoch in range(n_epochs):
            active.on_epoch_start(phase_epoch)
            model.train()
            loss_sum = torch.zeros((), device=device)
            n_steps = 0
            for xb, yb in batches(gen):
                out = model(xb)  # (b, num_outputs)
                loss = loss_fn(out, yb, xb)
                pen = active.penalty()
                total = loss + pen if pen is not None else loss
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                n_steps += 1
                active.on_step(step)
                loss_sum += loss.detach()
            epoch += 1
            mean_loss = float(loss_sum) / max(n_steps, 1)
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(
                    f"training loss is {mean_loss} at epoch {epoch} (step {step} of phase {phase})."
                )
            active.on_epoch_end(phase_epoch)
            val = evaluate_batches(model, data.eval_batches("val"), loss=cfg.loss)
            row = {"epoch": epoch, "loss": mean_loss}
            row["val_accuracy" if cfg.loss == "cross_entropy" else "val_loss"] = val
            if cfg.finetune_epochs > 0:
                row["phase"] = float(phase)
            row.update(active.stats())
            if epoch_metrics is not None:
                row.update(epoch_metrics(active))
            result.history.append(row)
            if report is not None:
                report(row)
            if stop is not None and stop(row):
                result.stopped_early = True
                break
        if result.stopped_early:
            break
    result.masks = result.method.masks()
    result.seconds = time.perf_counter() - start
    return result
