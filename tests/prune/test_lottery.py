"""Lottery tickets: round count from the target, budget split, rewinding to the saved weights."""

from __future__ import annotations

import math

import pytest
import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, make_method


def _ctx(model, input_shape, epochs=2, steps=10):
    return PruneContext.for_model(
        model,
        input_shape,
        epochs=epochs,
        steps_per_epoch=steps,
        sample_batch=lambda k: (torch.randn(k, *input_shape), torch.zeros(k, dtype=torch.long)),
    )


@pytest.mark.parametrize(
    ("density", "rate", "max_rounds", "rounds"),
    [
        (0.8, 0.2, 10, 1),
        (0.64, 0.2, 10, 2),
        (0.01, 0.2, 100, math.ceil(math.log(0.01) / math.log(0.8))),  # 21
        (0.01, 0.2, 10, 10),  # capped: prunes 1 - 0.01^(1/10) = 37% per round
        (0.1, 0.5, 10, 4),
    ],
)
def test_round_count_follows_from_the_target(density, rate, max_rounds, rounds):
    model = build_model(mlp_spec((4,), [8], 2))
    method = make_method(
        {"name": "lottery", "density": density, "rate": rate, "max_rounds": max_rounds}
    )
    method.attach(model, _ctx(model, (4,), epochs=10, steps=100))  # 1000 steps, 500 pre-final
    assert method.rounds == rounds
    assert method.round_steps == 500 // rounds


def test_rounds_prune_geometrically_and_rewind_to_the_saved_weights():
    torch.manual_seed(0)
    model = build_model(mlp_spec((6,), [10], 3))
    method = make_method(
        {"name": "lottery", "density": 0.64, "rate": 0.2, "rewind_at": 0.2, "final_fraction": 0.5}
    )
    ctx = _ctx(model, (6,), epochs=2, steps=10)  # 20 steps: 2 rounds of 5, then 10 final
    method.attach(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    ctx.extra["optimizer"] = opt
    assert (method.rounds, method.round_steps, method.rewind_step) == (2, 5, 1)
    assert method.last_event_step() == 10  # the second round's prune and rewind
    assert [method.settled(e) for e in (1, 2)] == [False, True]  # 10 steps per epoch
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    saved = None
    for step in range(1, 11):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        method.on_step(step)
        if step == 1:
            saved = [p.detach().clone() for p in model.parameters()]
        if step in (5, 10):  # end of a round: pruned, then rewound to step 1's values
            for p, s in zip(model.parameters(), saved, strict=True):
                assert torch.equal(p.detach(), s)
            assert all(p not in opt.state for p in model.parameters())
            masks = {n: m.weight for n, m in method.masks().items()}
            target = 0.64 ** (method.done / 2) * ctx.topology.dense
            assert target - 3 <= ctx.topology.count(model, masks) <= target
    assert method.done == 2
    assert method.stats()["round"] == 2.0


def test_pruned_weights_stay_pruned_across_rounds():
    torch.manual_seed(0)
    model = build_model(mlp_spec((6,), [10], 3))
    method = make_method({"name": "lottery", "density": 0.3, "rate": 0.5})
    method.attach(model, _ctx(model, (6,), epochs=4, steps=10))
    before = None
    for step in range(1, 41):
        with torch.no_grad():  # stand-in for training: magnitudes reshuffle every step
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        method.on_step(step)
        now = {n: m.weight.clone() for n, m in method.masks().items()}
        if before is not None:
            assert all(bool((now[n] <= before[n]).all()) for n in now)
        before = now
