"""Pareto analysis of (validation accuracy ↑, parameters ↓): ranks, hypervolume, selection.

Points are ``(accuracy, params)`` pairs. Points with a non-finite coordinate (failed trials,
NaN accuracy) are excluded: their rank is ``None`` and they never enter a front. Objectives are
normalised once here — accuracy is maximised, parameters minimised — so callers never flip
signs themselves.

Example:
    >>> from prunetune.search.pareto import non_dominated_ranks, hypervolume
    >>> pts = [(0.9, 100), (0.8, 10), (0.85, 100), (0.7, 50)]
    >>> non_dominated_ranks(pts)
    [0, 0, 1, 1]
    >>> hypervolume(pts, reference=(0.0, 1000))
    882.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Point = tuple[float, float]


def _finite(p: Sequence[Any]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in p)
    except (TypeError, ValueError):
        return False


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good in both objectives and strictly better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def non_dominated_ranks(points: Sequence[Point | None]) -> list[int | None]:
    """Rank of each point by non-dominated sorting (0 = the Pareto front).

    Equal points share a rank. Points with a non-finite coordinate (or ``None``) get ``None``.
    """
    idx = [i for i, p in enumerate(points) if p is not None and _finite(p)]
    ranks: list[int | None] = [None] * len(points)
    # Sort by params ascending, then accuracy descending: a point can only be dominated by
    # points before it, and the front is the running maximum of accuracy.
    order = sorted(idx, key=lambda i: (float(points[i][1]), -float(points[i][0])))  # type: ignore[index]
    remaining = order
    rank = 0
    while remaining:
        front, rest = [], []
        best_acc = -math.inf
        best_params = math.nan
        for i in remaining:
            acc, params = float(points[i][0]), float(points[i][1])  # type: ignore[index]
            if acc > best_acc or (acc == best_acc and params == best_params):
                front.append(i)
                if acc > best_acc:
                    best_acc, best_params = acc, params
            else:
                rest.append(i)
        for i in front:
            ranks[i] = rank
        remaining, rank = rest, rank + 1
    return ranks


def pareto_front(points: Sequence[Point | None]) -> list[int]:
    """Indices of the non-dominated points, sorted by params ascending."""
    ranks = non_dominated_ranks(points)
    front = [i for i, r in enumerate(ranks) if r == 0]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))  # type: ignore[index]


def hypervolume(points: Sequence[Point | None], reference: Point) -> float:
    """Area dominated by ``points`` and bounded by ``reference = (acc_ref, params_ref)``.

    Only points strictly better than the reference in both objectives contribute.
    """
    ref_acc, ref_params = float(reference[0]), float(reference[1])
    pts = sorted(
        (float(p[1]), float(p[0]))
        for p in points
        if p is not None and _finite(p) and p[0] > ref_acc and p[1] < ref_params
    )  # (params, acc) by params ascending
    area, best_acc = 0.0, ref_acc
    for k, (params, acc) in enumerate(pts):
        best_acc = max(best_acc, acc)
        next_params = pts[k + 1][0] if k + 1 < len(pts) else ref_params
        area += (next_params - params) * (best_acc - ref_acc)
    return area


def knee(points: Sequence[Point | None]) -> int | None:
    """The front point farthest from the line joining the front's extremes.

    Coordinates are normalised to [0, 1] on the front, parameters on a log scale (a pruning
    front spans decades). With fewer than three front points, the most accurate one is returned.
    """
    front = pareto_front(points)
    if not front:
        return None
    if len(front) < 3:
        return max(front, key=lambda i: (points[i][0], -points[i][1]))  # type: ignore[index]
    xs = [math.log10(max(float(points[i][1]), 1.0)) for i in front]  # type: ignore[index]
    ys = [float(points[i][0]) for i in front]  # type: ignore[index]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    nx = [(x - x0) / (x1 - x0) if x1 > x0 else 0.0 for x in xs]
    ny = [(y - y0) / (y1 - y0) if y1 > y0 else 0.0 for y in ys]
    # Line from (0, 0) (fewest params, lowest acc) to (1, 1); distance ∝ ny - nx.
    best = max(range(len(front)), key=lambda k: (ny[k] - nx[k], ny[k]))
    return front[best]


def smallest(points: Sequence[Point | None], min_accuracy: float | None = None) -> int | None:
    """Fewest params among points with accuracy ≥ ``min_accuracy`` (ties: more accurate)."""
    ok = [
        i
        for i, p in enumerate(points)
        if p is not None and _finite(p) and (min_accuracy is None or p[0] >= min_accuracy)
    ]
    return min(ok, key=lambda i: (points[i][1], -points[i][0])) if ok else None  # type: ignore[index]


def most_accurate(points: Sequence[Point | None]) -> int | None:
    """Highest accuracy (ties: fewer params)."""
    ok = [i for i, p in enumerate(points) if p is not None and _finite(p)]
    return max(ok, key=lambda i: (points[i][0], -points[i][1])) if ok else None  # type: ignore[index]


def best_under_budgets(
    points: Sequence[Point | None], budgets: Sequence[float]
) -> dict[float, float | None]:
    """Best accuracy with at most ``b`` params, for each budget ``b``."""
    out: dict[float, float | None] = {}
    for b in budgets:
        accs = [float(p[0]) for p in points if p is not None and _finite(p) and p[1] <= b]
        out[b] = max(accs) if accs else None
    return out


SELECTIONS = ("knee", "smallest", "most-accurate", "all-pareto")


def select(
    points: Sequence[Point | None], rule: str, min_accuracy: float | None = None
) -> list[int]:
    """Indices chosen by a selection rule.

    Rules: ``knee``, ``smallest`` (honours ``min_accuracy``), ``most-accurate``, ``all-pareto``,
    or ``min-val-accuracy=X`` (the smallest point with accuracy ≥ X).

    Raises:
        ValueError: unknown rule or a malformed threshold.
    """
    if rule.startswith("min-val-accuracy="):
        text = rule.split("=", 1)[1]
        try:
            x = float(text)
        except ValueError:
            raise ValueError(
                f"min-val-accuracy must be a number in [0, 1], but got {text!r}."
            ) from None
        if not 0 <= x <= 1:
            raise ValueError(f"min-val-accuracy must be in [0, 1], but got {x}.")
        i = smallest(points, x)
        return [] if i is None else [i]
    if rule == "all-pareto":
        return pareto_front(points)
    fn = {
        "knee": lambda: knee(points),
        "smallest": lambda: smallest(points, min_accuracy),
        "most-accurate": lambda: most_accurate(points),
    }
    if rule not in fn:
        raise ValueError(
            f"--select must be one of {[*SELECTIONS, 'min-val-accuracy=X']}, but got {rule!r}."
        )
    i = fn[rule]()
    return [] if i is None else [i]
