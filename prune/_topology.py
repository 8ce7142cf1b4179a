"""One ``Topology`` per model: prunable layers by name, channel groups, liveness and counts.

Built once from the plain (unmasked) model and an example batch on torch-pruning's
``DependencyGraph``, which traces the model and couples the channels that must go together
(residual adds, BatchNorm, concatenation, depthwise convs, a flatten into a Linear). Every
structural question — which layers are prunable, which output channels form one group, which
channels are live under a set of hard masks, how many parameters those masks keep — is answered
here, so that methods, export and the pathway analysis agree on one definition.

Definitions:

* **Prunable layers**: every ``Linear``, ``Conv1d`` and ``Conv2d``, by qualified module name
  (``layer1.0.conv1``). Depthwise convs (``groups == in == out``) are channel-prunable with
  their group; other grouped convs are pruned at weight granularity only (their channels stay).
* **Channel group**: the output channels of one root layer and everything coupled to them.
  Members are *producers* (layers whose output rows make the channel: the convs whose outputs
  are added, a depthwise conv), *norms* (per-channel affine: BatchNorm, InstanceNorm) and
  *consumers* (layers whose input columns read the channel). A group whose channels reach the
  model's output (no consumer reads them), or that touches a module that mixes channels
  (LayerNorm, GroupNorm, a grouped conv, an unknown layer with parameters), is fixed: never
  pruned. So is a group that fails the checks :meth:`Topology.build` runs on the model itself
  (closing channels must zero exactly what their consumers read; removing them by surgery
  must not change the output), whatever op torch-pruning could not map.
* **Open / live**: a channel is *open* when some producer keeps a weight in its row; a closed
  channel outputs exactly zero in the masked model (its biases and norm affine parameters are
  masked too, see :mod:`prunetune.prune._masking`). It is *used* when some consumer keeps a
  weight in its columns. Live = open and used; export removes every channel that is not live.
* **Parameters**: the nonzero entries of every parameter of the compact model — masked weights
  between live channels, biases and norm affine parameters of live channels, and every other
  parameter in full. :meth:`Topology.count` computes it without surgery.

Example:
    >>> import torch
    >>> from prunetune.models import build_model, mlp_spec
    >>> model = build_model(mlp_spec((4,), [3], 2))
    >>> topo = Topology.build(model, torch.zeros(2, 4))
    >>> [layer.name for layer in topo.layers], topo.dense
    (['0', '2'], 23)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Per-channel affine layers a channel group may carry (masked with the channel).
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d)
#: Normalisations across channels: with or without affine parameters, they tie every channel.
MIXING = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)


@dataclass(frozen=True)
class Layer:
    """One prunable layer.

    Attributes:
        name: qualified module name, the key of masks (``"0"`` in an ``nn.Sequential``).
        module: the layer.
        kind: ``linear``, ``conv``, ``depthwise`` or ``grouped`` (weight granularity only).
        group: the channel group its output channels belong to, or ``None`` (fixed channels,
            e.g. the output layer).
        order: position in the forward pass.
    """

    name: str
    module: nn.Module
    kind: str
    group: int | None
    order: int

    @property
    def out_units(self) -> int:
        return int(raw_weight(self.module).shape[0])

    @property
    def in_units(self) -> int:
        """Input features (Linear) or channels (conv) of the weight."""
        return int(raw_weight(self.module).shape[1])


@dataclass(frozen=True)
class Member:
    """One module's channels in a group: its indices ``idx`` along ``dim`` read root channels
    ``root`` (a Linear after a flatten reads each channel at ``H·W`` positions)."""

    name: str
    idx: torch.Tensor
    root: torch.Tensor


@dataclass
class ChannelGroup:
    """Output channels that are removed together; see the module docstring."""

    id: int
    root: str
    size: int
    offset: int  # first index of this group in the flat channel vector
    producers: list[Member] = field(default_factory=list)
    norms: list[Member] = field(default_factory=list)
    consumers: list[Member] = field(default_factory=list)
    #: producers whose output goes straight into one of the group's norms: closing the norm's
    #: affine parameters closes their channels (gating their rows too is redundant, and it
    #: would starve the gate's straight-through gradient: a norm of a zero row has none)
    normed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Slot:
    """A parameter and, per dimension, the flat channel index of each entry (or ``ALWAYS``)."""

    module: str
    param: str
    dims: tuple[torch.Tensor | None, ...]  # None: the whole dimension is always live


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The weight before any parametrization (mask) applies."""
    return raw_param(module, "weight")


