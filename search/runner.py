"""Run a study: Optuna samples and records, Ray Tune executes, the driver mirrors to MLflow.

The data flow is one-way. ``OptunaSearch`` asks the study (its storage: the record) for each
trial, conditional on the method; a Tune worker runs it and reports epochs, final metrics and a
checkpoint of its weights and masks; the searcher tells Optuna the moment a trial ends; one
Tune callback on the driver feeds the live view and the MLflow mirror. A driver killed at any
point loses no completed trial: the next run fails its trials once their heartbeats are stale,
backfills the mirror from the record, and continues until ``n_trials`` trials are COMPLETE.
Several drivers may run one study at once; each stops when the study has ``n_trials``.

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
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prunetune.search._errors import ConfigError
from prunetune.search._record import objectives, prepare_study, resolve_storage
from prunetune.search.spec import ValidatedSpec

log = logging.getLogger("prunetune.search")


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
        storage_path: Tune's storage for checkpoints (a shared path or bucket on a cluster);
            default ``<workdir>/ray_results``.
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
    storage_path: str | None = None


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


class StudyFailed(RuntimeError):
    """More trials failed than ``search.max_failures`` allows; completed trials are kept."""

    def __init__(self, msg: str, outcome: StudyOutcome) -> None:
        super().__init__(msg)
        self.outcome = outcome


# -- the driver's view of its trials -----------------------------------------------------------
class Live:
    """What this driver's trials are doing, fed by the Tune callback; renders the live view."""

    def __init__(self, total: int, already: int, metric: str, max_failures: int) -> None:
        self.total, self.already, self.metric = total, already, metric
        self.max_failures = max_failures
        self.t0 = time.time()
        self.running: dict[str, float] = {}
        self.done: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.timings: list[dict[str, float]] = []
        self.lock = threading.Lock()

    def started(self, tid: str) -> None:
        with self.lock:
            self.running[tid] = time.time()

    def completed(self, tid: str, result: dict[str, Any]) -> None:
        with self.lock:
            start = self.running.pop(tid, time.time())
            self.done.append(result)
            self.timings.append(
                {
                    "driver_seconds": time.time() - start,
                    "train_seconds": float(result.get("seconds", 0.0)),
                    "total_seconds": float(result.get("total_seconds", 0.0)),
                }
            )

    def errored(self, tid: str, msg: str) -> None:
        with self.lock:
            self.running.pop(tid, None)
            self.failures.append(msg)

    def render(self) -> Any:
        from rich.table import Table

        from prunetune.search._objective import from_score, to_score
        from prunetune.search.pareto import best_under_budgets, pareto_front

        with self.lock:
            pts = [(to_score(self.metric, r[self.metric]), r["params"]) for r in self.done]
            dense = max((r.get("params_dense", 0) for r in self.done), default=0)
            n_done, n_run, n_fail = len(self.done), len(self.running), len(self.failures)
        elapsed = time.time() - self.t0
        left = self.total - self.already - n_done
        eta = f"~{elapsed / n_done * left:,.0f}s left" if n_done and left > 0 else ""
        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"[bold]trials[/] {self.already + n_done}/{self.total} done",
            f"{n_run} running",
            f"[red]{n_fail} failed[/]" if n_fail else "0 failed",
            f"front: {len(pareto_front(pts))}",
            f"{elapsed:,.0f}s elapsed",
            eta,
        )
        if dense:
            fracs = (0.01, 0.05, 0.25, 1.0)
            best = best_under_budgets(pts, [dense * f for f in fracs])
            t.add_row(
                *(
                    f"≤{100 * f:g}% params: "
                    + (f"{from_score(self.metric, v):.3f}" if (v := best[dense * f]) else "–")
                    for f in fracs
                ),
                "",
                "",
            )
        return t

    def line(self, r: dict[str, Any]) -> str:
        """Non-TTY progress: one line per completed trial (for logs and CI)."""
        return (
            f"[prunetune] trial {int(r['trial_number'])} done: {self.metric}="
            f"{r[self.metric]:.4g} params={int(r['params'])} ({100 * r['density']:.2f}%) "
            f"in {r.get('seconds', 0):.1f}s"
        )


