"""MLflow tracking: one parent run per study, one nested child run per trial.

The driver owns a :class:`StudyTracker`; ``start()`` returns a picklable
:class:`TrackingContext` (absolute tracking URI, experiment and parent run ids) that the
runner sends to every Ray worker, where a :class:`TrialTracker` logs one trial. A worker never
reads its own working directory or environment to find the store, so nothing lands in a stray
``./mlruns``.

Parent run: the spec as params and as ``spec.json`` (plus the YAML it came from), tags
``prunetune.study``, ``study``, ``dataset``, ``sampler``; after each completed trial
``pareto_front.{csv,json,png,html}``, the metric ``hypervolume`` stepped by trials completed,
and the tag ``pareto=true`` on exactly the non-dominated child runs; at the end, the final
front's runs get ``explain/`` figures.

Child run: the full trial config as params, per-epoch metrics (``step`` = epoch), final
metrics, per-layer density, and the compact model (``model/weights.pt`` — a state dict that
``torch.load(weights_only=True)`` reads — ``model/arch.json``, ``model/kept_units.json``).

SQLite is shared by up to ``max_concurrent`` writers: every write goes through
``log_batch`` with a fixed timestamp and is retried with backoff on "database is locked".

Example:
    >>> from prunetune.search.tracking import StudyTracker, TrialTracker
    >>> from prunetune.search.trial import run_trial
    >>> tracker = StudyTracker("sqlite:////tmp/demo/mlflow.db", "demo", "demo",
    ...                        spec={"dataset": "digits"}, spec_path=None, tags={})
    >>> ctx = tracker.start()                                          # doctest: +SKIP
    >>> cfg = {"train": {"epochs": 1}, "method": {"name": "gumbel"}}
    >>> t = TrialTracker(ctx, 0, cfg)                                  # doctest: +SKIP
    >>> run_id = t.finish(run_trial(cfg, t.log_epoch))                 # doctest: +SKIP
    >>> tracker.on_trial_complete(); tracker.finish()                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune.search import _mlflow as M
from prunetune.search._mlflow import resolve_tracking_uri

if TYPE_CHECKING:
    from prunetune.search._front import StudyFront
    from prunetune.search.trial import TrialResult

_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

log = logging.getLogger("prunetune.tracking")


@dataclass(frozen=True)
class TrackingContext:
    """Everything a worker needs to log a trial into the driver's study (picklable).

    A context from :meth:`StudyTracker.pending_context` has no ids yet: the driver is still
    creating (or resuming) the parent run while Ray starts the workers. A worker then finds the
    parent by its session tag (:meth:`resolve`) once the driver has tagged it.

    Attributes:
        tracking_uri: absolute URI (``sqlite:////abs/mlflow.db`` or ``http://host:port``).
        experiment_id: the study's MLflow experiment (None: not resolved yet).
        parent_run_id: the study's parent run; child runs nest under it (None: not resolved yet).
        study_name: the study's name (tag ``prunetune.study`` on every run).
        experiment: the experiment's name (to resolve a pending context).
        session: the driver session's token (tag ``prunetune.session`` on the parent run).
    """

    tracking_uri: str
    experiment_id: str | None
    parent_run_id: str | None
    study_name: str
    experiment: str = ""
    session: str = ""

    def resolve(self, client: Any, timeout: float = 300.0) -> TrackingContext:
        """This context with its ids, waiting for the driver to tag the parent run.

        Raises:
            TimeoutError: no parent run carries this session's tag within ``timeout`` seconds.
        """
        if self.parent_run_id is not None:
            return self
        if (done := _RESOLVED.get(self.session)) is not None:
            return done
        from dataclasses import replace

        deadline, pause = time.monotonic() + timeout, 0.05
        while True:
            exp = client.get_experiment_by_name(self.experiment)
            if exp is not None:
                runs = client.search_runs(
                    [exp.experiment_id],
                    f"tags.`{M.TAG_SESSION}` = '{self.session}'",
                    max_results=1,
                )
                if runs:
                    done = replace(
                        self, experiment_id=exp.experiment_id, parent_run_id=runs[0].info.run_id
                    )
                    _RESOLVED[self.session] = done
                    return done
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the study {self.study_name!r} has no parent run tagged "
                    f"{M.TAG_SESSION}={self.session} in experiment {self.experiment!r} of "
                    f"{self.tracking_uri} after {timeout:.0f} s; did the driver fail to start "
                    "tracking?"
                )
            time.sleep(pause)
            pause = min(1.0, pause * 1.5)


_RESOLVED: dict[str, TrackingContext] = {}  # per worker process: session → resolved context


class StudyTracker:
    """Driver side: the study's parent run and its Pareto front.

    Args:
        tracking_uri: where to log, as returned by :func:`resolve_tracking_uri`.
        experiment: MLflow experiment name (created if absent; for a SQLite store its
            artifacts go to ``<db dir>/mlartifacts``).
        study_name: the study; a parent run tagged ``prunetune.study=<study_name>`` in the
            experiment is resumed, otherwise one is created.
        spec: the validated study spec as a mapping (or a pydantic model).
        spec_path: the YAML file it came from, logged as an artifact if given.
        tags: extra tags for the parent run.
        explain: log interpretability figures for the front's runs.
        recorded: trial numbers the Optuna study holds COMPLETE; on resume, a FINISHED child
            run of any other trial (the driver died between the worker's last write and
            Optuna's record) is ended KILLED, like one left RUNNING.

    Example:
        >>> tracker = StudyTracker("sqlite:////tmp/s/mlflow.db", "s", "s", {}, None, {})
        >>> ctx = tracker.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        spec: Mapping[str, Any] | Any,
        spec_path: str | None,
        tags: Mapping[str, str] | None = None,
        explain: bool = True,
        recorded: set[int] | None = None,
    ) -> None:
        if "://" not in tracking_uri:
            raise ValueError(
                f"tracking_uri must be an absolute URI from resolve_tracking_uri(), "
                f"but got {tracking_uri!r}."
            )
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.study_name = study_name
        self.spec: dict[str, Any] = (
            spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec or {})
        )
        self.spec_path = spec_path
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._client: Any = None
        self._ctx: TrackingContext | None = None
        self._lock = threading.Lock()
        self._last_logged_count = -1
        self.resumed = False
        self.explain = explain  # log interpretability figures for Pareto-optimal trials
        self.recorded = recorded  # trial numbers the Optuna study holds as COMPLETE
        self._explained: set[str] = set()
        self.session = uuid.uuid4().hex
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None

    @property
    def context(self) -> TrackingContext:
        """The started context (waits for :meth:`start_in_background` to finish).

        Raises:
            RuntimeError: the tracker was never started.
            Exception: whatever starting it in the background raised.
        """
        if self._starter is not None:
            self._starter.join()
        if self._start_error is not None:
            raise self._start_error
        if self._ctx is None:
            raise RuntimeError("StudyTracker.start() must be called before using the tracker.")
        return self._ctx

    def pending_context(self) -> TrackingContext:
        """A context for workers before the parent run exists (see :meth:`TrackingContext.resolve`)."""
        return TrackingContext(
            self.tracking_uri, None, None, self.study_name, self.experiment, self.session
        )

    def start_in_background(self) -> None:
        """:meth:`start` in a thread, so that a fresh store's schema set-up (seconds for SQLite)
        overlaps Ray starting the workers; :attr:`context` waits for it. Only the first call
        starts anything."""
        if self._starter is not None or self._ctx is not None:
            return

        def run() -> None:
            try:
                self.start()
            except BaseException as e:  # re-raised by .context
                self._start_error = e

        self._starter = threading.Thread(target=run, name="mlflow-study-start", daemon=True)
        self._starter.start()

    @property
    def start_failed(self) -> bool:
        return self._start_error is not None

    @property
    def started(self) -> bool:
        """:meth:`start` ran or runs (in the background), whatever its outcome."""
        return self._starter is not None or self._ctx is not None

    def start(self) -> TrackingContext:
        """Create (or resume) the study's parent run; returns the context for workers."""
        c = self._client = M.client(self.tracking_uri)
        exp_id = M.get_or_create_experiment(c, self.experiment, self.tracking_uri)
        parent = M.find_study_run(c, self.study_name, [exp_id])
        spec_params = M.flatten(self.spec)
        if parent is not None:
            run_id = parent.info.run_id
            self.resumed = True
            M.retry(c.update_run, run_id, status="RUNNING")
            old = dict(parent.data.params)
            changed = sorted(
                k for k, v in spec_params.items() if k in old and old[k] != M.param_value(v)
            )
            new = {k: v for k, v in spec_params.items() if k not in old}
            extra_tags = {"prunetune.resumed": str(int(time.time()))}
            if changed:  # MLflow params are immutable; the current spec.json shows the change
                extra_tags["prunetune.spec_changed"] = ",".join(changed)[: M.MAX_TAG_LENGTH]
            M.log_batch(c, run_id, params=new, tags={**self._parent_tags(), **extra_tags})
            # Child runs still RUNNING belong to a driver that died (one driver per study):
            # their Optuna trials are marked FAIL by the runner, so end them here too. So are
            # FINISHED ones whose result the driver died before telling Optuna: the Optuna
            # study is the record, and MLflow's front must not count a trial it lacks.
            for child in M.trial_runs(c, parent):
                status = child.info.status
                trial = child.data.tags.get(M.TAG_TRIAL, "")
                unrecorded = (
                    status == "FINISHED"
                    and self.recorded is not None
                    and trial.isdigit()
                    and int(trial) not in self.recorded
                )
                if status == "RUNNING" or unrecorded:
                    why = "before Optuna recorded the trial" if unrecorded else ""
                    M.log_batch(
                        c,
                        child.info.run_id,
                        tags={M.TAG_FAILURE: f"interrupted: the driver stopped {why}".strip()},
                    )
                    M.retry(c.set_terminated, child.info.run_id, status="KILLED")
        else:
            run = M.retry(
                c.create_run,
                exp_id,
                tags={**self._parent_tags(), M.TAG_RUN_NAME: self.study_name},
                run_name=self.study_name,
            )
            run_id = run.info.run_id
            M.log_batch(c, run_id, params=spec_params)
        # Last: a pending worker context finds the parent by this tag, only after the sweep.
        M.retry(c.set_tag, run_id, M.TAG_SESSION, self.session)
        self._log_spec_files(run_id)
        self._ctx = TrackingContext(
            self.tracking_uri, exp_id, run_id, self.study_name, self.experiment, self.session
        )
        return self._ctx

    def _parent_tags(self) -> dict[str, str]:
        search = self.spec.get("search") or {}
        tags = {
            M.TAG_STUDY: self.study_name,
            M.TAG_ROLE: "study",
            "study": self.study_name,
            "dataset": str(self.spec.get("dataset", "")),
            "sampler": str(search.get("sampler", "")) if isinstance(search, Mapping) else "",
        }
        return {**self.tags, **{k: v for k, v in tags.items() if v}}

    def _log_spec_files(self, run_id: str) -> None:
        with tempfile.TemporaryDirectory(prefix="prunetune-spec-") as tmp:
            d = Path(tmp)
            (d / "spec.json").write_text(json.dumps(self.spec, indent=2, default=str) + "\n")
            if self.spec_path and Path(self.spec_path).is_file():
                shutil.copyfile(self.spec_path, d / "study.yaml")
            M.retry(self._client.log_artifacts, run_id, str(d), "spec")

    def on_trial_complete(self, explain: bool = False, figures: bool = True) -> StudyFront:
        """Recompute the front from every finished child run and publish it on the parent.

        Tags ``pareto=true`` on the front's runs and removes it from runs now dominated,
        rewrites ``pareto_front.{csv,json,png,html}``, and logs ``hypervolume`` (plus
        ``pareto_size``, ``trials_finished``, ``trials_failed``) at step = trials finished.
        Without ``figures`` only the table (csv/json), tags and metrics are refreshed. With
        ``explain`` (and the tracker's ``explain`` on), front runs not yet explained get their
        interpretability figures; :meth:`finish` does this for the final front, so their cost
        is not paid while the trials share the cores.

        Returns:
            the recomputed front (callers may ignore it).
        """
        from prunetune.search._front import spec_objectives, study_front, write_front_files
        from prunetune.search._objective import settings

        ctx = self.context
        with self._lock:
            c = self._client
            parent = M.retry(c.get_run, ctx.parent_run_id)
            runs = M.trial_runs(c, parent)
            o = self.spec.get("objectives") or {}
            logged_ref, logged_floor = spec_objectives(dict(parent.data.params))
            ref, floor = settings(
                o.get("metric") or "val_accuracy",
                o.get("reference_point"),
                o.get("min_val_accuracy"),
                o.get("max_val_loss"),
            )
            front = study_front(
                self.study_name,
                M.trial_records(runs),
                reference=ref or logged_ref,
                min_val_accuracy=floor if floor is not None else logged_floor,
            )
            on_front = front.front_run_ids
            for r in runs:
                has = r.data.tags.get(M.TAG_PARETO) == "true"
                if r.info.run_id in on_front and not has:
                    M.retry(c.set_tag, r.info.run_id, M.TAG_PARETO, "true")
                elif r.info.run_id not in on_front and M.TAG_PARETO in r.data.tags:
                    M.retry(c.delete_tag, r.info.run_id, M.TAG_PARETO)
            with tempfile.TemporaryDirectory(prefix="prunetune-front-") as tmp:
                write_front_files(front, Path(tmp), figures=figures)
                M.retry(c.log_artifacts, ctx.parent_run_id, tmp)
            if front.finished != self._last_logged_count:
                M.log_batch(
                    c,
                    ctx.parent_run_id,
                    metrics={
                        "hypervolume": front.hypervolume,
                        "pareto_size": len(front.front),
                        "trials_finished": front.finished,
                        "trials_failed": front.failed,
                    },
                    step=front.finished,
                    tags={"hypervolume_reference": json.dumps(list(front.reference))},
                )
                self._last_logged_count = front.finished
            if explain:
                self._explain_front(on_front)
            return front

    def _explain_front(self, on_front: set[str]) -> None:
        """Log pathway/importance/symmetry figures once for each run that reaches the front."""
        if not self.explain:
            return
        from prunetune.search.explain import log_explanations

        for run_id in sorted(on_front - self._explained):
            try:
                log_explanations(run_id, self.tracking_uri)
            except Exception as e:  # figures are a bonus; never fail the study for them
                log.warning("explaining run %s failed: %s", run_id, e)
            self._explained.add(run_id)

    def finish(self, status: str = "FINISHED") -> None:
        """Publish the final front, explain its runs and end the parent run with ``status``.

        Raises:
            ValueError: ``status`` is not FINISHED, FAILED or KILLED.
        """
        if status not in _RUN_STATUSES:
            raise ValueError(f"status must be one of {list(_RUN_STATUSES)}, but got {status!r}.")
        ctx = self.context
        try:
            self.on_trial_complete(explain=True)
        finally:
            M.retry(self._client.set_terminated, ctx.parent_run_id, status)


