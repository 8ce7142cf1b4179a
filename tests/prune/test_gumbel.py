"""Gumbel-softmax masks: sampling law, straight-through gradient, schedules, penalty."""

from __future__ import annotations

import math

import pytest
import torch

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, _fused, make_method
from prunetune.prune._topology import raw_param, raw_weight
from prunetune.prune.gumbel import GumbelGate, _HardConcrete, _MaskedWeight, temperature


# Per-weight masks run on the compiled CPU kernel when it builds, else on ATen ops: test both.
@pytest.fixture(params=["native", "aten"])
def mask_path(request, monkeypatch):
    if request.param == "native":
        if not _fused.native_available():
            pytest.skip("the fused mask kernel is switched off or did not build here")
    else:
        monkeypatch.setattr(_fused, "ENABLED", False)
    return request.param


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0xD35A2D97) & 0xFFFFFFFF
    return x ^ (x >> 15)


def _reference_uniforms(key: int, n: int) -> torch.Tensor:
    """The kernel's documented generator, in plain Python integers."""
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    bits = [_lowbias32(_lowbias32((i + k0) & 0xFFFFFFFF) ^ k1) >> 9 for i in range(n)]
    return torch.tensor([(b + 0.5) / 2**23 for b in bits], dtype=torch.float32)


def _replayed_uniforms(shape: tuple[int, ...], state: torch.Tensor) -> torch.Tensor:
    """The ``u`` that a mask drew after ``torch.set_rng_state(state)`` (either path)."""
    torch.set_rng_state(state)
    return _reference_uniforms(_fused.draw_key(), math.prod(shape)).view(shape)


def _ctx(model, input_shape, epochs=2, steps=10):
    def sample_batch(k):
        return torch.randn(k, *input_shape), torch.zeros(k, dtype=torch.long)

    return PruneContext.for_model(
        model,
        input_shape,
        epochs=epochs,
        steps_per_epoch=steps,
        sample_batch=sample_batch,
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


def test_neuron_sample_follows_keep_probability(mask_path):
    torch.manual_seed(0)
    logits = torch.full((200_000,), 0.8)
    hard, p = _HardConcrete.apply(logits, 0.5)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard.mean().item() == pytest.approx(1 / (1 + math.exp(-0.8)), abs=0.005)
    assert torch.allclose(p, torch.sigmoid(logits))


def test_neuron_straight_through_gradient_is_the_concrete_gradient(mask_path):
    torch.manual_seed(0)
    logits = torch.randn(1000, requires_grad=True)
    tau = 0.7
    state = torch.get_rng_state()
    hard, p = _HardConcrete.apply(logits, tau)
    (hard * torch.arange(1000.0) + 3.0 * p).sum().backward()
    u = _replayed_uniforms((1000,), state)  # the same noise, for the reference computation
    ref_logits = logits.detach().clone().requires_grad_(True)
    soft = torch.sigmoid((ref_logits + torch.log1p(-u) - torch.log(u)) / tau)
    (soft * torch.arange(1000.0) + 3.0 * torch.sigmoid(ref_logits)).sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-5)
    assert torch.equal(hard, (soft > 0.5).float())


def test_uniforms_follow_the_documented_generator():
    key = 0xDEAD_BEEF_0123_4567
    u = _fused.uniform(key, 5000)
    assert torch.equal(u, _reference_uniforms(key, 5000))
    assert u.min().item() > 0.0 and u.max().item() < 1.0
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.std().item() == pytest.approx(math.sqrt(1 / 12), abs=0.01)
    assert not torch.equal(u, _fused.uniform(key + 1, 5000))


def test_weight_mask_follows_keep_probability(mask_path):
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 0.8, 3.0]).repeat_interleave(50_000).view(4, 50_000)
    out, expected = _MaskedWeight.apply(logits, torch.full_like(logits, 2.0), 0.5, False)
    assert set(out.unique().tolist()) <= {0.0, 2.0}  # w · {0, 1}
    kept = (out / 2.0).mean(1)
    assert torch.allclose(kept, torch.sigmoid(logits[:, 0]), atol=0.006)
    assert expected.item() == pytest.approx(torch.sigmoid(logits).sum().item(), rel=1e-5)


