import pytest
import torch

from prunetune.models import build_model, cnn_spec, family_spec, lenet5_spec, mlp_spec


def _n(model):
    return sum(p.numel() for p in model.parameters())


def test_lenet_300_100_has_the_published_parameter_count():
    model = build_model(mlp_spec((1, 28, 28), [300, 100], 10))
    assert _n(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610


def test_lenet5_shapes_and_count():
    model = build_model(lenet5_spec((1, 28, 28), 10))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    expected = (
        (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    )
    assert _n(model) == expected == 61_706


def test_cnn_on_digits():
    model = build_model(cnn_spec((1, 8, 8), [8, 16], [32], 10))
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mlp_spec((4,), [3, 0], 2), r"widths\[1\] must be a positive integer, but got 0"),
        (lambda: mlp_spec((4,), [3], 2, activation="swish"), "activation must be one of"),
        (lambda: lenet5_spec((1, 8, 8), 10), r"lenet5 needs image inputs of at least 20x20"),
        (lambda: cnn_spec((1, 8, 8), [4, 4, 4, 4], [8], 10), "needs inputs of at least 16x16"),
        (
            lambda: family_spec("resnet", (4,), 2, [3]),
            r"model.family must be one of .* got 'resnet'",
        ),
        (
            lambda: build_model({"input_shape": [4], "layers": [{"type": "lstm"}]}),
            r"layers\[0\].type",
        ),
    ],
)
def test_invalid_specs_name_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()
