"""Private: a study's Pareto front from its MLflow trial records, and the files that show it.

:func:`study_front` is the one computation behind the parent run's ``pareto_front.*``
artifacts and ``hypervolume`` metric, ``prunetune pareto`` and ``prunetune register``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunetune.search import pareto
from prunetune.search._mlflow import TrialRecord
from prunetune.search._objective import MAXIMIZE, from_score, metric_of, settings


@dataclass(frozen=True)
class StudyFront:
    """Ranks and selections over a study's trials.

    ``records`` holds every trial; ``points[i]`` is ``None`` for failed / unfinished trials or
    non-finite metrics, which never rank. ``front`` indexes ``records``, by params ascending.
    """

    study: str
    records: tuple[TrialRecord, ...]
    points: tuple[tuple[float, float] | None, ...]
    ranks: tuple[int | None, ...]
    front: tuple[int, ...]
    reference: tuple[float, float]
    hypervolume: float
    knee: int | None
    smallest: int | None
    most_accurate: int | None
    metric: str = "val_accuracy"  # the first objective; points hold its score (see _objective)

    def value(self, i: int) -> float:
        """Trial ``i``'s first objective in its own units (accuracy, or loss)."""
        return from_score(self.metric, self.points[i][0])  # type: ignore[index]

    @property
    def metric_label(self) -> str:
        return "validation accuracy" if self.metric == "val_accuracy" else "validation loss"

    @property
    def finished(self) -> int:
        """Trials with both objectives measured."""
        return sum(p is not None for p in self.points)

    @property
    def failed(self) -> int:
        return sum(r.status == "FAILED" for r in self.records)

    @property
    def front_run_ids(self) -> set[str]:
        return {self.records[i].run_id for i in self.front}

    def marks(self, i: int) -> list[str]:
        return [
            name
            for name, j in (
                ("knee", self.knee),
                ("smallest", self.smallest),
                ("most-accurate", self.most_accurate),
            )
            if j == i
        ]

    def front_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in self.front:
            row = self.records[i].row()
            row["selected_as"] = self.marks(i)
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objectives": {self.metric: "max" if MAXIMIZE[self.metric] else "min", "params": "min"},
            "trials_finished": self.finished,
            "trials_failed": self.failed,
            "reference_point": list(self.reference),
            "hypervolume": self.hypervolume,
            "front": self.front_rows(),
        }


def study_front(
    study: str,
    records: Sequence[TrialRecord],
    reference: Sequence[float] | None = None,
    min_val_accuracy: float | None = None,
) -> StudyFront:
    """Rank ``records`` on (val accuracy ↑, params ↓).

    Args:
        reference: hypervolume reference ``(val_accuracy, params)``; default
            ``(0, largest params_dense among the trials)``.
        min_val_accuracy: floor for the ``smallest`` selection.
    """
    recs = tuple(records)
    points = tuple(r.point for r in recs)
    metric = next((metric_of(r.metrics) for r, p in zip(recs, points, strict=True) if p), None)
    metric = metric or "val_accuracy"
    ranks = tuple(pareto.non_dominated_ranks(points))
    front = tuple(pareto.pareto_front(points))
    if reference is None:
        dense = [
            r.metrics["params_dense"]
            for r, p in zip(recs, points, strict=True)
            if p is not None and math.isfinite(r.metrics.get("params_dense", math.nan))
        ]
        # accuracy: from 0; loss: from the worst loss seen (a loss has no natural bound)
        worst = min((p[0] for p in points if p is not None), default=0.0)
        first = 0.0 if MAXIMIZE[metric] else worst
        ref = (first, float(max(dense))) if dense else (first, 0.0)
    else:
        ref = (float(reference[0]), float(reference[1]))
    return StudyFront(
        study=study,
        records=recs,
        points=points,
        ranks=ranks,
        front=front,
        reference=ref,
        hypervolume=float(pareto.hypervolume(points, ref)),
        knee=pareto.knee(points),
        smallest=pareto.smallest(points, min_val_accuracy),
        most_accurate=pareto.most_accurate(points),
        metric=metric,
    )


# --------------------------------------------------------------------------- files

_CSV_COLUMNS = (
    "trial",
    "params",
    "params_dense",
    "density",
    "val_accuracy",
    "test_accuracy",
    "val_loss",
    "test_loss",
    "method",
    "selected_as",
    "run_id",
)


def front_csv(f: StudyFront) -> str:
    rows = f.front_rows()
    hp_keys = sorted({k for r in rows for k in r["hparams"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_CSV_COLUMNS, *hp_keys])
    for r in rows:
        base = [
            ";".join(r[c]) if c == "selected_as" else ("" if r[c] is None else r[c])
            for c in _CSV_COLUMNS
        ]
        hps = [_cell(r["hparams"].get(k)) for k in hp_keys]
        w.writerow([*base, *hps])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v)


