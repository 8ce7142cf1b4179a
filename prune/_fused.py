"""Fused per-weight Gumbel mask kernels: one pass over the logits forward, one backward.

A training step with per-weight masks needs, for each gated weight matrix ``w`` with logits θ
(rows = output units): a uniform ``u`` per weight, the hard mask ``1[u < σ(θ)]``, the masked
weight, and per row ``Σ σ(θ)`` and ``Π (1 − σ(θ))`` for the sparsity penalty; backward,
``∂L/∂w`` through the mask and ``∂L/∂θ`` = the straight-through concrete gradient plus the
penalty's. With ATen ops that is ~20 passes over the logits, and ``torch.rand`` alone costs a
third of LeNet-300-100's dense step on a CPU (``bench/mask_overhead.py``). Here it is one
C loop each way.

Uniforms come from a counter-based generator, so backward regenerates them instead of storing
them: ``u_i = (k + ½)·2⁻²³`` with ``k`` the top 23 bits of ``h(h(i + k₀) ⊕ k₁)``, where ``h`` is
Wellons' 32-bit integer hash "lowbias32" (xorshift-multiply, constants 0x21f0aaad and
0xd35a2d97 — hash-prospector, 2020) and ``(k₀, k₁)`` a fresh 64-bit key per call drawn from
torch's global CPU generator. So ``torch.manual_seed`` fixes the noise, each step's noise is
fresh, ``u`` ∈ (0, 1) and ``1 − u`` are exact floats and ``logit(u)`` needs no clamping.

The CPU kernel is C, compiled once per machine by the system compiler (~1 s; cached under
``kernels/`` in prunetune's cache, ``$PRUNETUNE_CACHE`` or ``~/.cache/prunetune``) and
called through :mod:`ctypes` — no torch headers, hence no extension build; a new build is
checked against the ATen formulas before use. Everything else (CUDA, float64, no compiler, a
failed build or check, ``PRUNETUNE_COMPILE=0``, ``ENABLED = False``) takes the ATen path
here: the same formulas with ``u`` from ``torch.rand`` (one more pass, and ``u`` is kept for
backward). Both paths are seeded by ``torch.manual_seed``; their masks differ, their law does
not. Rows are processed in parallel on ``torch.get_num_threads()`` OpenMP threads, each row by
one thread, so results do not depend on the thread count.

``torch.compile`` was tried first and measured on this model: its CPU (C++/OpenMP) kernels
for this computation ran ~3x slower than this C, each compiled call added ~0.1 ms of guard and
wrapper overhead (6 calls a step), and compiling took 5 s per graph (50 s cold) per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from prunetune.datasets import default_cache_dir

__all__ = ["ENABLED", "draw_key", "mask_backward", "mask_forward", "native_available", "uniform"]

_M32 = 0xFFFFFFFF
_HASH_MUL = (0x21F0AAAD, 0xD35A2D97)


def _env_flag(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


#: Use the compiled CPU kernel when it builds; ``PRUNETUNE_COMPILE=0`` turns it off by default.
ENABLED: bool = _env_flag("PRUNETUNE_COMPILE")

# Elements per call below which the kernel stays on one thread (a fork/join costs ~10 µs).
_PARALLEL_MIN = 1 << 15

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#define SIMD _Pragma("omp simd")
#define SIMD_REDUCE _Pragma("omp simd reduction(+:sp) reduction(*:sq)")
#else
#define SIMD
#define SIMD_REDUCE
#endif
#define CHUNK 512 /* per-row scratch (2 KiB) that stays in L1 between the two loops */

static inline float as_float(uint32_t i) { float f; memcpy(&f, &i, 4); return f; }
static inline uint32_t as_uint(float f) { uint32_t i; memcpy(&i, &f, 4); return i; }

/* exp(x) for x <= 0 (Cephes expf, ~1 ulp); below -87 it returns exp(-87) ~ 1.6e-38. */
static inline float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f); /* round(x / ln 2) */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * as_float((uint32_t)((int32_t)n + 127) << 23);
}

/* log(x) for normal x > 0 (Cephes logf, ~1 ulp). */
static inline float log_pos(float x) {
    uint32_t ix = as_uint(x);
    float e = (float)((int32_t)(ix >> 23) - 127);
    float m = as_float((ix & 0x007FFFFFu) | 0x3F800000u); /* [1, 2) */
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1.0f : e;
    float f = m - 1.0f, z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z - 2.12194440e-4f * e - 0.5f * z;
    return f + y + 0.693359375f * e;
}

/* lowbias32 (C. Wellons, hash-prospector): a bijection of 32-bit words with low bias. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21F0AAADu;
    x ^= x >> 15;
    x *= 0xD35A2D97u;
    x ^= x >> 15;
    return x;
}

/* u_i in (0, 1): the top 23 bits of the keyed hash, plus 1/2, times 2^-23. */
static inline float uniform(uint32_t k0, uint32_t k1, uint32_t i) {
    uint32_t x = mix32(mix32(i + k0) ^ k1);
    return ((float)(int32_t)(x >> 9) + 0.5f) * 1.1920928955078125e-7f;
}

/* p = sigmoid(x) and q = 1 - p, both to full relative precision. */
static inline void sigmoid_pq(float x, float *p, float *q) {
    float e = exp_nonpos(x < 0.0f ? x : -x);
    float inv = 1.0f / (1.0f + e);
    *p = x >= 0.0f ? inv : e * inv;
    *q = x >= 0.0f ? e * inv : inv;
}

/* theta, w: (rows, cols) row-major; out = w 1[u < p] with p = sigmoid(theta).
   rows_p[r] = sum_j p_rj; rows_q[r] = prod_j (1 - p_rj) (underflows to 0 for surely live
   rows); expected[0] = sum_r rows_p[r] + count_rows * sum_r (1 - rows_q[r]). */
void gumbel_mask_forward(const float *theta, const float *w, float *out, float *rows_p,
                         float *rows_q, float *expected, int64_t rows, int64_t cols,
                         uint64_t key, int count_rows, int threads) {
    const uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int64_t r = 0; r < rows; ++r) {
        float ub[CHUNK];
        float sp = 0.0f, sq = 1.0f;
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            const int64_t off = r * cols + c0;
            const float *t = theta + off, *wr = w + off;
            float *o = out + off;
            SIMD
            for (int64_t j = 0; j < len; ++j) ub[j] = uniform(k0, k1, (uint32_t)(off + j));
            SIMD_REDUCE
            for (int64_t j = 0; j < len; ++j) {
                float p, q;
                sigmoid_pq(t[j], &p, &q);
                sp += p;
                sq *= q;
                o[j] = wr[j] * (ub[j] < p ? 1.0f : 0.0f);
            }
        }
        rows_p[r] = sp;
        rows_q[r] = sq;
    }
    double total = 0.0;
    for (int64_t r = 0; r < rows; ++r)
        total += (double)rows_p[r] + (count_rows ? 1.0 - (double)rows_q[r] : 0.0);
    expected[0] = (float)total;
}

/* g = dL/d(out), c = dL/d(expected). grad_w = g 1[u < p];
   grad_theta = g w y (1 - y) / tau + c p (1 - p) + c count_rows rows_q[r] p, with the relaxed
   sample y = sigmoid((theta - logit(u)) / tau), y (1 - y) = s / (1 + s)^2, s = exp(-|.|). */
void gumbel_mask_backward(const float *theta, const float *w, const float *g,
                          const float *rows_q, float *grad_w, float *grad_theta, int64_t rows,
                          int64_t cols, uint64_t key, float tau, float c, int count_rows,
                          int threads) {
    const uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    const float inv_tau = 1.0f / tau;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (int64_t r = 0; r < rows; ++r) {
        float ub[CHUNK], lb[CHUNK];
        const float cq = count_rows ? c * rows_q[r] : 0.0f;
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t len = cols - c0 < CHUNK ? cols - c0 : CHUNK;
            const int64_t off = r * cols + c0;
            const float *t = theta + off, *wr = w + off, *gr = g + off;
            float *gw = grad_w + off, *gt = grad_theta + off;
            SIMD
            for (int64_t j = 0; j < len; ++j) {
                float u = uniform(k0, k1, (uint32_t)(off + j));
                ub[j] = u;
                lb[j] = log_pos(u / (1.0f - u));
            }
            SIMD
            for (int64_t j = 0; j < len; ++j) {
                float p, q;
                sigmoid_pq(t[j], &p, &q);
                float a = (t[j] - lb[j]) * inv_tau;
                float s = exp_nonpos(a < 0.0f ? a : -a);
                float is = 1.0f / (1.0f + s);
                gw[j] = gr[j] * (ub[j] < p ? 1.0f : 0.0f);
                gt[j] = gr[j] * wr[j] * (s * is * is) * inv_tau + (c * q + cq) * p;
            }
        }
    }
}
"""

