"""Private: the Optuna study is the record of a study; everything that writes it lives here.

Creating or joining a study, heartbeats of the trials this driver runs, failing those whose
driver died, telling results (retried, never dropped). Every view — the MLflow mirror, ``prunetune
pareto``, the registry — reads the front from the record (``_front.front_of_study``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import warnings
from typing import Any

from prunetune.search._errors import ConfigError
from prunetune.search._objective import MAXIMIZE
from prunetune.search.spec import ValidatedSpec

log = logging.getLogger("prunetune.search")

ATTR_DRIVER = "driver"  # the driver session that asked the trial (trials without one predate it)
ATTR_RESULT = "result"  # the trial's final metrics (test metrics, dense count, timings…)
ATTR_CONFIG = "config"  # the full trial config the worker ran
ATTR_CHECKPOINT = "checkpoint"  # where Tune stored the trial's weights and masks
ATTR_REFERENCE = "hv_reference"  # [metric, params] fixed when the study starts
# [[epoch, metric, params], ...] reported so far (studies with a scheduler); an epoch that was
# ``settling`` (an early-stopping rung let it pass unjudged) has a fourth entry, 1
ATTR_CURVE = "curve"
ATTR_STOPPED = "stopped_at_epoch"  # a PRUNED trial: the epoch its rung stopped it after
ATTR_LAST = "last_values"  # a PRUNED trial: its metric and params at that epoch
# A COMPLETE trial whose model collapsed (no live path, or chance accuracy): it keeps its true
# values, so the sampler learns to avoid the region, but every view keeps it off the front.
ATTR_COLLAPSED = "collapsed"


def resolve_storage(url: str | None, workdir: Any) -> str:
    from pathlib import Path

    return url or f"sqlite:///{(Path(workdir) / 'optuna.db').resolve()}"


def open_storage(url: str, grace_seconds: float) -> Any:
    """An RDB storage with heartbeats: a trial whose driver stops beating for
    ``grace_seconds`` is stale (``fail_stale_trials`` fails it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats (meant for Study.optimize), metric names, fail_stale_trials: "experimental".
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    interval = max(1, int(grace_seconds // 4))
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=interval, grace_period=max(int(grace_seconds), 2 * interval)
    )


def _study_names(storage: Any, base: str) -> list[str]:
    import optuna

    pat = re.compile(rf"^{re.escape(base)}(?:~(\d+))?$")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
    return sorted((n for n in names if pat.match(n)), key=lambda n: int(pat.match(n).group(1) or 1))  # type: ignore[union-attr]


def prepare_study(vspec: ValidatedSpec, storage: Any, fresh: bool) -> tuple[Any, str]:
    """Create, resume or join the study of ``vspec``.

    The current study of a spec named ``N`` is the newest of ``N``, ``N~2``…; ``fresh`` creates
    the next one. Trials another driver is running (fresh heartbeats) are left alone; those of a
    dead driver are failed once stale, and RUNNING trials from before heartbeats existed now.

    Raises:
        ConfigError: the spec's search space changed since the study was created.
    """
    import optuna

    from prunetune.search._front import reference_point

    base = vspec.spec.name
    names = _study_names(storage, base)
    name = base if not names else f"{base}~{len(names) + 1}" if fresh else names[-1]
    metric = vspec.spec.metric
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=["maximize" if MAXIMIZE[metric] else "minimize", "minimize"],
        load_if_exists=True,
    )
    fp = vspec.spec.fingerprint()
    old = study.user_attrs.get("spec_fingerprint")
    if old is None:
        study.set_metric_names([metric, "params"])
        study.set_user_attr("spec_fingerprint", fp)
        study.set_user_attr("spec", vspec.spec.model_dump(mode="json"))
        study.set_user_attr(ATTR_REFERENCE, list(reference_point(vspec)))
    elif old != fp:
        raise ConfigError(
            f"study {name!r} in {storage.url if hasattr(storage, 'url') else storage} was created "
            f"from a different search space (fingerprint {old}, spec now {fp}); rerun with "
            "--fresh to start a new study."
        )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if ATTR_DRIVER not in t.user_attrs:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d was left RUNNING by an old driver; marked FAIL", t.number)
    optuna.storages.fail_stale_trials(study)  # a dead driver's trials, once stale
    return study, name


def driver_alive(study: Any, session: str | None, grace: float) -> bool:
    """Whether the driver ``session`` beat within ``grace`` seconds (see the searcher)."""
    beat = study.user_attrs.get(f"{ATTR_DRIVER}:{session}") if session else None
    return beat is not None and time.time() - float(beat) < grace


# -- the searcher: Ray Tune's OptunaSearch, sharing the study with other drivers -------------
def searcher_class() -> type:
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """``OptunaSearch`` on a study other drivers may share: it asks while fewer than
        ``n_trials`` are COMPLETE or RUNNING, stops at ``n_trials`` COMPLETE, beats for its
        trials and tells each result with its metrics and checkpoint, retried until stored."""

        def __init__(
            self,
            *a: Any,
            n_trials: int,
            checkpoints: dict[str, str],
            session: str,
            stopped: dict[str, int] | None = None,
            deadline: float | None = None,
            **kw: Any,
        ):
            super().__init__(*a, **kw)
            self.n_trials, self.checkpoints, self.session = n_trials, checkpoints, session
            # trials an early-stopping scheduler stopped (Tune id → epoch), None without one
            self.stopped, self.deadline = stopped, deadline
            self._curves: dict[str, list[list[Any]]] = {}
            self._ot_study.set_user_attr(f"{ATTR_DRIVER}:{session}", time.time())
            self._quota_at, self._quota_full = 0.0, False
            self._beat_stop = threading.Event()
            self._beat = threading.Thread(target=self._beat_loop, daemon=True, name="heartbeat")
            self._beat.start()

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher; the state is
            return {}  # in the storage, and studies resume from there (prepare_study)

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w") as f:
                json.dump({"optuna_study": self._study_name, "state": "in the Optuna storage"}, f)

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            now = time.monotonic()
            if self._quota_full and now - self._quota_at < 1.0:
                return None
            states = [t.state.name for t in self._ot_study.get_trials(False)]
            complete, running = finished(states), states.count("RUNNING")
            if complete >= self.n_trials or (
                self.deadline is not None and time.time() >= self.deadline
            ):
                return Searcher.FINISHED  # running trials finish; none starts
            self._quota_full, self._quota_at = complete + running >= self.n_trials, now
            if self._quota_full:  # wait: a running trial may still fail and need replacing
                return None
            config = super().suggest(trial_id)
            t = self._ot_trials[trial_id]
            self._ot_study._storage.record_heartbeat(t._trial_id)
            t.set_user_attr(ATTR_DRIVER, self.session)
            t.set_user_attr(ATTR_CONFIG, config["trial_config"])
            return config

        def _beat_loop(self) -> None:
            while not self._beat_stop.wait(self._ot_study._storage.get_heartbeat_interval()):
                try:
                    self._ot_study.set_user_attr(f"{ATTR_DRIVER}:{self.session}", time.time())
                    for tid, t in list(self._ot_trials.items()):
                        if tid not in self._completed_trials:
                            self._ot_study._storage.record_heartbeat(t._trial_id)
                    optuna.storages.fail_stale_trials(self._ot_study)
                except Exception as e:  # a busy store: beat again next interval
                    log.warning("recording heartbeats failed: %s", e)

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            """With a scheduler: the trial's curve so far, for rungs rebuilt on resume."""
            rows = result.get("epoch_rows") or []
            if self.stopped is None or not rows or trial_id not in self._ot_trials:
                return
            t = self._ot_trials[trial_id]
            curve = self._curves.setdefault(trial_id, [])
            metric = self.metric[0]
            curve += [_curve_point(r, metric) for r in rows]
            _retry(lambda: t.set_user_attr(ATTR_CURVE, curve), f"recording trial {t.number}")

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._completed_trials:
                return
            t = self._ot_trials[trial_id]
            if self.stopped is not None and trial_id in self.stopped and not error:
                # stopped by a rung: under-trained, so never COMPLETE (nor a failure)
                epoch = self.stopped[trial_id]
                last = {m: (result or {}).get(m) for m in self.metric}
                # Tune hands the stopping result to the scheduler, not to on_trial_result
                curve = self._curves.setdefault(trial_id, [])
                rows = (result or {}).get("epoch_rows") or []
                curve += [_curve_point(r, self.metric[0]) for r in rows if int(r["epoch"]) <= epoch]

                def prune() -> None:
                    t.set_user_attr(ATTR_CURVE, curve)
                    t.set_user_attr(ATTR_STOPPED, epoch)
                    t.set_user_attr(ATTR_LAST, json.loads(json.dumps(last, default=float)))
                    try:
                        self._ot_study.tell(t, state=optuna.trial.TrialState.PRUNED)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        log.warning("trial %d was failed meanwhile (stale heartbeat)", t.number)

                _retry(prune, f"telling trial {t.number} PRUNED")
                self._completed_trials.add(trial_id)
                return
            vals = None if not result else [result.get(m) for m in self.metric]
            ok = not error and vals is not None and all(_finite(v) for v in vals)
            state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL

            def tell() -> None:
                if ok:
                    t.set_user_attr(ATTR_RESULT, final_metrics(result))
                    if is_collapsed(result):
                        t.set_user_attr(ATTR_COLLAPSED, True)
                    if trial_id in self.checkpoints:
                        t.set_user_attr(ATTR_CHECKPOINT, self.checkpoints[trial_id])
                try:
                    self._ot_study.tell(t, vals if ok else None, state=state)
                except optuna.exceptions.UpdateFinishedTrialError:
                    log.warning("trial %d was failed meanwhile (stale heartbeat)", t.number)

            _retry(tell, f"telling trial {t.number}")
            self._completed_trials.add(trial_id)

        def close(self) -> None:
            self._beat_stop.set()

    return StudySearch


def finished(states: list[str]) -> int:
    """Trials that count towards ``n_trials``: COMPLETE, and PRUNED (stopped by a rung)."""
    return states.count("COMPLETE") + states.count("PRUNED")


def rung_history(
    study: Any, metric: str
) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], dict[tuple[str, int], int]]:
    """The curves of the finished and pruned trials (``{("trial", number): epoch rows}``, in
    trial order) and the epochs the pruned ones were stopped after: what a scheduler's rungs
    are rebuilt from when a study resumes."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    stopped: dict[tuple[str, int], int] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.name not in ("COMPLETE", "PRUNED") or ATTR_CURVE not in t.user_attrs:
            continue
        key = ("trial", t.number)
        rows[key] = [
            {"epoch": int(e), metric: m, "params": p, **({"settling": 1.0} if flag else {})}
            for e, m, p, *flag in t.user_attrs[ATTR_CURVE]
        ]
        if t.state.name == "PRUNED" and ATTR_STOPPED in t.user_attrs:
            stopped[key] = int(t.user_attrs[ATTR_STOPPED])
    return rows, stopped


def _curve_point(row: dict[str, Any], metric: str) -> list[Any]:
    """One epoch of :data:`ATTR_CURVE`: ``[epoch, metric, params]``, and 1 if it was settling."""
    point = [int(row["epoch"]), row.get(metric), row.get("params")]
    return [*point, 1] if row.get("settling") else point


def _retry(fn: Any, what: str, seconds: float = 300.0) -> None:
    """Call ``fn`` until the store takes it; raise after ``seconds``, or at once if Optuna
    refuses it (an error that retrying cannot mend)."""
    import optuna

    deadline, pause = time.monotonic() + seconds, 0.1
    while True:
        try:
            return fn()
        except Exception as e:
            if isinstance(e, optuna.exceptions.OptunaError) or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, e, pause)
            time.sleep(pause)
            pause = min(5.0, pause * 2)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def final_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The trial's final metrics as JSON scalars (Tune's bookkeeping keys dropped)."""
    keys = ("val_", "test_", "params", "density", "live_neurons", "seconds", "total_seconds")
    out = {
        k: v
        for k, v in result.items()
        if k.startswith(keys) or k in ("start_cpu_s", ATTR_COLLAPSED, "teacher_trained")
    }
    return json.loads(json.dumps(out, default=float))


def is_collapsed(metrics: Any) -> bool:
    """Whether a trial's final metrics say its model collapsed (``collapsed`` is 1; a result
    from before trials reported it has no such key: not collapsed)."""
    try:
        return float((metrics or {}).get(ATTR_COLLAPSED, 0)) == 1.0
    except (TypeError, ValueError):
        return False


__all__ = [
    "ATTR_COLLAPSED",
    "finished",
    "is_collapsed",
    "open_storage",
    "prepare_study",
    "resolve_storage",
    "rung_history",
    "searcher_class",
]