@pytest.mark.parametrize("count_rows", [False, True])
def test_weight_mask_gradient_is_the_concrete_gradient(mask_path, count_rows):
    """Straight-through: the forward pass uses ``1[y > ½]``, backward the gradient of the
    relaxed ``y = σ((θ + log(1 − u) − log u)/τ)``; the count's gradient is exact."""
    torch.manual_seed(0)
    shape, tau = (7, 1300), 0.3  # rows longer than one kernel chunk
    logits = (2.0 * torch.randn(shape)).requires_grad_(True)
    weight = torch.randn(shape, requires_grad=True)
    coef = torch.randn(shape)
    state = torch.get_rng_state()
    out, expected = _MaskedWeight.apply(logits, weight, tau, count_rows)
    ((out * coef).sum() + 3.0 * expected).backward()

    u = _replayed_uniforms(shape, state)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_weight = weight.detach().clone().requires_grad_(True)
    soft = torch.sigmoid((ref_logits + torch.log1p(-u) - torch.log(u)) / tau)
    hard = (u < torch.sigmoid(ref_logits.detach())).float()
    straight = hard + soft - soft.detach()  # value: the hard mask; gradient: the relaxed one
    p = torch.sigmoid(ref_logits)
    ref_expected = p.sum()
    if count_rows:
        ref_expected = ref_expected + (1.0 - torch.prod(1.0 - p, dim=1)).sum()
    ((ref_weight * straight * coef).sum() + 3.0 * ref_expected).backward()

    assert torch.equal(out, weight.detach() * hard)
    assert torch.equal(hard, (soft > 0.5).float())
    assert expected.item() == pytest.approx(ref_expected.item(), rel=1e-5)
    assert torch.allclose(weight.grad, ref_weight.grad, atol=1e-6)
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-5)


def test_weight_masks_are_seeded_and_fresh_each_call(mask_path):
    logits = torch.zeros(50, 60, requires_grad=True)
    weight = torch.ones(50, 60, requires_grad=True)

    def run(seed):
        torch.manual_seed(seed)
        first, _ = _MaskedWeight.apply(logits, weight, 1.0, True)
        second, _ = _MaskedWeight.apply(logits, weight, 1.0, True)
        return first, second

    a1, a2 = run(0)
    b1, b2 = run(0)
    c1, _ = run(1)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed, same masks
    assert not torch.equal(a1, a2)  # fresh noise for every call
    assert not torch.equal(a1, c1)  # another seed, other masks


def test_kernel_results_do_not_depend_on_thread_count():
    if not _fused.native_available():
        pytest.skip("the fused mask kernel is switched off or did not build here")
    gen = torch.Generator().manual_seed(3)
    theta, w, g = (torch.randn(64, 1024, generator=gen) for _ in range(3))  # > 2**15: threaded
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, expected, rows_q = _fused._forward_native(_fused._lib, theta, w, 99, True)
            grads = _fused._backward_native(_fused._lib, theta, w, rows_q, 99, 0.4, True, g, 0.3)
            results.append((out, expected, rows_q, *grads))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_kernel_build_failure_falls_back_to_aten(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_fused, "ENABLED", True)
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_tried", False)
    with pytest.warns(RuntimeWarning, match="fused Gumbel mask kernel is unavailable"):
        assert not _fused.native_available()
    torch.manual_seed(0)
    logits = torch.zeros(3, 4, requires_grad=True)
    out, expected = _MaskedWeight.apply(logits, torch.ones(3, 4), 1.0, False)
    assert expected.item() == pytest.approx(6.0)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), ("1", True), ("0", False), ("off", False), ("False", False)],
)
def test_compile_switch_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("PRUNETUNE_COMPILE", raising=False)
    else:
        monkeypatch.setenv("PRUNETUNE_COMPILE", value)
    assert _fused._env_flag("PRUNETUNE_COMPILE") is expected


def test_expected_params_reuses_the_forward_pass(mask_path):
    torch.manual_seed(0)
    spec = mlp_spec((6,), [5, 4], 3)
    model = build_model(spec)
    method = make_method({"name": "gumbel"})
    method.attach(model, _ctx(model, (6,)))
    for g in method.gates.values():
        torch.nn.init.normal_(g.logits, std=2.0)
    eager = method.expected_params()  # no forward pass yet: computed from the logits
    model.train()
    model(torch.randn(2, 6))
    fused = method.expected_params()  # this step's value from the mask kernels
    assert fused.item() == pytest.approx(eager.item(), rel=1e-5)
    fused.backward()
    grads = [g.logits.grad.clone() for g in method.gates.values()]
    for g in method.gates.values():
        g.logits.grad = None
    method.expected_params().backward()
    for got, g in zip(grads, method.gates.values(), strict=True):
        assert torch.allclose(got, g.logits.grad, rtol=1e-4, atol=1e-7)


