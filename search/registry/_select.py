"""Which trials of a study the selection rules choose (rules → front indices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunetune.search._errors import ConfigError

if TYPE_CHECKING:
    from prunetune.search._front import StudyFront, TrialRecord

ALIAS_RULES = ("knee", "smallest", "most-accurate")  # rules whose name is also an alias
DEFAULT_SELECT = ALIAS_RULES


@dataclass(frozen=True)
class Selection:
    """The trials the rules chose, each once, in the order the rules chose them."""

    chosen: tuple[tuple[TrialRecord, tuple[str, ...]], ...]  # (trial, the rules that chose it)
    empty_rules: tuple[str, ...]  # rules that chose no trial


def study_front_for(
    c: Any, parent: Any, floor: float | None, storage: str | None = None
) -> StudyFront:
    """The front the rules choose from, read from the study's record (its Optuna storage:
    ``storage``, else the one the study's parent run names), with the trials' MLflow runs.
    ``floor`` (score units) defaults to the spec's.

    The registry's one source of the front (its only caller is :func:`select_trials`).

    Raises:
        ConfigError: the parent run names no Optuna storage, or the study is not in it.
    """
    from dataclasses import replace

    from prunetune.search._front import front_of_study, load_study
    from prunetune.search._mlflow import TAG_STUDY, TAG_TRIAL, trial_runs

    name = parent.data.tags.get(TAG_STUDY, "")
    url = storage or parent.data.tags.get("optuna_storage")
    if not url:
        raise ConfigError(
            f"the MLflow run of study {name!r} names no Optuna storage (tag optuna_storage); "
            "pass the study's storage (--storage URL)."
        )
    runs = {
        int(r.data.tags[TAG_TRIAL]): r
        for r in trial_runs(c, parent)
        if r.info.status == "FINISHED" and r.data.tags.get(TAG_TRIAL, "").isdigit()
    }
    front = front_of_study(
        load_study(name, url), {n: r.info.run_id for n, r in runs.items()}, floor
    )
    # the record's values win; the run adds per-layer densities (and, for a study recorded
    # before trials carried their results and configs, the test metrics and the params)
    records = tuple(
        replace(
            rec,
            metrics={**_run_metrics(run := runs.get(rec.trial)), **rec.metrics},
            params=rec.params or (dict(run.data.params) if run is not None else {}),
        )
        for rec in front.records
    )
    return replace(front, records=records)


def _run_metrics(run: Any) -> dict[str, float]:
    return {} if run is None else {k: float(v) for k, v in run.data.metrics.items()}


def select_trials(
    c: Any,
    parent: Any,
    select: Sequence[str],
    min_val_accuracy: float | None = None,
    storage: str | None = None,
) -> Selection:
    """Apply the rules of :func:`prunetune.search.pareto.select` to the study's front.

    ``min_val_accuracy`` is the floor (score units) for ``smallest``; default the spec's.
    Collapsed trials are never chosen (they have no point); of trials at the same point, only
    the lowest-numbered one (the one the front shows).

    Raises:
        ConfigError: a malformed rule.
    """
    from prunetune.search import pareto

    front = study_front_for(c, parent, min_val_accuracy, storage)
    named = {"knee": front.knee, "smallest": front.smallest, "most-accurate": front.most_accurate}
    chosen: dict[int, list[str]] = {}
    empty: list[str] = []
    for rule in select:
        if rule in named:  # the front's own selections (``smallest`` honours its floor)
            idx = [] if named[rule] is None else [named[rule]]
        elif rule == "all-pareto":  # each front point once (collapsed trials never rank)
            idx = [g[0] for g in front.groups]
        else:
            try:
                idx = pareto.select(front.points, rule)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if not idx:
            empty.append(rule)
        for i in idx:
            chosen.setdefault(i, []).append(rule)
    return Selection(
        chosen=tuple((front.records[i], tuple(rules)) for i, rules in chosen.items()),
        empty_rules=tuple(empty),
    )