_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()


def _cache_dir() -> Path:
    return default_cache_dir() / "kernels"  # the one cache root for all of prunetune


def _cpu_fingerprint() -> str:
    """The build uses ``-march=native``: a cached library must not move to another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _flag_sets() -> list[list[str]]:
    # -fno-trapping-math lets GCC if-convert, hence vectorize, the loops (no -ffast-math).
    base = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
    # OpenMP's runtime is libgomp.so.1, the one torch has already loaded; serial if it fails.
    sets = [[*base, "-fopenmp"], base]
    if platform.machine().lower() in ("x86_64", "amd64"):
        # 512-bit vectors: ~1.5x faster here on AVX-512 CPUs; ignored elsewhere.
        sets.insert(0, [*base, "-fopenmp", "-mprefer-vector-width=512"])
    return sets


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    sets = _flag_sets()
    key = "\0".join([_SOURCE, cc, repr(sets), _cpu_fingerprint(), sys.platform])
    name = f"gumbel_mask_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    out_dir = _cache_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: build per machine boot instead
        out_dir = Path(tempfile.gettempdir()) / "prunetune-cache"
        out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / name
    if not lib_path.exists():
        errors = []
        for flags in sets:
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                src, tmp_lib = Path(tmp) / "gumbel_mask.c", Path(tmp) / "gumbel_mask.so"
                src.write_text(_SOURCE)
                proc = subprocess.run(
                    [cc, *flags, str(src), "-o", str(tmp_lib)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if proc.returncode == 0:
                    os.replace(tmp_lib, lib_path)  # atomic: concurrent builders race harmlessly
                    break
                errors.append(f"{cc} {' '.join(flags)}: {proc.stderr.strip()[-300:]}")
        else:
            raise RuntimeError("compiling the mask kernel failed:\n" + "\n".join(errors))
    lib = ctypes.CDLL(str(lib_path))
    ptr, i64, u64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int
    f32 = ctypes.c_float
    lib.gumbel_mask_forward.argtypes = [ptr] * 6 + [i64, i64, u64, c_int, c_int]
    lib.gumbel_mask_forward.restype = None
    lib.gumbel_mask_backward.argtypes = [ptr] * 6 + [i64, i64, u64, f32, f32, c_int, c_int]
    lib.gumbel_mask_backward.restype = None
    return lib


def _native() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; ``None`` (after one warning) if that fails."""
    global _lib, _tried
    if not ENABLED:
        return None
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    lib = _build()
                    _self_check(lib)
                    _lib = lib
                except Exception as exc:  # any toolchain problem: the ATen path is correct too
                    warnings.warn(
                        f"prunetune: the fused Gumbel mask kernel is unavailable, using ATen "
                        f"ops (slower): {exc}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                _tried = True
    return _lib


def native_available() -> bool:
    """Whether CPU float32 masks run on the compiled kernel (builds it if needed)."""
    return _native() is not None


def draw_key() -> int:
    """A fresh 64-bit noise key from torch's global CPU generator (``torch.manual_seed``)."""
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,))) & ((1 << 64) - 1)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x · c mod 2³²`` for int64 ``x`` < 2³², in halves so that no product overflows."""
    lo = x * (c & 0xFFFF)
    hi = (x * (c >> 16)) & 0xFFFF
    return (lo + (hi << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _HASH_MUL[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _HASH_MUL[1])
    return x ^ (x >> 15)


def uniform(key: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The kernel's uniforms ``u_0 … u_{n−1}`` for noise ``key`` (float32 in (0, 1)).

    A reference in ATen ops (~25 passes over int64: slow, for checks, not training).
    """
    k0, k1 = key & _M32, (key >> 32) & _M32
    x = (torch.arange(n, dtype=torch.int64, device=device) + k0) & _M32
    x = _mix32(_mix32(x) ^ k1)
    return ((x >> 9).to(torch.float32) + 0.5) * 2.0**-23


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _threads(n: int) -> int:
    return torch.get_num_threads() if n >= _PARALLEL_MIN else 1


