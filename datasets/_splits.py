"""The in-memory train/validation/test tensors of one dataset."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

__all__ = ["TASKS", "Splits", "Task"]

Task = Literal["classification", "regression"]
#: The values ``Splits.task`` accepts.
TASKS: tuple[str, ...] = get_args(Task)

_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True, eq=False, repr=False)
class Splits:
    """Train, validation and test tensors of one dataset, validated on construction.

    Images keep their ``(N, C, H, W)`` layout; models flatten them themselves. Inputs are
    ``float32`` and already normalised; classification targets are ``int64`` class indices.

    ``eq=False`` because comparing tensors with ``==`` is element-wise, not a bool; compare the
    fields with ``torch.equal`` instead.

    Attributes:
        name: Registry name of the dataset, e.g. ``"digits"``.
        task: ``"classification"`` or ``"regression"``.
        input_shape: Shape of one sample, e.g. ``(1, 28, 28)``.
        num_outputs: Number of classes (classification) or of regression targets.
        x_train: Training inputs, ``(n_train, *input_shape)``, ``float32``.
        y_train: Training targets, ``(n_train,)``; ``int64`` for classification.
        x_val: Validation inputs, carved from the original training data.
        y_val: Validation targets.
        x_test: Test inputs.
        y_test: Test targets.
        classes: Human-readable class names, ``len(classes) == num_outputs`` for
            classification; empty for regression.
        mean: The scalar subtracted from raw inputs (scaled to ``[0, 1]``) before ``x`` was
            stored; 0.0 when no standardisation was applied.
        std: The scalar raw inputs were divided by after subtracting ``mean``; 1.0 when none.

    Example:
        >>> import torch
        >>> s = Splits(
        ...     name="toy", task="classification", input_shape=(2,), num_outputs=2,
        ...     x_train=torch.zeros(4, 2), y_train=torch.tensor([0, 1, 0, 1]),
        ...     x_val=torch.zeros(1, 2), y_val=torch.tensor([1]),
        ...     x_test=torch.zeros(2, 2), y_test=torch.tensor([0, 1]),
        ...     classes=("a", "b"),
        ... )
        >>> s.sizes
        {'train': 4, 'val': 1, 'test': 2}
    """

    name: str
    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"The 'task' field of Splits must be one of {TASKS}, but got {self.task!r}."
            )
        if not (isinstance(self.num_outputs, int) and self.num_outputs >= 1):
            raise ValueError(
                f"The 'num_outputs' field of Splits must be an int >= 1, "
                f"but got {self.num_outputs!r}."
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.task == "classification" and len(self.classes) != self.num_outputs:
            raise ValueError(
                f"Splits {self.name!r}: `len(classes) == num_outputs` must hold for "
                f"classification, but got len(classes)={len(self.classes)}, "
                f"num_outputs={self.num_outputs}."
            )
        if not self.std > 0:
            raise ValueError(f"The 'std' field of Splits must be > 0, but got {self.std!r}.")
        device = self.x_train.device
        for split in _SPLIT_NAMES:
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            self._check_split(split, x, y, device)

    def _check_split(
        self, split: str, x: torch.Tensor, y: torch.Tensor, device: torch.device
    ) -> None:
        prefix = f"Splits {self.name!r}, split {split!r}"
        if x.dtype != torch.float32:
            raise ValueError(f"{prefix}: x_{split} must be float32, but got {x.dtype}.")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{prefix}: x_{split} must have shape (n, *input_shape) = "
                f"(n, {', '.join(map(str, self.input_shape))}), but got {tuple(x.shape)}."
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{prefix}: x_{split} and y_{split} must have the same number of samples, but got "
                f"{x.shape[0]} inputs and {y.shape[0]} targets."
            )
        if x.device != device or y.device != device:
            raise ValueError(
                f"{prefix}: every tensor must be on the same device as x_train ({device}), but "
                f"got x_{split} on {x.device} and y_{split} on {y.device}."
            )
        if self.task == "classification":
            if y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(
                    f"{prefix}: y_{split} must be a 1-D int64 tensor of class indices, but got "
                    f"dtype {y.dtype} with shape {tuple(y.shape)}."
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_outputs):
                raise ValueError(
                    f"{prefix}: class indices in y_{split} must lie in [0, {self.num_outputs}), "
                    f"but got min={int(y.min())}, max={int(y.max())}."
                )
        elif not y.is_floating_point():
            raise ValueError(
                f"{prefix}: regression targets y_{split} must be floating point, but got {y.dtype}."
            )

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_val(self) -> int:
        """Number of validation samples."""
        return int(self.x_val.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    @property
    def sizes(self) -> dict[str, int]:
        """Sample counts as ``{"train": ..., "val": ..., "test": ...}`` (plain ints)."""
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}

    @property
    def device(self) -> torch.device:
        """The device every tensor lives on."""
        return self.x_train.device

    @classmethod
    def of(cls, info: Any, **fields: Any) -> Splits:
        """Splits of the dataset ``info`` describes (its name, task, shape, outputs and
        classes); ``fields`` are the rest: the six tensors, and ``mean``/``std`` if set."""
        return cls(
            name=info.name,
            task=info.task,
            input_shape=info.input_shape,
            num_outputs=info.num_outputs,
            classes=info.classes,
            **fields,
        )

    @classmethod
    def select(cls, info: Any, x: np.ndarray, y: np.ndarray, parts: Mapping[str, Any]) -> Splits:
        """Splits of whole arrays ``x``, ``y``: ``parts`` maps train/val/test to an index
        (slice or index array); ``info`` as for :meth:`of`."""
        tensors = {}
        for split, ids in parts.items():
            tensors[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(x[ids]))
            tensors[f"y_{split}"] = torch.from_numpy(np.ascontiguousarray(y[ids]))
        return cls.of(info, **tensors)

    # -- the data interface the training loop reads (shared with DatasetSplits) -------------
    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch over the training split (:func:`~prunetune.datasets.batches`)."""
        from prunetune.datasets._batches import batches

        return batches(self.x_train, self.y_train, batch_size, generator=generator)

    def eval_batches(
        self, split: str, batch_size: int = 4096
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``split`` (``train``, ``val`` or ``test``) in order, in batches."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` random training samples (without replacement), drawn with ``generator``."""
        idx = torch.randperm(self.num_train, generator=generator, device=generator.device)[:k]
        idx = idx.to(self.device)
        return self.x_train[idx], self.y_train[idx]

    def example(self, k: int = 2) -> torch.Tensor:
        """The first ``k`` training inputs (an example batch, e.g. to trace a model): a copy,
        so that whatever keeps it (a topology, a traced graph) does not keep the training set."""
        return self.x_train[:k].clone()

    def targets(self, split: str) -> torch.Tensor:
        """All targets of ``split``."""
        return getattr(self, f"y_{split}")

    def to(self, device: str | torch.device) -> Splits:
        """Returns a ``Splits`` with every tensor on ``device``; tensors already there are shared."""
        device = torch.device(device)
        moved = {
            f"{kind}_{split}": getattr(self, f"{kind}_{split}").to(device)
            for split in _SPLIT_NAMES
            for kind in ("x", "y")
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, task={self.task!r}, input_shape={self.input_shape}, "
            f"num_outputs={self.num_outputs}, sizes={self.sizes}, device={str(self.device)!r})"
        )
