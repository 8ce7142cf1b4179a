"""Run a study: Optuna samples (persisted storage), Ray Tune executes, MLflow tracks.

The Optuna study in its storage is the source of truth. Ray Tune's ``OptunaSearch`` asks it for
each trial (define-by-run, conditional on the method) and tells it the outcome the moment a
trial ends, so a driver killed at any point loses no completed trial. On the next run, trials
the dead driver left RUNNING are marked FAIL and the study continues until ``n_trials`` trials
are COMPLETE; Optuna's trial numbers are never reused.

Example:
    >>> from prunetune.search.runner import run_study
    >>> from prunetune.search.spec import load_spec
    >>> outcome = run_study(load_spec("studies/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prunetune.search._errors import ConfigError
from prunetune.search.spec import ValidatedSpec

log = logging.getLogger("prunetune.search")


def objectives(metric: str) -> tuple[list[str], list[str], list[str]]:
    """Optuna directions, Tune metrics and Tune modes of (``metric``, params)."""
    from prunetune.search._objective import MAXIMIZE

    up = MAXIMIZE[metric]
    return (
        ["maximize" if up else "minimize", "minimize"],
        [metric, "params"],
        ["max" if up else "min", "min"],
    )


@dataclass
class RunOptions:
    """How to run a study (flags beat the spec; the spec beats the defaults).

    Attributes:
        workdir: where default stores live (``mlflow.db``, ``mlartifacts/``, ``optuna.db``,
            ``ray_results/``); the directory the user runs from by default.
        ray_address: join an existing Ray cluster (``ray://…`` or ``host:port``); None starts a
            local Ray with all cores.
        storage: Optuna storage URL (overrides ``search.storage``).
        tracking_uri: MLflow tracking URI (overrides ``tracking.uri``).
        fresh: start a new study instead of continuing the latest one of this name.
        n_trials / max_concurrent: override the spec's values.
        register: register the selected models at the end (default: ``tracking.register``).
        progress: show the live view.
    """

    workdir: Path = field(default_factory=Path.cwd)
    ray_address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    fresh: bool = False
    n_trials: int | None = None
    max_concurrent: int | None = None
    register: bool | None = None
    progress: bool = True


@dataclass
class StudyOutcome:
    study_name: str
    storage: str
    tracking_uri: str | None
    parent_run_id: str | None
    completed: int
    failed: int
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    registered: list[Any] = field(default_factory=list)
    wall_seconds: float = 0.0
    trial_timings: list[dict[str, float]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # final Tune results of this run


# -- Optuna study ----------------------------------------------------------------------------
def resolve_storage(url: str | None, workdir: Path) -> str:
    return url or f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def _study_names(storage: Any, base: str) -> list[str]:
    import optuna

    pat = re.compile(rf"^{re.escape(base)}(?:~(\d+))?$")
    names = [
        s.study_name
        for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    ]
    return sorted((n for n in names if pat.match(n)), key=lambda n: int(pat.match(n).group(1) or 1))  # type: ignore[union-attr]


def prepare_study(vspec: ValidatedSpec, storage: Any, fresh: bool) -> tuple[Any, str]:
    """Create or resume the study; fail trials a dead driver left RUNNING.

    The current study of a spec named ``N`` is the newest of ``N``, ``N~2``, ``N~3``…;
    ``fresh`` creates the next one. ``storage`` is a URL or an Optuna storage object (one
    ``RDBStorage`` shared with the searcher saves connecting and checking the schema twice).

    Raises:
        ConfigError: the spec's search space changed since the study was created.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = vspec.spec.name
    names = _study_names(storage, base)
    if not names:
        name = base
    elif fresh:
        name = f"{base}~{len(names) + 1}"
    else:
        name = names[-1]
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=objectives(vspec.spec.metric)[0],
        load_if_exists=True,
    )
    fp = vspec.spec.fingerprint()
    old = study.user_attrs.get("spec_fingerprint")
    if old is None:
        study.set_user_attr("spec_fingerprint", fp)
        study.set_user_attr("spec", vspec.spec.model_dump(mode="json"))
    elif old != fp:
        raise ConfigError(
            f"study {name!r} in {storage} was created from a different search space "
            f"(fingerprint {old}, spec now {fp}); rerun with --fresh to start a new study."
        )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        log.warning("trial %d was left RUNNING by an interrupted driver; marked FAIL", t.number)
    return study, name


