"""Private: kept weights and the layered graph of kept connections between live nodes.

See :mod:`prunetune.explain` for the analysis as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunetune.prune._base import Mask
from prunetune.prune._chain import BETWEEN, PRUNABLE, prunable_layers
from prunetune.prune._chain import ChainLayer as Layer
from prunetune.prune._topology import raw_weight

# --------------------------------------------------------------------------- kept weights


class UnsupportedModelError(ValueError):
    """The model is not a chain of Linear/Conv2d layers, which every analysis here reads."""


def _chain_layers(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """The prunable layers of ``model``, or one line saying why it cannot be analysed.

    Paths, path norms and symmetry follow the weights layer by layer, so they need a chain:
    an ``nn.Sequential`` of Linear/Conv2d layers with only activations, MaxPool2d, Flatten or
    Dropout between them (an MLP or a plain CNN, as :mod:`prunetune.models` builds).

    Raises:
        UnsupportedModelError: any other model (residual blocks, normalisation, custom
            ``forward``), naming its type and the layers that break the chain.
    """
    if isinstance(model, nn.Sequential):
        parts = list(model)
    else:  # its leaf modules
        parts = [m for m in model.modules() if next(m.children(), None) is None]
    odd = sorted({type(m).__name__ for m in parts if not isinstance(m, PRUNABLE + BETWEEN)})
    if odd or not isinstance(model, nn.Sequential):
        got = f"with {', '.join(odd)} layers" if odd else "(a custom forward, not nn.Sequential)"
        raise UnsupportedModelError(
            "pathway analysis needs a chain of Linear/Conv2d layers (an nn.Sequential MLP or "
            "CNN with only activations, MaxPool2d, Flatten or Dropout between them); got "
            f"{type(model).__name__} {got}."
        )
    return prunable_layers(model, tuple(input_shape))


@torch.no_grad()
def effective_weights(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Mapping[str, Mask] | None = None,
) -> tuple[list[Layer], list[torch.Tensor]]:
    """The prunable layers of ``model`` and their kept weights (float64, CPU).

    The kept weight is ``raw weight × masks[name].weight`` where a mask is given, else the
    layer's ``weight`` as the model computes it in eval mode — so an attached Gumbel gate
    contributes its deterministic mask ``1[θ > 0]`` and a compact model its plain weights.

    Raises:
        UnsupportedModelError: ``model`` is not a chain of Linear/Conv2d layers.
        ValueError: a mask's shape does not match its layer.
    """
    layers = _chain_layers(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        out = []
        for layer in layers:
            if masks is not None and layer.name in masks:
                w = raw_weight(layer.module)
                m = masks[layer.name].weight
                if tuple(m.shape) != tuple(w.shape):
                    raise ValueError(
                        f"mask of layer {layer.name} has shape {tuple(m.shape)}, but its weight "
                        f"has shape {tuple(w.shape)}."
                    )
                w = w * m.to(w)
            else:
                w = layer.module.weight  # parametrizations (masks) apply here
            out.append(w.detach().to("cpu", torch.float64).clone())
    finally:
        model.train(was_training)
    return layers, out


def _unit_matrix(w: torch.Tensor, layer: Layer, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed and absolute unit-to-unit weights ``[out_units, in_nodes]``.

    Conv kernels (and the positions of a flattened feature map) are summed into one edge per
    pair of units. The first Linear layer keeps one input node per input feature.
    """
    if w.dim() == 4:  # (out, in, kh, kw)
        return w.sum((2, 3)), w.abs().sum((2, 3))
    if first or layer.in_repeat == 1:
        return w, w.abs()
    v = w.view(w.shape[0], layer.in_units, layer.in_repeat)
    return v.sum(2), v.abs().sum(2)


# --------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class Component:
    """One connected component of the kept-connection graph.

    Attributes:
        inputs: input node ids (flattened feature indices; input channels for a first conv).
        outputs: output indices.
        hidden: per prunable hidden layer name, the unit ids (original indices) it holds.
    """

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    hidden: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "hidden": {k: list(v) for k, v in self.hidden.items()},
        }


@dataclass(frozen=True)
class Path:
    """One input→output path: its node id at each level and the product of |w| along it."""

    nodes: tuple[int, ...]
    score: float


