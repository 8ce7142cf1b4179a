"""Private: a study's Pareto front from its Optuna record, and the files that show it.

:func:`front_of_study` is the one computation behind the parent run's ``pareto_front.*``
artifacts and ``hypervolume`` metric, the live view, ``prunetune pareto`` and ``prunetune
register``. Hypervolume is measured on (metric, log10 params) — the scale fronts are read on,
where 1,000 → 100 parameters counts as much as 100,000 → 10,000 — against the reference the
study fixed when it started.

A collapsed trial (its model lost every path from input to output, or sits at chance) is
COMPLETE in the record with its true values, so the sampler learns to avoid its region; here
it never ranks: it is off the front, the figures, the hypervolume and the selections, and
counted and marked in the tables of every trial. Identical front points (same metric and
parameter count) are shown once, by their lowest-numbered trial, with their count.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune.search import pareto
from prunetune.search._errors import ConfigError
from prunetune.search._objective import MAXIMIZE, from_score, metric_of, settings, to_score

# Parameters worth showing beside a trial (the rest is one click away in the run).
_KEY_PARAMS = (
    "model.family",
    "model.widths",
    "model.channels",
    "model.activation",
    "train.epochs",
    "train.lr",
    "train.batch_size",
    "train.optimizer",
    "train.weight_decay",
    "train.lr_schedule",
    "train.finetune_epochs",
    "train.finetune_lr",
    "train.distill.alpha",
    "train.distill.temperature",
)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow recorded it (plain Python scalars)."""

    run_id: str
    trial: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    collapsed: bool = False  # its model collapsed: measured, but never on a front

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics.get("val_accuracy", math.nan))

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics.get("test_accuracy", math.nan))

    @property
    def metric(self) -> str:
        """The first objective this trial logged: ``val_accuracy`` or ``val_loss``."""
        return metric_of(self.metrics)

    @property
    def val_value(self) -> float:
        return float(self.metrics.get(self.metric, math.nan))

    @property
    def test_value(self) -> float:
        return float(self.metrics.get("test_" + self.metric[4:], math.nan))

    @property
    def params_kept(self) -> float:
        return float(self.metrics.get("params", math.nan))

    @property
    def method(self) -> str:
        return self.params.get("method.name", self.tags.get("method", ""))

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def measured(self) -> tuple[float, float] | None:
        """``(score, params)`` of a finished trial with finite metrics, collapsed or not, else
        ``None``; the score is ``val_accuracy``, or ``-val_loss`` for a regression trial (see
        ``_objective``)."""
        if not self.finished:
            return None
        p = (to_score(self.metric, self.val_value), self.params_kept)
        return p if all(math.isfinite(v) for v in p) else None

    @property
    def point(self) -> tuple[float, float] | None:
        """The point this trial ranks with: :attr:`measured`, but ``None`` (excluded) for a
        collapsed trial."""
        return None if self.collapsed else self.measured

    def hparams(self) -> dict[str, Any]:
        """The method's hyperparameters plus the key model/training ones, parsed from params."""
        keys = [k for k in sorted(self.params) if k.startswith("method.")]
        keys += [k for k in _KEY_PARAMS if k in self.params]
        keys += [k for k in sorted(self.params) if k.startswith(("model.factory", "model.params."))]
        from prunetune.search._mlflow import parse_param

        return {k: parse_param(self.params[k]) for k in keys}

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "trial": self.trial,
            "run_id": self.run_id,
            "method": self.method,
            "params": _int(m.get("params")),
            "params_dense": _int(m.get("params_dense")),
            "density": m.get("density"),
            "val_accuracy": m.get("val_accuracy"),
            "test_accuracy": m.get("test_accuracy"),
            "val_loss": m.get("val_loss"),
            "test_loss": m.get("test_loss"),
            "collapsed": self.collapsed,
            "hparams": self.hparams(),
        }


def _int(v: float | None) -> int | None:
    return None if v is None or not math.isfinite(v) else round(v)


