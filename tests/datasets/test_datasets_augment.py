"""augment_batches: crops are windows of the zero-padded image, flips mirror the drawn samples,
seeds reproduce, targets pass through, and bad arguments are named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunetune.datasets import AUGMENTATIONS, augment_batches, batches


def distinct_images(n: int, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """Every pixel value distinct and > 0, so a window of the zero-padded image is unique."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def window_offsets(out: torch.Tensor, x: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """For each sample, the offset (top, left) of the window of padded ``x`` equal to ``out``;
    fails if there is none."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    offsets = []
    for i in range(len(x)):
        found = [
            (t, left)
            for t in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, t : t + h, left : left + w])
        ]
        assert len(found) == 1, f"sample {i} is not a window of its padded image"
        offsets.append(found[0])
    return offsets


def one_batch(x: torch.Tensor, y: torch.Tensor, ops, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ((xb, yb),) = list(augment_batches([(x, y)], ops, generator=g, **kw))
    assert yb is y
    return xb


def test_augmentation_names() -> None:
    assert AUGMENTATIONS == ("crop", "flip")


def test_crop_is_the_window_at_the_drawn_offsets() -> None:
    x, y = distinct_images(64), torch.arange(64)
    out = one_batch(x, y, ("crop",), seed=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = window_offsets(out, x, 4)
    # The documented draw: one randint(0, 9, (2, n)), rows = top and left.
    top, left = torch.randint(0, 9, (2, 64), generator=torch.Generator().manual_seed(1))
    assert offsets == list(zip(top.tolist(), left.tolist(), strict=True))
    assert len(set(offsets)) > 20  # per-sample offsets, not one per batch
    assert {t for t, _ in offsets} == {left for _, left in offsets} == set(range(9))


def test_crop_pads_with_zeros() -> None:
    x = distinct_images(200, c=1, h=4, w=4)
    out = one_batch(x, torch.zeros(200), ("crop",), padding=2)
    for (t, left), o in zip(window_offsets(out, x, 2), out, strict=True):
        # Rows/columns shifted in from outside the image are exactly zero.
        if t < 2:
            assert (o[:, : 2 - t] == 0).all()
        if left > 2:
            assert (o[:, :, 4 - (left - 2) :] == 0).all()
    assert (out == 0).any()


def test_zero_padding_crop_is_the_identity() -> None:
    x = distinct_images(5)
    assert torch.equal(one_batch(x, torch.zeros(5), ("crop",), padding=0), x)


def test_flip_mirrors_exactly_the_drawn_samples() -> None:
    x, y = distinct_images(100), torch.arange(100)
    out = one_batch(x, y, ("flip",), seed=3)
    chosen = torch.rand(100, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 20 < int(chosen.sum()) < 80
    for i in range(100):
        assert torch.equal(out[i], x[i].flip(-1) if chosen[i] else x[i]), i
    assert torch.equal(x, distinct_images(100))  # the input is not modified


def test_ops_apply_in_order_and_seeds_reproduce() -> None:
    x, y = distinct_images(32), torch.arange(32)
    a = one_batch(x, y, ("crop", "flip"), seed=5)
    b = one_batch(x, y, ("crop", "flip"), seed=5)
    c = one_batch(x, y, ("crop", "flip"), seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # crop, then flip: undoing the flip leaves windows of the padded image.
    chosen = torch.rand(32, generator=_after_crop(5, 32)) < 0.5
    unflipped = torch.where(chosen[:, None, None, None], a.flip(-1), a)
    window_offsets(unflipped, x, 4)


def _after_crop(seed: int, n: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, 9, (2, n), generator=g)
    return g


def test_wraps_an_epoch_of_batches() -> None:
    x, y = distinct_images(10), torch.arange(10)
    g = torch.Generator().manual_seed(0)
    out = list(augment_batches(batches(x, y, 4, generator=g), ("crop", "flip"), generator=g))
    assert [tuple(xb.shape) for xb, _ in out] == [(4, 3, 32, 32)] * 2 + [(2, 3, 32, 32)]
    assert sorted(torch.cat([yb for _, yb in out]).tolist()) == list(range(10))


def test_no_ops_yields_the_batches_unchanged() -> None:
    pairs = [(torch.randn(2, 3, 4, 4), torch.arange(2)), (torch.randn(1, 5), torch.arange(1))]
    out = list(augment_batches(pairs, (), generator=torch.Generator()))
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(out, pairs, strict=True))


@pytest.mark.parametrize("op", ["crop", "flip"])
def test_non_image_batches_are_refused_naming_the_op(op: str) -> None:
    aug = augment_batches([(torch.zeros(4, 8), torch.zeros(4))], (op,), generator=torch.Generator())
    with pytest.raises(ValueError, match=rf"The '{op}' augmentation needs image batches.*\(4, 8\)"):
        next(iter(aug))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ops": ("crop", "rotate")}, r"'ops'.*\('crop', 'flip'\), but got 'rotate'"),
        ({"ops": "crop"}, r"'ops'.*the string 'crop'"),
        ({"padding": -1}, r"'padding'.*int >= 0, but got -1"),
        ({"padding": 2.0}, r"'padding'.*but got 2\.0"),
        ({"generator": None}, r"'generator'.*torch\.Generator, but got None"),
    ],
)
def test_bad_arguments_raise_when_called(kwargs: dict, match: str) -> None:
    args = {"ops": ("crop",), "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=match):
        augment_batches([], **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_drives_cuda_batches() -> None:
    x, y = distinct_images(16), torch.arange(16)
    on_cpu = one_batch(x, y, ("crop", "flip"), seed=2)
    xc, yc = x.cuda(), y.cuda()
    g = torch.Generator().manual_seed(2)
    ((out, yb),) = list(augment_batches([(xc, yc)], ("crop", "flip"), generator=g))
    assert out.device == xc.device and yb is yc
    assert torch.equal(out.cpu(), on_cpu)
    g_cuda = torch.Generator(device="cuda").manual_seed(2)
    ((out_g, _),) = list(augment_batches([(xc, yc)], ("crop", "flip"), generator=g_cuda))
    assert out_g.device == xc.device and out_g.shape == xc.shape
