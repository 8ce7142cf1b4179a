"""SNIP: single-shot connection sensitivity at initialisation.

Lee, Ajanthan & Torr (2019), "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR. At initialisation, on one batch of ``samples`` training examples, each weight
scores ``|∂L/∂c · 1| = |g ⊙ w|`` (the loss sensitivity to its mask ``c`` at ``c = 1``); the
highest scores are kept up to the target parameter density (across all layers, as in the
paper), and the network trains from its initial weights with the mask fixed.

Departure: the paper normalises scores by their sum, which does not change a global ranking.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "snip", "density": 0.02, "samples": 256})
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import HParamTable, Int
from prunetune.prune._scoring import DENSITY, SCOPE, ScoredMasks

SAMPLES = Int(1, 65536, 512, log=True, help="training samples used to score at initialisation")


def snip_scores(
    model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss_fn
) -> dict[str, torch.Tensor]:
    """``|g ⊙ w|`` per weight, ``g`` the gradient of ``loss_fn(model(x), y)``."""
    grads = torch.autograd.grad(loss_fn(model(x), y), list(weights.values()))
    return {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads, strict=True)}


@register_method
class SNIP(ScoredMasks):
    """Connection sensitivity ``|g ⊙ w|`` at initialisation (Lee et al. 2019)."""

    name = "snip"
    hparams: ClassVar[HParamTable] = {"density": DENSITY, "scope": SCOPE, "samples": SAMPLES}

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        super().attach(model, ctx)
        x, y = ctx.sample_batch(self.config["samples"])
        scores = snip_scores(model, self.weights(), x, y, ctx.loss_fn)
        self.prune_to(scores, self.config["density"], self.config["scope"])
