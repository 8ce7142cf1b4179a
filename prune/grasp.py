"""GraSP: gradient signal preservation at initialisation.

Wang, Zhang & Grosse (2020), "Picking Winning Tickets Before Training by Preserving Gradient
Flow", ICLR. At initialisation, with ``g = ∇L`` on a batch (logits divided by a temperature
``T``, 200 in the paper) and the Hessian-gradient product ``Hg``, a weight scores
``S = −w ⊙ Hg``; removing the weights with the *largest* ``S`` reduces the gradient norm the
least, so the lowest ``S`` (highest ``w ⊙ Hg``) are kept up to the target parameter density,
ranked across all layers as in the paper. The network then trains with the mask fixed.

Departure: ``g`` and ``Hg`` come from one batch of ``samples`` examples (the reference code
accumulates ``g`` over several batches).

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "grasp", "density": 0.05})
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import Float, HParamTable
from prunetune.prune._scoring import DENSITY, SCOPE, ScoredMasks
from prunetune.prune._topology import Topology, raw_weight
from prunetune.prune.snip import SAMPLES


def grasp_keep_scores(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """``w ⊙ Hg`` per weight (``= −S``; higher is kept)."""
    ws = list(weights.values())
    g = torch.autograd.grad(loss_fn(model(x) / temperature, y), ws)
    g_graph = torch.autograd.grad(loss_fn(model(x) / temperature, y), ws, create_graph=True)
    z = sum((a * b.detach()).sum() for a, b in zip(g_graph, g, strict=True))
    hg = torch.autograd.grad(z, ws)
    return {n: (w * h).detach() for (n, w), h in zip(weights.items(), hg, strict=True)}


@register_method
class GraSP(ScoredMasks):
    """Keep the weights whose removal would most reduce gradient flow (Wang et al. 2020)."""

    name = "grasp"
    hparams: ClassVar[HParamTable] = {
        "density": DENSITY,
        "scope": SCOPE,
        "samples": SAMPLES,
        "temperature": Float(1.0, 1000.0, 200.0, log=True, help="logits are divided by T"),
    }

    @classmethod
    def check(cls, topology: Topology) -> None:
        """GraSP needs second derivatives of the model: probe one double backward on the
        topology's example batch (torch has none for some ops, e.g. hardsigmoid)."""
        model = topology.model
        ws = [raw_weight(layer.module) for layer in topology.layers]
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                x = topology.example.to(ws[0].device)
                g = torch.autograd.grad(model(x).square().mean(), ws, create_graph=True)
                z = sum(t.square().sum() for t in g)
                torch.autograd.grad(z, ws, allow_unused=True)
        except RuntimeError as e:
            op = str(e).splitlines()[0]
            raise ValueError(
                f"method grasp cannot prune {type(model).__name__} (layer "
                f"{topology.layers[0].name} onwards): it needs second derivatives, and torch "
                f"has none for an op the model uses ({op})."
            ) from None
        finally:
            model.train(was_training)

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        super().attach(model, ctx)
        c = self.config
        x, y = ctx.sample_batch(c["samples"])
        scores = grasp_keep_scores(model, self.weights(), x, y, ctx.loss_fn, c["temperature"])
        self.prune_to(scores, c["density"], c["scope"])
