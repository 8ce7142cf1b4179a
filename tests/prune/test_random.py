"""Random pruning: seeded, uniform across layers, on target."""

from __future__ import annotations

import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, export_compact, make_method

SPEC = mlp_spec((1, 16, 16), [200, 100], 10)


def _masks(seed, density=0.1):
    torch.manual_seed(0)  # same weights; only the method's seed varies
    model = build_model(SPEC)
    ctx = PruneContext.for_model(
        model,
        (1, 16, 16),
        epochs=1,
        steps_per_epoch=1,
        sample_batch=lambda k: (torch.randn(k, 1, 16, 16), torch.zeros(k, dtype=torch.long)),
        seed=seed,
    )
    method = make_method({"name": "random", "density": density})
    method.attach(model, ctx)
    return model, method.masks()


def test_seed_decides_the_mask():
    _, a = _masks(0)
    _, b = _masks(0)
    _, c = _masks(1)
    assert all(torch.equal(a[n].weight, b[n].weight) for n in a)
    assert any(not torch.equal(a[n].weight, c[n].weight) for n in a)


def test_layers_are_pruned_uniformly_and_the_target_is_met():
    model, masks = _masks(3, density=0.1)
    per_layer = [float(m.weight.mean()) for m in masks.values()]
    assert all(abs(d - per_layer[0]) < 0.02 for d in per_layer)  # 51200, 20000, 1000 weights
    ex = export_compact(model, masks, torch.zeros(2, 1, 16, 16))
    assert 0.099 <= ex.density <= 0.1