def raw_bias(module: nn.Module) -> torch.Tensor | None:
    return raw_param(module, "bias")


def raw_param(module: nn.Module, name: str) -> Any:
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name, None)


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    g = int(m.groups)
    if g == 1:
        return "conv"
    if g == m.in_channels == m.out_channels:
        return "depthwise"
    return "grouped"


class Topology:
    """The structure of one model; see the module docstring.

    Attributes:
        layers: prunable layers in forward order.
        groups: prunable channel groups.
        fixed: why each fixed group is not pruned, keyed by its root layer's name.
        channels: total channels of the prunable groups (length of liveness vectors).
        dense: every parameter of the plain model.
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        layers: list[Layer],
        groups: list[ChannelGroup],
        fixed: dict[str, str],
        slots: list[_Slot],
        dg: Any = None,
        positions: dict[str, int] | None = None,
    ) -> None:
        self.model = model  # the plain model it was built from (methods' checks probe it)
        self.example = example.detach().cpu()
        self.dg = dg  # torch-pruning's graph, on the modules of the model it was built from
        self.layers = layers
        self.by_name = {layer.name: layer for layer in layers}
        self.groups = groups
        self.fixed = fixed
        self.channels = sum(g.size for g in groups)
        self._slots = slots
        self.dense = sum(_numel(model, s) for s in slots)
        #: per prunable layer, the output positions each of its weights is applied at (H·W of
        #: a Conv2d's output, 1 for a Linear on a flat input): MACs = kept weights × positions
        self.positions = dict(positions or {})
        self.dense_macs = int(self.expected_macs(torch.ones(self.channels))) if positions else 0

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls, model: nn.Module, example: torch.Tensor, *, like: Topology | None = None
    ) -> Topology:
        """Trace ``model`` (plain, unmasked) on ``example`` (a batch) with autograd on, in eval
        mode (its mode is restored).

        Every channel group torch-pruning proposes is checked on the model before it counts as
        prunable: closing a random half of its channels must reach its consumers as zeros
        exactly where they read them, and removing those channels by surgery must leave the
        model's output unchanged (within 1e-4). A group that fails either stays fixed, with the
        reason in :attr:`fixed`: an op torch-pruning does not map (a channel shuffle, a
        transpose), a parameter-free normalisation across channels, a forward with hard-coded
        channel counts.

        Args:
            like: the topology of the model this one is a copy of (export's plain copy): its
                fixed groups stay fixed here, and the checks are not repeated.

        Raises:
            ValueError: the model has no prunable layer, cannot be traced, does not return one
                tensor, or has a prunable layer its forward pass does not use.
        """

        names = {m: n for n, m in model.named_modules()}
        prunable = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
        if not prunable:
            raise ValueError(
                f"{type(model).__name__} has no Linear, Conv1d or Conv2d layer to prune."
            )
        if any(parametrize.is_parametrized(m) for _, m in model.named_modules()):
            _refuse_parametrized(model)
        _refuse_unmaskable(prunable)
        order, positions, functional = _trace_calls(model, example, prunable)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                dg = dependency_graph(model, example)
        except Exception as e:  # torch-pruning raises many kinds when tracing fails
            raise ValueError(
                f"cannot trace {type(model).__name__} on an input of shape "
                f"{tuple(example.shape)}: {type(e).__name__}: {e}"
            ) from e
        finally:
            model.train(was_training)

        groups: list[ChannelGroup] = []  # numbered and placed by make() below
        fixed: dict[str, str] = {}
        for g in dg.get_all_groups(root_module_types=PRUNABLE):
            root_mod = g[0].dep.target.module
            root = names[root_mod]
            producers, norms, consumers, why = [], [], [], None
            for item in g.items:
                mod = item.dep.target.module
                if not isinstance(mod, nn.Module) or mod not in names:
                    if isinstance(mod, nn.Parameter):
                        why = "it touches a bare nn.Parameter"
                    continue
                idx = torch.as_tensor(list(item.idxs), dtype=torch.long)
                rt = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
                member = Member(names[mod], idx, rt)
                if names[mod] in functional:
                    why = (
                        f"{names[mod]} is not called as a module: {functional[names[mod]]} "
                        "reads its weight"
                    )
                out = dg.is_out_channel_pruning_fn(item.dep.handler)
                if isinstance(mod, PRUNABLE):
                    if _kind(mod) == "grouped":
                        why = f"grouped conv {names[mod]} is pruned per weight only"
                    (producers if out else consumers).append(member)
                elif isinstance(mod, NORMS):
                    if mod.weight is not None:
                        norms.append(member)
                elif isinstance(mod, MIXING) or any(True for _ in mod.parameters(recurse=False)):
                    why = f"{type(mod).__name__} {names[mod]} mixes or scales channels"
            size = int(raw_weight(root_mod).shape[0])
            if root in functional:
                why = f"{root} is not called as a module: {functional[root]} reads its weight"
            if not consumers and why is None:
                why = "its channels are the model's output"
            if why is not None:
                fixed[root] = why
                continue
            normed = _normed(dg, names, producers, norms)
            groups.append(ChannelGroup(0, root, size, 0, producers, norms, consumers, normed))

        def make(groups: list[ChannelGroup]) -> Topology:
            groups = _renumbered(groups)
            group_of = {p.name: g.id for g in groups for p in g.producers}
            layers = sorted(
                (Layer(n, m, _kind(m), group_of.get(n), order[n]) for n, m in prunable),
                key=lambda layer: layer.order,
            )
            slots = _slots(model, groups, sum(g.size for g in groups))
            return cls(model, example, layers, groups, dict(fixed), slots, dg, positions)

        if like is not None:
            for g in groups:
                if g.root in like.fixed:
                    fixed[g.root] = like.fixed[g.root]
            return make([g for g in groups if g.root not in fixed])
        probe = _probe(example)
        groups = _verify_closing(model, probe, groups, fixed)
        topo = make(groups)
        failed = _surgery_failures(topo, probe, topo.groups)
        if not failed:
            return topo
        why = _surgery_error(topo, probe, [])
        if why is not None:  # not the groups: the model cannot be exported at all
            raise ValueError(f"{type(model).__name__} cannot be exported: {why}")
        fixed.update(failed)
        return make([g for g in groups if g.root not in failed])

    # -- liveness -----------------------------------------------------------------------------
    def open_channels(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """bool[channels]: channels with a kept weight in some producer row.

        Args:
            masks: hard 0/1 weight masks by layer name (a missing layer is dense).
        """
        return self._reached(masks, producers=True)

    def used_channels(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """bool[channels]: channels with a kept weight in some consumer column."""
        return self._reached(masks, producers=False)

    def _reached(self, masks: Mapping[str, torch.Tensor], *, producers: bool) -> torch.Tensor:
        """Channels with a kept weight in some member's rows (producers) or columns."""
        out = torch.zeros(self.channels, dtype=torch.bool)
        for g in self.groups:
            for member in g.producers if producers else g.consumers:
                m = masks.get(member.name)
                if m is None:
                    hit = torch.ones(len(member.idx), dtype=torch.bool)
                else:
                    nz = m.detach() != 0
                    nz = nz if producers else nz.transpose(0, 1)
                    hit = nz.flatten(1)[member.idx.to(m.device)].any(1).cpu()
                out.index_put_((g.offset + member.root,), hit, accumulate=True)
        return out

    def live(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """bool[channels]: open and used; export keeps exactly these channels."""
        return self.open_channels(masks) & self.used_channels(masks)

    def group_slice(self, vector: torch.Tensor, group: ChannelGroup) -> torch.Tensor:
        return vector[group.offset : group.offset + group.size]

    # -- counting -----------------------------------------------------------------------------
    def count(
        self,
        model: nn.Module,
        masks: Mapping[str, torch.Tensor],
        live: torch.Tensor | None = None,
    ) -> int:
        """Parameters the compact export of ``masks`` keeps (nonzero entries), without surgery.

        Args:
            model: the model the topology was built from (masked or not: raw values are read).
            masks: hard 0/1 weight masks by layer name (a missing layer is dense).
            live: the liveness vector, when already computed.
        """
        live = self.live(masks) if live is None else live
        return sum(n for n, _ in self._slot_counts(model, masks, live).values())

    def per_layer(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor], live: torch.Tensor
    ) -> dict[str, dict[str, float]]:
        """Per prunable layer: kept parameters (weight + bias), total, densities, live units."""
        counts = self._slot_counts(model, masks, live)
        out: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            kw, tw = counts[(layer.name, "weight")]
            kb, tb = counts.get((layer.name, "bias"), (0, 0))
            units = layer.out_units
            if layer.group is not None:
                units = int(self.group_slice(live, self.groups[layer.group]).sum())
            out[layer.name] = {
                "kept": kw + kb,
                "total": tw + tb,
                "density": (kw + kb) / max(1, tw + tb),
                "weight_density": kw / max(1, tw),
                "units": units,
                "units_dense": layer.out_units,
            }
        return out

    def _slot_counts(
        self, model: nn.Module, masks: Mapping[str, torch.Tensor], live: torch.Tensor
    ) -> dict[tuple[str, str], tuple[int, int]]:
        flat = torch.cat([live.cpu(), torch.ones(1, dtype=torch.bool)])
        out = {}
        with torch.no_grad():
            for s in self._slots:
                value = raw_param(model.get_submodule(s.module), s.param).detach()
                nz = value != 0
                if s.param == "weight" and s.module in masks:
                    nz = nz & (masks[s.module].detach().to(nz.device) != 0)
                nz = nz.cpu()
                for d, idx in enumerate(s.dims):
                    if idx is not None:
                        shape = [1] * nz.dim()
                        shape[d] = -1
                        nz = nz & flat[idx].view(shape)
                out[(s.module, s.param)] = (int(nz.sum()), value.numel())
        return out

    def weight_gating_terms(self) -> tuple[torch.Tensor, int]:
        """For per-weight gating: per channel, its bias and norm entries (counted while the
        channel is open), and the parameters outside every prunable weight and channel (always
        counted)."""
        extras = torch.zeros(self.channels + 1)
        const = 0
        weights = {(layer.name, "weight") for layer in self.layers}
        for s in self._slots:
            if (s.module, s.param) in weights:
                continue
            idx = s.dims[0] if s.dims else None
            rest = math.prod(s.shape[1:])
            if idx is None:
                const += math.prod(s.shape)
            else:
                extras.index_add_(0, idx, torch.full((len(idx),), float(rest)))
        const += int(extras[-1])
        return extras[:-1], const

    def expected(self, keep: torch.Tensor) -> torch.Tensor:
        """Expected parameters when channel ``c`` is kept with probability ``keep[c]`` and
        every kept weight is nonzero (channel gates; differentiable in ``keep``)."""
        q = torch.cat([keep, keep.new_ones(1)])
        total = keep.new_zeros(())
        for s in self._slots:
            term = keep.new_ones(())
            for idx in s.dims:
                term = term * q[idx.to(q.device)].sum() if idx is not None else term
            rest = math.prod(n for n, idx in zip(s.shape, s.dims, strict=True) if idx is None)
            total = total + term * rest
        return total

    def expected_macs(self, keep: torch.Tensor) -> torch.Tensor:
        """Expected multiply-accumulates per sample of the prunable layers when channel ``c``
        is kept with probability ``keep[c]`` (differentiable in ``keep``): each kept weight
        once per output position. ``expected_macs(ones)`` is :attr:`dense_macs`."""
        q = torch.cat([keep, keep.new_ones(1)])
        total = keep.new_zeros(())
        for s in self._slots:
            n = self.positions.get(s.module)
            if s.param != "weight" or n is None or s.module not in self.by_name:
                continue
            term = keep.new_ones(())
            for idx in s.dims:
                term = term * q[idx.to(q.device)].sum() if idx is not None else term
            rest = math.prod(k for k, idx in zip(s.shape, s.dims, strict=True) if idx is None)
            total = total + term * (rest * n)
        return total


def _refuse_parametrized(model: nn.Module) -> None:
    """Raise for a model that already carries parametrizations: prunetune's own masks (the
    topology is built from the plain model), or the model's (weight or spectral norm), which
    the masks cannot stack on."""
    for name, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        for tensor, plist in m.parametrizations.items():
            kinds = [type(p) for p in plist]
            if any(k.__module__.startswith("prunetune.") for k in kinds):
                raise ValueError("Topology.build needs the plain model (no masks attached yet).")
            where = f"model.{name}" if name else "model"
            raise ValueError(
                f"layer {name or type(model).__name__}'s {tensor} carries the model's own "
                f"parametrization ({kinds[0].__name__}: weight or spectral norm?); prunetune's "
                "masks attach as parametrizations and need the plain tensor: remove it first "
                f"with torch.nn.utils.parametrize.remove_parametrizations({where}, {tensor!r}) "
                "(its current values stay)."
            )


def _refuse_unmaskable(prunable: list[tuple[str, nn.Module]]) -> None:
    """Raise for a prunable layer whose weight a mask cannot own: one a forward pre-hook
    computes (the deprecated ``torch.nn.utils.weight_norm``), or one another layer shares."""
    owner: dict[int, str] = {}
    for n, m in prunable:
        w = m._parameters.get("weight")
        if not isinstance(w, nn.Parameter):
            raise ValueError(
                f"layer {n}'s weight is not a parameter: a forward pre-hook computes it "
                "(the deprecated torch.nn.utils.weight_norm?). prunetune's masks need the "
                f"weight itself: run torch.nn.utils.remove_weight_norm(model.{n}) first."
            )
        first = owner.setdefault(id(w), n)
        if first != n:
            raise ValueError(
                f"layers {first} and {n} share one weight tensor (tied weights); prunetune "
                "masks and counts each layer's weight on its own: untie them first, e.g. "
                f"model.{n}.weight = nn.Parameter(model.{first}.weight.detach().clone())."
            )


def _trace_calls(
    model: nn.Module, example: torch.Tensor, prunable: list[tuple[str, nn.Module]]
) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """One forward pass of ``model`` on ``example`` (eval mode, restored): the forward order of
    the prunable layers, their output positions per weight (``H·W`` of a conv's output, tokens
    of a Linear on a sequence, both calls of a layer called twice), and the layers that are
    never called but whose weight the forward reads through a parent module — the parent's
    name and class by layer (``nn.MultiheadAttention`` reads ``out_proj.weight`` directly).
    These order after their parent's other submodules, and their positions are the parent
    output's per output feature.

    Raises:
        ValueError: the forward does not return one tensor, or a prunable layer's weight is not
            used at all.
    """
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}  # output shapes of the other modules
    positions: dict[str, int] = {}
    layer_names = {n for n, _ in prunable}

    def seen(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls.setdefault(name, len(calls))
            out = output[0] if isinstance(output, tuple) and output else output
            if name not in layer_names:
                if isinstance(out, torch.Tensor):
                    shapes.setdefault(name, tuple(out.shape))
            elif isinstance(out, torch.Tensor) and out.dim() >= 2:
                per = out.numel() // max(1, out.shape[0] * raw_weight(module).shape[0])
                positions[name] = positions.get(name, 0) + per  # a layer called twice: both

        return hook

    hooks = [m.register_forward_hook(seen(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # as in training: without grad, TransformerEncoderLayer's
            out = model(example)  # fused fast path would skip its Linear modules
    except Exception as e:
        raise ValueError(
            f"cannot run {type(model).__name__} on an input of shape {tuple(example.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"{type(model).__name__}.forward returns a {type(out).__name__}; prunetune needs "
            "one tensor of outputs (logits), so wrap the model in a module whose forward "
            "returns that tensor (e.g. out['logits'])."
        )
    missing = [(n, m) for n, m in prunable if n not in calls]
    functional: dict[str, str] = {}
    if missing:
        weights = [raw_weight(m) for _, m in missing]
        flags = [w.requires_grad for w in weights]
        try:
            for w in weights:
                w.requires_grad_(True)
            with torch.enable_grad():
                total = model.eval()(example).float().sum()
            grads = torch.autograd.grad(total, weights, allow_unused=True)
        finally:
            for w, f in zip(weights, flags, strict=True):
                w.requires_grad_(f)
            model.train(was_training)
        for (n, m), g in zip(missing, grads, strict=True):
            if g is None:
                raise ValueError(
                    f"layer {n} is not used in the model's forward pass (in eval mode, on the "
                    "example batch)."
                )
            parent = n.rpartition(".")[0]
            while parent and parent not in calls:
                parent = parent.rpartition(".")[0]
            functional[n] = (
                f"{type(model.get_submodule(parent)).__name__} {parent}" if parent else "the model"
            )
            calls[n] = calls.get(parent, len(calls))
            shape = shapes.get(parent, tuple(out.shape))
            width = raw_weight(m).shape[0]
            if len(shape) >= 2 and shape[-1] == width:
                positions[n] = math.prod(shape) // max(1, shape[0] * width)
    order = {n: calls[n] for n, _ in prunable}
    return order, positions, functional


def _normed(
    dg: Any, names: dict[nn.Module, str], producers: list[Member], norms: list[Member]
) -> frozenset[str]:
    """Producers whose output node feeds one of ``norms`` directly."""
    prod = {p.name for p in producers}
    by_name = {n: m for m, n in names.items()}
    out = set()
    for n in norms:
        node = dg.module2node.get(by_name[n.name])
        for inp in node.inputs if node is not None else ():
            name = names.get(inp.module)
            if name in prod:
                out.add(name)
    return frozenset(out)


def _probe(example: torch.Tensor) -> torch.Tensor:
    """The input the group checks run on: ``example``, or random values of its shape when it
    is a constant float tensor (a spec is validated on zeros, through which a wrong channel
    mapping can look right)."""
    if example.is_floating_point() and example.numel() > 1 and not bool(example.std() > 0):
        g = torch.Generator().manual_seed(0)
        return torch.randn(example.shape, generator=g, dtype=example.dtype).to(example.device)
    return example


def _closing(g: ChannelGroup) -> torch.Tensor:
    """bool[g.size]: the channels the checks close, a fixed random half (at least one kept
    when the group has two or more), so that a mapping that moves channels shows."""
    gen = torch.Generator().manual_seed(g.size)
    shut = torch.zeros(g.size, dtype=torch.bool)
    shut[torch.randperm(g.size, generator=gen)[: max(1, g.size // 2)]] = True
    return shut


def _renumbered(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """``groups`` with ids 0, 1, … and offsets into the flat channel vector in their order."""
    out, offset = [], 0
    for i, g in enumerate(groups):
        out.append(
            ChannelGroup(i, g.root, g.size, offset, g.producers, g.norms, g.consumers, g.normed)
        )
        offset += g.size
    return out


@torch.no_grad()
def _verify_closing(
    model: nn.Module, example: torch.Tensor, groups: list[ChannelGroup], fixed: dict[str, str]
) -> list[ChannelGroup]:
    """The groups whose closed channels really reach their consumers as zeros, at the
    positions torch-pruning says they read them; the others go to ``fixed`` with the reason.

    Closing a channel zeroes its producers' rows and biases and its norms' affine parameters;
    an op between them and a consumer with ``f(0) != 0`` (a sigmoid, a softplus) would turn
    that zero into a constant, and removing the channel would change the output; an op that
    moves channels (a shuffle) would put the zeros elsewhere. Each group is closed on a random
    half of its channels (:func:`_closing`), all groups in one pass on ``example`` in eval
    mode: a closed channel is zero whatever the other channels carry.
    """
    was_training = model.training
    model.eval()
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            seen[name] = inputs[0].detach()

        return hook

    names = {c.name for g in groups for c in g.consumers}
    hooks = [model.get_submodule(n).register_forward_pre_hook(grab(n)) for n in names]
    checked: list[tuple[ChannelGroup, torch.Tensor]] = []
    saved = []
    try:
        for g in groups:
            bad = _misplaced(model, g)
            if bad is not None:
                fixed[g.root] = (
                    f"torch-pruning maps its channels onto {bad} wrongly (a transpose, reshape "
                    "or token-mixing op between them?)"
                )
                continue
            read = torch.zeros(g.size, dtype=torch.bool)
            for c in g.consumers:
                read[c.root] = True
            if not bool(read.all()):
                fixed[g.root] = (
                    f"torch-pruning finds a consumer for only {int(read.sum())} of its {g.size} "
                    "channels (a split, slice or shuffle it cannot follow?)"
                )
                continue
            shut = _closing(g)
            checked.append((g, shut))
            saved += _closed_entries(model, g, shut)
        for t, _, rows in saved:  # every group closed at once: a zero stays a zero
            t[rows] = 0
        if checked:
            model(example)
    finally:
        for t, values, rows in reversed(saved):
            t[rows] = values
        for h in hooks:
            h.remove()
        model.train(was_training)
    kept: list[ChannelGroup] = []
    for g, shut in checked:
        bad = next((c.name for c in g.consumers if _reads(model, c, seen, shut).ne(0).any()), None)
        if bad is None:
            kept.append(g)
        else:
            fixed[g.root] = (
                f"its closed channels do not reach {bad} as zeros where it reads them (an op "
                "with f(0) != 0 such as a sigmoid, or one that moves channels, between them)"
            )
    return kept


def channel_entries(
    model: nn.Module, g: ChannelGroup, channels: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor, rows)``: the producer rows, biases and norm entries of ``g``'s ``channels``
    (bool over the group's channels) in ``model``, the entries that closing them zeroes."""
    for m in (*g.producers, *g.norms):
        mod = model.get_submodule(m.name)
        rows = m.idx[channels[m.root]]
        for p in ("weight", "bias"):
            t = getattr(mod, p, None)
            if t is not None:
                yield t, rows


def _closed_entries(
    model: nn.Module, g: ChannelGroup, shut: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(tensor, saved values, rows)`` of :func:`channel_entries` (the caller zeroes and
    restores them)."""
    return [(t, t[rows].clone(), rows) for t, rows in channel_entries(model, g, shut)]


def _surgery_failures(
    topo: Topology, example: torch.Tensor, groups: list[ChannelGroup]
) -> dict[str, str]:
    """Why removing channels of ``groups`` by surgery changes ``topo.model``'s output, by
    group root: all of them are tested in one export; a failure is narrowed down by halves."""
    if not groups:
        return {}
    why = _surgery_error(topo, example, groups)
    if why is None:
        return {}
    if len(groups) == 1:
        return {groups[0].root: why}
    half = len(groups) // 2
    found = {
        **_surgery_failures(topo, example, groups[:half]),
        **_surgery_failures(topo, example, groups[half:]),
    }
    return found or {g.root: why for g in groups}  # fails only together: keep them all


@torch.no_grad()
def _surgery_error(topo: Topology, example: torch.Tensor, groups: list[ChannelGroup]) -> str | None:
    """Close :func:`_closing`'s channels of ``groups``, export, and compare the compact model
    with the closed model on ``example``; the difference or the error, else None."""
    from prunetune.prune._base import Mask
    from prunetune.prune.export import export_compact

    model = topo.model
    masks: dict[str, Mask] = {}
    saved = []
    for g in groups:
        shut = _closing(g)
        if g.size < 2:
            continue
        for p in g.producers:
            w = raw_weight(model.get_submodule(p.name))
            m = masks.setdefault(p.name, Mask(torch.ones_like(w)))
            m.weight[p.idx[shut[p.root]]] = 0
        saved += _closed_entries(model, g, shut)
    if not masks and groups:
        return None
    was_training = model.training
    model.eval()
    try:
        for t, _, rows in saved:
            t[rows] = 0
        closed = model(example)
    finally:
        for t, values, rows in saved:
            t[rows] = values
        model.train(was_training)
    try:
        compact = export_compact(model, masks, example, topology=topo).model
        out = compact(example)
    except Exception as e:  # the compact model cannot be built or run: a hard-coded shape…
        what = "removing its channels breaks the model" if groups else "the plain copy fails"
        return f"{what} ({type(e).__name__}: {_line(e)})"
    diff = float((out - closed).abs().max()) if out.shape == closed.shape else float("inf")
    if diff <= 1e-4 * max(1.0, float(closed.abs().max())):
        return None
    if not groups:
        return f"a plain copy computes other outputs (by {diff:.3g}): is the forward random?"
    return f"removing its channels changes the model's output (by {diff:.3g})"


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else ""


def _channel_dim(module: nn.Module) -> int:
    """The dimension of a prunable layer's input and output that holds its channels: a
    Linear's are last (``(batch, …, features)``), a conv's second."""
    return -1 if isinstance(module, nn.Linear) else 1


def _misplaced(model: nn.Module, g: ChannelGroup) -> str | None:
    """The first member whose indices fall outside its own channels (torch-pruning followed
    a coupling through an op it does not map, such as a transpose), else None."""
    members = [(m, True) for m in g.producers] + [(m, False) for m in (*g.norms, *g.consumers)]
    for m, produces in members:
        mod = model.get_submodule(m.name)
        if isinstance(mod, PRUNABLE):
            w = raw_weight(mod)
            n = int(w.shape[0] if produces else w.shape[1] * _fan_in_groups(mod))
        else:
            n = int(mod.weight.shape[0])
        if m.idx.numel() and int(m.idx.max()) >= n:
            return m.name
    return None


def _fan_in_groups(module: nn.Module) -> int:
    """Input channels per weight column (a depthwise conv's one column reads each channel)."""
    return int(getattr(module, "groups", 1))


def _reads(
    model: nn.Module, c: Member, seen: dict[str, torch.Tensor], shut: torch.Tensor
) -> torch.Tensor:
    """Consumer ``c``'s recorded input at the positions it reads the ``shut`` channels."""
    x = seen[c.name]
    return x.movedim(_channel_dim(model.get_submodule(c.name)), 0)[c.idx[shut[c.root]]]


def _numel(model: nn.Module, s: _Slot) -> int:
    return raw_param(model.get_submodule(s.module), s.param).numel()


@dataclass(frozen=True)
class _ShapedSlot(_Slot):
    shape: tuple[int, ...] = ()


def _slots(model: nn.Module, groups: list[ChannelGroup], always: int) -> list[_Slot]:
    """Every parameter with, per dimension, the flat channel index of each entry."""
    dims: dict[tuple[str, str], list[torch.Tensor | None]] = {}
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            dims[(mod_name, p_name)] = [None] * p.dim()
            shapes[(mod_name, p_name)] = tuple(p.shape)

    def couple(name: str, param: str, dim: int, member: Member, offset: int) -> None:
        key = (name, param)
        if key not in dims:
            return
        d = dims[key]
        if d[dim] is None:
            d[dim] = torch.full((shapes[key][dim],), always, dtype=torch.long)
        d[dim][member.idx] = offset + member.root

    for g in groups:
        for p in g.producers:
            couple(p.name, "weight", 0, p, g.offset)
            couple(p.name, "bias", 0, p, g.offset)
        for n in g.norms:
            couple(n.name, "weight", 0, n, g.offset)
            couple(n.name, "bias", 0, n, g.offset)
        for c in g.consumers:
            couple(c.name, "weight", 1, c, g.offset)
    return [_ShapedSlot(m, p, tuple(dims[(m, p)]), shape=shapes[(m, p)]) for (m, p) in dims]


def dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    """torch-pruning's dependency graph of ``model``, with concatenation offsets fixed (see
    :func:`fix_concat`)."""
    import torch_pruning as tp

    # verbose=False: its warnings about bare parameters (a ViT's position embedding) would
    # repeat at every build; such groups are fixed here, with the reason
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    fix_concat(dg)
    return dg


def fix_concat(dg: Any) -> None:
    """Set every channel concatenation's offsets from its inputs' current channel counts.

    torch-pruning 1.6 infers a concatenation's output channels by walking downstream; across a
    flatten into a Linear it finds the Linear's input features instead, gives up, and then
    couples the concatenated layers' channels one to one. Call again after pruning a group that
    feeds a concatenation (the offsets move).
    """
    import torch_pruning as tp
    from torch_pruning.dependency import shape_infer
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    for node in list(dg.module2node.values()):
        if node.type != tp.ops.OPTYPE.CONCAT:
            continue
        dim = getattr(node.grad_fn, "_saved_dim", 1)
        if dim != 1:
            continue
        chs = [shape_infer.infer_channels_between(dg, n, node) for n in node.inputs]
        if any(c is None for c in chs):
            continue
        offsets = [0]
        for c in chs:
            offsets.append(offsets[-1] + c)
        node.module.concat_sizes = chs
        node.module.offsets = offsets
        for i, in_node in enumerate(node.inputs):
            span = offsets[i : i + 2]
            for dep in node.dependencies:  # concat → its input: subtract the offset
                if dep.target == in_node:
                    dep.index_mapping[1] = _ConcatIndexMapping(offset=span, reverse=True)
                    break
            for dep in in_node.dependencies:  # input → concat: add the offset
                if dep.target == node:
                    dep.index_mapping[1] = _ConcatIndexMapping(offset=span, reverse=False)
                    break
