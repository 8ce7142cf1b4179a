"""Gumbel-softmax masks: sampling law, straight-through gradient, schedules, penalty."""

from __future__ import annotations

import math

import pytest
import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, make_method, prunable_layers
from prunetune.prune._topology import raw_weight
from prunetune.prune.gumbel import GumbelGate, _HardConcrete, temperature


def _ctx(model, input_shape, epochs=2, steps=10):
    def sample_batch(k):
        return torch.randn(k, *input_shape), torch.zeros(k, dtype=torch.long)

    return PruneContext(
        layers=prunable_layers(model, input_shape),
        input_shape=tuple(input_shape),
        epochs=epochs,
        steps_per_epoch=steps,
        sample_batch=sample_batch,
        loss_fn=torch.nn.functional.cross_entropy,
    )


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("constant", 0.7, 2.0),
        ("linear", 0.0, 2.0),
        ("linear", 0.5, 1.1),
        ("linear", 1.0, 0.2),
        ("linear", 3.0, 0.2),  # clipped after the annealing window
        ("exponential", 0.5, math.sqrt(2.0 * 0.2)),
        ("exponential", 1.0, 0.2),
        ("cosine", 0.0, 2.0),
        ("cosine", 0.5, 1.1),
        ("cosine", 1.0, 0.2),
    ],
)
def test_temperature_schedules(schedule, progress, expected):
    assert temperature(schedule, 2.0, 0.2, progress) == pytest.approx(expected)


def test_hard_sample_follows_keep_probability():
    torch.manual_seed(0)
    logits = torch.full((200_000,), 0.8)
    hard = _HardConcrete.apply(logits, 0.5)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard.mean().item() == pytest.approx(1 / (1 + math.exp(-0.8)), abs=0.005)


def test_straight_through_gradient_is_the_concrete_gradient():
    torch.manual_seed(0)
    logits = torch.randn(1000, requires_grad=True)
    tau = 0.7
    state = torch.get_rng_state()
    hard = _HardConcrete.apply(logits, tau)
    (hard * torch.arange(1000.0)).sum().backward()
    torch.set_rng_state(state)  # replay the same noise for the reference computation
    u = torch.rand(1000).clamp(1e-6, 1 - 1e-6)
    ref_logits = logits.detach().clone().requires_grad_(True)
    soft = torch.sigmoid((ref_logits + torch.log(u) - torch.log1p(-u)) / tau)
    (soft * torch.arange(1000.0)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-5)
    assert torch.equal(hard, (soft > 0.5).float())


def test_eval_mask_is_deterministic_threshold():
    gate = GumbelGate((5,), 0.0)
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([-1.0, 2.0, -0.1, 0.3, 0.0]))
    gate.eval()
    assert gate.sample().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
def test_masks_are_binary_and_shaped(granularity):
    torch.manual_seed(0)
    spec = mlp_spec((6,), [5, 4], 3)
    model = build_model(spec)
    method = make_method({"name": "gumbel", "granularity": granularity, "init_keep_prob": 0.6})
    method.attach(model, _ctx(model, (6,)))
    for g in method.gates.values():
        torch.nn.init.normal_(g.logits)
    masks = method.masks()
    assert set(masks) == {"0", "2", "4"}
    for name, m in masks.items():
        assert m.weight.shape == raw_weight(model[int(name)]).shape
        assert bool(((m.weight == 0) | (m.weight == 1)).all())
    if granularity == "neuron":
        assert masks["4"].weight.eq(1).all()  # output units are never gated
        assert masks["0"].bias is not None
        assert torch.equal(masks["0"].weight[:, 0], masks["0"].bias)


def test_expected_params_neuron_granularity_hand_computed():
    spec = mlp_spec((6,), [5, 4], 3)
    model = build_model(spec)
    method = make_method({"name": "gumbel", "granularity": "neuron"})
    method.attach(model, _ctx(model, (6,)))
    with torch.no_grad():
        method.gates["0"].logits.fill_(0.0)  # q = 0.5 for each of 5 units
        method.gates["2"].logits.fill_(math.log(3.0))  # q = 0.75 for each of 4 units
    q0, q1 = 5 * 0.5, 4 * 0.75
    expected = (q0 * 6 + q0) + (q1 * q0 + q1) + (3 * q1 + 3)
    assert method.expected_params().item() == pytest.approx(expected)


def test_expected_params_weight_granularity_hand_computed():
    spec = mlp_spec((2,), [1], 1)
    model = build_model(spec)
    method = make_method({"name": "gumbel"})
    method.attach(model, _ctx(model, (2,)))
    with torch.no_grad():
        method.gates["0"].logits.copy_(torch.tensor([[0.0, math.log(3.0)]]))  # p = 0.5, 0.75
        method.gates["2"].logits.fill_(0.0)  # p = 0.5
    alive = 1 - (1 - 0.5) * (1 - 0.75)
    expected = (0.5 + 0.75) + alive + 0.5 + 1  # hidden bias counts if the unit is alive
    assert method.expected_params().item() == pytest.approx(expected)
    assert method.dense_count == 2 + 1 + 1 + 1


def test_penalty_warmup_and_target():
    spec = mlp_spec((2,), [1], 1)
    model = build_model(spec)
    method = make_method(
        {
            "name": "gumbel",
            "lam": 4.0,
            "warmup_epochs": 2.0,
            "penalty": "target",
            "target_density": 0.1,
        }
    )
    method.attach(model, _ctx(model, (2,), epochs=4, steps=10))
    assert method.penalty().item() == 0.0  # step 0 of the warm-up
    method.on_step(10)  # one epoch in: half of λ
    density = method.expected_params().item() / method.dense_count
    assert method.penalty().item() == pytest.approx(2.0 * abs(density - 0.1), rel=1e-5)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"lam": -1.0}, r"method.lam must be in \[0.0001, 1000.0\], but got -1.0"),
        ({"schedule": "step"}, r"method.schedule must be one of .* but got 'step'"),
        ({"granularity": "block"}, "method.granularity must be one of"),
        ({"tau_start": "hot"}, "method.tau_start must be a number, but got 'hot'"),
        ({"init_keep_prob": 1.0}, r"method.init_keep_prob must be in \[0.5, 0.999\]"),
        ({"lamda": 1.0}, "method.lamda is not a known hyperparameter"),
    ],
)
def test_invalid_config_names_field_and_value(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_method({"name": "gumbel", **cfg})


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match=r"method.name must be one of .* but got 'obd'"):
        make_method({"name": "obd"})
