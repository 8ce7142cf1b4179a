"""CLI commands over the MLflow store: ``pareto``, ``register``, ``fetch``, ``models``, ``ui``.

They are commands of :data:`app`, which :mod:`prunetune.search.cli` mounts on the root app.
Every command takes ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI`` or
``sqlite:///./mlflow.db``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from prunetune.search._cli_common import TrackingUri, _fail, _uri, console
from prunetune.search._errors import ConfigError

__all__ = ["TrackingUri", "app", "server_command", "server_env", "wait_for_server"]

app = typer.Typer()


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


Storage = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="the study's Optuna storage URL (default: the one its MLflow run names, "
        "else sqlite:///./optuna.db)",
        show_default=False,
    ),
]


def _study_storage(study: str, storage: str | None, tracking_uri: str | None) -> str:
    """``--storage``, else the storage the study's MLflow parent run names, else ./optuna.db."""
    from prunetune.search import _mlflow as M
    from prunetune.search._record import resolve_storage

    if storage:
        return storage
    uri = M.resolve_tracking_uri(tracking_uri, Path.cwd())
    db = M.sqlite_path(uri)
    if db is None or db.is_file():
        parent = M.find_study_run(M.client(uri), study)
        if parent is not None and parent.data.tags.get("optuna_storage"):
            return parent.data.tags["optuna_storage"]
    return resolve_storage(None, Path.cwd())


@app.command()
def pareto(
    study: Annotated[str, typer.Argument(help="study name (the spec's `name`)")],
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    every: Annotated[
        bool, typer.Option("--all", help="list every trial (collapsed ones marked), not the front")
    ] = False,
) -> None:
    """Show a study's Pareto front (val metric, kept parameters ↓) from its Optuna record.

    Collapsed trials are counted but never on the front; trials at the same point are shown
    once, with their count (×N).
    """
    from prunetune.search import _mlflow as M
    from prunetune.search._front import front_of_study, load_study

    try:
        url = _study_storage(study, storage, tracking_uri)
        record = load_study(study, url)
        runs: dict[int, str] = {}
        uri = M.resolve_tracking_uri(tracking_uri, Path.cwd())
        if (db := M.sqlite_path(uri)) is None or db.is_file():
            c = M.client(uri)
            if (parent := M.find_study_run(c, study)) is not None:
                runs = {
                    int(r.data.tags[M.TAG_TRIAL]): r.info.run_id
                    for r in M.trial_runs(c, parent)
                    if r.data.tags.get(M.TAG_TRIAL, "").isdigit()
                }
        front = front_of_study(record, runs)
    except ConfigError as e:
        raise _fail(str(e)) from None
    if as_json:
        data = front.to_json()
        if every:
            data["trials"] = front.trial_rows()
        print(json.dumps(data, default=str))
        return
    what = "trials" if every else "Pareto front"
    table = Table(
        title=f"{study}: {what} of {front.summary}; hypervolume {front.hypervolume:.6g} on "
        f"(val, log10 params) w.r.t. (val {abs(front.reference[0]):g}, params "
        f"{front.reference[1]:,.0f})",
        title_justify="left",
    )
    first = "note" if every else "count"
    cols = ("trial", first, "params", "density", "val acc", "test acc", "method", "selected", "run")
    for col in cols:
        table.add_column(col, justify="right" if col not in (*cols[-3:], "note") else "left")
    for row in front.trial_rows() if every else front.front_rows():
        if every:
            note = "collapsed" if row["collapsed"] else row["status"].lower()
            note += ", front" if row["on_front"] else ""
            note += f", as #{row['shown_as']}" if row["shown_as"] is not None else ""
        else:
            note = f"×{row['count']}" if row["count"] > 1 else ""
        table.add_row(
            str(row["trial"]),
            note,
            _fmt(row["params"], ","),
            _fmt(row["density"], ".2%"),
            _fmt(row["val_accuracy"]),
            _fmt(row["test_accuracy"]),
            row["method"],
            ", ".join(row["selected_as"]),
            row["run_id"],
        )
    Console().print(table)


