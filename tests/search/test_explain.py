"""The MLflow adapter of explanations, the CLI, and the issue-6 acceptance test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib import image as mpimg
from torch import nn
from typer.testing import CliRunner

from prunetune.explain import explain
from prunetune.search.cli import app
from prunetune.search.explain import log_explanations, toy_pathways

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Issue 6 acceptance: chosen once, then fixed (no per-seed tuning). λ ramps up over the first
# 100 epochs while the masks start almost all-on (σ(θ₀) = 0.99), so y₁'s sin((x₁ − x₂)²) is
# learned before pruning bites; 800 epochs leave time for the last cross-connections to go.
# Measured (seeds 0–4, this machine): 5/5 two components, x₁/x₂ opposite within 0.017,
# x₃/x₄ equal within 0.05 (relative distance); val MSE 0.010–0.042, 28–39 parameters of 182.


def _png_ok(path: Path) -> tuple[int, int]:
    img = mpimg.imread(path)  # (H, W, 4) floats
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert float(img[..., :3].std()) > 0.01  # not blank
    return img.shape[0], img.shape[1]


# --- MLflow and the CLI on a registered Fashion-MNIST model ---------------------------------


@pytest.fixture(scope="module")
def fashion_study(tmp_path_factory, make_study):
    """A one-trial Fashion-MNIST study (short Gumbel training), registered as fmnist@knee."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_DIR}")
    from prunetune.search.registry import register_study

    d = tmp_path_factory.mktemp("explain")
    cfg = {
        "dataset": "fashion-mnist",
        "model": {"widths": [32]},
        "method": {"name": "gumbel", "lam": 2.0, "logit_lr": 0.1},
        "train": {"epochs": 1, "batch_size": 512, "lr": 0.01},
        "threads": 1,
        "device": "cpu",
    }
    made = make_study(d, "fmnist", {"dataset": "fashion-mnist"}, [cfg])
    uri, result, run_id = made["uri"], made["results"][0], made["mirror"].runs[0]
    register_study(uri, "fmnist", select=("knee",))
    return {"uri": uri, "dir": d, "run_id": run_id, "result": result}


def test_explain_registered_fashion_model(fashion_study, tmp_path):
    out = tmp_path / "explain"
    res = CliRunner().invoke(
        app, ["explain", "fmnist@knee", "-o", str(out), "--tracking-uri", fashion_study["uri"]]
    )
    assert res.exit_code == 0, res.output
    h, w = _png_ok(out / "importance_heatmap.png")
    assert 0.7 < h / w < 1.4  # a square image with its colour bar
    _png_ok(out / "importance_per_class.png")
    _png_ok(out / "pathways.png")
    imp = json.loads((out / "importance.json").read_text())
    assert imp["input_shape"] == [1, 28, 28]
    assert len(imp["overall"]) == 784 and len(imp["per_output"]) == 10
    assert sum(imp["overall"]) == pytest.approx(1.0)
    assert imp["outputs"][0] == "T-shirt/top"
    # the same numbers as the analysis of the trial's own export
    ex = fashion_study["result"].export
    expected = explain(ex.model, (1, 28, 28), kept_units=ex.kept_units)
    assert imp["overall"] == pytest.approx(expected.importance.overall.tolist(), abs=1e-12)
    comp = json.loads((out / "components.json").read_text())
    assert comp["num_edges"] == expected.graph.num_edges > 0


def test_explain_run_and_log_to_mlflow(fashion_study, tmp_path):
    from mlflow import MlflowClient

    uri, run_id = fashion_study["uri"], fashion_study["run_id"]
    args = ["explain", "--run", run_id, "-o", str(tmp_path), "--tracking-uri", uri]
    res = CliRunner().invoke(app, [*args, "--log", "--scale-by-std"])
    assert res.exit_code == 0, res.output
    imp = json.loads((tmp_path / "importance.json").read_text())
    assert imp["scaled_by"] == "feature std" and sum(imp["overall"]) == pytest.approx(1.0)
    c = MlflowClient(uri)
    logged = {f.path for f in c.list_artifacts(run_id, "explain")}
    assert {"explain/importance_heatmap.png", "explain/pathways.png", "explain/pathways.svg"} <= (
        logged
    )
    paths = log_explanations(run_id, uri, fashion_study["result"].export, artifact_path="explain2")
    assert "explain2/importance_per_class.png" in paths
    assert {f.path for f in c.list_artifacts(run_id, "explain2")} == set(paths)
    got = Path(c.download_artifacts(run_id, "explain2/importance_heatmap.png", str(tmp_path)))
    _png_ok(got)


def test_explain_cli_arguments(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["explain", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "exactly one of NAME@ALIAS or --run" in res.output
    res = runner.invoke(app, ["explain", "m@a", "--log", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--log needs --run" in res.output


def test_explain_cli_reports_a_model_that_is_not_a_chain_in_one_line(tmp_path, monkeypatch):
    from prunetune.search import cli_explain
    from prunetune.search import explain as adapter

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    arch = {"input_shape": [1, 4, 4]}
    monkeypatch.setattr(cli_explain, "_uri", lambda uri: "sqlite:///unused.db")
    monkeypatch.setattr(adapter, "load_run_model", lambda run, uri: (model, arch, None, None))
    res = CliRunner().invoke(app, ["explain", "--run", "r1", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        "error: pathway analysis needs a chain of Linear/Conv2d layers (an nn.Sequential MLP or "
        "CNN with only activations, MaxPool2d, Flatten or Dropout between them); got "
        "Sequential with BatchNorm2d layers."
    )


# --- issue 6 acceptance -----------------------------------------------------------------------


@pytest.mark.slow
def test_gumbel_pruned_toy_networks_separate_into_two_pathways():
    """4-10-10-2 SiLU networks pruned by Gumbel masks show exactly {x1, x2} → y1 and
    {x3, x4} → y2, with x1 ≈ −x2 and x3 ≈ x4, in at least 4 of the seeds 0–4."""
    outcomes = [toy_pathways(seed) for seed in range(5)]
    assert sum(o["separated"] for o in outcomes) >= 4, outcomes
