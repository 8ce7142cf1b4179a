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


def test_sigkill_driver_then_rerun_loses_and_duplicates_nothing(tiny_spec, tmp_path):
    tiny_spec["search"]["n_trials"] = 8
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
    # MLflow agrees: one FINISHED child run per complete trial, none left RUNNING.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    finished = sorted(
        int(r.data.tags["prunetune.trial"]) for r in children if r.info.status == "FINISHED"
    )
    assert finished == sorted(t.number for t in complete)
    assert not [r for r in runs if r.info.status == "RUNNING"]


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
