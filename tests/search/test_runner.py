"""The runner with a real local Ray and real Optuna storage: reproducibility, resume, failures."""

from __future__ import annotations

import os
import socket
import time

import optuna
import pytest

from prunetune.search._errors import ConfigError
from prunetune.search.runner import (
    RunOptions,
    StudyFailed,
    _probe,
    prepare_study,
    run_study,
    worker_runtime_env,
)
from prunetune.search.spec import parse_spec


def _run(spec, workdir, **kw):
    return run_study(parse_spec(spec), RunOptions(workdir=workdir, progress=False, **kw))


def _trials(workdir, name="tiny"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")
    return study.get_trials(deepcopy=False)


def test_same_seed_same_configs_and_different_seed_differs(ray_local, tiny_spec, tmp_path):
    a = _run(tiny_spec, tmp_path / "a")
    b = _run(tiny_spec, tmp_path / "b")
    tiny_spec["search"]["seed"] = 1
    c = _run(tiny_spec, tmp_path / "c")
    assert a.completed == b.completed == c.completed == 4
    pa = [t.params for t in _trials(tmp_path / "a")]
    pb = [t.params for t in _trials(tmp_path / "b")]
    pc = [t.params for t in _trials(tmp_path / "c")]
    assert pa == pb
    assert pa != pc
    # Same config and training seed → the same objective values.
    assert [t.values for t in _trials(tmp_path / "a")] == [
        t.values for t in _trials(tmp_path / "b")
    ]
    # The method is conditional: only the sampled method's hyperparameters are present.
    assert all(all(k.startswith(("gumbel.", "model.", "train.")) for k in p) for p in pa)


def test_rerun_continues_until_n_trials_complete(ray_local, tiny_spec, tmp_path):
    tiny_spec["search"]["n_trials"] = 2
    _run(tiny_spec, tmp_path)
    first = {t.number: t.values for t in _trials(tmp_path)}
    tiny_spec["search"]["n_trials"] = 4
    out = _run(tiny_spec, tmp_path)
    trials = _trials(tmp_path)
    assert out.completed == 4
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {n: v for n, v in ((t.number, t.values) for t in trials) if n in first} == first
    # Already complete: a third run starts nothing.
    again = _run(tiny_spec, tmp_path)
    assert again.completed == 4 and len(_trials(tmp_path)) == 4


def test_fresh_starts_a_new_study(ray_local, tiny_spec, tmp_path):
    tiny_spec["search"]["n_trials"] = 1
    _run(tiny_spec, tmp_path)
    out = _run(tiny_spec, tmp_path, fresh=True)
    assert out.study_name == "tiny~2"
    assert len(_trials(tmp_path, "tiny~2")) == 1


def test_changed_search_space_needs_fresh(ray_local, tiny_spec, tmp_path):
    tiny_spec["search"]["n_trials"] = 1
    _run(tiny_spec, tmp_path)
    tiny_spec["methods"]["gumbel"]["lam"] = [0.1, 1.0]
    with pytest.raises(ConfigError, match=r"different search space.*--fresh"):
        _run(tiny_spec, tmp_path)


def test_trials_left_running_by_a_dead_driver_are_failed(tiny_spec, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    vspec = parse_spec(tiny_spec)
    study, _ = prepare_study(vspec, storage, fresh=False)
    study.ask()  # a trial the "dead driver" never told
    study, _ = prepare_study(vspec, storage, fresh=False)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def test_failing_trials_are_recorded_and_stop_the_study_past_max_failures(
    ray_local, tiny_spec, tmp_path, monkeypatch
):
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "none"))
    tiny_spec["dataset"] = "mnist"  # files missing: every trial raises FileNotFoundError
    tiny_spec["search"]["max_failures"] = 1
    tiny_spec["search"]["n_trials"] = 6
    with pytest.raises(
        StudyFailed, match=r"2 trials failed \(search.max_failures is 1\).*FileNotFoundError"
    ):
        _run(tiny_spec, tmp_path)
    states = [t.state for t in _trials(tmp_path)]
    assert states.count(optuna.trial.TrialState.FAIL) >= 2
    assert optuna.trial.TrialState.COMPLETE not in states