def test_eval_mask_is_deterministic_threshold():
    gate = GumbelGate((5,), 0.0)
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([-1.0, 2.0, -0.1, 0.3, 0.0]))
    gate.eval()
    assert gate.sample().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    weight_gate = GumbelGate((1, 5), 0.0)  # per-weight gate of a (1, 5) weight
    with torch.no_grad():
        weight_gate.logits.copy_(torch.tensor([[-1.0, 2.0, -0.1, 0.3, 0.0]]))
    weight_gate.eval()
    assert weight_gate.masked(w).tolist() == [[0.0, 2.0, 0.0, 4.0, 0.0]]


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
    ctx = _ctx(model, (6,))
    method.attach(model, ctx)
    assert set(method.gates) == {"channels"}  # one gate over the channels of every group
    groups = {g.root: g for g in ctx.topology.groups}
    assert sorted(groups) == ["0", "2"] and ctx.topology.channels == 5 + 4
    with torch.no_grad():
        logits = method.gates["channels"].logits
        g0, g1 = groups["0"], groups["2"]
        logits[g0.offset : g0.offset + g0.size] = 0.0  # q = 0.5 for each of 5 units
        logits[g1.offset : g1.offset + g1.size] = math.log(3.0)  # q = 0.75 for each of 4 units
    q0, q1 = 5 * 0.5, 4 * 0.75  # expected live units per hidden layer
    # layer 0: q0 rows of 6 weights + q0 biases; layer 2: q1 rows of q0 live inputs + q1
    # biases; layer 4 (output): 3 rows of q1 live inputs + 3 biases (always kept)
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


def test_target_ramp_is_cubic_from_one_to_the_target():
    spec = mlp_spec((2,), [1], 1)
    model = build_model(spec)
    cfg = {"name": "gumbel", "lam": 4.0, "penalty": "target", "target_density": 0.1}
    method = make_method({**cfg, "target_ramp": 0.5})
    method.attach(model, _ctx(model, (2,), epochs=4, steps=10))  # 40 steps, ramp over 20
    density = method.expected_params().item() / method.dense_count
    assert method.target_now() == pytest.approx(1.0)
    assert method.penalty().item() == pytest.approx(4.0 * abs(density - 1.0), rel=1e-5)
    method.on_step(10)  # half-way: 0.1 + 0.9 · (1 − ½)³
    assert method.target_now() == pytest.approx(0.2125)
    assert method.stats()["target"] == pytest.approx(0.2125)
    assert method.penalty().item() == pytest.approx(4.0 * abs(density - 0.2125), rel=1e-5)
    for step in (20, 39):  # the ramp's end and after
        method.on_step(step)
        assert method.target_now() == pytest.approx(0.1)
    plain, model = make_method(cfg), build_model(spec)
    plain.attach(model, _ctx(model, (2,), epochs=4, steps=10))
    assert plain.target_now() == 0.1
    assert "target" not in plain.stats()


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


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
def test_masks_freeze_at_their_threshold_after_freeze_at(granularity):
    """After ``freeze_at`` of the steps the training forward uses 1[θ > 0], exactly what
    evaluation uses; the logits stop learning and the penalty is off."""
    torch.manual_seed(0)
    model = build_model(mlp_spec((6,), [5, 4], 3))
    cfg = {"name": "gumbel", "granularity": granularity, "init_keep_prob": 0.6, "freeze_at": 0.5}
    method = make_method(cfg)
    method.attach(model, _ctx(model, (6,), epochs=2, steps=10))  # 20 steps: frozen at 10
    for g in method.gates.values():
        torch.nn.init.normal_(g.logits)
    x = torch.randn(8, 6)
    method.on_step(9)
    assert not method.frozen and method.penalty() is not None
    model.train()
    assert not torch.equal(model(x), model(x))  # two different samples of the masks
    method.on_step(10)
    assert method.frozen and method.penalty() is None
    assert all(not g.logits.requires_grad for g in method.gates.values())
    model.train()
    trained = model(x)
    model.eval()
    assert torch.equal(trained, model(x))  # the deterministic masks, in training too


