"""MLflow tracking against real stores: eight trials logged at the same time.

Trials are real ``run_trial`` calls on digits (tiny, two epochs), computed once here and
logged by eight loggers that know only the :class:`TrackingContext`: eight threads of this
process into SQLite (fast suite), and eight spawned processes into SQLite and into a real
``mlflow server`` started here on 127.0.0.1, loopback only (slow suite: spawning eight
interpreters that import torch and MLflow takes 30-80 s on two shared cores).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from prunetune.search._mlflow import param_value, resolve_tracking_uri
from prunetune.search.tracking import StudyTracker, TrackingContext, TrialTracker
from prunetune.search.trial import TrialResult, flat_config, parse_config, run_trial

N_WORKERS = 8
EPOCHS = 2
SPEC = {
    "name": "conc",
    "dataset": "digits",
    "search": {"sampler": "random"},
    "objectives": {"min_val_accuracy": 0.2, "reference_point": None},
}
CONFIGS = [
    {
        "dataset": "digits",
        "model": {"widths": [w]},
        "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.01, "seed": i},
        "method": {"name": "gumbel", "lam": lam, "granularity": gran},
        "threads": 1,
    }
    for i, (w, lam, gran) in enumerate(
        [
            (8, 0.01, "weight"),
            (16, 0.1, "weight"),
            (24, 1.0, "weight"),
            (32, 5.0, "weight"),
            (8, 0.5, "neuron"),
            (16, 2.0, "neuron"),
            (24, 0.05, "neuron"),
            (32, 10.0, "neuron"),
        ]
    )
]


# --------------------------------------------------------------------------- worker side


def _worker_init(cwd: str) -> None:
    """Workers start in an empty directory with no tracking URI in their environment:
    everything they need comes from the context."""
    os.chdir(cwd)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    torch.set_num_threads(1)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (import before the race)


def _ready(_: int) -> int:
    time.sleep(0.3)
    return os.getpid()


def _log_trial(args: tuple[TrackingContext, int, dict, TrialResult, float]) -> dict:
    ctx, number, config, result, start_at = args
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    tracker = TrialTracker(ctx, number, config)
    for row in result.history:
        tracker.log_epoch(row)
    run_id = tracker.finish(result)
    return {"run_id": run_id, "pid": os.getpid(), "t0": t0, "t1": time.time()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def results() -> list[TrialResult]:
    return [run_trial(cfg) for cfg in CONFIGS]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("worker-cwd")
    with mp.get_context("spawn").Pool(
        N_WORKERS, initializer=_worker_init, initargs=(str(cwd),)
    ) as p:
        assert len(set(p.map(_ready, range(N_WORKERS), chunksize=1))) >= 2
        yield p, cwd


@pytest.fixture(scope="module")
def db_template(tmp_path_factory) -> Path:
    """One migrated empty MLflow database; each store starts as a copy (migrations take ~7 s)."""
    from mlflow import MlflowClient

    d = tmp_path_factory.mktemp("template")
    MlflowClient(f"sqlite:///{d / 'mlflow.db'}").search_experiments()
    return d / "mlflow.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, db_template):
    """A real `mlflow server` on 127.0.0.1, stopped (with its workers) at the end."""
    from prunetune.search.cli_tracking import server_command, server_env, wait_for_server

    d = tmp_path_factory.mktemp("server")
    shutil.copyfile(db_template, d / "mlflow.db")
    port = _free_port()
    cmd = server_command(f"sqlite:///{d / 'mlflow.db'}", "127.0.0.1", port, workers=1)
    cmd[cmd.index("--artifacts-destination") + 1 :] = [str(d / "artifacts")]
    log = open(d / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc, timeout=240)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


# --------------------------------------------------------------------------- checks


def _dominates(a, b) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def _independent_front(runs) -> set[str]:
    """Non-dominated finished runs, straight from their logged metrics."""
    pts = {}
    for r in runs:
        m = r.data.metrics
        if r.info.status != "FINISHED" or "val_accuracy" not in m or "params" not in m:
            continue
        p = (m["val_accuracy"], m["params"])
        if all(math.isfinite(v) for v in p):
            pts[r.info.run_id] = p
    return {a for a, pa in pts.items() if not any(_dominates(pb, pa) for pb in pts.values())}


def _children(c, ctx: TrackingContext):
    return c.search_runs(
        [ctx.experiment_id], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'", max_results=1000
    )


def _log_concurrently(pool, ctx, results) -> list[dict]:
    """Eight loggers released at the same instant: a process pool, or threads if None."""
    start_at = time.time() + 1.0
    jobs = [(ctx, n, CONFIGS[n], results[n], start_at) for n in range(N_WORKERS)]
    if pool is None:
        with ThreadPoolExecutor(N_WORKERS) as ex:
            return list(ex.map(_log_trial, jobs))
    out = pool[0].map(_log_trial, jobs, chunksize=1)
    assert len({o["pid"] for o in out}) >= 2
    return out


def _check_nothing_lost(c, ctx, results, out, download_to: Path) -> None:
    # the eight loggers overlapped in time
    assert max(o["t0"] for o in out) < min(o["t1"] for o in out)
    runs = {r.info.run_id: r for r in _children(c, ctx)}
    assert set(runs) == {o["run_id"] for o in out}
    for n, o in enumerate(out):
        run = runs[o["run_id"]]
        res = results[n]
        assert run.info.status == "FINISHED"
        assert run.data.tags["prunetune.trial"] == str(n)
        assert run.data.tags["prunetune.study"] == ctx.study_name
        # the full flattened config as params
        flat = flat_config(parse_config(CONFIGS[n]))
        assert run.data.params == {k: param_value(v) for k, v in flat.items()}
        # final metrics are the run's latest values, exactly
        for k, v in res.metrics.items():
            assert run.data.metrics[k] == float(v), (n, k)
        for layer, d in res.per_layer.items():
            assert run.data.metrics[f"layer.{layer}.density"] == d["density"]
        # every epoch of every per-epoch metric, at step = epoch
        for key in res.history[0]:
            if key == "epoch":
                continue
            hist = c.get_metric_history(o["run_id"], key)
            per_epoch = {int(row["epoch"]): float(row[key]) for row in res.history if key in row}
            logged = {(m.step, m.value) for m in hist}
            assert {(s, v) for s, v in per_epoch.items()} <= logged, (n, key)
            expected = len(per_epoch) + (1 if key in res.metrics else 0)
            assert len(hist) == expected, (n, key, hist)
        # the compact model: tensors only, equal to the trial's
        dst = download_to / o["run_id"]
        dst.mkdir(parents=True)
        d = Path(c.download_artifacts(o["run_id"], "model", str(dst)))
        assert sorted(f.name for f in d.iterdir()) == ["arch.json", "kept_units.json", "weights.pt"]
        state = torch.load(d / "weights.pt", weights_only=True)
        ref = res.export.model.state_dict()
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)


def _fake_result(val: float, params: int) -> TrialResult:
    metrics = {
        "val_accuracy": val,
        "test_accuracy": val,
        "params": params,
        "params_dense": 4000,
        "density": params / 4000,
        "live_neurons": 1,
        "seconds": 0.1,
    }
    return TrialResult(metrics=metrics, history=[], config={}, export=None)


def _check_pareto_tags(c, tracker: StudyTracker, ctx: TrackingContext, download_to: Path) -> None:
    front = tracker.on_trial_complete()
    runs = _children(c, ctx)
    tagged = {r.info.run_id for r in runs if r.data.tags.get("pareto") == "true"}
    assert tagged == _independent_front(runs)
    assert tagged == front.front_run_ids and len(tagged) >= 1
    parent = c.get_run(ctx.parent_run_id)
    assert parent.data.metrics["trials_finished"] == N_WORKERS
    assert [m.step for m in c.get_metric_history(ctx.parent_run_id, "hypervolume")] == [N_WORKERS]
    files = {f.path for f in c.list_artifacts(ctx.parent_run_id)}
    assert {f"pareto_front.{e}" for e in ("csv", "json", "png", "html")} <= files
    d = Path(c.download_artifacts(ctx.parent_run_id, "", str(download_to / "parent")))
    data = json.loads((d / "pareto_front.json").read_text())
    assert {r["run_id"] for r in data["front"]} == tagged
    assert data["hypervolume"] == parent.data.metrics["hypervolume"]
    rows = list(csv.DictReader(io.StringIO((d / "pareto_front.csv").read_text())))
    assert sorted(int(r["trial"]) for r in rows) == sorted(r["trial"] for r in data["front"])
    assert {"val_accuracy", "test_accuracy", "params", "method", "method.lam"} <= set(rows[0])
    page = (d / "pareto_front.html").read_text()
    assert "method.lam" in page and "plotly" in page  # hover text carries the config
    assert (d / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A failed trial, a NaN trial and one that dominates every other: the tags move.
    with TrialTracker(ctx, 100, CONFIGS[0]) as t:
        best = t.finish(_fake_result(1.0, 1))
    TrialTracker(ctx, 101, CONFIGS[0]).fail("RuntimeError: boom")
    with TrialTracker(ctx, 102, CONFIGS[0]) as t:
        t.finish(_fake_result(math.nan, 0))
    tracker.on_trial_complete()
    runs = _children(c, ctx)
    tagged = {r.info.run_id for r in runs if r.data.tags.get("pareto") == "true"}
    assert tagged == {best} == _independent_front(runs)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.data.tags["prunetune.failure"] for r in failed] == ["RuntimeError: boom"]
    hv = c.get_metric_history(ctx.parent_run_id, "hypervolume")
    assert [m.step for m in hv] == [N_WORKERS, N_WORKERS + 1]
    # (1.0, 1 param) dominates the whole box up to the reference (0, largest params_dense)
    assert hv[-1].value == pytest.approx(1.0 * (4000 - 1))
    tracker.finish()
    assert c.get_run(ctx.parent_run_id).info.status == "FINISHED"


# --------------------------------------------------------------------------- tests


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x/m.db", tmp_path) == f"sqlite:///{tmp_path}/x/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri("sqlite:///flag.db", tmp_path) == f"sqlite:///{tmp_path}/flag.db"
    from prunetune.search._errors import ConfigError

    with pytest.raises(ConfigError, match="must name a SQLite file"):
        resolve_tracking_uri("sqlite://", tmp_path)


def _sqlite_study(tmp_path, db_template, name: str):
    shutil.copyfile(db_template, tmp_path / "mlflow.db")
    uri = resolve_tracking_uri(None, tmp_path)
    tracker = StudyTracker(uri, name, name, SPEC, None, {"owner": "test"})
    ctx = tracker.start()
    assert ctx.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    return uri, tracker, ctx


def test_retry_waits_out_a_real_sqlite_lock(tmp_path):
    import sqlite3
    import threading

    from prunetune.search._mlflow import is_transient, retry

    db = tmp_path / "lock.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("begin exclusive")  # nobody else may write (or read) now
    writer = sqlite3.connect(db, timeout=0.01, isolation_level=None)
    attempts = []

    def write() -> None:
        attempts.append(time.monotonic())
        writer.execute("insert into t values (1)")

    with pytest.raises(sqlite3.OperationalError, match="database is locked") as err:
        write()
    assert is_transient(err.value) and not is_transient(ValueError("bad value"))
    threading.Timer(0.5, holder.execute, ("commit",)).start()
    retry(write, base_delay=0.05)
    assert len(attempts) > 2
    assert writer.execute("select count(*) from t").fetchone() == (1,)
    with pytest.raises(ValueError, match="not transient"):
        retry(lambda: (_ for _ in ()).throw(ValueError("not transient")))


def test_eight_threads_log_concurrently_to_sqlite(tmp_path, results, db_template):
    from mlflow import MlflowClient

    uri, tracker, ctx = _sqlite_study(tmp_path, db_template, "conc")
    out = _log_concurrently(None, ctx, results)
    c = MlflowClient(uri)
    _check_nothing_lost(c, ctx, results, out, tmp_path / "downloads")
    # artifacts live beside the database, not in anybody's working directory
    assert (tmp_path / "mlartifacts" / out[0]["run_id"] / "artifacts" / "model").is_dir()
    parent = c.get_run(ctx.parent_run_id)
    assert parent.data.tags["prunetune.study"] == "conc"
    assert parent.data.tags["dataset"] == "digits"
    assert parent.data.tags["sampler"] == "random"
    assert parent.data.tags["owner"] == "test"
    assert parent.data.params["search.sampler"] == "random"
    assert parent.data.params["objectives.min_val_accuracy"] == "0.2"
    assert {f.path for f in c.list_artifacts(ctx.parent_run_id, "spec")} == {"spec/spec.json"}
    _check_pareto_tags(c, tracker, ctx, tmp_path)

    # resuming the study reuses its parent run
    again = StudyTracker(uri, "conc", "conc", SPEC, None, {}).start()
    assert again.parent_run_id == ctx.parent_run_id
    assert c.get_run(ctx.parent_run_id).info.status == "RUNNING"


@pytest.mark.slow
def test_eight_processes_log_concurrently_to_sqlite(tmp_path, pool, results, db_template):
    from mlflow import MlflowClient

    uri, tracker, ctx = _sqlite_study(tmp_path, db_template, "conc-proc")
    out = _log_concurrently(pool, ctx, results)
    c = MlflowClient(uri)
    _check_nothing_lost(c, ctx, results, out, tmp_path / "downloads")
    # workers wrote nothing into their own working directory (no stray ./mlruns)
    assert list(pool[1].iterdir()) == []
    _check_pareto_tags(c, tracker, ctx, tmp_path)


@pytest.mark.slow
def test_eight_processes_log_concurrently_to_mlflow_server(tmp_path, pool, results, mlflow_server):
    from mlflow import MlflowClient

    tracker = StudyTracker(mlflow_server, "conc-server", "conc-server", SPEC, None, {})
    ctx = tracker.start()
    out = _log_concurrently(pool, ctx, results)
    c = MlflowClient(mlflow_server)
    _check_nothing_lost(c, ctx, results, out, tmp_path / "downloads")
    assert list(pool[1].iterdir()) == []
    # register → fetch through the server too (proxied artifacts, REST registry)
    from prunetune.datasets import load_dataset
    from prunetune.prune import evaluate
    from prunetune.search.registry import fetch, register_study

    (v,) = register_study(mlflow_server, "conc-server", ["most-accurate"])
    best = max(
        range(N_WORKERS),
        key=lambda n: (results[n].metrics["val_accuracy"], -results[n].metrics["params"]),
    )
    assert v.run_id == out[best]["run_id"] and v.aliases == ("most-accurate",)
    model = fetch("conc-server@most-accurate", tracking_uri=mlflow_server)
    data = load_dataset("digits")
    assert evaluate(model, data.x_test, data.y_test) == results[best].metrics["test_accuracy"]
    _check_pareto_tags(c, tracker, ctx, tmp_path)


def test_pending_context_waits_for_the_parent_run(tmp_path, db_template):
    """Workers get a context before the parent run exists (the driver creates it while Ray
    starts them): a trial logger waits for the driver's session tag, then nests under it."""
    from mlflow import MlflowClient

    shutil.copyfile(db_template, tmp_path / "mlflow.db")
    uri = resolve_tracking_uri(None, tmp_path)
    c = MlflowClient(uri)
    tracker = StudyTracker(uri, "pend", "pend", SPEC, None, {})
    pending = tracker.pending_context()
    assert (pending.experiment_id, pending.parent_run_id) == (None, None)
    with pytest.raises(TimeoutError, match=f"prunetune.session={tracker.session}"):
        pending.resolve(c, timeout=0.3)  # nobody is creating the parent run yet
    # An older session's parent run of the same study is not the one to nest under.
    StudyTracker(uri, "pend", "pend", SPEC, None, {}).start()
    tracker.start_in_background()
    t = TrialTracker(pending, 0, CONFIGS[0])
    ctx = tracker.context
    assert t.ctx == ctx and ctx.parent_run_id is not None
    assert c.get_run(t.run_id).data.tags["mlflow.parentRunId"] == ctx.parent_run_id
    assert c.get_run(ctx.parent_run_id).data.tags["prunetune.session"] == tracker.session
    t.fail("RuntimeError: test over")