@dataclass(frozen=True)
class PathwayGraph:
    """The layered graph of kept connections between live nodes.

    Level 0 holds the inputs, level ``l ≥ 1`` the units of the ``l``-th prunable layer; the
    last level holds the outputs. Only live nodes (on some input→output path of nonzero
    weights) appear.

    Attributes:
        input_shape: shape of one input sample.
        level_names: ``"input"`` then the prunable layers' names (keys of masks/kept_units).
        units: per level, the original ids of its live nodes (via ``kept_units`` for a compact
            model), ascending.
        weight: per transition ``l`` (level ``l`` → ``l+1``), the signed kept weights
            ``[len(units[l+1]), len(units[l])]`` between live nodes (kernel sums for convs).
        strength: the same with ``Σ |w|`` (``> 0`` exactly where a connection is kept).
        num_inputs: input nodes of the unpruned model (features, or channels for a conv).
        num_outputs: outputs of the model.
    """

    input_shape: tuple[int, ...]
    level_names: tuple[str, ...]
    units: tuple[tuple[int, ...], ...]
    weight: tuple[torch.Tensor, ...]
    strength: tuple[torch.Tensor, ...]
    num_inputs: int
    num_outputs: int

    @property
    def num_edges(self) -> int:
        return int(sum(int((s > 0).sum()) for s in self.strength))

    @property
    def live_inputs(self) -> tuple[int, ...]:
        return self.units[0]

    @property
    def live_outputs(self) -> tuple[int, ...]:
        return self.units[-1]

    def edges(self) -> list[tuple[int, int, int, float]]:
        """Every kept edge as ``(transition, src id, dst id, signed weight)``."""
        out = []
        for t, s in enumerate(self.strength):
            src, dst = self.units[t], self.units[t + 1]
            for i, j in torch.nonzero(s > 0).tolist():
                out.append((t, src[j], dst[i], float(self.weight[t][i, j])))
        return out

    def components(self) -> list[Component]:
        """Connected components (edges taken undirected), ordered by their smallest output."""
        offsets = [0]
        for u in self.units:
            offsets.append(offsets[-1] + len(u))
        parent = list(range(offsets[-1]))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for t, s in enumerate(self.strength):
            for i, j in torch.nonzero(s > 0).tolist():
                ra, rb = find(offsets[t] + j), find(offsets[t + 1] + i)
                if ra != rb:
                    parent[ra] = rb
        groups: dict[int, list[tuple[int, int]]] = {}
        for level, ids in enumerate(self.units):
            for pos, uid in enumerate(ids):
                groups.setdefault(find(offsets[level] + pos), []).append((level, uid))
        last = len(self.units) - 1
        comps = []
        for members in groups.values():
            hidden = {
                self.level_names[lv]: tuple(u for m_lv, u in members if m_lv == lv)
                for lv in range(1, last)
            }
            comps.append(
                Component(
                    inputs=tuple(u for lv, u in members if lv == 0),
                    outputs=tuple(u for lv, u in members if lv == last),
                    hidden={k: v for k, v in hidden.items() if v},
                )
            )
        return sorted(comps, key=lambda c: (min(c.outputs, default=math.inf), c.inputs))

    def top_paths(self, k: int) -> list[Path]:
        """The ``k`` input→output paths with the largest product of |w| (kernel sums for convs).

        A k-best dynamic programme over the levels: each node keeps its ``k`` best partial
        paths, so the cost is ``O(edges · k)`` tensor work, not the number of paths.

        Raises:
            ValueError: ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"`k >= 1` must hold, but got {k=}.")
        if not self.units[0]:
            return []
        scores = torch.ones(len(self.units[0]), 1, dtype=torch.float64)  # (nodes, ranks kept)
        back: list[torch.Tensor] = []  # per transition: flat index into (prev node, prev rank)
        for s in self.strength:
            n_prev, kk = scores.shape
            kt = min(k, n_prev * kk)
            rows = max(1, (1 << 22) // max(1, n_prev * kk))  # bound the candidate tensor
            best, idx = [], []
            for r0 in range(0, s.shape[0], rows):
                cand = s[r0 : r0 + rows, :, None] * scores[None, :, :]  # (rows, n_prev, kk)
                b, i = cand.reshape(cand.shape[0], n_prev * kk).topk(kt, dim=1)
                best.append(b)
                idx.append(i)
            scores = torch.cat(best) if best else torch.zeros(0, kt, dtype=torch.float64)
            back.append(torch.cat(idx) if idx else torch.zeros(0, kt, dtype=torch.long))
        flat_scores = scores.reshape(-1)
        kt = min(k, int((flat_scores > 0).sum()))
        top, flat = flat_scores.topk(kt)
        paths = []
        for score, f in zip(top.tolist(), flat.tolist(), strict=True):
            node, rank = divmod(f, scores.shape[1])
            pos = [node]
            for t in range(len(back) - 1, -1, -1):
                kk_prev = 1 if t == 0 else back[t - 1].shape[1]
                node, rank = divmod(int(back[t][node, rank]), kk_prev)
                pos.append(node)
            pos.reverse()
            ids = tuple(self.units[lv][p] for lv, p in enumerate(pos))
            paths.append(Path(nodes=ids, score=float(score)))
        return paths


def _hidden_ids(
    layers: list[Layer], kept_units: Mapping[str, Sequence[int]] | None
) -> list[list[int]]:
    out = []
    for layer in layers:
        n = layer.out_units
        ids = list(range(n))
        if kept_units is not None and layer.name in kept_units:
            ids = [int(u) for u in kept_units[layer.name]]
            if len(ids) != n:
                raise ValueError(
                    f"kept_units[{layer.name!r}] must list one original index per unit of the "
                    f"layer ({n}), but got {len(ids)}."
                )
        out.append(ids)
    return out


@dataclass(frozen=True)
class _Kept:
    """Kept weights of a model at the unit level, and which nodes are live."""

    layers: list[Layer]
    weights: list[torch.Tensor]  # per prunable layer, the full kept weight (float64)
    mats: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (signed, |w|) unit matrices
    live: list[torch.Tensor]  # per level (inputs, then each layer's units), bool


def _kept(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, Mask] | None) -> _Kept:
    layers, ws = effective_weights(model, input_shape, masks)
    mats = [
        _unit_matrix(w, layer, i == 0) for i, (w, layer) in enumerate(zip(ws, layers, strict=True))
    ]
    conn = [a > 0 for _, a in mats]
    # Live: reachable from some input and reaching some output through kept weights.
    fwd = [torch.ones(conn[0].shape[1], dtype=torch.bool)]
    for c in conn:
        fwd.append((c & fwd[-1][None, :]).any(1))
    bwd = [torch.ones(conn[-1].shape[0], dtype=torch.bool)]
    for c in reversed(conn):
        bwd.insert(0, (c & bwd[0][:, None]).any(0))
    live = [f & b for f, b in zip(fwd, bwd, strict=True)]
    return _Kept(layers, ws, mats, live)


def pathway_graph(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, Mask] | None = None,
    kept_units: Mapping[str, Sequence[int]] | None = None,
) -> PathwayGraph:
    """The layered graph of kept connections of a compact or masked sequential model.

    Args:
        model: an ``nn.Sequential`` of Linear/Conv2d layers (see ``prunable_layers``).
        input_shape: shape of one input sample (``arch["input_shape"]``).
        masks: hard masks per prunable layer name (default: the model's own weights, with any
            attached mask parametrization applied).
        kept_units: for a compact model, the original unit indices per layer
            (``ExportResult.kept_units``), used as node ids; default ``0..n-1``.

    Raises:
        ValueError: unsupported model, mask shape or kept_units length.
    """
    return _graph(_kept(model, input_shape, masks), input_shape, kept_units)


def _graph(
    k: _Kept, input_shape: Sequence[int], kept_units: Mapping[str, Sequence[int]] | None
) -> PathwayGraph:
    n_in, n_out = len(k.live[0]), len(k.live[-1])
    ids = [list(range(n_in)), *_hidden_ids(k.layers, kept_units)]
    ids[-1] = list(range(n_out))  # outputs are never re-indexed
    units = tuple(
        tuple(ids[lv][p] for p in torch.nonzero(mask).flatten().tolist())
        for lv, mask in enumerate(k.live)
    )
    weight, strength = [], []
    for t, (sw, aw) in enumerate(k.mats):
        rows, cols = k.live[t + 1], k.live[t]
        weight.append(sw[rows][:, cols].clone())
        strength.append(aw[rows][:, cols].clone())
    return PathwayGraph(
        input_shape=tuple(int(d) for d in input_shape),
        level_names=("input", *(layer.name for layer in k.layers)),
        units=units,
        weight=tuple(weight),
        strength=tuple(strength),
        num_inputs=n_in,
        num_outputs=n_out,
    )