def _count(method, model, masks):
    return method.ctx.topology.count(model, {k: m.weight for k, m in masks.items()})


def test_max_density_caps_the_deterministic_masks_hand_computed():
    """2 → 2 → 1 MLP, 9 parameters. θ > 0 keeps 8: three first-layer weights, both hidden
    biases, both output weights and the output bias. Keeping the largest logits under a cap
    goes by the count export keeps: dropping the output weight of hidden unit 1 (θ = 0.5)
    kills the unit, and its kept weight and bias go with it."""
    cases = [(1.0, 0.0, 8), (8 / 9, 0.0, 8), (7 / 9, 0.5, 5), (5 / 9, 0.5, 5), (4 / 9, 1.5, 1)]
    for cap, threshold, kept in cases:
        model = build_model(mlp_spec((2,), [2], 1))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)  # every weight nonzero
        method = make_method({"name": "gumbel", "max_density": cap})
        method.attach(model, _ctx(model, (2,)))
        with torch.no_grad():
            method.gates["0"].logits.copy_(torch.tensor([[4.0, 3.0], [2.0, -1.0]]))
            method.gates["2"].logits.copy_(torch.tensor([[1.5, 0.5]]))
        masks = method.masks()
        assert method.gates["0"].threshold == threshold, cap
        assert _count(method, model, masks) == kept, cap
        model.eval()
        assert torch.equal(model[0].weight, masks["0"].weight)  # evaluation uses the cap
        assert torch.equal(model[2].weight, masks["2"].weight)


def test_cap_mode_fill_spends_the_budget_on_the_largest_closed_logits_hand_computed():
    """2 → 2 → 1 MLP, 9 parameters; logits [[4, −3], [2, −1]] and [[1.5, −0.5]]. θ > 0 keeps 4:
    hidden unit 1 has no kept output weight, so its kept input weight and bias do not count.
    'fill' lowers the threshold through the closed logits while the count fits: θ > −1 adds
    the output weight −0.5 and revives unit 1 (7); θ > −3 adds −1 too (8)."""
    cases = [("open", 7 / 9, 0.0, 4), ("fill", 7 / 9, -1.0, 7), ("fill", 6 / 9, -0.5, 4)]
    cases += [("fill", 8 / 9, -3.0, 8), ("fill", 1 / 9, 1.5, 1)]  # over the cap: as "open"
    for mode, cap, threshold, kept in cases:
        model = build_model(mlp_spec((2,), [2], 1))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
        method = make_method({"name": "gumbel", "max_density": cap, "cap_mode": mode})
        method.attach(model, _ctx(model, (2,)))
        with torch.no_grad():
            method.gates["0"].logits.copy_(torch.tensor([[4.0, -3.0], [2.0, -1.0]]))
            method.gates["2"].logits.copy_(torch.tensor([[1.5, -0.5]]))
        masks = method.masks()
        assert method.gates["2"].threshold == threshold, (mode, cap)
        assert _count(method, model, masks) == kept, (mode, cap)


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
@pytest.mark.parametrize("cap", [0.3, 0.05])
def test_max_density_keeps_the_most_it_can(granularity, cap):
    """Under the cap, and one more gate (the next-largest logit) would break it."""
    torch.manual_seed(1)
    model = build_model(mlp_spec((6,), [5, 4], 3))
    method = make_method({"name": "gumbel", "granularity": granularity, "max_density": cap})
    method.attach(model, _ctx(model, (6,)))
    for g in method.gates.values():
        torch.nn.init.normal_(g.logits, std=2.0)
    limit = cap * method.dense_count
    assert method._count_above(0.0) > limit  # the cap binds
    method.apply_cap()
    t = next(iter(method.gates.values())).threshold
    assert t > 0 and all(g.threshold == t for g in method.gates.values())
    assert method._count_above(t) <= limit
    logits = torch.cat([g.logits.detach().flatten() for g in method.gates.values()])
    below = logits[(logits > 0) & (logits <= t)].max()  # the next gate the cap left out
    assert method._count_above(float(below) - 1e-6) > limit
    if granularity == "neuron":
        masks = method.masks()
        assert _count(method, model, masks) == method._count_above(t)


