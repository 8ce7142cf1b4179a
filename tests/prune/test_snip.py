"""SNIP: connection sensitivity |g ⊙ w| against an independent functional computation."""

from __future__ import annotations

import torch
from torch.func import grad

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, make_method
from prunetune.prune._scoring import masks_at_density
from prunetune.prune._topology import raw_param
from prunetune.prune.snip import snip_scores


def _tiny():
    torch.manual_seed(0)
    model = build_model(mlp_spec((5,), [4], 3))
    x, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    return model, x, y


def _independent(model, x, y):
    b1, b2 = model[0].bias.detach(), model[2].bias.detach()

    def loss(w1, w2):
        h = torch.relu(x @ w1.T + b1)
        return torch.nn.functional.cross_entropy(h @ w2.T + b2, y)

    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    g1, g2 = grad(loss, argnums=(0, 1))(w1, w2)
    return {"0": (g1 * w1).abs(), "2": (g2 * w2).abs()}


def test_snip_score_is_abs_gradient_times_weight():
    model, x, y = _tiny()
    expected = _independent(model, x, y)
    weights = {"0": model[0].weight, "2": model[2].weight}
    got = snip_scores(model, weights, x, y, torch.nn.functional.cross_entropy)
    for n in expected:
        assert torch.allclose(got[n], expected[n], atol=1e-7)


def test_snip_masks_keep_the_top_sensitivities_and_do_not_train_at_attach():
    model, x, y = _tiny()
    expected = _independent(model, x, y)
    w0 = [p.detach().clone() for p in model.parameters()]
    ctx = PruneContext.for_model(
        model,
        (5,),
        epochs=1,
        steps_per_epoch=1,
        sample_batch=lambda k: (x, y),
    )
    method = make_method({"name": "snip", "density": 0.4})
    method.attach(model, ctx)
    want = masks_at_density(ctx.topology, model, expected, 0.4, "global")
    for n, m in method.masks().items():
        assert torch.equal(m.weight, want[n])
    # the raw (unmasked) parameters are untouched; masks (weights, and the biases of units
    # left without an incoming weight) act only through the parametrizations
    raw = [raw_param(model[i], p) for i in (0, 2) for p in ("weight", "bias")]
    assert all(torch.equal(r.detach(), w) for r, w in zip(raw, w0, strict=True))
    assert all(p.grad is None for p in model.parameters())
