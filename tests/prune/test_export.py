"""Compact export: exact counts on hand-built masks, and equivalence with the masked model."""

from __future__ import annotations

import io

import pytest
import torch
from torch.nn.utils import parametrize

from prunetune.models import build_model, cnn_spec, lenet5_spec, mlp_spec
from prunetune.prune import FixedMask, Mask, Topology, count_params, export_compact
from prunetune.prune._topology import raw_weight


def _closing(model, masks):
    """The masked model's semantics, written out independently of the library: a hidden unit
    with no kept incoming weight is closed (its bias is masked too, so it outputs exactly 0);
    the last layer's outputs are never closed."""
    last = max(masks, key=int)
    out = {}
    for name, m in masks.items():
        if name == last or model[int(name)].bias is None:
            out[name] = m
        else:
            out[name] = Mask(m.weight, (m.weight.flatten(1) != 0).any(1).float())
    return out


def _attach(model, masks):
    """Attach ``masks`` (weights, and biases of closed units) as parametrizations."""
    masks = _closing(model, masks)
    for name, m in masks.items():
        mod = model[int(name)]
        parametrize.register_parametrization(mod, "weight", FixedMask(m.weight), unsafe=True)
        if m.bias is not None:
            parametrize.register_parametrization(mod, "bias", FixedMask(m.bias), unsafe=True)
    return model


def _random_masks(model, input_shape, density, gen):
    return {
        layer.name: Mask(
            (torch.rand(raw_weight(layer.module).shape, generator=gen) < density).float()
        )
        for layer in _topology(model, input_shape).layers
    }


def _topology(model, input_shape):
    return Topology.build(model, torch.zeros(2, *input_shape))


def test_hand_built_mlp_counts_exactly():
    torch.manual_seed(0)
    spec = mlp_spec((4,), [3], num_outputs=2)
    model = build_model(spec)
    masks = {
        # unit 0 <- x0; unit 1 <- nothing; unit 2 <- x1
        "0": Mask(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])),
        # out 0 <- unit 0; out 1 <- unit 2 (unit 1 has no kept outgoing weight either)
        "2": Mask(torch.tensor([[1.0, 0, 0], [0, 0, 1]])),
    }
    ex = export_compact(model, masks, torch.zeros(1, 4))
    assert ex.params == 2 + 2 + 2 + 2  # kept weights + biases of the 2 live hidden units, outputs
    assert ex.params_dense == 4 * 3 + 3 + 3 * 2 + 2
    assert ex.kept_units == {"0": [0, 2], "2": [0, 1]}
    assert ex.per_layer["0"]["kept"] == 4 and ex.per_layer["2"]["kept"] == 4
    assert ex.live_neurons == 2
    assert count_params(ex.model) == ex.params
    assert ex.density == pytest.approx(8 / 23)


def test_unit_without_incoming_weights_is_closed_and_removed():
    torch.manual_seed(1)
    spec = mlp_spec((3,), [2], num_outputs=2)
    model = build_model(spec)
    with torch.no_grad():  # unit 1 would output relu(0.5) = 0.5 if its bias were kept
        model[0].bias.copy_(torch.tensor([0.3, 0.5]))
    masks = {
        "0": Mask(torch.tensor([[1.0, 1, 0], [0, 0, 0]])),  # unit 1: no incoming weight
        "2": Mask(torch.tensor([[1.0, 1], [0, 1]])),  # ... though both outputs read it
    }
    ex = export_compact(model, masks, torch.zeros(1, 3))
    assert ex.kept_units == {"0": [0], "2": [0, 1]}
    assert ex.params == (2 + 1) + (1 + 2)  # unit 0: 2 w + b; outputs: 1 w from unit 0 + 2 b
    assert ex.live_neurons == 1 and not ex.collapsed
    assert ex.model[0].weight.shape == (1, 3) and ex.model[2].weight.shape == (2, 1)
    assert torch.equal(ex.model[2].bias, model[2].bias.detach())  # nothing folded into it
    assert count_params(ex.model) == ex.params

    x = torch.randn(64, 3)
    masked = _attach(model, masks).eval()
    with torch.no_grad():
        assert masked[0](x)[:, 1].eq(0).all()  # the closed unit outputs exactly zero
        assert torch.allclose(masked(x), ex.model(x), atol=1e-6)
        # with its bias kept (the old semantics) the unit would add 0.5 · w to both outputs
        w = model[2].parametrizations.weight.original[:, 1] * masks["2"].weight[:, 1]
        open_bias = ex.model(x) + 0.5 * w
        assert not torch.allclose(masked(x), open_bias, atol=1e-3)


def test_unit_without_outgoing_weights_is_removed():
    spec = mlp_spec((3,), [2, 2], num_outputs=1)
    model = build_model(spec)
    masks = {
        "0": Mask(torch.ones(2, 3)),
        "2": Mask(torch.tensor([[1.0, 0], [1, 0]])),  # hidden-1 unit 1 feeds nothing
        "4": Mask(torch.tensor([[1.0, 1]])),
    }
    ex = export_compact(model, masks, torch.zeros(1, 3))
    assert ex.kept_units["0"] == [0]
    assert ex.kept_units["2"] == [0, 1]
    # hidden-1: unit 0's 3 w + b; hidden-2: 2 w from unit 0 + 2 b; output: 2 w + b
    assert ex.params == (3 + 1) + (2 + 2) + (2 + 1)
    assert count_params(ex.model) == ex.params
    x = torch.randn(16, 3)
    masked = _attach(model, masks).eval()
    with torch.no_grad():
        assert torch.allclose(masked(x), ex.model(x), atol=1e-6)


