"""Score → decide: turn per-weight scores into 0/1 masks at a target parameter density.

Score-based methods (magnitude, lottery, SNIP, GraSP, SynFlow, random) rank weights and keep the
best. The budget is a *parameter* density, counted exactly as :mod:`prunetune.prune.export`
counts (:meth:`Topology.count`: nonzero weights plus the biases and norm parameters of live
channels, so a weight that revives a channel also pays for its bias). :func:`masks_at_density` keeps as many top-scored weights as fit, either
ranked across all layers (``global``) or the same fraction of each layer (``layerwise``).

Example:
    >>> import torch
    >>> from prunetune.models import build_model, mlp_spec
    >>> from prunetune.prune._topology import Topology
    >>> model = build_model(mlp_spec((4,), [3], 2))
    >>> topo = Topology.build(model, torch.zeros(2, 4))
    >>> scores = {l.name: l.module.weight.detach().abs() for l in topo.layers}
    >>> masks = masks_at_density(topo, model, scores, 0.5, "global")
    >>> topo.count(model, masks) <= 0.5 * topo.dense
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._hparams import Choice, Float
from prunetune.prune._masking import (
    FixedChannels,
    attach_channel_masks,
    attach_fixed_masks,
    fixed_masks,
)
from prunetune.prune._topology import Topology, raw_weight

SCOPES = ("global", "layerwise")

# Shared declarations: every target-density method exposes the same two knobs.
DENSITY = Float(
    1e-4,
    1.0,
    0.05,
    log=True,
    help="target kept fraction of parameters (nonzero weights + biases of live units)",
)
SCOPE = Choice(SCOPES, "global", help="rank weights across all layers or within each layer")


def ranker(
    scores: Mapping[str, torch.Tensor], scope: str
) -> tuple[Callable[[int], dict[str, torch.Tensor]], int]:
    """Sort scores once; returns ``keep(k)`` (masks keeping the best ``k`` "steps") and max ``k``.

    ``global``: step ``k`` keeps the ``k`` highest scores of all layers. ``layerwise``: step
    ``k`` of ``K`` keeps ``round(k / K * n_l)`` (at least one) of each layer's ``n_l`` weights.
    Ties are broken by position, so the masks are deterministic and nested in ``k``.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, but got {scope!r}.")
    names = list(scores)
    flat = [scores[n].detach().flatten().double() for n in names]
    sizes = [f.numel() for f in flat]
    if scope == "global":
        order = torch.argsort(torch.cat(flat), descending=True, stable=True)
        total = sum(sizes)

        def keep(k: int) -> dict[str, torch.Tensor]:
            m = torch.zeros(total)
            m[order[:k]] = 1.0
            return {
                n: part.view(scores[n].shape).to(scores[n].device)
                for n, part in zip(names, m.split(sizes), strict=True)
            }

        return keep, total
    orders = [torch.argsort(f, descending=True, stable=True) for f in flat]
    steps = max(sizes)

    def keep_layerwise(k: int) -> dict[str, torch.Tensor]:
        out = {}
        for n, order, size in zip(names, orders, sizes, strict=True):
            m = torch.zeros(size)
            m[order[: max(1, round(k / steps * size))]] = 1.0
            out[n] = m.view(scores[n].shape).to(scores[n].device)
        return out

    return keep_layerwise, steps


def masks_at_density(
    topology: Topology,
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    density: float,
    scope: str,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the highest scores such that the kept parameters (:meth:`Topology.count`) are at
    most ``density`` times the dense count, keeping as many as fit (bisection on the nested
    rankings of :func:`ranker`).

    Args:
        topology: the structure of ``model``.
        model: the model the scores belong to (its raw weights are counted).
        scores: per-layer scores shaped like the weights; higher is kept first.
        density: target parameter density in (0, 1].
        scope: ``global`` or ``layerwise``.
        eligible: 0/1 masks of weights that may be kept (already pruned ones stay pruned).
    """
    if eligible is not None:
        scores = {
            n: torch.where(eligible[n] != 0, s.double(), float("-inf")) for n, s in scores.items()
        }
    keep, hi = ranker(scores, scope)
    budget = density * topology.dense

    def fits(k: int) -> bool:
        return topology.count(model, _restrict(keep(k), eligible)) <= budget

    if fits(hi):
        return _restrict(keep(hi), eligible)
    lo = 0  # invariant: fits(lo) (or lo is the smallest ranking step), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return _restrict(keep(lo), eligible)


def masks_at_fraction(
    scores: Mapping[str, torch.Tensor],
    fraction: float,
    scope: str,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the highest-scored ``fraction`` of the weights (no parameter counting; cheap)."""
    if eligible is not None:
        scores = {
            n: torch.where(eligible[n] != 0, s.double(), float("-inf")) for n, s in scores.items()
        }
    keep, hi = ranker(scores, scope)
    return _restrict(keep(round(fraction * hi)), eligible)


def _restrict(
    masks: dict[str, torch.Tensor], eligible: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    if eligible is None:
        return masks
    return {n: m * (eligible[n] != 0).to(m) for n, m in masks.items()}


class ScoredMasks(PruningMethod):
    """Base of the weight-mask methods: fixed 0/1 masks held in ``FixedMask`` buffers.

    Subclasses score weights and call :meth:`set_masks`; until then every mask is all ones.
    """

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        self.model, self.ctx = model, ctx
        self._fixed = attach_fixed_masks(ctx.layers)
        device = raw_weight(ctx.layers[0].module).device
        self._channels = FixedChannels(ctx.topology.channels, device)
        attach_channel_masks(model, ctx.topology, self._channels, rows=False)

    def masks(self) -> dict[str, Mask]:
        return fixed_masks(self._fixed)

    def weights(self) -> dict[str, torch.Tensor]:
        """The raw (unmasked) weight tensors by layer name; gradients flow into these."""
        return {layer.name: raw_weight(layer.module) for layer in self.ctx.layers}

    def current(self) -> dict[str, torch.Tensor]:
        return {name: fm.mask for name, fm in self._fixed.items()}

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Set weight masks; channels left without a kept weight close (biases, norms)."""
        for name, m in masks.items():
            self._fixed[name].mask.copy_(m)
        self._channels.set(self.ctx.topology.open_channels(self.current()))

    def prune_to(
        self, scores: Mapping[str, torch.Tensor], density: float, scope: str, **kw: Any
    ) -> None:
        masks = masks_at_density(self.ctx.topology, self.model, scores, density, scope, **kw)
        self.set_masks(masks)

    def budget_count(self, now: int) -> int:
        """At most ``density`` of the dense count (:func:`masks_at_density` keeps as many
        weights as fit under it), for methods with a ``density`` budget."""
        density = self.config.get("density")
        if density is None:
            return now
        return min(now, int(density * self.ctx.topology.dense))

    def stats(self) -> dict[str, float]:
        kept = sum(int(m.sum()) for m in self.current().values())
        total = sum(m.numel() for m in self.current().values())
        return {"weight_density": kept / total}
