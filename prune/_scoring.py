"""Score → decide: turn per-weight scores into 0/1 masks at a target parameter density.

Score-based methods (magnitude, lottery, SNIP, GraSP, SynFlow, random) rank weights and keep the
best. The budget is a *parameter* density, counted exactly as :mod:`prunetune.prune.export`
counts: nonzero weights plus the biases of live units (so a weight that revives a unit also
pays for its bias). :func:`masks_at_density` keeps as many top-scored weights as fit, either
ranked across all layers (``global``) or the same fraction of each layer (``layerwise``).

Example:
    >>> import torch
    >>> from prunetune.models import build_model, mlp_spec
    >>> from prunetune.prune import prunable_layers
    >>> model = build_model(mlp_spec((4,), [3], 2))
    >>> layers = prunable_layers(model, (4,))
    >>> scores = {l.name: l.module.weight.detach().abs() for l in layers}
    >>> masks = masks_at_density(layers, scores, 0.5, "global")
    >>> live_params(layers, masks) <= 0.5 * dense_params(layers)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._hparams import Choice, Float
from prunetune.prune._masking import attach_fixed_masks, fixed_masks
from prunetune.prune._topology import Layer, raw_bias, raw_weight
from prunetune.prune.export import _unit_connections

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


def dense_params(layers: list[Layer]) -> int:
    """All weights and biases of the unpruned layers (``ExportResult.params_dense``)."""
    return sum(
        raw_weight(layer.module).numel()
        + (layer.out_units if raw_bias(layer.module) is not None else 0)
        for layer in layers
    )


def live_params(layers: list[Layer], masks: Mapping[str, torch.Tensor]) -> int:
    """Parameters the compact export of these weight masks keeps (same rules as export).

    A hidden unit survives when it is *used* (reaches the outputs through kept weights) and
    *varying* (receives a kept weight from a varying unit); it then contributes its bias. A weight
    counts when both of its end units survive.
    """
    n = len(layers)
    conns = [
        _unit_connections(masks[layer.name] != 0, layer.in_units, layer.in_repeat)
        for layer in layers
    ]
    used = [torch.ones(layer.out_units, dtype=torch.bool) for layer in layers]
    for i in range(n - 1, 0, -1):
        used[i - 1] = (conns[i] & used[i][:, None]).any(0)
    kept, prev = [], torch.ones(layers[0].in_units, dtype=torch.bool)
    for i in range(n):
        varying = (conns[i] & prev[None, :]).any(1)
        nxt = layers[i + 1].module if i + 1 < n else None
        if isinstance(nxt, nn.Conv2d) and any(p != 0 for p in nxt.padding):
            varying = torch.ones_like(varying)  # export keeps these (no exact folding)
        kept.append(used[i] & varying if i < n - 1 else torch.ones_like(varying))
        prev = varying
    total, prev_kept = 0, torch.ones(layers[0].in_units, dtype=torch.bool)
    for i, layer in enumerate(layers):
        m = masks[layer.name] != 0
        cols = prev_kept.repeat_interleave(layer.in_repeat) if m.dim() == 2 else prev_kept
        cols = cols.view((1, -1) + (1,) * (m.dim() - 2))
        total += int((m & cols).sum(dim=tuple(range(1, m.dim())))[kept[i]].sum())
        total += int(kept[i].sum()) if raw_bias(layer.module) is not None else 0
        prev_kept = kept[i]
    return total


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
    layers: list[Layer],
    scores: Mapping[str, torch.Tensor],
    density: float,
    scope: str,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the highest scores such that ``live_params <= density * dense_params``, keeping as
    many as fit (bisection on the nested rankings of :func:`ranker`).

    Args:
        layers: the prunable layers the scores belong to.
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
    budget = density * dense_params(layers)

    def fits(k: int) -> bool:
        return live_params(layers, _restrict(keep(k), eligible)) <= budget

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

    def masks(self) -> dict[str, Mask]:
        return fixed_masks(self._fixed)

    def weights(self) -> dict[str, torch.Tensor]:
        """The raw (unmasked) weight tensors by layer name; gradients flow into these."""
        return {layer.name: raw_weight(layer.module) for layer in self.ctx.layers}

    def current(self) -> dict[str, torch.Tensor]:
        return {name: fm.mask for name, fm in self._fixed.items()}

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        for name, m in masks.items():
            self._fixed[name].mask.copy_(m)

    def prune_to(
        self, scores: Mapping[str, torch.Tensor], density: float, scope: str, **kw: Any
    ) -> None:
        self.set_masks(masks_at_density(self.ctx.layers, scores, density, scope, **kw))

    def stats(self) -> dict[str, float]:
        kept = sum(int(m.sum()) for m in self.current().values())
        total = sum(m.numel() for m in self.current().values())
        return {"weight_density": kept / total}
