"""The pruning-method interface and the registry that a study spec picks methods from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from prunetune.prune._hparams import HParamTable, validate_config
from prunetune.prune._topology import Layer, Topology


@dataclass(frozen=True)
class Mask:
    """Hard 0/1 masks of one prunable layer: ``weight`` has the weight's shape, ``bias`` is
    per output unit (``None`` when the bias is not masked)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class PruneContext:
    """What a method may use while attaching and training.

    Attributes:
        topology: the model's structure (prunable layers, channel groups, counts).
        input_shape: shape of one input sample.
        epochs: total training epochs.
        steps_per_epoch: optimiser steps per epoch.
        sample_batch: returns a training batch ``(x, y)`` of the given size (for methods that
            score weights on data, e.g. SNIP).
        loss_fn: the training loss ``loss_fn(logits, y)``.
        seed: the trial's seed.
    """

    topology: Topology
    input_shape: tuple[int, ...]
    epochs: int
    steps_per_epoch: int
    sample_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        input_shape: Sequence[int],
        *,
        epochs: int = 1,
        steps_per_epoch: int = 1,
        sample_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        topology: Topology | None = None,
    ) -> PruneContext:
        """The context of the plain ``model`` (its topology traced on a zero batch shaped
        ``(2, *input_shape)`` unless given); the loss defaults to cross entropy."""
        if topology is None:
            device = next(model.parameters()).device
            topology = Topology.build(model, torch.zeros(2, *input_shape, device=device))
        return cls(
            topology=topology,
            input_shape=tuple(input_shape),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            sample_batch=sample_batch,
            loss_fn=loss_fn or torch.nn.functional.cross_entropy,
            seed=seed,
        )

    @property
    def layers(self) -> list[Layer]:
        """The prunable layers, in forward order."""
        return self.topology.layers

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class PruningMethod(ABC):
    """A pruning method: learns or scores masks; ``prunetune.prune.export`` does the surgery.

    Lifecycle, driven by :func:`prunetune.prune.train`: ``attach`` once before training, then
    per epoch ``on_epoch_start``, per optimiser step ``penalty`` (added to the loss) and
    ``on_step``, and ``on_epoch_end``. ``masks`` returns the current hard masks at any time.

    Subclasses set ``name`` (the registry key a study spec uses) and ``hparams`` (the one table
    that validates configs and builds the search space).
    """

    name: ClassVar[str]
    hparams: ClassVar[HParamTable]

    def __init__(self, **config: Any) -> None:
        self.config = validate_config(self.hparams, config, where="method")

    @classmethod  # noqa: B027 - optional hook
    def check(cls, topology: Topology) -> None:
        """Raise ``ValueError`` (one line naming the method and the layer) when this method
        cannot prune a model of this structure; called before training starts."""

    @abstractmethod
    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        """Attach masks to ``model`` (parametrizations) before training."""

    @abstractmethod
    def masks(self) -> dict[str, Mask]:
        """The current hard masks, keyed by the prunable layer's name."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra optimiser parameter groups (e.g. mask logits with their own learning rate)."""
        return []

    def penalty(self) -> torch.Tensor | None:
        """A term added to the training loss at each step, or None."""
        return None

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before each epoch (0-based)."""

    def on_step(self, step: int) -> None:  # noqa: B027 - optional hook
        """Called after each optimiser step (global step count, 1-based)."""

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called after each epoch (0-based); methods may prune or rewind here."""

    def detach(self) -> None:  # noqa: B027 - optional hook
        """Remove hooks the method registered on the model; called before its masks are baked
        in (the fine-tune phase), after which the method no longer acts on the model."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging per epoch (temperature, penalty, ...)."""
        return {}

    def last_event_step(self) -> int:
        """The optimiser step of this method's last scheduled prune or rewind (after
        ``attach``). Accuracy drops at such an event and recovers as the weights train on, so
        a check for a model that fell to chance waits a full epoch past it. Default 0: masks
        set at initialisation, or learned all along (a fall to chance is then the method's
        doing, e.g. Gumbel's penalty)."""
        return 0

    def settled(self, epochs_done: int) -> bool:
        """Whether a full epoch of training has followed the last scheduled prune or rewind,
        after ``epochs_done`` epochs (epochs of a fine-tune phase count on)."""
        last = self.last_event_step()
        if last <= 0:
            return True
        per = self.ctx.steps_per_epoch  # type: ignore[attr-defined]
        return epochs_done * per >= last + per

    def budget_count(self, now: int) -> int:
        """The kept parameters this method will reach, given ``now`` (the count of its current
        masks): a method that prunes late to a fixed budget answers its budget's count, so an
        early-stopping rung does not compare it as dense. Default: ``now`` (masks that are
        learned, such as Gumbel's, are what they are)."""
        return now


METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a method selectable by ``cls.name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"A pruning method named {cls.name!r} is already registered.")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[PruningMethod]:
    if name not in METHODS:
        raise ValueError(f"method.name must be one of {sorted(METHODS)}, but got {name!r}.")
    return METHODS[name]


def make_method(config: Mapping[str, Any]) -> PruningMethod:
    """Build a method from ``{"name": ..., **hyperparameters}``."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    return get_method(name)(**cfg)