@dataclass(frozen=True)
class StudyFront:
    """Ranks and selections over a study's trials.

    ``records`` holds every trial; ``points[i]`` is ``None`` for failed / unfinished /
    collapsed trials or non-finite metrics, which never rank. ``front`` indexes ``records``, by
    params ascending, identical points included (:attr:`groups` shows each once).
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
        """Trials with both objectives measured (collapsed ones included)."""
        return sum(r.measured is not None for r in self.records)

    @property
    def collapsed(self) -> int:
        """Finished trials whose model collapsed (kept off the front)."""
        return sum(r.collapsed and r.measured is not None for r in self.records)

    @property
    def failed(self) -> int:
        return sum(r.status == "FAILED" for r in self.records)

    @property
    def groups(self) -> list[tuple[int, ...]]:
        """The front with identical points (same score and params) together, in front order;
        each group's lowest-numbered trial first: it represents the group."""
        by: dict[tuple[float, float], list[int]] = {}
        for i in self.front:
            by.setdefault(self.points[i], []).append(i)  # type: ignore[arg-type]
        return [tuple(sorted(g, key=lambda i: self.records[i].trial)) for g in by.values()]

    @property
    def summary(self) -> str:
        """``"N finished, C collapsed (off the front), F failed"``: the study in one line."""
        c = f", {self.collapsed} collapsed (off the front)" if self.collapsed else ""
        return f"{self.finished} finished{c}, {self.failed} failed"

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
        """The front as shown: one row per distinct point (its representative trial), with
        ``count`` trials at that point and the other trials' numbers in ``same_as``."""
        rows = []
        for g in self.groups:
            row = self.records[g[0]].row()
            row["count"] = len(g)
            row["same_as"] = [self.records[j].trial for j in g[1:]]
            row["selected_as"] = self.marks(g[0])
            rows.append(row)
        return rows

    def trial_rows(self) -> list[dict[str, Any]]:
        """Every trial, by number: its status, rank (``None``: never ranks — failed,
        unfinished or collapsed), whether the displayed front shows it, and for a front trial
        it does not show, the trial shown at the same point (``shown_as``)."""
        groups = self.groups
        shown = {g[0] for g in groups}
        rep = {j: self.records[g[0]].trial for g in groups for j in g[1:]}
        rows = []
        for i in sorted(range(len(self.records)), key=lambda i: self.records[i].trial):
            row = self.records[i].row()
            row.update(
                status=self.records[i].status,
                rank=self.ranks[i],
                on_front=i in shown,
                shown_as=rep.get(i),
                selected_as=self.marks(i),
            )
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objectives": {self.metric: "max" if MAXIMIZE[self.metric] else "min", "params": "min"},
            "trials_finished": self.finished,
            "trials_collapsed": self.collapsed,
            "trials_failed": self.failed,
            "reference_point": list(self.reference),
            "hypervolume": self.hypervolume,
            "front": self.front_rows(),
        }


def study_front(
    study: str,
    records: Sequence[TrialRecord],
    reference: Sequence[float],
    min_val_accuracy: float | None = None,
) -> StudyFront:
    """Rank ``records`` on (score ↑, params ↓).

    Args:
        reference: hypervolume reference ``(score, params)``; points must beat it in both.
        min_val_accuracy: floor (score units) for the ``smallest`` selection.
    """
    recs = tuple(records)
    points = tuple(r.point for r in recs)
    metric = next((metric_of(r.metrics) for r, p in zip(recs, points, strict=True) if p), None)
    metric = metric or "val_accuracy"
    ref = (float(reference[0]), float(reference[1]))
    # a selection among identical points is the lowest-numbered of them (the one shown)
    first: dict[tuple[float, float], int] = {}
    for i in sorted((i for i, p in enumerate(points) if p), key=lambda i: recs[i].trial):
        first.setdefault(points[i], i)  # type: ignore[arg-type]

    def shown(i: int | None) -> int | None:
        return None if i is None else first[points[i]]  # type: ignore[index]

    return StudyFront(
        study=study,
        records=recs,
        points=points,
        ranks=tuple(pareto.non_dominated_ranks(points)),
        front=tuple(pareto.pareto_front(points)),
        reference=ref,
        hypervolume=log_hypervolume(points, ref),
        knee=shown(pareto.knee(points)),
        smallest=shown(pareto.smallest(points, min_val_accuracy)),
        most_accurate=shown(pareto.most_accurate(points)),
        metric=metric,
    )


