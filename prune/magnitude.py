"""Magnitude pruning after training, at weight and at neuron granularity.

``magnitude`` — Han, Pool, Tran & Dally (2015), "Learning both Weights and Connections for
Efficient Neural Networks", NeurIPS. Train dense for a fraction ``prune_at`` of the step budget,
keep the largest ``|w|`` (across all layers or per layer) up to the target parameter density,
then fine-tune the rest of the budget with the mask fixed. Departure: one prune → fine-tune
cycle (Han et al. iterate several), which is the usual one-shot baseline.

``magnitude_neuron`` — the same idea at neuron granularity (a hidden unit's score is the L2
norm of its incoming weights, cf. Li et al. 2017 for filters), removed on the neuron schedule of
:mod:`prunetune.prune._neurons`; the baseline for KFAC neuron pruning. With
``prune_start = prune_end`` and ``prune_events = 1`` it is one-shot pruning after training.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "magnitude", "density": 0.01, "prune_at": 0.5})
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import Float, HParamTable
from prunetune.prune._neurons import NEURON_HPARAMS, NeuronPruning
from prunetune.prune._scoring import DENSITY, SCOPE, ScoredMasks
from prunetune.prune._topology import raw_weight


@register_method
class MagnitudePruning(ScoredMasks):
    """Train dense, keep the largest weights, fine-tune with the mask fixed (Han et al. 2015)."""

    name = "magnitude"
    hparams: ClassVar[HParamTable] = {
        "density": DENSITY,
        "scope": SCOPE,
        "prune_at": Float(
            0.0, 0.95, 0.5, help="fraction of training steps trained dense before pruning"
        ),
    }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        super().attach(model, ctx)
        self.prune_step = round(self.config["prune_at"] * ctx.total_steps)
        self.on_step(0)

    def last_event_step(self) -> int:
        return self.prune_step

    def on_step(self, step: int) -> None:
        if step == self.prune_step:
            scores = {n: w.detach().abs() for n, w in self.weights().items()}
            self.prune_to(scores, self.config["density"], self.config["scope"])


@register_method
class MagnitudeNeuronPruning(NeuronPruning):
    """Remove the channels with the smallest incoming-weight L2 norm, on a schedule."""

    name = "magnitude_neuron"
    hparams: ClassVar[HParamTable] = NEURON_HPARAMS

    def neuron_scores(self) -> torch.Tensor:
        """Per channel, the L2 norm of its incoming weights over all of its producers."""
        sq = torch.zeros(self.ctx.topology.channels, dtype=torch.float64)
        for g in self.ctx.topology.groups:
            for p in g.producers:
                w = raw_weight(self.model.get_submodule(p.name)).detach()
                rows = w.flatten(1)[p.idx.to(w.device)].double().pow(2).sum(1).cpu()
                sq.index_add_(0, g.offset + p.root, rows)
        return sq.sqrt()
