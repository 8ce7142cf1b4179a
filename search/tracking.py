"""MLflow mirror of a study, written by the driver: one parent run, one nested run per trial.

The Optuna study is the record; :class:`StudyMirror` copies it to MLflow, keyed by trial
number, on its own thread (the Tune event loop never waits for the store). Trial processes
never import MLflow. Parent run: the spec (params, ``spec/``), tags ``prunetune.study``,
``dataset``, ``sampler``, ``optuna_storage``; the front (``pareto_front.{csv,json,png,html}``,
``hypervolume`` at step = trials complete, ``pareto=true`` on the front's runs, ``trials.csv``:
every trial). Child run ``trial-NNNN``: the config as params, per-epoch metrics (step = epoch),
final metrics, tag ``collapsed=true`` when its model collapsed, per-layer
density and the checkpoint's files (``model/{weights,masks}.safetensors``: tensors only, the
masked dense model; ``model/{input,kept_units}.json``; ``{metrics,config,history,per_layer}.json``).

Example:
    >>> mirror = StudyMirror("sqlite:////tmp/s/mlflow.db", "s", "s", spec={}, storage="…")
    >>> mirror.start(study)                                   # doctest: +SKIP
    >>> mirror.trial_finished(0, result.metrics, "ckpt-dir")  # doctest: +SKIP
    >>> mirror.close()                                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prunetune.search import _mlflow as M
from prunetune.search._mlflow import resolve_tracking_uri

log = logging.getLogger("prunetune.tracking")


def _dataset_label(d: Any) -> str:
    """A built-in's name, or a data factory's name (default: its import path)."""
    if isinstance(d, Mapping):
        return str(d.get("name") or d.get("factory") or "")
    return str(d)


class StudyMirror:
    """Driver side: mirrors the Optuna study ``study_name`` into MLflow.

    Args:
        tracking_uri: absolute URI from :func:`resolve_tracking_uri`.
        experiment: MLflow experiment (created if absent; artifacts beside a SQLite store).
        study_name: the study; its parent run (tag ``prunetune.study``) is resumed if present.
        spec: the validated study spec as a mapping; ``spec_path`` the YAML it came from.
        storage: the Optuna storage URL (the registry reads the front from there).
        tags: extra parent-run tags. explain: figures for the final front's runs.
        session: this driver (the searcher's); grace: seconds after which a silent driver is
            gone (``search.heartbeat_grace``).
    """

    FIGURES_EVERY = 60.0  # seconds between front figures while trials run (they cost ~1.5 s)

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        spec: Mapping[str, Any],
        storage: str,
        spec_path: str | None = None,
        tags: Mapping[str, str] | None = None,
        explain: bool = True,
        session: str = "",
        grace: float = 60.0,
    ) -> None:
        if "://" not in tracking_uri:
            raise ValueError(
                "tracking_uri must be an absolute URI from resolve_tracking_uri(), "
                f"but got {tracking_uri!r}."
            )
        self.tracking_uri, self.experiment, self.study_name = tracking_uri, experiment, study_name
        self.spec, self.storage, self.spec_path = dict(spec), storage, spec_path
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.explain, self.session, self.grace = explain, session, grace
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.error: BaseException | None = None  # the first write that failed
        self.runs: dict[int, str] = {}  # trial number → child run id
        self._steps: dict[int, int] = {}
        self._study: Any = None
        self._c: Any = None
        self._figures_at = 0.0
        self._on_front: set[str] = set()  # run ids tagged pareto=true
        self._explained: set[str] = set()
        self._figured: set[str] | None = None  # the front the figures show
        self._q: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="mlflow-mirror", daemon=True)

    # -- events (queued; written in order on the mirror's thread) -----------------------------
    def start(self, study: Any) -> None:
        """Create or resume the parent run and backfill what an interrupted driver left out."""
        self._study = study
        self._thread.start()
        self._put(self._start)

    def trial_started(self, number: int, config: Mapping[str, Any]) -> None:
        self._put(self._trial_started, number, dict(config))

    def trial_epochs(self, number: int, rows: list[Mapping[str, Any]]) -> None:
        if rows:  # per-epoch rows; ``epoch`` is the step
            self._put(self._trial_epochs, number, list(rows))

    def trial_finished(self, number: int, metrics: Mapping[str, Any], checkpoint: Any) -> None:
        """End trial ``number``'s run FINISHED with its final metrics and checkpoint files
        (a directory or a ``ray.tune.Checkpoint``), then republish the front."""
        self._put(self._trial_finished, number, dict(metrics), checkpoint)
        self._put(self._publish, False)

    def tail(self) -> None:
        """No trial will start any more and a core idles: figures and explanations now."""
        self._put(self._publish, True)

    def trial_stopped(self, number: int, epoch: int) -> None:
        """An early-stopping rung stopped trial ``number`` after ``epoch``: its run ends
        FINISHED, tagged with that epoch (its epochs are already logged)."""
        self._put(self._trial_stopped, number, int(epoch))

    def log_teacher(self, teacher: dict[str, Any]) -> None:
        """The study's distillation teacher on the parent run: ``teacher_val_accuracy`` (or
        loss), ``teacher_test_…``, ``teacher_params`` metrics and a ``teacher_key`` tag."""
        self._put(self._log_teacher, dict(teacher))

    def _log_teacher(self, teacher: dict[str, Any]) -> None:
        metrics = {
            f"teacher_{k}": float(v)
            for k, v in teacher.items()
            if k.startswith(("val_", "test_")) or k in ("params", "seconds")
        }
        for k, v in metrics.items():
            self._c.log_metric(self.parent_run_id, k, v)
        self._c.set_tag(self.parent_run_id, "teacher_key", str(teacher.get("key", "")))

    def trial_failed(self, number: int, reason: str, status: str = "FAILED") -> None:
        self._put(self._trial_failed, number, reason, status)

    def close(self, status: str = "FINISHED") -> None:
        """Write what is queued and the final front, end the parent run with ``status``.

        Raises:
            ValueError: ``status`` is not FINISHED, FAILED or KILLED.
            Exception: starting the mirror failed.
        """
        if status not in (ok := ("FINISHED", "FAILED", "KILLED")):
            raise ValueError(f"status must be one of {list(ok)}, but got {status!r}.")
        if self._thread.is_alive():
            self._put(self._end, status)
            self._q.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _put(self, fn: Callable[..., Any], *args: Any) -> None:
        self._q.put((fn, args))

    def _drain(self) -> None:
        while (item := self._q.get()) is not None:
            fn, args = item
            if self.parent_run_id is None and fn != self._start:
                continue  # no parent run: the runner stops the study and raises self.error
            try:
                fn(*args)
            except Exception as e:  # a trial's write is repaired by the next run's backfill
                if fn == self._start:
                    self.error = e
                log.warning("MLflow mirror: %s failed: %s", fn.__name__.strip("_"), e)

    # -- writers ------------------------------------------------------------------------------
    def _start(self) -> None:
        self._c = c = M.client(self.tracking_uri)
        self.experiment_id = M.get_or_create_experiment(c, self.experiment, self.tracking_uri)
        parent = M.find_study_run(c, self.study_name, [self.experiment_id])
        params = M.flatten(self.spec)
        tags = self._parent_tags()
        if parent is None:
            run = c.create_run(self.experiment_id, tags=tags, run_name=self.study_name)
            self.parent_run_id = run.info.run_id
            M.log_batch(c, self.parent_run_id, params=params)
        else:
            self.parent_run_id = parent.info.run_id
            c.update_run(self.parent_run_id, status="RUNNING")
            old = dict(parent.data.params)
            changed = [k for k, v in params.items() if k in old and old[k] != M.param_value(v)]
            if changed:  # params are immutable; spec/spec.json shows the current spec
                tags["prunetune.spec_changed"] = ",".join(sorted(changed))
            new = {k: v for k, v in params.items() if k not in old}
            M.log_batch(c, self.parent_run_id, params=new, tags=tags)
            self._backfill(parent)
        c.log_dict(self.parent_run_id, self.spec, "spec/spec.json")
        if self.spec_path and Path(self.spec_path).is_file():
            c.log_artifact(self.parent_run_id, self.spec_path, "spec")

    def _parent_tags(self) -> dict[str, str]:
        search = self.spec.get("search") or {}
        tags = {
            M.TAG_STUDY: self.study_name,
            M.TAG_ROLE: "study",
            "study": self.study_name,
            "dataset": str(self.spec.get("dataset", "")),
            "sampler": str(search.get("sampler", "")),
            "optuna_storage": self.storage,
        }
        return {**self.tags, **{k: v for k, v in tags.items() if v}}

    def _backfill(self, parent: Any, final: bool = False) -> None:
        """Make the mirror match the record after an interrupted driver.

        A COMPLETE trial without a FINISHED run gets one from the record and its checkpoint
        once its driver is known to be gone (its beat is stale, or it is this driver): a live
        driver mirrors its own trials. At the end (``final``) this waits for such drivers to
        finish or go stale. A run left RUNNING whose trial is no longer running ends KILLED.
        """
        from prunetune.search._record import (
            ATTR_CHECKPOINT,
            ATTR_CONFIG,
            ATTR_DRIVER,
            ATTR_RESULT,
            driver_alive,
        )

        deadline = time.monotonic() + (self.grace if final else 0.0)
        while True:
            runs = {int(r.data.tags.get(M.TAG_TRIAL, -1)): r for r in M.trial_runs(self._c, parent)}
            waiting = False
            for t in self._study.get_trials(deepcopy=False):
                run = runs.get(t.number)
                if run is not None:
                    self.runs[t.number] = run.info.run_id
                    self._steps.setdefault(t.number, 0)
                    if run.data.tags.get(M.TAG_PARETO) == "true":
                        self._on_front.add(run.info.run_id)
                state, status = t.state.name, run.info.status if run is not None else None
                if state == "COMPLETE" and status != "FINISHED":
                    driver = t.user_attrs.get(ATTR_DRIVER)
                    if driver != self.session and driver_alive(self._study, driver, self.grace):
                        waiting = True
                        continue
                    log.info("mirroring trial %d, which its driver did not", t.number)
                    self._trial_started(t.number, t.user_attrs.get(ATTR_CONFIG) or {})
                    metrics = dict(zip(self._study.metric_names or (), t.values, strict=False))
                    metrics.update(t.user_attrs.get(ATTR_RESULT) or {})
                    self._trial_finished(t.number, metrics, t.user_attrs.get(ATTR_CHECKPOINT))
                elif state not in ("RUNNING", "COMPLETE") and status == "RUNNING":
                    self._trial_failed(t.number, "interrupted: its driver stopped", "KILLED")
            if not waiting or time.monotonic() > deadline:
                return
            time.sleep(1.0)

    def _trial_started(self, number: int, config: dict[str, Any]) -> None:
        if number in self.runs:
            return
        tags = {
            M.TAG_PARENT: self.parent_run_id,
            M.TAG_STUDY: self.study_name,
            M.TAG_ROLE: "trial",
            M.TAG_TRIAL: str(number),
            "method": str((config.get("method") or {}).get("name", "")),
            "dataset": _dataset_label(config.get("dataset", "")),
        }
        run = self._c.create_run(self.experiment_id, tags=tags, run_name=f"trial-{number:04d}")
        self.runs[number], self._steps[number] = run.info.run_id, 0
        M.log_batch(self._c, run.info.run_id, params=M.flatten(config))

    def _trial_epochs(self, number: int, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [
            Metric(k, float(v), ts, int(r["epoch"]))
            for r in rows
            for k, v in r.items()
            if k != "epoch" and M.is_number(v)
        ]
        self._c.log_batch(self.runs[number], metrics=ms)
        self._steps[number] = max(self._steps[number], *(int(r["epoch"]) for r in rows))

    def _trial_finished(self, number: int, metrics: dict[str, Any], checkpoint: Any) -> None:
        from prunetune.search._record import is_collapsed

        run_id, c = self.runs[number], self._c
        with _checkpoint_dir(checkpoint) as d:
            if d is not None:
                config = json.loads((d / "config.json").read_text())
                done = set(c.get_run(run_id).data.params)
                M.log_batch(
                    c, run_id, params={k: v for k, v in M.flatten(config).items() if k not in done}
                )
                for layer, stats in json.loads((d / "per_layer.json").read_text()).items():
                    metrics.update({f"layer.{layer}.{k}": v for k, v in stats.items()})
                c.log_artifacts(run_id, str(d))
        # at the last epoch's step, after the epoch rows: the run's latest values are final
        tags = {M.TAG_COLLAPSED: "true"} if is_collapsed(metrics) else None
        M.log_batch(c, run_id, metrics=metrics, step=self._steps.get(number, 0), tags=tags)
        c.set_terminated(run_id, "FINISHED")

    def _trial_stopped(self, number: int, epoch: int) -> None:
        if (run_id := self.runs.get(number)) is not None:
            self._c.set_tag(run_id, M.TAG_STOPPED, str(epoch))
            self._c.set_terminated(run_id, "FINISHED")

    def _trial_failed(self, number: int, reason: str, status: str) -> None:
        if (run_id := self.runs.get(number)) is not None:
            self._c.set_tag(run_id, M.TAG_FAILURE, str(reason)[: M.MAX_TAG_LENGTH])
            self._c.set_terminated(run_id, status)

    def _publish(self, final: bool) -> None:
        """The front, from the record, onto the parent run and the trials' ``pareto`` tags."""
        from prunetune.search._front import front_of_study, write_front_files

        if not final and any(item and item[0] == self._publish for item in list(self._q.queue)):
            return  # a later update is queued: publish once, for both
        c, front = self._c, front_of_study(self._study, self.runs)
        on = front.front_run_ids
        for run_id in on - self._on_front:
            c.set_tag(run_id, M.TAG_PARETO, "true")
        for run_id in self._on_front - on:
            c.delete_tag(run_id, M.TAG_PARETO)
        self._on_front = set(on)
        # figures (~1 s of CPU) at most every FIGURES_EVERY while trials run, then once per front
        due = time.monotonic() - self._figures_at > self.FIGURES_EVERY
        figures = (final and on != self._figured) or (not final and due)
        with tempfile.TemporaryDirectory(prefix="prunetune-front-") as tmp:
            write_front_files(front, Path(tmp), figures=figures)
            c.log_artifacts(self.parent_run_id, tmp)
        if figures:
            self._figures_at, self._figured = time.monotonic(), set(on)
        counts = {
            "pareto_size": len(front.groups),  # distinct points: identical ones count once
            "trials_collapsed": front.collapsed,
            "trials_failed": front.failed,
        }
        metrics = {"hypervolume": front.hypervolume, "trials_finished": front.finished, **counts}
        reference = {"hypervolume_reference": json.dumps(list(front.reference))}
        M.log_batch(c, self.parent_run_id, metrics=metrics, step=front.finished, tags=reference)
        if final and self.explain:  # each run of a final (or tail) front once
            from prunetune.explain import UnsupportedModelError
            from prunetune.search.explain import log_explanations

            for run_id in sorted(on - self._explained):
                # the record may tell a trial before its run's files are mirrored: next time
                if c.get_run(run_id).info.status != "FINISHED":
                    continue
                try:
                    log_explanations(run_id, self.tracking_uri)
                except UnsupportedModelError as e:  # a graph, not a chain: no figures, no alarm
                    log.info("no explanations for run %s: %s", run_id, e)
                except Exception as e:  # figures are a bonus; never fail the study for them
                    log.warning("explaining run %s failed: %s", run_id, e)
                self._explained.add(run_id)

    def _end(self, status: str) -> None:
        self._backfill(self._c.get_run(self.parent_run_id), final=True)
        self._publish(final=True)
        self._c.set_terminated(self.parent_run_id, status)


@contextlib.contextmanager
def _checkpoint_dir(cp: Any) -> Iterator[Path | None]:
    """The checkpoint's files in a local directory: from ``None``, a local path, or a Tune
    Checkpoint or its URI (downloaded when it lives on shared storage)."""
    if cp is None or (isinstance(cp, str | Path) and Path(cp).is_dir()):
        yield None if cp is None else Path(cp)
        return
    from ray.tune import Checkpoint

    with (cp if isinstance(cp, Checkpoint) else Checkpoint(str(cp))).as_directory() as d:
        yield Path(d)


__all__ = ["StudyMirror", "resolve_tracking_uri"]