def test_rejects_non_binary_and_misshapen_masks():
    spec = mlp_spec((3,), [2], num_outputs=2)
    model = build_model(spec)
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        export_compact(model, {"0": Mask(torch.full((2, 3), 0.5))}, x)
    with pytest.raises(ValueError, match=r"mask of layer 0 has shape \(2, 1\)"):
        export_compact(model, {"0": Mask(torch.ones(2, 1))}, x)
    with pytest.raises(ValueError, match="needs an example batch or the model's topology"):
        export_compact(model, {"0": Mask(torch.ones(2, 3))})


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"0": Mask(torch.ones(3, 2))}, r"mask of layer 0 has shape \(3, 2\)"),  # transposed
        ({"1": Mask(torch.ones(2, 3))}, r"mask for '1', which is not a prunable layer"),
    ],
)
def test_rejects_misshapen_or_misnamed_masks_before_applying_them(masks, match):
    model = build_model(mlp_spec((3,), [2], num_outputs=2))
    with pytest.raises(ValueError, match=match):
        export_compact(model, masks, torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("spec", "density"),
    [
        (mlp_spec((1, 8, 8), [32, 16], 10), 0.3),
        (mlp_spec((1, 8, 8), [32, 16], 10), 0.03),
        (mlp_spec((1, 8, 8), [32, 16], 10, activation="silu"), 0.05),
        (lenet5_spec((1, 28, 28), 10), 0.1),
        (lenet5_spec((1, 28, 28), 10, activation="tanh"), 0.02),
        (cnn_spec((1, 8, 8), [4, 8], [16], 10), 0.1),
    ],
)
def test_compact_model_equals_masked_model(spec, density):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(spec)
    for p in model.parameters():  # nonzero biases: a closed unit's bias must not leak
        torch.nn.init.normal_(p, std=0.3, generator=gen)
    masks = _random_masks(model, spec["input_shape"], density, gen)
    ex = export_compact(model, masks, torch.zeros(1, *spec["input_shape"]))
    masked = _attach(model, masks).eval()
    x = torch.randn(128, *spec["input_shape"], generator=gen)
    with torch.no_grad():
        diff = (masked(x) - ex.model(x)).abs().max().item()
    assert diff <= 1e-5
    assert count_params(ex.model) == ex.params
    assert sum(v["kept"] for v in ex.per_layer.values()) == ex.params
    assert ex.params <= sum(int(m.weight.sum()) for m in masks.values()) + sum(
        layer.out_units for layer in _topology(build_model(spec), spec["input_shape"]).layers
    )


def test_compact_weights_round_trip_without_pickled_code():
    spec = mlp_spec((1, 8, 8), [16], 10)
    model = build_model(spec)
    gen = torch.Generator().manual_seed(3)
    masks = _random_masks(model, spec["input_shape"], 0.2, gen)
    ex = export_compact(model, masks, torch.zeros(1, *spec["input_shape"]))
    assert ex.arch is not None and ex.arch["input_shape"] == [1, 8, 8]
    buf = io.BytesIO()
    torch.save(ex.model.state_dict(), buf)
    buf.seek(0)
    rebuilt = build_model(ex.arch)
    rebuilt.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(rebuilt.eval()(x), ex.model(x))
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "conv",
    [
        dict(padding="same"),
        dict(padding=1, padding_mode="reflect"),
        dict(padding=(1, 0)),
        dict(padding=2, dilation=2),
    ],
    ids=["same", "reflect", "uneven", "dilated"],
)
def test_a_sequential_whose_conv_the_arch_format_cannot_state_has_no_arch(conv):
    """The chain format (``build_model``) knows one padding and stride per conv, zeros, no
    dilation: any other conv gives ``arch=None`` rather than a spec of another model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, **conv),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(10),
    )
    x = torch.randn(2, 1, 8, 8)
    model(x)  # materialise the lazy layer
    ex = export_compact(model, {}, x)
    assert ex.arch is None


def test_fully_pruned_hidden_layer_gives_constant_output():
    spec = mlp_spec((3,), [2], num_outputs=2)
    model = build_model(spec)
    masks = {"0": Mask(torch.zeros(2, 3)), "2": Mask(torch.ones(2, 2))}
    ex = export_compact(model, masks, torch.zeros(1, 3))
    # both hidden units are closed: the group keeps one zeroed unit so that shapes stay valid
    assert ex.collapsed and ex.live_neurons == 0
    assert ex.kept_units["0"] == [0]
    assert ex.model[0].weight.eq(0).all() and ex.model[0].bias.eq(0).all()
    assert ex.model[2].weight.eq(0).all()
    assert ex.params == 2  # only the two output biases (nothing folded into them)
    assert count_params(ex.model) == ex.params
    x = torch.randn(5, 3)
    masked = _attach(model, masks).eval()
    with torch.no_grad():
        want = model[2].bias.detach().expand(5, 2)  # closed units output 0: just the bias
        assert torch.equal(ex.model(x), want)
        assert torch.allclose(masked(x), want, atol=1e-6)
