"""Run a study: Optuna samples and records, Ray Tune executes, the driver mirrors to MLflow.

One-way: the searcher asks the Optuna study (the record) for each trial; a Tune worker runs it
and reports epochs, final metrics and a checkpoint; the searcher tells Optuna when it ends; one
Tune callback on the driver feeds the live view and the MLflow mirror. A killed driver loses no
completed trial: the next run fails its trials once their heartbeats are stale, backfills the
mirror and continues until ``n_trials`` are COMPLETE; several drivers may share one study.

Example:
    >>> from prunetune.search.runner import run_study
    >>> from prunetune.search.spec import load_spec
    >>> outcome = run_study(load_spec("studies/quickstart.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prunetune.search._errors import ConfigError
from prunetune.search._objective import MAXIMIZE
from prunetune.search._record import final_metrics, prepare_study, resolve_storage
from prunetune.search.spec import ValidatedSpec


@dataclass
class RunOptions:
    """How to run a study (flags beat the spec; the spec beats the defaults).

    Attributes:
        workdir: where default stores live (``mlflow.db``, ``mlartifacts/``, ``optuna.db``,
            ``ray_results/``); by default the directory the user runs from.
        ray_address: join a Ray cluster (``ray://…``, ``host:port``); None starts a local Ray.
        storage / tracking_uri: Optuna storage and MLflow URIs (override the spec's).
        fresh: start a new study instead of continuing the latest one of this name.
        n_trials / max_concurrent / register: override the spec's values.
        progress: show the live view.
        storage_path: Tune's storage for trial checkpoints (a shared path or a bucket on a
            cluster); default ``<workdir>/ray_results``.
        runtime_env: a Ray ``runtime_env`` (``working_dir``, ``py_modules``, ``pip``,
            ``env_vars``…) for the workers, e.g. to ship a user's factories to a cluster;
            passed to ``ray.init`` when this driver starts or joins Ray.
        time_budget: seconds after which no new trial starts (overrides the spec's).
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
    runtime_env: dict[str, Any] | None = None
    time_budget: float | None = None


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
    overheads: list[float] = field(default_factory=list)  # per trial: driver time − training
    results: list[dict[str, Any]] = field(default_factory=list)  # final Tune results of this run
    stopped: int = 0  # trials of this run an early-stopping rung stopped (PRUNED in the record)
    collapsed: int = 0  # finished trials whose model collapsed (off the front)


class StudyFailed(RuntimeError):
    """More trials failed than ``search.max_failures`` allows; completed trials are kept."""

    def __init__(self, msg: str, outcome: StudyOutcome) -> None:
        super().__init__(msg)
        self.outcome = outcome


# -- the driver: one Tune callback feeds the live view and the MLflow mirror -------------------
#: Without a terminal, a running trial's latest epoch is printed at most this often (seconds),
#: so that a log shows long trials progressing between their "done" lines.
PROGRESS_LINE_S = 30.0


def _epochs(trial_config: Mapping[str, Any] | None) -> int | None:
    """Epochs a trial reports (training and fine-tuning), where its config says."""
    train = (trial_config or {}).get("train") or {}
    if "epochs" not in train:
        return None
    return int(train["epochs"]) + int(train.get("finetune_epochs") or 0)


def _driver(
    total: int,
    already: int,
    spec: Any,
    mirror: Any,
    lines: bool,
    stopped: dict[str, int] | None = None,
) -> Any:
    """The driver's Tune callback and stopper: counts, timings and the live view of its trials,
    the mirror's events and each trial's checkpoint for the searcher. Tune pickles its run
    config; the state lives in this process only (pickling drops it), never in closures."""
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    class Driver(Callback, Stopper):
        def __init__(
            self,
            total: int,
            already: int,
            spec: Any,
            mirror: Any,
            lines: bool,
            stopped: dict[str, int],
        ) -> None:
            self.total, self.already, self.metric = total, already, spec.metric
            self.stopped = stopped  # the scheduler's: Tune trial id → epoch it stopped after
            self.stopped_here: list[int] = []  # trial numbers this driver saw stopped
            self.max_failures, self.mirror, self.lines = spec.search.max_failures, mirror, lines
            self.t0 = time.time()
            self.running: dict[str, float] = {}
            self.said: dict[str, float] = {}  # Tune trial id → when its last epoch line printed
            self.done: list[dict[str, Any]] = []
            self.failures: list[str] = []
            self.overheads: list[float] = []  # seconds per trial: the driver's view − training
            self.checkpoints: dict[str, str] = {}  # Tune trial id → checkpoint path
            self.peak, self.tail = 0, False  # most trials run at once; the study's tail began

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.running[trial.trial_id] = self.said[trial.trial_id] = time.time()
            self.peak = max(self.peak, len(self.running))
            if self.mirror:
                self.mirror.trial_started(_number(trial), trial.config["trial_config"])

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:  # fmt: skip
            if self.mirror:
                self.mirror.trial_epochs(_number(trial), result.get("epoch_rows"))
            rows = result.get("epoch_rows") or ()
            now = time.time()
            if self.lines and rows and now - self.said.get(trial.trial_id, 0) >= PROGRESS_LINE_S:
                self.said[trial.trial_id] = now
                r, total = rows[-1], _epochs(trial.config.get("trial_config"))
                of = f"/{total}" if total else ""
                msg = f"trial {_number(trial)} epoch {int(r.get('epoch', 0))}{of}:"
                if self.metric in r:
                    msg += f" {self.metric}={r[self.metric]:.4g}"
                if "params" in r and "density" in r:
                    msg += f" params={int(r['params'])} ({100 * r['density']:.2f}%)"
                print(f"[prunetune] {msg}", file=sys.stderr, flush=True)

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:  # fmt: skip
            self.checkpoints[trial.trial_id] = checkpoint.path

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = trial.last_result or {}
            self.said.pop(trial.trial_id, None)
            if not r.get("final") and trial.trial_id in self.stopped:
                self.running.pop(trial.trial_id, None)
                epoch = self.stopped[trial.trial_id]
                self.stopped_here.append(_number(trial))
                if self.lines:
                    print(
                        f"[prunetune] trial {_number(trial)} stopped after epoch {epoch}",
                        file=sys.stderr,
                        flush=True,
                    )
                if self.mirror:
                    self.mirror.trial_stopped(_number(trial), epoch)
                return None
            if not r.get("final"):
                return self.on_trial_error(iteration, trials, trial, why="no final result")
            start = self.running.pop(trial.trial_id, time.time())
            self.done.append(r)
            self.overheads.append(time.time() - start - r["seconds"])  # the trial's, not training
            if self.lines:  # no terminal: one line per trial, for logs and CI
                m, d = f"{self.metric}={r[self.metric]:.4g}", f"{100 * r['density']:.2f}%"
                msg = f"trial {_number(trial)} done: {m} params={int(r['params'])} ({d})"
                print(f"[prunetune] {msg} in {r['seconds']:.1f}s", file=sys.stderr, flush=True)
            if self.mirror:
                self.mirror.trial_finished(_number(trial), final_metrics(r), trial.checkpoint)
                # every trial has started and a core idles for good, or the last one ended
                idle = (not self.tail and len(self.running) < self.peak) or not self.running
                if self.already + len(self.done) + len(self.running) >= self.total and idle:
                    self.tail = True
                    self.mirror.tail()  # figures and explanations now, not after Tune stops

        def on_trial_error(self, iteration: int, trials: list, trial: Any, why: str = "", **info: Any) -> None:  # fmt: skip
            self.running.pop(trial.trial_id, None)
            self.said.pop(trial.trial_id, None)
            self.failures.append(why or _error_summary(trial))
            if self.mirror:
                self.mirror.trial_failed(_number(trial), self.failures[-1])

        def render(self) -> Any:
            """The live view: progress, failures, front size, best metric per budget, ETA."""
            from rich.table import Table

            from prunetune.search._objective import to_score
            from prunetune.search._record import is_collapsed
            from prunetune.search.pareto import best_under_budgets, pareto_front

            done = list(self.done)
            live = [r for r in done if not is_collapsed(r)]  # a collapsed model is off the front
            pts = [(to_score(self.metric, r[self.metric]), r["params"]) for r in live]
            n_collapsed = len(done) - len(live)
            elapsed = time.time() - self.t0
            ended = len(done) + len(self.stopped_here)
            left = self.total - self.already - ended
            t = Table.grid(padding=(0, 2))
            t.add_row(
                f"[bold]trials[/] {self.already + ended}/{self.total} done",
                f"{len(self.running)} running",
                f"{len(self.stopped_here)} stopped early",
                f"[red]{len(self.failures)} failed[/]" if self.failures else "0 failed",
                f"front: {len({pts[i] for i in pareto_front(pts)})}"  # identical points once
                + (f", {n_collapsed} collapsed (off the front)" if n_collapsed else ""),
                f"{elapsed:,.0f}s elapsed"
                + (f", ~{elapsed / ended * left:,.0f}s left" if ended and left > 0 else ""),
            )
            if dense := max((r.get("params_dense", 0) for r in done), default=0):
                best = best_under_budgets(pts, [dense * f for f in (0.01, 0.05, 0.25, 1.0)])
                t.add_row(
                    *(
                        f"≤{100 * b / dense:g}% params: {_fmt(self.metric, v)}"
                        for b, v in best.items()
                    )
                )
            return t

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False  # as a Stopper: trials run to the end ...

        def stop_all(self) -> bool:  # ... the study stops past max_failures or a dead mirror
            broken = self.mirror is not None and self.mirror.error is not None
            return broken or len(self.failures) > self.max_failures

    return Driver(total, already, spec, mirror, lines, stopped if stopped is not None else {})


def _fmt(metric: str, score: float | None) -> str:
    return "–" if score is None else f"{(score if MAXIMIZE[metric] else -score):.3f}"


def _number(trial: Any) -> int:
    return int(trial.config["trial_number"])


def _error_summary(trial: Any) -> str:
    """``'FileNotFoundError: …'``: the last exception line of a failed trial's traceback (the
    driver's staging copy, written before callbacks run)."""
    path = Path(trial.error_file or "/nonexistent")
    lines = path.read_text().splitlines() if path.is_file() else []
    pat = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")
    found = [ln.strip() for ln in lines if pat.match(ln) and "RayTaskError" not in ln]
    return (found or [ln for ln in lines if ln.strip()] or ["unknown error"])[-1].strip()[:500]


#: glibc malloc arenas per Ray worker process (``_ray_init``): a reused actor's memory stays flat.
WORKER_MALLOC_ARENAS = "2"


def _ray_init(
    address: str | None, runtime_env: dict[str, Any] | None = None, paths: tuple[str, ...] = ()
) -> None:
    """Start (or join) Ray unless whoever runs the study already did, with the workers'
    environment of :func:`worker_runtime_env`."""
    import ray

    # Tune's own CSV/JSON/TensorBoard loggers and console tables would spend the driver's CPU,
    # which the trials share, on files nobody reads: prunetune has its view and its mirror.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
        runtime_env=worker_runtime_env(runtime_env, paths),
    )


def worker_runtime_env(
    runtime_env: dict[str, Any] | None = None,
    paths: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Ray ``runtime_env`` of a study's workers, from the driver's environment ``environ``
    (default ``os.environ``).

    Workers get the data locations of the driver's environment and ``PYTHONPATH`` with
    ``paths`` (the spec's folder and the working directory, where factories live) after the
    driver's own; ``runtime_env`` (a user's ``--runtime-env``) adds to that, its ``env_vars``
    winning over these (its ``PYTHONPATH`` goes first).

    Workers also get ``MALLOC_ARENA_MAX``: the driver's value, else ``WORKER_MALLOC_ARENAS``
    (``0`` is glibc's default, no cap). A reused Tune actor runs each trial in a new thread;
    glibc gives a new thread a new malloc arena, and freed arenas keep their pages. Measured
    with Ray 2.60 (``bench/worker_memory.py``, 12 Fashion-MNIST trials in one actor): without
    a cap the actor's memory grew by 100 MB per trial; with 2 arenas by 3 MB, and trials ran
    as fast."""
    environ = os.environ if environ is None else environ
    # Workers read data locations from the driver's environment, not from their own.
    env = {k: environ[k] for k in ("PRUNETUNE_DATA", "PRUNETUNE_CACHE") if k in environ}
    env["MALLOC_ARENA_MAX"] = environ.get("MALLOC_ARENA_MAX", WORKER_MALLOC_ARENAS)
    pythonpath = [*paths, *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    user = dict(runtime_env or {})
    user_env = dict(user.pop("env_vars", None) or {})
    if "PYTHONPATH" in user_env:
        pythonpath = [user_env.pop("PYTHONPATH"), *pythonpath]
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    env.update(user_env)
    return {**user, "env_vars": env}


PROBE_TIMEOUT_S = 10.0


def _probe(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast where nothing listens at a ``host:port`` or ``ray://host:port`` address:
    ``ray.init`` retries an unreachable GCS for minutes (measured: over 5 with Ray 2.60)
    before it gives up. Other forms (``auto``, ``local``) are left to Ray.

    Raises:
        ConnectionError: no TCP connection within ``timeout`` seconds.
    """
    if address is None:
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"nothing answers at {host}:{port} within {timeout:g} s ({e.strerror or e})"
        ) from None


def _join_ray(opts: RunOptions, vspec: ValidatedSpec) -> None:
    """Join the cluster at ``opts.ray_address``, or one line saying why not.

    Raises:
        ConfigError: Ray cannot connect (nothing has been created yet).
    """
    try:
        _probe(opts.ray_address)
        _ray_init(opts.ray_address, opts.runtime_env, tuple(vspec.import_paths))
    except Exception as e:  # ConnectionError, a bad address, a version mismatch…
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"--ray-address {opts.ray_address}: cannot join the Ray cluster: "
            f"{type(e).__name__}: {reason}"
        ) from None


def _nodes_fit(cpu: float, gpu: float, address: str | None) -> tuple[str, str] | None:
    """Why no node of the Ray cluster can hold one trial (``cpu`` CPUs and ``gpu`` GPUs on one
    node), and the remedy (lower ``gpu`` where no node has that many GPUs, to 0 where none has
    any; else lower ``cpu``), or None where one can. Without a cluster yet (``address`` None and Ray not
    started), the node is this machine as a local Ray would count it: its CPUs, and the CUDA
    devices torch sees (a trial given a GPU trains on it with this process's torch)."""
    import ray

    if ray.is_initialized() or address is not None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        where = f"the Ray cluster's {len(nodes)} node(s)"
    else:
        import torch
        from ray._private.utils import get_num_cpus

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        nodes = [{"CPU": get_num_cpus(), "GPU": gpus}]
        where = (
            f"this machine (torch {torch.__version__}: "
            f"{f'{gpus} CUDA device(s)' if gpus else 'no CUDA device'})"
        )
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return None
    have = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes)
    if any(n.get("GPU", 0) >= gpu for n in nodes):
        hint = "lower cpu"
    else:
        hint = "lower gpu" if any(n.get("GPU", 0) > 0 for n in nodes) else "set gpu: 0"
    return f"no node of {where} has that much ({have or 'no live node'})", hint


