"""Private: graph, components, importance and symmetry of one model in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunetune.explain._importance import FeatureImportance, _importance
from prunetune.explain._pathways import Component, PathwayGraph, _graph, _kept
from prunetune.explain._symmetry import SymmetryReport, _symmetry
from prunetune.prune._base import Mask


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
