"""Mini-batches over in-memory tensors, without ``DataLoader`` overhead.

The datasets here fit in (GPU) memory, so one epoch is a single ``randperm`` plus index slicing:
no worker processes, no per-sample Python calls, no host-to-device copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["batches", "num_batches"]


def _check_batch_size(func: str, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"The 'batch_size' parameter of {func} must be an int >= 1, but got {batch_size!r}."
        )


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`batches` yields for ``n`` samples.

    Args:
        n: Number of samples, ``>= 0``.
        batch_size: Samples per batch, ``>= 1``.
        drop_last: Whether the final, smaller batch is dropped.

    Returns:
        ``n // batch_size`` if ``drop_last`` else ``ceil(n / batch_size)``.

    Raises:
        ValueError: If ``n`` is negative or ``batch_size`` is not a positive int.

    Example:
        >>> num_batches(10, 3), num_batches(10, 3, drop_last=True)
        (4, 3)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"The 'n' parameter of num_batches must be an int >= 0, but got {n!r}.")
    _check_batch_size("num_batches", batch_size)
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterates over ``(x, y)`` in mini-batches, one pass (epoch) per call.

    Arguments are validated when this function is called, not at the first ``next()``.

    Args:
        x: Inputs, first dimension is the sample dimension.
        y: Targets with the same number of samples as ``x``, on the same device.
        batch_size: Samples per batch, ``>= 1``.
        shuffle: Whether to visit samples in a random order. Without shuffling the batches
            are views of ``x`` and ``y`` (no copy).
        generator: Source of randomness for the shuffle, so that a seeded generator gives the
            same order every time. It may live on another device than ``x`` (e.g. a CPU
            generator for CUDA data); the permutation is drawn there and moved.
        drop_last: Whether to drop the final batch when it has fewer than ``batch_size``
            samples.

    Yields:
        ``(x_batch, y_batch)`` pairs; every sample appears exactly once per call (at most once
        with ``drop_last``).

    Raises:
        ValueError: If ``batch_size`` is not a positive int, or ``x`` and ``y`` differ in
            length or device.

    Example:
        >>> import torch
        >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> g = torch.Generator().manual_seed(0)
        >>> [len(yb) for _, yb in batches(x, y, 4, generator=g)]
        [4, 4, 2]
    """
    _check_batch_size("batches", batch_size)
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"The 'x' and 'y' parameters of batches must have the same number of samples in "
            f"dim 0, but got shapes {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.device != y.device:
        raise ValueError(
            f"The 'x' and 'y' parameters of batches must be on the same device, but got "
            f"{x.device} and {y.device}."
        )
    n = int(x.shape[0])
    stop = n - n % batch_size if drop_last else n
    order: torch.Tensor | None = None
    if shuffle:
        perm_device = generator.device if generator is not None else x.device
        order = torch.randperm(n, generator=generator, device=perm_device).to(x.device)
    return _iterate(x, y, batch_size, stop, order)


def _iterate(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, stop: int, order: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]
            yield x[idx], y[idx]
