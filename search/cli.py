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

from prunetune._hparams import describe
from prunetune._schema import ACTIVATIONS, DISTILL, FAMILIES, TRAIN
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


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise _fail(f"{flag} must be KEY=VALUE, but got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def _option_help(name: str) -> str:
    """An option's help from the trial-config schema: what it is, its range, its default."""
    p = TRAIN[name]
    rng = describe({name: p})[0]["range"]
    return f"{p.help}; {rng}"


def _distill_help(name: str) -> str:
    p = DISTILL[name]
    return f"distillation: {p.help}; {describe({name: p})[0]['range']}"


@app.command()
def train(
    dataset: Annotated[
        str, typer.Option(help="digits | fashion-mnist | mnist | cifar10 | pathways-toy")
    ] = "digits",
    data_dir: Annotated[Path | None, typer.Option(help="directory of the data set's files")] = None,
    data_factory: Annotated[
        str | None,
        typer.Option(
            help="your data: 'package.module:callable' returning tensors or three Datasets "
            "(replaces --dataset)"
        ),
    ] = None,
    data_param: Annotated[
        list[str] | None,
        typer.Option("--data-param", help="data factory argument KEY=VALUE (repeatable)"),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(min=1, help="classes of the factory's data (default: counted)")
    ] = None,
    model: Annotated[str, typer.Option(help="model family: " + " | ".join(FAMILIES))] = "mlp",
    model_factory: Annotated[
        str | None,
        typer.Option(
            help="your model: 'package.module:callable' returning an nn.Module (replaces --model)"
        ),
    ] = None,
    model_param: Annotated[
        list[str] | None,
        typer.Option(
            "--model-param", help="model factory argument KEY=VALUE (repeatable), e.g. width=16"
        ),
    ] = None,
    widths: Annotated[str | None, typer.Option(help="hidden widths, e.g. 300,100")] = None,
    channels: Annotated[str | None, typer.Option(help="conv channels, e.g. 6,16")] = None,
    activation: Annotated[str, typer.Option(help=" | ".join(ACTIVATIONS))] = "relu",
    method: Annotated[
        str, typer.Option(help="pruning method (see `prunetune methods`)")
    ] = "gumbel",
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt", "-o", help="method hyperparameter KEY=VALUE (repeatable), e.g. -o lam=0.5"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help=_option_help("epochs"))] = TRAIN["epochs"].default,
    batch_size: Annotated[int, typer.Option(help=_option_help("batch_size"))] = TRAIN[
        "batch_size"
    ].default,
    lr: Annotated[float, typer.Option(help=_option_help("lr"))] = TRAIN["lr"].default,
    optimizer: Annotated[str, typer.Option(help=_option_help("optimizer"))] = TRAIN[
        "optimizer"
    ].default,
    weight_decay: Annotated[float, typer.Option(help=_option_help("weight_decay"))] = TRAIN[
        "weight_decay"
    ].default,
    momentum: Annotated[float, typer.Option(help=_option_help("momentum"))] = TRAIN[
        "momentum"
    ].default,
    loss: Annotated[str, typer.Option(help=_option_help("loss"))] = TRAIN["loss"].default,
    augment: Annotated[
        str | None, typer.Option(help=_option_help("augment") + ", comma-separated")
    ] = None,
    num_workers: Annotated[int, typer.Option(help=_option_help("num_workers"))] = TRAIN[
        "num_workers"
    ].default,
    seed: Annotated[int, typer.Option(help=_option_help("seed"))] = TRAIN["seed"].default,
    lr_schedule: Annotated[str, typer.Option(help=_option_help("lr_schedule"))] = TRAIN[
        "lr_schedule"
    ].default,
    finetune_epochs: Annotated[int, typer.Option(help=_option_help("finetune_epochs"))] = TRAIN[
        "finetune_epochs"
    ].default,
    finetune_lr: Annotated[float, typer.Option(help=_option_help("finetune_lr"))] = TRAIN[
        "finetune_lr"
    ].default,
    distill_alpha: Annotated[
        float, typer.Option(help=_distill_help("alpha") + " (teacher: the same model, dense)")
    ] = DISTILL["alpha"].default,
    distill_temperature: Annotated[
        float, typer.Option(help=_distill_help("temperature"))
    ] = DISTILL["temperature"].default,
    teacher_epochs: Annotated[
        int, typer.Option(help=_distill_help("teacher_epochs") + "; cached")
    ] = DISTILL["teacher_epochs"].default,
    device: Annotated[str, typer.Option(help="auto (CUDA when present) | cpu | cuda[:N]")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object, nothing else")
    ] = False,
) -> None:
    """Train and prune one configuration (no search); print accuracy and kept parameters.

    A built-in family on a built-in data set, or your own model and data through factories:
    `prunetune train --model-factory mypkg.nets:resnet --model-param width=16
    --data-factory mypkg.data:load -o lam=1`.
    """
    from prunetune.search.trial import parse_config, run_trial

    method_cfg: dict[str, Any] = {"name": method, **_key_values(opt, "--opt")}
    model_cfg: dict[str, Any]
    if model_factory is not None:
        model_cfg = {"factory": model_factory, "params": _key_values(model_param, "--model-param")}
    else:
        model_cfg = {"family": model, "activation": activation}
        if (w := _widths(widths, "--widths")) is not None:
            model_cfg["widths"] = w
        elif model == "mlp":
            model_cfg["widths"] = [64, 32] if dataset == "digits" else [300, 100]
        elif model == "lenet5":
            model_cfg["widths"] = [120, 84]
        if (c := _widths(channels, "--channels")) is not None:
            model_cfg["channels"] = c
    data_cfg: Any = dataset
    if data_factory is not None:
        data_cfg = {
            "factory": data_factory,
            "params": _key_values(data_param, "--data-param"),
            "num_classes": num_classes,
        }
    raw = {
        "dataset": data_cfg,
        "data_dir": str(data_dir) if data_dir else None,
        "model": model_cfg,
        "method": method_cfg,
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": optimizer,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "seed": seed,
            "loss": loss,
            "augment": [a.strip() for a in augment.split(",") if a.strip()] if augment else [],
            "num_workers": num_workers,
            "lr_schedule": lr_schedule,
            "finetune_epochs": finetune_epochs,
            "finetune_lr": finetune_lr,
            "distill": {
                "alpha": distill_alpha,
                "temperature": distill_temperature,
                "teacher_epochs": teacher_epochs,
            },
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
            f"epoch {int(row['epoch']):>3}/{epochs + finetune_epochs}  loss={row['loss']:.4f}  "
            f"val={acc:.4f}  density={row.get('density', float('nan')):.4%}{extra}",
            highlight=False,
        )

    try:
        out = run_trial(cfg, report)
    except ConfigError as e:  # a factory that does not resolve, raises or returns garbage
        raise _fail(str(e)) from None
    except (FileNotFoundError, ValueError) as e:
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
    time_budget: Annotated[
        str | None,
        typer.Option(
            help="no new trial after this wall time (seconds, or 10m / 2h); running trials "
            "finish (overrides search.time_budget)"
        ),
    ] = None,
    runtime_env: Annotated[
        Path | None,
        typer.Option(
            "--runtime-env",
            help="a Ray runtime_env YAML (working_dir, py_modules, pip, env_vars) that ships "
            "your factories' code to the workers of a cluster",
        ),
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
        if isinstance(vspec.spec.dataset, str):
            _preflight_data(vspec.spec.dataset, vspec.spec.data_dir)
        env = _runtime_env(runtime_env) if runtime_env is not None else None
        budget = _budget(time_budget) if time_budget is not None else None
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
        runtime_env=env,
        time_budget=budget,
    )
    try:
        outcome = run_study(vspec, opts)
    except ConfigError as e:
        raise _fail(str(e)) from None
    except StudyFailed as e:
        _print_outcome(e.outcome)
        raise _fail(str(e), 1) from None
    _print_outcome(outcome)


def _budget(text: str) -> float:
    from prunetune.search.spec import _seconds

    try:
        value = float(_seconds(text))
    except ValueError as e:
        raise ConfigError(f"--time-budget {e}") from None
    if not value > 0:
        raise ConfigError(f"--time-budget must be > 0, got {text!r}")
    return value


def _runtime_env(path: Path) -> dict[str, Any]:
    """A Ray runtime_env from a YAML file, checked before anything starts."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--runtime-env {str(path)!r}: no such file (a Ray runtime_env YAML).")
    try:
        env = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--runtime-env {str(path)!r}: not valid YAML: {e}") from None
    if not isinstance(env, dict):
        raise ConfigError(
            f"--runtime-env {str(path)!r}: must be a mapping such as "
            f"{{working_dir: ., pip: [mypkg]}}, got {type(env).__name__}."
        )
    for key in ("working_dir",):
        v = env.get(key)
        if isinstance(v, str) and "://" not in v and not Path(v).expanduser().exists():
            raise ConfigError(f"--runtime-env {str(path)!r}: {key} {v!r} does not exist.")
    for i, v in enumerate(env.get("py_modules") or []):
        if isinstance(v, str) and "://" not in v and not Path(v).expanduser().exists():
            raise ConfigError(f"--runtime-env {str(path)!r}: py_modules[{i}] {v!r} does not exist.")
    from ray.runtime_env import RuntimeEnv

    known = sorted(k for k in RuntimeEnv.known_fields if not k.startswith("_"))
    for key in env:
        if key not in RuntimeEnv.known_fields:
            raise ConfigError(
                f"--runtime-env {str(path)!r}: {key!r} is not a runtime_env field; Ray knows "
                f"{known}."
            )
    try:
        RuntimeEnv(**env)
    except Exception as e:
        raise ConfigError(f"--runtime-env {str(path)!r}: {type(e).__name__}: {e}") from None
    return env


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
        title=f"Pareto front — study {outcome.study_name} ({outcome.completed} complete, "
        + (f"{outcome.stopped} stopped early, " if outcome.stopped else "")
        + (f"{outcome.collapsed} collapsed (off the front), " if outcome.collapsed else "")
        + f"{outcome.failed} failed)"
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
    from prunetune._schema import DISTILL_SEARCHABLE, SEARCHABLE

    table = Table(
        title="train — a spec's training options (searchable: a range or a list of choices)",
        title_justify="left",
    )
    for col in ("option", "range", "default", "searchable", "meaning"):
        table.add_column(col)
    rows = [(r, r["name"] in SEARCHABLE) for r in describe(TRAIN)]
    rows += [
        ({**r, "name": f"distill.{r['name']}"}, r["name"] in DISTILL_SEARCHABLE)
        for r in describe(DISTILL)
    ]
    for row, searchable in rows:
        default = row["default"]
        shown = ", ".join(default) if isinstance(default, tuple) else str(default)
        table.add_row(
            row["name"], row["range"], shown or "-", "yes" if searchable else "", row["help"]
        )
    table.add_row(
        "distill.teacher", "a model", "largest", "", "the teacher's model (family or factory)"
    )
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
