"""Private MLflow plumbing shared by tracking, registry and the CLI.

One place knows the tag names, how a study's runs are found, how URIs are resolved and how
writes are retried when SQLite is busy. MLflow is imported lazily (STYLE.md §11).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prunetune.search._errors import ConfigError
from prunetune.search._objective import metric_of, to_score

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("prunetune.search")

# Tags. `mlflow.parentRunId` makes the UI nest trial runs under their study's run.
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_STUDY = "prunetune.study"
TAG_ROLE = "prunetune.role"  # "study" on the parent run, "trial" on each child run
TAG_TRIAL = "prunetune.trial"
TAG_FAILURE = "prunetune.failure"
TAG_PARETO = "pareto"
TAG_SESSION = "prunetune.session"  # the driver session that holds the parent run now

# MLflow's per-call limits (mlflow.utils.validation).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000

T = TypeVar("T")


def quiet() -> None:
    """No progress bars on artifact transfers (they garble CLI output and test logs)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (tracking and registry), never to global state."""
    quiet()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# --------------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: str | None, workdir: str | os.PathLike[str]) -> str:
    """The tracking URI every process of a study uses, made absolute.

    Precedence: ``uri`` (CLI flag or the spec's ``tracking.uri``), then
    ``$MLFLOW_TRACKING_URI``, then ``sqlite:///<workdir>/mlflow.db`` (artifacts then go to
    ``<workdir>/mlartifacts``). A relative SQLite or file path is resolved against ``workdir``
    here, once, so Ray workers never depend on their own working directory.

    Raises:
        ConfigError: an in-memory SQLite URI, which other processes cannot share.

    Example:
        >>> resolve_tracking_uri(None, "/tmp/study")  # doctest: +SKIP
        'sqlite:////tmp/study/mlflow.db'
    """
    base = Path(workdir).expanduser().resolve()
    text = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not text:
        return f"sqlite:///{base / 'mlflow.db'}"
    if text.startswith("sqlite:"):
        if not text.startswith("sqlite:///") or text[len("sqlite:///") :].split("?")[0] in (
            "",
            ":memory:",
        ):
            raise ConfigError(
                "tracking URI must name a SQLite file (e.g. sqlite:///mlflow.db) so that trial "
                f"workers can write to it, but got {text!r}."
            )
        path, sep, query = text[len("sqlite:///") :].partition("?")
        if not path.startswith("/"):
            path = str((base / path).resolve())
        return f"sqlite:///{path}{sep}{query}"
    if text.startswith("file:"):
        path = text[len("file:") :].removeprefix("//")
        p = Path(path)
        return (p if p.is_absolute() else base / p).resolve().as_uri()
    if "://" not in text:  # a bare directory: MLflow's file store
        p = Path(text).expanduser()
        return (p if p.is_absolute() else base / p).resolve().as_uri()
    return text


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?")[0])


def existing_client(tracking_uri: str) -> MlflowClient:
    """A client for reading a store that must already exist (MLflow would silently create an
    empty SQLite database, e.g. in the working directory, when fetching from a wrong path).

    Raises:
        ConfigError: a ``sqlite:///`` URI whose file does not exist.
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise ConfigError(
            f"no MLflow store at {db} (tracking URI {tracking_uri!r}); pass the study's "
            "tracking URI (--tracking-uri / tracking_uri=) or set MLFLOW_TRACKING_URI."
        )
    return client(tracking_uri)


def default_artifact_root(tracking_uri: str) -> str | None:
    """``<db dir>/mlartifacts`` for a SQLite store; ``None`` lets a server or file store decide."""
    db = sqlite_path(tracking_uri)
    return str(db.parent / "mlartifacts") if db is not None else None


# --------------------------------------------------------------------------- retries

_TRANSIENT = ("database is locked", "database table is locked", "sqlite_busy", "deadlock")


