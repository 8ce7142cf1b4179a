"""One delivery format for every model: a registered version is ``model.pt2`` (raw inputs in,
the data set's standardisation inside) that loads with plain torch, with ONNX on request —
checked on a standardised data set (Fashion-MNIST) and on a ResNet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import prunetune
from prunetune.datasets import load_dataset
from prunetune.prune import evaluate
from prunetune.prune.deliver import DeliveredModel, load_masked_state
from prunetune.prune.export import count_params
from prunetune.search.cli import app
from prunetune.search.registry import FetchedModel, register_study
from prunetune.search.registry import fetch as registry_fetch
from prunetune.search.trial import build_trial_model

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
runner = CliRunner()


def _raw(x: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Raw inputs (pixels in [0, 1]) from the standardised split the trial was measured on."""
    return x * inputs["std"] + inputs["mean"]


def _registered(tmp_path_factory, make_study, name: str, dataset: str, cfg: dict) -> dict:
    """A one-trial study of ``cfg``, registered as ``name@knee``."""
    from mlflow import MlflowClient

    d = tmp_path_factory.mktemp(name)
    made = make_study(d, name, {"name": name, "dataset": dataset}, [cfg])
    (v,) = register_study(made["uri"], name, ["knee"])
    mv = MlflowClient(made["uri"], registry_uri=made["uri"]).get_model_version(name, v.version)
    return {"uri": made["uri"], "result": made["results"][0], "version": v, "tags": mv.tags}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory, make_study):
    """A short Gumbel MLP on Fashion-MNIST, whose inputs are standardised (mean ≈ 0.29)."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_DIR}")
    cfg = {
        "dataset": "fashion-mnist",
        "model": {"widths": [32]},
        "method": {"name": "gumbel", "lam": 2.0, "logit_lr": 0.1},
        "train": {"epochs": 1, "batch_size": 512, "lr": 0.01},
        "threads": 1,
        "device": "cpu",
    }
    reg = _registered(tmp_path_factory, make_study, "fdeliver", "fashion-mnist", cfg)
    return {**reg, "data": load_dataset("fashion-mnist")}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory, make_study):
    """A ResNet-8 (width 4) on digits: not an nn.Sequential, no arch.json in its trial."""
    cfg = {
        "dataset": "digits",
        "model": {"family": "resnet", "depth": 8, "channels": [4]},
        "method": {"name": "gumbel", "lam": 5.0, "logit_lr": 0.1},
        "train": {"epochs": 1, "batch_size": 64},
        "threads": 1,
        "device": "cpu",
    }
    reg = _registered(tmp_path_factory, make_study, "rdeliver", "digits", cfg)
    return {**reg, "data": load_dataset("digits")}


def _check_fetched(reg: dict) -> FetchedModel:
    """The fetched model reproduces the recorded test accuracy on raw inputs, its nonzero
    parameters are the version's ``params`` tag, and its outputs are the trial's compact
    model's on the standardised inputs."""
    data, tags, res = reg["data"], reg["tags"], reg["result"]
    got = registry_fetch(f"{reg['version'].name}@knee", tracking_uri=reg["uri"])
    assert isinstance(got.model, DeliveredModel) and got.arch is None
    assert got.model.eval().to("cpu") is got.model
    assert got.inputs == res.inputs
    assert (got.inputs["mean"], got.inputs["std"]) == (data.mean, data.std)
    x_raw = _raw(data.x_test, got.inputs)
    acc = evaluate(got.model, x_raw, data.y_test)
    assert acc == pytest.approx(float(tags["test_accuracy"]), abs=1e-6)
    assert float(tags["test_accuracy"]) == res.metrics["test_accuracy"]
    assert count_params(got.model) == int(tags["params"]) == res.metrics["params"]
    with torch.no_grad():
        torch.testing.assert_close(
            got.model(x_raw), res.export.model(data.x_test), rtol=0, atol=1e-4
        )
        assert got.model(x_raw[:1]).shape == (1, 10)  # dynamic batch, from 1 row
    return got


def test_fetched_fashion_model_takes_raw_inputs(fashion):
    got = _check_fetched(fashion)
    assert got.inputs["mean"] == pytest.approx(0.286, abs=0.01)  # a real standardisation
    data = fashion["data"]
    with torch.no_grad():  # so standardised inputs are not what it takes
        assert not torch.allclose(
            got.model(data.x_test[:8]), got.model(_raw(data.x_test[:8], got.inputs))
        )


