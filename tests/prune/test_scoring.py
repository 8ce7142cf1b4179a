"""Score → mask machinery: global vs layerwise thresholds, exact budgets, export-equal counts."""

from __future__ import annotations

import pytest
import torch

from prunetune.models import build_model, cnn_spec, mlp_spec
from prunetune.prune import Mask, Topology, count_params, export_compact
from prunetune.prune._scoring import (
    masks_at_density,
    masks_at_fraction,
    ranker,
)


def _topology(spec):
    model = build_model(spec)
    return model, Topology.build(model, torch.zeros(2, *spec["input_shape"]))


def test_global_and_layerwise_thresholds_on_hand_built_scores():
    scores = {  # layer "0": 3x4, layer "2": 2x3
        "0": torch.tensor([[9.0, 1, 2, 3], [8, 0.5, 0.1, 0.2], [7, 6, 0.3, 0.4]]),
        "2": torch.tensor([[0.05, 0.06, 5.0], [0.07, 4.0, 0.08]]),
    }
    keep, total = ranker(scores, "global")
    assert total == 18
    g = keep(6)  # the six largest overall: 9, 8, 7, 6, 5, 4
    assert g["0"].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert g["2"].tolist() == [[0, 0, 1], [0, 1, 0]]
    keep_l, steps = ranker(scores, "layerwise")
    assert steps == 12
    lw = keep_l(6)  # half of each layer: 6 of 12 and 3 of 6
    assert lw["0"].tolist() == [[1, 0, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]  # 9 8 7 6 3 2
    assert lw["2"].tolist() == [[0, 0, 1], [0, 1, 1]]  # 5 4 0.08: small, but its layer's best


def test_layerwise_keeps_one_weight_per_layer_at_least():
    scores = {"0": torch.rand(3, 4), "2": torch.rand(2, 3)}
    keep, _ = ranker(scores, "layerwise")
    assert [int(m.sum()) for m in keep(0).values()] == [1, 1]


def test_ranker_rejects_unknown_scope():
    with pytest.raises(ValueError, match=r"scope must be one of \['global', 'layerwise'\]"):
        ranker({"0": torch.rand(2, 2)}, "per-channel")


def test_ties_are_broken_by_position_deterministically():
    keep, _ = ranker({"0": torch.ones(2, 3)}, "global")
    assert keep(2)["0"].tolist() == [[1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "spec",
    [mlp_spec((1, 8, 8), [16, 8], 10), cnn_spec((1, 8, 8), [4, 6], [8], 10)],
    ids=["mlp", "cnn"],
)
@pytest.mark.parametrize("density", [0.5, 0.1, 0.02])
def test_topology_count_equals_export_count(spec, density):
    gen = torch.Generator().manual_seed(1)
    model, topo = _topology(spec)
    masks = {
        layer.name: (torch.rand(layer.module.weight.shape, generator=gen) < density).float()
        for layer in topo.layers
    }
    ex = export_compact(model, {n: Mask(m) for n, m in masks.items()}, topology=topo)
    assert topo.count(model, masks) == ex.params == count_params(ex.model)
    assert topo.dense == ex.params_dense == sum(p.numel() for p in model.parameters())


def test_bias_of_a_revived_unit_is_paid_for():
    model, topo = _topology(mlp_spec((4,), [3], 2))
    masks = {"0": torch.zeros(3, 4), "2": torch.zeros(2, 3)}
    assert topo.count(model, masks) == 2  # the output biases only
    masks["0"][1, 0] = 1.0  # unit 1 open, but nothing reads it: not live
    assert topo.count(model, masks) == 2
    masks["0"][1, 0], masks["2"][0, 1] = 0.0, 1.0  # read, but closed: not live
    assert topo.count(model, masks) == 2
    masks["0"][1, 0] = 1.0  # open and read: live
    assert topo.count(model, masks) == 2 + 2 + 1  # output biases + two weights + its bias
    with torch.no_grad():
        model[0].bias[1] = 0.0  # a zero bias is not a kept parameter
    assert topo.count(model, masks) == 2 + 2


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("density", [0.3, 0.05, 0.01])
def test_masks_at_density_keeps_as_many_as_fit(scope, density):
    spec = mlp_spec((1, 8, 8), [32, 16], 10)
    model, topo = _topology(spec)
    scores = {layer.name: layer.module.weight.detach().abs() for layer in topo.layers}
    masks = masks_at_density(topo, model, scores, density, scope)
    budget = density * topo.dense
    assert topo.count(model, masks) <= budget
    keep, hi = ranker(scores, scope)
    kept = [int(m.sum()) for m in masks.values()]
    # one more ranking step no longer fits
    k = next(k for k in range(hi + 1) if [int(m.sum()) for m in keep(k).values()] == kept)
    assert topo.count(model, keep(k + 1)) > budget


def test_eligible_weights_stay_pruned():
    model, topo = _topology(mlp_spec((6,), [8], 3))
    scores = {layer.name: torch.rand(layer.module.weight.shape) for layer in topo.layers}
    eligible = {n: (torch.rand(s.shape) < 0.5).float() for n, s in scores.items()}
    for masks in (
        masks_at_density(topo, model, scores, 0.4, "global", eligible=eligible),
        masks_at_fraction(scores, 0.9, "global", eligible=eligible),
    ):
        for n in masks:
            assert bool((masks[n] <= eligible[n]).all())
