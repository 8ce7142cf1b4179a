"""Masks attached as parametrizations: per-weight masks and per-channel closing.

Two kinds of mask act on a model (registered with ``torch.nn.utils.parametrize``, so the model
keeps its own ``forward``):

* a **weight mask** on a prunable layer's weight (:class:`FixedMask`, or Gumbel's gates);
* a **channel mask**: one value per channel of every channel group (a flat vector, see
  :class:`prunetune.prune._topology.Topology`), multiplied into the producers' biases and the
  norms' affine weight and bias — and, for channel-gated methods, the producers' weight rows.
  A closed channel therefore outputs exactly zero *after* its normalisation (not BatchNorm's
  constant β), which is what lets export remove it exactly.

A source provides the channel vector: :class:`FixedChannels` (a buffer that methods set), or a
method's own module (Gumbel: sampled per forward pass). :class:`Clock` counts the model's
forward passes so that a source samples once per pass and every member reuses that sample.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune._base import Mask
from prunetune.prune._topology import Layer, Topology, raw_param, raw_weight


class FixedMask(nn.Module):
    """Parametrization ``w -> w * mask`` with ``mask`` a buffer (moves with the model)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class Clock:
    """Counts the forward passes of a model (a forward pre-hook on its root module)."""

    def __init__(self, model: nn.Module) -> None:
        self.tick = 0
        self.handle = model.register_forward_pre_hook(self._advance)

    def _advance(self, module: nn.Module, args: object) -> None:
        self.tick += 1


class ChannelSource(nn.Module):
    """Something that gives the flat channel vector (``channels + 1`` values, the last is 1:
    the index of entries that belong to no group)."""

    def vector(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class FixedChannels(ChannelSource):
    """Channel vector held in a buffer: 1 = open, 0 = closed."""

    def __init__(self, channels: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("values", torch.ones(channels + 1, device=device))

    def vector(self) -> torch.Tensor:
        return self.values

    def set(self, open_: torch.Tensor) -> None:
        self.values[:-1].copy_(open_.to(self.values))


class ChannelMask(nn.Module):
    """Parametrization ``t -> t * v[perm]`` along dimension 0 (rows, biases, norm entries)."""

    def __init__(self, source: ChannelSource, perm: torch.Tensor, ndim: int) -> None:
        super().__init__()
        self.source = source
        self.register_buffer("perm", perm)
        self.view = (-1,) + (1,) * (ndim - 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.source.vector()[self.perm].view(self.view).to(t)


def member_perm(topology: Topology, module: str, rows: int) -> torch.Tensor:
    """For each of a member's ``rows`` entries, its flat channel index (``channels`` if none)."""
    perm = torch.full((rows,), topology.channels, dtype=torch.long)
    for g in topology.groups:
        for m in (*g.producers, *g.norms):
            if m.name == module:
                perm[m.idx] = g.offset + m.root
    return perm


def attach_channel_masks(
    model: nn.Module, topology: Topology, source: ChannelSource, *, rows: bool
) -> None:
    """Multiply ``source``'s channel vector into every group's producer biases and norm affine
    parameters, and into the producers' weight rows when ``rows`` (channel gates) — except for
    producers that feed a norm of the group directly: the gate then multiplies the normalised
    output (the norm's γ and β), so a closed channel is exactly zero and its gate still sees
    the gradient of turning it back on."""
    done: set[tuple[str, str]] = set()
    for g in topology.groups:
        parts = [
            (p.name, ("bias", "weight") if rows else ("bias",))
            for p in g.producers
            if not (rows and p.name in g.normed)  # its norm's gate closes it
        ]
        parts += [(n.name, ("weight", "bias")) for n in g.norms]
        for name, params in parts:
            module = model.get_submodule(name)
            for p in params:
                t = raw_param(module, p)
                if t is None or (name, p) in done:
                    continue
                done.add((name, p))
                perm = member_perm(topology, name, t.shape[0]).to(t.device)
                parametrize.register_parametrization(
                    module, p, ChannelMask(source, perm, t.dim()), unsafe=True
                )


def channel_layer_masks(topology: Topology, vector: torch.Tensor) -> dict[str, Mask]:
    """Hard masks of every prunable layer under a channel vector that gates producer rows:
    a producer's weight rows and bias follow its channels; other layers are dense."""
    v = (vector.detach() != 0).float().cpu()
    out = {}
    for layer in topology.layers:
        w = raw_weight(layer.module)
        if layer.group is None:
            out[layer.name] = Mask(weight=torch.ones_like(w).detach())
            continue
        rows = v[member_perm(topology, layer.name, w.shape[0])].to(w.device, w.dtype)
        out[layer.name] = Mask(
            weight=rows.view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone(),
            bias=rows.clone() if raw_param(layer.module, "bias") is not None else None,
        )
    return out


def attach_fixed_masks(layers: list[Layer]) -> dict[str, FixedMask]:
    """Register an all-ones :class:`FixedMask` on each layer's weight; returns them by name."""
    out = {}
    for layer in layers:
        w = raw_weight(layer.module)
        fm = FixedMask(torch.ones_like(w))
        parametrize.register_parametrization(layer.module, "weight", fm, unsafe=True)
        out[layer.name] = fm
    return out


def fixed_masks(masks: dict[str, FixedMask]) -> dict[str, Mask]:
    return {name: Mask(weight=fm.mask.detach().clone()) for name, fm in masks.items()}


def weight_masks(masks: Mapping[str, Mask]) -> dict[str, torch.Tensor]:
    """The weight parts of hard masks, by layer name."""
    return {name: m.weight for name, m in masks.items()}


def remove_masks(model: nn.Module) -> None:
    """Bake masks into the weights and remove every parametrization (for plain deployment)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
