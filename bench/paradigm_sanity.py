"""Published-behaviour sanity checks of the seed paradigms on Fashion-MNIST LeNet-300-100.

Issue 5's acceptance: SNIP, GraSP, SynFlow and magnitude pruning at 10% parameter density each
within 2 points of the dense model's test accuracy; random pruning at 1% clearly below SNIP and
SynFlow at 1% — "clearly" meaning at least CLEAR_MARGIN (2 points) below the lower of the two.
Same training settings as bench/method_comparison.py (epoch budget, lr, seed), one run each.

    .venv/bin/python bench/paradigm_sanity.py              # 8 runs
    .venv/bin/python bench/paradigm_sanity.py --epochs 2   # a quick look

Last stdout line: {"rows": [{"method", "density_pct", "params_pct", "test_accuracy"}, ...],
"dense_test_accuracy": ..., "within_2pt": {...}, "random_gap": {...}, "pass": ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, print_table, write_csv
from method_comparison import BASE, Runner

AT_10 = ("snip", "grasp", "synflow", "magnitude")
AT_1 = ("random", "snip", "synflow")
WITHIN = 0.02
CLEAR_MARGIN = 0.02


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=BASE["train"]["epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = Runner(args.epochs, args.seed, args.threads)
    dense = run({"name": "none"})
    rows = [{"method": "none", "density_pct": 100.0, **dense}]
    for density, names in ((0.10, AT_10), (0.01, AT_1)):
        for name in names:
            res = run({"name": name, "density": density})
            rows.append({"method": name, "density_pct": 100 * density, **res})

    acc = {(r["method"], r["density_pct"]): r["test_accuracy"] for r in rows}
    d = dense["test_accuracy"]
    within = {
        name: {
            "test_accuracy": acc[(name, 10.0)],
            "gap_pt": round(100 * (d - acc[(name, 10.0)]), 2),
            "ok": bool(acc[(name, 10.0)] >= d - WITHIN),
        }
        for name in AT_10
    }
    floor = min(acc[("snip", 1.0)], acc[("synflow", 1.0)])
    random_gap = {
        "random": acc[("random", 1.0)],
        "snip": acc[("snip", 1.0)],
        "synflow": acc[("synflow", 1.0)],
        "gap_pt": round(100 * (floor - acc[("random", 1.0)]), 2),
        "ok": bool(acc[("random", 1.0)] <= floor - CLEAR_MARGIN),
    }
    cols = ["method", "density_pct", "params_pct", "test_accuracy", "val_accuracy", "seconds"]
    print_table(rows, cols, f"Paradigm sanity — Fashion-MNIST LeNet-300-100, {args.epochs} epochs")
    write_csv("paradigm_sanity.csv", [{c: r[c] for c in cols} for r in rows])
    emit(
        {
            "rows": [
                {k: r[k] for k in ("method", "density_pct", "params_pct", "test_accuracy")}
                for r in rows
            ],
            "dense_test_accuracy": d,
            "within_2pt": within,
            "random_gap": random_gap,
            "pass": all(w["ok"] for w in within.values()) and random_gap["ok"],
            "epochs": args.epochs,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )


if __name__ == "__main__":
    main()
