"""Private: multi-objective asynchronous successive halving (MO-ASHA) as a Ray Tune scheduler.

A trial is compared with the others where they all stand after the same number of epochs (a
rung, at ``grace_epochs · η^k`` epochs, strictly below the study's total epochs). On arrival at a
rung its point — the validation metric and log10 of the kept parameters, both minimised — joins
the rung's points, which are ordered by non-dominated sorting and, within each front, by an
ε-net; the trial continues iff it stands among the first ``ceil(n / η)``. Each trial is decided
once per rung, on arrival; later arrivals never revisit earlier decisions.

The ordering is read as an *ordering* (the position of the newcomer), never as per-point
ranks: Syne Tune's ``Bracket.on_result`` (``syne_tune/optimizer/schedulers/asha.py``) feeds
the index list returned by ``nondominated_sort`` to ``np.searchsorted`` as if it held each
point's priority, so its decision depends on which point comes *last* and a newcomer that
dominates every recorded point can be stopped. Here such a newcomer is alone in the first front
and always continues.

References:
    Schmucker, Donini, Zafar, Perrone, Archambeau. Multi-objective Asynchronous Successive
    Halving. arXiv:2106.12639, 2021.
    Salinas, Perrone, Archambeau, Cruchant. A multi-objective perspective on jointly tuning
    hardware and hyperparameters. NAS workshop, ICLR 2021 (the ε-net within a front).
    Li et al. A System for Massively Parallel Hyperparameter Tuning. MLSys 2020 (ASHA).

Example:
    >>> rungs = Rungs(grace_epochs=1, reduction_factor=3, max_epochs=10)
    >>> rungs.levels
    (1, 3, 9)
    >>> rungs.record("a", 1, -0.50, 3.0)  # a rung of one: continue
    True
    >>> rungs.record("b", 1, -0.40, 3.0)  # dominated by "a"; only ceil(2/3) = 1 continues
    False
    >>> rungs.record("c", 1, -0.60, 2.0)  # dominates both: first of the first front
    True
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prunetune.search.pareto import non_dominated_ranks

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

Point = tuple[float, float]  # (validation metric, log10 parameters), both minimised

#: Distances this close are ties (broken by arrival), so float rounding never picks the order.
_TIE = 1e-12


# -- pure ordering -------------------------------------------------------------------------------
def _finite(p: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in p)


def nondominated_fronts(points: Sequence[Point]) -> list[list[int]]:
    """Indices of ``points`` by non-dominated sorting, both objectives minimised.

    Uses the project's one non-dominated sort, :func:`prunetune.search.pareto.non_dominated_ranks`
    (tested against a brute-force sort; Optuna's own is private API). Identical points share a
    front. Points with a non-finite coordinate are left out.

    Returns:
        The fronts, best first; each lists its indices in ascending order (arrival order).
    """
    # pareto maximises the first objective: negate it
    ranks = non_dominated_ranks([(-float(a), float(b)) for a, b in points])
    n_fronts = 1 + max((r for r in ranks if r is not None), default=-1)
    fronts: list[list[int]] = [[] for _ in range(n_fronts)]
    for i, r in enumerate(ranks):
        if r is not None:
            fronts[r].append(i)
    return fronts


def eps_net_order(points: Sequence[Point]) -> list[int]:
    """Greedy ε-net order of the points of one front: spread-out points first.

    Follows Syne Tune's ``compute_epsilon_net`` (``syne_tune/optimizer/schedulers/
    multiobjective/non_dominated_priority.py``, after Clarkson 2005, "Nearest-neighbor searching
    and metric space dimensions", p. 17), as ``NonDominatedPriority(dim=0)`` calls it: the seed
    is the point lowest in the first objective (here the validation metric: the most accurate
    point goes first); each next point is the one farthest, in Euclidean distance, from its
    nearest already-picked point. Ties (within 1e-12) go to the lowest index, i.e. the earliest
    arrival, where Syne Tune leaves them to ``np.argmin``/``argmax`` over a set's iteration order.

    Returns:
        A permutation of ``range(len(points))``, in picking order.
    """
    n = len(points)
    if n == 0:
        return []
    first = min(range(n), key=lambda i: (points[i][0], i))
    order = [first]
    # nearest picked point's distance, for each point not yet picked: O(n²) in all
    near = {i: math.dist(points[i], points[first]) for i in range(n) if i != first}
    while near:
        best = -1.0
        pick = -1
        for i in sorted(near):
            if near[i] > best + _TIE:
                best, pick = near[i], i
        order.append(pick)
        del near[pick]
        for i in near:
            near[i] = min(near[i], math.dist(points[i], points[pick]))
    return order


def scale_unit(points: Sequence[Point]) -> list[Point]:
    """Each objective mapped affinely onto [0, 1] over the finite points (a constant → 0).

    Scaling leaves dominance as it is; it only makes the ε-net's distances weigh an accuracy
    gap and a parameter ratio alike. Non-finite values pass through unchanged.
    """
    finite = [p for p in points if _finite(p)]
    if not finite:
        return [(float(a), float(b)) for a, b in points]
    lo = [min(p[j] for p in finite) for j in (0, 1)]
    hi = [max(p[j] for p in finite) for j in (0, 1)]

    def unit(v: float, j: int) -> float:
        if not math.isfinite(v) or hi[j] == lo[j]:
            return 0.0 if math.isfinite(v) else float(v)
        return (float(v) - lo[j]) / (hi[j] - lo[j])

    return [(unit(a, 0), unit(b, 1)) for a, b in points]


def rung_order(points: Sequence[Point]) -> list[int]:
    """The order of a rung's points: both objectives scaled to [0, 1] (:func:`scale_unit`),
    fronts best first (:func:`nondominated_fronts`), the ε-net order within each front
    (:func:`eps_net_order`). Points with a non-finite coordinate come last, by arrival.

    Example:
        >>> rung_order([(-0.5, 3.0), (-0.4, 3.0), (-0.6, 2.0), (-0.45, 1.0)])
        [2, 3, 0, 1]
    """
    scaled = scale_unit(points)
    order: list[int] = []
    for front in nondominated_fronts(scaled):
        order += [front[k] for k in eps_net_order([scaled[i] for i in front])]
    return order + [i for i, p in enumerate(points) if not _finite(p)]


def rung_levels(grace_epochs: int, reduction_factor: int, max_epochs: int) -> tuple[int, ...]:
    """``grace_epochs · η^k`` for k = 0, 1, … strictly below ``max_epochs`` (the last epoch is
    where a trial ends, not where it is decided)."""
    levels: list[int] = []
    r = grace_epochs
    while r < max_epochs:
        levels.append(r)
        r *= reduction_factor
    return tuple(levels)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, but got {name}={value!r}.")
    return value


class Rungs:
    """The rungs of one MO-ASHA bracket: each rung's points by trial, in arrival order.

    Args:
        grace_epochs: epochs before the first rung (``search.scheduler.grace_epochs``).
        reduction_factor: η; about one in η trials continues past each rung.
        max_epochs: the trials' total epochs; rungs lie strictly below it.

    Attributes:
        levels: the rungs' epochs, ascending.
        points: ``{level: {trial key: (metric_min, log10_params)}}`` in arrival order.
        decisions: ``{level: {trial key: continued}}`` for the trials decided in this process
            (points rebuilt from history carry no decision).
        excused: ``{level: {trial keys}}``: trials that passed the rung unjudged
            (:meth:`excuse`); they hold no point there and take no place from later arrivals.

    Example:
        >>> Rungs(grace_epochs=2, reduction_factor=2, max_epochs=8).levels
        (2, 4)
    """

    def __init__(self, grace_epochs: int, reduction_factor: int, max_epochs: int) -> None:
        self.grace_epochs = _check_int("grace_epochs", grace_epochs, 1)
        self.reduction_factor = _check_int("reduction_factor", reduction_factor, 2)
        self.max_epochs = _check_int("max_epochs", max_epochs, 1)
        self.levels = rung_levels(grace_epochs, reduction_factor, max_epochs)
        self.points: dict[int, dict[Hashable, Point]] = {r: {} for r in self.levels}
        self.decisions: dict[int, dict[Hashable, bool]] = {r: {} for r in self.levels}
        self.excused: dict[int, set[Hashable]] = {r: set() for r in self.levels}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a scheduler checkpointed before ``excused`` existed restores with none excused
        self.__dict__.update(state)
        self.__dict__.setdefault("excused", {r: set() for r in self.levels})

    def quota(self, n: int) -> int:
        """How many of a rung's ``n`` points continue: ``ceil(n / η)``."""
        return -(-n // self.reduction_factor)

    def _new_levels(self, key: Hashable, epoch: int) -> list[int]:
        """Rungs at or below ``epoch`` that have neither judged nor excused ``key`` yet."""
        return [
            r
            for r in self.levels
            if r <= epoch and key not in self.points[r] and key not in self.excused[r]
        ]

    def decide(self, level: int, key: Hashable, point: Point) -> bool:
        """Whether ``key`` arriving at rung ``level`` with ``point`` continues; records it."""
        pts = self.points[level]
        order = rung_order([*pts.values(), point])
        keep = order.index(len(pts)) < self.quota(len(pts) + 1)
        pts[key] = (float(point[0]), float(point[1]))
        self.decisions[level][key] = keep
        return keep

    def record(
        self, trial_id: Hashable, epoch: int, metric_min: float, log10_params: float
    ) -> bool | None:
        """Record a trial's values after ``epoch`` epochs and decide at the rungs it reaches.

        The values count at every rung at or below ``epoch`` that holds no point of this trial
        yet (one call per epoch puts each point at its own rung; a skipped epoch lends the next
        one's values). Each such rung decides in ascending order; at the first stop the trial is
        recorded there and nowhere above. A rung already holding the trial (a restarted trial
        reporting an epoch again) decides nothing.

        Returns:
            True: continue; False: stop; None: no new rung here.
        """
        point = (float(metric_min), float(log10_params))
        new = self._new_levels(trial_id, int(epoch))
        if not new:
            return None
        # all() stops at the first rung that stops the trial: it is recorded nowhere above
        return all(self.decide(level, trial_id, point) for level in new)

    def excuse(self, trial_id: Hashable, epoch: int) -> None:
        """Let a trial pass the rungs it reaches after ``epoch`` epochs unjudged.

        For a trial whose values say nothing yet of where it ends: its method prunes or rewinds
        on a schedule, and the last such event is less than an epoch behind it (a magnitude
        trial before its prune is dense; a lottery trial just rewound is near chance). It holds
        no point at these rungs, so it takes no place from the trials that arrive later, and its
        next rung judges it on values from that rung's own epoch.
        """
        for level in self._new_levels(trial_id, int(epoch)):
            self.excused[level].add(trial_id)

    def rebuild(
        self,
        history: Mapping[Hashable, Mapping[int, Point | None]],
        stopped: Mapping[Hashable, int] | None = None,
    ) -> None:
        """Put past trials' points back on the rungs, deciding nothing (resume).

        Args:
            history: ``{trial key: {epoch: (metric_min, log10_params)}}``, trials in arrival
                order (e.g. by trial number: it breaks ties between identical points); a point
                of ``None`` is an epoch the trial was excused at (:meth:`excuse`). Keys must
                differ from the keys of trials recorded later.
            stopped: ``{trial key: epoch}`` of trials stopped at a rung; their values after
                that epoch (rows that travelled in the same batch) are left out, as the live
                run left them out.
        """
        stopped = stopped or {}
        for key, by_epoch in history.items():
            last = stopped.get(key, math.inf)
            for epoch in sorted(by_epoch):
                if epoch > last:
                    break
                point = by_epoch[epoch]
                if point is None:
                    self.excuse(key, epoch)
                    continue
                for level in self._new_levels(key, int(epoch)):
                    self.points[level][key] = (float(point[0]), float(point[1]))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{r}: {len(p)}" for r, p in self.points.items())
        return f"Rungs(η={self.reduction_factor}, points per rung {{{sizes}}})"


# -- the Ray Tune scheduler ----------------------------------------------------------------------
def _make_moasha() -> type:
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MOASHA(FIFOScheduler):
        """Multi-objective ASHA over (validation metric, log10 parameters) as a Ray Tune
        scheduler (Schmucker et al. 2021, arXiv:2106.12639).

        Trials report ``epoch_rows``: lists of per-epoch rows (``epoch``, the metric, the size
        metric), several epochs per result when the worker batches them. Each row is recorded
        in order; the first rung the trial fails stops it. A row with ``settling`` set (its
        method's last scheduled prune or rewind is less than an epoch behind it) excuses the
        trial from the rungs it reaches (:meth:`Rungs.excuse`). Rows in a trial's final result
        (``final`` set) are recorded for the trials to come but stop nothing: that trial has
        already finished. A result without ``epoch_rows`` is read as one row.

        Args:
            metric: the validation metric in each row (``val_accuracy``, ``val_loss``).
            mode: ``"max"`` or ``"min"``: the metric's direction.
            max_epochs: the trials' total epochs (no rung at or above it).
            size_metric: each row's kept parameter count (minimised, on a log10 scale).
            grace_epochs: epochs before the first rung.
            reduction_factor: η.
            epoch_attr: each row's epoch count (1 after the first epoch).

        Attributes:
            rungs: the :class:`Rungs` (points and decisions by rung).
            stopped: ``{Tune trial id: epoch}`` of the trials stopped and where.

        Example:
            >>> from ray import tune  # doctest: +SKIP
            >>> sched = MOASHA("val_accuracy", "max", max_epochs=10)  # doctest: +SKIP
            >>> tune.TuneConfig(scheduler=sched)  # doctest: +SKIP
        """

        def __init__(
            self,
            metric: str,
            mode: str,
            *,
            max_epochs: int,
            size_metric: str = "params",
            grace_epochs: int = 1,
            reduction_factor: int = 3,
            epoch_attr: str = "epoch",
        ) -> None:
            if mode not in ("max", "min"):
                raise ValueError(f"`mode` must be 'max' or 'min', but got {mode=}.")
            super().__init__()
            self._metric, self._mode = metric, mode
            self.size_metric, self.epoch_attr = size_metric, epoch_attr
            self.rungs = Rungs(grace_epochs, reduction_factor, max_epochs)
            self.stopped: dict[str, int] = {}

        def point(self, row: Mapping[str, Any]) -> tuple[int, Point]:
            """A row's epoch and its point: (metric as minimised, log10 parameters)."""
            missing = [k for k in (self.epoch_attr, self._metric, self.size_metric) if k not in row]
            if missing:
                raise ValueError(
                    f"MOASHA needs {missing} in each epoch row, but got keys {sorted(row)}."
                )
            value = float(row[self._metric])
            size = math.log10(max(float(row[self.size_metric]), 1.0))
            return int(row[self.epoch_attr]), (-value if self._mode == "max" else value, size)

        def rows(self, result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
            rows = result.get("epoch_rows")
            if rows is None:
                return [result] if self.epoch_attr in result else []
            return list(rows)

        def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
            # Tune passes TuneConfig's metric/mode: agreeing ones are fine, others are refused
            return metric in (None, self._metric) and mode in (None, self._mode)

        def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
            if trial.trial_id in self.stopped:
                return TrialScheduler.STOP
            final = bool(result.get("final"))
            for row in self.rows(result):
                epoch, (a, b) = self.point(row)
                if row.get("settling"):
                    self.rungs.excuse(trial.trial_id, epoch)
                    continue
                if self.rungs.record(trial.trial_id, epoch, a, b) is False and not final:
                    self.stopped[trial.trial_id] = epoch
                    return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def rebuild(
            self,
            history: Mapping[Hashable, Iterable[Mapping[str, Any]]],
            stopped: Mapping[Hashable, int] | None = None,
        ) -> None:
            """Rebuild the rungs from past trials' epoch rows (``{key: rows}``, trials in
            arrival order; keys unlike Tune trial ids, e.g. ``("trial", number)``): see
            :meth:`Rungs.rebuild`."""

            def entry(row: Mapping[str, Any]) -> tuple[int, Point | None]:
                epoch, point = self.point(row)
                return epoch, None if row.get("settling") else point

            self.rungs.rebuild(
                {key: dict(map(entry, rows)) for key, rows in history.items()}, stopped
            )

        def debug_string(self) -> str:
            sizes = ", ".join(f"{r}: {len(p)}" for r, p in self.rungs.points.items())
            return (
                f"Using MO-ASHA (η={self.rungs.reduction_factor}): rungs at epochs "
                f"{list(self.rungs.levels)}, points per rung {{{sizes}}}, "
                f"{len(self.stopped)} trials stopped, "
                f"{len(set().union(*self.rungs.excused.values()))} passed a rung unjudged."
            )

        def save(self, checkpoint_path: str) -> None:
            folder = os.path.dirname(os.path.abspath(checkpoint_path))
            with tempfile.NamedTemporaryFile("wb", dir=folder, delete=False) as f:
                pickle.dump(self.__dict__, f)
            os.replace(f.name, checkpoint_path)  # atomic: a crash leaves the old state

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))

    # pickled by reference (Tune pickles its scheduler): ``module.MOASHA`` resolves to this class
    MOASHA.__module__, MOASHA.__qualname__ = __name__, "MOASHA"
    return MOASHA


def __getattr__(name: str) -> Any:
    """PEP 562: build ``MOASHA`` (a subclass of Ray's ``FIFOScheduler``) on first access."""
    if name != "MOASHA":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = _make_moasha()
    globals()["MOASHA"] = cls
    return cls
