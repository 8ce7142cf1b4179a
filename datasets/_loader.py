"""Data that does not fit in memory: train/validation/test ``torch.utils.data.Dataset``\\ s read
through a ``DataLoader``, behind the same interface as the in-memory :class:`Splits`.

The training loop reads ``train_batches``, ``eval_batches``, ``sample``, ``device`` and
``num_train`` of either; batches arrive on the trial's device (pinned host memory and
non-blocking copies on CUDA).

Same data, same seed, same batches: the training order is one ``randperm`` per epoch from the
training loop's generator, drawn as the in-memory ``Splits`` draw it, whatever ``num_workers``;
no loader draws from torch's global generator (the Gumbel noise comes from there).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prunetune.datasets._splits import Task

__all__ = ["DatasetSplits"]

_SPLITS = ("train", "val", "test")


def _as_tensor(v: Any) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v)


class _EpochOrder(Sampler[int]):
    """Each epoch's order: ``randperm`` from the generator ``train_batches`` was given, drawn
    when the epoch starts, exactly as :func:`~prunetune.datasets.batches` draws it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = self.generator
        device = g.device if g is not None else None
        return iter(torch.randperm(self.n, generator=g, device=device).tolist())


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Train, validation and test ``Dataset``\\ s of ``(x, y)`` samples.

    Attributes:
        name, task, input_shape, num_outputs, classes, mean, std: as for :class:`Splits`.
        train, val, test: map-style datasets; ``x`` a tensor (or array) of ``input_shape``,
            ``y`` a class index (classification) or a float vector (regression).
        device: where batches are delivered.
        num_workers: ``DataLoader`` worker processes (0: load in the training process).
    """

    name: str
    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int
    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_workers: int = 0
    _loaders: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in _SPLITS}

    def to(self, device: str | torch.device) -> DatasetSplits:
        return replace(self, device=torch.device(device), _loaders={})

    def with_workers(self, num_workers: int) -> DatasetSplits:
        return replace(self, num_workers=int(num_workers), _loaders={})

    def _batch(self, xb: Any, yb: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cuda = self.device.type == "cuda"
        x = _as_tensor(xb).to(self.device, torch.float32, non_blocking=cuda)
        y = _as_tensor(yb).to(self.device, non_blocking=cuda)
        # class indices (b,), or regression targets (b, num_outputs)
        y = y.long() if self.task == "classification" else y.float().reshape(len(y), -1)
        return x, y

    def _loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0) -> Any:
        key = split if not shuffle else f"{split}-shuffled"
        have = self._loaders.get(key)
        if have is not None and have.batch_size == batch_size:
            return have
        workers = self.num_workers
        loader = DataLoader(
            getattr(self, split),
            batch_size=batch_size,
            sampler=_EpochOrder(len(getattr(self, split))) if shuffle else None,
            # its own generator: an iterator's worker seed is drawn from it, else from torch's
            # global generator, which would shift the methods' noise
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self._loaders[key] = loader
        return loader

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of the training split: one ``randperm`` from ``generator``, the
        order the in-memory ``Splits`` give for the same generator."""
        loader = self._loader("train", batch_size, True, generator.initial_seed())
        loader.sampler.generator = generator
        return (self._batch(xb, yb) for xb, yb in loader)

    def eval_batches(
        self, split: str, batch_size: int = 1024
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``split`` in order, in batches."""
        return (self._batch(xb, yb) for xb, yb in self._loader(split, batch_size, False))

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` random training samples (without replacement), drawn with ``generator``."""
        idx = torch.randperm(self.num_train, generator=generator, device=generator.device)[:k]
        items = [self.train[int(i)] for i in idx.cpu()]
        xs = torch.stack([_as_tensor(x) for x, _ in items])
        ys = torch.stack([_as_tensor(y) for _, y in items])
        return self._batch(xs, ys)

    def example(self, k: int = 2) -> torch.Tensor:
        """The first ``k`` training inputs (an example batch, e.g. to trace a model)."""
        k = min(k, self.num_train)
        xs = torch.stack([_as_tensor(self.train[i][0]) for i in range(k)])
        return xs.to(self.device, torch.float32)

    def targets(self, split: str) -> torch.Tensor:
        """All targets of ``split`` (one pass over it)."""
        return torch.cat([y for _, y in self.eval_batches(split)])

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, task={self.task!r}, "
            f"input_shape={self.input_shape}, num_outputs={self.num_outputs}, "
            f"sizes={self.sizes}, device={str(self.device)!r}, num_workers={self.num_workers})"
        )
