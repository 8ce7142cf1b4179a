"""Pathways, feature importance and symmetry on hand-built pruned networks, to the number."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.explain import (
    UnsupportedModelError,
    explain,
    feature_importance,
    feature_symmetry,
    pathway_graph,
)
from prunetune.models import build_model, cnn_spec, mlp_spec
from prunetune.prune import (
    FixedMask,
    Mask,
    PruneContext,
    Topology,
    export_compact,
    make_method,
)


def _mlp(*weights: list[list[float]], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers with the given weights (zeros are pruned), activations in between."""
    mods: list[nn.Module] = []
    for i, w in enumerate(weights):
        t = torch.tensor(w, dtype=torch.float32)
        lin = nn.Linear(t.shape[1], t.shape[0])
        with torch.no_grad():
            lin.weight.copy_(t)
            lin.bias.uniform_(-1, 1)  # biases never make a path
        mods.append(lin)
        if i < len(weights) - 1:
            mods.append(act())
    return nn.Sequential(*mods)


# 4 inputs → 3 hidden → 2 outputs. x3 feeds nothing; hidden 2 receives nothing.
W1 = [[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
W2 = [[4.0, 5.0, 7.0], [0.0, -6.0, 0.0]]


# --- feature importance ---------------------------------------------------------------------


def test_path_norm_of_hand_built_mlp_is_exact():
    imp = feature_importance(_mlp(W1, W2), (4,))
    # y0: x0 → h0 → y0 = 1·4; x1 → h0 → y0 = 2·4; x2 → h1 → y0 = 3·5.  y1: x2 → h1 → y1 = 3·6.
    assert imp.path_norm.tolist() == [[4.0, 8.0, 15.0, 0.0], [0.0, 0.0, 18.0, 0.0]]
    assert imp.overall.tolist() == pytest.approx([4 / 45, 8 / 45, 33 / 45, 0.0], abs=1e-15)
    expected = torch.tensor(
        [[4 / 27, 8 / 27, 15 / 27, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64
    )
    assert torch.allclose(imp.per_output, expected, rtol=0, atol=1e-15)
    assert imp.overall[3].item() == 0.0  # no surviving path: exactly zero
    assert imp.path_norm.dtype == torch.float64


def test_path_norm_power_two():
    imp = feature_importance(_mlp(W1, W2), (4,), power=2.0)
    assert imp.path_norm.tolist() == [[16.0, 64.0, 225.0, 0.0], [0.0, 0.0, 324.0, 0.0]]


def test_input_scale_weighs_features():
    imp = feature_importance(_mlp(W1, W2), (4,), input_scale=torch.tensor([2.0, 0.0, 1.0, 5.0]))
    assert imp.path_norm.tolist() == [[8.0, 0.0, 15.0, 0.0], [0.0, 0.0, 18.0, 0.0]]
    assert imp.overall.tolist() == pytest.approx([8 / 41, 0.0, 33 / 41, 0.0])
    with pytest.raises(ValueError, match=r"input_scale must hold 4 non-negative factors"):
        feature_importance(_mlp(W1, W2), (4,), input_scale=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"input_scale must hold 4 non-negative factors"):
        feature_importance(_mlp(W1, W2), (4,), input_scale=torch.ones(3))


def test_path_norm_sums_over_paths_through_two_hidden_layers():
    # x0 reaches y0 via h0→g0 (1·2·3) and h1→g0 (4·5·3); x1 via h1→g0 (-1·5·3).
    model = _mlp([[1.0, 0.0], [4.0, -1.0]], [[2.0, 5.0], [0.0, 0.0]], [[3.0, 0.0]])
    imp = feature_importance(model, (2,))
    assert imp.path_norm.tolist() == [[6.0 + 60.0, 15.0]]
    assert imp.overall.tolist() == pytest.approx([66 / 81, 15 / 81])


def _random_masks(model, input_shape, seed: int, keep: float) -> dict[str, Mask]:
    """A 0/1 weight mask per prunable layer, each weight kept with probability ``keep``."""
    gen = torch.Generator().manual_seed(seed)
    return {
        layer.name: Mask((torch.rand(layer.module.weight.shape, generator=gen) < keep).float())
        for layer in Topology.build(model, torch.zeros(2, *input_shape)).layers
    }


def test_masks_argument_and_attached_masks_and_compact_export_agree():
    torch.manual_seed(0)
    spec = mlp_spec((6,), [5, 4], num_outputs=3, activation="silu")
    model = build_model(spec)
    masks = _random_masks(model, (6,), seed=1, keep=0.4)
    by_masks = feature_importance(model, (6,), masks=masks)
    # independent: |W3∘M3| |W2∘M2| |W1∘M1|
    expected = torch.eye(6, dtype=torch.float64)
    for name in ("0", "2", "4"):
        w = model[int(name)].weight.detach().double() * masks[name].weight.double()
        expected = w.abs() @ expected
    assert torch.allclose(by_masks.path_norm, expected, rtol=1e-12, atol=0)
    ex = export_compact(model, masks, torch.zeros(1, 6))
    assert ex.arch is not None and ex.arch["input_shape"] == [6]
    compact = feature_importance(ex.model, ex.arch["input_shape"])
    assert torch.allclose(compact.path_norm, expected, rtol=1e-6, atol=1e-12)
    for name, m in masks.items():
        parametrize.register_parametrization(model[int(name)], "weight", FixedMask(m.weight))
    attached = feature_importance(model, (6,))
    assert torch.allclose(attached.path_norm, expected, rtol=1e-12, atol=0)


def test_conv_path_norm_and_heatmap_shape():
    # 1×2×2 image → conv 2×2 (one output pixel) → flatten → linear ×2.
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]]))
        model[3].weight.fill_(2.0)
    imp = feature_importance(model, (1, 2, 2))
    assert imp.path_norm.tolist() == [[2.0, 4.0, 6.0, 0.0]]
    assert imp.heatmap().shape == (1, 2, 2)
    assert imp.heatmap().flatten().tolist() == pytest.approx([1 / 6, 1 / 3, 1 / 2, 0.0])
    assert imp.heatmaps().shape == (1, 1, 2, 2)