def test_prunetune_fetch_returns_the_module_with_its_record(fashion):
    model = prunetune.fetch(f"{fashion['version'].name}@knee", tracking_uri=fashion["uri"])
    assert isinstance(model, DeliveredModel)
    assert model.eval().to("cpu") is model
    res = fashion["result"]
    assert model.inputs == res.inputs
    assert model.card["metrics"]["test_accuracy"] == res.metrics["test_accuracy"]


def test_model_card_states_the_inputs(fashion, tmp_path):
    from prunetune.search.registry import fetch_to

    got = fetch_to("fdeliver@knee", tmp_path, tracking_uri=fashion["uri"])
    md = (tmp_path / "MODEL_CARD.md").read_text()
    mean, std = got.inputs["mean"], got.inputs["std"]
    assert "shape `(batch, 1, 28, 28)`" in md and "`float32`" in md
    assert "values in `[0, 1]`" in md
    assert f"`(x - {mean:.6g}) / {std:.6g}` is part of the program" in md
    assert json.loads((tmp_path / "card.json").read_text())["input"] == got.inputs


# The user's side: a process in which prunetune cannot be imported runs the model card's own
# loading snippet on model.pt2, and onnxruntime on model.onnx.
NO_PRUNETUNE = textwrap.dedent(
    """
    import sys
    sys.modules["prunetune"] = None  # importing prunetune now fails
    try:
        import prunetune
    except ImportError:
        pass
    else:
        raise SystemExit("prunetune must not be importable here")
    import os
    import numpy as np
    import onnxruntime as ort
    import torch

    model_dir, work = sys.argv[1], sys.argv[2]
    x = np.load(os.path.join(work, "x_raw.npy"))
    card = open(os.path.join(model_dir, "MODEL_CARD.md")).read()
    snippet = card.split("```python\\n", 1)[1].split("```", 1)[0]
    os.chdir(model_dir)
    ns = {}
    exec(snippet, ns)  # the card's loading code, as a user runs it
    with torch.no_grad():
        np.save(os.path.join(work, "y_pt2.npy"), ns["model"](torch.from_numpy(x)).numpy())
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.save(os.path.join(work, "y_onnx.npy"), y)
    print(sorted(m for m in sys.modules if m.startswith("prunetune.")))
    """
)


def test_pt2_and_onnx_load_without_prunetune(fashion, tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    res = runner.invoke(
        app, ["fetch", "fdeliver@knee", "-o", str(out), "--onnx", "--tracking-uri", fashion["uri"]]
    )
    assert res.exit_code == 0, res.output
    assert "max abs diff" in res.output
    names = {p.name for p in out.iterdir()}
    assert {"model.pt2", "model.onnx", "weights.safetensors", "masks.safetensors"} <= names
    assert {"input.json", "kept_units.json", "card.json", "config.json"} <= names
    # the masked dense model (masks baked into weights.safetensors) on standardised inputs
    inputs = json.loads((out / "input.json").read_text())
    dense = build_trial_model(json.loads((out / "config.json").read_text())).eval()
    load_masked_state(dense, out)
    x_raw = _raw(fashion["data"].x_test[:64], inputs)
    with torch.no_grad():
        expected = dense((x_raw - inputs["mean"]) / inputs["std"]).numpy()
    work.mkdir()
    np.save(work / "x_raw.npy", x_raw.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", NO_PRUNETUNE, str(out), str(work)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # no prunetune module was loaded
    for name in ("y_pt2.npy", "y_onnx.npy"):
        got = np.load(work / name)
        assert got.shape == expected.shape == (64, 10)
        assert float(np.abs(got - expected).max()) <= 1e-4, name


def test_resnet_trial_registers_and_fetches(resnet, tmp_path):
    got = _check_fetched(resnet)
    res = resnet["result"]
    assert res.export.arch is None  # not a chain: no arch.json in the trial
    assert res.metrics["params"] < res.metrics["params_dense"]  # something was pruned
    from prunetune.search.registry import fetch_to

    fetch_to("rdeliver@knee", tmp_path, tracking_uri=resnet["uri"])
    assert not (tmp_path / "arch.json").exists() and (tmp_path / "model.pt2").is_file()
    assert got.input_shape == (1, 8, 8)


def test_explaining_a_registered_resnet_says_in_one_line_it_needs_a_chain(resnet, tmp_path):
    res = runner.invoke(
        app, ["explain", "rdeliver@knee", "-o", str(tmp_path), "--tracking-uri", resnet["uri"]]
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "chain of Linear/Conv2d layers" in lines[0], res.output
