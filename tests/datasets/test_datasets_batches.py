"""batches / num_batches: coverage, sizes, alignment and seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from prunetune.datasets import batches, num_batches


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # x row i holds 10 * i, so x/y alignment after shuffling can be checked exactly.
    return (torch.arange(n, dtype=torch.float32) * 10).reshape(n, 1, 1, 1), torch.arange(n)


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "expected"),
    [
        (10, 3, False, 4),
        (10, 3, True, 3),
        (9, 3, False, 3),
        (9, 3, True, 3),
        (0, 5, False, 0),
        (2, 5, False, 1),
        (2, 5, True, 0),
    ],
)
def test_num_batches_table(n: int, batch_size: int, drop_last: bool, expected: int) -> None:
    assert num_batches(n, batch_size, drop_last) == expected
    x, y = _data(n)
    assert len(list(batches(x, y, batch_size, drop_last=drop_last))) == expected


def test_every_index_exactly_once_per_epoch() -> None:
    x, y = _data(103)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # each call is a new epoch with a new order
        got = list(batches(x, y, 16, generator=g))
        assert [len(yb) for _, yb in got] == [16] * 6 + [7]
        seen = torch.cat([yb for _, yb in got])
        assert sorted(seen.tolist()) == list(range(103))
        for xb, yb in got:
            assert torch.equal(xb.reshape(-1), yb.float() * 10)
            assert xb.shape[1:] == (1, 1, 1)


def test_drop_last_yields_full_batches_without_repeats() -> None:
    x, y = _data(103)
    got = list(batches(x, y, 16, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert [len(yb) for _, yb in got] == [16] * 6
    seen = torch.cat([yb for _, yb in got]).tolist()
    assert len(set(seen)) == 96


def test_no_shuffle_keeps_order_and_returns_views() -> None:
    x, y = _data(10)
    got = list(batches(x, y, 4, shuffle=False))
    assert [yb.tolist() for _, yb in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert got[0][0].data_ptr() == x.data_ptr()


def test_seeded_generator_is_reproducible() -> None:
    x, y = _data(50)

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in batches(x, y, 8, generator=g)]).tolist()

    assert order(123) == order(123)
    assert order(123) != order(124)
    assert order(123) == torch.randperm(50, generator=torch.Generator().manual_seed(123)).tolist()


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size(batch_size: object) -> None:
    x, y = _data(4)
    with pytest.raises(ValueError, match=r"'batch_size' parameter of batches must be an int >= 1"):
        batches(x, y, batch_size)  # type: ignore[arg-type]  # raised eagerly, before next()
    with pytest.raises(ValueError, match=r"'batch_size' parameter of num_batches"):
        num_batches(4, batch_size)  # type: ignore[arg-type]


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same number of samples.*\(4, 2\) and \(3,\)"):
        batches(torch.zeros(4, 2), torch.zeros(3), 2)


def test_negative_n() -> None:
    with pytest.raises(
        ValueError, match=r"'n' parameter of num_batches must be an int >= 0, but got -1"
    ):
        num_batches(-1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_data_with_cpu_generator_matches_cpu_order() -> None:
    x, y = _data(40)
    cpu = [yb.tolist() for _, yb in batches(x, y, 8, generator=torch.Generator().manual_seed(3))]
    got = list(batches(x.cuda(), y.cuda(), 8, generator=torch.Generator().manual_seed(3)))
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in got)
    assert [yb.tolist() for _, yb in got] == cpu