def log_hypervolume(points: Sequence[tuple[float, float] | None], ref: Sequence[float]) -> float:
    """Hypervolume of ``(score, params)`` points on (score, log10 params) from ``ref``."""

    def lg(p: float) -> float:
        return math.log10(max(float(p), 1.0))

    logged = [None if p is None else (p[0], lg(p[1])) for p in points]
    return float(pareto.hypervolume(logged, (ref[0], lg(ref[1]))))


_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}


def records_of_study(study: Any, run_ids: dict[int, str] | None = None) -> list[TrialRecord]:
    """Every trial of an Optuna study as a :class:`TrialRecord` (its MLflow run id if known)."""
    from prunetune.search._mlflow import flatten, param_value
    from prunetune.search._record import ATTR_COLLAPSED, ATTR_CONFIG, ATTR_RESULT, is_collapsed

    names = study.metric_names or ["val_accuracy", "params"]
    out = []
    for t in study.get_trials(deepcopy=False):
        metrics = dict(t.user_attrs.get(ATTR_RESULT) or {})
        metrics.update(zip(names, t.values or (), strict=False))
        config = flatten(t.user_attrs.get(ATTR_CONFIG) or {})
        out.append(
            TrialRecord(
                run_id=(run_ids or {}).get(t.number, ""),
                trial=t.number,
                status=_STATUS.get(t.state.name, t.state.name),
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                params={k: param_value(v) for k, v in config.items()},
                start_time=int(t.datetime_start.timestamp() * 1000) if t.datetime_start else 0,
                collapsed=bool(t.user_attrs.get(ATTR_COLLAPSED)) or is_collapsed(metrics),
            )
        )
    return out


def front_of_study(
    study: Any, run_ids: dict[int, str] | None = None, min_val_accuracy: float | None = None
) -> StudyFront:
    """The front of an Optuna study, now; the floor (score units) defaults to the spec's."""
    from prunetune.search._record import ATTR_REFERENCE

    metric = (study.metric_names or ["val_accuracy"])[0]
    o = (study.user_attrs.get("spec") or {}).get("objectives") or {}
    records = records_of_study(study, run_ids)
    fixed = study.user_attrs.get(ATTR_REFERENCE)
    if fixed is None:  # a study from before references were fixed: the worst seen, largest dense
        vals = [r.metrics.get(metric, math.nan) for r in records if r.finished]
        worst = 0.0 if MAXIMIZE[metric] else max(vals, default=0.0)
        fixed = [worst, max((r.metrics.get("params_dense", 0.0) for r in records), default=0.0)]
    ref, floor = settings(metric, fixed, o.get("min_val_accuracy"), o.get("max_val_loss"))
    return study_front(
        study.study_name,
        records,
        ref,  # type: ignore[arg-type]
        min_val_accuracy if min_val_accuracy is not None else floor,
    )


def reference_point(vspec: Any) -> tuple[float, float]:
    """The hypervolume reference ``(metric, params)`` fixed when a study starts.

    ``objectives.reference_point`` if set, else the worst metric (accuracy 0; for a loss, the
    validation loss of predicting the training mean) and the dense parameter count of the
    largest model the search space builds.
    """
    spec = vspec.spec
    if spec.objectives.reference_point is not None:
        return tuple(float(v) for v in spec.objectives.reference_point)  # type: ignore[return-value]
    import torch

    model = spec.model.build_extreme(vspec.data_info, largest=True)
    dense = sum(p.numel() for p in model.parameters())
    if MAXIMIZE[spec.metric]:
        return 0.0, float(dense)
    data = vspec.load_data()
    err = data.targets("val") - data.targets("train").float().mean(0)
    worst = err.abs().mean() if spec.train.loss == "l1" else err.pow(2).mean()
    return float(torch.as_tensor(worst)), float(dense)