def test_maxpool_counts_every_position_of_its_window():
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1)
    )
    with torch.no_grad():
        model[0].weight.fill_(-3.0)
        model[4].weight.fill_(0.5)
    imp = feature_importance(model, (1, 2, 2))
    assert imp.path_norm.tolist() == [[1.5, 1.5, 1.5, 1.5]]


def test_cnn_importance_matches_brute_force_jacobian():
    torch.manual_seed(3)
    spec = cnn_spec((1, 8, 8), [3], [5], num_outputs=4)
    model = build_model(spec)
    imp = feature_importance(model, (1, 8, 8))
    # The abs network is linear: its Jacobian at any point is the path-norm matrix.
    absnet = build_model(spec).double()
    absnet.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in absnet:
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.abs_()
                m.bias.zero_()
    linear = nn.Sequential(
        *[
            nn.Identity()
            if isinstance(m, nn.ReLU)
            else nn.LPPool2d(1, 2)  # sum over the window
            if isinstance(m, nn.MaxPool2d)
            else m
            for m in absnet
        ]
    )
    jac = torch.autograd.functional.jacobian(
        lambda x: linear(x.view(1, 1, 8, 8))[0], torch.rand(64, dtype=torch.float64)
    )
    assert torch.allclose(imp.path_norm, jac, rtol=1e-10, atol=1e-12)
    assert imp.heatmaps().shape == (4, 1, 8, 8)


def test_nothing_survives_gives_zero_shares():
    imp = feature_importance(_mlp([[0.0, 0.0]], [[1.0]]), (2,))
    assert imp.overall.tolist() == [0.0, 0.0]
    assert imp.per_output.tolist() == [[0.0, 0.0]]


def test_importance_validates_arguments():
    with pytest.raises(ValueError, match=r"`power > 0` must hold, but got power=0"):
        feature_importance(_mlp(W1, W2), (4,), power=0)
    with pytest.raises(ValueError, match=r"`0 <= output < 2` must hold, but got output=2"):
        feature_importance(_mlp(W1, W2), (4,)).heatmap(2)


# --- graph and components -------------------------------------------------------------------


def test_graph_keeps_only_live_nodes_and_edges():
    # h2 gets x3 but feeds nothing (dead); g1 feeds y1 but receives nothing (constant).
    w1 = [[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 5.0]]
    w2 = [[3.0, 0, 0], [0, 0, 0]]
    w3 = [[4.0, 0], [0, 6.0]]
    g = pathway_graph(_mlp(w1, w2, w3), (4,))
    assert g.units == ((0,), (0,), (0,), (0,))
    assert g.num_edges == 3
    assert g.edges() == [(0, 0, 0, 1.0), (1, 0, 0, 3.0), (2, 0, 0, 4.0)]
    assert g.live_outputs == (0,) and g.num_outputs == 2 and g.num_inputs == 4
    assert [c.as_dict() for c in g.components()] == [
        {"inputs": [0], "outputs": [0], "hidden": {"0": [0], "2": [0]}}
    ]


