"""Fused per-weight Gumbel mask kernels: one pass over the logits forward, one backward.

A training step with per-weight masks needs, for each gated weight matrix ``w`` with logits θ
(rows = output units): a uniform ``u`` per weight, the hard mask ``1[u < σ(θ)]``, the masked
weight, and per row ``Σ σ(θ)`` and ``Π (1 − σ(θ))`` for the sparsity penalty; backward,
``∂L/∂w`` through the mask and ``∂L/∂θ`` = the straight-through concrete gradient plus the
penalty's. With ATen ops that is ~20 passes over the logits, and ``torch.rand`` alone costs a
third of LeNet-300-100's dense step on a CPU (``bench/mask_overhead.py``). Here it is one
C loop each way. Neuron gates (a vector θ, one logit per unit) use the same two calls.

**One noise definition.** Both paths below draw the same uniforms, from a counter-based
generator: ``u_i = (k + ½)·2⁻²³`` with ``k`` the top 23 bits of ``h(h(i + k₀) ⊕ k₁)`` (32-bit
words, ``i`` the element's row-major index), where ``h`` is Wellons' 32-bit integer hash
"lowbias32" (xorshift-multiply, constants 0x21f0aaad and 0xd35a2d97 — hash-prospector, 2020)
and ``(k₀, k₁)`` a fresh 64-bit key per call drawn from torch's global CPU generator
(:func:`draw_key`), whatever the device. So ``torch.manual_seed`` fixes the noise, each
step's noise is fresh, ``u`` ∈ (0, 1) and ``1 − u`` are exact float32 values, ``logit(u)``
needs no clamping, and for one key :func:`uniform` gives the same ``u`` bit for bit in C, on
CPU ATen ops and on CUDA. The hard masks of the two paths can still differ where ``u`` and
σ(θ) agree to float precision, because each path rounds σ(θ) its own way: both are within
1.5·2⁻²⁴ of the exact σ(θ) of the float32 θ (measured over 4·10⁷ θ ∈ [−20, 20]: ½ ulp of
rounding plus ~1 ulp of computation, and an ulp of a value below 1 is ≤ 2⁻²⁴), so a decision
can flip only where ``|u − σ(θ)| ≤ 1.5·2⁻²⁴``. The stated bound is **2⁻²²**: a mask bit may
differ between the paths only where ``|u − σ(θ)| ≤ 2⁻²²`` (σ exact, e.g. in float64), which
leaves a 2.7x margin for sigmoids that round worse (other vector ISAs, CUDA); elsewhere the
masks, hence the masked weights, are identical (``tests/prune/test_gumbel.py``).

The CPU kernel is C, compiled once per machine by the system compiler (~1 s) and called
through :mod:`ctypes` — no torch headers, hence no extension build; a new build is checked
against the ATen formulas before use. Built libraries are cached in ``<cache root>/kernels``
(``prunetune._cache.cache_root``: ``$PRUNETUNE_CACHE`` or ``~/.cache/prunetune``), a folder
that must belong to this user with mode 0700 (a wider mode is narrowed; a folder that is not
ours or cannot be narrowed is refused with a warning, and a private temporary folder used
instead): a library there is code this process will run. Each library has a JSON sidecar
recording the SHA-256 of what it was built from (the C source, compiler, flag sets, CPU and
platform) and of the library's own bytes; a cached library is loaded only when both match,
otherwise it is rebuilt.

Everything else (CUDA, float64, no compiler, a failed build or check,
``PRUNETUNE_COMPILE=0``, ``ENABLED = False``) takes the ATen path: the same formulas and the
same uniforms from :func:`uniform` in int32 ATen ops (1–2x the time of ``torch.rand`` on a
CPU; ``u`` is kept for backward rather than regenerated). Rows are processed in parallel
on ``torch.get_num_threads()`` OpenMP threads, each row by one thread, so results do not
depend on the thread count.

``torch.compile`` was tried first and measured on this model: its CPU (C++/OpenMP) kernels
for this computation ran ~3x slower than this C, each compiled call added ~0.1 ms of guard and
wrapper overhead (6 calls a step), and compiling took 5 s per graph (50 s cold) per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from prunetune._cache import cache_root, write_atomic

__all__ = [
    "ENABLED",
    "UNIFORM_MASK_BOUND",
    "draw_key",
    "mask_backward",
    "mask_forward",
    "native_available",
    "uniform",
]

_M32 = 0xFFFFFFFF
_HASH_MUL = (0x21F0AAAD, 0xD35A2D97)

#: Where the two paths' hard masks may differ: only elements with ``|u − σ(θ)|`` at most this
#: (σ exact). Each path's σ(θ) is within 1.5·2⁻²⁴ of the exact value; see the module docstring.
UNIFORM_MASK_BOUND = 2.0**-22


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


def _private_dir(path: Path) -> str | None:
    """Make ``path`` a folder only this user can use (0700); ``None`` if done, else why not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"it cannot be created ({exc.strerror or exc})"
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory (a link or a file)"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            return f"its mode {mode:#o} cannot be set to 0o700 ({exc.strerror or exc})"
    return None


def _cache_dir() -> Path:
    """A private folder for built kernels: ``<cache root>/kernels``, else a per-user one in the
    temporary folder (read-only home), else a fresh temporary one (only this process reuses it).
    """
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates = (cache_root() / "kernels", Path(tempfile.gettempdir()) / f"prunetune-{uid}")
    for path in candidates:
        why = _private_dir(path)
        if why is None:
            return path
        if path.exists() or path.is_symlink():  # a folder we may not trust: say so
            warnings.warn(
                f"prunetune: not caching the compiled mask kernel in {path}: {why}; "
                f"the kernel cache must be a directory of this user with mode 0o700.",
                RuntimeWarning,
                stacklevel=4,
            )
    return Path(tempfile.mkdtemp(prefix="prunetune-kernels-"))  # 0700 by construction


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


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(lib_path: Path, sidecar: Path, source_sha256: str) -> bool:
    """Whether ``lib_path`` was built from this source: its sidecar records ``source_sha256``
    and the library's own digest, and the library's bytes still have that digest."""
    try:
        record = json.loads(sidecar.read_text())
        return (
            isinstance(record, dict)
            and record.get("source_sha256") == source_sha256
            and record.get("library_sha256") == _sha256_file(lib_path)
        )
    except (OSError, ValueError):
        return False


def _compile(cc: str, sets: list[list[str]], out_dir: Path, lib_path: Path) -> list[str]:
    """Build ``lib_path`` with the first flag set that compiles; returns those flags."""
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
                return flags
            errors.append(f"{cc} {' '.join(flags)}: {proc.stderr.strip()[-300:]}")
    raise RuntimeError("compiling the mask kernel failed:\n" + "\n".join(errors))


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    sets = _flag_sets()
    key = "\0".join([_SOURCE, cc, repr(sets), _cpu_fingerprint(), sys.platform])
    source_sha256 = hashlib.sha256(key.encode()).hexdigest()
    out_dir = _cache_dir()
    lib_path = out_dir / f"gumbel_mask_{source_sha256[:16]}.so"
    sidecar = lib_path.with_suffix(".json")
    if not _cached(lib_path, sidecar, source_sha256):
        flags = _compile(cc, sets, out_dir, lib_path)
        record = {
            "source_sha256": source_sha256,  # of the C source, compiler, flag sets, CPU, OS
            "library_sha256": _sha256_file(lib_path),
            "compiler": cc,
            "flags": flags,
        }
        write_atomic(sidecar, json.dumps(record, indent=1) + "\n")
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


def _s32(c: int) -> int:
    """The int32 value whose two's-complement bits are the 32-bit word ``c``."""
    return c - (1 << 32) if c >= 1 << 31 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int32 words (torch's ``>>`` on int32 is arithmetic)."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int32 words, in place; the products wrap modulo 2³² as the C ones do."""
    x.bitwise_xor_(_shr(x, 16)).mul_(_s32(_HASH_MUL[0]))
    x.bitwise_xor_(_shr(x, 15)).mul_(_s32(_HASH_MUL[1]))
    return x.bitwise_xor_(_shr(x, 15))


def uniform(key: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The uniforms ``u_0 … u_{n−1}`` for noise ``key`` (float32 in (0, 1)), on ``device``.

    Bit for bit those of the C kernel (the module docstring defines them), in ~15 int32 ATen
    passes: 1–2x the time of ``torch.rand``. Both mask paths draw their noise here.
    """
    k0, k1 = key & _M32, (key >> 32) & _M32
    if n < 1 << 31:
        x = torch.arange(n, dtype=torch.int32, device=device).add_(_s32(k0))
    else:  # indices past int32: wrap them to 32-bit words first, as the kernel's uint32 does
        x = torch.arange(n, dtype=torch.int64, device=device).add_(k0).bitwise_and_(_M32)
        x = torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)
    x = _mix32_(_mix32_(x).bitwise_xor_(_s32(k1)))
    return _shr(x, 9).to(torch.float32).add_(0.5).mul_(2.0**-23)


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

    One key is drawn per call (:func:`draw_key`) on either path, and both paths mask with the
    uniforms :func:`uniform` gives for it, so one seed gives the same masks with and without
    the compiled kernel (up to :data:`UNIFORM_MASK_BOUND`).

    Returns:
        ``(w · 1[u < σ(θ)], expected, rows_q, noise)``: the masked weight; the expected number
        of kept weights ``Σ σ(θ)``, plus — with ``count_rows`` — the expected number of rows
        keeping at least one weight, ``Σ_rows (1 − Π_row (1 − σ(θ)))``; ``rows_q = Π_row
        (1 − σ(θ))``; and the noise for :func:`mask_backward` (the key on the kernel, which
        regenerates ``u``; ``u`` itself on the ATen path).
    """
    if theta.shape != w.shape or theta.dim() == 0:
        raise ValueError(
            f"logits and weight must have one shape with dim >= 1, but got "
            f"{tuple(theta.shape)} and {tuple(w.shape)}."
        )
    key = draw_key()
    lib = _native() if _usable(theta, w) and theta.numel() < 1 << 32 else None
    if lib is not None:
        return (*_forward_native(lib, theta, w, key, count_rows), key)
    u = uniform(key, theta.numel(), theta.device).view_as(theta)
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
    out = w * (u < p).to(w.dtype)  # float32 u against float64 p compares exactly
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
    u = u.to(torch.promote_types(u.dtype, theta.dtype))  # float64 logits: logit(u) in float64
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
