"""Hard masks → a compact plain-PyTorch model, and exact parameter counting.

This is the only place that performs surgery (STYLE.md §2: methods score, export cuts).

A hidden unit (neuron or conv channel) is removed when it is

* **unused** — no kept outgoing weight reaches a unit that is itself used (computed backwards
  from the outputs), or
* **constant** — no kept incoming weight from a varying unit. Its output is then a constant
  that is folded into the next layer's bias, exactly (for a next conv, only when that conv has
  no zero padding; otherwise the unit is kept).

"Parameters" are the nonzero weights plus the biases of kept units in the compact model;
``params_dense`` counts every weight and bias of the unpruned model.

Example:
    >>> import torch
    >>> from prunetune.models import build_model, mlp_spec
    >>> from prunetune.prune import Mask, export_compact
    >>> spec = mlp_spec((4,), [3], num_outputs=2)
    >>> model = build_model(spec)
    >>> masks = {"0": Mask(torch.tensor([[1., 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])),
    ...          "2": Mask(torch.tensor([[1., 0, 0], [0, 0, 1]]))}
    >>> export_compact(model, spec, masks).params   # 2 + 2 weights, 2 + 2 biases
    8
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunetune.models import ArchSpec, build_model
from prunetune.prune._base import Mask
from prunetune.prune._topology import Layer, prunable_layers, raw_bias, raw_weight


@dataclass
class ExportResult:
    """A compact model and its exact counts.

    Attributes:
        model: plain ``nn.Sequential`` without masks or dead units.
        arch: architecture spec that rebuilds ``model`` with :func:`prunetune.models.build_model`.
        params: nonzero weights + biases of kept units.
        params_dense: all weights and biases of the unpruned model.
        per_layer: per prunable layer ``{"kept", "total", "density", "units", "units_dense"}``.
        kept_units: indices (into the original layer) of the units kept, per prunable layer.
    """

    model: nn.Sequential
    arch: ArchSpec
    params: int
    params_dense: int
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    kept_units: dict[str, list[int]] = field(default_factory=dict)

    @property
    def density(self) -> float:
        return self.params / self.params_dense

    @property
    def live_neurons(self) -> int:
        """Kept hidden units (the last layer's outputs are not counted)."""
        names = list(self.kept_units)[:-1]
        return sum(len(self.kept_units[n]) for n in names)


def _masked(layer: Layer, mask: Mask | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = raw_weight(layer.module).detach().clone()
    b = raw_bias(layer.module)
    b = b.detach().clone() if b is not None else None
    if mask is not None:
        if tuple(mask.weight.shape) != tuple(w.shape):
            raise ValueError(
                f"mask of layer {layer.name} has shape {tuple(mask.weight.shape)}, "
                f"but its weight has shape {tuple(w.shape)}."
            )
        w = w * mask.weight.to(w)
        if mask.bias is not None and b is not None:
            b = b * mask.bias.to(b)
    return w, b


def _unit_connections(w: torch.Tensor, in_units: int, repeat: int) -> torch.Tensor:
    """bool [out, in_units]: does unit i receive any nonzero weight from input unit j?"""
    nz = w != 0
    if w.dim() == 4:  # conv: [out, in, kh, kw]
        return nz.flatten(2).any(2)
    return nz.view(w.shape[0], in_units, repeat).any(2)


def _through(
    between: tuple[nn.Module, ...], values: torch.Tensor, spatial: tuple[int, int]
) -> torch.Tensor:
    """Push per-unit constants through the ops between two layers; per-unit outputs back."""
    x = (
        values.view(1, -1, 1, 1).expand(1, values.numel(), *spatial)
        if spatial != (1, 1)
        else values.view(1, -1)
    )
    if spatial != (1, 1):
        x = x.contiguous()
    for m in between:
        x = m(x)
    if x.dim() == 4:
        return x[0, :, 0, 0]
    if spatial != (1, 1):  # flattened feature maps: one constant per channel
        return x.view(values.numel(), -1)[:, 0]
    return x[0]


@torch.no_grad()
def export_compact(model: nn.Module, arch: ArchSpec, masks: dict[str, Mask]) -> ExportResult:
    """Build the compact model of ``model`` under hard ``masks``.

    Args:
        model: the (possibly parametrized) ``nn.Sequential`` the masks belong to.
        arch: the architecture spec ``model`` was built from.
        masks: hard 0/1 masks per prunable layer name; a layer without a mask is kept dense.

    Raises:
        ValueError: a mask does not match its layer or is not exactly 0/1.
    """
    for name, m in masks.items():
        for t in (m.weight, m.bias):
            if t is not None and not bool(((t == 0) | (t == 1)).all()):
                raise ValueError(f"mask of layer {name} must contain only 0 and 1.")
    layers = prunable_layers(model, arch["input_shape"])
    n = len(layers)
    wb = [_masked(layer, masks.get(layer.name)) for layer in layers]
    conns = [
        _unit_connections(w, layer.in_units, layer.in_repeat)
        for (w, _), layer in zip(wb, layers, strict=True)
    ]

    # Backwards: which units feed (through kept weights) a used unit downstream.
    used = [torch.ones(layer.out_units, dtype=torch.bool) for layer in layers]
    for i in range(n - 1, 0, -1):
        used[i - 1] = (conns[i] & used[i][:, None]).any(0)

    # Forwards: which units vary with the input; constant units are folded into the next bias.
    varying = [torch.ones(layer.out_units, dtype=torch.bool) for layer in layers]
    prev_vary = torch.ones(layers[0].in_units, dtype=torch.bool)
    for i in range(n):
        varying[i] = (conns[i] & prev_vary[None, :]).any(1)
        nxt = layers[i + 1] if i + 1 < n else None
        if (
            nxt is not None
            and isinstance(nxt.module, nn.Conv2d)
            and any(p != 0 for p in nxt.module.padding)
        ):
            varying[i] = torch.ones_like(varying[i])  # folding through zero padding is not exact
        prev_vary = varying[i]

    kept = [used[i] & varying[i] for i in range(n - 1)] + [
        torch.ones(layers[-1].out_units, dtype=torch.bool)
    ]

    new_layers: dict[int, dict[str, Any]] = {}
    per_layer: dict[str, dict[str, float]] = {}
    params = 0
    params_dense = 0
    prev_kept = torch.ones(layers[0].in_units, dtype=torch.bool)
    const_in: torch.Tensor | None = None  # per-unit constant outputs of the previous layer
    prev_const_mask = torch.zeros(layers[0].in_units, dtype=torch.bool)
    for i, layer in enumerate(layers):
        w, b = wb[i]
        params_dense += w.numel() + (b.numel() if b is not None else 0)
        rep = layer.in_repeat
        in_cols = prev_kept.repeat_interleave(rep) if w.dim() == 2 else prev_kept
        # Fold the previous layer's constant units into this bias.
        if const_in is not None and bool(prev_const_mask.any()):
            c = torch.where(prev_const_mask, const_in, torch.zeros_like(const_in))
            if w.dim() == 2:
                fold = w @ c.repeat_interleave(rep)
            else:
                fold = (w.sum((2, 3)) * c[None, :]).sum(1)
            b = fold if b is None else b + fold
        # Constant outputs of this layer (pre-activation), pushed through the ops that follow.
        const_mask = ~varying[i] if i < n - 1 else torch.zeros(layer.out_units, dtype=torch.bool)
        if bool(const_mask.any()):
            pre = b if b is not None else torch.zeros(layer.out_units)
            nxt_between = layers[i + 1].between
            const_in = _through(nxt_between, pre.clone(), layer.out_spatial)
        else:
            const_in = None
        prev_const_mask = const_mask

        w_new = w[kept[i]][:, in_cols] if w.dim() == 2 else w[kept[i]][:, prev_kept]
        b_new = b[kept[i]] if b is not None else None
        n_w = int((w_new != 0).sum())
        n_b = int(b_new.numel()) if b_new is not None else 0
        params += n_w + n_b
        total = w.numel() + (layer.out_units if raw_bias(layer.module) is not None else 0)
        per_layer[layer.name] = {
            "kept": n_w + n_b,
            "total": total,
            "density": (n_w + n_b) / total,
            "weight_density": n_w / w.numel(),
            "units": int(kept[i].sum()),
            "units_dense": layer.out_units,
        }
        new_layers[layer.index] = {"w": w_new, "b": b_new}
        prev_kept = kept[i]

    # Rebuild the arch spec with the compact sizes, then load the compact weights.
    spec = copy.deepcopy(arch)
    for k, layer in enumerate(layers):
        d = spec["layers"][layer.index]
        d["out"] = int(kept[k].sum())
        if k > 0:
            d["in"] = int(kept[k - 1].sum()) * (layer.in_repeat if d["type"] == "linear" else 1)
        d["bias"] = new_layers[layer.index]["b"] is not None
    with warnings.catch_warnings():  # a fully pruned layer has zero-sized weights
        warnings.simplefilter("ignore", UserWarning)
        compact = build_model(spec)
    for idx, t in new_layers.items():
        mod = compact[idx]
        mod.weight.copy_(t["w"])
        if t["b"] is not None:
            mod.bias.copy_(t["b"])
    compact.eval()
    return ExportResult(
        model=compact,
        arch=spec,
        params=params,
        params_dense=params_dense,
        per_layer=per_layer,
        kept_units={
            layer.name: torch.nonzero(kept[i]).flatten().tolist() for i, layer in enumerate(layers)
        },
    )


def count_params(model: nn.Module) -> int:
    """Nonzero parameters of a (compact) model."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
