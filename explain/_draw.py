"""Private: figures and tables that explain a pruned model: pathways, importance, symmetry.

The analysis is in the sibling modules (PyTorch only); this module names things (features,
classes), draws them with matplotlib and writes the files (MLflow logging is
:mod:`prunetune.search.explain`):

============================  ===========================================================
``pathways.png`` / ``.svg``   layered drawing of the kept connections (edge width ∝ |w|,
                              blue positive, red negative; nodes coloured by component;
                              symmetric inputs joined by an arc marked ``=`` or ``−``).
                              Beyond ``max_edges`` edges only the ``top_k`` paths are drawn.
``components.json``           connected components ``{inputs, outputs, hidden}``, by name
                              and by index, plus the live inputs and dead outputs.
``importance.csv`` / ``.json`` each feature's share of the surviving path norm, overall
                              and per output.
``importance.png``            bar chart (vector inputs) — or, for images,
``importance_heatmap.png``    the overall share in the image's shape, and
``importance_per_class.png``  one heatmap per class (output).
``symmetry.csv`` / ``.md``    pairs of inputs whose outgoing weights are equal / opposite.
``explanation.md``            a short summary pointing at the rest.
============================  ===========================================================

Example:
    >>> from prunetune.explain import write_explanations
    >>> files = write_explanations(export.model, export.arch, "out",            # doctest: +SKIP
    ...                            kept_units=export.kept_units, dataset="pathways-toy")
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from prunetune.explain._explanation import Explanation
    from prunetune.explain._importance import FeatureImportance
    from prunetune.explain._symmetry import SymmetryReport

#: Beyond this many kept edges the drawing shows only the top-k paths.
MAX_EDGES = 1000
#: Paths drawn for a network with more than ``MAX_EDGES`` edges.
TOP_K = 100
#: Node labels are drawn on a level only up to this many nodes.
_MAX_LABELLED = 90

_POS = "#1f63b4"
_NEG = "#d62728"
# Node colours per component: no pure blue or red, which mark the edges' signs.
_COMPONENT_COLOURS = (
    "#55a868",
    "#dd8452",
    "#8172b3",
    "#ccb974",
    "#64b5cd",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#2ca089",
    "#b07aa1",
)


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class Names:
    """Display names of a model's input features and outputs.

    Attributes:
        features: one per flattened input feature (``x1``… for vectors, ``(r,c)`` pixels).
        outputs: class names (classification) or ``y1``… (regression).
        image: whether the input is an image ``(C, H, W)`` (heatmaps instead of bars).
    """

    features: tuple[str, ...]
    outputs: tuple[str, ...]
    image: bool

    def node(self, level: int, last: int, uid: int, layer: str) -> str:
        if level == 0:
            return self.features[uid] if uid < len(self.features) else f"in{uid}"
        if level == last:
            return self.outputs[uid] if uid < len(self.outputs) else f"out{uid}"
        return str(uid)


def names_for(
    input_shape: Sequence[int],
    num_outputs: int,
    dataset: str | None = None,
    *,
    channels_in: bool = False,
) -> Names:
    """Feature and output names for a model's input shape (and dataset, when registered).

    Args:
        input_shape: one sample's shape.
        num_outputs: outputs of the model.
        dataset: a registered dataset name; its class names label the outputs.
        channels_in: the first layer is a conv, so graph inputs are channels, not features.
    """
    from prunetune.datasets import DATASETS, dataset_info

    shape = tuple(int(d) for d in input_shape)
    image = len(shape) == 3
    classes: tuple[str, ...] = ()
    if dataset in DATASETS:
        info = dataset_info(dataset)
        if info.task == "classification" and len(info.classes) == num_outputs:
            classes = tuple(info.classes)
    if not classes:
        classes = tuple(f"y{k + 1}" for k in range(num_outputs))
    if image and channels_in:
        feats = tuple(f"ch{c}" for c in range(shape[0]))
    elif image:
        c, h, w = shape
        feats = tuple(
            (f"({r},{q})" if c == 1 else f"c{ch}({r},{q})")
            for ch in range(c)
            for r in range(h)
            for q in range(w)
        )
    else:
        feats = tuple(f"x{i + 1}" for i in range(math.prod(shape)))
    return Names(features=feats, outputs=classes, image=image)


# --------------------------------------------------------------------------- tables


def components_dict(expl: Explanation, names: Names) -> dict[str, Any]:
    """The components (by name and index), live inputs and dead outputs, JSON-ready."""
    g = expl.graph
    feat = [names.node(0, 1, i, "") for i in range(g.num_inputs)]
    return {
        "components": [
            {
                "inputs": [feat[i] for i in c.inputs],
                "outputs": [names.outputs[o] for o in c.outputs],
                "input_ids": list(c.inputs),
                "output_ids": list(c.outputs),
                "hidden": {k: list(v) for k, v in c.hidden.items()},
            }
            for c in expl.components
        ],
        "num_components": len(expl.components),
        "num_edges": g.num_edges,
        "live_inputs": [feat[i] for i in g.live_inputs],
        "num_dead_inputs": g.num_inputs - len(g.live_inputs),
        "dead_outputs": [names.outputs[o] for o in range(g.num_outputs) if o not in g.live_outputs],
        "live_units": {
            name: len(u) for name, u in zip(g.level_names[1:-1], g.units[1:-1], strict=True)
        },
    }


def importance_rows(imp: FeatureImportance, names: Names) -> list[dict[str, Any]]:
    """One row per feature: ``feature``, ``overall``, one share column per output."""
    rows = []
    for i, f in enumerate(names.features):
        row: dict[str, Any] = {"feature": f, "overall": float(imp.overall[i])}
        for k, o in enumerate(names.outputs):
            row[o] = float(imp.per_output[k, i])
        rows.append(row)
    return rows


def symmetry_rows(sym: SymmetryReport, names: Names) -> list[dict[str, Any]]:
    """One row per symmetric pair: ``a``, ``b``, ``relation``, ``distance``, ``group``."""
    group_of = {f: gi for gi, g in enumerate(sym.groups) for f in g.features}
    return [
        {
            "a": names.features[p.a],
            "b": names.features[p.b],
            "relation": p.relation,
            "distance": round(p.distance, 6),
            "group": group_of.get(p.a, -1) + 1,
        }
        for p in sym.pairs
    ]


def symmetry_markdown(sym: SymmetryReport, names: Names) -> str:
    """Groups (``x1 = −x2``) and the pair table, as markdown."""
    lines = [
        "# Feature symmetry",
        "",
        f"Inputs whose kept outgoing weights are equal or opposite within a relative "
        f"tolerance of {sym.tol:g} (‖w_a ∓ w_b‖₂ ≤ tol·max(‖w_a‖₂, ‖w_b‖₂)).",
        "",
    ]
    if not sym.groups:
        return "\n".join([*lines, "No symmetric inputs.", ""])
    lines += ["## Groups", ""]
    for gi, g in enumerate(sym.groups, 1):
        lines.append(f"{gi}. {_group_text(g.features, g.signs, names)}")
    lines += [
        "",
        "## Pairs",
        "",
        "| a | b | relation | distance | group |",
        "|---|---|---|---|---|",
    ]
    for r in symmetry_rows(sym, names):
        lines.append(
            f"| {r['a']} | {r['b']} | {r['relation']} | {r['distance']:.4f} | {r['group']} |"
        )
    return "\n".join([*lines, ""])


def _group_text(features: Sequence[int], signs: Sequence[int], names: Names) -> str:
    parts = [names.features[features[0]]]
    for f, s in zip(features[1:], signs[1:], strict=True):
        parts.append(("" if s > 0 else "−") + names.features[f])
    return " = ".join(parts)


def _csv(rows: list[dict[str, Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- figures


def _figure(w: float, h: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def pathway_figure(
    expl: Explanation,
    names: Names,
    *,
    max_edges: int = MAX_EDGES,
    top_k: int = TOP_K,
    title: str | None = None,
) -> Figure:
    """Layered drawing of the kept connections (see the module docstring).

    Raises:
        ValueError: ``max_edges`` or ``top_k`` is < 1.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    if max_edges < 1 or top_k < 1:
        raise ValueError(
            f"`max_edges >= 1` and `top_k >= 1` must hold, but got {max_edges=}, {top_k=}."
        )
    g = expl.graph
    last = len(g.units) - 1
    edges = g.edges()
    subset = len(edges) > max_edges
    if subset:  # only the edges and nodes on the top-k paths
        keep: set[tuple[int, int, int]] = set()
        for p in g.top_paths(top_k):
            keep.update((t, p.nodes[t], p.nodes[t + 1]) for t in range(last))
        edges = [e for e in edges if (e[0], e[1], e[2]) in keep]
    shown: list[list[int]] = [[] for _ in g.units]
    if subset:
        for t, a, b, _ in edges:
            shown[t].append(a)
            shown[t + 1].append(b)
        shown = [sorted(set(s)) for s in shown]
    else:
        shown = [list(u) for u in g.units]
    shown[last] = list(range(g.num_outputs))  # dead outputs are drawn grey
    comp_of: dict[tuple[int, int], int] = {}
    for ci, c in enumerate(expl.components):
        for i in c.inputs:
            comp_of[(0, i)] = ci
        for o in c.outputs:
            comp_of[(last, o)] = ci
        for lv in range(1, last):
            for u in c.hidden.get(g.level_names[lv], ()):
                comp_of[(lv, u)] = ci
    # Order each level by component, so that components sit in separate horizontal bands.
    pos: dict[tuple[int, int], tuple[float, float]] = {}
    n_max = max(len(s) for s in shown)
    for lv, ids in enumerate(shown):
        ids = sorted(ids, key=lambda u, lv=lv: (comp_of.get((lv, u), 10**9), u))
        n = len(ids)
        for rank, u in enumerate(ids):
            y = 1.0 - (rank + 0.5) / n if n else 0.5
            pos[(lv, u)] = (float(lv), 0.5 + (y - 0.5) * max(n, 1) / max(n_max, 1))
    height = min(16.0, max(4.0, 0.22 * n_max + 1.5))
    fig = _figure(max(8.0, 2.2 * (last + 1) + 2.0), height)
    ax = fig.add_subplot()
    if edges:
        strength = {
            (t, g.units[t][j], g.units[t + 1][i]): float(g.strength[t][i, j])
            for t in range(last)
            for i, j in (g.strength[t] > 0).nonzero().tolist()
        }
        s_max = max(strength[(t, a, b)] for t, a, b, _ in edges)
        segs, widths, colours = [], [], []
        for t, a, b, w in sorted(edges, key=lambda e: strength[(e[0], e[1], e[2])]):
            segs.append([pos[(t, a)], pos[(t + 1, b)]])
            widths.append(0.3 + 4.0 * strength[(t, a, b)] / s_max)
            colours.append(_POS if w >= 0 else _NEG)
        ax.add_collection(
            LineCollection(segs, linewidths=widths, colors=colours, alpha=0.75, zorder=1)
        )
    labelled = [len(s) <= _MAX_LABELLED for s in shown]
    size = 120 if n_max <= 40 else max(6, 3000 / n_max)
    faces = [
        _COMPONENT_COLOURS[ci % len(_COMPONENT_COLOURS)] if ci is not None else "#d0d0d0"
        for ci in (comp_of.get(node) for node in pos)
    ]
    xy = list(pos.values())
    ax.scatter(
        [x for x, _ in xy],
        [y for _, y in xy],
        s=size,
        c=faces,
        edgecolors="black",
        linewidths=0.5,
        zorder=2,
    )
    for (lv, u), (x, y) in pos.items():
        if labelled[lv]:
            text = names.node(lv, last, u, g.level_names[lv])
            fs = 9 if len(shown[lv]) <= 40 else 5
            if lv == 0:
                ax.text(x - 0.08, y, text, ha="right", va="center", fontsize=fs)
            elif lv == last:
                ax.text(x + 0.08, y, text, ha="left", va="center", fontsize=fs)
            elif len(shown[lv]) <= 20:
                ax.text(x, y + 0.02, text, ha="center", va="bottom", fontsize=6, color="#555555")
    # Symmetric inputs: an arc left of the inputs, marked "=" (equal) or "−" (opposite).
    sym_lines = []
    for g_ in expl.symmetry.groups:
        members = [f for f in g_.features if (0, f) in pos]
        if len(members) < 2:
            continue
        sym_lines.append(_group_text(g_.features, g_.signs, names))
        if not labelled[0]:
            continue  # too many inputs for arcs to stay readable: the box lists the groups
        s0 = g_.signs[g_.features.index(members[0])]
        for a, b in itertools.pairwise(members):
            sb = g_.signs[g_.features.index(b)]
            (xa, ya), (xb, yb) = pos[(0, a)], pos[(0, b)]
            ax.add_patch(
                FancyArrowPatch(
                    (xa - 0.35, ya),
                    (xb - 0.35, yb),
                    connectionstyle="arc3,rad=0.5",
                    arrowstyle="-",
                    color="#7b3294",
                    lw=1.2,
                )
            )
            ax.text(
                xa - 0.55,
                (ya + yb) / 2,
                "=" if sb == s0 else "−",
                color="#7b3294",
                ha="center",
                va="center",
                fontsize=11,
                fontweight="bold",
            )
    ax.set_xlim(-1.0, last + 0.9)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(last + 1))
    ax.set_xticklabels(
        [
            "inputs",
            *(f"hidden {i} (layer {n})" for i, n in enumerate(g.level_names[1:-1], 1)),
            "outputs",
        ]
    )
    ax.legend(
        handles=[
            Line2D([], [], color=_POS, lw=2, label="w > 0"),
            Line2D([], [], color=_NEG, lw=2, label="w < 0"),
        ],
        loc="upper right",
        fontsize=8,
        frameon=False,
    )
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    head = title or "Information pathways of the pruned network"
    sub = f"{len(expl.components)} component(s), {g.num_edges} kept edges"
    if subset:
        sub += f" — showing the top {top_k} paths ({len(edges)} edges)"
    ax.set_title(f"{head}\n{sub}", fontsize=10)
    if sym_lines:
        shown_lines = sym_lines[:8] + (
            [f"… {len(sym_lines) - 8} more"] if len(sym_lines) > 8 else []
        )
        ax.text(
            0.99,
            0.01,
            "symmetric inputs:\n" + "\n".join(shown_lines),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="#7b3294",
            bbox={"facecolor": "white", "edgecolor": "#7b3294", "alpha": 0.85},
        )
    fig.tight_layout()
    return fig