def test_background_start_failure_is_raised_by_context(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    uri = f"sqlite:///{tmp_path}/file/mlflow.db"
    tracker = StudyTracker(uri, "e", "s", SPEC, None, {})
    tracker.start_in_background()
    with pytest.raises(Exception, match=r"File exists|unable to open database|Not a directory"):
        _ = tracker.context
    assert tracker.start_failed


def test_resume_ends_runs_optuna_never_recorded(tmp_path, db_template):
    """A driver killed after a worker finished its run but before Optuna recorded the trial:
    on resume that run is KILLED like a RUNNING one, so MLflow's front matches the study."""
    from mlflow import MlflowClient

    uri, _, ctx = _sqlite_study(tmp_path, db_template, "rec")
    kept = TrialTracker(ctx, 0, CONFIGS[0]).finish(_fake_result(0.5, 10))
    lost = TrialTracker(ctx, 1, CONFIGS[1]).finish(_fake_result(0.9, 5))  # no Optuna record
    running = TrialTracker(ctx, 2, CONFIGS[2]).run_id  # left RUNNING
    again = StudyTracker(uri, "rec", "rec", SPEC, None, {}, recorded={0}).start()
    assert again.parent_run_id == ctx.parent_run_id
    c = MlflowClient(uri)
    status = {rid: c.get_run(rid).info.status for rid in (kept, lost, running)}
    assert status == {kept: "FINISHED", lost: "KILLED", running: "KILLED"}
    assert c.get_run(lost).data.tags["prunetune.failure"] == (
        "interrupted: the driver stopped before Optuna recorded the trial"
    )
    assert c.get_run(running).data.tags["prunetune.failure"] == "interrupted: the driver stopped"