def _check_resources(vspec: ValidatedSpec, address: str | None) -> None:
    """Refuse, before any store is written, a study whose one trial fits no node of a local
    Ray (Tune would wait for it forever, warning once a minute); on a joined cluster, whose
    autoscaler may still add such a node, say so once and go on.

    Raises:
        ConfigError: naming ``search.resources`` and what the machine has.
    """
    res = vspec.spec.search.resources
    misfit = _nodes_fit(res.cpu, res.gpu, address)
    if misfit is None:
        return
    why, hint = misfit
    msg = f"search.resources is {{cpu: {res.cpu:g}, gpu: {res.gpu:g}}} per trial, but {why}"
    if address is None:
        raise ConfigError(f"{msg}; {hint}, or pass --ray-address of a cluster that has it.")
    print(
        f"[prunetune] warning: {msg}; trials wait until the cluster's autoscaler adds one.",
        file=sys.stderr,
        flush=True,
    )


def _define_by_run(trial: Any, vspec: ValidatedSpec) -> dict[str, Any]:
    from prunetune.search.space import sample_config

    return {"trial_config": sample_config(trial, vspec), "trial_number": int(trial.number)}


# -- the study ---------------------------------------------------------------------------------
def train_teacher(
    vspec: ValidatedSpec, progress: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study's distillation teacher, trained now unless the cache has it: its record
    (``val_accuracy``, ``test_accuracy``, ``params``, ``key``, ``trained``) and its weights
    on the CPU."""
    from prunetune.search._teacher import teacher_for
    from prunetune.search.trial import _load, _loss_for, parse_config, resolve_device

    spec = vspec.spec
    teacher = vspec.teacher_model()
    cfg = parse_config(
        {
            "dataset": vspec.dataset_config(),
            "data_dir": spec.data_dir,
            "model": teacher,
            "train": {
                "augment": list(spec.train.augment or ()),
                "loss": spec.train.loss,
                "distill": {
                    "alpha": max(vspec.distill_ranges["alpha"]),
                    "teacher_epochs": spec.train.distill.teacher_epochs,
                    "teacher": teacher,
                },
            },
        }
    )
    from prunetune.datasets._factory import load_data

    device = resolve_device("auto")
    data = _load(load_data, cfg, device)
    loss = _loss_for(cfg.train.loss, data.task, cfg.dataset_label)
    if progress:
        print(
            f"distillation teacher: {_model_label(teacher)}, "
            f"{spec.train.distill.teacher_epochs} epochs (once per study, cached)",
            file=sys.stderr,
            flush=True,
        )
    t = teacher_for(cfg, data, device, loss)
    keys = ("key", "val_accuracy", "test_accuracy", "val_loss", "test_loss", "params", "seconds")
    record = {k: t.meta[k] for k in keys if k in t.meta}
    record["trained"] = t.trained
    if progress:
        shown = {k: v for k, v in record.items() if k.startswith(("val_", "test_"))}
        print(
            f"distillation teacher {'trained' if t.trained else 'from the cache'}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()),
            file=sys.stderr,
            flush=True,
        )
    return record, t.state()


def _model_label(model: dict[str, Any]) -> str:
    if "factory" in model:
        return f"{model['factory']}({model.get('params', {})})"
    return f"{model['family']} {model.get('widths') or model.get('channels')}"


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

    if opts.ray_address is not None:  # a cluster that cannot be reached: before any store
        _join_ray(opts, vspec)
    _check_resources(vspec, opts.ray_address)
    rdb = open_storage(storage, spec.search.heartbeat_grace)
    study, study_name = prepare_study(vspec, rdb, opts.fresh)
    complete = _finished(study)
    budget = opts.time_budget or spec.search.time_budget
    deadline = t0 + budget if budget else None
    scheduler = _scheduler(vspec, study)
    stopped: dict[str, int] = scheduler.stopped if scheduler is not None else {}
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
    tty = opts.progress and sys.stderr.isatty()
    driver = _driver(n_trials, complete, spec, mirror, opts.progress and not tty, stopped)
    view = searcher = None
    status = "FAILED"
    try:
        if complete < n_trials and (deadline is None or time.time() < deadline):
            teachers = {}
            if vspec.distills:  # once, here, rather than by whichever trials start first
                teacher, state = train_teacher(vspec, progress=opts.progress)
                teachers[teacher["key"]] = state  # to every trial through the object store
                study.set_user_attr("teacher", teacher)
                if mirror is not None:
                    mirror.log_teacher(teacher)
            _ray_init(opts.ray_address, opts.runtime_env, tuple(vspec.import_paths))
            searcher = searcher_class()(
                space=partial(_define_by_run, vspec=vspec),
                metric=[spec.metric, "params"],
                mode=["max" if MAXIMIZE[spec.metric] else "min", "min"],
                # a resumed study reseeds, so as not to replay the first run's draws
                sampler=make_sampler(vspec, seed_offset=len(study.trials)),
                study_name=study_name,
                storage=rdb,
                n_trials=n_trials,
                checkpoints=driver.checkpoints,
                session=session,
                stopped=stopped if scheduler is not None else None,
                deadline=deadline,
            )
            from prunetune.search._worker import trainable

            res = spec.search.resources
            tuner = tune.Tuner(
                tune.with_resources(
                    tune.with_parameters(
                        trainable,
                        threads=max(1, int(res.cpu)),
                        paths=tuple(vspec.import_paths),
                        teachers=teachers,
                        # a rung's epoch travels at once, so the scheduler decides on time
                        flush_epochs=tuple(scheduler.rungs.levels) if scheduler else (),
                    ),
                    {"cpu": res.cpu, "gpu": res.gpu},
                ),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=-1,  # the searcher stops once the study has n_trials COMPLETE
                    max_concurrent_trials=opts.max_concurrent or spec.search.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}-{session[:6]}",
                    storage_path=opts.storage_path or str(workdir / "ray_results"),
                    verbose=0,
                    stop=driver,
                    callbacks=[driver],
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            if tty:
                from rich.live import Live

                view = Live(driver.render(), refresh_per_second=2, get_renderable=driver.render)
                view.start()
            tuner.fit()
        out_of_time = deadline is not None and time.time() >= deadline
        status = "FINISHED" if _finished(study) >= n_trials or out_of_time else "FAILED"
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
    from prunetune.search._front import front_of_study

    front = front_of_study(study, mirror.runs if mirror is not None else None)
    rows = [
        {
            "trial": r.trial,
            spec.metric: r.val_value,
            "score": r.measured[0],  # type: ignore[index]
            "params": int(r.params_kept),
            "method": r.method,
            "collapsed": r.collapsed,
            "params_sampled": dict(study.trials[r.trial].params),
        }
        for r in front.records
        if r.measured is not None
    ]
    on_front = {front.records[g[0]].trial for g in front.groups}  # each point once
    outcome = StudyOutcome(
        study_name=study_name,
        storage=storage,
        tracking_uri=tracking_uri,
        parent_run_id=mirror.parent_run_id if mirror is not None else None,
        completed=_count(study, "COMPLETE"),
        failed=_count(study, "FAIL"),
        stopped=len(driver.stopped_here),
        collapsed=front.collapsed,
        trials=rows,
        front=[r for r in rows if r["trial"] in on_front],
        wall_seconds=time.time() - t0,
        overheads=driver.overheads,
        results=list(driver.done),
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
    if len(driver.failures) > spec.search.max_failures:
        raise StudyFailed(
            f"{len(driver.failures)} trials failed (search.max_failures is "
            f"{spec.search.max_failures}); last error: {driver.failures[-1]}",
            outcome,
        )
    if mirror is not None and mirror.error is not None:
        raise ConfigError(f"MLflow tracking at {tracking_uri} failed: {mirror.error}")
    return outcome


def _scheduler(vspec: ValidatedSpec, study: Any) -> Any:
    """The spec's early-stopping scheduler, its rungs rebuilt from the record (a resumed study
    keeps them: Ray does not restore a scheduler across driver runs here)."""
    sch = vspec.spec.search.scheduler
    if sch is None:
        return None
    from prunetune.search._moasha import MOASHA
    from prunetune.search._record import rung_history

    metric = vspec.spec.metric
    scheduler = MOASHA(
        metric=metric,
        mode="max" if MAXIMIZE[metric] else "min",
        size_metric="params",
        grace_epochs=sch.grace_epochs,
        reduction_factor=sch.reduction_factor,
        max_epochs=vspec.max_epochs,
    )
    scheduler.rebuild(*rung_history(study, metric))
    return scheduler


def _finished(study: Any) -> int:
    """Trials that count towards ``n_trials``: COMPLETE and PRUNED (stopped by a rung)."""
    return _count(study, "COMPLETE") + _count(study, "PRUNED")


def _count(study: Any, state: str) -> int:
    return sum(t.state.name == state for t in study.get_trials(deepcopy=False))


__all__ = ["RunOptions", "StudyFailed", "StudyOutcome", "run_study", "worker_runtime_env"]
