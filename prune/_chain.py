"""The chain view of a sequential model: what the pathway analysis (``prunetune.explain``) reads.

The pruning layer itself uses :class:`prunetune.prune._topology.Topology`, which handles any
graph; this walker only describes an ``nn.Sequential`` of Linear/Conv2d layers, where each
layer's inputs are the previous layer's units (the analyses need that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunetune.prune._topology import raw_bias, raw_weight

PRUNABLE = (nn.Linear, nn.Conv2d)
#: Modules a sequential model may hold between its prunable layers.
BETWEEN = (nn.MaxPool2d, nn.ReLU, nn.SiLU, nn.Tanh, nn.GELU, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class ChainLayer:
    """One prunable layer.

    Attributes:
        index: position in the ``nn.Sequential``.
        name: its module name (``str(index)``), the key of masks.
        module: the layer itself.
        between: the non-prunable modules between the previous prunable layer and this one.
        in_repeat: input positions per unit of the previous layer (``H*W`` after a flatten of
            conv feature maps, else 1).
        out_spatial: spatial size ``(H, W)`` of this layer's output (``(1, 1)`` for linear).
    """

    index: int
    name: str
    module: nn.Module
    between: tuple[nn.Module, ...]
    in_repeat: int
    out_spatial: tuple[int, int]

    @property
    def out_units(self) -> int:
        return int(raw_weight(self.module).shape[0])

    @property
    def in_units(self) -> int:
        return int(raw_weight(self.module).shape[1]) // self.in_repeat


def prunable_layers(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> list[ChainLayer]:
    """Walk a sequential model, recording each prunable layer and how its inputs map to units.

    Raises:
        ValueError: the model is not an ``nn.Sequential`` of supported layers.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"Pruning needs an nn.Sequential model (see prunetune.models), got {type(model).__name__}."
        )
    layers: list[ChainLayer] = []
    between: list[nn.Module] = []
    x = torch.zeros(1, *input_shape)
    repeat = 1
    with torch.no_grad():
        for i, m in enumerate(model):
            if isinstance(m, PRUNABLE):
                if isinstance(m, nn.Linear) and x.dim() != 2:
                    raise ValueError(
                        f"layer {i}: Linear needs a flattened input, got {tuple(x.shape)}."
                    )
                x = _forward_raw(m, x)
                spatial = (int(x.shape[2]), int(x.shape[3])) if x.dim() == 4 else (1, 1)
                layers.append(ChainLayer(i, str(i), m, tuple(between), repeat, spatial))
                between, repeat = [], 1
            else:
                if isinstance(m, nn.Flatten) and x.dim() == 4:
                    repeat = int(x.shape[2] * x.shape[3])
                elif not isinstance(m, BETWEEN):
                    raise ValueError(
                        f"layer {i}: {type(m).__name__} is not supported between prunable layers "
                        "(supported: activations, MaxPool2d, Flatten, Dropout)."
                    )
                x = m(x)
                between.append(m)
    if not layers:
        raise ValueError("The model has no Linear or Conv2d layer to prune.")
    return layers


def _forward_raw(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w, b = raw_weight(m), raw_bias(m)
    if isinstance(m, nn.Linear):
        return nn.functional.linear(x, w, b)
    return m._conv_forward(x, w, b)  # type: ignore[operator]


def expand_units(mask_units: torch.Tensor, repeat: int) -> torch.Tensor:
    """Map a per-unit vector of the previous layer onto this layer's input positions."""
    return mask_units.repeat_interleave(repeat) if repeat > 1 else mask_units
