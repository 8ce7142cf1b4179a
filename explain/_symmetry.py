"""Private: input features whose kept outgoing weights are equal or opposite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from prunetune.explain._pathways import _Kept, _kept
from prunetune.prune._base import Mask

Relation = Literal["equal", "opposite"]


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
