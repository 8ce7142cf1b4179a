"""Reading a pruned network: information pathways, feature importance, feature symmetry.

Zhang, Tao & Zhang (2023), "Neural Network Pruning by Gradient Descent", arXiv:2311.12526,
argue that an extremely pruned network is readable: which inputs still reach which outputs,
how much of the surviving path weight each input carries, and which inputs enter
symmetrically (e.g. only through ``x₁ − x₂``). This package computes those from the kept
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
* :func:`write_explanations` — all of it as figures and tables in a folder.

Every analysis needs a chain of Linear/Conv2d layers (an ``nn.Sequential`` MLP or plain CNN);
any other model raises :class:`UnsupportedModelError`, one line naming what it got.
No MLflow here: logging the files to a run is :mod:`prunetune.search.explain`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunetune.explain import pathway_graph, feature_importance
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.SiLU(), nn.Linear(2, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]]))
    ...     _ = model[2].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    >>> [c.as_dict() for c in pathway_graph(model, (3,)).components()]
    [{'inputs': [0, 1], 'outputs': [0], 'hidden': {'0': [0]}}]
    >>> feature_importance(model, (3,)).overall.tolist()
    [0.5, 0.5, 0.0]
"""

from prunetune.explain._draw import (
    MAX_EDGES,
    TOP_K,
    Names,
    components_dict,
    feature_std,
    heatmap_figures,
    importance_bar_figure,
    importance_rows,
    names_for,
    pathway_figure,
    symmetry_markdown,
    symmetry_rows,
    write_explanations,
)
from prunetune.explain._explanation import Explanation, explain
from prunetune.explain._importance import FeatureImportance, feature_importance
from prunetune.explain._pathways import (
    Component,
    Path,
    PathwayGraph,
    UnsupportedModelError,
    effective_weights,
    pathway_graph,
)
from prunetune.explain._symmetry import (
    SymmetryGroup,
    SymmetryPair,
    SymmetryReport,
    feature_symmetry,
)

__all__ = [
    "MAX_EDGES",
    "TOP_K",
    "Component",
    "Explanation",
    "FeatureImportance",
    "Names",
    "Path",
    "PathwayGraph",
    "SymmetryGroup",
    "SymmetryPair",
    "SymmetryReport",
    "UnsupportedModelError",
    "components_dict",
    "effective_weights",
    "explain",
    "feature_importance",
    "feature_std",
    "feature_symmetry",
    "heatmap_figures",
    "importance_bar_figure",
    "importance_rows",
    "names_for",
    "pathway_figure",
    "pathway_graph",
    "symmetry_markdown",
    "symmetry_rows",
    "write_explanations",
]
