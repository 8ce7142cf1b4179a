"""Your own model and data: factories in a spec, on the command line and in trials.

The user's code is written next to the spec file (its folder is on the import path, as for a
user's study), under module names no other test uses (``sys.modules`` caches them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from prunetune.search._errors import ConfigError
from prunetune.search.cli import app
from prunetune.search.spec import parse_spec

USER_CODE = """
import torch
from torch import nn

CONSTANT = 3


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def net(width: int = 8, num_classes: int = 10, in_channels: int = 3, act: str = "relu"):
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def regressor(hidden: int = 8, input_shape=(4,), outputs: int = 2):
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.Tanh(), nn.Linear(hidden, outputs))


def returns_dict(width: int = 1, num_classes: int = 10):
    return {"a": 1}


class WithAux(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels * 256, num_classes)
        self.aux = nn.Linear(in_channels * 256, num_classes)  # an auxiliary head, unused

    def forward(self, x):
        return self.fc(x.flatten(1))


def with_aux(width: int = 1, num_classes: int = 10, in_channels: int = 3):
    return WithAux(num_classes, in_channels)


class Encoder(nn.Module):
    def __init__(self, dim, num_classes, in_channels):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, 8, stride=8)
        self.enc = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.enc(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def encoder(dim: int = 16, num_classes: int = 10, in_channels: int = 3):
    return Encoder(dim, num_classes, in_channels)


def _split(x, y):
    k = len(x) // 8
    return {"x_train": x[2 * k:], "y_train": y[2 * k:], "x_val": x[:k], "y_val": y[:k],
            "x_test": x[k:2 * k], "y_test": y[k:2 * k]}


def images(n: int = 256, seed: int = 0, side: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side, side, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # 4 classes
    return _split(x, y)


def table(n: int = 256):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 4, generator=g) * 2 - 1
    y = torch.stack([x[:, 0] - x[:, 1], x[:, 2] * x[:, 3]], 1)
    return _split(x, y)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def datasets(n: int = 256):
    d = images(n)
    return tuple(Pairs(d[f"x_{s}"], d[f"y_{s}"]) for s in ("train", "val", "test"))


def raises(n: int = 1):
    raise RuntimeError("the bucket is not mounted")


def two_things(n: int = 1):
    return [1, 2]
"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's folder: their code (module ``ptfx_user``) and, later, their spec files."""
    d = tmp_path_factory.mktemp("user")
    (d / "ptfx_user.py").write_text(USER_CODE)
    sys.path.append(str(d))  # a trial run alone: as if the user ran it from there
    yield d
    sys.path.remove(str(d))


def _spec(**over):
    spec = {
        "name": "fx",
        "dataset": {"factory": "ptfx_user:images", "params": {"n": 128}},
        "model": {"factory": "ptfx_user:net", "params": {"width": [4, 8]}},
        "methods": {"gumbel": {"granularity": "neuron"}},
        "train": {"epochs": 1, "batch_size": 32},
        "search": {"n_trials": 2, "max_concurrent": 1},
        "tracking": {"enabled": False},
    }
    for path, value in over.items():
        *head, last = path.split(".")
        node = spec
        for k in head:
            node = node[k]
        node[last] = value
    return spec


# -- the spec: factories resolve, params are dimensions, data fills the rest -------------------
def test_a_factory_spec_validates_and_samples_the_factory_params(user_dir):
    import optuna

    from prunetune.search.space import sample_config

    v = parse_spec(_spec(), "fx.yaml", user_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the factory model serialises as itself
        assert v.spec.fingerprint() == parse_spec(_spec(), "fx.yaml", user_dir).spec.fingerprint()
    assert v.data_info.task == "classification" and v.data_info.num_outputs == 4  # max label + 1
    assert v.data_info.input_shape == (3, 16, 16) and v.metric == "val_accuracy"
    assert {k: d.kind for k, d in v.model_dims.items()} == {"width": "int"}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    cfg = sample_config(trial, v)
    assert 4 <= trial.params["model.width"] <= 8
    # num_classes and in_channels come from the data; the data's classes travel with the config
    assert cfg["model"] == {
        "factory": "ptfx_user:net",
        "params": {"width": trial.params["model.width"], "num_classes": 4, "in_channels": 3},
    }
    assert cfg["dataset"]["num_classes"] == 4


BAD = [
    # (spec path, value, the one line's content)
    ("model.factory", "ptfx_nowhere:net", r"model\.factory: cannot import 'ptfx_nowhere:net': no module named 'ptfx_nowhere'"),
    ("model.factory", "ptfx_user:nothing", r"model\.factory: 'ptfx_user:nothing': module 'ptfx_user' has no attribute 'nothing'"),
    ("model.factory", "ptfx_user:CONSTANT", r"model\.factory: 'ptfx_user:CONSTANT' is not callable \(it is a int\)"),
    ("model.factory", "ptfx_user.net", r"model\.factory: must be an import path 'package\.module:callable', got 'ptfx_user\.net'"),
    ("model.params", {"depth": 3}, r"model\.params\.depth: 'ptfx_user:net' takes no parameter 'depth'; it takes \['act', 'in_channels', 'num_classes', 'width'\]"),
    ("model.params", {"act": [1, 3]}, r"model\.params\.act: a range needs a numeric parameter, but 'act' of 'ptfx_user:net' is not \(annotated str\)"),
    ("model.params", {"width": [8, 4]}, r"model\.params\.width: `low <= high` must hold in a range, got \[8, 4\] \(for a fixed list write \{value: \[\.\.\.\]\}\)"),
    ("model.params", {"width": -1}, r"model\.factory: 'ptfx_user:net' raised ValueError: width must be >= 1, got -1"),
    ("model.factory", "ptfx_user:returns_dict", r"model\.factory: 'ptfx_user:returns_dict' returned a dict, not a torch\.nn\.Module"),
    ("model.factory", "ptfx_user:with_aux", r"model: 'ptfx_user:with_aux': layer aux is not used in the model's forward pass"),
    ("model.params", {"num_classes": 3}, r"model\.factory: 'ptfx_user:net' outputs shape \(2, 3\) for a batch of 2, but the labels of 'ptfx_user:images' run to 3 \(4 classes\)"),
    ("dataset.factory", "ptfx_user:raises", r"dataset\.factory: 'ptfx_user:raises' raised RuntimeError: the bucket is not mounted"),
    ("dataset.factory", "ptfx_user:two_things", r"dataset\.factory: 'ptfx_user:two_things' returned a list; expected a mapping of tensors x_train"),
    ("dataset.factory", "ptfx_none:data", r"dataset\.factory: cannot import 'ptfx_none:data': no module named 'ptfx_none'"),
    ("dataset.num_classes", 3, r"dataset\.factory: 'ptfx_user:images': labels must lie in \[0, 3\) for 3 classes, but the largest is 3"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "line"), BAD, ids=[f"{p}={v!r}"[:50] for p, v, _ in BAD])
def test_bad_factory_input_is_one_line_exit_2_and_creates_nothing(user_dir, tmp_path, search_refused, path, value, line):  # fmt: skip
    import re

    spec_file = user_dir / f"bad-{abs(hash((path, repr(value))))}.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(**{path: value})))
    message = search_refused(spec_file, tmp_path / "work")
    assert re.search(line, message), message


def test_a_broken_torchvision_is_a_spec_error_and_never_breaks_prunetune(tmp_path):
    """PyPI's torchvision against the CPU torch fails at import; prunetune must not care."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    (fake / "models.py").write_text("")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            _spec(**{"model.factory": "torchvision.models:resnet18", "model.params": {}})
            | {"dataset": "digits"}
        )
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "site")!r})
        import prunetune, prunetune.search.trial, prunetune.models, prunetune.datasets
        import prunetune.prune, prunetune.search.cli
        assert "torchvision" not in sys.modules
        from typer.testing import CliRunner
        r = CliRunner().invoke(prunetune.search.cli.app, ["search", {str(spec)!r}])
        print(r.exit_code, " ".join(r.output.split()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    code_line = out.stdout.strip().splitlines()[-1]
    assert code_line.startswith("2 "), code_line
    assert (
        "model.factory: importing module 'torchvision.models' of 'torchvision.models:resnet18' "
        "failed: RuntimeError: operator torchvision::nms does not exist"
    ) in code_line


def test_the_fingerprint_of_an_existing_study_is_unchanged_by_new_options_at_default():
    from prunetune.search.spec import load_spec

    spec = yaml.safe_load(Path("studies/quickstart.yaml").read_text())
    before = "1f0f16cb884a"  # studies/quickstart.yaml before momentum/augment/num_workers
    assert load_spec("studies/quickstart.yaml").spec.fingerprint() == before
    same = spec | {"train": {**spec["train"], "momentum": 0.9, "augment": [], "num_workers": 4}}
    assert parse_spec(same).spec.fingerprint() == before
    for change in ({"momentum": 0.8}, {"augment": ["flip"]}):
        other = spec | {"train": {**spec["train"], **change}}
        assert parse_spec(other).spec.fingerprint() != before


# -- trials: both data paths, regression, the command line -------------------------------------
def _trial(dataset, model, **train):
    from prunetune.search.trial import run_trial

    return run_trial(
        {
            "dataset": dataset,
            "model": model,
            "method": {"name": "magnitude_neuron", "neurons": 0.5},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, **train},
        }
    )


def test_tensors_and_datasets_train_the_same_model_on_the_same_data(user_dir):
    net = {"factory": "ptfx_user:net", "params": {"width": 6, "num_classes": 4}}
    tensors = _trial({"factory": "ptfx_user:images", "params": {"n": 256}}, net)
    loader = _trial({"factory": "ptfx_user:datasets", "params": {"n": 256}}, net, num_workers=0)
    again = _trial({"factory": "ptfx_user:datasets", "params": {"n": 256}}, net, num_workers=0)
    for out in (tensors, loader):
        m = out.metrics
        assert m["params_dense"] == 6 * 3 * 9 + 6 + 2 * 6 + 6 * 6 * 9 + 2 * 6 + 6 * 4 + 4
        assert m["params"] < m["params_dense"]  # half the stem's channels are gone
        assert 0 <= m["val_accuracy"] <= 1 and out.inputs["num_outputs"] == 4
        assert out.inputs["range"] is None  # a factory's inputs are what it returns
    assert loader.metrics["val_accuracy"] == again.metrics["val_accuracy"]  # seeded loader
    assert loader.history == again.history
    # the same epoch order as the in-memory path, so the same training (to float rounding of
    # the batches' collation)
    workers = _trial({"factory": "ptfx_user:datasets", "params": {"n": 256}}, net, num_workers=2)
    assert workers.history == loader.history  # whatever the number of loader processes
    for a, b in zip(tensors.history, loader.history, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_augmentation_changes_training_and_needs_images(user_dir):
    net = {"factory": "ptfx_user:net", "params": {"width": 4, "num_classes": 4}}
    data = {"factory": "ptfx_user:images", "params": {"n": 128}}
    plain = _trial(data, net)
    crop_flip = _trial(data, net, augment=["crop", "flip"])
    again = _trial(data, net, augment=["crop", "flip"])
    assert crop_flip.history == again.history  # seeded
    assert crop_flip.history[0]["loss"] != plain.history[0]["loss"]
    bad = _spec(**{"train.augment": ["flip"], "dataset": {"factory": "ptfx_user:table"}})
    bad["model"] = {"factory": "ptfx_user:regressor"}
    with pytest.raises(ConfigError, match=r"train\.augment: \['flip'\] needs image inputs"):
        parse_spec(bad, "fx.yaml", user_dir)


def test_a_regression_factory_is_a_val_loss_trial(user_dir):
    out = _trial({"factory": "ptfx_user:table"}, {"factory": "ptfx_user:regressor", "params": {}})
    assert "val_loss" in out.metrics and "val_accuracy" not in out.metrics
    assert out.metrics["params_dense"] == 4 * 8 + 8 + 8 * 2 + 2


def test_train_command_takes_factories(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)  # the working directory is on the import path
    args = [
        "train", "--data-factory", "ptfx_user:images", "--data-param", "n=128",
        "--model-factory", "ptfx_user:net", "--model-param", "width=4",
        "--method", "magnitude_neuron", "-o", "neurons=0.5", "--epochs", "1", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = json.loads(result.output.strip().splitlines()[-1])
    assert m["params_dense"] == 4 * 3 * 9 + 4 + 8 + 4 * 4 * 9 + 8 + 4 * 4 + 4
    bad = CliRunner().invoke(app, [*args[:5], "--model-factory", "ptfx_user:nope"])
    assert bad.exit_code == 2
    assert "model.factory: 'ptfx_user:nope': module 'ptfx_user' has no attribute 'nope'" in (
        " ".join(bad.output.split())
    )


def test_runtime_env_is_checked_before_anything_is_created(user_dir, tmp_path, monkeypatch):
    spec_file = user_dir / "ok.yaml"
    spec_file.write_text(yaml.safe_dump(_spec()))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = tmp_path / "env.yaml"
    for text, line in (
        ("[1, 2]", "must be a mapping"),
        ("working_dir: ./nowhere", "working_dir './nowhere' does not exist"),
        ("pips: [mypkg]", "'pips' is not a runtime_env field"),
        ("pip: 5", "TypeError: runtime_env['pip'] must be of type str or List[str]"),
    ):
        env.write_text(text)
        args = ["search", str(spec_file), "--workdir", str(work), "--runtime-env", str(env)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert line in " ".join(result.output.split())
        assert list(work.iterdir()) == []


# -- a study through the factory path, end to end ----------------------------------------------
def _resnet_study(user_dir: Path, tmp_path: Path, factory: str, params: dict) -> dict:
    from prunetune.search.registry import fetch
    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import load_spec

    spec = {
        "name": "fx-resnet",
        "dataset": {"factory": "ptfx_user:images", "params": {"n": 128, "side": 32}},
        "model": {"factory": factory, "params": params},
        "methods": {
            "gumbel": {
                "granularity": "neuron",
                "lam": [0.05, 0.2],
                "init_keep_prob": 0.6,
                "logit_lr": 0.1,
            }
        },
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
        "search": {"n_trials": 2, "max_concurrent": 2, "sampler": "random"},
        "tracking": {"explain": False},
    }
    spec_file = user_dir / f"{factory.replace(':', '-')}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(
        load_spec(spec_file),
        RunOptions(workdir=tmp_path, tracking_uri=uri, progress=False, register=True),
    )
    assert outcome.completed == 2 and outcome.failed == 0
    got = fetch(f"fx-resnet@{outcome.registered[0].aliases[0]}", tracking_uri=uri)
    return {"outcome": outcome, "fetched": got}


def test_resnet_through_the_factory_path_is_searched_and_fetched_smaller(
    ray_local, user_dir, tmp_path
):
    from prunetune.models import resnet
    from prunetune.prune import evaluate

    run = _resnet_study(
        user_dir, tmp_path, "prunetune.models:resnet", {"depth": 8, "width": [4, 6]}
    )
    got = run["fetched"]
    width = got.card["config"]["model.params.width"]
    assert got.card["dataset"] == {
        "factory": "ptfx_user:images",
        "params": {"n": 128, "side": 32},
        "num_classes": 4,
        "name": None,
    }
    dense = sum(p.numel() for p in resnet(8, width, num_classes=4, in_channels=3).parameters())
    assert got.card["metrics"]["params_dense"] == dense
    assert sum(p.numel() for p in got.model.parameters()) < dense  # physically smaller
    data = __import__("ptfx_user").images(128, side=32)
    acc = evaluate(got.model, data["x_test"], data["y_test"])
    assert acc == pytest.approx(got.card["metrics"]["test_accuracy"], abs=1e-6)


def test_a_transformer_encoder_through_the_factory_path_is_fetched_smaller(
    ray_local, user_dir, tmp_path
):
    """Channel gates on the feed-forward width of an nn.TransformerEncoderLayer: searched,
    registered, fetched physically smaller, and the fetched model reproduces its record."""
    from prunetune.prune import evaluate

    run = _resnet_study(user_dir, tmp_path, "ptfx_user:encoder", {"dim": [8, 16]})
    got = run["fetched"]
    assert sum(p.numel() for p in got.model.parameters()) < got.card["metrics"]["params_dense"]
    data = __import__("ptfx_user").images(128, side=32)
    acc = evaluate(got.model, data["x_test"], data["y_test"])
    assert acc == pytest.approx(got.card["metrics"]["test_accuracy"], abs=1e-6)


def test_torchvision_resnet18_through_the_factory_path(ray_local, user_dir, tmp_path):
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # PyPI's torchvision needs a CUDA torch: it fails to import here
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: {e})")
    run = _resnet_study(user_dir, tmp_path, "torchvision.models:resnet18", {"num_classes": 4})
    got = run["fetched"]
    assert sum(p.numel() for p in got.model.parameters()) < got.card["metrics"]["params_dense"]


def test_dataset_factory_rows_are_counted_once_at_validation(user_dir):
    """Classes of Datasets without ``targets`` come from one pass over their labels."""
    v = parse_spec(
        _spec(**{"dataset": {"factory": "ptfx_user:datasets", "params": {"n": 64}}}),
        "fx.yaml",
        user_dir,
    )
    assert v.data_info.num_outputs == 4
    assert v.dataset_config() == {
        "factory": "ptfx_user:datasets",
        "params": {"n": 64},
        "num_classes": 4,
        "name": None,
    }
    x, y = v.load_data().sample(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 16, 16) and y.dtype == torch.long