def test_two_components_with_original_unit_ids():
    w1 = [[1.0, -1.0, 0, 0], [0, 0, 0, 0], [0, 0, 2.0, 2.0]]
    w2 = [[3.0, 0, 0], [0, 0, 1.5]]
    g = pathway_graph(_mlp(w1, w2), (4,), kept_units={"0": [4, 7, 9], "2": [0, 1]})
    assert g.units == ((0, 1, 2, 3), (4, 9), (0, 1))
    assert g.level_names == ("input", "0", "2")
    comps = [c.as_dict() for c in g.components()]
    assert comps == [
        {"inputs": [0, 1], "outputs": [0], "hidden": {"0": [4]}},
        {"inputs": [2, 3], "outputs": [1], "hidden": {"0": [9]}},
    ]
    assert g.weight[0].tolist() == [[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]]
    assert g.strength[1].tolist() == [[3.0, 0.0], [0.0, 1.5]]


def test_shared_hidden_unit_merges_components():
    w1 = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    w2 = [[1.0, 0, 0], [0, 1.0, 1.0]]
    comps = pathway_graph(_mlp(w1, w2), (3,)).components()
    assert [(c.inputs, c.outputs) for c in comps] == [((0,), (0,)), ((1, 2), (1,))]
    w2b = [[1.0, 1.0, 0], [0, 1.0, 1.0]]  # h1 feeds both outputs
    comps = pathway_graph(_mlp(w1, w2b), (3,)).components()
    assert [(c.inputs, c.outputs) for c in comps] == [((0, 1, 2), (0, 1))]


def test_graph_of_masked_model_equals_graph_of_its_compact_export():
    torch.manual_seed(0)
    spec = mlp_spec((5,), [6, 6], num_outputs=2)
    model = build_model(spec)
    masks = _random_masks(model, (5,), seed=4, keep=0.35)
    g = pathway_graph(model, (5,), masks=masks)
    ex = export_compact(model, masks, torch.zeros(1, 5))
    gc = pathway_graph(ex.model, (5,), kept_units=ex.kept_units)
    assert g.units == gc.units
    assert g.components() == gc.components()
    for a, b in zip(g.weight, gc.weight, strict=True):
        assert torch.allclose(a, b)


def test_graph_reads_attached_gumbel_gates_in_eval_mode():
    torch.manual_seed(0)
    spec = mlp_spec((4,), [3], num_outputs=2)
    model = build_model(spec)
    method = make_method({"name": "gumbel"})
    method.attach(
        model,
        PruneContext.for_model(
            model,
            (4,),
            epochs=1,
            steps_per_epoch=1,
            sample_batch=lambda k: (torch.zeros(k, 4), torch.zeros(k, dtype=torch.long)),
        ),
    )
    with torch.no_grad():
        method.gates["0"].logits.copy_(torch.tensor([[5.0, -5, -5, -5], [-5, 5, -5, -5], [-5] * 4]))
        method.gates["2"].logits.copy_(torch.tensor([[5.0, -5, -5], [-5, 5, -5]]))
    model.train()
    g = pathway_graph(model, (4,))
    assert model.training  # restored
    assert g.units == ((0, 1), (0, 1), (0, 1))
    assert g.components() == pathway_graph(model, (4,), masks=method.masks()).components()
    assert [(c.inputs, c.outputs) for c in g.components()] == [((0,), (0,)), ((1,), (1,))]


def test_top_paths_match_brute_force_enumeration():
    torch.manual_seed(7)
    ws = []
    for shape in ((5, 6), (4, 5), (3, 4)):
        w = torch.randn(shape) * (torch.rand(shape) < 0.6)
        ws.append(w.tolist())
    g = pathway_graph(_mlp(*ws), (6,))
    brute = []
    for x, h, k, y in itertools.product(range(6), range(5), range(4), range(3)):
        s = abs(ws[0][h][x] * ws[1][k][h] * ws[2][y][k])
        if s > 0:
            brute.append((s, (x, h, k, y)))
    brute.sort(reverse=True)
    top = g.top_paths(7)
    assert [p.nodes for p in top] == [nodes for _, nodes in brute[:7]]
    assert [p.score for p in top] == pytest.approx([s for s, _ in brute[:7]])
    assert len(g.top_paths(10_000)) == len(brute)
    with pytest.raises(ValueError, match=r"`k >= 1` must hold, but got k=0"):
        g.top_paths(0)


