"""Reading a pruned network: information pathways, feature importance, feature symmetry.

Zhang, Tao & Zhang (2023), "Neural Network Pruning by Gradient Descent", arXiv:2311.12526,
argue that an extremely pruned network is readable: which inputs still reach which outputs,
how much of the surviving path weight each input carries, and which inputs enter
symmetrically (e.g. only through ``x₁ − x₂``). This module computes those from the kept
weights of a sequential model — a compact model from :func:`prunetune.prune.export_compact`
or a full-size model with masks (attached parametrizations or explicit :class:`Mask` es).

* :func:`pathway_graph` — the layered graph of kept connections between *live* nodes (on at
  least one input→output path): input features (or input channels of a first conv) → hidden
  units (neurons / channels) → outputs; its connected components and its top-k paths.
* :func:`feature_importance` — the path norm ``P[k, i] = Σ_paths Π |w|`` from input feature
  ``i`` to output ``k`` through kept weights (activations treated as identity, max-pooling as a
  sum over its window), and each feature's share of it. A feature with no surviving path gets
  exactly 0. For images the shares reshape to the image (:meth:`FeatureImportance.heatmap`).
* :func:`feature_symmetry` — groups of live inputs whose kept outgoing (first-layer) weight
  vectors are equal or opposite up to a relative tolerance.

PyTorch only: drawing lives in ``prunetune.search.explain``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunetune.prune.pathways import pathway_graph, feature_importance
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.SiLU(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]]))
    ...     _ = model[2].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    >>> [c.as_dict() for c in pathway_graph(model, (3,)).components()]
    [{'inputs': [0, 1], 'outputs': [0], 'hidden': {'0': [0]}}]
    >>> feature_importance(model, (3,)).overall.tolist()
    [0.5, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from prunetune.prune._base import Mask
from prunetune.prune._topology import Layer, prunable_layers, raw_weight

__all__ = [
    "Component",
    "Explanation",
    "FeatureImportance",
    "Path",
    "PathwayGraph",
    "SymmetryGroup",
    "SymmetryPair",
    "SymmetryReport",
    "effective_weights",
    "explain",
    "feature_importance",
    "feature_symmetry",
    "pathway_graph",
]

Relation = Literal["equal", "opposite"]


# --------------------------------------------------------------------------- kept weights


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
        ValueError: ``model`` is not a supported ``nn.Sequential``, or a mask's shape does not
            match its layer.
    """
    layers = prunable_layers(model, tuple(input_shape))
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


# --------------------------------------------------------------------------- importance


@dataclass(frozen=True)
class FeatureImportance:
    """Path-norm importance of each input feature.

    Attributes:
        input_shape: shape of one input sample; features are its flattened elements.
        path_norm: ``[num_outputs, num_features]``, ``Σ_paths Π |w|^power`` from each feature to
            each output through kept weights.
        overall: ``[num_features]``, each feature's share of the total path norm (sums to 1,
            or all 0 when nothing survives); exactly 0 without a surviving path.
        per_output: ``[num_outputs, num_features]``, shares per output (rows sum to 1, or 0
            for an output no feature reaches).
    """

    input_shape: tuple[int, ...]
    path_norm: torch.Tensor
    overall: torch.Tensor
    per_output: torch.Tensor

    def heatmap(self, output: int | None = None) -> torch.Tensor:
        """Shares in the input's shape: ``overall`` (``output=None``) or one output's.

        Raises:
            ValueError: ``output`` is out of range.
        """
        if output is None:
            return self.overall.view(self.input_shape)
        n = self.per_output.shape[0]
        if not 0 <= output < n:
            raise ValueError(f"`0 <= output < {n}` must hold, but got {output=}.")
        return self.per_output[output].view(self.input_shape)

    def heatmaps(self) -> torch.Tensor:
        """Per-output shares, ``[num_outputs, *input_shape]``."""
        return self.per_output.view(self.per_output.shape[0], *self.input_shape)


def _abs_forward(
    model: nn.Sequential, layers: list[Layer], ws: list[torch.Tensor], x: torch.Tensor, power: float
) -> torch.Tensor:
    """``x`` through the network with weights ``|w|^power``, no biases, identity activations
    and max-pooling replaced by a sum over its window: a linear map that counts every path."""
    by_index = {layer.index: w for layer, w in zip(layers, ws, strict=True)}
    for i, m in enumerate(model):
        if i in by_index:
            w = by_index[i].abs() ** power
            if isinstance(m, nn.Linear):
                x = F.linear(x, w)
            else:
                assert isinstance(m, nn.Conv2d)
                x = F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            x = F.avg_pool2d(x, k, m.stride, m.padding) * (k[0] * k[1])
        elif isinstance(m, nn.Flatten):
            x = m(x)
        # activations and dropout: identity
    return x


