from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY_SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "model": {"family": "mlp", "depth": [1, 2], "width": [8, 32]},
    "methods": {
        "gumbel": {
            "granularity": ["weight", "neuron"],
            "lam": [0.01, 10.0],
            "schedule": ["exponential", "cosine"],
        }
    },
    "train": {"epochs": 1, "batch_size": 64, "lr": [0.001, 0.01]},
    "search": {"n_trials": 4, "max_concurrent": 1, "seed": 0, "population_size": 4},
    "tracking": {"enabled": False},
}


@pytest.fixture
def tiny_spec():
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (2 CPUs), shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def search_refused(monkeypatch):
    """``search_refused(spec_file, work, *flags)``: run ``prunetune search SPEC`` from an empty
    ``work`` as a user would; assert it exits 2 and creates nothing; the message on one line."""
    return lambda spec_file, work, *extra: _search_refused(spec_file, work, monkeypatch, *extra)


def _search_refused(spec_file: Path, work: Path, monkeypatch, *extra: str) -> str:
    from typer.testing import CliRunner

    from prunetune.search.cli import app

    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["search", str(spec_file), "--workdir", str(work), *extra])
    assert result.exit_code == 2, result.output
    assert list(work.iterdir()) == []  # no store, no run, no results folder
    return " ".join(result.output.split())  # rich wraps long lines


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def record_trial(study, cfg: dict, res, checkpoint: Path) -> None:
    """Tell a finished trial to the record as the runner's searcher does (its driver gone)."""
    import optuna

    from prunetune.search._record import ATTR_CHECKPOINT, ATTR_CONFIG, ATTR_RESULT, final_metrics

    attrs = {
        ATTR_CONFIG: cfg,
        ATTR_RESULT: final_metrics(res.metrics),
        ATTR_CHECKPOINT: str(checkpoint),
        "driver": "a-driver-that-died",
    }
    values = [res.metrics["val_accuracy"], res.metrics["params"]]
    study.add_trial(optuna.trial.create_trial(values=values, user_attrs=attrs))


def record_study(workdir: Path, name: str, spec: dict, configs: list[dict]) -> dict:
    """A finished study of real trials without Ray: each config is run here, told to a real
    Optuna storage as the runner's searcher tells it, and mirrored to a real MLflow SQLite
    store by the driver's :class:`StudyMirror`. Returns the stores, the mirror and results."""
    import optuna

    from prunetune.search._record import ATTR_REFERENCE, final_metrics
    from prunetune.search.tracking import StudyMirror
    from prunetune.search.trial import run_trial

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_accuracy", "params"])
    study.set_user_attr("spec", spec)
    results = []
    for n, cfg in enumerate(configs):
        res = run_trial(cfg)
        results.append(res)
        record_trial(study, cfg, res, res.save(workdir / "checkpoints" / f"trial-{n}"))
    dense = max(r.metrics["params_dense"] for r in results)  # the largest model's
    ref = spec.get("objectives", {}).get("reference_point")
    study.set_user_attr(ATTR_REFERENCE, ref or [0.0, dense])
    mirror = StudyMirror(uri, name, name, spec, storage, explain=False)
    mirror.start(study)
    for n, (cfg, res) in enumerate(zip(configs, results, strict=True)):
        mirror.trial_started(n, cfg)
        mirror.trial_epochs(n, res.history)
        mirror.trial_finished(
            n, final_metrics(res.metrics), str(workdir / "checkpoints" / f"trial-{n}")
        )
    mirror.close()
    return {"uri": uri, "storage": storage, "mirror": mirror, "results": results, "study": study}


@pytest.fixture(scope="session")
def make_study():
    return record_study


@pytest.fixture(scope="session")
def tell_trial():
    return record_trial
