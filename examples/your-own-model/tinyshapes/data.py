"""A data factory: small grey images of six shapes with noise, made from a seed.

Each image is ``side × side`` pixels in ``[0, 1]``: one shape (a horizontal, vertical or
diagonal bar, a hollow square or a plus) of random size, position and brightness, on a noisy
background. A small CNN learns it to over 90 % test accuracy in a few epochs on a CPU, while a
linear model on the pixels reaches about 50 % (the shapes move), so the model needs its
convolutions and pruning has a real trade-off to find.

A prunetune spec calls it as ``dataset: {factory: "tinyshapes.data:load", params: {...}}``.

Example:
    >>> from tinyshapes.data import load
    >>> d = load(n=60, seed=0)
    >>> d["x_train"].shape, d["y_train"].dtype, d["num_classes"]
    (torch.Size([42, 1, 16, 16]), torch.int64, 6)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CLASSES", "load", "make_images"]

CLASSES = ("horizontal", "vertical", "diagonal", "anti-diagonal", "square", "plus")


def _draw(img: np.ndarray, label: int, rng: np.random.Generator) -> None:
    """Draw shape ``label`` into ``img`` (side × side) at a random size and place."""
    side = img.shape[0]
    size = int(rng.integers(5, side // 2 + 3))  # bar length / box side: 5 .. side/2 + 2
    r, c = (int(v) for v in rng.integers(0, side - size + 1, size=2))  # top-left corner
    ink = float(rng.uniform(0.6, 1.0))
    k = np.arange(size)
    if label == 0:  # horizontal bar
        img[r + size // 2, c + k] = ink
    elif label == 1:  # vertical bar
        img[r + k, c + size // 2] = ink
    elif label == 2:  # diagonal "\"
        img[r + k, c + k] = ink
    elif label == 3:  # anti-diagonal "/"
        img[r + k, c + size - 1 - k] = ink
    elif label == 4:  # hollow square
        img[r, c + k] = img[r + size - 1, c + k] = ink
        img[r + k, c] = img[r + k, c + size - 1] = ink
    else:  # plus
        img[r + size // 2, c + k] = img[r + k, c + size // 2] = ink


def make_images(
    n: int, seed: int = 0, side: int = 16, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, 1, side, side)`` float32 in [0, 1] and their labels ``(n,)`` int64;
    the same ``seed`` gives the same images on every machine (NumPy's PCG64)."""
    if side < 8:
        raise ValueError(f"side must be >= 8 pixels, got {side}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), size=n)
    x = np.zeros((n, side, side), dtype=np.float32)
    for i in range(n):
        _draw(x[i], int(y[i]), rng)
    x += rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    np.clip(x, 0.0, 1.0, out=x)
    return x[:, None], y.astype(np.int64)


def load(n: int = 3000, seed: int = 0, side: int = 16, noise: float = 0.15) -> dict:
    """The factory: ``n`` images split 70 / 15 / 15 into train / validation / test.

    Returns the mapping prunetune takes: tensors ``x_train, y_train, x_val, y_val, x_test,
    y_test`` plus ``num_classes`` and the class names. The inputs are raw pixels in [0, 1]
    (not standardised, so no ``mean``/``std``): the delivered ``model.pt2`` takes them as is.
    """
    if n < 20:
        raise ValueError(f"n must be >= 20 images, got {n}")
    x, y = make_images(n, seed, side, noise)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    n_val = n_test = int(0.15 * n)
    n_train = n - n_val - n_test
    return {
        "x_train": x_t[:n_train],
        "y_train": y_t[:n_train],
        "x_val": x_t[n_train : n_train + n_val],
        "y_val": y_t[n_train : n_train + n_val],
        "x_test": x_t[n_train + n_val :],
        "y_test": y_t[n_train + n_val :],
        "num_classes": len(CLASSES),
        "classes": list(CLASSES),
    }