def is_transient(exc: BaseException) -> bool:
    """A write that failed because another process held the SQLite lock (retrying is safe:
    the failed transaction was rolled back)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(s in str(e).lower() for s in _TRANSIENT):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 12,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    **kwargs: Any,
) -> T:
    """Call ``fn``; on a transient lock error wait (exponential backoff with jitter) and retry.

    SQLite already waits up to MLflow's ``busy_timeout`` (20 s) for a lock, but a deferred
    transaction that must upgrade from reading to writing fails at once with "database is
    locked"; with eight trials writing at the same time that happens, and this retries it.
    """
    delay = base_delay
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt == attempts - 1 or not is_transient(e):
                raise
            log.debug("%s: %s; retry %d in %.2fs", getattr(fn, "__name__", fn), e, attempt, delay)
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, max_delay)
    raise AssertionError("unreachable")  # pragma: no cover


def chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_batch(
    c: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    step: int = 0,
    timestamp_ms: int | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Log metrics, params and tags in as few ``log_batch`` calls as MLflow's limits allow.

    Every metric carries one timestamp fixed before the first attempt, so a retried batch
    writes the same rows, never duplicates. Non-numeric metric values are skipped.

    Returns:
        the timestamp (ms) the metrics were logged with.
    """
    from mlflow.entities import Metric, Param, RunTag

    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    ms = [
        Metric(key=k, value=float(v), timestamp=ts, step=int(step))
        for k, v in (metrics or {}).items()
        if _is_number(v)
    ]
    ps = [Param(k, param_value(v)) for k, v in (params or {}).items()]
    ts_ = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in (tags or {}).items()]
    for part in chunks(ps, MAX_PARAMS_PER_BATCH):
        retry(c.log_batch, run_id, params=part)
    for part in chunks(ts_, MAX_PARAMS_PER_BATCH):
        retry(c.log_batch, run_id, tags=part)
    for part in chunks(ms, MAX_METRICS_PER_BATCH):
        retry(c.log_batch, run_id, metrics=part)
    return ts


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def param_value(v: Any) -> str:
    """Strings as they are, everything else as JSON (so lists and ``None`` parse back)."""
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:MAX_PARAM_LENGTH]


def parse_param(s: str | None) -> Any:
    if s is None:
        return None
    try:
        return json.loads(s)
    except (json.JSONDecodeError, TypeError):
        return s


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- study runs


def get_or_create_experiment(c: MlflowClient, name: str, tracking_uri: str) -> str:
    """Id of the active experiment ``name``, created (artifacts beside a SQLite store) if absent.

    Raises:
        ConfigError: the experiment exists but is deleted.
    """
    exp = retry(c.get_experiment_by_name, name)
    if exp is None:
        try:
            return retry(
                c.create_experiment,
                name,
                artifact_location=default_artifact_root(tracking_uri),
                # the MLflow 3 UI then opens on its "model training" views, not GenAI
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        except Exception:
            exp = retry(c.get_experiment_by_name, name)  # created meanwhile by another process
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ConfigError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or choose another "
            "tracking.experiment."
        )
    return str(exp.experiment_id)


