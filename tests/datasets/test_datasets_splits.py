"""Splits: validation on construction, sizes, .to() and immutability."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from prunetune.datasets import Splits


def _kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": "toy",
        "task": "classification",
        "input_shape": (1, 2, 2),
        "num_outputs": 3,
        "x_train": torch.zeros(5, 1, 2, 2),
        "y_train": torch.tensor([0, 1, 2, 0, 1]),
        "x_val": torch.zeros(2, 1, 2, 2),
        "y_val": torch.tensor([2, 0]),
        "x_test": torch.zeros(3, 1, 2, 2),
        "y_test": torch.tensor([1, 1, 2]),
        "classes": ("a", "b", "c"),
    }
    kwargs.update(overrides)
    return kwargs


def test_sizes_and_repr() -> None:
    s = Splits(**_kwargs())
    assert (s.num_train, s.num_val, s.num_test) == (5, 2, 3)
    assert s.sizes == {"train": 5, "val": 2, "test": 3}
    assert all(type(v) is int for v in s.sizes.values())
    assert repr(s) == (
        "Splits(name='toy', task='classification', input_shape=(1, 2, 2), num_outputs=3, "
        "sizes={'train': 5, 'val': 2, 'test': 3}, device='cpu')"
    )


def test_to_moves_every_tensor_and_keeps_values() -> None:
    s = Splits(**_kwargs(mean=0.25, std=0.5))
    moved = s.to("cpu")
    assert isinstance(moved, Splits) and moved.device == torch.device("cpu")
    assert (moved.mean, moved.std, moved.classes) == (0.25, 0.5, ("a", "b", "c"))
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(moved, field), getattr(s, field))


def test_frozen() -> None:
    s = Splits(**_kwargs())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"task": "ranking"},
            r"'task' field of Splits must be one of \('classification', 'regression'\), but got 'ranking'",
        ),
        ({"num_outputs": 0}, r"'num_outputs' field.*int >= 1, but got 0"),
        (
            {"classes": ("a", "b")},
            r"len\(classes\) == num_outputs.*len\(classes\)=2, num_outputs=3",
        ),
        (
            {"x_val": torch.zeros(2, 1, 2, 2, dtype=torch.float64)},
            r"split 'val'.*x_val must be float32, but got torch.float64",
        ),
        ({"x_test": torch.zeros(3, 4)}, r"split 'test'.*\(n, 1, 2, 2\), but got \(3, 4\)"),
        (
            {"y_train": torch.tensor([0, 1, 2])},
            r"split 'train'.*same number of samples.*5 inputs and 3 targets",
        ),
        ({"y_val": torch.tensor([0.0, 1.0])}, r"split 'val'.*1-D int64.*torch.float32"),
        ({"y_test": torch.tensor([0, 3, 1])}, r"split 'test'.*\[0, 3\), but got min=0, max=3"),
        ({"std": 0.0}, r"'std' field of Splits must be > 0, but got 0.0"),
    ],
)
def test_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Splits(**_kwargs(**overrides))


def test_regression_targets() -> None:
    s = Splits(
        **_kwargs(
            task="regression",
            num_outputs=1,
            classes=(),
            y_train=torch.zeros(5),
            y_val=torch.zeros(2),
            y_test=torch.zeros(3),
        )
    )
    assert s.task == "regression"
    with pytest.raises(ValueError, match=r"regression targets y_train must be floating point"):
        Splits(**_kwargs(task="regression", num_outputs=1, classes=()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_back() -> None:
    s = Splits(**_kwargs())
    on_gpu = s.to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.y_test.is_cuda
    back = on_gpu.to("cpu")
    assert torch.equal(back.y_train, s.y_train) and back.device == torch.device("cpu")
