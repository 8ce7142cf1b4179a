"""KFAC neuron pruning: factors, saliency against an explicit Kronecker product, spectral radius."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from prunetune.models import build_model, cnn_spec, mlp_spec
from prunetune.prune import PruneContext, make_method
from prunetune.prune.kfac import (
    factors,
    layer_inputs,
    neuron_saliency,
    outgoing_saliency,
    top_eig,
)


def _setup(cfg=None, batch=None):
    torch.manual_seed(0)
    model = build_model(mlp_spec((3,), [4], 2))
    x, y = batch if batch is not None else (torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]))
    ctx = PruneContext.for_model(
        model,
        (3,),
        epochs=1,
        steps_per_epoch=100,
        sample_batch=lambda k: (x, y),
    )
    method = make_method({"name": "kfac", "prune_start": 0.5, **(cfg or {})})
    method.attach(model, ctx)
    return model, method, x, y


def test_factors_equal_explicit_per_sample_expectations():
    model, method, x, y = _setup()
    method._estimate()  # one forward/backward on sample_batch through the hooks
    w1, b1 = model[0].parametrizations.weight.original.detach(), model[0].bias.detach()
    w2, b2 = model[2].weight.detach(), model[2].bias.detach()

    def sample_loss(s, yi):  # loss of one sample as a function of its pre-activations s
        return torch.nn.functional.cross_entropy((torch.relu(s) @ w2.T + b2)[None], yi[None])

    s = x @ w1.T + b1
    g = vmap(grad(sample_loss))(s, y)  # (5, 4): per-sample gradients
    a = torch.cat([x, torch.ones(5, 1)], 1)
    assert torch.allclose(method.A["0"], a.T @ a / 5, atol=1e-6)
    assert torch.allclose(method.G["0"], g.T @ g / 5, atol=1e-7)
    assert method.A["0"].shape == (4, 4) and method.G["0"].shape == (4, 4)


def test_saliency_equals_half_quadratic_form_of_the_kronecker_product():
    torch.manual_seed(3)
    w, b = torch.randn(4, 3), torch.randn(4)
    ra, rg = torch.randn(4, 6), torch.randn(4, 6)
    a_f, g_f = ra @ ra.T / 6, rg @ rg.T / 6  # PSD factors, A over inputs + bias
    got = neuron_saliency(w, b, a_f, g_f)
    wt = torch.cat([w, b[:, None]], 1)  # (4, 4): incoming weights and bias per unit
    h = torch.kron(g_f, a_f)  # Hessian of vec(W̃) (row-major) ≈ G ⊗ A
    for j in range(4):
        dw = torch.zeros_like(wt)
        dw[j] = wt[j]  # removing unit j zeroes its row
        v = dw.flatten()
        assert torch.allclose(got[j], 0.5 * v @ h @ v, rtol=1e-5)


@pytest.mark.parametrize("per", [1, 2])  # columns per unit: 1 (linear), H·W after a flatten
def test_outgoing_saliency_equals_the_kronecker_form_of_the_next_layer(per):
    torch.manual_seed(5)
    units, out = 3, 4
    w_next = torch.randn(out, units * per)
    ra, rg = torch.randn(units * per + 1, 9), torch.randn(out, 9)
    a_f, g_f = ra @ ra.T / 9, rg @ rg.T / 9  # A over the next layer's inputs + bias
    got = outgoing_saliency(w_next, a_f, g_f, units, bias=True)
    h = torch.kron(g_f, a_f)
    for j in range(units):
        dw = torch.zeros(out, units * per + 1)
        dw[:, j * per : (j + 1) * per] = w_next[:, j * per : (j + 1) * per]
        v = dw.flatten()
        assert torch.allclose(got[j], 0.5 * v @ h @ v, rtol=1e-5)


def test_power_iteration_and_spectral_radius_of_the_kronecker_block():
    torch.manual_seed(4)
    ra, rg = torch.randn(5, 8), torch.randn(3, 8)
    a_f, g_f = ra @ ra.T, rg @ rg.T
    la, _ = top_eig(a_f, torch.ones(5), 200)
    lg, _ = top_eig(g_f, torch.ones(3), 200)
    assert la == pytest.approx(float(torch.linalg.eigvalsh(a_f).max()), rel=1e-5)
    rho = float(torch.linalg.eigvalsh(torch.kron(g_f, a_f)).max())
    assert la * lg == pytest.approx(rho, rel=1e-5)


def test_running_factors_average_with_decay_and_refresh_on_schedule():
    model, method, x, y = _setup({"decay": 0.5, "stat_every": 3, "flat": 0.0})
    x2 = torch.randn(5, 3)
    seen = []
    for step, xb in enumerate([x, x2, x2, x2], start=1):
        loss = torch.nn.functional.cross_entropy(model(xb), y)
        loss.backward()
        seen.append(method._collect)
        method.on_step(step)
    assert seen == [True, False, False, True]  # steps 1 and 4 (every 3rd after step 1)
    a1 = torch.cat([x, torch.ones(5, 1)], 1)
    a2 = torch.cat([x2, torch.ones(5, 1)], 1)
    assert torch.allclose(method.A["0"], 0.5 * a1.T @ a1 / 5 + 0.5 * a2.T @ a2 / 5, atol=1e-6)


def test_pruning_removes_lowest_saliency_units_first():
    cfg = {"neurons": 0.5, "prune_events": 1, "prune_start": 0.0, "prune_end": 0.0}
    model, method, *_ = _setup({**cfg, "allocation": "layerwise"})  # pruned at attach
    p = model[0].parametrizations
    s = neuron_saliency(
        p.weight.original.detach(), p.bias.original.detach(), method.A["0"], method.G["0"]
    )
    (group,) = method.ctx.topology.groups  # the hidden layer's 4 units: flat channels 0..3
    assert group.root == "0" and (group.offset, group.size) == (0, 4)
    assert method.alive.tolist() == (s >= s.sort().values[2]).tolist()  # the top two
    assert int(method.alive.sum()) == 2
    assert method.targets(1) == [2]  # round(0.5 · 4) units of the one group after the event
    dead = ~method.alive  # removed units are closed: rows and biases masked, output 0
    assert model[0].weight[dead].eq(0).all() and model[0].bias[dead].eq(0).all()
    assert model[0].weight[~dead].ne(0).all() and model[0].bias[~dead].ne(0).all()


def test_flatness_penalty_is_differentiable_and_reported():
    torch.manual_seed(0)
    model = build_model(mlp_spec((3,), [6, 5], 2))
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    ctx = PruneContext.for_model(
        model,
        (3,),
        epochs=1,
        steps_per_epoch=100,
        sample_batch=lambda k: (x, y),
    )
    method = make_method({"name": "kfac", "flat": 0.1, "prune_start": 0.9, "prune_end": 0.9})
    method.attach(model, ctx)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    method.on_step(1)  # first refresh
    model.zero_grad()
    model(x)
    pen = method.penalty()
    assert pen is not None and float(pen.detach()) > 0
    pen.backward()
    w0 = model[0].parametrizations.weight.original
    assert w0.grad is not None and float(w0.grad.abs().sum()) > 0
    rho = method.stats()["spectral_radius"]
    expected = max(
        float(torch.linalg.eigvalsh(method.A[n]).max() * torch.linalg.eigvalsh(method.G[n]).max())
        for n in method.A
    )
    assert rho == pytest.approx(expected, rel=0.02)  # 50 cold-start power iterations


def test_conv_factors_use_unfolded_patches():
    torch.manual_seed(0)
    model = build_model(cnn_spec((1, 6, 6), [2], [4], 3))
    conv = model[0]
    x = torch.randn(2, 1, 6, 6)
    rows = layer_inputs(conv, x)
    assert rows.shape == (2 * 36, 9 + 1)  # 3x3 'same' patches, plus the bias column
    out = conv(x)
    g = torch.randn_like(out)
    a_f, g_f = factors(conv, x, g)
    assert a_f.shape == (10, 10) and g_f.shape == (2, 2)
    # A's bias-bias entry is 1; G sums positions within a sample, averages over samples
    assert float(a_f[-1, -1]) == pytest.approx(1.0)
    gs = (g * 2).flatten(2)  # (b, C, L)
    assert torch.allclose(g_f, torch.einsum("bcl,bdl->cd", gs, gs) / 2, rtol=1e-5)


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """(b·H·W, C·k·k) stride-1 patches of an already padded (b, C, H+k−1, W+k−1) map, built
    with plain slicing (no unfold): the rows a conv's input factor is made of."""
    b, c, hp, wp = x.shape
    h, w = hp - k + 1, wp - k + 1
    cols = [x[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)]  # (b, C, H, W)
    return torch.stack(cols, 2).reshape(b, c * k * k, h * w).transpose(1, 2).reshape(-1, c * k * k)


