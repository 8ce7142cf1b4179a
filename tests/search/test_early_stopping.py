"""Early stopping in a real study: MO-ASHA stops trials at its rungs (real local Ray, Optuna
on SQLite, MLflow on SQLite); stopped trials are PRUNED in the record, never failures, never on
the front; a resumed study rebuilds the rungs; a time budget starts no trial after it ends."""

from __future__ import annotations

import copy

import pytest

from prunetune.search.runner import RunOptions, run_study
from prunetune.search.spec import parse_spec

SPEC = {
    "name": "es",
    "dataset": "digits",
    "model": {"family": "mlp", "widths": [16]},
    "methods": {"gumbel": {"lam": [0.01, 10.0]}},
    "train": {"epochs": 3, "batch_size": 64, "lr": [0.0005, 0.05]},
    "search": {
        "n_trials": 8,
        "max_concurrent": 1,
        "sampler": "random",
        "seed": 1,
        "scheduler": {"name": "mo-asha", "grace_epochs": 1, "reduction_factor": 4},
    },
    "tracking": {"explain": False, "register": False},
}


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory):
    import optuna

    work = tmp_path_factory.mktemp("es")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    opts = RunOptions(workdir=work, tracking_uri=uri, progress=False)
    outcome = run_study(parse_spec(copy.deepcopy(SPEC)), opts)
    storage = f"sqlite:///{work / 'optuna.db'}"
    return {
        "outcome": outcome,
        "study": optuna.load_study(study_name="es", storage=storage),
        "uri": uri,
        "work": work,
        "opts": opts,
    }


def test_stopped_trials_are_pruned_not_failed_and_count_towards_n_trials(study):
    outcome, trials = study["outcome"], study["study"].trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8
    assert states.count("FAIL") == 0 and outcome.failed == 0
    assert outcome.stopped == states.count("PRUNED") >= 1  # η = 4: most rung-1 arrivals stop
    for t in trials:
        curve = t.user_attrs["curve"]
        if t.state.name == "PRUNED":  # stopped after epoch 1, its values kept as attributes
            assert t.values is None and t.user_attrs["stopped_at_epoch"] == 1
            assert [row[0] for row in curve] == [1]
            assert set(t.user_attrs["last_values"]) == {"val_accuracy", "params"}
        else:  # trained to the end
            assert [row[0] for row in curve] == [1, 2, 3]
    on_front = {r["trial"] for r in outcome.front}
    assert on_front and all(trials[n].state.name == "COMPLETE" for n in on_front)


def test_stopped_trials_are_tagged_in_mlflow_with_their_epoch(study):
    from mlflow import MlflowClient

    c = MlflowClient(study["uri"])
    runs = c.search_runs(
        [c.get_experiment_by_name("es").experiment_id], "tags.`prunetune.role` = 'trial'"
    )
    by_trial = {int(r.data.tags["prunetune.trial"]): r for r in runs}
    for t in study["study"].trials:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED"
        stopped = run.data.tags.get("stopped_at_epoch")
        assert stopped == ("1" if t.state.name == "PRUNED" else None)


def test_a_resumed_study_rebuilds_the_rungs_from_the_record(study):
    from prunetune.search.runner import _scheduler

    vspec = parse_spec(copy.deepcopy(SPEC))
    scheduler = _scheduler(vspec, study["study"])
    assert scheduler.rungs.levels == (1,)  # grace 1, η 4, 3 epochs: 4 is past the end
    rung1 = scheduler.rungs.points[1]
    assert sorted(rung1) == [("trial", n) for n in range(8)]  # every trial reached rung 1
    completed = [t.number for t in study["study"].trials if t.state.name == "COMPLETE"]
    t0 = study["study"].trials[completed[0]]
    epoch1 = t0.user_attrs["curve"][0]
    assert rung1[("trial", t0.number)][0] == pytest.approx(-epoch1[1])  # accuracy, minimised


def test_a_time_budget_starts_no_trial_after_it_ends(ray_local, tmp_path):
    spec = copy.deepcopy(SPEC) | {"name": "budget"}
    spec["search"] = {**spec["search"], "n_trials": 200, "scheduler": None, "time_budget": 4}
    spec["tracking"] = {"enabled": False}
    outcome = run_study(parse_spec(spec), RunOptions(workdir=tmp_path, progress=False))
    assert 1 <= outcome.completed < 200 and outcome.failed == 0
    # every recorded trial trained its full 3 epochs: none was cut short
    assert all(r["epoch_rows"] is not None for r in outcome.results)
    assert outcome.wall_seconds < 4 + 60


def test_a_late_pruner_passes_the_rungs_until_its_prune_has_settled(ray_local, tmp_path):
    # Magnitude prunes at the end of epoch 2 of 4: dense until then, and an epoch later judged
    # like any trial. Rungs at epochs 1 and 3 (η = 3).
    import optuna

    from prunetune.search._record import ATTR_CONFIG
    from prunetune.search.runner import _scheduler

    spec = copy.deepcopy(SPEC) | {"name": "settle"}
    spec["methods"] = {
        "gumbel": {"lam": [0.01, 10.0]},
        "magnitude": {"density": [0.05, 0.3], "prune_at": 0.5},
    }
    spec["train"] = {**spec["train"], "epochs": 4}
    spec["search"] = {
        **spec["search"],
        "n_trials": 6,
        "scheduler": {"name": "mo-asha", "grace_epochs": 1, "reduction_factor": 3},
    }
    spec["tracking"] = {"enabled": False}
    vspec = parse_spec(spec)
    outcome = run_study(vspec, RunOptions(workdir=tmp_path, progress=False))
    assert outcome.failed == 0
    study = optuna.load_study(study_name="settle", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    method = {t.number: t.user_attrs[ATTR_CONFIG]["method"]["name"] for t in study.trials}
    assert sorted(set(method.values())) == ["gumbel", "magnitude"]
    for t in study.trials:
        # the curve marks the epochs that were settling with a fourth entry
        settling = [row[0] for row in t.user_attrs["curve"] if row[3:] == [1]]
        assert settling == ([1, 2] if method[t.number] == "magnitude" else []), t.number
        if method[t.number] == "magnitude" and t.state.name == "PRUNED":
            assert t.user_attrs["stopped_at_epoch"] == 3  # never at rung 1
    # resumed: the rungs come back with the magnitude trials excused at rung 1
    rungs = _scheduler(vspec, study).rungs
    late = {("trial", n) for n, m in method.items() if m == "magnitude"}
    assert rungs.excused == {1: late, 3: set()}
    assert set(rungs.points[1]) == {("trial", n) for n, m in method.items() if m == "gumbel"}