def test_study_tracking_end_to_end(ray_local, tiny_spec, tmp_path):
    """Runner + MLflow: one parent, one child per trial, pareto tags = the independent front,
    and the registered knee model fetched back reproduces its recorded numbers."""
    import mlflow
    import torch

    from prunetune.datasets import load_dataset
    from prunetune.prune import count_params, evaluate
    from prunetune.search.registry import fetch

    tiny_spec["tracking"] = {"enabled": True, "register": True}
    tiny_spec["train"]["epochs"] = 3
    out = _run(tiny_spec, tmp_path)
    client = mlflow.MlflowClient(out.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == out.parent_run_id
    assert len(children) == 4
    assert sorted(int(r.data.tags["prunetune.trial"]) for r in children) == [0, 1, 2, 3]
    # Pareto tags against an independent O(n^2) dominance check on the logged metrics of the
    # trials whose model did not collapse (a collapsed one is tagged, and never on the front).
    for r in children:
        assert (r.data.tags.get("collapsed") == "true") == (r.data.metrics["collapsed"] == 1)
    pts = {
        r.info.run_id: (r.data.metrics["val_accuracy"], r.data.metrics["params"])
        for r in children
        if r.data.tags.get("collapsed") != "true"
    }

    def dominated(p):
        return any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in pts.values())

    front = {rid for rid, p in pts.items() if not dominated(p)}
    tagged = {r.info.run_id for r in children if r.data.tags.get("pareto") == "true"}
    assert tagged == front
    # Every final front run has its interpretability figures; the parent has the front's.
    for rid in front:
        assert "explain/pathways.png" in {f.path for f in client.list_artifacts(rid, "explain")}
    parent_files = {f.path for f in client.list_artifacts(out.parent_run_id)}
    assert {"pareto_front.png", "pareto_front.html", "pareto_front.csv"} <= parent_files
    # Delivery: the knee model (model.pt2, raw inputs in) reproduces its recorded numbers.
    knee = next(r for r in out.registered if "knee" in r.aliases)
    got = fetch("tiny@knee", tracking_uri=out.tracking_uri)  # model.pt2: raw inputs in
    data = load_dataset("digits")
    x_raw = data.x_test * got.inputs["std"] + got.inputs["mean"]
    with torch.no_grad():
        assert evaluate(got.model, x_raw, data.y_test) == pytest.approx(
            knee.test_accuracy, abs=1e-6
        )
    assert count_params(got.model) == knee.params