def count_states(study: Any) -> dict[str, int]:
    from collections import Counter

    c = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {
        "COMPLETE": c.get("COMPLETE", 0),
        "FAIL": c.get("FAIL", 0),
        "RUNNING": c.get("RUNNING", 0),
    }


# -- the trial as Ray sees it ----------------------------------------------------------------
def _define_by_run(trial: Any, vspec: ValidatedSpec) -> dict[str, Any]:
    from prunetune.search.space import sample_config

    return {"trial_config": sample_config(trial, vspec), "trial_number": int(trial.number)}


REPORT_SECONDS = 1.0  # least interval between intermediate results sent to Tune


def _trainable(config: dict[str, Any], *, ctx: Any, threads: int) -> None:
    """Ray Tune function trainable: one trial, logged to MLflow from the worker."""
    import ray
    from ray import tune

    from prunetune.search.trial import run_trial

    t_start = time.time()
    number = int(config["trial_number"])
    trial_cfg = dict(config["trial_config"])
    trial_cfg["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    trial_cfg["threads"] = threads
    node = ray.get_runtime_context().get_node_id()
    tracker = None
    if ctx is not None:
        from prunetune.search.tracking import TrialTracker

        tracker = TrialTracker(ctx, number, trial_cfg)

    last_report = [-float("inf")]

    def report(row: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_epoch(row)  # every epoch, buffered
        # Tune gets intermediate rows at most every REPORT_SECONDS: each costs a round trip
        # through the driver's event loop, which shares the cores with the trials.
        now = time.monotonic()
        if now - last_report[0] >= REPORT_SECONDS:
            last_report[0] = now
            tune.report({**row, "trial_number": number})

    try:
        result = run_trial(trial_cfg, report)
    except Exception as e:
        if tracker is not None:
            tracker.fail(f"{type(e).__name__}: {e}")
        raise
    run_id = tracker.finish(result) if tracker is not None else ""
    tune.report(
        {
            **result.metrics,
            "trial_number": number,
            "mlflow_run_id": run_id,
            "node_id": node,
            "worker_start": t_start,
            "worker_end": time.time(),
            "final": 1,
        }
    )


def _searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class PersistentOptunaSearch(OptunaSearch):
        """Ray's OptunaSearch whose state lives in the Optuna storage, not in Tune's pickles.

        Tune pickles its searcher for experiment checkpoints; a live ``optuna.Study`` holds
        locks. Resuming goes through the storage (``prepare_study``), never ``Tuner.restore``.
        """

        def __getstate__(self) -> dict[str, Any]:
            state = self.__dict__.copy()
            state["_ot_study"] = None
            state["_ot_trials"] = {}
            return state

        def save(self, checkpoint_path: str) -> None:
            import json

            with open(checkpoint_path, "w") as f:
                json.dump(
                    {"optuna_study": self._study_name, "note": "state is in the Optuna storage"}, f
                )

        def restore(self, checkpoint_path: str) -> None:
            raise NotImplementedError("prunetune resumes studies from the Optuna storage")

    return PersistentOptunaSearch


# -- driver-side callbacks -------------------------------------------------------------------
_LIVE: dict[str, _LiveState] = {}  # callbacks hold a key: Tune pickles its config, not locks


def _live(key: str) -> _LiveState | None:
    # A module-level function is pickled by reference, so the callbacks never drag _LIVE along.
    return _LIVE.get(key)


def _tune_callbacks(key: str) -> tuple[Any, Any]:
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    class FailureStopper(Stopper):
        def __init__(self) -> None:
            self.key = key

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            st = _live(self.key)
            return st is not None and (st.failed > st.max_failures or st.aborted())

    class Events(Callback):
        def __init__(self) -> None:
            self.key = key

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if st := _live(self.key):
                st.started(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if st := _live(self.key):
                st.completed(trial.trial_id, trial.last_result or {})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if st := _live(self.key):
                st.errored(trial.trial_id, _error_summary(trial))

    return FailureStopper(), Events()


def _error_summary(trial: Any) -> str:
    """``'FileNotFoundError: …'`` from a failed Tune trial's stored traceback."""
    text = ""
    try:
        local = trial.error_file  # the driver's staging copy, written before callbacks run
        if local and Path(local).exists():
            text = Path(local).read_text()
        else:
            text = trial.get_error() or ""
    except Exception:  # the error file may be gone; the failure itself is what matters
        pass
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if (
            re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:", ln)
            and "RayTaskError" not in ln
        ):
            return ln[:500]
    return lines[-1][:500] if lines else "unknown error"


class _LiveState:
    """Counts and front for the progress view; Pareto tracking updates off the event loop."""

    def __init__(
        self,
        total: int,
        already: int,
        max_failures: int,
        on_complete: Callable[[], Any] | None,
        aborted: Callable[[], bool] | None = None,
    ) -> None:
        self.total, self.already, self.max_failures = total, already, max_failures
        self.aborted = aborted or (lambda: False)
        self.t0 = time.time()
        self.running: dict[str, float] = {}
        self.peak_running = 0
        self.done: list[dict[str, Any]] = []
        self.failed = 0
        self.failures: list[str] = []
        self.timings: list[dict[str, float]] = []
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._on_complete = on_complete
        self._worker: threading.Thread | None = None
        if on_complete is not None:
            self._worker = threading.Thread(
                target=self._pareto_loop, name="pareto-updater", daemon=True
            )
            self._worker.start()

    # While trials run, the front's table, tags and hypervolume are republished at most every
    # FRONT_MIN_SECONDS and its figures at most every FIGURES_MIN_SECONDS, and either never more
    # than a quarter of the time: the trials need the cores more than the MLflow UI needs a
    # fresh plot (a redraw costs ~1.5 s of CPU). Once every trial has started and one of them
    # has finished, a freed slot would idle until the study ends, so the figures and the front
    # runs' explanations are made then. The study's end publishes the rest
    # (StudyTracker.finish).
    FRONT_MIN_SECONDS = 5.0
    FIGURES_MIN_SECONDS = 60.0
    SETTLE_SECONDS = 1.0

    def _pareto_loop(self) -> None:
        next_at = 0.0
        figures_at = time.monotonic() + self.FIGURES_MIN_SECONDS
        while not self._stop.is_set():
            if not self._dirty.wait(0.2):
                continue
            # Let Tune launch the next trial first: it needs the driver right after a completion.
            if self._stop.wait(self.SETTLE_SECONDS):
                break
            if (wait := next_at - time.monotonic()) > 0:
                self._stop.wait(wait)
                continue
            self._dirty.clear()
            t = time.monotonic()
            tail = self._slot_free_for_good()  # spend the idle slot on the figures
            figures = tail or t >= figures_at
            try:
                self._on_complete(figures=figures, explain=tail)  # type: ignore[misc]
            except Exception as e:  # tracking must never kill the study
                log.warning("updating the Pareto front failed: %s", e)
            now = time.monotonic()
            next_at = now + max(self.FRONT_MIN_SECONDS, 3 * (now - t))
            if figures:
                figures_at = now + max(self.FIGURES_MIN_SECONDS, 3 * (now - t))

    def _slot_free_for_good(self) -> bool:
        """Every trial has started and fewer run than at the busiest moment: a slot idles.

        Counting against the peak rather than ``max_concurrent`` follows what the cluster
        actually ran at once (fewer slots than ``max_concurrent``, or fewer trials left).
        """
        with self._lock:
            started = len(self.done) + self.already + self.failed + len(self.running)
            return started >= self.total and len(self.running) < self.peak_running

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=120)

    def started(self, tid: str) -> None:
        with self._lock:
            self.running[tid] = time.time()
            self.peak_running = max(self.peak_running, len(self.running))

    def completed(self, tid: str, result: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            start = self.running.pop(tid, now)
            if result.get("final"):
                self.done.append(result)
                self.timings.append(
                    {
                        "driver_seconds": now - start,
                        "train_seconds": float(result.get("seconds", 0.0)),
                        "total_seconds": float(result.get("total_seconds", 0.0)),
                    }
                )
            else:
                self.failed += 1
        self._dirty.set()

    def errored(self, tid: str, msg: str) -> None:
        with self._lock:
            self.running.pop(tid, None)
            self.failed += 1
            self.failures.append(msg)

    def render(self) -> Any:
        from rich.table import Table

        from prunetune.search._objective import from_score, metric_of, score_of
        from prunetune.search.pareto import best_under_budgets, pareto_front

        with self._lock:
            pts = [(score_of(r), r["params"]) for r in self.done]
            metric = metric_of(self.done[0]) if self.done else "val_accuracy"
            dense = max((r.get("params_dense", 0) for r in self.done), default=0)
            n_done, n_run, n_fail = len(self.done) + self.already, len(self.running), self.failed
        t = Table.grid(padding=(0, 2))
        elapsed = time.time() - self.t0
        t.add_row(
            f"[bold]trials[/] {n_done}/{self.total} done",
            f"{n_run} running",
            f"[red]{n_fail} failed[/]" if n_fail else "0 failed",
            f"{elapsed:,.0f}s elapsed",
            f"front: {len(pareto_front(pts))}",
        )
        if dense:
            budgets = [dense * f for f in (0.01, 0.05, 0.25, 1.0)]
            best = best_under_budgets(pts, budgets)
            t.add_row(
                *(
                    f"≤{100 * f:g}% params: "
                    + (f"{from_score(metric, best[b]):.3f}" if best[b] is not None else "–")
                    for f, b in zip((0.01, 0.05, 0.25, 1.0), budgets, strict=True)
                ),
                "",
            )
        return t


def _ray_init(address: str | None) -> bool:
    """Start (or join) Ray; returns True if this call started it."""
    import ray

    # Driver-side Tune settings, read when the Tuner runs: they hold whoever started Ray
    # (a notebook, a benchmark, a test). Tune's own CSV/JSON/TensorBoard loggers and its
    # console output would spend the driver's CPU, which the trials share, on files and
    # tables nobody reads: prunetune shows its own progress and logs to MLflow.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return False
    # Workers read data locations from the driver's environment, not from their own.
    env = {k: os.environ[k] for k in ("PRUNETUNE_DATA", "PRUNETUNE_CACHE") if k in os.environ}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
        runtime_env={"env_vars": env} if env else None,
    )
    return True


# -- the study -------------------------------------------------------------------------------
def run_study(vspec: ValidatedSpec, opts: RunOptions | None = None) -> StudyOutcome:
    """Run (or continue) a study until ``n_trials`` trials are complete.

    Raises:
        ConfigError: invalid options, or a spec whose search space changed since the study began.
    """
    import warnings

    import optuna
    from ray import tune

    from prunetune.search.space import make_sampler

    # The first ask imports torch-side modules; Ray's >1 s define-by-run warning is noise here.
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
    opts = opts or RunOptions()
    spec = vspec.spec
    workdir = opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    storage = resolve_storage(opts.storage or spec.search.storage, workdir)
    n_trials = opts.n_trials or spec.search.n_trials
    max_conc = opts.max_concurrent or spec.search.max_concurrent
    t0 = time.time()

    rdb = optuna.storages.RDBStorage(storage)
    study, study_name = prepare_study(vspec, rdb, opts.fresh)
    states = count_states(study)
    remaining = n_trials - states["COMPLETE"]

    tracker = ctx = None
    tracking_uri = None
    want_tracking = spec.tracking.enabled
    if want_tracking:
        from prunetune.search.tracking import StudyTracker, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(opts.tracking_uri or spec.tracking.uri, workdir)
        logged_spec = spec.model_dump(mode="json")
        logged_spec["objectives"]["metric"] = spec.metric  # resolved from the dataset's task
        tracker = StudyTracker(
            tracking_uri,
            spec.tracking.experiment or spec.name,
            study_name,
            logged_spec,
            vspec.source,
            {"optuna_storage": storage, "sampler": spec.search.sampler},
            explain=spec.tracking.explain,
            recorded={
                t.number
                for t in study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
            },
        )
        # The parent run is created while Ray starts the workers; they wait for its tag.
        tracker.start_in_background()
        ctx = tracker.pending_context()

    state = _LiveState(
        n_trials,
        states["COMPLETE"],
        spec.search.max_failures,
        tracker.on_trial_complete if tracker else None,
        aborted=(lambda: tracker.start_failed) if tracker else None,
    )
    live = None
    try:
        if remaining > 0:
            key = f"{study_name}-{id(state)}"
            _LIVE[key] = state
            _ray_init(opts.ray_address)
            # Resumed studies reseed the sampler so they do not replay the first run's draws.
            seed_shift = len(study.trials)
            _, metrics, modes = objectives(spec.metric)
            searcher = _searcher_class()(
                space=partial(_define_by_run, vspec=vspec),
                metric=metrics,
                mode=modes,
                sampler=make_sampler(vspec, seed_offset=seed_shift),
                study_name=study_name,
                storage=rdb,
            )
            res = spec.search.resources
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, ctx=ctx, threads=max(1, int(res.cpu))),
                {"cpu": res.cpu, "gpu": res.gpu},
            )
            stopper, events = _tune_callbacks(key)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=remaining,
                    max_concurrent_trials=max_conc,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=str(workdir / "ray_results"),
                    verbose=0,
                    stop=stopper,
                    callbacks=[events],
                    failure_config=tune.FailureConfig(max_failures=0),
                    log_to_file=True,
                ),
            )
            if opts.progress and sys.stderr.isatty():
                from rich.live import Live

                live = Live(
                    state.render(),
                    refresh_per_second=2,
                    transient=False,
                    get_renderable=state.render,
                )
                live.start()
            elif opts.progress:
                _start_line_progress(state)
            tuner.fit()
    except BaseException:
        if tracker is not None and tracker.started and not tracker.start_failed:
            _stop_views(live, state)  # the parent run stays RUNNING; publish what did finish
            tracker.on_trial_complete()
        raise
    finally:
        _stop_views(live, state)
    if tracker is not None:
        ctx = tracker.context  # raises what starting the tracker raised
    study_states = count_states(study)
    trials = _trial_rows(study, spec.metric)
    from prunetune.search._objective import settings
    from prunetune.search.pareto import pareto_front

    pts = [(t["score"], t["params"]) for t in trials]
    front = [trials[i] for i in pareto_front(pts)]
    outcome = StudyOutcome(
        study_name=study_name,
        storage=storage,
        tracking_uri=tracking_uri,
        parent_run_id=ctx.parent_run_id if ctx is not None else None,
        completed=study_states["COMPLETE"],
        failed=study_states["FAIL"],
        trials=trials,
        front=front,
        wall_seconds=time.time() - t0,
        trial_timings=state.timings,
        results=list(state.done),
    )
    register = spec.tracking.register_models if opts.register is None else opts.register
    if tracker is not None:
        status = "FINISHED" if study_states["COMPLETE"] >= n_trials else "FAILED"
        try:
            if register and trials:
                from prunetune.search.registry import register_study

                o = spec.objectives
                _, floor = settings(spec.metric, None, o.min_val_accuracy, o.max_val_loss)
                outcome.registered = register_study(
                    tracking_uri, study_name, min_val_accuracy=floor
                )
        except Exception:
            status = "FAILED"
            raise
        finally:
            tracker.finish(status)
    if state.failed > spec.search.max_failures:
        raise StudyFailed(
            f"{state.failed} trials failed (search.max_failures is {spec.search.max_failures}); "
            f"last error: {state.failures[-1] if state.failures else 'unknown'}",
            outcome,
        )
    return outcome


