"""Masks frozen at their hard values: the fine-tune phase after mask learning.

:func:`bake_masks` writes a method's parametrizations into the weights (their evaluation-mode
values: hard masks, closed channels zero) and removes them; :class:`FrozenMasks` then holds the
hard masks fixed while the weights train on. Every channel that export would remove (not
:meth:`~prunetune.prune._topology.Topology.live`) has its biases and norm entries held at zero,
so the masked model and its compact export still compute the same function after fine-tuning.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunetune.prune import Mask, PruneContext
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> keep = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    >>> frozen = FrozenMasks({"0": Mask(weight=keep)})
    >>> ctx = PruneContext.for_model(model, (4,), sample_batch=lambda k: (None, None))
    >>> frozen.attach(model, ctx)
    >>> float(model[0].bias[1]) == 0.0  # unit 1 keeps no weight: its bias is held at zero
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune._base import Mask, PruneContext, PruningMethod
from prunetune.prune._hparams import HParamTable
from prunetune.prune._masking import FixedChannels, FixedMask, attach_channel_masks, weight_masks
from prunetune.prune._topology import raw_param, raw_weight


@torch.no_grad()
def bake_masks(model: nn.Module) -> None:
    """Write every parametrization's evaluation-mode value into its tensor and remove it, in
    place (a method's masks become zeros in the weights; its gates leave the model)."""
    for module in model.modules():  # per-step samples are not leaves
        if hasattr(module, "clear_cache"):
            module.clear_cache()
    was_training = model.training
    model.eval()
    try:
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    finally:
        model.train(was_training)


class FrozenMasks(PruningMethod):
    """Fixed hard masks (not a search method: :func:`prunetune.prune.train` uses it for the
    fine-tune phase). Attach to a model without parametrizations (see :func:`bake_masks`)."""

    name = "frozen"
    hparams: ClassVar[HParamTable] = {}

    def __init__(self, masks: Mapping[str, Mask]) -> None:
        super().__init__()
        self._masks = {
            name: Mask(
                weight=m.weight.detach().clone(),
                bias=None if m.bias is None else m.bias.detach().clone(),
            )
            for name, m in masks.items()
        }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        topo = ctx.topology
        device = None
        for name, m in self._masks.items():
            module = model.get_submodule(name)
            w = raw_weight(module)
            device = w.device
            parametrize.register_parametrization(
                module, "weight", FixedMask(m.weight.to(w)), unsafe=True
            )
            b = raw_param(module, "bias")
            if m.bias is not None and b is not None:
                parametrize.register_parametrization(
                    module, "bias", FixedMask(m.bias.to(b)), unsafe=True
                )
        live = topo.live(weight_masks(self._masks))
        if topo.channels and not bool(live.all()):
            source = FixedChannels(topo.channels, device=device)
            source.set(live)
            attach_channel_masks(model, topo, source, rows=False)

    def masks(self) -> dict[str, Mask]:
        return {
            name: Mask(weight=m.weight.clone(), bias=None if m.bias is None else m.bias.clone())
            for name, m in self._masks.items()
        }


__all__ = ["FrozenMasks", "bake_masks"]