def test_max_density_holds_through_training_and_export():
    """Validation each epoch sees the capped masks, and the export keeps at most the cap."""
    from types import SimpleNamespace

    from prunetune.prune import Topology, TrainConfig, export_compact, train

    torch.manual_seed(0)
    x, y = torch.randn(256, 6), torch.randint(0, 3, (256,))
    data = SimpleNamespace(input_shape=(6,), x_train=x, y_train=y, x_val=x[:64], y_val=y[:64])
    model = build_model(mlp_spec((6,), [32, 16], 3))
    topo = Topology.build(model, x[:2])
    cfg = {"name": "gumbel", "lam": 0.01, "max_density": 0.2, "freeze_at": 0.5}
    method = make_method(cfg)
    result = train(model, method, data, TrainConfig(epochs=2, batch_size=32), topology=topo)
    ex = export_compact(model, result.masks, topology=topo)
    assert ex.params <= 0.2 * ex.params_dense
    assert ex.params > 0.15 * ex.params_dense  # the cap bound: the penalty alone keeps ~90%
    assert all(r["cap_threshold"] > 0 for r in result.history)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x[:64]), ex.model(x[:64]), atol=1e-5)


def _hook_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs per sample of every Conv2d and Linear, counted by forward hooks (independent of
    the topology)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out[0].numel() * k
        else:
            total += m.in_features * m.out_features

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in hs:
        h.remove()
    return total


def _small_convnet() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 3),
    )


def test_expected_macs_hand_computed():
    from prunetune.prune import Topology

    model = _small_convnet()
    topo = Topology.build(model, torch.randn(2, 1, 5, 5))
    # conv1 4·1·9 weights, conv2 2·4·9, linear 3·50, each at 25, 25 and 1 output positions
    assert topo.dense_macs == 4 * 9 * 25 + 2 * 4 * 9 * 25 + 3 * 50 == 2850
    groups = {g.root: g for g in topo.groups}
    keep = torch.empty(topo.channels)
    keep[groups["0"].offset : groups["0"].offset + 4] = 0.5  # Σ = 2 of conv1's channels
    keep[groups["2"].offset : groups["2"].offset + 2] = 0.75  # Σ = 1.5 of conv2's
    # conv1: 2 rows of 9, conv2: 1.5 rows × 2 inputs × 9, linear: 3 rows × 1.5·25 inputs
    expected = 2 * 9 * 25 + 1.5 * 2 * 9 * 25 + 3 * 1.5 * 25
    assert topo.expected_macs(keep).item() == pytest.approx(expected)


def test_expected_macs_match_the_compact_resnet():
    """On hard keeps, the topology's MACs are the exported model's, counted by hooks."""
    from prunetune.models import build_family
    from prunetune.prune import export_compact

    torch.manual_seed(0)
    model = build_family("resnet", (1, 12, 12), 10, depth=8, channels=[8])
    x = torch.randn(2, 1, 12, 12)
    method = make_method({"name": "gumbel", "granularity": "neuron"})
    ctx = _ctx(model, (1, 12, 12))
    topo = ctx.topology
    assert topo.dense_macs == _hook_macs(model, x)
    method.attach(model, ctx)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        logits = method.gates["channels"].logits
        logits.copy_(torch.randn(logits.shape, generator=g))
    keep = method.gates["channels"].hard()
    assert 0 < keep.sum() < topo.channels
    ex = export_compact(model, method.masks(), topology=topo)
    assert ex.model is not None
    assert round(topo.expected_macs(keep).item()) == _hook_macs(ex.model, x) < topo.dense_macs


def test_mac_budget_adds_a_hinge_to_the_penalty():
    cfg = {"name": "gumbel", "granularity": "neuron", "lam": 2.0, "init_keep_prob": 0.5}
    methods = {}
    for budget in (1.0, 0.1, 0.9):
        model = _small_convnet()
        methods[budget] = make_method({**cfg, "mac_density": budget})
        methods[budget].attach(model, _ctx(model, (1, 5, 5)))
    plain, capped, loose = methods[1.0], methods[0.1], methods[0.9]
    # σ(θ) = ½ everywhere: conv1 2 of 4 rows of 9, conv2 1 of 2 rows × 2 inputs × 9 (at 25
    # positions each), linear 3 rows × 1·25 inputs; of 2850 dense
    macs = (2 * 9 * 25 + 1 * 2 * 9 * 25 + 3 * 1 * 25) / 2850
    assert capped.expected_macs().item() / 2850 == pytest.approx(macs)
    base = plain.penalty().item()
    assert loose.penalty().item() == pytest.approx(base)  # under the budget: no term
    assert capped.penalty().item() == pytest.approx(base + 2.0 * (macs - 0.1), rel=1e-5)
    assert capped.stats()["expected_mac_density"] == pytest.approx(macs)
    assert "expected_mac_density" not in plain.stats()


