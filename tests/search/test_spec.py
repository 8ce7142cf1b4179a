"""Malformed study specs: one message naming field and value, exit code 2, nothing written."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from prunetune.search._errors import ConfigError
from prunetune.search.cli import app
from prunetune.search.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())


def _with(path: str, value, base=None):
    """Copy of the quick-start spec with ``path`` (dotted) set to ``value`` (or deleted)."""
    spec = copy.deepcopy(base or BASE)
    keys = path.split(".")
    node = spec
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


_DELETE = object()

MALFORMED = [
    # (dotted path, bad value, regex the message must match — field path and value)
    ("unknown_key", 1, r"unknown_key: is not a known field, got 1"),
    ("dataset", "imagenet", r"dataset: .*must be one of .*got 'imagenet'"),
    ("methods.obd", {}, r"methods\.obd: unknown pruning method 'obd'"),
    (
        "methods.gumbel.lam",
        [10.0, 0.01],
        r"`low <= high` must hold in methods\.gumbel\.lam, but got \[10\.0, 0\.01\]",
    ),
    (
        "methods.gumbel.lam",
        [-1.0, 1.0],
        r"methods\.gumbel\.lam\[0\] must be in \[0\.0001, 1000\.0\], but got -1\.0",
    ),
    (
        "methods.gumbel.schedule",
        ["exponential", "step"],
        r"methods\.gumbel\.schedule\[1\] must be one of .* but got 'step'",
    ),
    (
        "methods.gumbel.lamda",
        1.0,
        r"methods\.gumbel\.lamda: not a hyperparameter of 'gumbel'.* got 'lamda'",
    ),
    (
        "methods.gumbel.granularity",
        [],
        r"methods\.gumbel\.granularity must list at least one choice, but got \[\]",
    ),
    ("methods", {}, r"methods: must name at least one pruning method.* got \{\}"),
    ("model.width", [128, 16], r"model\.width: .*`low <= high` must hold, got \[128, 16\]"),
    ("model.depth", [0, 2], r"model\.depth: .*must be >= 1, got 0"),
    ("model.family", "vgg", r"model\.family: .*got 'vgg'"),
    ("model.activation", "swish", r"model\.activation: .*got 'swish'"),
    ("train.lr", [0.1, 0.001], r"`low <= high` must hold in train\.lr, but got \[0\.1, 0\.001\]"),
    ("train.epochs", 0, r"train\.epochs must be in \[1, 10000\], but got 0"),
    (
        "train.optimizer",
        "lbfgs",
        r"train\.optimizer must be one of \['adam', 'adamw', 'sgd'\], but got 'lbfgs'",
    ),
    ("search.sampler", "cmaes", r"search\.sampler: .*got 'cmaes'"),
    (
        "search.scheduler",
        {"name": "asha"},
        r"search\.scheduler\.name: Input should be 'mo-asha', got 'asha'",
    ),
    (
        "search.scheduler",
        {"name": "mo-asha", "reduction_factor": 1},
        r"search\.scheduler\.reduction_factor: .*greater than or equal to 2, got 1",
    ),
    (
        "search.scheduler",
        {"name": "mo-asha", "grace_epochs": 12},
        r"search\.scheduler\.grace_epochs: must be below train\.epochs \(12\) .*got 12",
    ),
    (
        "search.scheduler",
        {"name": "mo-asha", "eta": 3},
        r"search\.scheduler\.eta: is not a known field, got 3",
    ),
    (
        "search.time_budget",
        "ten minutes",
        r"search\.time_budget: .*must be seconds or a duration like '10m' or '2h', got 'ten minutes'",
    ),
    ("search.n_trials", -3, r"search\.n_trials: .*got -3"),
    ("search.resources.gpu", -1, r"search\.resources\.gpu: .*got -1"),
    ("search.storage", "optuna.db", r"search\.storage: .*must be a storage URL.*got 'optuna\.db'"),
    ("objectives.min_val_accuracy", 1.5, r"objectives\.min_val_accuracy: .*got 1\.5"),
    ("name", "bad name!", r"name: .*got 'bad name!'"),
    ("dataset", _DELETE, r"dataset: Field required"),
    ("model.family", "lenet5", r"model\.family 'lenet5' needs images of at least 20x20.*'digits'"),
    (
        "objectives.metric",
        "val_loss",
        r"objectives\.metric: must be 'val_accuracy' .*got 'val_loss'",
    ),
    ("objectives.metric", "val_f1", r"objectives\.metric: .*got 'val_f1'"),
    ("objectives.max_val_loss", 0.5, r"objectives\.max_val_loss: applies to val_loss.*got 0\.5"),
    ("train.loss", "mse", r"train\.loss: must be one of \['auto', 'cross_entropy'\] .*got 'mse'"),
]


@pytest.mark.parametrize(
    ("path", "value", "match"), MALFORMED, ids=[f"{p}={v!r}"[:60] for p, v, _ in MALFORMED]
)
def test_malformed_spec_exits_2_naming_field_and_value(
    tmp_path, search_refused, path, value, match
):
    spec_file = tmp_path / "spec" / "bad.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(yaml.safe_dump(_with(path, value)))
    message = search_refused(spec_file, tmp_path / "work")
    assert "error:" in message
    assert __import__("re").search(match, message), message


def test_missing_spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["search", "nope.yaml"])
    assert result.exit_code == 2
    assert "study spec 'nope.yaml' does not exist" in " ".join(result.output.split())
    assert os.listdir(tmp_path) == []


def test_invalid_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: [unclosed\n")
    result = CliRunner().invoke(app, ["search", "s.yaml"])
    assert result.exit_code == 2
    assert "not valid YAML" in result.output
    assert os.listdir(tmp_path) == ["s.yaml"]


def test_missing_dataset_files_fail_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "nocache"))
    spec = _with("dataset", "mnist")
    spec["model"]["family"] = "mlp"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["search", "s.yaml"])
    assert result.exit_code == 2
    assert "dataset 'mnist'" in result.output
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


@pytest.mark.parametrize(
    ("resources", "says"),
    [({"cpu": 1, "gpu": 0.25}, "set gpu: 0"), ({"cpu": 64, "gpu": 0}, "lower cpu")],
)
def test_a_trial_no_local_node_can_hold_fails_before_anything_is_created(
    tmp_path, monkeypatch, resources, says
):
    # Tune would queue it and warn once a minute, forever: this machine has no CUDA device
    # torch can use (the CPU wheel) and fewer than 64 CPUs.
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_with("search.resources", resources)))
    result = CliRunner().invoke(app, ["search", "s.yaml"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert f"search.resources is {{cpu: {resources['cpu']}, gpu: {resources['gpu']}}}" in out
    # this machine as a local Ray counts it, or the Ray an earlier test started here
    assert "CPU + 0 GPU)" in out and says in out
    assert os.listdir(tmp_path) == ["s.yaml"]


def test_shipped_studies_are_valid():
    names = sorted(p.name for p in (REPO / "studies").glob("*.yaml"))
    assert {
        "quickstart.yaml",
        "fashion-mlp.yaml",
        "fashion-lenet5.yaml",
        "mnist-lenet300.yaml",
        "fashion-extreme.yaml",
        "fashion-resnet20.yaml",
    } <= set(names)
    for name in names:
        assert load_spec(REPO / "studies" / name).spec.name


def test_ranges_are_checked_against_the_method_table():
    v = parse_spec(_with("methods.gumbel.lam", [0.5, 2.0]))
    assert v.method_ranges["gumbel"]["lam"] == (0.5, 2.0)
    assert v.method_ranges["gumbel"]["penalty"] == ("density",)
    assert v.train_ranges["lr"] == (0.001, 0.01)


def test_regression_study_defaults_to_val_loss_and_rejects_accuracy_floors():
    toy = {**_with("dataset", "pathways-toy"), "model": {"family": "mlp", "depth": 2, "width": 10}}
    toy["objectives"] = {}  # the quick-start's accuracy floor does not apply to a loss
    assert parse_spec(toy).spec.metric == "val_loss"
    assert parse_spec(_with("objectives.accuracy", "val_loss", toy)).spec.metric == "val_loss"
    assert parse_spec(BASE).spec.metric == "val_accuracy"
    with pytest.raises(ConfigError, match=r"objectives\.min_val_accuracy: applies to val_accuracy"):
        parse_spec(_with("objectives.min_val_accuracy", 0.9, toy))
    with pytest.raises(
        ConfigError, match=r"train\.loss: .*\['auto', 'mse', 'l1'\].*'cross_entropy'"
    ):
        parse_spec(_with("train.loss", "cross_entropy", toy))


def test_fingerprint_ignores_later_settings_at_their_defaults():
    """Studies begun before objectives.metric / max_val_loss / train.loss existed resume: those
    settings at their defaults hash as if absent."""
    fp = parse_spec(BASE).spec.fingerprint()
    assert parse_spec(_with("train.loss", "auto")).spec.fingerprint() == fp
    assert parse_spec(_with("objectives.metric", "val_accuracy")).spec.fingerprint() == fp
    assert parse_spec(_with("train.loss", "cross_entropy")).spec.fingerprint() != fp


def test_a_resnet_space_is_validated_and_methods_that_cannot_prune_it_are_refused():
    spec = _with("model", {"family": "resnet", "resnet_depth": [8, 14], "width": [4, 8]})
    v = parse_spec(spec)
    assert v.spec.model.resnet_depths == (8, 14)
    assert sum(
        p.numel() for p in v.spec.model.build_extreme(v.data_info, largest=False).parameters()
    ) < sum(p.numel() for p in v.spec.model.build_extreme(v.data_info, largest=True).parameters())
    with pytest.raises(ConfigError, match=r"methods\.kfac: method kfac cannot prune layer \S+: "):
        parse_spec(_with("methods", {"kfac": {"neurons": 0.1}}, base=spec))
    with pytest.raises(ConfigError, match=r"model\.resnet_depth"):
        parse_spec(_with("model.resnet_depth", 10, base=spec))
