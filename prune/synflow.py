"""SynFlow: iterative synaptic flow pruning at initialisation, without data.

Tanaka, Kunin, Yamins & Ganguli (2020), "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS. On a copy of the network with every parameter
replaced by its absolute value (in float64, as the reference code), ``R = 1ᵀ f(1)`` for an
all-ones input; each weight scores ``|w ⊙ ∂R/∂w|``. Over ``iterations`` rounds the kept
parameter density follows ``density^(k/n)`` (the paper's exponential schedule), re-scoring with
the current mask each round, which avoids layer collapse. The original network then trains from
its initial weights with the final mask fixed.

Departures: the last round keeps weights up to the target *parameter* density (weights plus
biases of live units, as export counts); the intermediate rounds follow ``density^(k/n)`` as a
fraction of the weights, as in the paper.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "synflow", "density": 0.01, "iterations": 100})
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import HParamTable, Int
from prunetune.prune._scoring import DENSITY, SCOPE, ScoredMasks, masks_at_fraction
from prunetune.prune._topology import Layer


def synflow_scores(
    net: nn.Module, layers: list[Layer], masks: dict[str, torch.Tensor], input_shape
) -> dict[str, torch.Tensor]:
    """``|w ⊙ ∂R/∂w|`` with ``R = sum(net(1))``; ``net`` is already made positive, ``masks`` is
    applied to the weights of ``layers`` (found in ``net`` by name)."""
    ws = [net.get_submodule(layer.name).weight for layer in layers]
    w0 = [w.detach().clone() for w in ws]
    with torch.no_grad():
        for w, layer in zip(ws, layers, strict=True):
            w.mul_(masks[layer.name].to(w))
    x = torch.ones(1, *input_shape, dtype=ws[0].dtype, device=ws[0].device)
    grads = torch.autograd.grad(net(x).sum(), ws)
    out = {
        layer.name: (g * w).abs().detach() for layer, w, g in zip(layers, ws, grads, strict=True)
    }
    with torch.no_grad():
        for w, w_orig in zip(ws, w0, strict=True):
            w.copy_(w_orig)
    return out


@register_method
class SynFlow(ScoredMasks):
    """Iterative, data-free synaptic-flow scores at initialisation (Tanaka et al. 2020)."""

    name = "synflow"
    hparams: ClassVar[HParamTable] = {
        "density": DENSITY,
        "scope": SCOPE,
        "iterations": Int(1, 1000, 100, log=True, help="scoring/pruning rounds (exponential)"),
    }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        net = copy.deepcopy(model).double().eval()  # before masks are attached
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        super().attach(model, ctx)
        c, n = self.config, self.config["iterations"]
        masks = {name: m.clone() for name, m in self.current().items()}
        for k in range(1, n):  # intermediate rounds: weight fractions (counting is slower)
            scores = synflow_scores(net, ctx.layers, masks, ctx.input_shape)
            masks = masks_at_fraction(scores, c["density"] ** (k / n), c["scope"], eligible=masks)
        scores = synflow_scores(net, ctx.layers, masks, ctx.input_shape)
        self.prune_to(scores, c["density"], c["scope"], eligible=masks)
