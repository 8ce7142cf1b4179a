"""Train-time augmentation of image mini-batches, vectorised over the batch on its device.

The standard CIFAR recipe (He et al., 2016, "Deep Residual Learning for Image Recognition",
§4.2): pad 4 pixels with zeros, take a random 32x32 crop, flip horizontally with p = 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "augment_batches"]

#: The ops :func:`augment_batches` knows, in no particular order.
AUGMENTATIONS: tuple[str, ...] = ("crop", "flip")

_Batch = tuple[torch.Tensor, torch.Tensor]


def _check_image(op: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"The {op!r} augmentation needs image batches (n, c, h, w), but got x with shape "
            f"{tuple(x.shape)}."
        )


def _crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per sample, the ``h x w`` window at a random offset of ``x`` zero-padded by ``padding``."""
    _check_image("crop", x)
    n, c, h, w = x.shape
    span = 2 * padding + 1  # offsets 0..2p along each axis
    offsets = torch.randint(0, span, (2, n), generator=generator, device=generator.device)
    top, left = offsets.to(x.device)  # (n,), (n,)
    padded = F.pad(x, (padding, padding, padding, padding))  # (n, c, h + 2p, w + 2p)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (n, w)
    samples = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each sample mirrored left-right with probability 1/2."""
    _check_image("flip", x)
    chosen = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
    return torch.where(chosen.to(x.device)[:, None, None, None], x.flip(-1), x)


def augment_batches(
    batches: Iterable[_Batch],
    ops: Sequence[str],
    *,
    generator: torch.Generator,
    padding: int = 4,
) -> Iterator[_Batch]:
    """Yields each ``(x, y)`` of ``batches`` with ``x`` augmented by ``ops``, in order.

    Every op draws fresh randomness per sample from ``generator``, on the generator's device
    (a CPU generator may drive CUDA batches), with no loop over samples:

    * ``"crop"``: one ``torch.randint(0, 2 * padding + 1, (2, n))``, whose rows are the
      ``top`` and ``left`` offsets of the ``n`` samples; sample ``i`` becomes the ``h x w``
      window at ``(top[i], left[i])`` of itself zero-padded by ``padding`` pixels on every side.
    * ``"flip"``: one ``torch.rand`` per sample; a sample whose draw is ``< 0.5`` is mirrored
      along its last (width) axis.

    So a generator seeded alike gives the same augmented batches. Targets pass through
    untouched; the inputs are never modified in place.

    Args:
        batches: Iterable of ``(x, y)``, e.g. :func:`~prunetune.datasets.batches`; ``x`` of
            shape ``(n, c, h, w)`` (any device).
        ops: Names from :data:`AUGMENTATIONS`, applied in this order; empty yields the
            batches unchanged.
        generator: Source of randomness.
        padding: Zero padding of ``"crop"`` in pixels, ``>= 0`` (0: no crop at all).

    Yields:
        ``(x_augmented, y)`` per batch, ``x_augmented`` on ``x``'s device with its shape.

    Raises:
        ValueError: If an op is unknown or ``padding`` is not an int ``>= 0`` (when called),
            or a batch is not an image batch (when it is reached; the message names the op).

    Example:
        >>> import torch
        >>> from prunetune.datasets import augment_batches, batches
        >>> x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
        >>> g = torch.Generator().manual_seed(0)
        >>> aug = augment_batches(batches(x, y, 4, generator=g), ("crop", "flip"), generator=g)
        >>> [tuple(xb.shape) for xb, _ in aug]
        [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    """
    if isinstance(ops, str):
        raise ValueError(
            f"The 'ops' parameter of augment_batches must be a sequence of names from "
            f"{AUGMENTATIONS}, but got the string {ops!r}; write ({ops!r},)."
        )
    ops = tuple(ops)
    for op in ops:
        if op not in AUGMENTATIONS:
            raise ValueError(
                f"The 'ops' parameter of augment_batches must hold names from {AUGMENTATIONS}, "
                f"but got {op!r}."
            )
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(
            f"The 'padding' parameter of augment_batches must be an int >= 0, but got {padding!r}."
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"The 'generator' parameter of augment_batches must be a torch.Generator, but got "
            f"{generator!r}."
        )
    if not ops:
        return iter(batches)
    return _augmented(batches, ops, generator, padding)


def _augmented(
    batches: Iterable[_Batch], ops: tuple[str, ...], generator: torch.Generator, padding: int
) -> Iterator[_Batch]:
    for x, y in batches:
        for op in ops:
            x = _crop(x, padding, generator) if op == "crop" else _flip(x, generator)
        yield x, y
