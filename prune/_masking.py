"""Fixed 0/1 masks attached as parametrizations: the shared machinery of score-based methods."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune._base import Mask
from prunetune.prune._topology import Layer, raw_weight


class FixedMask(nn.Module):
    """Parametrization ``w -> w * mask`` with ``mask`` a buffer (moves with the model)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


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


def remove_masks(model: nn.Module) -> None:
    """Bake masks into the weights and remove every parametrization (for plain deployment)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