def _tune_hooks(live: Live, mirror: Any, checkpoints: dict[str, str], lines: bool) -> list[Any]:
    """The driver's Tune callback (live view + MLflow mirror) and the failure stopper.

    Tune pickles its run config: both hold their state as attributes that pickling drops
    (it lives in this process only), never in closures.
    """
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    class Driver(Callback):
        def __init__(self, live: Live, mirror: Any, checkpoints: dict, lines: bool) -> None:
            self.live, self.mirror, self.checkpoints, self.lines = live, mirror, checkpoints, lines

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.live.started(trial.trial_id)
            if self.mirror is not None:
                c = trial.config
                self.mirror.trial_started(int(c["trial_number"]), c["trial_config"])

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:  # fmt: skip
            if self.mirror is not None:
                rows = result.get("epoch_rows")
                self.mirror.trial_epochs(int(trial.config["trial_number"]), rows)

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:  # fmt: skip
            self.checkpoints[trial.trial_id] = checkpoint.path

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r, number = trial.last_result or {}, int(trial.config["trial_number"])
            if not r.get("final"):
                self.on_trial_error(iteration, trials, trial, why="ended without a final result")
                return
            self.live.completed(trial.trial_id, r)
            if self.lines:
                print(self.live.line(r), file=sys.stderr, flush=True)
            if self.mirror is not None:
                self.mirror.trial_finished(number, _final_metrics(r), trial.checkpoint)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, why: str = "", **info: Any) -> None:  # fmt: skip
            msg = why or _error_summary(trial)
            self.live.errored(trial.trial_id, msg)
            if self.mirror is not None:
                self.mirror.trial_failed(int(trial.config["trial_number"]), msg)

    class FailureStopper(Stopper):
        def __init__(self, live: Live, mirror: Any) -> None:
            self.live, self.mirror = live, mirror

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            broken = self.mirror is not None and self.mirror.error is not None
            return broken or len(self.live.failures) > self.live.max_failures

    return [Driver(live, mirror, checkpoints, lines), FailureStopper(live, mirror)]


_TUNE_KEYS = ("epoch_rows", "trial_number", "node_id", "worker_start", "worker_end", "final")


def _final_metrics(result: dict[str, Any]) -> dict[str, Any]:
    from prunetune.search._record import _plain

    return _plain({k: v for k, v in result.items() if k not in _TUNE_KEYS})


def _error_summary(trial: Any) -> str:
    """``'FileNotFoundError: …'`` from a failed Tune trial's stored traceback."""
    text = ""
    try:
        local = trial.error_file  # the driver's staging copy, written before callbacks run
        text = Path(local).read_text() if local and Path(local).exists() else trial.get_error()
    except Exception:  # the error file may be gone; the failure itself is what matters
        pass
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    pat = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")
    for ln in reversed(lines):
        if pat.match(ln) and "RayTaskError" not in ln:
            return ln[:500]
    return lines[-1][:500] if lines else "unknown error"


def _ray_init(address: str | None) -> None:
    """Start (or join) Ray unless whoever runs the study already did."""
    import ray

    # Tune's own CSV/JSON/TensorBoard loggers and console tables would spend the driver's CPU,
    # which the trials share, on files nobody reads: prunetune has its view and its mirror.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
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


def _define_by_run(trial: Any, vspec: ValidatedSpec) -> dict[str, Any]:
    from prunetune.search.space import sample_config

    return {"trial_config": sample_config(trial, vspec), "trial_number": int(trial.number)}