class TrialTracker:
    """Worker side: one trial's nested run. Works in any process given only the context.

    Args:
        ctx: from :meth:`StudyTracker.start`.
        trial_number: the trial's number in the study (tag ``prunetune.trial``).
        config: the trial config (mapping or ``TrialConfig``); logged flattened as params.

    Use as a context manager to mark the run failed if the block raises.

    Example:
        >>> with TrialTracker(ctx, 3, cfg) as t:                          # doctest: +SKIP
        ...     t.finish(run_trial(cfg, t.log_epoch))
    """

    def __init__(self, ctx: TrackingContext, trial_number: int, config: Mapping[str, Any] | Any):
        self._client = c = M.client(ctx.tracking_uri)
        self.ctx = ctx = ctx.resolve(c)
        self.trial_number = int(trial_number)
        flat = _flat_config(config)
        method = str(flat.get("method.name", ""))
        tags = {
            M.TAG_PARENT: ctx.parent_run_id,
            M.TAG_STUDY: ctx.study_name,
            M.TAG_ROLE: "trial",
            M.TAG_TRIAL: str(self.trial_number),
            "method": method,
            "dataset": str(flat.get("dataset", "")),
        }
        name = f"trial-{self.trial_number:04d}"
        run = M.retry(c.create_run, ctx.experiment_id, tags=tags, run_name=name)
        self.run_id: str = run.info.run_id
        M.log_batch(c, self.run_id, params=flat)
        self._last_step = 0
        self._last_ts = 0
        self._epochs_logged = 0
        self._done = False
        self._pending: list[tuple[int, dict[str, Any], int]] = []
        self._last_flush = time.monotonic()

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not self._done:
            self.fail(f"{type(exc).__name__}: {exc}")

    def log_epoch(self, row: Mapping[str, float]) -> None:
        """Per-epoch metrics (``loss``, ``val_accuracy``, ``density``, ``temperature``, …) at
        ``step`` = ``row["epoch"]`` (or the next step if the row has no epoch)."""
        step = int(row["epoch"]) if "epoch" in row else self._last_step + 1
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        ts = max(int(time.time() * 1000), self._last_ts + 1)
        self._pending.append((step, metrics, ts))
        self._last_ts = ts
        self._last_step = max(self._last_step, step)
        self._epochs_logged += 1
        # One store transaction per FLUSH_SECONDS, not per epoch: short epochs would otherwise
        # spend their time in SQLite writes (bench/search_scaling.py). Rows keep their own
        # step and timestamp, and finish()/fail() flush what is left.
        if time.monotonic() - self._last_flush >= self.FLUSH_SECONDS:
            self.flush()

    FLUSH_SECONDS = 2.0

    def flush(self) -> None:
        """Write buffered epoch rows in one batch."""
        from mlflow.entities import Metric

        rows, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        ms = [
            Metric(key=k, value=float(v), timestamp=ts, step=step)
            for step, metrics, ts in rows
            for k, v in metrics.items()
            if M._is_number(v)
        ]
        for part in M.chunks(ms, M.MAX_METRICS_PER_BATCH):
            M.retry(self._client.log_batch, self.run_id, metrics=part)

    def finish(self, result: TrialResult) -> str:
        """Log final metrics, per-layer density and the compact model; end the run FINISHED.

        Final metrics are logged at the last epoch's step, after the epoch rows, so they are
        the run's latest values (the exported model's, not the masked model's).

        Returns:
            the child run's id.
        """
        c = self._client
        if self._epochs_logged == 0:  # the caller did not stream epochs: log the history now
            for row in result.history:
                self.log_epoch(row)
        self.flush()
        metrics: dict[str, float] = {k: v for k, v in result.metrics.items()}
        for layer, d in (result.per_layer or {}).items():
            for k in ("density", "weight_density", "units", "units_dense", "kept", "total"):
                if k in d:
                    metrics[f"layer.{layer}.{k}"] = d[k]
        ts = max(int(time.time() * 1000), self._last_ts + 1)
        self._last_ts = M.log_batch(
            c, self.run_id, metrics=metrics, step=self._last_step, timestamp_ms=ts
        )
        with tempfile.TemporaryDirectory(prefix="prunetune-trial-") as tmp:
            _write_trial_files(result, Path(tmp))
            M.retry(c.log_artifacts, self.run_id, tmp)
        M.retry(c.set_terminated, self.run_id, "FINISHED")
        self._done = True
        return self.run_id

    def fail(self, reason: str) -> None:
        """End the run FAILED with ``reason`` in the tag ``prunetune.failure``."""
        self.flush()
        M.retry(self._client.set_tag, self.run_id, M.TAG_FAILURE, str(reason)[: M.MAX_TAG_LENGTH])
        M.retry(self._client.set_terminated, self.run_id, "FAILED")
        self._done = True


def _flat_config(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The trial config validated and flattened (``model.widths``, ``method.lam``…)."""
    from prunetune.search._errors import ConfigError
    from prunetune.search.trial import flat_config, parse_config

    try:
        return flat_config(parse_config(config))
    except ConfigError:  # invalid configs still get a run, so their failure is recorded
        raw = config.model_dump() if hasattr(config, "model_dump") else dict(config)
        return M.flatten(raw)


def _write_trial_files(result: TrialResult, d: Path) -> None:
    """``model/{weights.pt,arch.json,kept_units.json}``, ``metrics/config/history/per_layer.json``."""
    import torch

    def dump(name: str, obj: Any) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(obj, indent=2, default=float) + "\n")

    dump("metrics.json", result.metrics)
    dump("config.json", result.config)
    dump("history.json", result.history)
    dump("per_layer.json", result.per_layer)
    ex = result.export
    if ex is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in ex.model.state_dict().items()}
        (d / "model").mkdir(exist_ok=True)
        torch.save(state, d / "model" / "weights.pt")
        dump("model/arch.json", ex.arch)
        dump("model/kept_units.json", ex.kept_units)


__all__ = ["StudyTracker", "TrackingContext", "TrialTracker", "resolve_tracking_uri"]
