"""Distillation and fine-tuning as trial options: seeds reproduce them, the teacher is trained
once (per study, and once among concurrent trials), and a spec searches and validates them."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

from prunetune.search._teacher import teacher_definition, teacher_dir, teacher_for
from prunetune.search.trial import parse_config, run_trial

TEACHER = {"family": "mlp", "widths": [32], "channels": [], "activation": "relu", "depth": 20}
BASE = {
    "dataset": "digits",
    "model": {"family": "mlp", "widths": [24]},
    "method": {"name": "gumbel", "lam": 1.0},
    "threads": 1,
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _trainings(cache) -> int:
    logs = list((cache / "teachers").glob("*/trainings.log"))
    return sum(len(p.read_text().splitlines()) for p in logs)


def _drop_time(out):
    skip = ("start_cpu_s", "teacher_trained")
    m = {k: v for k, v in out.metrics.items() if "seconds" not in k and k not in skip}
    return m, out.history


@pytest.mark.parametrize(
    "train",
    [
        {"epochs": 3, "finetune_epochs": 2, "finetune_lr": 3e-3, "lr_schedule": "cosine"},
        {"epochs": 3, "distill": {"alpha": 0.7, "temperature": 3.0, "teacher_epochs": 2}},
    ],
    ids=["finetuned", "distilled"],
)
def test_a_distilled_or_fine_tuned_trial_reproduces_under_the_same_seed(cache, train):
    cfg = {**BASE, "train": {**train, "seed": 3}}
    a, b = run_trial(cfg), run_trial(cfg)
    assert _drop_time(a) == _drop_time(b)
    other = run_trial({**cfg, "train": {**train, "seed": 4}})
    assert other.history != a.history
    if "distill" in train:  # the first run trained the teacher, the others loaded it
        assert (a.metrics["teacher_trained"], b.metrics["teacher_trained"]) == (1, 0)
        assert _trainings(cache) == 1
    else:
        assert len(a.history) == 5 and [r["phase"] for r in a.history] == [0, 0, 0, 1, 1]


def test_distillation_changes_training_and_the_teacher_is_the_configured_one(cache):
    plain = run_trial({**BASE, "train": {"epochs": 2}})
    cfg = {
        **BASE,
        "train": {"epochs": 2, "distill": {"alpha": 0.9, "teacher_epochs": 30, "teacher": TEACHER}},
    }
    out = run_trial(cfg)
    assert out.history[0]["loss"] != plain.history[0]["loss"]
    (meta,) = [json.loads(p.read_text()) for p in (cache / "teachers").glob("*/meta.json")]
    assert meta["config"]["model"]["widths"] == [32] and meta["params"] == 64 * 32 + 32 + 330
    assert 0.5 < meta["val_accuracy"] <= 1.0


def test_concurrent_trials_train_one_teacher(cache):
    from prunetune.datasets import load_dataset

    cfg = parse_config(
        {**BASE, "train": {"distill": {"alpha": 0.5, "teacher_epochs": 2, "teacher": TEACHER}}}
    )
    data = load_dataset("digits")
    got: list = []

    def one() -> None:
        got.append(teacher_for(cfg, data, torch.device("cpu"), "cross_entropy"))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.trained for t in got) == [False, False, True]
    assert _trainings(cache) == 1
    states = [t.state() for t in got]
    for s in states[1:]:
        assert all(torch.equal(s[k], states[0][k]) for k in s)
    folder = teacher_dir(teacher_definition(cfg, "cross_entropy"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "teacher.safetensors",
        "trainings.log",
    ]


def test_the_teacher_given_by_the_driver_is_used_without_training(cache):
    from prunetune.datasets import load_dataset

    cfg = parse_config(
        {**BASE, "train": {"distill": {"alpha": 0.5, "teacher_epochs": 1, "teacher": TEACHER}}}
    )
    data = load_dataset("digits")
    key = teacher_definition(cfg, "cross_entropy")
    from prunetune.search._teacher import teacher_key

    cpu = torch.device("cpu")
    trained = teacher_for(cfg, data, cpu, "cross_entropy").state()
    state = {k: torch.full_like(v, 0.5) for k, v in trained.items()}
    t = teacher_for(cfg, data, cpu, "cross_entropy", given={teacher_key(key): state})
    assert not t.trained and all(bool((v == 0.5).all()) for v in t.state().values())
    assert _trainings(cache) == 1  # the first call trained it; the given one trained nothing


# -- a study --------------------------------------------------------------------------------

SPEC = {
    "name": "distill",
    "dataset": "digits",
    "model": {"family": "mlp", "depth": 1, "width": [8, 24]},
    "methods": {"gumbel": {"lam": [0.1, 3.0]}},
    "train": {
        "epochs": 2,
        "batch_size": 64,
        "finetune_epochs": [0, 2],
        "lr_schedule": ["constant", "cosine"],
        "distill": {"alpha": [0.2, 0.9], "temperature": [1.0, 6.0], "teacher_epochs": 2},
    },
    "search": {"n_trials": 3, "max_concurrent": 2, "sampler": "random", "seed": 0},
    "tracking": {"explain": False, "register": False},
}


def test_a_study_trains_its_teacher_once_and_logs_it_on_the_parent_run(ray_local, cache, tmp_path):
    import mlflow
    import optuna

    from prunetune.search._record import ATTR_CONFIG, ATTR_RESULT
    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import parse_spec

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    vspec = parse_spec(copy.deepcopy(SPEC))
    outcome = run_study(vspec, RunOptions(workdir=tmp_path, tracking_uri=uri, progress=False))
    study = optuna.load_study(study_name="distill", storage=outcome.storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert _trainings(cache) == 1  # by the driver, before the first trial
    assert study.user_attrs["teacher"]["trained"] is True
    for t in done:
        cfg = t.user_attrs[ATTR_CONFIG]
        assert cfg["train"]["distill"]["teacher"]["widths"] == [24]  # the largest model
        assert 0.2 <= cfg["train"]["distill"]["alpha"] <= 0.9
        assert t.user_attrs[ATTR_RESULT]["teacher_trained"] == 0  # shipped, not retrained
        assert "train.distill.alpha" in t.params and "train.finetune_epochs" in t.params
    run = mlflow.MlflowClient(uri).get_run(outcome.parent_run_id)
    teacher_acc = study.user_attrs["teacher"]["val_accuracy"]
    assert run.data.metrics["teacher_val_accuracy"] == pytest.approx(teacher_acc)


# -- the spec ---------------------------------------------------------------------------------


def _spec(**train):
    from prunetune.search.spec import parse_spec

    spec = copy.deepcopy(SPEC)
    spec["train"] = {"epochs": 2, **train}
    return parse_spec(spec)


def test_the_default_teacher_is_the_largest_model_the_space_builds():
    from prunetune.search.spec import parse_spec

    spec = copy.deepcopy(SPEC)
    spec["model"] = {
        "family": "mlp",
        "depth": [1, 3],
        "width": [8, 40],
        "activation": ["tanh", "relu"],
    }
    assert parse_spec(spec).teacher_model() == {
        "family": "mlp",
        "widths": [40, 40, 40],
        "channels": [],
        "activation": "tanh",
        "depth": 20,
    }
    spec["model"] = {"family": "resnet", "width": [4, 16], "resnet_depth": [8, 14]}
    spec["dataset"] = "digits"
    t = parse_spec(spec).teacher_model()
    assert (t["family"], t["channels"], t["depth"]) == ("resnet", [16], 14)
    spec["model"] = {
        "factory": "prunetune.models:resnet",
        "params": {"depth": [8, 14], "width": [4, 16]},
    }
    t = parse_spec(spec).teacher_model()
    assert t["factory"] == "prunetune.models:resnet"
    assert (t["params"]["depth"], t["params"]["width"], t["params"]["num_classes"]) == (14, 16, 10)
    spec["train"] = {"distill": {"teacher": {"family": "mlp", "widths": [100]}}}
    assert parse_spec(spec).teacher_model() == {"family": "mlp", "widths": [100]}


def test_new_training_options_at_their_defaults_keep_a_studys_fingerprint():
    base = _spec()
    assert _spec(finetune_epochs=0, lr_schedule="constant", finetune_lr=1e-3).fingerprint() == (
        base.fingerprint()
    )
    assert _spec(distill={"alpha": 0.0}).fingerprint() == base.fingerprint()
    assert _spec(distill={"alpha": [0.0, 0.5]}).fingerprint() != base.fingerprint()
    assert _spec(finetune_epochs=[0, 4]).fingerprint() != base.fingerprint()
    assert not base.distills and _spec(distill={"alpha": [0.0, 0.5]}).distills
    assert _spec(finetune_epochs=[0, 4]).max_epochs == 6


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"distill": {"alpha": [0.0, 1.5]}},
            r"train\.distill\.alpha\[1\] must be in \[0\.0, 1\.0\]",
        ),
        (
            {"distill": {"temperature": 0.5}},
            r"train\.distill\.temperature must be in \[1\.0, 50\.0\]",
        ),
        ({"distill": {"teacher_epochs": 0}}, r"train\.distill\.teacher_epochs must be in"),
        ({"distill": {"tau": 2}}, r"train\.distill\.tau: is not a known field"),
        ({"distill": {"teacher": {"family": "vgg"}}}, r"train\.distill: teacher\.family"),
        (
            {"distill": {"alpha": 0.5, "teacher": {"factory": "nope.mod:fn"}}},
            r"train\.distill\.teacher\.factory",
        ),
        ({"finetune_epochs": [0, -2]}, r"train\.finetune_epochs\[1\] must be in \[0, 10000\]"),
        ({"finetune_lr": 0}, r"train\.finetune_lr must be in"),
        ({"lr_schedule": ["cosine", "step"]}, r"train\.lr_schedule\[1\] must be one of"),
    ],
)
def test_bad_training_options_name_the_field(train, message):
    from prunetune.search._errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _spec(**train)


def test_distillation_needs_a_classification_data_set():
    from prunetune.search._errors import ConfigError
    from prunetune.search.spec import parse_spec

    spec = copy.deepcopy(SPEC)
    spec["dataset"] = "pathways-toy"
    spec["model"] = {"family": "mlp", "widths": [8]}
    spec["train"] = {"distill": {"alpha": [0.0, 0.5]}}
    with pytest.raises(ConfigError, match=r"train\.distill\.alpha: distillation needs a classif"):
        parse_spec(spec)


def test_prunetune_methods_lists_the_training_options_a_spec_searches():
    from typer.testing import CliRunner

    from prunetune.search.cli import app

    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.output.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    assert rows["finetune_epochs"][:3] == ["[0, 10000]", "0", "yes"]
    assert rows["distill.alpha"][:3] == ["[0.0, 1.0]", "0.0", "yes"]
    assert rows["lr_schedule"][:3] == ["constant | cosine", "constant", "yes"]
    assert rows["seed"][2] == ""  # one value per study