@app.command()
def register(
    study: Annotated[str, typer.Argument(help="study name")],
    select: Annotated[
        list[str] | None,
        typer.Option(
            "--select",
            "-s",
            help="knee | smallest | most-accurate | all-pareto | min-val-accuracy=X "
            "(repeatable; default knee, smallest, most-accurate)",
        ),
    ] = None,
    min_val_accuracy: Annotated[
        float | None,
        typer.Option(help="floor for `smallest` (default: the spec's objectives)"),
    ] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Register a study's selected trials as versions of the model named after the study."""
    from prunetune.search.registry import DEFAULT_SELECT, register_study

    uri = _uri(tracking_uri)
    rules = [r for item in (select or DEFAULT_SELECT) for r in item.split(",") if r]
    try:
        versions = register_study(uri, study, rules, min_val_accuracy, storage=storage)
    except ConfigError as e:
        raise _fail(str(e)) from None
    if as_json:
        print(json.dumps([{**v.__dict__, "uri": v.uri} for v in versions], default=list))
        return
    if not versions:
        raise _fail(f"no finished trial of study {study!r} matches {rules}.", 1)
    table = Table(title=f"registered model {study}", title_justify="left")
    for col in ("version", "aliases", "selected by", "trial", "params", "val acc", "test acc"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            v.version + ("" if v.created else " (existing)"),
            ", ".join(v.aliases),
            ", ".join(v.rules),
            str(v.trial),
            f"{v.params:,}",
            _fmt(v.val_accuracy),
            _fmt(v.test_accuracy),
        )
    Console().print(table)
    console.print(f"fetch with: prunetune fetch {versions[0].uri} -o DIR", highlight=False)


ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the [onnx] extra
ONNX_CHECK_ROWS = 8  # random raw inputs model.onnx is checked on


@app.command()
def fetch(
    uri: Annotated[str, typer.Argument(help="NAME@ALIAS (e.g. quickstart@knee) or NAME/VERSION")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to write the model to")],
    verify: Annotated[
        bool,
        typer.Option(help="re-evaluate on the test split; fail unless it equals the record"),
    ] = False,
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx",
            help="also write model.onnx, checked against model.pt2 with onnxruntime "
            "(pip install 'prunetune\\[onnx]')",
        ),
    ] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write a registered model to a directory: model.pt2 (loads with plain torch; raw inputs),
    weights/masks safetensors, input.json, kept_units.json, config.json and the model card."""
    import importlib.util

    from prunetune.search.registry import fetch_to, write_onnx

    if onnx and (missing := [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]):
        # \[ : a literal bracket for rich, which would read [onnx] as markup
        raise _fail(f"--onnx needs {', '.join(missing)}: pip install 'prunetune[onnx]'")
    turi = _uri(tracking_uri)
    try:
        got = fetch_to(uri, out, tracking_uri=turi)
    except (ConfigError, ValueError) as e:
        raise _fail(str(e), 1) from None
    m = got.card.get("metrics", {})
    console.print(
        f"{got.name} v{got.version} ({', '.join(got.aliases) or 'no alias'}): "
        f"{int(m.get('params', -1)):,} params, val {_fmt(m.get('val_accuracy'))}, "
        f"test {_fmt(m.get('test_accuracy'))} → {out}",
        highlight=False,
    )
    for f in got.files:
        console.print(f"  {f}", highlight=False)
    if got.arch is not None:
        console.print(
            "  (registered before model.pt2: arch.json + weights.pt, standardised inputs)",
            highlight=False,
        )
    if onnx:
        try:
            path, diff = write_onnx(got, out, n=ONNX_CHECK_ROWS)
        except ValueError as e:
            raise _fail(f"ONNX check failed: {e}", 1) from None
        console.print(
            f"  {path} (onnxruntime vs model.pt2 on {ONNX_CHECK_ROWS} random inputs: "
            f"max abs diff {diff:.3g})",
            highlight=False,
        )
    if verify:
        _verify(got)


def _verify(got: Any) -> None:
    from prunetune._factory import FactoryError, import_paths
    from prunetune.datasets import load_data
    from prunetune.prune import evaluate_batches
    from prunetune.prune.export import count_params

    card = got.card
    dataset = card.get("dataset")
    if not dataset:
        raise _fail("cannot verify: the model card names no dataset.", 1)
    try:
        with import_paths(Path.cwd()):  # a data factory: the user's code, from here
            data = load_data(dataset, data_dir=card.get("data_dir"))
    except (FileNotFoundError, ValueError, FactoryError) as e:
        raise _fail(f"cannot verify: {e}", 1) from None
    raw = got.arch is None  # model.pt2 takes raw inputs: undo the data set's standardisation
    mean, std = got.inputs.get("mean", 0.0), got.inputs.get("std", 1.0)
    batches = (
        (x * std + mean if raw else x, y) for x, y in data.eval_batches("test")
    )  # standardised, as the trial evaluated it
    acc = evaluate_batches(got.model, batches)
    recorded = float(card["metrics"]["test_accuracy"])
    nz = count_params(got.model)
    recorded_params = int(card["metrics"]["params"])
    # 1e-6: the raw round trip may move a logit by float rounding, never one sample in 1e6
    if not abs(acc - recorded) <= 1e-6 or nz != recorded_params:
        raise _fail(
            f"VERIFY FAILED for {got.name} v{got.version}: test accuracy {acc!r} "
            f"(recorded {recorded!r}), nonzero parameters {nz:,} (recorded {recorded_params:,}).",
            1,
        )
    console.print(
        f"verified: test accuracy {acc:.6f} on {data.sizes['test']:,} {data.name} test samples "
        f"and {nz:,} nonzero parameters, both equal to the record.",
        highlight=False,
    )


@app.command()
def models(
    tracking_uri: TrackingUri = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List registered models with their versions, aliases and numbers."""
    from prunetune.search.registry import list_models

    rows = list_models(_uri(tracking_uri))
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print("no registered models (run `prunetune register STUDY`).")
        return
    table = Table(title="registered models", title_justify="left")
    for col in ("model", "version", "aliases", "trial", "method", "params", "val acc", "test acc"):
        table.add_column(col)
    for rm in rows:
        for v in rm["versions"]:
            table.add_row(
                rm["name"],
                v["version"],
                ", ".join(v["aliases"]),
                "" if v["trial"] is None else str(v["trial"]),
                v["method"],
                "-" if v["params"] is None else f"{v['params']:,}",
                _fmt(v["val_accuracy"]),
                _fmt(v["test_accuracy"]),
            )
    Console().print(table)


def server_command(tracking_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server`` on a local store, artifacts beside it (used by ``prunetune ui``)."""
    from prunetune.search._mlflow import default_artifact_root

    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    root = default_artifact_root(tracking_uri)
    if root is not None:
        cmd += ["--artifacts-destination", root]
    return cmd


def server_env() -> dict[str, str]:
    """The server's environment: MLflow 3's background job runner (GenAI evaluation jobs, seven
    extra processes) is off unless the caller turned it on."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def wait_for_server(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 120.0) -> None:
    """Poll ``url``/health until it answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}.")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer within {timeout:.0f} s.")


@app.command()
def ui(
    study: Annotated[str | None, typer.Argument(help="study whose parent run URL to print")] = None,
    tracking_uri: TrackingUri = None,
    host: Annotated[
        str, typer.Option(help="interface to bind (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
    workers: Annotated[int, typer.Option(help="server worker processes")] = 1,
) -> None:
    """Serve the study store with the MLflow UI and print its URL (Ctrl-C stops it)."""
    from prunetune.search import _mlflow as M

    uri = _uri(tracking_uri)
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else f"http://{host}:{port}"
    proc: subprocess.Popen[bytes] | None = None
    if not served:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise _fail(f"port {port} on {host} is in use; choose another with --port.")
        proc = subprocess.Popen(server_command(uri, host, port, workers), env=server_env())
        try:
            wait_for_server(base, proc)
        except RuntimeError as e:
            _stop(proc)
            raise _fail(str(e), 1) from None
        except KeyboardInterrupt:
            _stop(proc)
            raise
    link = base
    if study is not None:
        try:
            parent = M.require_study_run(M.client(uri), study, uri)
            link = f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        except ConfigError as e:
            console.print(f"[yellow]warning:[/] {e}", highlight=False)
    print(f"MLflow UI: {link}", flush=True)
    if proc is None:
        return
    # SIGTERM (e.g. from a test or a supervisor) stops the server like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    raise typer.Exit(code)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server (``mlflow server`` stops its uvicorn workers on SIGTERM)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
