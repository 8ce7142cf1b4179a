"""Registry: register a real (tiny) study, fetch ``NAME@ALIAS`` back, check it to the number."""

from __future__ import annotations

import copy
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
from prunetune.prune.deliver import DeliveredModel, export_pt2, load_pt2
from prunetune.prune.export import count_params
from prunetune.search import pareto
from prunetune.search._errors import ConfigError
from prunetune.search.cli import app
from prunetune.search.registry import (
    MODEL_FILES,
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
    """The runs that rank (a collapsed trial never does) and their (val accuracy, params)."""
    ids = sorted(i for i in runs if runs[i].data.tags.get("collapsed") != "true")
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


def _raw(x, inputs):
    """Raw inputs (pixels in [0, 1]) from the standardised split the trial was measured on."""
    return x * inputs["std"] + inputs["mean"]


@pytest.mark.parametrize("alias", ["knee", "smallest", "most-accurate"])
def test_fetch_round_trip_is_exact(study, digits, alias):
    c = study["client"]
    mv = c.get_model_version_by_alias(STUDY, alias)
    m = study["runs"][mv.run_id].data.metrics
    got = fetch(f"{STUDY}@{alias}", tracking_uri=study["uri"])
    model = got.model
    assert isinstance(model, DeliveredModel) and got.arch is None and got.files == ()
    assert got.inputs == study["results"][mv.run_id].inputs
    # raw inputs in: the data set's standardisation is part of the program
    acc = evaluate(model, _raw(digits.x_test, got.inputs), digits.y_test)
    assert acc == pytest.approx(m["test_accuracy"], abs=1e-6)
    acc = evaluate(model, _raw(digits.x_val, got.inputs), digits.y_val)
    assert acc == pytest.approx(m["val_accuracy"], abs=1e-6)
    assert count_params(model) == m["params"] == int(mv.tags["params"])
    original = study["results"][mv.run_id].export.model
    with torch.no_grad():
        torch.testing.assert_close(
            model(_raw(digits.x_test, got.inputs)), original(digits.x_test), rtol=0, atol=1e-5
        )
        assert model(_raw(digits.x_test[:1], got.inputs)).shape == (1, 10)  # dynamic batch


def test_prunetune_fetch_forwards(study):
    import prunetune

    a = prunetune.fetch(f"{STUDY}@knee", tracking_uri=study["uri"])  # the module itself
    v = study["client"].get_model_version_by_alias(STUDY, "knee").version
    b = prunetune.fetch(f"{STUDY}/{v}", tracking_uri=study["uri"])
    got = fetch(f"{STUDY}@knee", tracking_uri=study["uri"])  # the full record
    assert got.version == str(v) and "knee" in got.aliases
    assert a.card == b.card == got.card and a.inputs == got.inputs
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
    x = _raw(digits.x_test, ours.inputs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours.model(x))
        assert loaded(x[:3]).shape == (3, 10)  # the flavour's batch is dynamic too
    assert info.signature is not None and info.signature.inputs.is_tensor_spec()
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 8, 8)
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
        model = fetch(f"{name}@knee", tracking_uri=study["uri"]).model
        assert globals_now() == before
        knee = c.get_model_version_by_alias(STUDY, "knee")
        assert got[0].run_id == knee.run_id
        original = study["results"][knee.run_id].export.model
        x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # digits: std 1
        with torch.no_grad():
            torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-5)
    finally:
        c.delete_registered_model(name)
    assert not other.exists()  # nothing was written to (or created in) the global store