@pytest.mark.parametrize(
    ("padding", "mode"), [("same", "zeros"), (1, "reflect"), ("same", "circular"), (1, "zeros")]
)
def test_conv_input_rows_are_padded_as_the_conv_pads(padding, mode):
    """``padding='same'`` (a string unfold cannot take) and non-zero padding modes: the rows
    are the patches the conv really multiplies, so ``rows @ W.T`` is its output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=padding, padding_mode=mode, bias=False)
    x = torch.randn(2, 2, 5, 5)
    rows = layer_inputs(conv, x)
    torch_mode = "constant" if mode == "zeros" else mode
    want = _patches(torch.nn.functional.pad(x, (1, 1, 1, 1), mode=torch_mode), 3)
    torch.testing.assert_close(rows, want)
    out = conv(x).flatten(2).transpose(1, 2).reshape(-1, 3)
    torch.testing.assert_close(rows @ conv.weight.flatten(1).T, out, rtol=1e-5, atol=1e-5)


def test_conv1d_factors_are_a_1xk_conv2ds():
    torch.manual_seed(0)
    c1 = torch.nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=1)
    c2 = torch.nn.Conv2d(3, 4, (1, 5), stride=(1, 2), padding=(0, 2))
    with torch.no_grad():
        c2.weight.copy_(c1.weight[:, :, None, :])
        c2.bias.copy_(c1.bias)
    x = torch.randn(2, 3, 11)
    g = torch.randn(2, 4, 6)
    a1, g1 = factors(c1, x, g)
    a2, g2 = factors(c2, x[:, :, None, :], g[:, :, None, :])
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(g1, g2)
    rows = layer_inputs(c1, x)[:, :-1]
    torch.testing.assert_close(
        rows @ c1.weight.flatten(1).T + c1.bias,
        c1(x).transpose(1, 2).reshape(-1, 4),
        rtol=1e-5,
        atol=1e-5,
    )
