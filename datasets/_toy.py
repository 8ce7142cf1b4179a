"""Synthetic regression tasks generated from a seed (no files).

``pathways-toy`` is the tutorial task of Zhang, Tao & Zhang (2023), "Neural Network Pruning by
Gradient Descent", arXiv:2311.12526: with ``x₁..x₄ ~ U(−1, 1)``,

    y₁ = 3·sin((x₁ − x₂)²),    y₂ = (x₃ + x₄)³.

Each output depends on a disjoint pair of inputs, so a well-pruned network separates into two
sub-networks ``(x₁, x₂) → y₁`` and ``(x₃, x₄) → y₂`` (see ``prunetune.explain``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunetune.datasets._splits import Splits

if TYPE_CHECKING:  # _registry imports this module
    from prunetune.datasets._registry import DatasetInfo

__all__ = ["PATHWAYS_TOY_SIZES", "pathways_toy_targets"]

#: Samples per split: the paper's 1,000 training samples, of which the last 200 (in generation
#: order) become the validation split, and 1,000 test samples.
PATHWAYS_TOY_SIZES = {"train": 800, "val": 200, "test": 1000}


def pathways_toy_targets(x: np.ndarray) -> np.ndarray:
    """``(n, 4)`` inputs → ``(n, 2)`` targets ``[3·sin((x₁ − x₂)²), (x₃ + x₄)³]``."""
    if x.ndim != 2 or x.shape[1] != 4:
        raise ValueError(f"pathways-toy inputs must have shape (n, 4), but got {x.shape}.")
    y1 = 3.0 * np.sin((x[:, 0] - x[:, 1]) ** 2)
    y2 = (x[:, 2] + x[:, 3]) ** 3
    return np.stack([y1, y2], axis=1)


def load_pathways_toy(info: DatasetInfo, data_dir: Path | None, split_seed: int) -> Splits:
    """2,000 samples drawn by ``numpy.random.default_rng(split_seed)``: the first 1,000 are
    the training data (800 train + 200 validation), the next 1,000 the test split."""
    del data_dir  # generated, nothing to find
    sizes = PATHWAYS_TOY_SIZES
    n = sizes["train"] + sizes["val"] + sizes["test"]
    rng = np.random.default_rng(split_seed)
    # Targets are computed in float64 from the float32 inputs, so they match the stored x exactly.
    x = rng.uniform(-1.0, 1.0, size=(n, 4)).astype(np.float32)  # (2000, 4)
    y = pathways_toy_targets(x.astype(np.float64)).astype(np.float32)  # (2000, 2)
    a, b = sizes["train"], sizes["train"] + sizes["val"]
    parts = {"train": slice(0, a), "val": slice(a, b), "test": slice(b, n)}
    return Splits.select(info, x, y, parts)
