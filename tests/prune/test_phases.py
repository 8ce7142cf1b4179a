"""Training options beside the pruning method: the fine-tune phase with frozen masks, the
learning-rate schedule and distillation, on every method and the fast zoo models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_contract import FAST_ZOO, NAMES, zoo_config
from zoo import ZOO

from prunetune.datasets import batches
from prunetune.prune import (
    FrozenMasks,
    Topology,
    TrainConfig,
    count_params,
    distill_loss,
    export_compact,
    make_method,
    train,
)
from prunetune.prune._train import _schedule


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _zoo_data(x: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(32, *x.shape[1:], generator=g)
    ys = torch.randint(0, 10, (32,), generator=g)
    return SimpleNamespace(
        input_shape=tuple(x.shape[1:]), x_train=xs, y_train=ys, x_val=xs[:8], y_val=ys[:8]
    )


def _phased_run(model_name: str, name: str, *, alpha: float = 0.5, seed: int = 0):
    """Two epochs of mask learning, two of fine-tuning (cosine, distilled from a dense zoo
    model); Gumbel's logits are redrawn at the end of mask learning so that it prunes visibly.
    Returns the model, an input batch, the result, the topology and the masks that mask
    learning ended with."""
    model, x = ZOO[model_name](seed=seed)
    teacher, _ = ZOO[model_name](seed=seed + 1)
    data = _zoo_data(x, seed)
    method = make_method(zoo_config(name))
    topology = Topology.build(model, x)
    cfg = TrainConfig(
        epochs=2,
        batch_size=8,
        lr=1e-2,
        seed=seed,
        finetune_epochs=2,
        finetune_lr=1e-2,
        lr_schedule="cosine",
        distill_alpha=alpha,
        distill_temperature=3.0,
    )
    at_freeze: dict = {}

    def epoch_metrics(active):
        if len(at_freeze) == 0 and active is method and epoch_metrics.calls == cfg.epochs - 1:
            if name == "gumbel":
                g = torch.Generator().manual_seed(seed)
                with torch.no_grad():
                    for gate in method.gates.values():
                        gate.logits.copy_(torch.randn(gate.logits.shape, generator=g) + 0.3)
            at_freeze.update(active.masks())
        epoch_metrics.calls += 1
        return {}

    epoch_metrics.calls = 0
    result = train(
        model,
        method,
        data,
        cfg,
        batches=lambda gen: batches(data.x_train, data.y_train, cfg.batch_size, generator=gen),
        topology=topology,
        teacher=teacher if alpha > 0 else None,
        epoch_metrics=epoch_metrics,
    )
    return model, x, result, topology, at_freeze


def _phase_params(model_name: str):
    out = []
    for name in NAMES:
        if name == "kfac" and model_name != "mlp":
            continue  # refused at validation on these graphs
        if name == "grasp" and model_name == "mobilenetv3_small":
            continue
        out.append(pytest.param(model_name, name, id=f"{model_name}-{name}"))
    return out


@pytest.mark.parametrize(("model_name", "name"), [p for m in FAST_ZOO for p in _phase_params(m)])
def test_fine_tuning_keeps_the_masks_and_the_export_exact(model_name, name):
    model, x, result, topology, at_freeze = _phased_run(model_name, name)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert [r["phase"] for r in result.history] == [0.0, 0.0, 1.0, 1.0]
    assert isinstance(result.method, FrozenMasks)
    assert set(result.masks) == set(at_freeze)
    for layer, m in result.masks.items():  # frozen: exactly the masks mask learning ended with
        assert torch.equal(m.weight, at_freeze[layer].weight), layer
    ex = export_compact(model, result.masks, topology=topology)
    model.eval()
    with torch.no_grad():
        diff = (model(x) - ex.model(x)).abs().max().item()
    assert diff <= 1e-4
    weights = {n: m.weight for n, m in result.masks.items()}
    assert ex.params == count_params(ex.model) == topology.count(model, weights)


def test_fine_tuning_trains_the_weights_and_only_the_kept_ones():
    _model, _x, result, topology, at_freeze = _phased_run("mlp", "magnitude", alpha=0.0)
    # a pruned weight stays exactly zero through the fine-tune phase; kept weights moved
    for layer in topology.layers:
        w = layer.module.weight.detach()
        mask = at_freeze[layer.name].weight
        assert bool((w[mask == 0] == 0).all())
    losses = [r["loss"] for r in result.history]
    assert losses[3] < losses[1]


def test_cosine_schedule_decays_the_weights_group_to_zero_and_leaves_the_masks():
    w = torch.nn.Parameter(torch.zeros(2))
    logits = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [logits], "lr": 0.5}], lr=0.1)
    sched = _schedule(opt, "cosine", 4)
    seen = []
    for _ in range(4):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        opt.step()
        sched.step()
    seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
    expect = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert [a for a, _ in seen] == pytest.approx(expect)  # 0.1, 0.0854, 0.05, 0.0146, 0
    assert [b for _, b in seen] == [0.5] * 5
    assert _schedule(opt, "constant", 4) is None


def test_distill_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert distill_loss(s, y, t, 0.0, 4.0).item() == pytest.approx(ce.item())
    assert distill_loss(s, y, s, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    # by hand: T² · mean over samples of Σ_c p_t log(p_t / p_s) at T = 2, alpha = 0.25
    pt, ps = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    want = 0.75 * ce + 0.25 * 4 * kl
    assert distill_loss(s, y, t, 0.25, 2.0).item() == pytest.approx(want.item(), rel=1e-6)


def test_distillation_without_a_teacher_or_on_regression_is_refused():
    model, x = ZOO["mlp"]()
    data = _zoo_data(x, 0)
    with pytest.raises(ValueError, match=r"train\.distill\.alpha is 0\.5, but no teacher"):
        train(model, make_method({"name": "none"}), data, TrainConfig(distill_alpha=0.5))
    with pytest.raises(ValueError, match=r"train\.distill\.alpha 0\.5 needs a classification"):
        TrainConfig(distill_alpha=0.5, loss="mse")
    with pytest.raises(ValueError, match=r"train\.finetune_epochs must be in \[0, 10000\]"):
        TrainConfig(finetune_epochs=-1)


def test_stop_ends_training_after_that_epoch_and_skips_fine_tuning():
    model, x = ZOO["mlp"]()
    data = _zoo_data(x, 0)
    cfg = TrainConfig(epochs=3, batch_size=8, finetune_epochs=2)
    result = train(
        model, make_method({"name": "none"}), data, cfg, stop=lambda row: row["epoch"] == 2
    )
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.stopped_early and not isinstance(result.method, FrozenMasks)
