"""Neuron pruning during training: hidden units removed on a schedule toward a neuron budget.

Shared by magnitude neuron pruning and KFAC neuron pruning, so that the two differ only in how
they score neurons. A unit is a channel of a channel group (:class:`Topology`): removing it
masks its producers' weight rows and biases and its norms' affine parameters, so it outputs
exactly zero and export removes it exactly; the output layer's units are never removed.

Schedule: ``prune_events`` removals at evenly spaced steps from ``prune_start`` to
``prune_end`` (fractions of the training steps); after removal ``k`` of ``n`` a layer keeps
``final + (initial − final)(1 − k/n)³`` units (Zhu & Gupta 2017's cubic schedule), so most
units go early, while the network is still plastic, and the last removals are small.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._hparams import Choice, Float, HParamTable, Int
from prunetune.prune._masking import FixedChannels, attach_channel_masks, channel_layer_masks
from prunetune.prune._topology import raw_weight

NEURON_HPARAMS: HParamTable = {
    "neurons": Float(
        0.002, 1.0, 0.1, log=True, help="neuron budget: kept fraction of hidden units (≥ 1/layer)"
    ),
    "allocation": Choice(
        ("layerwise", "global"),
        "layerwise",
        help="same kept fraction in every layer, or rank neurons across layers",
    ),
    "prune_start": Float(0.0, 1.0, 0.1, help="first removal, as a fraction of training steps"),
    "prune_end": Float(0.0, 1.0, 0.5, help="last removal (budget reached), fraction of steps"),
    "prune_events": Int(1, 1000, 10, help="removals from prune_start to prune_end (cubic)"),
}


class NeuronPruning(PruningMethod):
    """Base of the neuron methods; subclasses implement :meth:`neuron_scores` (higher = keep)."""

    hparams: ClassVar[HParamTable] = NEURON_HPARAMS

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        if c["prune_start"] > c["prune_end"]:
            raise ValueError(
                "`prune_start <= prune_end` must hold, but got "
                f"(prune_start={c['prune_start']}, prune_end={c['prune_end']})."
            )

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        c = self.config
        self.model, self.ctx = model, ctx
        topo = ctx.topology
        self.groups = topo.groups
        device = raw_weight(ctx.layers[0].module).device
        self.alive = torch.ones(topo.channels, dtype=torch.bool, device=device)
        self._channels = FixedChannels(topo.channels, device)
        attach_channel_masks(model, topo, self._channels, rows=True)
        self.final = torch.tensor(
            [max(1, round(c["neurons"] * g.size)) for g in self.groups], dtype=torch.long
        )
        self.sizes = torch.tensor([g.size for g in self.groups], dtype=torch.long)
        n, span = c["prune_events"], c["prune_end"] - c["prune_start"]
        fracs = (
            [c["prune_start"] + span * k / (n - 1) for k in range(n)] if n > 1 else [c["prune_end"]]
        )
        self.event_steps = [round(f * ctx.total_steps) for f in fracs]
        self._done = 0
        self.setup()
        self.on_step(0)

    def setup(self) -> None:
        """Called at the end of :meth:`attach` (register hooks, allocate statistics)."""

    @abstractmethod
    def neuron_scores(self) -> torch.Tensor:
        """One score per channel (flat over the groups); the lowest alive go first."""

    # -- schedule -----------------------------------------------------------------------------
    def targets(self, k: int) -> list[int]:
        """Units each channel group keeps after removal ``k`` (1-based) of ``prune_events``."""
        frac = (1.0 - k / self.config["prune_events"]) ** 3
        return [
            round(float(f + (n - f) * frac)) for f, n in zip(self.final, self.sizes, strict=True)
        ]

    def on_step(self, step: int) -> None:
        due = sum(1 for s in self.event_steps if s <= step)
        if due > self._done:
            self._done = due
            self.remove(self.targets(due))

    def remove(self, targets: list[int]) -> None:
        if not self.groups:
            return
        keep = self._choose(targets)
        self.alive = keep
        self._channels.set(keep)

    def last_event_step(self) -> int:
        """The last removal of the schedule."""
        return max(self.event_steps, default=0)

    def budget_count(self, now: int) -> int:
        """The count after the last removal, if it happened now (the current scores choose)."""
        if not self.groups or self._done >= len(self.event_steps):
            return now
        keep = self._choose(self.final.tolist())
        masks = channel_layer_masks(self.ctx.topology, keep.float())
        return min(
            now, self.ctx.topology.count(self.model, {n: m.weight for n, m in masks.items()})
        )

    def _choose(self, targets: list[int]) -> torch.Tensor:
        """The channels kept when each group keeps ``targets`` of its alive ones."""
        scores = self.neuron_scores().double().to(self.alive.device)
        spans = [(g.offset, g.offset + g.size) for g in self.groups]
        keep = torch.zeros_like(self.alive)
        if self.config["allocation"] == "layerwise":
            for (a, b), t in zip(spans, targets, strict=True):
                keep[a:b] = _top(scores[a:b], self.alive[a:b], t)
        else:
            s = scores.clone()
            s[~self.alive] = float("-inf")
            for a, b in spans:  # every group keeps its best alive unit
                s[a + int(torch.argmax(s[a:b]))] = float("inf")
            keep = _top(s, self.alive, sum(targets))
        return keep

    # -- masks --------------------------------------------------------------------------------
    def masks(self) -> dict[str, Mask]:
        return channel_layer_masks(self.ctx.topology, self._channels.vector())

    def stats(self) -> dict[str, float]:
        return {"live_units": float(self.alive.sum())}


def _top(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` highest-scored alive entries (ties broken by position)."""
    s = torch.where(alive, scores, float("-inf"))
    order = torch.argsort(s, descending=True, stable=True)
    out = torch.zeros_like(alive)
    out[order[: min(k, int(alive.sum()))]] = True
    return out