def search_all(
    c: MlflowClient,
    experiment_ids: list[str],
    filter_string: str,
    order_by: list[str] | None = None,
) -> list[Run]:
    """Every run matching ``filter_string`` (all pages)."""
    out: list[Run] = []
    token = None
    while True:
        page = retry(
            c.search_runs,
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _active_experiment_ids(c: MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = retry(c.search_experiments, max_results=1000, page_token=token)
        ids.extend(str(e.experiment_id) for e in page)
        token = page.token
        if not token:
            return ids


def find_study_run(
    c: MlflowClient, study: str, experiment_ids: list[str] | None = None
) -> Run | None:
    """The study's parent run (tag ``prunetune.study``), the most recently started if several."""
    ids = experiment_ids or _active_experiment_ids(c)
    if not ids:
        return None
    runs = search_all(
        c,
        ids,
        f"tags.`{TAG_STUDY}` = {_quote(study)} and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def require_study_run(c: MlflowClient, study: str, tracking_uri: str) -> Run:
    """Like :func:`find_study_run`, but a missing study is a readable error."""
    run = find_study_run(c, study)
    if run is None:
        raise ConfigError(
            f"no study named {study!r} in the MLflow store {tracking_uri!r} (no run tagged "
            f"{TAG_STUDY}={study}); run `prunetune search` first or pass --tracking-uri."
        )
    return run


def trial_runs(c: MlflowClient, parent: Run) -> list[Run]:
    """All child runs of a study's parent run, any status."""
    return search_all(
        c,
        [parent.info.experiment_id],
        f"tags.`{TAG_PARENT}` = {_quote(parent.info.run_id)}",
        order_by=["attributes.start_time ASC"],
    )


def _quote(s: str) -> str:
    return "'" + s.replace("'", "\\'") + "'"


# Parameters worth showing beside a trial (the rest is one click away in the run).
_KEY_PARAMS = (
    "model.family",
    "model.widths",
    "model.channels",
    "model.activation",
    "train.epochs",
    "train.lr",
    "train.batch_size",
    "train.optimizer",
    "train.weight_decay",
)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow recorded it (plain Python scalars)."""

    run_id: str
    trial: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics.get("val_accuracy", math.nan))

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics.get("test_accuracy", math.nan))

    @property
    def metric(self) -> str:
        """The first objective this trial logged: ``val_accuracy`` or ``val_loss``."""
        return metric_of(self.metrics)

    @property
    def val_value(self) -> float:
        return float(self.metrics.get(self.metric, math.nan))

    @property
    def test_value(self) -> float:
        return float(self.metrics.get("test_" + self.metric[4:], math.nan))

    @property
    def params_kept(self) -> float:
        return float(self.metrics.get("params", math.nan))

    @property
    def method(self) -> str:
        return self.params.get("method.name", self.tags.get("method", ""))

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def point(self) -> tuple[float, float] | None:
        """``(score, params)`` of a finished trial, else ``None`` (excluded); the score is
        ``val_accuracy``, or ``-val_loss`` for a regression trial (see ``_objective``)."""
        if not self.finished:
            return None
        p = (to_score(self.metric, self.val_value), self.params_kept)
        return p if all(math.isfinite(v) for v in p) else None

    def hparams(self) -> dict[str, Any]:
        """The method's hyperparameters plus the key model/training ones, parsed from params."""
        keys = [k for k in sorted(self.params) if k.startswith("method.")]
        keys += [k for k in _KEY_PARAMS if k in self.params]
        return {k: parse_param(self.params[k]) for k in keys}

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "trial": self.trial,
            "run_id": self.run_id,
            "method": self.method,
            "params": _int(m.get("params")),
            "params_dense": _int(m.get("params_dense")),
            "density": m.get("density"),
            "val_accuracy": m.get("val_accuracy"),
            "test_accuracy": m.get("test_accuracy"),
            "val_loss": m.get("val_loss"),
            "test_loss": m.get("test_loss"),
            "hparams": self.hparams(),
        }


def _int(v: float | None) -> int | None:
    return None if v is None or not math.isfinite(v) else round(v)


def trial_records(runs: Iterable[Run]) -> list[TrialRecord]:
    """Records of child runs; if a trial number was logged twice (a retried trial), the
    finished attempt started last wins."""
    by_trial: dict[int, TrialRecord] = {}
    extra: list[TrialRecord] = []
    for r in runs:
        tags = dict(r.data.tags)
        try:
            n = int(tags.get(TAG_TRIAL, ""))
        except ValueError:
            n = -1
        rec = TrialRecord(
            run_id=r.info.run_id,
            trial=n,
            status=r.info.status,
            metrics={k: float(v) for k, v in r.data.metrics.items()},
            params=dict(r.data.params),
            tags=tags,
            start_time=int(r.info.start_time or 0),
        )
        if n < 0:
            extra.append(rec)
            continue
        old = by_trial.get(n)
        if old is None or (rec.finished, rec.start_time) >= (old.finished, old.start_time):
            by_trial[n] = rec
    return sorted([*by_trial.values(), *extra], key=lambda t: (t.trial, t.start_time))