def _stop_views(live: Any, state: _LiveState) -> None:
    if live is not None:
        live.stop()
    state.close()


class StudyFailed(RuntimeError):
    """More trials failed than ``search.max_failures`` allows; completed trials are kept."""

    def __init__(self, msg: str, outcome: StudyOutcome) -> None:
        super().__init__(msg)
        self.outcome = outcome


def _trial_rows(study: Any, metric: str = "val_accuracy") -> list[dict[str, Any]]:
    """Complete trials: ``metric`` and ``params`` (Optuna's values) and ``score`` (the metric
    as the Pareto code ranks it: higher is better)."""
    from prunetune.search._objective import to_score

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE" or t.values is None:
            continue
        rows.append(
            {
                "trial": t.number,
                metric: float(t.values[0]),
                "score": to_score(metric, t.values[0]),
                "params": int(t.values[1]),
                "method": t.params.get("method") or _only_method(study),
                "params_sampled": dict(t.params),
            }
        )
    return rows


def _only_method(study: Any) -> str:
    spec = study.user_attrs.get("spec") or {}
    methods = list((spec.get("methods") or {}).keys())
    return methods[0] if len(methods) == 1 else "?"


def _start_line_progress(state: _LiveState) -> None:
    """Non-TTY progress: one line per completed trial (for logs and CI)."""
    from prunetune.search._objective import metric_of

    def loop() -> None:
        seen = 0
        while not state._stop.is_set():
            time.sleep(0.5)
            with state._lock:
                new = state.done[seen:]
                seen += len(new)
            for r in new:
                print(
                    f"[prunetune] trial {int(r['trial_number'])} done: {metric_of(r)}={r[metric_of(r)]:.4g} "
                    f"params={int(r['params'])} ({100 * r['density']:.2f}%) in {r.get('seconds', 0):.1f}s",
                    file=sys.stderr,
                    flush=True,
                )

    threading.Thread(target=loop, daemon=True, name="progress-lines").start()


__all__ = [
    "RunOptions",
    "StudyFailed",
    "StudyOutcome",
    "prepare_study",
    "resolve_storage",
    "run_study",
]
