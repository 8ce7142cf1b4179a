"""Explanation files and figures: tables to the number, figures that are not blank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from prunetune.explain import names_for, write_explanations
from prunetune.models import build_model, mlp_spec
from prunetune.prune import Mask, export_compact


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
    return export_compact(model, masks, torch.zeros(1, 4))


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