def load_study(study_name: str, storage: str) -> Any:
    """An existing study, or a readable error naming what the storage holds.

    Raises:
        ConfigError: no such study in ``storage``.
    """
    import optuna

    from prunetune.search._mlflow import sqlite_path

    if (db := sqlite_path(storage)) is not None and not db.is_file():
        raise ConfigError(
            f"no study named {study_name!r}: no Optuna storage at {db} (pass the study's "
            "storage with --storage, or run `prunetune search` first)."
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
        raise ConfigError(
            f"no study named {study_name!r} in the Optuna storage {storage!r}; studies there: "
            f"{names or 'none'} (pass --storage, or run `prunetune search` first)."
        ) from None


# --------------------------------------------------------------------------- files

_METRIC_COLUMNS = (
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
_CSV_COLUMNS = ("trial", "count", "same_as", *_METRIC_COLUMNS)  # the front, each point once
_TRIAL_COLUMNS = ("trial", "status", "collapsed", "rank", "on_front", "shown_as", *_METRIC_COLUMNS)


def front_csv(f: StudyFront) -> str:
    """The displayed front: one row per distinct point, ``count`` trials at it."""
    return _csv(f.front_rows(), _CSV_COLUMNS)


def trials_csv(f: StudyFront) -> str:
    """Every trial, collapsed ones marked (``collapsed`` true, no rank, not on the front)."""
    return _csv(f.trial_rows(), _TRIAL_COLUMNS)


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    hp_keys = sorted({k for r in rows for k in r["hparams"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*columns, *hp_keys])
    for r in rows:
        base = [_field(r[c]) for c in columns]
        hps = [_cell(r["hparams"].get(k)) for k in hp_keys]
        w.writerow([*base, *hps])
    return buf.getvalue()


def _field(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return ";".join(str(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else v


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v)


def point_label(f: StudyFront, group: Sequence[int]) -> str:
    """``#5 ×3 knee``: a front point's representative trial, how many trials share the point
    (when more than one), and the selections that chose it."""
    label = f"#{f.records[group[0]].trial}"
    if len(group) > 1:
        label += f" ×{len(group)}"
    if m := f.marks(group[0]):
        label += " " + "/".join(m)
    return label


def _title(f: StudyFront) -> str:
    off = f", {f.collapsed} collapsed (off the front)" if f.collapsed else ""
    return f"{f.study}: {f.finished} trials{off}, hypervolume {f.hypervolume:.4g}"


def front_png(f: StudyFront, path: Path) -> None:
    """Scatter of the finished trials (collapsed ones left out), params on a log axis;
    dominated trials faded; each front point once, labelled with its count."""
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
    if groups := f.groups:
        xs = [max(f.points[g[0]][1], 1.0) for g in groups]  # type: ignore[index]
        ys = [f.value(g[0]) for g in groups]
        ax.step(xs, ys, where="post", color="tab:blue", alpha=0.6, linewidth=1.2)
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3, label=f"Pareto front ({len(xs)})")
        lo, hi = math.log10(min(xs)), math.log10(max(xs))
        for g, x, y in zip(groups, xs, ys, strict=True):
            label = point_label(f, g)
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
    ax.set_title(_title(f), fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if f.front or dom:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def front_html(f: StudyFront) -> str:
    """Interactive plot (plotly, self-contained: no network needed); hover shows the config."""
    import plotly.graph_objects as go

    same = {g[0]: [f.records[j].trial for j in g[1:]] for g in f.groups}

    def hover(i: int) -> str:
        r = f.records[i]
        also = f" ×{len(same[i]) + 1} (also {', '.join(map(str, same[i]))})" if same.get(i) else ""
        lines = [
            f"<b>trial {r.trial}</b>{also} ({html.escape(r.method)})",
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
        ("Pareto front", [g[0] for g in f.groups], {"color": "#1f77b4", "size": 10}),
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
        title=f"Pareto front of {_title(f)}",
        xaxis={"type": "log", "title": "kept parameters"},
        yaxis={"title": f.metric_label},
        template="plotly_white",
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_front_files(f: StudyFront, directory: Path, figures: bool = True) -> list[Path]:
    """``pareto_front.{csv,json}`` and ``trials.csv`` (every trial) in ``directory``, and with
    ``figures`` ``pareto_front.png`` and ``.html``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [directory / f"pareto_front.{ext}" for ext in ("csv", "json")]
    out.append(directory / "trials.csv")
    out[0].write_text(front_csv(f))
    out[1].write_text(json.dumps(f.to_json(), indent=2, default=str) + "\n")
    out[2].write_text(trials_csv(f))
    if not figures:
        return out
    out += [directory / f"pareto_front.{ext}" for ext in ("png", "html")]
    front_png(f, out[3])
    out[4].write_text(front_html(f))
    return out
