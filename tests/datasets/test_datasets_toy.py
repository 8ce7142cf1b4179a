"""pathways-toy: the regression task of Zhang, Tao & Zhang (2023), generated from a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunetune.datasets import (
    DATASETS,
    PATHWAYS_TOY_SIZES,
    dataset_info,
    load_dataset,
    pathways_toy_targets,
)


def test_registered_with_its_shape():
    assert "pathways-toy" in DATASETS
    info = dataset_info("pathways-toy")
    assert (info.task, info.input_shape, info.num_outputs, info.classes) == (
        "regression",
        (4,),
        2,
        (),
    )


def test_sizes_dtypes_and_range():
    s = load_dataset("pathways-toy")
    assert s.sizes == {"train": 800, "val": 200, "test": 1000} == PATHWAYS_TOY_SIZES
    assert (s.task, s.input_shape, s.num_outputs) == ("regression", (4,), 2)
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert y.shape == (len(x), 2)
        assert float(x.min()) >= -1.0 and float(x.max()) < 1.0
    assert (s.mean, s.std) == (0.0, 1.0)


def test_targets_follow_the_formulas():
    s = load_dataset("pathways-toy", split_seed=3)
    x = s.x_test.double()
    y1 = 3.0 * torch.sin((x[:, 0] - x[:, 1]) ** 2)
    y2 = (x[:, 2] + x[:, 3]) ** 3
    assert torch.allclose(s.y_test.double(), torch.stack([y1, y2], 1), rtol=0, atol=1e-6)
    assert pathways_toy_targets(np.array([[0.5, -0.5, 0.25, 0.75]])).tolist() == [
        [pytest.approx(3 * np.sin(1.0)), 1.0]
    ]


def test_generated_from_split_seed_and_splits_are_disjoint():
    a, b = load_dataset("pathways-toy", split_seed=0), load_dataset("pathways-toy", split_seed=0)
    c = load_dataset("pathways-toy", split_seed=1)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x_train, c.x_train)
    # The first 1,000 draws are train + val, in order; the next 1,000 the test split.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(2000, 4)).astype(np.float32)
    assert np.array_equal(a.x_train.numpy(), x[:800])
    assert np.array_equal(a.x_val.numpy(), x[800:1000])
    assert np.array_equal(a.x_test.numpy(), x[1000:])


def test_bad_inputs_to_targets():
    with pytest.raises(ValueError, match=r"must have shape \(n, 4\), but got \(3, 2\)"):
        pathways_toy_targets(np.zeros((3, 2)))


def test_device_argument_is_honoured():
    assert load_dataset("pathways-toy", device="cpu").device == torch.device("cpu")
