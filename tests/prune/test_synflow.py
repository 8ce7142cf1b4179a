"""SynFlow: synaptic-flow scores on a hand-sized network, conservation, iterative pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, Topology, export_compact, make_method
from prunetune.prune.synflow import synflow_scores


def _ctx(model, input_shape):
    return PruneContext.for_model(
        model,
        input_shape,
        epochs=1,
        steps_per_epoch=1,
        sample_batch=lambda k: pytest.fail("SynFlow must not use data"),
    )


def _hand_net():
    model = build_model(mlp_spec((3,), [2], 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[2].weight.copy_(torch.tensor([[2.0, -1.0], [-0.5, 4.0]]))
        model[2].bias.copy_(torch.tensor([1.0, 1.0]))
    return model


def _positive(model):
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    return net


def test_scores_on_a_hand_sized_network():
    model = _hand_net()
    layers = Topology.build(model, torch.zeros(2, 3)).layers
    ones = {layer.name: torch.ones_like(layer.module.weight) for layer in layers}
    s = synflow_scores(_positive(model), layers, ones, (3,))
    # h = |W1| 1 + |b1| = [3.5+0.5, 4+1] = [4, 5]; ∂R/∂W2[k, i] = h_i
    assert torch.allclose(s["2"], torch.tensor([[8.0, 5.0], [2.0, 20.0]], dtype=torch.float64))
    # ∂R/∂W1[i, j] = Σ_k |W2[k, i]| · 1 = [2.5, 5] per row i
    expected1 = torch.tensor([[2.5, 5.0, 1.25], [0.0, 15.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(s["0"], expected1)


def test_scores_respect_the_mask_and_conserve_flow_without_biases():
    torch.manual_seed(0)
    spec = mlp_spec((6,), [5, 4], 3)
    model = build_model(spec)
    with torch.no_grad():
        for m in model:
            if hasattr(m, "bias") and m.bias is not None:
                m.bias.zero_()
    layers = Topology.build(model, torch.zeros(2, 6)).layers
    masks = {layer.name: (torch.rand(layer.module.weight.shape) < 0.7).float() for layer in layers}
    net = _positive(model)
    s = synflow_scores(net, layers, masks, (6,))
    assert torch.equal(net[0].weight, model[0].weight.detach().abs().double())  # restored
    # every layer carries the same total synaptic flow R of the masked net (Tanaka et al., Thm 1)
    masked_net = _positive(model)
    with torch.no_grad():
        for layer in layers:
            masked_net.get_submodule(layer.name).weight.mul_(masks[layer.name].double())
        r_masked = float(masked_net(torch.ones(1, 6, dtype=torch.float64)).sum())
    totals = [float(s[n].sum()) for n in ("0", "2", "4")]
    assert totals == pytest.approx([r_masked] * 3, rel=1e-9)
    for n in masks:
        assert bool((s[n][masks[n] == 0] == 0).all())


def test_iterative_pruning_avoids_layer_collapse_and_hits_the_target():
    torch.manual_seed(0)
    spec = mlp_spec((1, 8, 8), [64, 32], 10)
    model = build_model(spec)
    method = make_method({"name": "synflow", "density": 0.01, "iterations": 20})
    method.attach(model, _ctx(model, (1, 8, 8)))
    masks = method.masks()
    assert all(int(m.weight.sum()) >= 1 for m in masks.values())  # no layer cut off
    ex = export_compact(model, masks, torch.zeros(1, 1, 8, 8))
    assert 0.008 <= ex.density <= 0.01
    assert ex.live_neurons > 0