@torch.no_grad()
def feature_importance(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, Mask] | None = None,
    power: float = 1.0,
    input_scale: torch.Tensor | None = None,
    chunk: int = 1024,
) -> FeatureImportance:
    """Each input feature's share of the surviving input→output path norm.

    ``P[k, i] = Σ_{paths i → k} Π_{w on path} |w|^power`` (Neyshabur et al. 2015's path norm
    for ``power`` = 1 or 2), computed by pushing the identity basis through the network with
    absolute weights. With only Linear layers this is ``|W_L| ⋯ |W_1|``.

    The path norm sees weights only: an input that barely varies (an image's border pixels) can
    carry a large one. ``input_scale`` (e.g. each feature's standard deviation over the
    training data) multiplies column ``i`` by ``s_i`` to weigh features by how much they vary.

    Args:
        model: compact or masked ``nn.Sequential``.
        input_shape: shape of one input sample.
        masks: hard masks per prunable layer name (default: the model's own weights).
        power: exponent applied to ``|w|``.
        input_scale: non-negative per-feature factors, ``input_shape`` or flattened.
        chunk: basis vectors per forward pass.

    Raises:
        ValueError: ``power <= 0``, a bad ``input_scale``, or an unsupported model.
    """
    if not power > 0:
        raise ValueError(f"`power > 0` must hold, but got {power=}.")
    layers, ws = effective_weights(model, input_shape, masks)
    return _importance(model, layers, ws, input_shape, power, chunk, input_scale)


def _importance(
    model: nn.Module,
    layers: list[Layer],
    ws: list[torch.Tensor],
    input_shape: Sequence[int],
    power: float,
    chunk: int,
    input_scale: torch.Tensor | None = None,
) -> FeatureImportance:
    shape = tuple(int(d) for d in input_shape)
    n = math.prod(shape)
    scale = None
    if input_scale is not None:
        scale = torch.as_tensor(input_scale).detach().to("cpu", torch.float64).reshape(-1)
        if scale.numel() != n or not bool((scale >= 0).all()):
            raise ValueError(
                f"input_scale must hold {n} non-negative factors (one per feature of "
                f"{shape}), but got {scale.numel()} with min {float(scale.min()):g}."
            )
    cols = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        basis = torch.zeros(stop - start, n, dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        cols.append(_abs_forward(model, layers, ws, basis.view(-1, *shape), power))  # type: ignore[arg-type]
    pn = torch.cat(cols).T.contiguous()  # (num_outputs, num_features)
    if scale is not None:
        pn = pn * scale[None, :]
    total = pn.sum()
    overall = pn.sum(0) / total if total > 0 else torch.zeros(n, dtype=torch.float64)
    row = pn.sum(1, keepdim=True)
    per_output = torch.where(row > 0, pn / row.clamp_min(torch.finfo(pn.dtype).tiny), 0.0)
    return FeatureImportance(
        input_shape=shape, path_norm=pn, overall=overall, per_output=per_output
    )


# --------------------------------------------------------------------------- symmetry


@dataclass(frozen=True)
class SymmetryPair:
    """Two live inputs whose outgoing weights agree: ``w_a ≈ w_b`` or ``w_a ≈ −w_b``.

    ``distance`` is ``‖w_a ∓ w_b‖₂ / max(‖w_a‖₂, ‖w_b‖₂)``.
    """

    a: int
    b: int
    relation: Relation
    distance: float


@dataclass(frozen=True)
class SymmetryGroup:
    """Inputs that enter alike; ``signs[i]`` is ``+1`` / ``−1`` relative to ``features[0]``."""

    features: tuple[int, ...]
    signs: tuple[int, ...]


@dataclass(frozen=True)
class SymmetryReport:
    """Symmetric input features at relative tolerance ``tol``."""

    tol: float
    groups: tuple[SymmetryGroup, ...]
    pairs: tuple[SymmetryPair, ...]

    def relation(self, a: int, b: int) -> Relation | None:
        """``"equal"`` / ``"opposite"`` if ``a`` and ``b`` share a group, else ``None``."""
        for g in self.groups:
            if a in g.features and b in g.features:
                sa = g.signs[g.features.index(a)]
                sb = g.signs[g.features.index(b)]
                return "equal" if sa == sb else "opposite"
        return None


@torch.no_grad()
def feature_symmetry(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, Mask] | None = None,
    tol: float = 0.1,
) -> SymmetryReport:
    """Groups of live inputs whose kept outgoing weights are equal or opposite up to ``tol``.

    An input's outgoing weights are its first-layer weights into the live units (the whole
    kernel slice per input channel for a first conv). Inputs ``a``, ``b`` pair when
    ``‖w_a − s·w_b‖₂ ≤ tol · max(‖w_a‖₂, ‖w_b‖₂)`` for ``s = +1`` (``equal``) or ``−1``
    (``opposite``); groups are the connected pairs, signed relative to their first member.

    Raises:
        ValueError: ``tol`` outside ``[0, 2)``, or an unsupported model.
    """
    if not 0 <= tol < 2:
        raise ValueError(f"`0 <= tol < 2` must hold, but got {tol=}.")
    return _symmetry(_kept(model, input_shape, masks), tol)


