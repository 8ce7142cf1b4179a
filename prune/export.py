"""Hard masks → a compact plain-PyTorch model, and exact parameter counting.

This is the only place that performs surgery (STYLE.md §2: methods score, export cuts). On a
plain copy of the model: parametrizations are removed with the hard masks baked in (gates are
dropped), then every channel that is not live (:class:`prunetune.prune._topology.Topology`:
closed — it outputs exactly zero — or unused) is removed through torch-pruning, group by group,
with its BatchNorm entries, biases and the next layers' input columns. Removing them changes no
output. A group whose channels are all dead keeps one zeroed channel, and the export is marked
``collapsed``: the model's output no longer depends on its input through that group.

"Parameters" are the nonzero entries of the compact model's parameters (masked weights between
live channels, biases and norm affine parameters of live channels, every other parameter);
``params_dense`` counts every parameter of the unpruned model.

Example:
    >>> import torch
    >>> from prunetune.models import build_model, mlp_spec
    >>> from prunetune.prune import Mask, export_compact
    >>> model = build_model(mlp_spec((4,), [3], num_outputs=2))
    >>> masks = {"0": Mask(torch.tensor([[1., 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])),
    ...          "2": Mask(torch.tensor([[1., 0, 0], [0, 0, 1]]))}
    >>> export_compact(model, masks, torch.zeros(1, 4)).params   # 2 + 2 weights, 2 + 2 biases
    8
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune._base import Mask
from prunetune.prune._topology import (
    PRUNABLE,
    ChannelGroup,
    Topology,
    channel_entries,
    fix_concat,
    raw_param,
)


@dataclass
class ExportResult:
    """A compact model and its exact counts.

    Attributes:
        model: plain ``nn.Module`` (same classes as the original) without masks or dead
            channels, in eval mode.
        params: nonzero parameters of ``model``.
        params_dense: all parameters of the unpruned model.
        per_layer: per prunable layer ``{"kept", "total", "density", "weight_density",
            "units", "units_dense"}``.
        kept_units: per prunable layer, the indices (into the original layer) of the output
            channels kept.
        collapsed: some channel group lost every channel (one zeroed channel was kept).
        arch: an architecture spec that rebuilds ``model`` with
            :func:`prunetune.models.build_model`, when ``model`` is such an ``nn.Sequential``.
        live_neurons: live channels of the prunable channel groups.
    """

    model: nn.Module
    params: int
    params_dense: int
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    kept_units: dict[str, list[int]] = field(default_factory=dict)
    collapsed: bool = False
    arch: dict[str, Any] | None = None
    live_neurons: int = 0

    @property
    def density(self) -> float:
        return self.params / self.params_dense


def _check_masks(masks: Mapping[str, Mask], model: nn.Module) -> None:
    for name, m in masks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if not isinstance(module, PRUNABLE):
            raise ValueError(f"mask for {name!r}, which is not a prunable layer of the model.")
        w = raw_param(module, "weight")
        if tuple(m.weight.shape) != tuple(w.shape):
            raise ValueError(
                f"mask of layer {name} has shape {tuple(m.weight.shape)}, "
                f"but its weight has shape {tuple(w.shape)}."
            )
        for t in (m.weight, m.bias):
            if t is not None and not bool(((t == 0) | (t == 1)).all()):
                raise ValueError(f"mask of layer {name} must contain only 0 and 1.")


def plain_copy(model: nn.Module, masks: Mapping[str, Mask]) -> nn.Module:
    """A copy of ``model`` in eval mode with every parametrization baked in and removed, and
    the hard ``masks`` applied to the weights (and biases) they cover."""
    for module in model.modules():  # per-step samples are not leaves: deepcopy refuses them
        if hasattr(module, "clear_cache"):
            module.clear_cache()
    was_training = model.training
    model.eval()
    try:
        plain = copy.deepcopy(model)
    finally:
        model.train(was_training)
    with torch.no_grad():
        for module in plain.modules():
            _bake(module)
    for module in plain.modules():  # hooks of methods (e.g. a forward counter) stay behind
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    with torch.no_grad():
        for name, m in masks.items():
            mod = plain.get_submodule(name)
            mod.weight.mul_(m.weight.to(mod.weight))
            if m.bias is not None and mod.bias is not None:
                mod.bias.mul_(m.bias.to(mod.bias))
    return plain.eval()


def _bake(module: nn.Module) -> None:
    """Replace a (deep-copied) module's parametrized tensors by plain parameters holding their
    current values. ``parametrize.remove_parametrizations`` would delete the property from the
    parametrized class, which a deep copy shares with the original module."""
    if not parametrize.is_parametrized(module):
        return
    values = {n: getattr(module, n).detach().clone() for n in module.parametrizations}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for n, v in values.items():
        module.register_parameter(n, nn.Parameter(v))


@torch.no_grad()
def export_compact(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example: torch.Tensor | None = None,
    *,
    topology: Topology | None = None,
) -> ExportResult:
    """Build the compact model of ``model`` under hard ``masks``.

    Args:
        model: the model the masks belong to, plain or with masks attached.
        masks: hard 0/1 masks per prunable layer name; a layer without a mask is kept dense.
        example: an input batch (for tracing); optional when ``topology`` is given.
        topology: the model's topology (built from the plain copy when not given).

    Raises:
        ValueError: a mask does not match its layer or is not exactly 0/1.
    """
    _check_masks(masks, model)
    plain = plain_copy(model, masks)
    if example is None:
        if topology is None:
            raise ValueError("export_compact needs an example batch or the model's topology.")
        example = topology.example
    example = example.to(next(plain.parameters()).device)
    topo = Topology.build(plain, example, like=topology)
    weights = {name: m.weight for name, m in masks.items()}
    open_ = topo.open_channels(weights)
    live = open_ & topo.used_channels(weights)
    params = topo.count(plain, weights, live)
    per_layer = topo.per_layer(plain, weights, live)

    kept_units: dict[str, list[int]] = {
        layer.name: list(range(layer.out_units)) for layer in topo.layers
    }
    collapsed = False
    dg = topo.dg
    removals: list[tuple[str, list[int]]] = []
    # Zero every group's closed channels first: the members' indices are the unpruned model's,
    # and a norm or consumer shared by several groups (a concatenation, DenseNet's) shrinks
    # as soon as one of them is removed.
    for g in topo.groups:
        _zero_channels(plain, g, ~topo.group_slice(open_, g), consumers=False)  # closed → 0
        alive = topo.group_slice(live, g).clone()
        if not bool(alive.any()):
            collapsed = True
            alive[0] = True
            one = torch.zeros_like(alive)
            one[0] = True
            _zero_channels(plain, g, one, consumers=True)
        for p in g.producers:
            rows = p.idx[alive[p.root]]
            kept_units[p.name] = sorted(int(i) for i in rows)
        dead = torch.nonzero(~alive).flatten().tolist()
        if dead:
            removals.append((g.root, dead))
    for name, dead in removals:  # a root's own output channels stay indexed as they were
        fix_concat(dg)  # offsets move as groups feeding a concatenation shrink
        root = plain.get_submodule(name)
        handler = dg.get_pruner_of_module(root).prune_out_channels
        group = dg.get_pruning_group(root, handler, idxs=dead)
        if not dg.check_pruning_group(group):
            raise ValueError(f"torch-pruning refuses to remove {len(dead)} channels of {name}.")
        group.prune()
    for module in plain.modules():
        if parametrize.is_parametrized(module):  # pragma: no cover - removed above
            raise AssertionError("parametrizations left after baking")
    compact = plain.eval()
    counted = count_params(compact)
    if counted != params:
        raise AssertionError(
            f"export kept {counted} nonzero parameters, but the topology counts {params}."
        )
    return ExportResult(
        model=compact,
        params=params,
        params_dense=topo.dense,
        per_layer=per_layer,
        kept_units=kept_units,
        collapsed=collapsed,
        arch=_arch_of(compact, tuple(example.shape[1:])),
        live_neurons=int(live.sum()),
    )


def _zero_channels(
    model: nn.Module, group: ChannelGroup, channels: torch.Tensor, *, consumers: bool
) -> None:
    """Zero the rows, biases and norm entries of ``channels`` (bool over the group's channels)
    — a closed channel then outputs exactly zero — and, with ``consumers``, the columns that
    read them (a collapsed group keeps one such channel so that the model keeps its shapes)."""
    if not bool(channels.any()):
        return
    for t, rows in channel_entries(model, group, channels):
        t[rows] = 0
    if consumers:
        for c in group.consumers:
            mod = model.get_submodule(c.name)
            mod.weight[:, c.idx[channels[c.root]]] = 0


def _arch_of(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The architecture spec of an ``nn.Sequential`` of the layers prunetune.models builds."""
    from prunetune.models import ACTIVATIONS

    if not isinstance(model, nn.Sequential):
        return None
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    layers: list[dict[str, Any]] = []
    for m in model:
        if isinstance(m, nn.Linear):
            d = {"type": "linear", "in": m.in_features, "out": m.out_features}
        elif (
            isinstance(m, nn.Conv2d)
            and m.groups == 1
            and len(set(m.kernel_size)) == 1
            and isinstance(m.padding, tuple)  # not 'same'/'valid'
            and len(set(m.padding)) == 1
            and len(set(m.stride)) == 1
            and m.padding_mode == "zeros"
            and set(m.dilation) == {1}
        ):
            d = {
                "type": "conv2d",
                "in": m.in_channels,
                "out": m.out_channels,
                "kernel": m.kernel_size[0],
                "stride": m.stride[0],
                "padding": m.padding[0],
            }
        elif isinstance(m, nn.Flatten):
            d = {"type": "flatten"}
        elif isinstance(m, nn.MaxPool2d) and isinstance(m.kernel_size, int):
            d = {"type": "maxpool2d", "kernel": m.kernel_size}
        elif type(m) in names:
            d = {"type": names[type(m)]}
        else:
            return None
        if "in" in d:
            d["bias"] = m.bias is not None
        layers.append(d)
    return {"input_shape": list(input_shape), "layers": layers}


def count_params(model: nn.Module) -> int:
    """Nonzero parameters of a (compact) model."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
