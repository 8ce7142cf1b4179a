"""Registry: register a real (tiny) study, fetch ``NAME@ALIAS`` back, check it to the number."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunetune.datasets import load_dataset
from prunetune.prune import evaluate
from prunetune.prune.export import count_params
from prunetune.search import pareto
from prunetune.search._errors import ConfigError
from prunetune.search.cli import app
from prunetune.search.registry import (
    fetch,
    fetch_to,
    list_models,
    load_compact,
    parse_model_uri,
    register_study,
)

STUDY = "reg-study"
FLOOR = 0.5
SPEC = {"name": STUDY, "dataset": "digits", "objectives": {"min_val_accuracy": FLOOR}}
CONFIGS = [
    {
        "dataset": "digits",
        "model": {"widths": [w]},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.02, "seed": i},
        "method": {"name": "gumbel", "lam": lam, "granularity": gran},
        "threads": 1,
    }
    for i, (w, lam, gran) in enumerate(
        [
            (4, 0.1, "weight"),
            (8, 1.0, "neuron"),
            (16, 0.1, "weight"),
            (32, 3.0, "weight"),
            (24, 0.01, "neuron"),
        ]
    )
]


@pytest.fixture(scope="module")
def study(tmp_path_factory, make_study):
    """A finished study of five real trials (Optuna record + MLflow mirror), registered with
    the defaults."""
    from mlflow import MlflowClient

    d = tmp_path_factory.mktemp("registry")
    made = make_study(d, STUDY, SPEC, CONFIGS)
    uri = made["uri"]
    versions = register_study(uri, STUDY)
    c = MlflowClient(uri)
    runs = {
        r.info.run_id: r
        for r in c.search_runs([made["mirror"].experiment_id], "tags.`prunetune.role` = 'trial'")
    }
    results = {made["mirror"].runs[n]: res for n, res in enumerate(made["results"])}
    return {
        "uri": uri,
        "dir": d,
        "results": results,
        "versions": versions,
        "runs": runs,
        "client": c,
        "storage": made["storage"],
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _points(runs):
    ids = sorted(runs)
    return ids, [
        (runs[i].data.metrics["val_accuracy"], runs[i].data.metrics["params"]) for i in ids
    ]


def test_aliases_point_where_the_rules_say(study):
    c, runs = study["client"], study["runs"]
    ids, pts = _points(runs)
    # independent of prunetune.search.pareto for the two simple rules
    most = max(range(len(pts)), key=lambda i: (pts[i][0], -pts[i][1]))
    ok = [i for i in range(len(pts)) if pts[i][0] >= FLOOR]
    small = min(ok, key=lambda i: (pts[i][1], -pts[i][0]))
    expected = {"most-accurate": ids[most], "smallest": ids[small], "knee": ids[pareto.knee(pts)]}
    got = {a: c.get_model_version_by_alias(STUDY, a).run_id for a in expected}
    assert got == expected
    assert {v.run_id for v in study["versions"]} == set(expected.values())
    for v in study["versions"]:
        assert set(v.aliases) == {a for a, rid in expected.items() if rid == v.run_id}


def test_version_tags_and_description(study):
    c, runs = study["client"], study["runs"]
    for v in study["versions"]:
        mv = c.get_model_version(STUDY, v.version)
        m = runs[mv.run_id].data.metrics
        assert mv.tags["params"] == str(int(m["params"]))
        assert float(mv.tags["val_accuracy"]) == m["val_accuracy"]
        assert float(mv.tags["test_accuracy"]) == m["test_accuracy"]
        assert mv.tags["method"] == "gumbel"
        assert mv.tags["trial_run_id"] == mv.run_id
        assert f"{int(m['params']):,} of" in mv.description
        assert f"{m['val_accuracy']:.4f}" in mv.description
    rm = c.get_registered_model(STUDY)
    assert "knee" in rm.description and set(rm.aliases) == {"knee", "smallest", "most-accurate"}


@pytest.mark.parametrize("alias", ["knee", "smallest", "most-accurate"])
def test_fetch_round_trip_is_exact(study, digits, alias):
    c = study["client"]
    mv = c.get_model_version_by_alias(STUDY, alias)
    m = study["runs"][mv.run_id].data.metrics
    model = fetch(f"{STUDY}@{alias}", tracking_uri=study["uri"])
    assert isinstance(model, nn.Sequential)
    assert all(type(mod).__module__.startswith("torch.nn.") for mod in model.modules())
    assert evaluate(model, digits.x_test, digits.y_test) == m["test_accuracy"]
    assert evaluate(model, digits.x_val, digits.y_val) == m["val_accuracy"]
    assert count_params(model) == m["params"]
    original = study["results"][mv.run_id].export.model
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), original(digits.x_test))


def test_prunetune_fetch_forwards(study):
    import prunetune

    a = prunetune.fetch(f"{STUDY}@knee", tracking_uri=study["uri"])
    v = study["client"].get_model_version_by_alias(STUDY, "knee").version
    b = prunetune.fetch(f"{STUDY}/{v}", tracking_uri=study["uri"])
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.fixture
def mlflow_globals(monkeypatch):
    """Point MLflow's global tracking/registry URIs somewhere for one test, then restore them
    (``set_*_uri`` also export ``MLFLOW_*_URI``; monkeypatch restores the environment)."""
    import mlflow

    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])
        else:
            monkeypatch.delenv(k, raising=False)

    def point_at(uri):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

    yield point_at
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_mlflow_pytorch_flavour_loads(study, digits, mlflow_globals):
    import mlflow

    # a user who points MLflow at the study's store loads the flavour by alias
    mlflow_globals(study["uri"])
    loaded = mlflow.pytorch.load_model(f"models:/{STUDY}@knee")
    info = mlflow.models.get_model_info(f"models:/{STUDY}@knee")
    ours = fetch(f"{STUDY}@knee", tracking_uri=study["uri"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(digits.x_test), ours(digits.x_test))
    assert info.signature is not None and info.signature.inputs.is_tensor_spec()
    assert info.saved_input_example_info is not None
    mv = study["client"].get_model_version_by_alias(STUDY, "knee")
    assert info.model_uuid == mv.tags["logged_model_id"] == info.model_id
    assert info.run_id == mv.run_id


def test_registry_leaves_mlflow_globals_alone(study, tmp_path, mlflow_globals):
    import mlflow

    other = tmp_path / "other.db"
    mlflow_globals(f"sqlite:///{other}")  # a sentinel store the registry must never touch

    def globals_now():
        return (
            mlflow.get_tracking_uri(),
            mlflow.get_registry_uri(),
            os.environ.get("MLFLOW_TRACKING_URI"),
            os.environ.get("MLFLOW_REGISTRY_URI"),
        )

    before = globals_now()
    name = "reg-globals"  # a fresh model: every chosen trial gets a new logged model + version
    c = study["client"]
    try:
        got = register_study(study["uri"], STUDY, ["knee", "smallest"], model_name=name)
        assert got and all(v.created for v in got)
        assert globals_now() == before
        model = fetch(f"{name}@knee", tracking_uri=study["uri"])
        assert globals_now() == before
        knee = c.get_model_version_by_alias(STUDY, "knee")
        assert got[0].run_id == knee.run_id
        original = study["results"][knee.run_id].export.model
        x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(model(x), original(x))
    finally:
        c.delete_registered_model(name)
    assert not other.exists()  # nothing was written to (or created in) the global store


def test_version_artifacts_are_tensors_and_json(study, tmp_path):
    got = fetch_to(f"{STUDY}@smallest", tmp_path, tracking_uri=study["uri"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"weights.pt", "arch.json", "kept_units.json", "card.json", "MODEL_CARD.md"} <= names
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert arch == got.arch and arch["input_shape"] == [1, 8, 8]
    card = json.loads((tmp_path / "card.json").read_text())
    mv = study["client"].get_model_version_by_alias(STUDY, "smallest")
    assert card["aliases"] == sorted(mv.aliases) and "smallest" in card["aliases"]
    assert card["version"] == str(mv.version) and card["dataset"] == "digits"
    assert card["metrics"]["params"] == count_params(load_compact(tmp_path))
    md = (tmp_path / "MODEL_CARD.md").read_text()
    assert (
        f"# {STUDY} v{got.version}" in md
        and f'prunetune.fetch("{STUDY}@{card["aliases"][0]}")' in md
    )


def test_register_again_is_idempotent_and_rules_compose(study):
    c, uri = study["client"], study["uri"]
    before = {v.version for v in c.search_model_versions(f"name = '{STUDY}'")}
    again = register_study(uri, STUDY)
    assert [(v.version, v.created) for v in again] == [
        (v.version, False) for v in study["versions"]
    ]
    runs = study["runs"]
    ids, pts = _points(runs)
    front = register_study(uri, STUDY, ["all-pareto"])
    assert {v.run_id for v in front} == {ids[i] for i in pareto.pareto_front(pts)}
    # a threshold rule: the smallest trial with val accuracy >= X
    x = sorted(p[0] for p in pts)[-2]
    (v,) = register_study(uri, STUDY, [f"min-val-accuracy={x}"])
    assert v.run_id == ids[pareto.smallest(pts, x)]
    after = {mv.version for mv in c.search_model_versions(f"name = '{STUDY}'")}
    assert before <= after
    assert len(after) == len({mv.run_id for mv in c.search_model_versions(f"name = '{STUDY}'")})
    models = list_models(uri)
    assert [m["name"] for m in models] == [STUDY]
    assert sorted(a for v in models[0]["versions"] for a in v["aliases"]) == sorted(
        ["knee", "smallest", "most-accurate"]
    )


def test_errors_name_what_exists(study):
    with pytest.raises(ConfigError, match=r"has no alias 'best'; aliases: \{'knee'"):
        fetch(f"{STUDY}@best", tracking_uri=study["uri"])
    with pytest.raises(
        ConfigError, match=r"no registered model 'nope'.*registered: \['reg-study'\]"
    ):
        fetch("nope@knee", tracking_uri=study["uri"])
    missing = study["dir"] / "elsewhere" / "mlflow.db"
    with pytest.raises(ConfigError, match="no MLflow store at"):
        fetch(f"{STUDY}@knee", tracking_uri=f"sqlite:///{missing}")
    assert not missing.parent.exists()  # nothing created on the way
    with pytest.raises(ConfigError, match="must be NAME@ALIAS"):
        parse_model_uri("just-a-name")
    assert parse_model_uri("models:/a.b@knee") == ("a.b", "knee", None)
    assert parse_model_uri("a/3") == ("a", None, "3")
    with pytest.raises(ConfigError, match="no study named 'ghost'"):
        register_study(study["uri"], "ghost")
    with pytest.raises(ConfigError, match="--select must be one of"):
        register_study(study["uri"], STUDY, ["fastest"])


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_pareto_models_register(study):
    uri = study["uri"]
    res = runner.invoke(app, ["pareto", STUDY, "--json", "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    ids, pts = _points(study["runs"])
    assert {r["run_id"] for r in data["front"]} == {ids[i] for i in pareto.pareto_front(pts)}
    # hypervolume on (accuracy, log10 params) from the reference the study fixed
    ref = data["reference_point"]
    logged = [(a, math.log10(p)) for a, p in pts]
    assert ref == [0.0, max(r.metrics["params_dense"] for r in study["results"].values())]
    assert data["hypervolume"] == pytest.approx(
        pareto.hypervolume(logged, (ref[0], math.log10(ref[1])))
    )
    res = runner.invoke(app, ["pareto", STUDY, "--tracking-uri", uri])
    assert res.exit_code == 0 and "hypervolume" in res.stdout
    res = runner.invoke(app, ["models", "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and STUDY in res.stdout and "most-accurate" in res.stdout
    res = runner.invoke(app, ["models", "--json", "--tracking-uri", uri])
    assert json.loads(res.stdout) == list_models(uri)
    res = runner.invoke(app, ["register", STUDY, "--select", "knee", "--tracking-uri", uri])
    assert res.exit_code == 0 and "(existing)" in res.stdout, res.output
    res = runner.invoke(app, ["register", STUDY, "--select", "best", "--tracking-uri", uri])
    assert res.exit_code == 2 and "--select must be one of" in res.output
    res = runner.invoke(app, ["pareto", "ghost", "--tracking-uri", uri])
    assert res.exit_code == 2 and "no study named 'ghost'" in res.output


def test_cli_fetch_verify_passes_then_fails_loudly_on_tampered_weights(study, tmp_path):
    uri, c = study["uri"], study["client"]
    res = runner.invoke(
        app,
        ["fetch", f"{STUDY}@knee", "-o", str(tmp_path / "ok"), "--verify", "--tracking-uri", uri],
    )
    assert res.exit_code == 0, res.output
    assert "verified: test accuracy" in res.output
    assert (tmp_path / "ok" / "MODEL_CARD.md").is_file()

    # Corrupt the stored weights of the version (in the artifact store itself).
    mv = c.get_model_version_by_alias(STUDY, "knee")
    stored = Path(c.get_logged_model(mv.tags["logged_model_id"]).artifact_location)
    weights = stored / "extra_files" / "weights.pt"
    backup = tmp_path / "weights.bak"
    shutil.copyfile(weights, backup)
    try:
        state = torch.load(weights, weights_only=True)
        last = [k for k in state if k.endswith("weight")][-1]
        state[last] = -state[last]  # flips the logits: accuracy collapses
        torch.save(state, weights)
        res = runner.invoke(
            app,
            [
                "fetch",
                f"{STUDY}@knee",
                "-o",
                str(tmp_path / "bad"),
                "--verify",
                "--tracking-uri",
                uri,
            ],
        )
        assert res.exit_code == 1
        assert "VERIFY FAILED" in res.output
    finally:
        shutil.copyfile(backup, weights)


def test_cli_reports_a_missing_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 2 and "no MLflow store at" in res.output
    assert not (tmp_path / "mlflow.db").exists()


def test_a_study_recorded_before_trials_carried_results_still_registers(tmp_path, make_study):
    """An older record holds only each trial's values; the registry takes the test metrics
    and the config from the trial's MLflow run (the record's values still choose)."""
    import optuna
    from mlflow import MlflowClient

    made = make_study(tmp_path, "old", {"name": "old", "dataset": "digits"}, CONFIGS[:2])
    storage = f"sqlite:///{tmp_path / 'old-record.db'}"
    old = optuna.create_study(
        study_name="old", storage=storage, directions=["maximize", "minimize"]
    )
    for t in made["study"].trials:
        old.add_trial(optuna.trial.create_trial(values=t.values))
    (v,) = register_study(made["uri"], "old", ["most-accurate"], storage=storage)
    best = max(range(2), key=lambda n: (made["results"][n].metrics["val_accuracy"], -n))
    assert v.trial == best
    assert v.test_accuracy == made["results"][best].metrics["test_accuracy"]
    mv = MlflowClient(made["uri"]).get_model_version("old", v.version)
    assert mv.tags["dataset"] == "digits"  # from the run's params
