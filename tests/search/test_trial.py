"""run_trial's loss choice: ``train.loss`` picks MSE or L1 for regression and must fit the task."""

from __future__ import annotations

import pytest
import torch

from prunetune.search._errors import ConfigError
from prunetune.search.trial import run_trial

TOY = {
    "dataset": "pathways-toy",
    "model": {"widths": [10, 10], "activation": "silu"},
    "method": {"name": "none"},
    "train": {"epochs": 2, "batch_size": 100, "lr": 0.01},
    "threads": 1,
    "device": "cpu",
}


def _with_loss(loss: str) -> dict:
    return {**TOY, "train": {**TOY["train"], "loss": loss}}


def test_regression_loss_is_selectable_and_is_what_val_loss_measures():
    from prunetune.datasets import load_dataset

    auto, mse, l1 = (run_trial(_with_loss(x)) for x in ("auto", "mse", "l1"))
    assert auto.metrics["val_loss"] == mse.metrics["val_loss"]  # auto = MSE for regression
    assert "val_accuracy" not in l1.metrics
    # val_loss of the exported model, recomputed by hand with each loss
    data = load_dataset("pathways-toy")
    for res, fn in ((mse, torch.nn.functional.mse_loss), (l1, torch.nn.functional.l1_loss)):
        with torch.no_grad():
            out = res.export.model.eval()(data.x_val)
            expected = float(fn(out, data.y_val, reduction="sum")) / len(data.y_val)
        assert res.metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert l1.metrics["val_loss"] != mse.metrics["val_loss"]


def test_a_loss_that_does_not_fit_the_task_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.loss 'mse' does not fit dataset 'digits'"):
        run_trial({"dataset": "digits", "train": {"epochs": 1, "loss": "mse"}})
    with pytest.raises(ConfigError, match=r"train\.loss 'cross_entropy' .*'pathways-toy'"):
        run_trial(_with_loss("cross_entropy"))


def test_train_cli_takes_the_loss():
    import json

    from typer.testing import CliRunner

    from prunetune.search.cli import app

    args = ["train", "--dataset", "pathways-toy", "--widths", "10,10", "--epochs", "1", "--json"]
    res = CliRunner().invoke(app, [*args, "--loss", "l1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "val_loss" in out and "val_accuracy" not in out
    bad = CliRunner().invoke(app, ["train", "--loss", "mse", "--epochs", "1"])
    assert bad.exit_code == 2 and "train.loss 'mse' does not fit dataset 'digits'" in bad.output


@pytest.mark.parametrize(
    ("method", "budget"),
    [({"name": "magnitude", "density": 0.1, "prune_at": 0.9}, 657),
     ({"name": "magnitude_neuron", "neurons": 0.3, "prune_start": 0.9, "prune_end": 0.9}, None)],
)  # fmt: skip
def test_late_pruners_report_their_budget_every_epoch(method, budget):
    """What an early-stopping rung compares: the count the budget will reach, not dense."""
    out = run_trial(
        {"dataset": "digits", "model": {"widths": [64, 32]}, "method": method,
         "train": {"epochs": 2, "batch_size": 64}}
    )  # fmt: skip
    first = out.history[0]
    dense = out.metrics["params_dense"]
    assert first["params_current"] == dense  # nothing pruned yet after epoch 1
    assert first["params"] < dense
    if budget is not None:  # floor(0.1 · 6,570); the prune keeps as many weights as fit under it
        assert first["params"] == budget
        assert budget - 10 <= out.metrics["params"] <= budget