def test_study_names_its_objectives_and_fixes_the_hypervolume_reference(tiny_spec, tmp_path):
    """The record carries what every view needs: objective names (optuna-dashboard shows them)
    and a reference fixed at the start — accuracy 0 and the dense count of the largest model
    the space builds: depth 2 × width 32 on digits = (64·32+32) + (32·32+32) + (32·10+10)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study, _ = prepare_study(parse_spec(tiny_spec), storage, fresh=False)
    assert study.metric_names == ["val_accuracy", "params"]
    assert study.user_attrs["hv_reference"] == [0.0, 3466.0]
    tiny_spec["objectives"] = {"reference_point": [0.1, 5000]}
    tiny_spec["name"] = "ref"
    study, _ = prepare_study(parse_spec(tiny_spec), storage, fresh=False)
    assert study.user_attrs["hv_reference"] == [0.1, 5000.0]


def test_stale_trials_are_failed_and_live_ones_left_running(tiny_spec, tmp_path):
    """A second driver joins a study: trials whose driver still beats stay RUNNING; those
    whose heartbeat is older than the grace period are failed."""
    import time

    from prunetune.search._record import ATTR_DRIVER, open_storage

    rdb = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", grace_seconds=2)
    vspec = parse_spec(tiny_spec)
    study, _ = prepare_study(vspec, rdb, fresh=False)
    live, dead = study.ask(), study.ask()
    for t in (live, dead):
        t.set_user_attr(ATTR_DRIVER, "other")
        rdb.record_heartbeat(t._trial_id)
    time.sleep(3)
    rdb.record_heartbeat(live._trial_id)
    study, _ = prepare_study(vspec, rdb, fresh=False)
    states = {t.number: t.state for t in study.trials}
    assert states == {
        live.number: optuna.trial.TrialState.RUNNING,
        dead.number: optuna.trial.TrialState.FAIL,
    }


def test_val_loss_study_minimises_the_loss(ray_local, tiny_spec, tmp_path):
    """A regression study (pathways-toy) ranks trials on val_loss ↓ and params ↓: Optuna's
    directions, the outcome's front, the MLflow pareto tags and the registered models agree
    with an independent dominance check on the logged losses."""
    import mlflow

    tiny_spec.update(
        name="toy",
        dataset="pathways-toy",
        model={"family": "mlp", "depth": 2, "width": [4, 10], "activation": "silu"},
        train={"epochs": 3, "batch_size": 64, "lr": [0.003, 0.03], "loss": "l1"},
        tracking={"enabled": True, "register": True, "explain": False},
        objectives={"max_val_loss": 10.0},
    )
    out = _run(tiny_spec, tmp_path)
    study = optuna.load_study(study_name="toy", storage=out.storage)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert out.completed == 4 and all("val_loss" in t for t in out.trials)

    def front_of(pts: dict) -> set:
        return {
            k
            for k, p in pts.items()
            if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts.values())
        }

    by_trial = {t["trial"]: (t["val_loss"], t["params"]) for t in out.trials if not t["collapsed"]}
    assert {t["trial"] for t in out.front} == front_of(by_trial)

    client = mlflow.MlflowClient(out.tracking_uri)
    exp = client.get_experiment_by_name("toy")
    children = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == out.parent_run_id
    ]
    assert all("val_accuracy" not in r.data.metrics for r in children)
    children = [r for r in children if r.data.tags.get("collapsed") != "true"]
    assert all(r.data.params["train.loss"] == "l1" for r in children)
    pts = {r.info.run_id: (r.data.metrics["val_loss"], r.data.metrics["params"]) for r in children}
    tagged = {r.info.run_id for r in children if r.data.tags.get("pareto") == "true"}
    assert tagged == front_of(pts)
    parent = client.get_run(out.parent_run_id)
    assert parent.data.params["objectives.metric"] == "val_loss"
    # the smallest model whose loss is under the ceiling, and the most accurate = lowest loss
    by_alias = {a: v for v in out.registered for a in v.aliases}
    best = min(pts.values())
    assert (by_alias["most-accurate"].params, by_alias["most-accurate"].val_accuracy) == (
        best[1],
        pytest.approx(float("nan"), nan_ok=True),
    )
    ok = [p for p in pts.values() if p[0] <= 10.0]
    assert by_alias["smallest"].params == min(p[1] for p in ok)


def test_a_trial_process_never_imports_mlflow(ray_local, tmp_path):
    from ray import tune

    def probe(config: dict) -> None:  # local: Ray ships it by value to the worker
        """The runner's own trainable in a real Tune worker, then what that process imported."""
        import sys

        from prunetune.search._worker import trainable

        trainable(config, threads=1)
        tune.report({"loaded": sorted(m for m in ("mlflow", "optuna") if m in sys.modules)})

    config = {
        "trial_number": 0,
        "trial_config": {
            "dataset": "digits",
            "model": {"widths": [8]},
            "train": {"epochs": 1},
            "method": {"name": "gumbel"},
        },
    }
    grid = tune.Tuner(
        tune.with_resources(probe, {"cpu": 1}),
        param_space=config,
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    result = grid[0].metrics
    assert result["loaded"] == []
    cp = grid[0].checkpoint  # weights and hard masks travel as a Tune checkpoint
    assert {"weights.safetensors", "masks.safetensors", "input.json"} <= set(
        os.listdir(f"{cp.path}/model")
    )


def test_the_live_view_counts_trials_front_and_best_per_budget(tiny_spec):
    """The live view, from what the driver's callback saw: 1 trial done before this run,
    2 done now (one on the front of the other), 1 running, 1 failed; best accuracy per budget."""
    import io

    from rich.console import Console

    from prunetune.search.runner import _driver

    class Trial:
        def __init__(self, tid: str, n: int, result: dict | None = None) -> None:
            self.trial_id, self.config, self.last_result = tid, {"trial_number": n}, result
            self.error_file = None

    spec = parse_spec(tiny_spec).spec
    d = _driver(total=6, already=1, spec=spec, mirror=None, lines=False, stopped={"e": 1})
    row = {"final": 1, "params_dense": 1000, "density": 0.5, "seconds": 1.0}
    for tid, n, acc, params in (("a", 1, 0.9, 500), ("b", 2, 0.8, 5)):
        d.on_trial_start(0, [], Trial(tid, n))
        d.on_trial_complete(0, [], Trial(tid, n, {**row, "val_accuracy": acc, "params": params}))
    d.on_trial_start(0, [], Trial("c", 3))
    d.on_trial_start(0, [], Trial("d", 4))
    d.on_trial_error(0, [], Trial("d", 4), why="ValueError: boom")
    d.on_trial_start(0, [], Trial("e", 5))  # a rung stopped it after epoch 1: not a failure
    d.on_trial_complete(0, [], Trial("e", 5, {"epoch_rows": [], "val_accuracy": 0.1}))
    out = io.StringIO()
    Console(file=out, width=200).print(d.render())
    text = out.getvalue()
    assert "trials 4/6 done" in text and "1 running" in text and "1 failed" in text
    assert "1 stopped early" in text and d.stopped_here == [5]
    assert "front: 2" in text
    # ≤1% of 1,000 params: only the 5-parameter model (0.800); ≤100%: the best (0.900)
    assert "≤1% params: 0.800" in text and "≤100% params: 0.900" in text
    assert d.failures == ["ValueError: boom"] and not d.stop_all()  # max_failures is 3


def test_without_a_terminal_a_running_trial_prints_its_latest_epoch_at_most_every_interval(
    tiny_spec, capsys, monkeypatch
):
    """A log of long trials shows progress between their "done" lines: the latest epoch of a
    result's batch, no more often than PROGRESS_LINE_S per trial."""
    from types import SimpleNamespace

    from prunetune.search import runner

    train = {"epochs": 4, "finetune_epochs": 2}
    trial = SimpleNamespace(
        trial_id="a", error_file=None, config={"trial_number": 7, "trial_config": {"train": train}}
    )

    spec = parse_spec(tiny_spec).spec
    d = runner._driver(total=1, already=0, spec=spec, mirror=None, lines=True, stopped={})
    rows = [
        {"epoch": e, "val_accuracy": 0.5 + e / 10, "params": 100 - e, "density": 0.1 - e / 100}
        for e in (1, 2, 3)
    ]
    monkeypatch.setattr(runner, "PROGRESS_LINE_S", 0.0)
    d.on_trial_start(0, [], trial)
    d.on_trial_result(0, [], trial, {"epoch_rows": rows[:2]})
    assert capsys.readouterr().err == (
        "[prunetune] trial 7 epoch 2/6: val_accuracy=0.7 params=98 (8.00%)\n"
    )
    monkeypatch.setattr(runner, "PROGRESS_LINE_S", 3600.0)  # within the interval: quiet
    d.on_trial_result(0, [], trial, {"epoch_rows": rows[2:]})
    assert capsys.readouterr().err == ""
    quiet = runner._driver(total=1, already=0, spec=spec, mirror=None, lines=False, stopped={})
    monkeypatch.setattr(runner, "PROGRESS_LINE_S", 0.0)
    quiet.on_trial_result(0, [], trial, {"epoch_rows": rows})  # a terminal: the live view
    assert capsys.readouterr().err == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_fast_in_one_line_before_any_store(tiny_spec, tmp_path):
    """Ray itself retries an address nobody listens at for over five minutes."""
    port = _free_port()  # closed again: nothing listens there
    workdir = tmp_path / "w"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        _run(tiny_spec, workdir, ray_address=f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30
    assert str(err.value).startswith(
        f"--ray-address 127.0.0.1:{port}: cannot join the Ray cluster: ConnectionError: "
        f"nothing answers at 127.0.0.1:{port} within 10 s"
    )
    assert "\n" not in str(err.value)
    assert list(workdir.iterdir()) == []  # no Optuna storage, no MLflow store


def test_the_probe_passes_a_listening_address_and_leaves_other_forms_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        _probe(f"127.0.0.1:{port}")
        _probe(f"ray://127.0.0.1:{port}")
    for address in (None, "auto", "local"):
        _probe(address)
    with pytest.raises(ConnectionError, match=f"nothing answers at 127.0.0.1:{port}"):
        _probe(f"ray://127.0.0.1:{port}", timeout=2)


def test_workers_get_a_malloc_arena_cap_that_the_driver_or_the_runtime_env_changes():
    """Reused trial workers keep their memory flat with 2 glibc arenas (bench/worker_memory.py);
    the driver's MALLOC_ARENA_MAX, then --runtime-env's env_vars, win over that default."""
    driver = {"PRUNETUNE_DATA": "/data", "PYTHONPATH": "/lib", "HOME": "/root"}
    assert worker_runtime_env(None, ("/spec",), environ=driver) == {
        "env_vars": {
            "PRUNETUNE_DATA": "/data",
            "MALLOC_ARENA_MAX": "2",
            "PYTHONPATH": os.pathsep.join(["/spec", "/lib"]),
        }
    }
    env = worker_runtime_env(environ={"MALLOC_ARENA_MAX": "0"})["env_vars"]
    assert env == {"MALLOC_ARENA_MAX": "0"}  # glibc's default, as the driver asked
    user = {"working_dir": ".", "env_vars": {"MALLOC_ARENA_MAX": "8", "PYTHONPATH": "/u"}}
    got = worker_runtime_env(user, ("/spec",), environ={"MALLOC_ARENA_MAX": "4"})
    assert got == {
        "working_dir": ".",
        "env_vars": {"MALLOC_ARENA_MAX": "8", "PYTHONPATH": os.pathsep.join(["/u", "/spec"])},
    }
    assert user["env_vars"]["PYTHONPATH"] == "/u"  # the caller's dict is left alone
