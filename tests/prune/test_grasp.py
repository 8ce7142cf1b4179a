"""GraSP: w ⊙ Hg against an explicit Hessian of a tiny network."""

from __future__ import annotations

import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, make_method
from prunetune.prune._scoring import masks_at_density
from prunetune.prune.grasp import grasp_keep_scores

T = 5.0


def _tiny():
    torch.manual_seed(1)
    model = build_model(mlp_spec((4,), [3], 3, activation="tanh"))  # smooth: H is not trivial
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, y


def _explicit(model, x, y):
    """``θ ⊙ (H g)`` with ``H`` the full Hessian over both weight matrices, in float64."""
    w1, w2, b1, b2 = (
        t.detach().double()
        for t in (model[0].weight, model[2].weight, model[0].bias, model[2].bias)
    )
    x, n1 = x.double(), w1.numel()

    def loss(theta):
        a, b = theta[:n1].view_as(w1), theta[n1:].view_as(w2)
        out = torch.tanh(x @ a.T + b1) @ b.T + b2
        return torch.nn.functional.cross_entropy(out / T, y)

    theta = torch.cat([w1.flatten(), w2.flatten()])
    g = torch.autograd.functional.jacobian(loss, theta)
    h = torch.autograd.functional.hessian(loss, theta)  # (n, n), explicit
    s = theta * (h @ g)
    return {"0": s[:n1].view(3, 4).float(), "2": s[n1:].view(3, 3).float()}


def test_grasp_scores_equal_weight_times_hessian_gradient_product():
    model, x, y = _tiny()
    expected = _explicit(model, x, y)
    weights = {"0": model[0].weight, "2": model[2].weight}
    got = grasp_keep_scores(model, weights, x, y, torch.nn.functional.cross_entropy, T)
    for n in expected:
        assert torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-7)


def test_grasp_removes_the_largest_minus_w_hg():
    model, x, y = _tiny()
    expected = _explicit(model, x, y)
    ctx = PruneContext.for_model(
        model,
        (4,),
        epochs=1,
        steps_per_epoch=1,
        sample_batch=lambda k: (x, y),
    )
    method = make_method({"name": "grasp", "density": 0.5, "temperature": T})
    method.attach(model, ctx)
    want = masks_at_density(ctx.topology, model, expected, 0.5, "global")
    for n, m in method.masks().items():
        assert torch.equal(m.weight, want[n])
    # the kept weights have the lowest S = −w ⊙ Hg
    s = torch.cat([-expected[n].flatten() for n in ("0", "2")])
    kept = torch.cat([method.masks()[n].weight.flatten() for n in ("0", "2")]).bool()
    assert s[kept].max() <= s[~kept].min()