def test_version_artifacts_are_tensors_and_json(study, tmp_path):
    from safetensors.torch import load_file

    got = fetch_to(f"{STUDY}@smallest", tmp_path, tracking_uri=study["uri"])
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {*MODEL_FILES, "card.json", "MODEL_CARD.md"}
    assert {p.name for p in got.files} == names
    assert not {"arch.json", "weights.pt"} & names  # retired as the format
    mv = study["client"].get_model_version_by_alias(STUDY, "smallest")
    res = study["results"][mv.run_id]
    weights = load_file(tmp_path / "weights.safetensors")
    masks = load_file(tmp_path / "masks.safetensors")
    assert set(masks) <= set(weights)
    for k, mask in masks.items():  # masks baked into the dense weights
        assert bool(((mask == 0) | (mask == 1)).all())
        assert not bool(weights[k][mask == 0].any())
    inputs = json.loads((tmp_path / "input.json").read_text())
    assert inputs == got.inputs == res.inputs
    assert inputs["shape"] == [1, 8, 8] and inputs["range"] == [0.0, 1.0]
    assert json.loads((tmp_path / "config.json").read_text()) == res.config
    assert json.loads((tmp_path / "kept_units.json").read_text()) == res.export.kept_units
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["aliases"] == sorted(mv.aliases) and "smallest" in card["aliases"]
    assert card["version"] == str(mv.version) and card["dataset"] == "digits"
    assert card["input"] == inputs
    assert card["metrics"]["params"] == count_params(load_pt2(tmp_path / "model.pt2"))
    md = (tmp_path / "MODEL_CARD.md").read_text()
    ref = f"{STUDY}@{card['aliases'][0]}"
    assert f"# {STUDY} v{got.version}" in md and f'prunetune.fetch("{ref}").model' in md
    assert "shape `(batch, 1, 8, 8)`" in md and "values in `[0, 1]`" in md and "float32" in md
    snippet = md.split("```python\n", 1)[1].split("```", 1)[0]  # the first code block
    assert 'torch.export.load("model.pt2").module()' in snippet and "prunetune" not in snippet


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
    assert (tmp_path / "ok" / "model.pt2").is_file()

    # Replace the stored program of the version (in the artifact store itself) by one whose
    # last layer is negated: the logits flip and accuracy collapses.
    mv = c.get_model_version_by_alias(STUDY, "knee")
    stored = Path(c.get_logged_model(mv.tags["logged_model_id"]).artifact_location)
    program = stored / "extra_files" / "model.pt2"
    backup = tmp_path / "model.pt2.bak"
    shutil.copyfile(program, backup)
    try:
        tampered = copy.deepcopy(study["results"][mv.run_id].export.model)
        last = [m for m in tampered.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.neg_()
        export_pt2(tampered, torch.zeros(2, 1, 8, 8), program, mean=0.0, std=1.0)
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
        shutil.copyfile(backup, program)


def test_cli_fetch_onnx_matches_the_program(study, tmp_path):
    out = tmp_path / "onnx"
    res = runner.invoke(
        app,
        ["fetch", f"{STUDY}@knee", "-o", str(out), "--onnx", "--tracking-uri", study["uri"]],
    )
    assert res.exit_code == 0, res.output
    diff = float(res.output.split("max abs diff", 1)[1].split(")", 1)[0])
    assert 0 <= diff <= 1e-4
    import onnxruntime as ort

    got = fetch(f"{STUDY}@knee", tracking_uri=study["uri"])
    x = got.random_inputs(5, seed=3)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), got.model(x), rtol=0, atol=1e-4)