# -- the study ---------------------------------------------------------------------------------
def run_study(vspec: ValidatedSpec, opts: RunOptions | None = None) -> StudyOutcome:
    """Run (or continue, or join) a study until ``n_trials`` trials are COMPLETE.

    Raises:
        ConfigError: invalid options, or a spec whose search space changed since the study began.
        StudyFailed: more than ``search.max_failures`` of this run's trials failed.
    """
    import warnings

    from ray import tune

    from prunetune.search._record import open_storage, searcher_class
    from prunetune.search.space import make_sampler

    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
    opts = opts or RunOptions()
    spec = vspec.spec
    workdir = opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    storage = resolve_storage(opts.storage or spec.search.storage, workdir)
    n_trials = opts.n_trials or spec.search.n_trials
    t0 = time.time()

    rdb = open_storage(storage, spec.search.heartbeat_grace)
    study, study_name = prepare_study(vspec, rdb, opts.fresh)
    complete = _count(study, "COMPLETE")
    session = uuid.uuid4().hex  # this driver, in the record's heartbeats and the mirror
    mirror = tracking_uri = None
    if spec.tracking.enabled:
        from prunetune.search.tracking import StudyMirror, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(opts.tracking_uri or spec.tracking.uri, workdir)
        logged = spec.model_dump(mode="json")
        logged["objectives"]["metric"] = spec.metric  # resolved from the dataset's task
        mirror = StudyMirror(
            tracking_uri,
            spec.tracking.experiment or spec.name,
            study_name,
            logged,
            storage,
            vspec.source,
            {"sampler": spec.search.sampler},
            explain=spec.tracking.explain,
            session=session,
            grace=spec.search.heartbeat_grace,
        )
        mirror.start(study)  # the parent run is written while Ray starts the workers
    live = Live(n_trials, complete, spec.metric, spec.search.max_failures)
    view = searcher = None
    status = "FAILED"
    try:
        if complete < n_trials:
            _ray_init(opts.ray_address)
            checkpoints: dict[str, str] = {}
            _, metrics, modes = objectives(spec.metric)
            searcher = searcher_class()(
                space=partial(_define_by_run, vspec=vspec),
                metric=metrics,
                mode=modes,
                # a resumed study reseeds, so as not to replay the first run's draws
                sampler=make_sampler(vspec, seed_offset=len(study.trials)),
                study_name=study_name,
                storage=rdb,
                n_trials=n_trials,
                checkpoints=checkpoints,
                session=session,
            )
            res = spec.search.resources
            from prunetune.search._worker import trainable

            tty = opts.progress and sys.stderr.isatty()
            driver, stopper = _tune_hooks(live, mirror, checkpoints, opts.progress and not tty)
            tuner = tune.Tuner(
                tune.with_resources(
                    tune.with_parameters(trainable, threads=max(1, int(res.cpu))),
                    {"cpu": res.cpu, "gpu": res.gpu},
                ),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=-1,  # the searcher stops once the study has n_trials COMPLETE
                    max_concurrent_trials=opts.max_concurrent or spec.search.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}-{session[:6]}",
                    storage_path=opts.storage_path or str(workdir / "ray_results"),
                    verbose=0,
                    stop=stopper,
                    callbacks=[driver],
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            if tty:
                from rich.live import Live as RichLive

                view = RichLive(live.render(), refresh_per_second=2, get_renderable=live.render)
                view.start()
            tuner.fit()
        status = "FINISHED" if _count(study, "COMPLETE") >= n_trials else "FAILED"
    finally:
        if view is not None:
            view.stop()
        if searcher is not None:
            searcher.close()
        if mirror is not None:  # on an exception: end the parent FAILED, keep that exception
            try:
                mirror.close(status)
            except Exception:
                if status == "FINISHED":
                    raise
    return _outcome(vspec, opts, study, study_name, storage, tracking_uri, mirror, live, t0)


def _count(study: Any, state: str) -> int:
    return sum(t.state.name == state for t in study.get_trials(deepcopy=False))


def _outcome(
    vspec: ValidatedSpec,
    opts: RunOptions,
    study: Any,
    study_name: str,
    storage: str,
    tracking_uri: str | None,
    mirror: Any,
    live: Live,
    t0: float,
) -> StudyOutcome:
    from prunetune.search._front import front_of_study

    spec = vspec.spec
    front = front_of_study(study, mirror.runs if mirror is not None else None)
    rows = [
        {
            "trial": r.trial,
            spec.metric: r.val_value,
            "score": front.points[i][0],  # type: ignore[index]
            "params": int(r.params_kept),
            "method": r.method,
            "params_sampled": dict(study.trials[r.trial].params),
        }
        for i, r in enumerate(front.records)
        if front.points[i] is not None
    ]
    on_front = {front.records[i].trial for i in front.front}
    outcome = StudyOutcome(
        study_name=study_name,
        storage=storage,
        tracking_uri=tracking_uri,
        parent_run_id=mirror.parent_run_id if mirror is not None else None,
        completed=_count(study, "COMPLETE"),
        failed=_count(study, "FAIL"),
        trials=rows,
        front=[r for r in rows if r["trial"] in on_front],
        wall_seconds=time.time() - t0,
        trial_timings=live.timings,
        results=list(live.done),
    )
    register = spec.tracking.register_models if opts.register is None else opts.register
    if mirror is not None and register and rows:
        from prunetune.search._objective import settings
        from prunetune.search.registry import register_study

        o = spec.objectives
        floor = settings(spec.metric, None, o.min_val_accuracy, o.max_val_loss)[1]
        outcome.registered = register_study(
            tracking_uri, study_name, min_val_accuracy=floor, storage=storage
        )
    if len(live.failures) > spec.search.max_failures:
        raise StudyFailed(
            f"{len(live.failures)} trials failed (search.max_failures is "
            f"{spec.search.max_failures}); last error: {live.failures[-1]}",
            outcome,
        )
    if mirror is not None and mirror.error is not None:
        raise ConfigError(f"MLflow tracking at {tracking_uri} failed: {mirror.error}")
    return outcome


__all__ = [
    "RunOptions",
    "StudyFailed",
    "StudyOutcome",
    "prepare_study",
    "resolve_storage",
    "run_study",
]
