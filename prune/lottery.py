"""Iterative magnitude pruning with rewinding: lottery tickets.

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks", ICLR; rewinding to an early iteration: Frankle, Dziugaite, Roy & Carbin (2020),
"Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML.

Rounds of train → prune by magnitude → rewind the surviving weights (and every bias) to their
values at an early step ``r``, then the final ticket trains with the mask fixed.

How the epoch budget of ``T`` steps is split: the final ticket gets ``final_fraction · T``
steps; the rest is cut into ``n`` equal pruning rounds of ``L`` steps. ``n`` follows from the
target: ``ceil(log(density) / log(1 − rate))`` rounds of ``rate`` (20%) each, capped at
``max_rounds`` and at one step per round; round ``k`` prunes to parameter density
``density^(k/n)``, so the target is met exactly and a capped run prunes more per round. The
rewind point is ``r = round(rewind_at · L)`` steps into the first (dense) round; ``r = 0`` is the
original lottery ticket (rewind to initialisation). Optimiser state is reset at every rewind.

Departure: the papers train every round to convergence (a budget of ``n + 1`` full trainings);
here all rounds share one trial's epoch budget, so each round is short.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "lottery", "density": 0.05, "rate": 0.2})
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import PruneContext, register_method
from prunetune.prune._hparams import Float, HParamTable, Int
from prunetune.prune._scoring import DENSITY, SCOPE, ScoredMasks


@register_method
class LotteryTicket(ScoredMasks):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; 2020)."""

    name = "lottery"
    hparams: ClassVar[HParamTable] = {
        "density": DENSITY,
        "scope": SCOPE,
        "rate": Float(0.05, 0.9, 0.2, help="fraction of the remaining weights pruned per round"),
        "max_rounds": Int(1, 100, 10, help="cap on the pruning rounds (raises the rate)"),
        "rewind_at": Float(
            0.0, 0.9, 0.05, help="rewind point, as a fraction of the first round's steps"
        ),
        "final_fraction": Float(
            0.05, 0.95, 0.5, help="fraction of the steps that train the final ticket"
        ),
    }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        super().attach(model, ctx)
        c = self.config
        pre = ctx.total_steps - round(c["final_fraction"] * ctx.total_steps)
        wanted = math.ceil(math.log(c["density"]) / math.log(1.0 - c["rate"]) - 1e-9)
        self.rounds = max(1, min(wanted, c["max_rounds"], pre))
        self.round_steps = max(1, pre // self.rounds)
        self.rewind_step = round(c["rewind_at"] * self.round_steps)
        self.params = list(model.parameters())
        self.saved: list[torch.Tensor] | None = None
        self.done = 0
        self.on_step(0)

    def on_step(self, step: int) -> None:
        if step == self.rewind_step:
            self.saved = [p.detach().clone() for p in self.params]
        if self.done < self.rounds and step == (self.done + 1) * self.round_steps:
            self.done += 1
            scores = {n: w.detach().abs() for n, w in self.weights().items()}
            target = self.config["density"] ** (self.done / self.rounds)
            self.prune_to(scores, target, self.config["scope"], eligible=self.current())
            self.rewind()

    def last_event_step(self) -> int:
        """The last round's prune and rewind."""
        return self.rounds * self.round_steps

    def rewind(self) -> None:
        """Restore the weights saved at the rewind step and forget the optimiser's state."""
        assert self.saved is not None  # rewind_step < round_steps: saved in round 1
        with torch.no_grad():
            for p, s in zip(self.params, self.saved, strict=True):
                p.copy_(s)
        opt = self.ctx.extra.get("optimizer")
        if opt is not None:
            for p in self.params:
                opt.state.pop(p, None)

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "round": float(self.done)}