def test_the_mac_budget_ramps_with_the_target():
    """With ``target_ramp`` the MAC budget falls on the same cubic schedule: at the start of
    the ramp the hinge is off, half-way it sits at m + (1 − m)/8, after it at ``mac_density``."""
    cfg = {
        "name": "gumbel",
        "granularity": "neuron",
        "lam": 2.0,
        "init_keep_prob": 0.5,
        "penalty": "target",
        "target_density": 0.1,
        "mac_density": 0.1,
        "target_ramp": 0.5,
    }
    model = _small_convnet()
    method = make_method(cfg)
    method.attach(model, _ctx(model, (1, 5, 5), epochs=4, steps=10))  # 40 steps, ramp over 20
    macs = (2 * 9 * 25 + 1 * 2 * 9 * 25 + 3 * 1 * 25) / 2850  # σ(θ) = ½: see above
    density = method.expected_params().item() / method.dense_count
    for step, budget in ((0, 1.0), (10, 0.1 + 0.9 / 8), (20, 0.1), (39, 0.1)):
        method.on_step(step)
        assert method.mac_budget_now() == pytest.approx(budget)
        want = 2.0 * (abs(density - method.target_now()) + max(0.0, macs - budget))
        assert method.penalty().item() == pytest.approx(want, rel=1e-5)
    assert macs > 0.1 + 0.9 / 8  # so the half-way hinge is on, and smaller than at the end


@pytest.mark.parametrize(
    "name", ["mlp", "lenet5", "resnet8", "concat", "mobilenetv2", "mobilenetv3_small"]
)
def test_expected_macs_on_hard_keeps_are_the_compact_models(name):
    """Dense and after channel removal (depthwise convs, concat, SE), the topology's MACs equal
    an independent hook count on the plain and the exported model."""
    from zoo import ZOO

    from prunetune.prune import Topology, export_compact

    model, x = ZOO[name]()
    topo = Topology.build(model, x)
    assert topo.dense_macs == _hook_macs(model, x)
    method = make_method({"name": "gumbel", "granularity": "neuron"})
    method.attach(model, _ctx(model, tuple(x.shape[1:]), epochs=1, steps=1))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        logits = method.gates["channels"].logits
        logits.copy_(torch.randn(logits.shape, generator=g) + 0.5)
    keep = method.gates["channels"].hard()
    ex = export_compact(model, method.masks(), topology=topo)
    assert round(method.ctx.topology.expected_macs(keep).item()) == _hook_macs(ex.model, x)
    assert _hook_macs(ex.model, x) < topo.dense_macs


def test_expected_macs_weight_granularity_hand_computed():
    model = _small_convnet()
    method = make_method({"name": "gumbel", "mac_density": 0.5})
    method.attach(model, _ctx(model, (1, 5, 5)))
    with torch.no_grad():
        method.gates["0"].logits.fill_(0.0)  # p = ½ of 36 weights, each at 25 positions
        method.gates["2"].logits.fill_(math.log(3.0))  # p = ¾ of 72, at 25
        method.gates["5"].logits.fill_(0.0)  # p = ½ of 150, at 1
    assert method.expected_macs().item() == pytest.approx(36 * 0.5 * 25 + 72 * 0.75 * 25 + 75)