def test_cli_fetch_onnx_without_onnxruntime_fails_before_writing(study, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    out = tmp_path / "never"
    res = runner.invoke(
        app,
        ["fetch", f"{STUDY}@knee", "-o", str(out), "--onnx", "--tracking-uri", study["uri"]],
    )
    assert res.exit_code == 2
    assert res.output.strip() == "error: --onnx needs onnxruntime: pip install 'prunetune[onnx]'"
    assert not out.exists()


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
    c = MlflowClient(made["uri"])
    for run_id in made["mirror"].runs.values():  # runs mirrored before the safetensors files
        stored = Path(c.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "model"
        for f in ("weights.safetensors", "masks.safetensors", "input.json"):
            (stored / f).unlink()
        assert (stored / "arch.json").is_file() and (stored / "weights.pt").is_file()
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
    mv = c.get_model_version("old", v.version)
    assert mv.tags["dataset"] == "digits"  # from the run's params
    # rebuilt from arch.json + weights.pt, delivered as model.pt2 with the data set's statistics
    got = fetch("old@most-accurate", tracking_uri=made["uri"])
    digits = load_dataset("digits")
    assert isinstance(got.model, DeliveredModel)
    assert got.inputs == {**made["results"][best].inputs}
    acc = evaluate(got.model, _raw(digits.x_test, got.inputs), digits.y_test)
    assert acc == pytest.approx(v.test_accuracy, abs=1e-6)
    assert count_params(got.model) == v.params


# --------------------------------------------------------------------------- legacy versions


def _register_legacy_version(c, name: str, run_id: str, tmp: Path):
    """A version in the layout registered before ``model.pt2`` (real MLflow): the compact
    ``nn.Sequential`` as the pt2 flavour, with ``extra_files`` weights.pt, arch.json,
    kept_units.json and card.json from the trial's run."""
    import mlflow.pytorch
    from mlflow.models import Model, infer_signature

    c.download_artifacts(run_id, "model", str(tmp))
    compact = tmp / "model"
    run = c.get_run(run_id)
    card = {"study": STUDY, "run_id": run_id, "method": "gumbel", "dataset": "digits"}
    card["metrics"] = dict(run.data.metrics)
    (compact / "card.json").write_text(json.dumps(card))
    model = load_compact(compact)
    lm = c.create_logged_model(run.info.experiment_id, name=f"{name}-old", source_run_id=run_id)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    mlflow.pytorch.save_model(
        model,
        str(tmp / "flavour"),
        mlflow_model=Model(
            artifact_path=lm.artifact_location,
            run_id=run_id,
            model_uuid=lm.model_id,
            model_id=lm.model_id,
        ),
        serialization_format="pt2",
        signature=infer_signature(x.numpy(), y.numpy()),
        input_example=x.numpy(),
        extra_files=[
            str(compact / f) for f in ("weights.pt", "arch.json", "kept_units.json", "card.json")
        ],
    )
    c.log_model_artifacts(lm.model_id, str(tmp / "flavour"))
    c.finalize_logged_model(lm.model_id, "READY")
    c.create_registered_model(name)
    return c.create_model_version(
        name, source=lm.artifact_location, run_id=run_id, model_id=lm.model_id
    )


def test_a_version_registered_before_model_pt2_still_fetches(study, digits, tmp_path):
    from prunetune.search.registry import compact_module

    c, uri = study["client"], study["uri"]
    run_id = c.get_model_version_by_alias(STUDY, "knee").run_id
    name = "reg-legacy"
    mv = _register_legacy_version(c, name, run_id, tmp_path / "registering")
    try:
        fetch_to(f"{STUDY}@knee", tmp_path / "out", tracking_uri=uri)  # a new version first
        (tmp_path / "out" / "model.onnx").write_text("an earlier --onnx")
        got = fetch_to(f"{name}/{mv.version}", tmp_path / "out", tracking_uri=uri)
        names = {p.name for p in (tmp_path / "out").iterdir()}  # nothing of the earlier one
        assert names == {"weights.pt", "arch.json", "kept_units.json", "card.json", "MODEL_CARD.md"}
        assert isinstance(got.model, nn.Sequential) and got.arch["input_shape"] == [1, 8, 8]
        assert got.input_shape == (1, 8, 8)
        m = study["runs"][run_id].data.metrics
        # standardised inputs, as before
        assert evaluate(got.model, digits.x_test, digits.y_test) == m["test_accuracy"]
        assert count_params(got.model) == m["params"]
        original = study["results"][run_id].export.model
        with torch.no_grad():
            assert torch.equal(got.model(digits.x_test), original(digits.x_test))
        md = (tmp_path / "out" / "MODEL_CARD.md").read_text()
        assert "## Compact architecture" in md and "build_model" in md
        model, shape = compact_module(tmp_path / "out")  # what `prunetune explain` analyses
        assert shape == (1, 8, 8) and isinstance(model, nn.Sequential)
        res = runner.invoke(
            app,
            [
                "fetch",
                f"{name}/{mv.version}",
                "-o",
                str(tmp_path / "cli"),
                "--verify",
                *["--tracking-uri", uri],
            ],
        )
        assert res.exit_code == 0, res.output
        assert "registered before model.pt2" in res.output and "verified" in res.output
    finally:
        c.delete_registered_model(name)


def test_compact_module_rebuilds_a_new_version_from_its_safetensors(study, digits, tmp_path):
    from prunetune.search.registry import compact_module

    fetch_to(f"{STUDY}@knee", tmp_path, tracking_uri=study["uri"])
    model, shape = compact_module(tmp_path)
    run_id = study["client"].get_model_version_by_alias(STUDY, "knee").run_id
    original = study["results"][run_id].export.model
    assert shape == (1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), original(digits.x_test))
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"lacks config\.json"):
        compact_module(tmp_path)