def front_png(f: StudyFront, path: Path) -> None:
    """Scatter of all finished trials, params on a log axis; dominated trials faded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.add_subplot()
    dom = [i for i, p in enumerate(f.points) if p is not None and f.ranks[i] != 0]
    if dom:
        ax.scatter(
            [max(f.points[i][1], 1.0) for i in dom],  # type: ignore[index]
            [f.value(i) for i in dom],
            s=22,
            color="0.55",
            alpha=0.35,
            label=f"dominated ({len(dom)})",
        )
    if f.front:
        xs = [max(f.points[i][1], 1.0) for i in f.front]  # type: ignore[index]
        ys = [f.value(i) for i in f.front]
        ax.step(xs, ys, where="post", color="tab:blue", alpha=0.6, linewidth=1.2)
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3, label=f"Pareto front ({len(xs)})")
        lo, hi = math.log10(min(xs)), math.log10(max(xs))
        for i, x, y in zip(f.front, xs, ys, strict=True):
            label = f"#{f.records[i].trial}"
            if m := f.marks(i):
                label += " " + "/".join(m)
            right = hi > lo and (math.log10(x) - lo) / (hi - lo) > 0.7  # keep labels inside
            ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(-4, 4) if right else (4, 4),
                ha="right" if right else "left",
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_xlabel("kept parameters (log scale)")
    ax.set_ylabel(f.metric_label)
    ax.set_title(f"{f.study}: {f.finished} trials, hypervolume {f.hypervolume:.4g}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if f.front or dom:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def front_html(f: StudyFront) -> str:
    """Interactive plot (plotly, self-contained: no network needed); hover shows the config."""
    import plotly.graph_objects as go

    def hover(i: int) -> str:
        r = f.records[i]
        lines = [
            f"<b>trial {r.trial}</b> ({html.escape(r.method)})",
            f"params {r.params_kept:,.0f} of {r.metrics.get('params_dense', math.nan):,.0f}",
            f"val {r.val_value:.4f}  test {r.test_value:.4f}",
            *(f"{html.escape(k)} = {html.escape(_cell(v))}" for k, v in r.hparams().items()),
            f"run {r.run_id}",
        ]
        return "<br>".join(lines)

    fig = go.Figure()
    dom = [i for i, p in enumerate(f.points) if p is not None and f.ranks[i] != 0]
    for name, idx, style in (
        ("dominated", dom, {"color": "rgba(120,120,120,0.35)", "size": 7}),
        ("Pareto front", list(f.front), {"color": "#1f77b4", "size": 10}),
    ):
        fig.add_trace(
            go.Scatter(
                x=[max(f.points[i][1], 1.0) for i in idx],  # type: ignore[index]
                y=[f.value(i) for i in idx],
                mode="markers+lines" if name == "Pareto front" else "markers",
                line={"shape": "hv"},
                marker=style,
                name=f"{name} ({len(idx)})",
                text=[hover(i) for i in idx],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"{f.study}: Pareto front (hypervolume {f.hypervolume:.4g})",
        xaxis={"type": "log", "title": "kept parameters"},
        yaxis={"title": f.metric_label},
        template="plotly_white",
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_front_files(f: StudyFront, directory: Path, figures: bool = True) -> list[Path]:
    """``pareto_front.{csv,json}`` in ``directory``, and with ``figures`` ``.png`` and ``.html``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [directory / f"pareto_front.{ext}" for ext in ("csv", "json", "png", "html")]
    out[0].write_text(front_csv(f))
    out[1].write_text(json.dumps(f.to_json(), indent=2, default=str) + "\n")
    if not figures:
        return out[:2]
    front_png(f, out[2])
    out[3].write_text(front_html(f))
    return out


def spec_objectives(
    parent_params: dict[str, str],
) -> tuple[tuple[float, float] | None, float | None]:
    """``(reference, floor)`` in score units (see ``_objective``) from a parent run's logged
    spec params: ``objectives.reference_point`` and ``min_val_accuracy`` / ``max_val_loss``."""
    from prunetune.search._mlflow import parse_param

    def num(key: str) -> float | None:
        v = parse_param(parent_params.get(f"objectives.{key}"))
        return float(v) if isinstance(v, int | float) else None

    metric = parse_param(parent_params.get("objectives.metric"))
    metric = metric if metric in MAXIMIZE else "val_accuracy"
    ref = parse_param(parent_params.get("objectives.reference_point"))
    ok_ref = [float(ref[0]), float(ref[1])] if isinstance(ref, list) and len(ref) == 2 else None
    return settings(metric, ok_ref, num("min_val_accuracy"), num("max_val_loss"))


def front_of_run(
    c: Any,
    parent: Any,
    reference: Sequence[float] | None = None,
    min_val_accuracy: float | None = None,
) -> StudyFront:
    """The front of the study whose parent run is ``parent``, read from MLflow now.

    ``reference`` / ``min_val_accuracy`` (score units) default to the values in the study's spec.
    """
    from prunetune.search._mlflow import TAG_STUDY, trial_records, trial_runs

    spec_ref, spec_floor = spec_objectives(dict(parent.data.params))
    return study_front(
        parent.data.tags.get(TAG_STUDY, parent.info.run_name or ""),
        trial_records(trial_runs(c, parent)),
        reference if reference is not None else spec_ref,
        min_val_accuracy if min_val_accuracy is not None else spec_floor,
    )
