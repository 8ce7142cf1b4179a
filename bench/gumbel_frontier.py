"""Gumbel pruning frontier on Fashion-MNIST LeNet-300-100: test accuracy against kept params.

Fixed seeds, a sweep of the sparsity penalty λ, the same epoch budget for every point.
Acceptance (issue 2): ≥ 86% test accuracy at ≤ 1% params and ≥ 82% at ≤ 0.2% params.

    .venv/bin/python bench/gumbel_frontier.py            # the full sweep (~10 min on 2 quiet cores)
    .venv/bin/python bench/gumbel_frontier.py --lams 3 --epochs 2   # a quick look

Last stdout line: {"points": [{"lam", "params", "params_pct", "test_accuracy"}, ...], ...}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, print_table, write_csv

from prunetune.search.trial import run_trial

# Settings found by a small manual sweep (see README "Benchmarks"); the bench fixes them.
BASE = {
    "dataset": "fashion-mnist",
    "model": {"family": "mlp", "widths": [300, 100]},
    "train": {"epochs": 15, "batch_size": 128, "lr": 2e-3, "optimizer": "adam", "seed": 0},
    "device": "auto",
}
GUMBEL = {
    "name": "gumbel",
    "granularity": "weight",
    "schedule": "exponential",
    "tau_start": 1.0,
    "tau_end": 0.1,
    "penalty": "density",
    "logit_lr": 0.05,
    "init_keep_prob": 0.9,
}
LAMS = (10.0, 12.0, 20.0, 40.0, 80.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lams", type=float, nargs="+", default=list(LAMS))
    ap.add_argument("--epochs", type=int, default=BASE["train"]["epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="method overrides KEY=VALUE")
    args = ap.parse_args()
    import yaml

    method = dict(GUMBEL)
    for kv in args.set:
        k, v = kv.split("=", 1)
        method[k] = yaml.safe_load(v)
    points = []
    for lam in args.lams:
        cfg = {
            **BASE,
            "method": {**method, "lam": lam},
            "train": {**BASE["train"], "epochs": args.epochs, "seed": args.seed},
        }
        out = run_trial(
            cfg,
            lambda row, lam=lam: print(
                f"  lam={lam:g} epoch {row['epoch']:.0f}: val={row['val_accuracy']:.4f} density={row['density']:.4%}",
                file=sys.stderr,
                flush=True,
            ),
        )
        m = out.metrics
        points.append(
            {
                "lam": lam,
                "params": int(m["params"]),
                "params_pct": 100.0 * m["params"] / m["params_dense"],
                "test_accuracy": m["test_accuracy"],
                "val_accuracy": m["val_accuracy"],
                "live_neurons": int(m["live_neurons"]),
                "seconds": m["seconds"],
            }
        )
    print_table(
        points,
        ["lam", "params", "params_pct", "test_accuracy", "val_accuracy", "live_neurons", "seconds"],
        "Gumbel frontier — Fashion-MNIST, LeNet-300-100",
    )
    write_csv("gumbel_frontier.csv", points)

    def best(limit: float) -> float | None:
        ok = [p["test_accuracy"] for p in points if p["params_pct"] <= limit]
        return max(ok) if ok else None

    at1, at02 = best(1.0), best(0.2)
    emit(
        {
            "points": [
                {k: p[k] for k in ("lam", "params", "params_pct", "test_accuracy")} for p in points
            ],
            "best_test_accuracy_at_1pct": at1,
            "best_test_accuracy_at_0.2pct": at02,
            "pass": bool(at1 is not None and at1 >= 0.86 and at02 is not None and at02 >= 0.82),
        }
    )


if __name__ == "__main__":
    main()
