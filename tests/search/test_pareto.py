"""Pareto ranks, hypervolume and selection rules against hand-computed and brute-force values."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from prunetune.search import pareto

NAN, INF = math.nan, math.inf


def brute_ranks(points):
    """Non-dominated sorting straight from the definition: peel off undominated points."""
    ok = [
        i
        for i, p in enumerate(points)
        if p is not None and all(isinstance(v, int | float) and math.isfinite(v) for v in p)
    ]
    ranks = [None] * len(points)
    left, r = set(ok), 0
    while left:
        front = {
            i
            for i in left
            if not any(
                points[j][0] >= points[i][0]
                and points[j][1] <= points[i][1]
                and (points[j][0] > points[i][0] or points[j][1] < points[i][1])
                for j in left
            )
        }
        for i in front:
            ranks[i] = r
        left -= front
        r += 1
    return ranks


def hv_inclusion_exclusion(points, ref):
    """Area of the union of boxes [params, ref_params] x [ref_acc, acc] by inclusion–exclusion."""
    boxes = [(p, a) for a, p in points if a > ref[0] and p < ref[1]]
    total = 0.0
    for k in range(1, len(boxes) + 1):
        for sub in itertools.combinations(boxes, k):
            width = ref[1] - max(p for p, _ in sub)
            height = min(a for _, a in sub) - ref[0]
            total += (-1) ** (k + 1) * max(width, 0.0) * max(height, 0.0)
    return total


def hv_grid(points, ref_acc_units, ref_params):
    """Points on an integer grid (accuracy in units): count dominated unit cells."""
    cells = 0
    for j in range(ref_params):  # params cell [j, j + 1)
        for i in range(ref_acc_units, 100):  # accuracy cell [i, i + 1)
            if any(p <= j and a >= i + 1 for a, p in points):
                cells += 1
    return cells


# --------------------------------------------------------------------------- ranks


@pytest.mark.parametrize(
    ("points", "ranks"),
    [
        # the module docstring's example
        ([(0.9, 100), (0.8, 10), (0.85, 100), (0.7, 50)], [0, 0, 1, 1]),
        # identical points share a rank (neither dominates the other)
        ([(0.9, 100), (0.9, 100), (0.8, 50)], [0, 0, 0]),
        # equal params: only the most accurate is undominated
        ([(0.8, 10), (0.9, 10), (0.7, 10)], [1, 0, 2]),
        # equal accuracy: only the smallest is undominated
        ([(0.9, 10), (0.9, 20), (0.9, 5)], [1, 2, 0]),
        # a trade-off chain is one front; the reverse chain is three fronts
        ([(0.5, 1), (0.6, 2), (0.7, 3)], [0, 0, 0]),
        ([(0.7, 1), (0.6, 2), (0.5, 3)], [0, 1, 2]),
        # failed (None), NaN, infinite and non-numeric points are excluded
        ([None, (NAN, 10), (0.5, INF), (0.6, 10), ("x", 3), (0.4, 20)], [None] * 3 + [0, None, 1]),
        ([], []),
        ([None, (NAN, NAN)], [None, None]),
    ],
)
def test_ranks_hand_computed(points, ranks):
    got = pareto.non_dominated_ranks(points)
    assert got == ranks
    assert all(r is None or type(r) is int for r in got)


def test_front_sorted_by_params_then_accuracy():
    pts = [(0.9, 100), (0.95, 400), (0.9, 100), (0.5, 5), (0.3, 5), None]
    assert pareto.pareto_front(pts) == [3, 0, 2, 1]


@pytest.mark.parametrize("seed", range(30))
def test_ranks_match_brute_force_on_random_sets_with_ties(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 25)
    pts = []
    for _ in range(n):
        u = rng.random()
        if u < 0.1:
            pts.append(None)
        elif u < 0.15:
            pts.append((NAN, rng.randint(1, 8)))
        else:  # a coarse grid: many equal accuracies, equal params and duplicates
            pts.append((rng.randint(0, 6) / 6, rng.randint(1, 8)))
    assert pareto.non_dominated_ranks(pts) == brute_ranks(pts)
    front = pareto.pareto_front(pts)
    assert sorted(front) == [i for i, r in enumerate(brute_ranks(pts)) if r == 0]


# --------------------------------------------------------------------------- hypervolume


def test_hypervolume_hand_computed():
    assert pareto.hypervolume([(0.9, 100), (0.8, 10), (0.85, 100), (0.7, 50)], (0.0, 1000)) == 882.0
    # (6 - 2) * 0.5 + (10 - 6) * 0.8
    assert pareto.hypervolume([(0.5, 2), (0.8, 6)], (0.0, 10)) == pytest.approx(5.2, abs=1e-12)
    # points not strictly better than the reference, failed and NaN points add nothing
    extra = [(-0.1, 5), (0.9, 10), (0.9, 11), None, (NAN, 1), (0.99, NAN)]
    assert pareto.hypervolume([(0.5, 2), (0.8, 6), *extra], (0.0, 10)) == pytest.approx(5.2)
    assert pareto.hypervolume([], (0.0, 10)) == 0.0
    assert pareto.hypervolume([(0.5, 2)], (0.6, 10)) == 0.0
    # the reference's accuracy shifts the heights: (10 - 2) * (0.5 - 0.25)
    assert pareto.hypervolume([(0.5, 2)], (0.25, 10)) == pytest.approx(2.0)
    assert type(pareto.hypervolume([(0.5, 2)], (0, 10))) is float


@pytest.mark.parametrize("seed", range(40))
def test_hypervolume_matches_inclusion_exclusion(seed):
    rng = random.Random(1000 + seed)
    n = rng.randint(1, 8)
    pts = [(rng.uniform(-0.1, 1.0), rng.uniform(0, 1200)) for _ in range(n)]
    if seed % 4 == 0:  # exact ties in both coordinates
        pts += [pts[0], (pts[0][0], rng.uniform(0, 1200)), (rng.uniform(0, 1), pts[0][1])]
    ref = (rng.choice([0.0, 0.2]), 1000.0)
    assert pareto.hypervolume(pts, ref) == pytest.approx(hv_inclusion_exclusion(pts, ref), rel=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_grid_count(seed):
    rng = random.Random(2000 + seed)
    pts = [(rng.randint(0, 20), rng.randint(0, 30)) for _ in range(rng.randint(1, 15))]
    cells = hv_grid(pts, 2, 25)
    # accuracy units of 0.05: scale the exact grid count
    got = pareto.hypervolume([(a * 0.05, p) for a, p in pts], (2 * 0.05, 25))
    assert got == pytest.approx(cells * 0.05, rel=1e-9, abs=1e-12)


def test_hypervolume_ignores_dominated_points():
    rng = random.Random(7)
    pts = [(rng.random(), rng.uniform(1, 100)) for _ in range(30)]
    front = [pts[i] for i in pareto.pareto_front(pts)]
    assert pareto.hypervolume(pts, (0, 100)) == pytest.approx(pareto.hypervolume(front, (0, 100)))


# --------------------------------------------------------------------------- selection


def test_knee_hand_computed():
    # log10 params 1, 2, 4 → x 0, 1/3, 1; accuracy → y 0, 8/9, 1; y - x is largest in the middle
    pts = [(0.5, 10), (0.9, 100), (0.95, 10_000), (0.4, 50_000), None]
    assert pareto.knee(pts) == 1
    # fewer than three front points: the most accurate
    assert pareto.knee([(0.5, 10), (0.9, 100), (0.4, 200)]) == 1
    assert pareto.knee([None, (NAN, 3)]) is None


def test_smallest_and_most_accurate_with_ties():
    pts = [(0.9, 100), (0.95, 100), (0.95, 50), (0.6, 10), (0.6, 10), None, (NAN, 1)]
    assert pareto.most_accurate(pts) == 2  # ties on accuracy → fewer params
    assert pareto.smallest(pts) == 3  # ties on params → more accurate, then first
    assert pareto.smallest(pts, min_accuracy=0.9) == 2
    assert pareto.smallest(pts, min_accuracy=0.99) is None
    assert pareto.smallest([]) is None and pareto.most_accurate([]) is None


def test_select_rules():
    pts = [(0.5, 10), (0.9, 100), (0.95, 10_000), (0.85, 20_000)]
    assert pareto.select(pts, "knee") == [1]
    assert pareto.select(pts, "smallest") == [0]
    assert pareto.select(pts, "smallest", min_accuracy=0.9) == [1]
    assert pareto.select(pts, "most-accurate") == [2]
    assert pareto.select(pts, "all-pareto") == [0, 1, 2]
    assert pareto.select(pts, "min-val-accuracy=0.92") == [2]
    assert pareto.select(pts, "min-val-accuracy=0.99") == []


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ("fastest", r"--select must be one of .*got 'fastest'"),
        ("min-val-accuracy=high", r"must be a number in \[0, 1\], but got 'high'"),
        ("min-val-accuracy=1.5", r"must be in \[0, 1\], but got 1.5"),
        ("min-val-accuracy=nan", r"must be in \[0, 1\], but got nan"),
    ],
)
def test_select_rejects_bad_rules(rule, match):
    with pytest.raises(ValueError, match=match):
        pareto.select([(0.5, 1)], rule)
