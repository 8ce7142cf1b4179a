"""Fixtures for prunetune.datasets tests: isolated env vars and tiny fake IDX datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prunetune.datasets import write_idx

FakeIdx = dict[str, np.ndarray]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keeps the developer's $PRUNETUNE_DATA / cache out of the tests."""
    monkeypatch.delenv("PRUNETUNE_DATA", raising=False)
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "empty-cache"))


@pytest.fixture
def make_idx_dataset() -> Callable[..., FakeIdx]:
    """Factory writing the four MNIST-style IDX files of a tiny random dataset.

    Returns the arrays written, keyed by file stem, so tests can compare against them.
    """

    def make(
        directory: Path, *, n_train: int = 120, n_test: int = 24, seed: int = 0, gz: bool = True
    ) -> FakeIdx:
        rng = np.random.default_rng(seed)
        arrays = {
            "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
        }
        suffix = ".gz" if gz else ""
        for stem, array in arrays.items():
            write_idx(directory / f"{stem}{suffix}", array)
        return arrays

    return make