@pytest.mark.parametrize("leak", [0.0, 0.01])
@pytest.mark.parametrize("noise", ["batch", "sample"])
def test_channel_noise_hand_computed(mask_path, noise, leak):
    """``noise: sample``: example ``b`` of the batch runs with its own channel mask
    ``1[u_bc < σ(θ_c)]`` (``batch``: one mask for all); the gate's gradient sums the examples'
    concrete gradients. With ``closed_leak`` a closed channel passes ``leak`` of its output in
    training."""
    torch.manual_seed(0)
    model = build_model(mlp_spec((3,), [4], 2))
    method = make_method(
        {
            "name": "gumbel",
            "granularity": "neuron",
            "noise": noise,
            "tau_start": 0.7,
            "closed_leak": leak,
        }
    )
    method.attach(model, _ctx(model, (3,)))
    gate = method.gates["channels"]
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([0.3, -0.2, 1.0, 0.0]))
    x = torch.randn(6, 3)
    model.train()
    state = torch.get_rng_state()
    out = model(x)
    out.sum().backward()
    u = _replayed_uniforms((6, 4) if noise == "sample" else (4,), state)
    theta = gate.logits.detach()
    masks = (u < torch.sigmoid(theta)).float().expand(6, 4)
    assert 0 < masks.sum() < masks.numel()
    assert bool((masks == masks[0]).all()) == (noise == "batch")
    lin1, lin2 = model[0], model[2]
    h = torch.relu(x @ raw_weight(lin1).T + raw_param(lin1, "bias")).detach()
    w2 = raw_weight(lin2).detach()
    leaky = masks * (1 - leak) + leak
    assert torch.allclose(out, (h * leaky) @ w2.T + lin2.bias, atol=1e-6)
    y = torch.sigmoid((theta + torch.log1p(-u) - torch.log(u)) / method.tau)
    # the gate closes the Linear's output, before the ReLU: without a leak a closed channel's
    # ReLU input is 0, where ReLU's gradient is 0, so only the examples that keep it move its
    # gate; with a leak every example does (scaled by 1 − leak)
    passes = masks if leak == 0 else torch.full_like(masks, 1 - leak)
    grad = (h * passes * w2.sum(0) * y.expand(6, 4) * (1 - y) / method.tau).sum(0)
    assert torch.allclose(gate.logits.grad, grad, rtol=1e-4, atol=1e-6)
    # evaluation and frozen masks are the deterministic ones, for every example alike
    model.eval()
    assert torch.allclose(model(x), (h * (theta > 0)) @ w2.T + lin2.bias, atol=1e-6)


def test_sample_noise_trains_fine_tunes_and_exports_a_resnet():
    """Per-example gates through BatchNorm and residual adds: training changes the masks,
    the fine-tune phase runs without the hooks, and the compact model is the masked one."""
    from types import SimpleNamespace

    from prunetune.models import build_family
    from prunetune.prune import Topology, TrainConfig, export_compact, train

    torch.manual_seed(0)
    model = build_family("resnet", (1, 12, 12), 3, depth=8, channels=[4])
    x, y = torch.randn(32, 1, 12, 12), torch.randint(0, 3, (32,))
    data = SimpleNamespace(input_shape=(1, 12, 12), x_train=x, y_train=y, x_val=x, y_val=y)
    topology = Topology.build(model, x[:2])
    method = make_method(
        {
            "name": "gumbel",
            "granularity": "neuron",
            "noise": "sample",
            "penalty": "target",
            "target_density": 0.3,
            "lam": 20.0,
            "logit_lr": 0.3,
        }
    )
    cfg = TrainConfig(epochs=3, batch_size=8, seed=0, finetune_epochs=1)
    result = train(model, method, data, cfg, topology=topology)
    assert method._hooks == ()  # detached before the fine-tune phase
    model.train()
    xs = x[:1].expand(4, -1, -1, -1)
    with torch.no_grad():
        out = model(xs)
    assert torch.equal(out, out[:1].expand_as(out))  # no per-example noise left
    masks = result.method.masks()
    ex = export_compact(model, masks, topology=topology)
    assert ex.params < ex.params_dense
    model.eval()
    assert (ex.model(x) - model(x)).abs().max().item() <= 1e-4


def test_sample_noise_rejects_an_output_with_another_batch_naming_the_layer():
    """The members of a channel share one per-example draw per forward pass: an output whose
    leading dimension is not the pass's batch (e.g. tokens folded into it) is an error."""
    torch.manual_seed(0)
    model = build_model(mlp_spec((3,), [4], 2))
    method = make_method({"name": "gumbel", "granularity": "neuron", "noise": "sample"})
    method.attach(model, _ctx(model, (3,)))
    model.train()
    hook = next(iter(model[0]._forward_hooks.values()))
    method.clock.tick += 1  # a new forward pass
    assert hook(model[0], (), torch.ones(5, 4)).shape == (5, 4)
    with pytest.raises(RuntimeError, match=r"needs 0's output .* got shape \(7, 4\)"):
        hook(model[0], (), torch.ones(7, 4))
    model.eval()  # no sampling: no hook at work
    assert hook(model[0], (), torch.ones(7, 4)) is None
