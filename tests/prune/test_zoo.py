"""The contract-test zoo builds, runs, is seeded, and torch-pruning can walk every model."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from zoo import ZOO, output_layer

NAMES = sorted(ZOO)

# The channel groups torch-pruning finds with the classifier ignored, as sorted group sizes:
# one group per independent hidden width; layers tied by a residual add (or by a depthwise conv,
# or an SE multiply) share one. Derived by hand from the definitions in zoo.py.
EXPECTED_GROUP_SIZES = {
    "mlp": [16, 32],  # two hidden Linears
    "lenet5": [6, 16, 84, 120],  # conv1, conv2, fc1, fc2
    # per stage: conv1's hidden width, and the add-tied output (stage 1's is tied to the stem)
    "resnet8": [8, 8, 16, 16, 32, 32],
    "concat": [6, 8, 16],  # branch5, branch3 (slices of the concat), fuse
    # block outputs: stem+block1 (add) 8, block2+block3 (add) 16; hidden (expand = depthwise)
    # widths 32, 32, 64; the final 1x1 conv 32
    "mobilenetv2": [8, 16, 32, 32, 32, 64],
    # four add-tied stage outputs (stem with stage 1) and eight block-internal conv1 widths
    "resnet18": [8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64],
    # stem+block1 depthwise+SE1 expand 8, SE1 reduce 4, block1 out 8, block2 hidden 24,
    # blocks 2-4 out (adds) 16, block3 hidden 32, block4 hidden 48 and its SE reduce 12,
    # final conv 48, classifier hidden 64
    "mobilenetv3_small": [4, 8, 8, 12, 16, 24, 32, 48, 48, 64],
    # stem 8, transition 8, four bottlenecks 8, four growths 4 (slices of the concatenations)
    "densenet": [4, 4, 4, 4, 8, 8, 8, 8, 8, 8],
}


def test_zoo_lists_the_agreed_models():
    assert set(ZOO) == set(EXPECTED_GROUP_SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_one_logit_row_per_sample(name):
    model, x = ZOO[name]()
    assert model.training
    assert x.shape[0] == 4
    with torch.no_grad():
        assert model(x).shape == (4, 10)
        assert model.eval()(x).shape == (4, 10)
    assert output_layer(model).out_features == 10


@pytest.mark.parametrize("name", NAMES)
def test_construction_is_seeded(name):
    (m1, x1), (m2, x2), (m3, x3) = ZOO[name](), ZOO[name](seed=0), ZOO[name](seed=1)
    a, b, c = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert list(a) == list(b) == list(c)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


@pytest.mark.parametrize("name", NAMES)
def test_torch_pruning_groups_every_zoo_model(name):
    model, x = ZOO[name]()
    head = output_layer(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(dg.get_all_groups(ignored_layers=[head]))
    assert sorted(len(g.items[0].idxs) for g in groups) == EXPECTED_GROUP_SIZES[name]

    # Its surgery agrees: removing channel 0 of every group leaves a model that still runs.
    n_before = sum(p.numel() for p in model.parameters())
    roots = [(g.items[0].dep.target.module, g.items[0].dep.handler) for g in groups]
    for module, prune_fn in roots:
        dg.get_pruning_group(module, prune_fn, idxs=[0]).prune()
    with torch.no_grad():
        assert model(x).shape == (4, 10)
    assert head.out_features == 10
    assert sum(p.numel() for p in model.parameters()) < n_before


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_group_passes_the_topology_checks(name):
    """torch-pruning maps every zoo model right, so prunetune's checks (closed channels read as
    zeros, one export removing half of every group's channels computing what the closed model
    computes) leave only the classifier fixed."""
    from prunetune.prune import Topology

    model, x = ZOO[name]()
    head = next(n for n, m in model.named_modules() if m is output_layer(model))
    topo = Topology.build(model, x)
    assert topo.fixed == {head: "its channels are the model's output"}
    assert len(topo.groups) == len(EXPECTED_GROUP_SIZES[name])
