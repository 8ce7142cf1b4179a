"""Slow end-to-end runner tests with real processes: SIGKILL + resume, and a 2-node Ray cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from prunetune.search.runner import RunOptions, run_study
from prunetune.search.spec import parse_spec

pytestmark = pytest.mark.slow


def write_spec(path: Path, spec: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


PRUNETUNE = [sys.executable, "-m", "prunetune.search.cli"]


def _complete(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _mirror_matches_record(tmp_path: Path, storage: str, name: str) -> None:
    """MLflow lists exactly Optuna's COMPLETE trials, FINISHED, with equal objective values,
    and no run is left RUNNING."""
    import mlflow

    study = optuna.load_study(study_name=name, storage=storage)
    complete = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    finished = {
        int(r.data.tags["prunetune.trial"]): [
            r.data.metrics["val_accuracy"],
            r.data.metrics["params"],
        ]
        for r in children
        if r.info.status == "FINISHED"
    }
    assert finished == complete
    assert len([r for r in children if r.info.status == "FINISHED"]) == len(complete)
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_sigkill_driver_then_rerun_loses_and_duplicates_nothing(tiny_spec, tmp_path):
    tiny_spec["search"]["n_trials"] = 8
    tiny_spec["search"]["heartbeat_grace"] = 5  # the killed driver's trials go stale after 5 s
    tiny_spec["train"]["epochs"] = 3
    tiny_spec["tracking"] = {"enabled": True, "register": False}
    spec = write_spec(tmp_path / "kill.yaml", tiny_spec)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [*PRUNETUNE, "search", str(spec), "--workdir", str(tmp_path), "--quiet"]
    driver = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    try:
        while len(_complete(storage, "tiny")) < 3:
            assert driver.poll() is None, "driver exited before 3 trials completed"
            assert time.time() < deadline, "3 trials did not complete in time"
            time.sleep(0.3)
        before = {t.number: t.values for t in _complete(storage, "tiny")}
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: no chance to clean up
        driver.wait(timeout=30)
    finally:
        time.sleep(2)
        # Ray processes the dead driver started (same session), so the rerun starts clean.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert len(before) >= 3
    assert len(before) < 8, "the driver finished before it was killed; make trials longer"

    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert {t.number: t.values for t in complete if t.number in before} == before
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)  # stale RUNNING → FAIL
    _mirror_matches_record(tmp_path, storage, "tiny")


def test_a_second_driver_joins_a_running_study(tiny_spec, tmp_path):
    """Driver B starts on driver A's running study: A's running trial stays RUNNING and lands
    COMPLETE, both drivers stop, and the study ends with exactly n_trials COMPLETE."""
    tiny_spec["search"].update(n_trials=6, max_concurrent=1, heartbeat_grace=30)
    tiny_spec["train"]["epochs"] = 120  # trials of a few seconds
    tiny_spec["tracking"] = {"enabled": True, "register": False, "explain": False}
    spec = write_spec(tmp_path / "join.yaml", tiny_spec)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [*PRUNETUNE, "search", str(spec), "--workdir", str(tmp_path), "--quiet"]
    a = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    running: set[int] = set()
    while not running:
        assert a.poll() is None and time.time() < deadline, "driver A never ran a trial"
        time.sleep(0.2)
        with contextlib.suppress(KeyError):
            study = optuna.load_study(study_name="tiny", storage=storage)
            running = {t.number for t in study.trials if t.state.name == "RUNNING"}
    b = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = {}
    while a.poll() is None or b.poll() is None:
        assert time.time() < deadline, "the drivers did not finish in time"
        study = optuna.load_study(study_name="tiny", storage=storage)
        seen.update({t.number: t.state.name for t in study.trials if t.number in running})
        assert "FAIL" not in seen.values(), "driver B failed driver A's running trial"
        time.sleep(0.2)
    assert a.returncode == 0, a.stderr.read()[-3000:]
    assert b.returncode == 0, b.stderr.read()[-3000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and "FAIL" not in states and "RUNNING" not in states
    assert all(study.trials[n].state.name == "COMPLETE" for n in running)
    _mirror_matches_record(tmp_path, storage, "tiny")


def test_two_node_cluster_runs_trials_on_both_nodes(tiny_spec, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        tiny_spec["search"]["max_concurrent"] = 2
        tiny_spec["search"]["n_trials"] = 4
        # Trials of ~15 s, far longer than the gap between the two nodes' first actors starting.
        # With 0.1 s trials, Tune (reuse_actors) hands a pending trial to the first actor that
        # finishes and cancels the one still starting, so every trial can land on one node.
        tiny_spec["train"]["epochs"] = 400
        out = run_study(
            parse_spec(tiny_spec),
            RunOptions(workdir=Path(tmp_path), ray_address=cluster.address, progress=False),
        )
        nodes = {r["node_id"] for r in out.results}
        assert out.completed == 4
        assert len(nodes) == 2, nodes
        assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_joined_cluster_whose_nodes_cannot_hold_a_trial_is_warned_about(tiny_spec, capsys):
    # A trial must fit on one node: 1 + 1 CPUs on two nodes do not hold {cpu: 2}. A joined
    # cluster's autoscaler may still add a node, so the driver says so and goes on.
    import ray
    from ray.cluster_utils import Cluster

    from prunetune.search.runner import _check_resources, _nodes_fit

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        for resources, warned in [
            ({"cpu": 1, "gpu": 1}, False),  # the second node
            ({"cpu": 2, "gpu": 0}, True),
            ({"cpu": 1, "gpu": 2}, True),
        ]:
            tiny_spec["search"]["resources"] = resources
            _check_resources(parse_spec(tiny_spec), cluster.address)
            err = capsys.readouterr().err
            assert ("autoscaler" in err) is warned, (resources, err)
            if warned:
                assert "1 CPU + 0 GPU" in err and "1 CPU + 1 GPU" in err, err
        # the remedy a local Ray's refusal names: what no node has enough of
        assert _nodes_fit(2, 0, cluster.address)[1] == "lower cpu"
        assert _nodes_fit(1, 2, cluster.address)[1] == "lower gpu"
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, stopped (with its workers) at the end."""
    from prunetune.search.cli_tracking import server_command, server_env, wait_for_server

    d = tmp_path_factory.mktemp("server")
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


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_sixteen_trials_four_at_a_time_lose_no_metric(store, tiny_spec, tmp_path, request):
    """16 trials, 4 at a time (0.5 CPU each on a 2-CPU Ray): every epoch row every trial
    reported and its final metrics are in the mirror, equal to the record and the checkpoint."""
    import json

    import mlflow
    import ray

    uri = request.getfixturevalue("mlflow_server") if store == "server" else None
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tiny_spec["search"].update(n_trials=16, max_concurrent=4, resources={"cpu": 0.5})
    tiny_spec["train"]["epochs"] = 4
    tiny_spec["tracking"] = {"enabled": True, "register": False, "explain": False}
    tiny_spec["name"] = f"sixteen-{store}"
    out = run_study(
        parse_spec(tiny_spec),
        RunOptions(workdir=tmp_path, progress=False, tracking_uri=uri),
    )
    assert out.completed == 16
    study = optuna.load_study(study_name=out.study_name, storage=out.storage)
    client = mlflow.MlflowClient(out.tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name(out.study_name).experiment_id],
        f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'",
    )
    assert len(children) == 16
    for run in children:
        assert run.info.status == "FINISHED"
        t = study.trials[int(run.data.tags["prunetune.trial"])]
        assert [run.data.metrics["val_accuracy"], run.data.metrics["params"]] == t.values
        for k, v in t.user_attrs["result"].items():
            assert run.data.metrics[k] == pytest.approx(v), k
        d = client.download_artifacts(
            run.info.run_id, "history.json", str(tmp_path / run.info.run_id)
        )
        history = json.loads(Path(d).read_text())
        epochs = [int(r["epoch"]) for r in history]
        if t.user_attrs["result"].get("collapsed"):  # stopped at the end of that epoch
            assert history[-1]["collapsed"] == 1 and epochs == list(range(1, len(epochs) + 1))
        else:
            assert epochs == [1, 2, 3, 4]
        for key in history[0]:
            if key == "epoch":
                continue
            logged = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)}
            assert {(int(r["epoch"]), float(r[key])) for r in history} <= logged, key