def _symmetry(k: _Kept, tol: float) -> SymmetryReport:
    w = k.weights[0]
    live_out = torch.nonzero(k.live[1]).flatten()
    inputs = torch.nonzero(k.live[0]).flatten().tolist()
    if w.dim() == 4:  # (out, in, kh, kw): one vector per input channel
        v = w[live_out][:, inputs].transpose(0, 1).reshape(len(inputs), -1)
    else:
        v = w[live_out][:, inputs].T  # (live inputs, live units)
    norms = v.norm(dim=1)
    gram = v @ v.T
    sq = norms[:, None] ** 2 + norms[None, :] ** 2
    scale = torch.maximum(norms[:, None], norms[None, :])
    d_eq = (sq - 2 * gram).clamp_min(0).sqrt() / scale
    d_op = (sq + 2 * gram).clamp_min(0).sqrt() / scale
    pairs: list[SymmetryPair] = []
    n = len(inputs)
    parent = list(range(n))
    sign = [1] * n  # sign relative to the parent

    def find(a: int) -> tuple[int, int]:
        s = 1
        while parent[a] != a:
            s *= sign[a]
            a = parent[a]
        return a, s

    rel_equal = d_eq <= d_op
    best = torch.where(rel_equal, d_eq, d_op)
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    close = torch.nonzero((best <= tol) & upper)  # (pairs, 2), a < b, row-major
    for a, b in close.tolist():
        rel: Relation = "equal" if bool(rel_equal[a, b]) else "opposite"
        pairs.append(SymmetryPair(inputs[a], inputs[b], rel, float(best[a, b])))
        (ra, sa), (rb, sb) = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
            sign[rb] = sa * sb * (1 if rel == "equal" else -1)  # so that sign(b) = sign(a)·s
    groups: dict[int, list[tuple[int, int]]] = {}
    for a in range(n):
        r, s = find(a)
        groups.setdefault(r, []).append((inputs[a], s))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        s0 = members[0][1]
        out.append(SymmetryGroup(tuple(f for f, _ in members), tuple(s * s0 for _, s in members)))
    out.sort(key=lambda g: g.features)
    return SymmetryReport(tol=float(tol), groups=tuple(out), pairs=tuple(pairs))


# --------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class Explanation:
    """Graph, components, importance and symmetry of one pruned model."""

    graph: PathwayGraph
    components: tuple[Component, ...]
    importance: FeatureImportance
    symmetry: SymmetryReport


def explain(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, Mask] | None = None,
    kept_units: Mapping[str, Sequence[int]] | None = None,
    tol: float = 0.1,
    power: float = 1.0,
    input_scale: torch.Tensor | None = None,
) -> Explanation:
    """:func:`pathway_graph`, its components, :func:`feature_importance` and
    :func:`feature_symmetry` of one model (arguments as there)."""
    if not power > 0:
        raise ValueError(f"`power > 0` must hold, but got {power=}.")
    if not 0 <= tol < 2:
        raise ValueError(f"`0 <= tol < 2` must hold, but got {tol=}.")
    k = _kept(model, input_shape, masks)
    graph = _graph(k, input_shape, kept_units)
    return Explanation(
        graph=graph,
        components=tuple(graph.components()),
        importance=_importance(model, k.layers, k.weights, input_shape, power, 1024, input_scale),
        symmetry=_symmetry(k, tol),
    )
