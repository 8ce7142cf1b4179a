"""The first objective as a score: the Pareto code maximises it, whatever the metric.

``val_accuracy`` is maximised and is its own score; ``val_loss`` is minimised and its score is
``-val_loss``. Every front, hypervolume and floor works on scores; tables and plots show the
metric itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAXIMIZE = {"val_accuracy": True, "val_loss": False}


def metric_of(metrics: Mapping[str, Any]) -> str:
    """The objective a trial's metrics carry (classification trials log ``val_accuracy``)."""
    return "val_accuracy" if "val_accuracy" in metrics or "val_loss" not in metrics else "val_loss"


def to_score(metric: str, value: float) -> float:
    return float(value) if MAXIMIZE[metric] else -float(value)


def from_score(metric: str, score: float) -> float:
    return float(score) if MAXIMIZE[metric] else -float(score)


def score_of(metrics: Mapping[str, Any]) -> float:
    """The trial's score (NaN if it logged neither metric)."""
    metric = metric_of(metrics)
    return to_score(metric, metrics.get(metric, math.nan))


def settings(
    metric: str,
    reference_point: Any = None,
    min_val_accuracy: float | None = None,
    max_val_loss: float | None = None,
) -> tuple[tuple[float, float] | None, float | None]:
    """``(reference, floor)`` in score units from a spec's objectives (metric units)."""
    ref = None
    if reference_point is not None:
        ref = (to_score(metric, reference_point[0]), float(reference_point[1]))
    bound = min_val_accuracy if MAXIMIZE[metric] else max_val_loss
    return ref, (to_score(metric, bound) if bound is not None else None)
