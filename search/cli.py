"""The ``prunetune`` command line: ``train``, ``search``, ``methods``, and the mounted commands.

This module owns the root app and the ``train``, ``search`` and ``methods`` commands, and mounts
the sub-apps of :mod:`~prunetune.search.cli_tracking` (``pareto``, ``register``, ``fetch``,
``models``, ``ui``) and :mod:`~prunetune.search.cli_explain` (``explain``).
Heavy libraries (torch, MLflow, Ray, Optuna) are imported inside the commands, so that
``prunetune --help`` does not load them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from prunetune.search import cli_data, cli_explain, cli_tracking
from prunetune.search._cli_common import EXIT_CONFIG, _fail, console
from prunetune.search._errors import ConfigError

__all__ = ["EXIT_CONFIG", "app", "main"]

app = typer.Typer(
    help="AutoML search in which neural-network pruning is the hyperparameter space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Mounted without a name, their commands join this app's, listed after its own.
app.add_typer(cli_tracking.app)
app.add_typer(cli_explain.app)
app.add_typer(cli_data.app)


def _parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: YAML scalars (numbers, booleans, lists) else strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _widths(text: str | None, field: str) -> list[int] | None:
    if text is None:
        return None
    if text.strip() == "":
        return []
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise _fail(
            f"{field} must be comma-separated integers like 300,100, but got {text!r}."
        ) from None


@app.command()
def train(
    dataset: Annotated[
        str, typer.Option(help="digits | fashion-mnist | mnist | pathways-toy")
    ] = "digits",
    data_dir: Annotated[Path | None, typer.Option(help="directory of IDX files")] = None,
    model: Annotated[str, typer.Option(help="model family: mlp | lenet5 | cnn")] = "mlp",
    widths: Annotated[str | None, typer.Option(help="hidden widths, e.g. 300,100")] = None,
    channels: Annotated[str | None, typer.Option(help="conv channels, e.g. 6,16")] = None,
    activation: Annotated[str, typer.Option(help="relu | silu | tanh | gelu")] = "relu",
    method: Annotated[
        str, typer.Option(help="pruning method (see `prunetune methods`)")
    ] = "gumbel",
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt", "-o", help="method hyperparameter KEY=VALUE (repeatable), e.g. -o lam=0.5"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    batch_size: Annotated[
        int | None, typer.Option(help="batch size (default 32 on digits, else 128)")
    ] = None,
    lr: Annotated[float, typer.Option(help="weight learning rate")] = 2e-3,
    optimizer: Annotated[str, typer.Option(help="adam | adamw | sgd")] = "adam",
    loss: Annotated[
        str, typer.Option(help="auto (cross_entropy / mse by task) | cross_entropy | mse | l1")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="seed (weights, shuffling, mask noise)")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when present) | cpu | cuda[:N]")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object, nothing else")
    ] = False,
) -> None:
    """Train and prune one configuration (no search); print accuracy and kept parameters."""
    from prunetune.search.trial import parse_config, run_trial

    method_cfg: dict[str, Any] = {"name": method}
    for item in opt or []:
        if "=" not in item:
            raise _fail(f"--opt must be KEY=VALUE, but got {item!r}.")
        k, v = item.split("=", 1)
        method_cfg[k.strip()] = _parse_value(v)
    model_cfg: dict[str, Any] = {"family": model, "activation": activation}
    if (w := _widths(widths, "--widths")) is not None:
        model_cfg["widths"] = w
    elif model == "mlp":
        model_cfg["widths"] = [64, 32] if dataset == "digits" else [300, 100]
    elif model == "lenet5":
        model_cfg["widths"] = [120, 84]
    if (c := _widths(channels, "--channels")) is not None:
        model_cfg["channels"] = c
    raw = {
        "dataset": dataset,
        "data_dir": str(data_dir) if data_dir else None,
        "model": model_cfg,
        "method": method_cfg,
        "train": {
            "epochs": epochs,
            "batch_size": batch_size or (32 if dataset == "digits" else 128),
            "lr": lr,
            "optimizer": optimizer,
            "seed": seed,
            "loss": loss,
        },
        "device": device,
        "threads": threads,
    }
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        raise _fail(str(e)) from None

    def report(row: dict[str, float]) -> None:
        if as_json:
            return
        acc = row.get("val_accuracy", row.get("val_loss"))
        extra = "".join(
            f"  {k}={row[k]:.4g}" for k in ("temperature", "expected_density") if k in row
        )
        console.print(
            f"epoch {int(row['epoch']):>3}/{epochs}  loss={row['loss']:.4f}  "
            f"val={acc:.4f}  density={row.get('density', float('nan')):.4%}{extra}",
            highlight=False,
        )

    try:
        out = run_trial(cfg, report)
    except (FileNotFoundError, ConfigError, ValueError) as e:
        raise _fail(str(e), 1) from None
    m = out.metrics
    if as_json:
        keys = (
            "val_accuracy",
            "test_accuracy",
            "val_loss",
            "test_loss",
            "params",
            "params_dense",
            "density",
            "live_neurons",
            "seconds",
        )
        print(json.dumps({k: m[k] for k in keys if k in m}))
        return
    table = Table(title="result", show_header=False)
    for k in ("val_accuracy", "test_accuracy", "val_loss", "test_loss"):
        if k in m:
            table.add_row(k, f"{m[k]:.4f}")
    table.add_row("params", f"{m['params']:,} of {m['params_dense']:,}")
    table.add_row("density", f"{m['density']:.4%}")
    table.add_row("live neurons", str(m["live_neurons"]))
    table.add_row("train seconds", f"{m['seconds']:.1f}")
    Console().print(table)


@app.command()
def search(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="study spec, e.g. studies/quickstart.yaml")
    ],
    fresh: Annotated[
        bool, typer.Option(help="start a new study instead of continuing the latest")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="join an existing Ray cluster (host:port or ray://...)")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default sqlite:///optuna.db)")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
        ),
    ] = None,
    n_trials: Annotated[int | None, typer.Option(min=1, help="override search.n_trials")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="override search.max_concurrent")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="where default stores are written")] = Path("."),
    storage_path: Annotated[
        str | None,
        typer.Option(
            help="Ray Tune storage for trial checkpoints: a path every node shares or a bucket "
            "(s3://…, gs://…) on a cluster (default WORKDIR/ray_results)"
        ),
    ] = None,
    register: Annotated[
        bool | None,
        typer.Option("--register/--no-register", help="register the selected models at the end"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no live progress view")] = False,
) -> None:
    """Run (or continue) a pruning search study until n_trials trials are complete.

    Optuna samples each trial's method and hyperparameters, Ray Tune runs trials in parallel,
    MLflow records one parent run per study and one child run per trial. Rerunning the same
    spec continues the study; a killed run loses no completed trial.
    """
    from prunetune.search.runner import RunOptions, StudyFailed, run_study
    from prunetune.search.spec import load_spec

    try:
        vspec = load_spec(spec_path)
        if storage is not None and "://" not in storage:
            raise ConfigError(
                f"--storage must be a URL such as sqlite:///optuna.db, but got {storage!r}."
            )
        _preflight_data(vspec.spec.dataset, vspec.spec.data_dir)
    except ConfigError as e:
        raise _fail(str(e)) from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    opts = RunOptions(
        workdir=workdir,
        ray_address=ray_address,
        storage=storage,
        tracking_uri=tracking_uri,
        fresh=fresh,
        n_trials=n_trials,
        max_concurrent=max_concurrent,
        register=register,
        progress=not quiet,
        storage_path=storage_path,
    )
    try:
        outcome = run_study(vspec, opts)
    except ConfigError as e:
        raise _fail(str(e)) from None
    except StudyFailed as e:
        _print_outcome(e.outcome)
        raise _fail(str(e), 1) from None
    _print_outcome(outcome)


def _preflight_data(dataset: str, data_dir: str | None) -> None:
    """Fail before anything is created when the data set cannot be found."""
    from prunetune.datasets import load_dataset

    try:
        load_dataset(dataset, data_dir=data_dir)
    except FileNotFoundError as e:
        raise ConfigError(f"dataset {dataset!r}: {e}") from None


def _print_outcome(outcome: Any) -> None:
    out = Console()
    table = Table(
        title=f"Pareto front — study {outcome.study_name} ({outcome.completed} complete, {outcome.failed} failed)"
    )
    metric = "val_loss" if outcome.front and "val_loss" in outcome.front[0] else "val_accuracy"
    for col in ("trial", "method", "params", metric):
        table.add_column(col, justify="right")
    for r in outcome.front:
        table.add_row(str(r["trial"]), str(r["method"]), f"{r['params']:,}", f"{r[metric]:.4f}")
    out.print(table)
    out.print(f"Optuna storage: {outcome.storage}  (optuna-dashboard {outcome.storage})")
    if outcome.tracking_uri:
        out.print(
            f"MLflow: {outcome.tracking_uri}  — `prunetune ui` opens it; `prunetune pareto {outcome.study_name}`"
        )
    if outcome.registered:
        reg_table = Table(title="registered models")
        for col in ("model", "aliases", "trial", "params", "val_accuracy", "test_accuracy"):
            reg_table.add_column(col, justify="right")
        for r in outcome.registered:
            reg_table.add_row(
                f"{r.name} v{r.version}",
                ", ".join(r.aliases) or "-",
                str(r.trial),
                f"{r.params:,} ({100 * r.params / r.params_dense:.1f}%)",
                f"{r.val_accuracy:.4f}",
                f"{r.test_accuracy:.4f}",
            )
        out.print(reg_table)
        first = outcome.registered[0]
        ref = (
            f"{first.name}@{first.aliases[0]}" if first.aliases else f"{first.name}/{first.version}"
        )
        out.print(
            f'next: `prunetune fetch {ref} -o model/ --verify`, or prunetune.fetch("{ref}") in Python'
        )


@app.command()
def methods() -> None:
    """List the pruning methods and their hyperparameters (ranges and defaults)."""
    from prunetune.prune import METHODS
    from prunetune.prune._hparams import describe

    out = Console()
    for name, cls in sorted(METHODS.items()):
        table = Table(
            title=f"{name} — {(cls.__doc__ or '').strip().splitlines()[0]}", title_justify="left"
        )
        for col in ("hyperparameter", "range", "default", "meaning"):
            table.add_column(col)
        for row in describe(cls.hparams):
            table.add_row(row["name"], row["range"], str(row["default"]), row["help"])
        out.print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