def test_kept_units_and_masks_are_validated():
    with pytest.raises(ValueError, match=r"kept_units\['0'\] must list one original index"):
        pathway_graph(_mlp(W1, W2), (4,), kept_units={"0": [0, 1]})
    with pytest.raises(ValueError, match=r"mask of layer 0 has shape \(2, 2\)"):
        pathway_graph(_mlp(W1, W2), (4,), masks={"0": Mask(torch.ones(2, 2))})


# --- symmetry -------------------------------------------------------------------------------


def test_symmetry_pairs_equal_and_opposite_inputs():
    # columns: x0 = a, x1 = −a, x2 = b, x3 = 1.05·b, x4 unrelated, x5 = a (same group as x0).
    a, b = [1.0, -2.0, 0.0], [0.0, 0.5, 3.0]
    cols = [a, [-v for v in a], b, [1.05 * v for v in b], [1.0, 1.0, 1.0], a]
    w1 = [list(r) for r in zip(*cols, strict=True)]  # (3 hidden, 6 inputs)
    model = _mlp(w1, [[1.0, 1.0, 1.0]])
    rep = feature_symmetry(model, (6,), tol=0.1)
    groups = [(g.features, g.signs) for g in rep.groups]
    assert groups == [((0, 1, 5), (1, -1, 1)), ((2, 3), (1, 1))]
    assert rep.relation(0, 1) == "opposite" and rep.relation(1, 5) == "opposite"
    assert rep.relation(2, 3) == "equal" and rep.relation(0, 4) is None
    pairs = {(p.a, p.b): (p.relation, p.distance) for p in rep.pairs}
    assert pairs[(0, 1)] == ("opposite", pytest.approx(0.0, abs=1e-7))
    assert pairs[(0, 5)] == ("equal", pytest.approx(0.0, abs=1e-7))
    assert pairs[(2, 3)] == ("equal", pytest.approx(0.05 / 1.05, rel=1e-6))
    tight = feature_symmetry(model, (6,), tol=0.01)
    assert [g.features for g in tight.groups] == [(0, 1, 5)]


def test_symmetry_ignores_weights_into_dead_units_and_dead_inputs():
    # h1 feeds no output: x1's weight into it does not break x0 ≈ −x1; x2 is dead.
    w1 = [[2.0, -2.0, 0.0], [0.0, 9.0, 4.0]]
    rep = feature_symmetry(_mlp(w1, [[1.0, 0.0]]), (3,))
    assert [(g.features, g.signs) for g in rep.groups] == [((0, 1), (1, -1))]
    with pytest.raises(ValueError, match=r"`0 <= tol < 2` must hold, but got tol=2"):
        feature_symmetry(_mlp(w1, [[1.0, 0.0]]), (3,), tol=2)


def test_explain_bundles_everything():
    w1 = [[1.0, -1.0, 0, 0], [0, 0, 2.0, 2.0]]
    expl = explain(_mlp(w1, [[3.0, 0], [0, 1.5]]), (4,))
    assert len(expl.components) == 2
    assert expl.importance.overall.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25])
    assert [(g.features, g.signs) for g in expl.symmetry.groups] == [
        ((0, 1), (1, -1)),
        ((2, 3), (1, 1)),
    ]
    assert math.isclose(float(expl.importance.path_norm.sum()), 3 + 3 + 3 + 3)


# --- models that are not a chain ------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.bn(self.conv(x))).flatten(1))


class _PlainForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) + 1)


@pytest.mark.parametrize(
    ("model", "shape", "got"),
    [
        (_Residual(), (1, 4, 4), r"got _Residual with BatchNorm2d layers\.$"),
        (_PlainForward(), (4,), r"got _PlainForward \(a custom forward, not nn\.Sequential\)\.$"),
        (
            nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Sigmoid(), nn.Linear(3, 2)),
            (4,),
            r"got Sequential with LayerNorm, Sigmoid layers\.$",
        ),
    ],
)
@pytest.mark.parametrize("analysis", [pathway_graph, feature_importance, feature_symmetry, explain])
def test_models_that_are_not_a_chain_get_one_line(model, shape, got, analysis):
    need = r"^pathway analysis needs a chain of Linear/Conv2d layers \(an nn\.Sequential MLP or CNN"
    with pytest.raises(UnsupportedModelError, match=need) as info:
        analysis(model, shape)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert re.search(got, str(info.value)), str(info.value)
