"""Training-step cost of Gumbel weight masks relative to dense training.

Same model (LeNet-300-100 on 28x28 inputs), same batch (128), same optimiser (Adam); a step is
forward + loss + sparsity penalty + backward + optimiser step + the method's step hook — exactly
what ``prunetune.prune.train`` does. Median over interleaved repeats.
Acceptance (issue 2): ratio ≤ 1.3.

    .venv/bin/python bench/mask_overhead.py
Last stdout line: {"ratio": …, "dense_ms": …, "gumbel_ms": …}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import emit

from prunetune.models import build_model, mlp_spec
from prunetune.prune import PruneContext, TrainConfig, make_method
from prunetune.prune._train import _optimizer


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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="steps per timing block")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved blocks per variant")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dense = make_step({"name": "none"}, args.batch)
    gumbel = make_step({"name": "gumbel", "granularity": "weight", "lam": 1.0}, args.batch)
    for s in (dense, gumbel):  # warm-up
        time_steps(s, 20)
    td, tg = [], []
    for _ in range(args.rounds):  # interleave so drifts in machine load hit both alike
        td += time_steps(dense, args.steps)
        tg += time_steps(gumbel, args.steps)
    md, mg = statistics.median(td), statistics.median(tg)
    print(f"dense  median step {1e3 * md:.3f} ms  ({len(td)} steps)", file=sys.stderr)
    print(f"gumbel median step {1e3 * mg:.3f} ms  ({len(tg)} steps)", file=sys.stderr)
    print(
        f"ratio {mg / md:.3f} (required ≤ 1.3); threads={torch.get_num_threads()} batch={args.batch}"
    )
    emit(
        {
            "ratio": round(mg / md, 4),
            "dense_ms": round(1e3 * md, 4),
            "gumbel_ms": round(1e3 * mg, 4),
            "threads": torch.get_num_threads(),
            "batch": args.batch,
        }
    )


if __name__ == "__main__":
    main()