def _what(scaled: bool) -> str:
    return "path norm × feature std" if scaled else "path norm through kept weights"


def importance_bar_figure(imp: FeatureImportance, names: Names, *, scaled: bool = False) -> Figure:
    """Grouped bars: each feature's overall share and its share per output."""
    n_feat = len(names.features)
    series = [("overall", imp.overall.tolist())] + [
        (o, imp.per_output[k].tolist()) for k, o in enumerate(names.outputs)
    ]
    fig = _figure(max(5.0, 0.5 * n_feat * len(series) ** 0.5 + 2), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for si, (label, vals) in enumerate(series):
        xs = [i - 0.4 + width * (si + 0.5) for i in range(n_feat)]
        ax.bar(xs, vals, width=width, label=label)
    ax.set_xticks(range(n_feat))
    ax.set_xticklabels(names.features, rotation=0 if n_feat <= 12 else 90)
    ax.set_ylabel("share of surviving path norm")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncols=min(len(series), 4))
    ax.set_title(f"Feature importance ({_what(scaled)})", fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_figures(
    imp: FeatureImportance, names: Names, *, scaled: bool = False
) -> tuple[Figure, Figure]:
    """Overall and per-class importance in the image's shape (channels summed)."""
    overall = imp.heatmap().sum(0).numpy()  # (H, W)
    per = imp.heatmaps().sum(1).numpy()  # (K, H, W)
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    im = ax.imshow(overall, cmap="magma", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Feature importance (share of {_what(scaled)})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    k = per.shape[0]
    cols = min(5, k)
    rows = math.ceil(k / cols)
    fig2 = _figure(2.3 * cols, 2.4 * rows + 0.4)
    axes = fig2.subplots(rows, cols, squeeze=False)
    for idx in range(rows * cols):
        a = axes[idx // cols][idx % cols]
        a.set_xticks([])
        a.set_yticks([])
        if idx >= k:
            a.set_visible(False)
            continue
        a.imshow(per[idx], cmap="magma", interpolation="nearest")
        a.set_title(names.outputs[idx], fontsize=9)
    fig2.suptitle(f"Feature importance per class (share of {_what(scaled)})", fontsize=10)
    fig2.tight_layout()
    return fig, fig2


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), bbox_inches="tight")
    _atomic_write(path, buf.getvalue())


def write_explanations(
    model: nn.Module,
    arch: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    kept_units: Mapping[str, Sequence[int]] | None = None,
    dataset: str | None = None,
    tol: float = 0.1,
    max_edges: int = MAX_EDGES,
    top_k: int = TOP_K,
    title: str | None = None,
    input_scale: torch.Tensor | None = None,
) -> dict[str, Path]:
    """Analyse a compact (or masked) model and write every figure and table into ``out_dir``.

    Args:
        model: the ``nn.Sequential`` to explain.
        arch: its architecture spec (only ``input_shape`` is read).
        out_dir: created if missing; files are replaced atomically.
        kept_units: original unit indices per layer (``ExportResult.kept_units``).
        dataset: registered dataset name, for class names.
        tol: relative tolerance of feature symmetry.
        max_edges: draw every edge up to this many, else the ``top_k`` paths.
        title: first line of the pathway figure's title.
        input_scale: per-feature factors for the importance (e.g. :func:`feature_std`);
            default none, the plain path norm.

    Returns:
        file kind → path (``pathways_png``, ``pathways_svg``, ``components``, ``importance_csv``,
        ``importance_json``, ``importance_png`` or ``heatmap_png`` + ``heatmap_per_class_png``,
        ``symmetry_csv``, ``symmetry_md``, ``summary``).
    """
    from torch import nn as _nn

    from prunetune.explain._explanation import explain

    input_shape = tuple(int(d) for d in arch["input_shape"])
    expl = explain(model, input_shape, kept_units=kept_units, tol=tol, input_scale=input_scale)
    scaled = input_scale is not None
    first = next(m for m in model.modules() if isinstance(m, _nn.Linear | _nn.Conv2d))
    names = names_for(
        input_shape, expl.graph.num_outputs, dataset, channels_in=isinstance(first, _nn.Conv2d)
    )
    feature_names = names_for(input_shape, expl.graph.num_outputs, dataset)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    fig = pathway_figure(expl, names, max_edges=max_edges, top_k=top_k, title=title)
    for ext in ("png", "svg"):
        files[f"pathways_{ext}"] = d / f"pathways.{ext}"
        _save(fig, files[f"pathways_{ext}"])

    comp = components_dict(expl, names)
    files["components"] = d / "components.json"
    _atomic_write(files["components"], json.dumps(comp, indent=2) + "\n")

    rows = importance_rows(expl.importance, feature_names)
    files["importance_csv"] = d / "importance.csv"
    _atomic_write(
        files["importance_csv"], _csv(rows, ["feature", "overall", *feature_names.outputs])
    )
    files["importance_json"] = d / "importance.json"
    imp_json = {
        "input_shape": list(input_shape),
        "features": list(feature_names.features),
        "outputs": list(feature_names.outputs),
        "overall": expl.importance.overall.tolist(),
        "per_output": expl.importance.per_output.tolist(),
        "path_norm": expl.importance.path_norm.tolist(),
        "scaled_by": "feature std" if scaled else None,
    }
    _atomic_write(files["importance_json"], json.dumps(imp_json) + "\n")
    if feature_names.image:
        f1, f2 = heatmap_figures(expl.importance, feature_names, scaled=scaled)
        files["heatmap_png"] = d / "importance_heatmap.png"
        files["heatmap_per_class_png"] = d / "importance_per_class.png"
        _save(f1, files["heatmap_png"])
        _save(f2, files["heatmap_per_class_png"])
    else:
        files["importance_png"] = d / "importance.png"
        fig = importance_bar_figure(expl.importance, feature_names, scaled=scaled)
        _save(fig, files["importance_png"])

    srows = symmetry_rows(expl.symmetry, names)
    files["symmetry_csv"] = d / "symmetry.csv"
    _atomic_write(files["symmetry_csv"], _csv(srows, ["a", "b", "relation", "distance", "group"]))
    files["symmetry_md"] = d / "symmetry.md"
    _atomic_write(files["symmetry_md"], symmetry_markdown(expl.symmetry, names))

    files["summary"] = d / "explanation.md"
    _atomic_write(files["summary"], _summary(expl, names, feature_names, comp, files))
    return files


def _summary(
    expl: Explanation,
    names: Names,
    feature_names: Names,
    comp: dict[str, Any],
    files: Mapping[str, Path],
) -> str:
    lines = ["# Explanation of the pruned network", ""]
    lines.append(
        f"{comp['num_edges']} kept edges; {len(comp['live_inputs'])} of "
        f"{expl.graph.num_inputs} inputs have a surviving path; "
        f"{comp['num_components']} connected component(s):"
    )
    lines.append("")
    for i, c in enumerate(comp["components"], 1):
        ins = ", ".join(c["inputs"][:12]) + (" …" if len(c["inputs"]) > 12 else "")
        units = sum(len(v) for v in c["hidden"].values())
        lines.append(
            f"{i}. {{{ins}}} → {{{', '.join(c['outputs'])}}} through {units} hidden unit(s)"
        )
    if comp["dead_outputs"]:
        lines += [
            "",
            f"Outputs without a surviving path (constant): {', '.join(comp['dead_outputs'])}.",
        ]
    order = expl.importance.overall.argsort(descending=True).tolist()[:10]
    lines += ["", "## Most important features (share of path norm)", ""]
    lines += [
        f"- {feature_names.features[i]}: {float(expl.importance.overall[i]):.4f}"
        for i in order
        if float(expl.importance.overall[i]) > 0
    ]
    lines += ["", "## Symmetric inputs", ""]
    lines += [
        f"- {_group_text(g.features, g.signs, names)}" for g in expl.symmetry.groups[:20]
    ] or ["none"]
    lines += ["", "Files: " + ", ".join(sorted(p.name for p in files.values())), ""]
    return "\n".join(lines)


def feature_std(dataset: str, data_dir: str | None = None) -> torch.Tensor:
    """Per-feature standard deviation of a registered dataset's training split,
    ``input_shape``-shaped (an ``input_scale`` for :func:`write_explanations`)."""
    from prunetune.datasets import load_dataset

    x = load_dataset(dataset, data_dir=data_dir).x_train.double()  # (n, *input_shape)
    return x.std(0)
