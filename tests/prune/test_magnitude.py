"""Magnitude pruning after training (weights) and magnitude neuron pruning on a schedule."""

from __future__ import annotations

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


def _hand_model():
    spec = mlp_spec((4,), [3], 2)
    model = build_model(spec)
    with torch.no_grad():
        model[0].weight.copy_(
            torch.tensor([[0.9, -0.1, 0.2, 0.3], [-0.8, 0.05, 0.01, 0.02], [0.7, -0.6, 0.03, 0.04]])
        )
        model[2].weight.copy_(torch.tensor([[0.001, 0.002, 0.5], [0.003, -0.4, 0.004]]))
    return model


@pytest.mark.parametrize(
    ("scope", "expected0", "expected2"),
    [
        # |w| ranked over both layers; the budget is 0.45 * 23 = 10.35 parameters. The top ten
        # cost 10: h1 (0.8, 0.05) + b, h2 (0.7, 0.6) + b, 0.5 and 0.4 into the outputs, the 2
        # output biases; h0's four weights are free (no kept weight reads h0, so it is not
        # live and export drops it). The eleventh, 0.04 into h2, would make 11.
        ("global", [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 1], [0, 1, 0]]),
        # the same fraction of each layer (6/12 and 3/6): h1 (0.8) + b, h2 (0.7, 0.6) + b,
        # 3 output weights, 2 output biases = 10; one more step (0.1 into h0, 0.003 reading h0)
        # makes h0 live: + 4 weights + b + 0.003 = 16
        ("layerwise", [[1, 0, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], [[0, 0, 1], [0, 1, 1]]),
    ],
)
def test_global_vs_layerwise_thresholds_on_hand_built_weights(scope, expected0, expected2):
    model = _hand_model()
    method = make_method({"name": "magnitude", "density": 0.45, "scope": scope, "prune_at": 0.0})
    ctx = _ctx(model, (4,))
    method.attach(model, ctx)  # prune_at 0: pruned at attach
    assert ctx.topology.dense == 23
    masks = method.masks()
    assert masks["0"].weight.tolist() == expected0
    assert masks["2"].weight.tolist() == expected2
    assert ctx.topology.count(model, {n: m.weight for n, m in masks.items()}) == 10


def test_prunes_at_the_configured_step_and_keeps_the_mask_fixed():
    model = _hand_model()
    method = make_method({"name": "magnitude", "density": 0.45, "prune_at": 0.25})
    method.attach(model, _ctx(model, (4,), epochs=2, steps=10))  # prune at step 5 of 20
    method.on_step(4)
    assert all(bool(m.weight.eq(1).all()) for m in method.masks().values())
    method.on_step(5)
    kept = method.masks()["0"].weight.clone()
    assert int(kept.sum()) == 8
    with torch.no_grad():  # "training" changes magnitudes; the mask stays
        model[0].parametrizations.weight.original.mul_(-3.0).add_(1.0)
    method.on_step(6)
    assert torch.equal(method.masks()["0"].weight, kept)
    assert torch.equal(model[0].weight, model[0].parametrizations.weight.original * kept)


def test_neuron_scores_are_incoming_l2_norms():
    model = _hand_model()
    method = make_method({"name": "magnitude_neuron", "neurons": 0.34, "prune_start": 0.5})
    ctx = _ctx(model, (4,))
    method.attach(model, ctx)
    (group,) = ctx.topology.groups  # the 3 hidden units, flat channels 0..2
    assert (group.root, group.offset, group.size) == ("0", 0, 3)
    w = model[0].parametrizations.weight.original.detach()
    expected = torch.sqrt((w**2).sum(1))  # 0.9899, 0.8043, 0.9232
    assert torch.allclose(method.neuron_scores(), expected.double())


