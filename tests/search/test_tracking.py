"""The MLflow mirror against real stores: every trial of the record, the front, the backfill.

A study of eight real digits trials is recorded in a real Optuna storage and mirrored by the
driver's :class:`StudyMirror` into a real MLflow SQLite store (``record_study``); the runner's
own end-to-end tests (``test_runner_e2e.py``) run the same mirror behind Ray Tune.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from prunetune.search._mlflow import param_value, resolve_tracking_uri
from prunetune.search.tracking import StudyMirror
from prunetune.search.trial import run_trial

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
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": i},
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


@pytest.fixture(scope="module")
def made(tmp_path_factory, make_study):
    return make_study(tmp_path_factory.mktemp("mirror"), "conc", SPEC, CONFIGS)


def _children(c: MlflowClient, mirror: StudyMirror) -> list:
    return c.search_runs(
        [mirror.experiment_id], f"tags.`mlflow.parentRunId` = '{mirror.parent_run_id}'"
    )


def _dominates(a, b) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_every_trial_is_mirrored_with_every_metric_and_its_files(made, tmp_path):
    c, mirror = MlflowClient(made["uri"]), made["mirror"]
    runs = {int(r.data.tags["prunetune.trial"]): r for r in _children(c, mirror)}
    assert sorted(runs) == list(range(len(CONFIGS)))
    for n, res in enumerate(made["results"]):
        run = runs[n]
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{n:04d}"
        assert run.data.tags["prunetune.study"] == "conc"
        # the trial config as params: what was sampled, then the rest of the full config
        assert run.data.params["method.lam"] == param_value(CONFIGS[n]["method"]["lam"])
        assert run.data.params["train.optimizer"] == "adam"  # a default, from the checkpoint
        # final metrics are the run's latest values, exactly
        for k, v in res.metrics.items():
            assert run.data.metrics[k] == float(v), (n, k)
        for layer, d in res.per_layer.items():
            assert run.data.metrics[f"layer.{layer}.density"] == d["density"]
        # every epoch of every per-epoch metric, at step = epoch, once
        for key in res.history[0]:
            if key == "epoch":
                continue
            hist = c.get_metric_history(run.info.run_id, key)
            per_epoch = {(int(r["epoch"]), float(r[key])) for r in res.history}
            assert per_epoch <= {(m.step, m.value) for m in hist}, (n, key)
            assert len(hist) == len(per_epoch) + (key in res.metrics), (n, key)
        # the checkpoint's files: tensors only, equal to the trial's compact model and masks
        d = Path(c.download_artifacts(run.info.run_id, "model", str(tmp_path / str(n))))
        assert sorted(f.name for f in d.iterdir()) == [
            "arch.json",
            "input.json",
            "kept_units.json",
            "masks.safetensors",
            "weights.pt",
            "weights.safetensors",
        ]
        state = torch.load(d / "weights.pt", weights_only=True)
        ref = res.export.model.state_dict()
        assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
        masks = load_file(d / "masks.safetensors")
        assert set(masks) == {f"{name}.weight" for name in res.masks} | {
            f"{name}.bias" for name, m in res.masks.items() if m.bias is not None
        }
        assert all(set(t.unique().tolist()) <= {0.0, 1.0} for t in masks.values())
    # artifacts live beside the database, not in anybody's working directory
    db = Path(made["uri"].removeprefix("sqlite:///"))
    assert (db.parent / "mlartifacts" / runs[0].info.run_id / "artifacts" / "model").is_dir()


def test_the_parent_run_mirrors_the_records_front(made, tmp_path):
    c, mirror, study = MlflowClient(made["uri"]), made["mirror"], made["study"]
    runs = _children(c, mirror)
    # a collapsed trial (tagged; its metric says so) is never on the front nor in its area
    tagged = {r.info.run_id for r in runs if r.data.tags.get("collapsed") == "true"}
    assert tagged == {r.info.run_id for r in runs if r.data.metrics.get("collapsed") == 1}
    pts = {
        r.info.run_id: (r.data.metrics["val_accuracy"], r.data.metrics["params"])
        for r in runs
        if r.info.run_id not in tagged
    }
    front = {a for a, pa in pts.items() if not any(_dominates(pb, pa) for pb in pts.values())}
    assert {r.info.run_id for r in runs if r.data.tags.get("pareto") == "true"} == front
    parent = c.get_run(mirror.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna_storage"] == made["storage"]
    assert parent.data.params["search.sampler"] == "random"
    assert parent.data.metrics["trials_finished"] == len(CONFIGS)
    assert parent.data.metrics["trials_collapsed"] == len(tagged)
    # hypervolume on (accuracy, log10 params) against the reference the study fixed
    ref = study.user_attrs["hv_reference"]
    logged = sorted((math.log10(p), a) for a, p in pts.values())  # an independent sweep
    area, best = 0.0, 0.0
    for i, (x, acc) in enumerate(logged):
        best = max(best, acc)
        nxt = logged[i + 1][0] if i + 1 < len(logged) else math.log10(ref[1])
        area += (nxt - x) * best
    assert parent.data.metrics["hypervolume"] == pytest.approx(area)
    d = Path(c.download_artifacts(mirror.parent_run_id, "", str(tmp_path / "parent")))
    data = json.loads((d / "pareto_front.json").read_text())
    assert {r["run_id"] for r in data["front"]} == front
    assert data["hypervolume"] == parent.data.metrics["hypervolume"]
    rows = list(csv.DictReader(io.StringIO((d / "pareto_front.csv").read_text())))
    assert sorted(int(r["trial"]) for r in rows) == sorted(r["trial"] for r in data["front"])
    assert {"val_accuracy", "test_accuracy", "params", "method", "method.lam"} <= set(rows[0])
    assert "method.lam" in (d / "pareto_front.html").read_text()
    assert (d / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f.path for f in c.list_artifacts(mirror.parent_run_id, "spec")} == {"spec/spec.json"}


def test_resume_backfills_what_a_killed_driver_left_out(tmp_path, make_study, tell_trial):
    """The record is the truth: a trial Optuna has COMPLETE but MLflow lacks (the driver died
    between tell and the mirror's write) is mirrored from the record and its checkpoint; a
    run left RUNNING whose trial failed ends KILLED. The front's tags follow."""
    made = make_study(tmp_path, "resume", SPEC, CONFIGS[:2])
    study, c = made["study"], MlflowClient(made["uri"])
    res = run_trial(CONFIGS[2])
    tell_trial(study, CONFIGS[2], res, res.save(tmp_path / "late"))
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    parent_id = made["mirror"].parent_run_id
    orphan = c.create_run(
        made["mirror"].experiment_id,
        tags={"mlflow.parentRunId": parent_id, "prunetune.trial": str(failed.number)},
    )
    mirror = StudyMirror(made["uri"], "resume", "resume", SPEC, made["storage"], explain=False)
    mirror.start(study)
    mirror.close()
    runs = {int(r.data.tags["prunetune.trial"]): r for r in _children(c, mirror)}
    assert runs[2].info.status == "FINISHED"
    assert runs[2].data.metrics["val_accuracy"] == res.metrics["val_accuracy"]
    assert runs[2].data.metrics["params"] == res.metrics["params"]
    assert "model/weights.pt" in {f.path for f in c.list_artifacts(runs[2].info.run_id, "model")}
    assert c.get_run(orphan.info.run_id).info.status == "KILLED"
    finished = {n for n, r in runs.items() if r.info.status == "FINISHED"}
    assert finished == {t.number for t in study.trials if t.state.name == "COMPLETE"}


def test_a_deleted_experiment_fails_the_mirror_with_a_readable_error(tmp_path, make_study):
    made = make_study(tmp_path, "gone", SPEC, CONFIGS[:1])
    c = MlflowClient(made["uri"])
    c.delete_experiment(made["mirror"].experiment_id)
    mirror = StudyMirror(made["uri"], "gone", "gone", SPEC, made["storage"])
    mirror.start(made["study"])
    with pytest.raises(Exception, match="is deleted"):
        mirror.close()


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
