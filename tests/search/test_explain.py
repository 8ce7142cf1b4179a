"""Explanations: files and figures, MLflow logging, the CLI, and the issue-6 acceptance test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib import image as mpimg
from torch import nn
from typer.testing import CliRunner

from prunetune.models import build_model, mlp_spec
from prunetune.prune import Mask, export_compact
from prunetune.prune.pathways import explain
from prunetune.search.cli import app
from prunetune.search.explain import (
    log_explanations,
    names_for,
    toy_pathways,
    write_explanations,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Issue 6 acceptance: chosen once, then fixed (no per-seed tuning). λ ramps up over the first
# 100 epochs while the masks start almost all-on (σ(θ₀) = 0.99), so y₁'s sin((x₁ − x₂)²) is
# learned before pruning bites; 800 epochs leave time for the last cross-connections to go.
# Measured (seeds 0–4, this machine): 5/5 two components, x₁/x₂ opposite within 0.017,
# x₃/x₄ equal within 0.05 (relative distance); val MSE 0.010–0.042, 28–39 parameters of 182.


def _toy_export():
    """The 4-10-10-2 network of the tutorial, pruned by hand to the two pathways."""
    torch.manual_seed(0)
    spec = mlp_spec((4,), [10, 10], 2, "silu")
    model = build_model(spec)
    w1 = torch.zeros(10, 4)
    w1[0, :2] = torch.tensor([1.5, -1.5])
    w1[1, :2] = torch.tensor([-0.8, 0.8])
    w1[2, 2:] = torch.tensor([1.0, 1.0])
    w2 = torch.zeros(10, 10)
    w2[0, 0], w2[0, 1], w2[1, 2] = 2.0, 1.0, 3.0
    w3 = torch.zeros(2, 10)
    w3[0, 0], w3[1, 1] = 1.5, 2.0
    with torch.no_grad():
        for i, w in ((0, w1), (2, w2), (4, w3)):
            model[i].weight.copy_(w)
    masks = {str(i): Mask((w != 0).float()) for i, w in ((0, w1), (2, w2), (4, w3))}
    return export_compact(model, spec, masks)


def _png_ok(path: Path) -> tuple[int, int]:
    img = mpimg.imread(path)  # (H, W, 4) floats
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert float(img[..., :3].std()) > 0.01  # not blank
    return img.shape[0], img.shape[1]


# --- files on a hand-built toy network ------------------------------------------------------


def test_write_explanations_on_the_toy_network(tmp_path):
    ex = _toy_export()
    files = write_explanations(
        ex.model, ex.arch, tmp_path, kept_units=ex.kept_units, dataset="pathways-toy"
    )
    assert set(files) == {
        "pathways_png",
        "pathways_svg",
        "components",
        "importance_csv",
        "importance_json",
        "importance_png",
        "symmetry_csv",
        "symmetry_md",
        "summary",
    }
    _png_ok(files["pathways_png"])
    _png_ok(files["importance_png"])
    assert files["pathways_svg"].read_text().lstrip().startswith("<?xml")
    comp = json.loads(files["components"].read_text())
    assert [(c["inputs"], c["outputs"]) for c in comp["components"]] == [
        (["x1", "x2"], ["y1"]),
        (["x3", "x4"], ["y2"]),
    ]
    assert comp["components"][0]["hidden"] == {"0": [0, 1], "2": [0]}
    assert comp["num_edges"] == 11 and comp["dead_outputs"] == []
    # path norms: x1, x2 → y1: 1.5·2·1.5 + 0.8·1·1.5 = 5.7 each; x3, x4 → y2: 1·3·2 = 6 each
    rows = files["importance_csv"].read_text().splitlines()
    assert rows[0] == "feature,overall,y1,y2"
    overall = [float(r.split(",")[1]) for r in rows[1:]]
    assert overall == pytest.approx([5.7 / 23.4, 5.7 / 23.4, 6 / 23.4, 6 / 23.4])
    imp = json.loads(files["importance_json"].read_text())
    assert imp["path_norm"] == [
        pytest.approx([5.7, 5.7, 0.0, 0.0]),
        pytest.approx([0.0, 0.0, 6.0, 6.0]),
    ]
    assert files["symmetry_csv"].read_text().splitlines() == [
        "a,b,relation,distance,group",
        "x1,x2,opposite,0.0,1",
        "x3,x4,equal,0.0,2",
    ]
    md = files["symmetry_md"].read_text()
    assert "1. x1 = −x2" in md and "2. x3 = x4" in md
    assert "{x1, x2} → {y1}" in files["summary"].read_text()


def test_large_networks_draw_only_the_top_paths(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 3))  # 1,320 edges
    files = write_explanations(model, {"input_shape": [30]}, tmp_path, max_edges=1000, top_k=5)
    assert "top 5 paths" in files["pathways_svg"].read_text()
    _png_ok(files["pathways_png"])


def test_names_for_datasets():
    n = names_for((1, 28, 28), 10, "fashion-mnist")
    assert n.image and len(n.features) == 784 and n.features[29] == "(1,1)"
    assert n.outputs[9] == "Ankle boot"
    assert names_for((4,), 2, "pathways-toy").outputs == ("y1", "y2")
    assert names_for((3,), 2, None).features == ("x1", "x2", "x3")


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


# --- issue 6 acceptance -----------------------------------------------------------------------


@pytest.mark.slow
def test_gumbel_pruned_toy_networks_separate_into_two_pathways():
    """4-10-10-2 SiLU networks pruned by Gumbel masks show exactly {x1, x2} → y1 and
    {x3, x4} → y2, with x1 ≈ −x2 and x3 ≈ x4, in at least 4 of the seeds 0–4."""
    outcomes = [toy_pathways(seed) for seed in range(5)]
    assert sum(o["separated"] for o in outcomes) >= 4, outcomes