def test_neuron_removal_keeps_the_largest_norms_and_masks_the_bias():
    model = _hand_model()
    method = make_method(
        {"name": "magnitude_neuron", "neurons": 0.34, "prune_start": 0.5, "prune_events": 1}
    )
    method.attach(model, _ctx(model, (4,)))
    method.on_step(10)  # prune_end 0.5 of 20 steps
    m = method.masks()["0"]
    # row norms: 0.9899, 0.8043, 0.9232 → one unit kept (round(0.34 * 3) = 1): unit 0
    assert m.bias.tolist() == [1.0, 0.0, 0.0]
    assert m.weight.tolist() == [[1.0] * 4, [0.0] * 4, [0.0] * 4]
    assert torch.equal(model[0].bias, model[0].parametrizations.bias.original * m.bias)
    assert method.alive.tolist() == [True, False, False]
    with torch.no_grad():  # removed units are closed: they output exactly zero
        assert model[0](torch.randn(5, 4))[:, 1:].eq(0).all()
    assert bool(method.masks()["2"].weight.eq(1).all())  # output units are never removed


def test_cubic_schedule_targets_and_event_steps():
    spec = mlp_spec((4,), [100], 2)
    model = build_model(spec)
    method = make_method(
        {
            "name": "magnitude_neuron",
            "neurons": 0.1,
            "prune_start": 0.1,
            "prune_end": 0.5,
            "prune_events": 5,
        }
    )
    method.attach(model, _ctx(model, (4,), epochs=10, steps=10))
    assert method.event_steps == [10, 20, 30, 40, 50]
    # 10 + 90 (1 - k/5)^3
    assert [method.targets(k) for k in range(1, 6)] == [[56], [29], [16], [11], [10]]
    for step in range(1, 61):
        method.on_step(step)
        if step == 35:
            assert int(method.alive.sum()) == 16
    assert int(method.alive.sum()) == 10


def test_global_allocation_keeps_one_unit_per_layer():
    spec = mlp_spec((4,), [6, 6], 2)
    model = build_model(spec)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # every unit of the second hidden layer scores below the first's
    method = make_method(
        {
            "name": "magnitude_neuron",
            "neurons": 0.25,  # 2 + 2 hidden units of 12 in total
            "allocation": "global",
            "prune_events": 1,
            "prune_start": 0.0,
            "prune_end": 0.0,
        }
    )
    ctx = _ctx(model, (4,))
    method.attach(model, ctx)  # pruned at attach
    alive = {
        g.root: int(ctx.topology.group_slice(method.alive, g).sum()) for g in ctx.topology.groups
    }
    assert alive == {"0": 3, "2": 1}


def test_prune_start_after_prune_end_is_rejected():
    with pytest.raises(ValueError, match=r"`prune_start <= prune_end` must hold.*0\.9.*0\.5"):
        make_method({"name": "magnitude_neuron", "prune_start": 0.9, "prune_end": 0.5})


def test_a_model_is_settled_a_full_epoch_after_the_last_scheduled_prune():
    """A fall to chance right after a scheduled prune is not a collapse: the run checks
    ``settled`` (epochs done × steps per epoch ≥ last event + one epoch) before stopping."""
    spec = mlp_spec((4,), [100], 2)
    one_shot = make_method({"name": "magnitude", "density": 0.1, "prune_at": 0.5})
    one_shot.attach(build_model(spec), _ctx(build_model(spec), (4,), epochs=4, steps=10))
    assert one_shot.last_event_step() == 20  # pruned at the end of epoch 2
    assert [one_shot.settled(e) for e in range(1, 5)] == [False, False, True, True]
    model = build_model(spec)
    neurons = make_method(
        {"name": "magnitude_neuron", "neurons": 0.1, "prune_start": 0.1, "prune_end": 0.45}
    )
    neurons.attach(model, _ctx(model, (4,), epochs=10, steps=10))
    assert neurons.last_event_step() == 45  # mid-epoch 5: settled once epoch 6 has ended
    assert [neurons.settled(e) for e in (5, 6)] == [False, True]
    snip = make_method({"name": "snip", "density": 0.1})  # pruned at initialisation
    snip.attach(model := build_model(spec), _ctx(model, (4,), epochs=4, steps=10))
    assert snip.last_event_step() == 0 and snip.settled(1)
