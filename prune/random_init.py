"""Random pruning at initialisation: the sanity baseline.

Every weight gets an i.i.d. uniform score (from a generator seeded by the trial's seed); the
highest are kept up to the target parameter density and the network trains with the mask fixed.
Ranking across all layers keeps each layer at about the same density in expectation (uniform
random pruning, as used as a baseline by Frankle et al. 2021, "Pruning Neural Networks at
Initialization: Why are We Missing the Mark?", ICLR).

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "random", "density": 0.01})
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import HParamTable
from prunetune.prune._scoring import DENSITY, ScoredMasks


@register_method
class RandomPruning(ScoredMasks):
    """Uniformly random masks at initialisation."""

    name = "random"
    hparams: ClassVar[HParamTable] = {"density": DENSITY}

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        super().attach(model, ctx)
        gen = torch.Generator().manual_seed(ctx.seed + 0x5EED)
        scores = {n: torch.rand(w.shape, generator=gen) for n, w in self.weights().items()}
        self.prune_to(scores, self.config["density"], "global")
