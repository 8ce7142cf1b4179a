"""Neuron pruning during training: hidden units removed on a schedule toward a neuron budget.

Shared by magnitude neuron pruning and KFAC neuron pruning, so that the two differ only in how
they score neurons. A removed unit has its incoming weights and its bias masked to zero (its
output is then ``act(0) = 0`` for every supported activation, which export removes exactly);
output units are never removed.

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
from torch.nn.utils import parametrize

from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._hparams import Choice, Float, HParamTable, Int
from prunetune.prune._masking import FixedMask
from prunetune.prune._topology import raw_bias, raw_weight

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
        self.hidden = ctx.layers[:-1]
        self.alive: dict[str, torch.Tensor] = {}
        self._w: dict[str, FixedMask] = {}
        self._b: dict[str, FixedMask] = {}
        for layer in self.hidden:
            w = raw_weight(layer.module)
            self.alive[layer.name] = torch.ones(layer.out_units, dtype=torch.bool, device=w.device)
            self._w[layer.name] = FixedMask(torch.ones_like(w))
            parametrize.register_parametrization(
                layer.module, "weight", self._w[layer.name], unsafe=True
            )
            if raw_bias(layer.module) is not None:
                self._b[layer.name] = FixedMask(torch.ones(layer.out_units, device=w.device))
                parametrize.register_parametrization(
                    layer.module, "bias", self._b[layer.name], unsafe=True
                )
        self.final = {
            layer.name: max(1, round(c["neurons"] * layer.out_units)) for layer in self.hidden
        }
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
    def neuron_scores(self) -> dict[str, torch.Tensor]:
        """Per hidden layer, one score per unit; the lowest alive units are removed first."""

    # -- schedule -----------------------------------------------------------------------------
    def targets(self, k: int) -> dict[str, int]:
        """Units each hidden layer keeps after removal ``k`` (1-based) of ``prune_events``."""
        frac = (1.0 - k / self.config["prune_events"]) ** 3
        return {
            layer.name: round(
                self.final[layer.name] + (layer.out_units - self.final[layer.name]) * frac
            )
            for layer in self.hidden
        }

    def on_step(self, step: int) -> None:
        due = sum(1 for s in self.event_steps if s <= step)
        if due > self._done:
            self._done = due
            self.remove(self.targets(due))

    def remove(self, targets: dict[str, int]) -> None:
        scores = self.neuron_scores()
        keep: dict[str, torch.Tensor] = {}
        if self.config["allocation"] == "layerwise":
            for name, s in scores.items():
                keep[name] = _top(s.double(), self.alive[name], targets[name])
        else:
            names = list(scores)
            s = [scores[n].double().clone() for n in names]
            for n, v in zip(names, s, strict=True):  # every layer keeps its best alive unit
                v[~self.alive[n]] = float("-inf")
                v[int(torch.argmax(v))] = float("inf")
            flat = torch.cat(s)
            alive = torch.cat([self.alive[n] for n in names])
            kept = _top(flat, alive, sum(targets.values()))
            keep = dict(zip(names, kept.split([v.numel() for v in s]), strict=True))
        for name, k in keep.items():
            self.alive[name] = k
            w = self._w[name].mask
            w.copy_(k.view((-1,) + (1,) * (w.dim() - 1)).expand_as(w))
            if name in self._b:
                self._b[name].mask.copy_(k)

    # -- masks --------------------------------------------------------------------------------
    def masks(self) -> dict[str, Mask]:
        out = {
            name: Mask(
                weight=self._w[name].mask.detach().clone(),
                bias=self._b[name].mask.detach().clone() if name in self._b else None,
            )
            for name in self._w
        }
        last = self.ctx.layers[-1]
        out[last.name] = Mask(weight=torch.ones_like(raw_weight(last.module)).detach())
        return out

    def stats(self) -> dict[str, float]:
        return {"live_units": float(sum(int(a.sum()) for a in self.alive.values()))}


def _top(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` highest-scored alive entries (ties broken by position)."""
    s = torch.where(alive, scores, float("-inf"))
    order = torch.argsort(s, descending=True, stable=True)
    out = torch.zeros_like(alive)
    out[order[: min(k, int(alive.sum()))]] = True
    return out
