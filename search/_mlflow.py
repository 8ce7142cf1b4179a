"""Private MLflow plumbing shared by the mirror, the registry and the CLI: tag names, how a
study's runs are found, how URIs are resolved. MLflow is imported lazily (STYLE.md §11)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune.search._errors import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("prunetune.search")

# Tags. `mlflow.parentRunId` makes the UI nest trial runs under their study's run.
TAG_PARENT = "mlflow.parentRunId"
TAG_STUDY = "prunetune.study"
TAG_ROLE = "prunetune.role"  # "study" on the parent run, "trial" on each child run
TAG_TRIAL = "prunetune.trial"
TAG_FAILURE = "prunetune.failure"
TAG_PARETO = "pareto"
TAG_STOPPED = "stopped_at_epoch"  # an early-stopping rung stopped the trial after this epoch
TAG_COLLAPSED = "collapsed"  # "true": the trial's model collapsed (finished, never on a front)
MAX_PARAM_LENGTH, MAX_TAG_LENGTH = 6000, 8000  # MLflow's (mlflow.utils.validation)


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (tracking and registry), never to global state."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # garbles the CLI
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
    path = tracking_uri.removeprefix("sqlite:///")
    return Path(path.split("?")[0]) if path != tracking_uri else None


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


def log_batch(
    c: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    step: int = 0,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Log metrics (one timestamp; non-numbers skipped), params and tags in one call (MLflow
    splits it into batches within its limits)."""
    from mlflow.entities import Metric, Param, RunTag

    ts = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), ts, int(step)) for k, v in (metrics or {}).items() if is_number(v)
        ],
        params=[Param(k, param_value(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in (tags or {}).items()],
    )


def is_number(v: Any) -> bool:
    return isinstance(v, int | float)  # bools are ints: logged as 0/1


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
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(
                name,
                artifact_location=default_artifact_root(tracking_uri),
                # the MLflow 3 UI then opens on its "model training" views, not GenAI
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        except Exception:
            exp = c.get_experiment_by_name(name)  # created meanwhile by another process
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ConfigError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or choose another "
            "tracking.experiment."
        )
    return str(exp.experiment_id)


def search_all(c: MlflowClient, ids: list[str], filter_string: str, order: str) -> list[Run]:
    """Every run matching ``filter_string`` (up to MLflow's 50,000), by start time ``order``."""
    return list(
        c.search_runs(ids, filter_string, max_results=50_000, order_by=[f"start_time {order}"])
    )


def find_study_run(
    c: MlflowClient, study: str, experiment_ids: list[str] | None = None
) -> Run | None:
    """The study's parent run (tag ``prunetune.study``), the most recently started if several."""
    ids = experiment_ids or [e.experiment_id for e in c.search_experiments(max_results=50_000)]
    where = f"tags.`{TAG_STUDY}` = {_quote(study)} and tags.`{TAG_ROLE}` = 'study'"
    runs = search_all(c, ids, where, "DESC") if ids else []
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
    where = f"tags.`{TAG_PARENT}` = {_quote(parent.info.run_id)}"
    return search_all(c, [parent.info.experiment_id], where, "ASC")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "\\'") + "'"
