"""The mask kernels' two paths draw one noise; the compiled kernel's cache is private and checked.

The bound: both paths mask with the same float32 uniforms ``u`` (bit for bit, from one key)
and differ only in how they round σ(θ). Each path's float32 σ(θ) is within 1.5·2⁻²⁴ of the
exact σ(θ) (½ ulp of rounding plus ~1 ulp of computation; an ulp below 1 is ≤ 2⁻²⁴), so a
mask bit can differ only where ``u`` lies between the two roundings, i.e. where
``|u − σ(θ)| ≤ 1.5·2⁻²⁴``. The tests allow differences where ``|u − σ(θ)| ≤ 2⁻²²``
(``_fused.UNIFORM_MASK_BOUND``, σ computed in float64) and nowhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from prunetune.prune import _fused
from prunetune.prune.gumbel import _HardConcrete, _MaskedWeight

BOUND = _fused.UNIFORM_MASK_BOUND


@pytest.fixture
def native():
    if not _fused.native_available():
        pytest.skip("no compiled mask kernel here (no C compiler, or PRUNETUNE_COMPILE=0)")


def _draw(monkeypatch, compiled: bool, seed: int, theta, w, count_rows: bool, tau: float = 0.4):
    """One draw (forward and backward) of a per-weight mask, with or without the kernel."""
    monkeypatch.setattr(_fused, "ENABLED", compiled)
    theta = theta.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out, expected = _MaskedWeight.apply(theta, w, tau, count_rows)
    coef = torch.linspace(-1.0, 1.0, w.numel()).view_as(w)
    ((out * coef).sum() + 0.7 * expected).backward()
    return out.detach(), expected.detach(), w.grad, theta.grad


def _near(seed: int, theta: torch.Tensor) -> torch.Tensor:
    """Elements whose ``u`` is within the bound of the exact σ(θ)."""
    torch.manual_seed(seed)
    u = _fused.uniform(_fused.draw_key(), theta.numel()).view_as(theta)
    return (u.double() - torch.sigmoid(theta.double())).abs() <= BOUND


def _logits(shape: tuple[int, ...], seed: int, on_boundary: bool) -> torch.Tensor:
    """Logits ~ 3·N(0, 1); with ``on_boundary``, every 7th is set to logit(u) of its own draw,
    so that σ(θ) rounds onto or next to ``u`` there and the two paths may disagree."""
    gen = torch.Generator().manual_seed(1000 + seed)
    theta = 3.0 * torch.randn(shape, generator=gen)
    if on_boundary:
        torch.manual_seed(seed)
        u = _fused.uniform(_fused.draw_key(), theta.numel()).view_as(theta)
        flat, uf = theta.view(-1), u.view(-1)
        flat[::7] = torch.logit(uf[::7].double()).float()
    return theta


@pytest.mark.parametrize("on_boundary", [False, True])
@pytest.mark.parametrize(
    ("shape", "seed"),
    [((1,), 0), ((5, 3), 1), ((7, 1300), 2), ((64, 1024), 3), ((16, 3, 5, 5), 4), ((300, 784), 5)],
)
def test_one_draw_gives_the_same_masks_with_and_without_the_kernel(
    native, monkeypatch, shape, seed, on_boundary
):
    """Acceptance (issue 12, item 6): the hard masks agree except where ``|u − σ(θ)| ≤ 2⁻²²``
    (none when no element is that close), and so do the values and gradients."""
    theta = _logits(shape, seed, on_boundary)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    w[w == 0] = 1.0  # a zero weight would hide its mask bit in ``out``
    for count_rows in (False, True):
        c_out, c_exp, c_gw, c_gt = _draw(monkeypatch, True, seed, theta, w, count_rows)
        a_out, a_exp, a_gw, a_gt = _draw(monkeypatch, False, seed, theta, w, count_rows)
        near = _near(seed, theta)
        differ = (c_out != 0) != (a_out != 0)
        assert not (differ & ~near).any(), "masks differ farther than the bound from σ(θ)"
        if not near.any():
            assert not differ.any()
        if on_boundary:
            assert near.any()  # the boundary case is exercised
        same = ~differ
        assert torch.equal(c_out[same], a_out[same])  # w or 0: exactly equal where masks agree
        assert torch.equal(c_gw[same], a_gw[same])
        assert c_exp.item() == pytest.approx(a_exp.item(), rel=1e-5)
        assert torch.allclose(c_gt, a_gt, rtol=1e-4, atol=1e-5)  # no mask in ∂L/∂θ


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neuron_gates_draw_the_same_masks_with_and_without_the_kernel(native, monkeypatch, seed):
    theta = _logits((500,), seed, on_boundary=False)
    hard = {}
    for compiled in (True, False):
        monkeypatch.setattr(_fused, "ENABLED", compiled)
        torch.manual_seed(seed)
        hard[compiled], _ = _HardConcrete.apply(theta, 0.5)
    differ = hard[True] != hard[False]
    assert not (differ & ~_near(seed, theta)).any()
    assert bool(((hard[True] == 0) | (hard[True] == 1)).all())


def test_the_aten_path_on_float64_draws_the_same_uniforms(monkeypatch):
    """float64 logits (always ATen ops) use the float32 ``u`` of the same key."""
    monkeypatch.setattr(_fused, "ENABLED", False)
    theta = _logits((40, 50), 7, on_boundary=False)
    w = torch.ones(40, 50)
    torch.manual_seed(7)
    single, *_ = _fused.mask_forward(theta, w, False)
    torch.manual_seed(7)
    double, *_ = _fused.mask_forward(theta.double(), w.double(), False)
    assert double.dtype == torch.float64
    differ = single.double() != double
    assert not (differ & ~_near(7, theta)).any()


def test_uniforms_match_the_generator_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    key = 0x0123_4567_89AB_CDEF
    assert torch.equal(_fused.uniform(key, 100_003, "cuda").cpu(), _fused.uniform(key, 100_003))


# -- the kernel cache ------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    if (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")) is None:
        pytest.skip("no C compiler")
    root = tmp_path / "cache"
    monkeypatch.setenv("PRUNETUNE_CACHE", str(root))
    compiles = []
    real = _fused._compile

    def counting(*args):
        compiles.append(args)
        return real(*args)

    monkeypatch.setattr(_fused, "_compile", counting)
    return root / "kernels", compiles


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_folder_is_private_and_a_valid_library_is_reused(fresh_cache):
    kernels, compiles = fresh_cache
    _fused._build()
    assert _mode(kernels) == 0o700
    (lib,) = kernels.glob("gumbel_mask_*.so")
    record = json.loads(lib.with_suffix(".json").read_text())
    assert record["library_sha256"] == _fused._sha256_file(lib)
    assert len(record["source_sha256"]) == 64
    assert len(compiles) == 1
    _fused._build()
    assert len(compiles) == 1  # recorded hashes match: loaded, not rebuilt


def test_a_wider_cache_folder_is_narrowed_to_0700(fresh_cache):
    kernels, _ = fresh_cache
    kernels.mkdir(parents=True, mode=0o755)
    os.chmod(kernels, 0o777)
    assert _fused._cache_dir() == kernels
    assert _mode(kernels) == 0o700


def test_a_linked_cache_folder_is_refused(fresh_cache, tmp_path):
    kernels, _ = fresh_cache
    kernels.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir(mode=0o777)
    kernels.symlink_to(tmp_path / "elsewhere")
    with pytest.warns(RuntimeWarning, match="not caching the compiled mask kernel"):
        got = _fused._cache_dir()
    assert got != kernels and _mode(got) == 0o700


@pytest.mark.parametrize("tamper", ["source hash", "library bytes", "no sidecar", "bad json"])
def test_a_mismatched_record_causes_a_rebuild(fresh_cache, tamper):
    kernels, compiles = fresh_cache
    _fused._build()
    (lib,) = kernels.glob("gumbel_mask_*.so")
    sidecar = lib.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    if tamper == "source hash":
        sidecar.write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    elif tamper == "library bytes":  # a new file: the loaded one is mapped, never edit it
        (kernels / "swap").write_bytes(lib.read_bytes() + b"\0")
        os.replace(kernels / "swap", lib)
    elif tamper == "no sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")
    _fused._build()
    assert len(compiles) == 2
    assert json.loads(sidecar.read_text()) == record | {"library_sha256": _fused._sha256_file(lib)}