def _usable(*tensors: torch.Tensor) -> bool:
    return all(t.is_cpu and t.dtype == torch.float32 for t in tensors)


Noise = int | torch.Tensor  # the kernel's key, or the uniforms themselves on the ATen path


def mask_forward(
    theta: torch.Tensor, w: torch.Tensor, count_rows: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Noise]:
    """Sample the hard mask and apply it; ``θ`` and ``w`` have one shape, rows along dim 0.

    Returns:
        ``(w · 1[u < σ(θ)], expected, rows_q, noise)``: the masked weight; the expected number
        of kept weights ``Σ σ(θ)``, plus — with ``count_rows`` — the expected number of rows
        keeping at least one weight, ``Σ_rows (1 − Π_row (1 − σ(θ)))``; ``rows_q = Π_row
        (1 − σ(θ))``; and the noise for :func:`mask_backward` (the kernel's key, or ``u`` on
        the ATen path, where it comes from ``torch.rand``).
    """
    if theta.shape != w.shape or theta.dim() == 0:
        raise ValueError(
            f"logits and weight must have one shape with dim >= 1, but got "
            f"{tuple(theta.shape)} and {tuple(w.shape)}."
        )
    lib = _native() if _usable(theta, w) and theta.numel() < 1 << 32 else None
    if lib is not None:
        key = draw_key()
        return (*_forward_native(lib, theta, w, key, count_rows), key)
    # torch.rand's [0, 1) moved into (0, 1), so that logit(u) is finite
    u = torch.rand_like(theta).clamp_(2.0**-24, 1.0 - 2.0**-24)
    return (*_forward_aten(theta, w, u, count_rows), u)


