"""The unpruned reference: every mask is all ones."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from prunetune.prune._base import Mask, PruneContext, PruningMethod, register_method
from prunetune.prune._hparams import HParamTable
from prunetune.prune._topology import raw_weight


@register_method
class NoPruning(PruningMethod):
    """Dense training; the reference point every pruning method is compared with."""

    name = "none"
    hparams: ClassVar[HParamTable] = {}

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        self._layers = ctx.layers

    def masks(self) -> dict[str, Mask]:
        return {
            layer.name: Mask(weight=torch.ones_like(raw_weight(layer.module)).detach())
            for layer in self._layers
        }
