"""Training-step cost of Gumbel weight masks relative to dense training.

Same model (LeNet-300-100 on 28x28 inputs), same batch (128), same optimiser (Adam); a step is
forward + loss + sparsity penalty + backward + optimiser step + the method's step hook — exactly
what ``prunetune.prune.train`` does. Median over interleaved repeats.
Acceptance (issue 2): ratio ≤ 1.3 (the headline, at --batch).

Context, to tell what the ratio is made of (both are printed, neither changes the headline):
* ``floor_ratio`` — the same Gumbel step with its two mask kernels replaced by no-ops (the
  masked weight is the weight, the logits' gradient is zeros): what the rest of the method
  costs (the optimiser on the logits, the extra autograd node, the penalty) even if the mask
  kernels were free.
* ``by_batch`` — the ratio at other batch sizes (--sweep): the mask work is per weight, the
  dense work per sample, so the ratio falls as the batch grows.

    .venv/bin/python bench/mask_overhead.py
Last stdout line: {"ratio": …, "dense_ms": …, "gumbel_ms": …, "floor_ratio": …, "by_batch": …}
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import emit, print_table

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, TrainConfig, _fused, make_method
from prunetune.prune._train import _optimizer

DENSE = {"name": "none"}
GUMBEL = {"name": "gumbel", "granularity": "weight", "lam": 1.0}


def make_step(method_cfg: dict, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    spec = mlp_spec((1, 28, 28), [300, 100], 10)
    model = build_model(spec)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    method = make_method(method_cfg)
    ctx = PruneContext.for_model(
        model,
        spec["input_shape"],
        epochs=10,
        steps_per_epoch=430,
        sample_batch=lambda k: (x[:k], y[:k]),
    )
    method.attach(model, ctx)
    opt = _optimizer(model, method, TrainConfig())
    model.train()
    state = {"step": 0}

    def step() -> None:
        out = model(x)  # (b, 10)
        loss = torch.nn.functional.cross_entropy(out, y)
        pen = method.penalty()
        total = loss + pen if pen is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        state["step"] += 1
        method.on_step(state["step"])

    return step


def time_steps(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


@contextlib.contextmanager
def free_mask_kernels() -> Iterator[None]:
    """Swap the fused mask kernels for no-ops of the same interface (for ``floor_ratio``)."""
    saved = _fused.mask_forward, _fused.mask_backward

    def forward(theta, w, count_rows):
        return w.view_as(w), theta.new_zeros(()), theta.new_zeros(theta.shape[0]), 0

    def backward(theta, w, rows_q, noise, tau, count_rows, g, c):
        return g, torch.zeros_like(theta)

    _fused.mask_forward, _fused.mask_backward = forward, backward
    try:
        yield
    finally:
        _fused.mask_forward, _fused.mask_backward = saved


def median_ratio(steps: dict[str, Callable[[], None]], n: int, rounds: int) -> dict[str, float]:
    """Median step time (s) per variant; variants interleave so that drifts in the machine's
    speed hit them alike."""
    for s in steps.values():  # warm-up
        time_steps(s, 20)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            times[k] += time_steps(s, n)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="steps per timing block")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved blocks per variant")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--sweep",
        default="512,2048",
        help="other batch sizes to report the ratio at (comma-separated; '' for none)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dense, gumbel = make_step(DENSE, args.batch), make_step(GUMBEL, args.batch)
    with free_mask_kernels():
        free = make_step(GUMBEL, args.batch)  # its own model: the real gumbel's stays intact

    def free_step() -> None:
        with free_mask_kernels():
            free()

    m = median_ratio({"dense": dense, "gumbel": gumbel, "free": free_step}, args.steps, args.rounds)
    md, mg, mf = m["dense"], m["gumbel"], m["free"]
    print(f"dense  median step {1e3 * md:.3f} ms", file=sys.stderr)
    print(f"gumbel median step {1e3 * mg:.3f} ms", file=sys.stderr)
    print(f"gumbel with no-op mask kernels {1e3 * mf:.3f} ms", file=sys.stderr)

    def row(batch: int, m: dict[str, float]) -> dict[str, float]:
        return {
            "batch": batch,
            "dense_ms": 1e3 * m["dense"],
            "gumbel_ms": 1e3 * m["gumbel"],
            "ratio": m["gumbel"] / m["dense"],
        }

    rows = [row(args.batch, m)]
    for b in [int(x) for x in args.sweep.split(",") if x.strip()]:
        mb = median_ratio(
            {"dense": make_step(DENSE, b), "gumbel": make_step(GUMBEL, b)},
            max(5, args.steps * args.batch // (4 * b)),
            args.rounds // 2 or 1,
        )
        rows.append(row(b, mb))
    print_table(
        rows,
        ["batch", "dense_ms", "gumbel_ms", "ratio"],
        f"Gumbel weight masks / dense, LeNet-300-100, {torch.get_num_threads()} threads",
    )
    print(
        f"ratio {mg / md:.3f} at batch {args.batch} (required ≤ 1.3); with no-op mask kernels "
        f"{mf / md:.3f}; threads={torch.get_num_threads()}"
    )
    emit(
        {
            "ratio": round(mg / md, 4),
            "dense_ms": round(1e3 * md, 4),
            "gumbel_ms": round(1e3 * mg, 4),
            "floor_ratio": round(mf / md, 4),
            "by_batch": {str(r["batch"]): round(r["ratio"], 4) for r in rows},
            "threads": torch.get_num_threads(),
            "batch": args.batch,
        }
    )


if __name__ == "__main__":
    main()