def mask_backward(
    theta: torch.Tensor,
    w: torch.Tensor,
    rows_q: torch.Tensor,
    noise: Noise,
    tau: float,
    count_rows: bool,
    g: torch.Tensor,
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂L/∂w, ∂L/∂θ)`` for :func:`mask_forward`'s outputs.

    ``g = ∂L/∂out`` and ``c = ∂L/∂expected``. ``∂L/∂θ = g·w·y(1 − y)/τ + c·∂expected/∂θ``
    with the relaxed sample ``y = σ((θ − logit u)/τ)`` — the straight-through estimator, as
    the forward pass's ``1[u < σ(θ)]`` equals ``1[y > ½]``.
    """
    if isinstance(noise, int):
        lib = _native() if _usable(theta, w, g) else None
        if lib is not None:
            return _backward_native(lib, theta, w, rows_q, noise, tau, count_rows, g, float(c))
        noise = uniform(noise, theta.numel(), theta.device).view_as(theta)
    return _backward_aten(theta, w, rows_q, noise, tau, count_rows, g, c)


def _forward_aten(
    theta: torch.Tensor, w: torch.Tensor, u: torch.Tensor, count_rows: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = torch.sigmoid(theta)
    out = w * (u < p).to(w.dtype)
    rows_q = _rows(torch.sigmoid(-theta)).prod(1)
    expected = p.sum()
    if count_rows:
        expected = expected + (rows_q.numel() - rows_q.sum())
    return out, expected, rows_q


def _backward_aten(
    theta: torch.Tensor,
    w: torch.Tensor,
    rows_q: torch.Tensor,
    u: torch.Tensor,
    tau: float,
    count_rows: bool,
    g: torch.Tensor,
    c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    p, q = torch.sigmoid(theta), torch.sigmoid(-theta)
    y = torch.sigmoid((theta - torch.log(u / (1.0 - u))) / tau)
    grad_w = g * (u < p).to(g.dtype)
    d_expected = q
    if count_rows:
        d_expected = q + rows_q.view((-1,) + (1,) * (theta.dim() - 1))
    grad_theta = g * w * y * (1.0 - y) / tau + c * d_expected * p
    return grad_w, grad_theta


def _forward_native(
    lib: ctypes.CDLL, theta: torch.Tensor, w: torch.Tensor, key: int, count_rows: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    theta, w = theta.contiguous(), w.contiguous()
    rows, n = theta.shape[0], theta.numel()
    out = torch.empty_like(w)
    stats = theta.new_empty(2 * rows + 1)  # rows_p | rows_q | expected
    lib.gumbel_mask_forward(
        theta.data_ptr(),
        w.data_ptr(),
        out.data_ptr(),
        stats.data_ptr(),
        stats.data_ptr() + 4 * rows,
        stats.data_ptr() + 8 * rows,
        rows,
        n // rows if rows else 0,
        key,
        count_rows,
        _threads(n),
    )
    return out, stats[-1], stats[rows:-1]


def _backward_native(
    lib: ctypes.CDLL,
    theta: torch.Tensor,
    w: torch.Tensor,
    rows_q: torch.Tensor,
    key: int,
    tau: float,
    count_rows: bool,
    g: torch.Tensor,
    c: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    theta, w, g, rows_q = theta.contiguous(), w.contiguous(), g.contiguous(), rows_q.contiguous()
    rows, n = theta.shape[0], theta.numel()
    grad_w, grad_theta = torch.empty_like(w), torch.empty_like(theta)
    lib.gumbel_mask_backward(
        theta.data_ptr(),
        w.data_ptr(),
        g.data_ptr(),
        rows_q.data_ptr(),
        grad_w.data_ptr(),
        grad_theta.data_ptr(),
        rows,
        n // rows if rows else 0,
        key,
        float(tau),
        c,
        count_rows,
        _threads(n),
    )
    return grad_w, grad_theta


def _self_check(lib: ctypes.CDLL) -> None:
    """Compare a fresh build with the ATen formulas on a fixed case; raise if they disagree."""
    gen = torch.Generator().manual_seed(1234)
    theta = torch.randn(7, 1100, generator=gen) * 3.0  # rows longer than one C chunk
    w, g = torch.randn(7, 1100, generator=gen), torch.randn(7, 1100, generator=gen)
    key, tau, c = 0x0123_4567_89AB_CDEF, 0.3, torch.tensor(0.7)
    u = uniform(key, theta.numel()).view_as(theta)
    for count_rows in (False, True):
        got = _forward_native(lib, theta, w, key, count_rows)
        ref = _forward_aten(theta, w, u, count_rows)
        got += _backward_native(lib, theta, w, got[2], key, tau, count_rows, g, float(c))
        ref += _backward_aten(theta, w, ref[2], u, tau, count_rows, g, c)
        names = ("masked weight", "expected count", "row products", "grad w", "grad logits")
        for name, a, b in zip(names, got, ref, strict=True):
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
                raise RuntimeError(
                    f"self-check failed: {name} differs by {(a - b).abs().max():.3g}"
                )
