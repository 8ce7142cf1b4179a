"""Channel pruning of a ResNet-20 on Fashion-MNIST: Gumbel channel gates vs magnitude_neuron.

Issue 12's acceptance: the resnet family (ResNet-20 layout, one input channel) on Fashion-MNIST,
the same epochs for every run on a fixed training subset; Gumbel ``neuron`` gates (one gate per
channel group, closing the channel after its BatchNorm) against ``magnitude_neuron`` at about
50% and 25% of the dense parameters. Prints test accuracy (full test set, compact model),
kept parameters, MACs per sample and the compact model's CPU latency at batch 256 relative to
the dense model. Bars: Gumbel ≥ magnitude_neuron at both budgets; compact latency at ≈ 25%
params ≤ 0.6× dense.

Training: Adam at 2e-3 with a cosine learning-rate decay, batch 128, for both methods. With a
constant rate the validation accuracy of the last epochs swings by ±3 points from one epoch to
the next (measured: 84.95% → 82.10% and 84.50% → 87.10% between epochs 7 and 8 of the two
methods), so a single run measures that noise rather than the methods; ``--lr-schedule
constant`` reproduces the earlier runs.

Budgets: Gumbel uses the ``target`` penalty ``λ·|E[density] − target|`` and holds the budget
with ``max_density`` (its deterministic masks keep the largest logits up to the budget), with a
compute budget ``mac_density`` of 1.4× the parameter budget; magnitude_neuron keeps
``sqrt(target)`` of every group's channels (conv parameters scale with in × out channels, so it
keeps about the same share of the MACs).

    .venv/bin/python bench/channel_pruning.py                         # ~14 min on 2 quiet cores
    .venv/bin/python bench/channel_pruning.py --train-size 2000 --epochs 1   # a quick look
    .venv/bin/python bench/channel_pruning.py --budgets 0.25 --seed 0 1 2 3  # means, ~27 min

Last stdout line: {"rows": [{"method", "params_pct", "test_accuracy", "macs",
"latency_ratio"}, ...]} (with several seeds, each row is a method's mean at a budget, and the
verdict lines above it give Gumbel's paired difference by seed with its standard error)
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import emit, print_table, write_csv
from torch import nn

from prunetune.datasets import batches, load_dataset
from prunetune.models import build_family
from prunetune.prune import Topology, TrainConfig, evaluate, export_compact, make_method, train

BUDGETS = (0.5, 0.25)
BATCH = 128
# Found by single runs at 25% (docs/methods.md, "Benchmarks"): gates start nearly open (little
# drop noise while the weights learn), λ ramps up over the first epoch, the gates move fast and
# freeze at 40% of the steps, held to the budget (max_density), so the weights train the last
# 60% on the structure evaluation and export use (magnitude_neuron prunes from 10% to 50%).
GUMBEL = {
    "name": "gumbel",
    "granularity": "neuron",
    # one mask per example (channel dropout at the learned rates), and a closed channel leaks
    # 1% of its output in training so that its gate sees the gradient of reopening it through
    # the ReLU after it (docs/methods.md): +0.3-0.8 points at 25% over one mask per batch
    "noise": "sample",
    "closed_leak": 0.01,
    "penalty": "target",
    "lam": 10.0,
    "schedule": "exponential",
    "tau_start": 1.0,
    "tau_end": 0.1,
    "logit_lr": 0.2,
    "init_keep_prob": 0.99,
    "warmup_epochs": 1.0,
    "freeze_at": 0.4,
}


# Gumbel's compute budget, relative to its parameter budget (uniform channel pruning keeps equal
# shares of both): a parameter budget alone spends itself on the early, high-resolution
# channels, which cost few parameters and the most MACs. ``--set mac_density=1`` turns it off.
MAC_RATIO = 1.4


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one sample through every prunable layer (the topology's count,
    which Gumbel's ``mac_density`` budgets)."""
    return Topology.build(model, x[:2]).dense_macs


def latency(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward pass at the batch of ``x`` (after two warm-up passes)."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(reps + 2):
            t0 = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=12_000, help="fixed training subset")
    ap.add_argument("--val-size", type=int, default=2_000, help="validation subset (per epoch)")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="cosine",
        help="the weights' learning rate, both methods (constant: the last epoch's validation "
        "accuracy swings by ±3 points, more than the methods differ)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="one or more seeds; with several, the printed verdict and the last line's rows are "
        "per-method means over the seeds (one run of this bench cannot separate the methods: "
        "docs/methods.md)",
    )
    ap.add_argument("--reps", type=int, default=10, help="latency repetitions")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", nargs="*", default=[], help="Gumbel overrides KEY=VALUE")
    ap.add_argument("--methods", nargs="+", default=["gumbel", "magnitude_neuron"])
    args = ap.parse_args()
    gumbel = dict(GUMBEL)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k in GUMBEL:
            gumbel[k] = type(GUMBEL[k])(v)
        else:  # a number, or a choice's name
            try:
                gumbel[k] = float(v)
            except ValueError:
                gumbel[k] = v

    data = load_dataset("fashion-mnist", data_dir=args.data_dir)
    g = torch.Generator().manual_seed(1234)
    idx = torch.randperm(len(data.x_train), generator=g)[: args.train_size]
    vdx = torch.randperm(len(data.x_val), generator=g)[: args.val_size]
    sub = SimpleNamespace(
        input_shape=data.input_shape,
        x_train=data.x_train[idx],
        y_train=data.y_train[idx],
        x_val=data.x_val[vdx],
        y_val=data.y_val[vdx],
    )

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_family(
            "resnet", data.input_shape, data.num_outputs, depth=args.depth, channels=[args.width]
        )

    dense = build(args.seed[0])
    x256 = data.x_test[:256]
    dense_latency = latency(dense, x256, args.reps)
    dense_macs = macs(dense, x256)
    dense_params = sum(p.numel() for p in dense.parameters())
    print(
        f"ResNet-{args.depth} width {args.width}: {dense_params:,} parameters, "
        f"{dense_macs:,} MACs, {dense_latency * 1e3:.0f} ms at batch 256",
        flush=True,
    )

    rows = []
    for seed, budget, name in itertools.product(args.seed, args.budgets, args.methods):
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=BATCH,
            lr=args.lr,
            seed=seed,
            lr_schedule=args.lr_schedule,
        )
        if name == "gumbel":
            method_cfg = {
                "target_density": budget,
                "max_density": budget,
                "mac_density": min(1.0, MAC_RATIO * budget),
                **gumbel,
            }
        else:
            method_cfg = {"name": name, "neurons": math.sqrt(budget)}
        model = build(seed)
        topology = Topology.build(model, sub.x_train[:2])
        method = make_method(method_cfg)
        t0 = time.perf_counter()
        result = train(
            model,
            method,
            sub,
            cfg,
            batches=lambda gen: batches(sub.x_train, sub.y_train, BATCH, generator=gen),
            topology=topology,
            report=lambda r, n=name, b=budget: print(f"  {n} @{b:.0%} {r}", flush=True),
        )
        ex = export_compact(model, method.masks(), topology=topology)
        acc = evaluate(ex.model, data.x_test, data.y_test)
        row = {
            "method": name,
            "seed": seed,
            "budget": budget,
            "params": ex.params,
            "params_pct": 100 * ex.params / ex.params_dense,
            "test_accuracy": acc,
            "val_accuracy": result.history[-1]["val_accuracy"],
            "macs": macs(ex.model, x256),
            # dense and compact timed back to back, so a change of load shifts both
            "latency_ratio": latency(ex.model, x256, args.reps) / latency(dense, x256, args.reps),
            "train_s": time.perf_counter() - t0,
        }
        rows.append(row)
        print(row, flush=True)

    cols = ["method", "budget", "params", "params_pct", "test_accuracy", "macs", "latency_ratio"]
    print_table(
        rows, ["seed", *cols, "train_s"], title="Channel pruning, ResNet-20 on Fashion-MNIST"
    )
    write_csv("channel_pruning.csv", rows)
    if len(args.seed) > 1:  # per method and budget, the means over the seeds
        runs, rows = rows, []
        for budget, name in itertools.product(args.budgets, args.methods):
            group = [r for r in runs if r["method"] == name and r["budget"] == budget]
            row = {k: statistics.fmean(r[k] for r in group) for k in cols[2:]}
            row["test_accuracy_sd"] = statistics.stdev(r["test_accuracy"] for r in group)
            rows.append({"method": name, "budget": budget, **row})
        print_table(rows, [*cols, "test_accuracy_sd"], title=f"Means over seeds {args.seed}")
        for budget in args.budgets if set(args.methods) == {"gumbel", "magnitude_neuron"} else ():
            # paired by seed (same initialisation and batches): the runs' shared noise cancels
            acc = {
                (r["method"], r["seed"]): r["test_accuracy"] for r in runs if r["budget"] == budget
            }
            d = [100 * (acc["gumbel", s] - acc["magnitude_neuron", s]) for s in args.seed]
            se = statistics.stdev(d) / math.sqrt(len(d))
            print(
                f"{budget:.0%}: gumbel − magnitude_neuron {statistics.fmean(d):+.2f} ± {se:.2f} "
                f"points (paired mean ± its standard error over {len(d)} seeds); gumbel ahead "
                f"or level in {sum(x >= 0 for x in d)} of {len(d)}"
            )
    for budget in args.budgets if len(args.methods) == 2 else ():
        gb = next(r for r in rows if r["method"] == "gumbel" and r["budget"] == budget)
        mb = next(r for r in rows if r["method"] == "magnitude_neuron" and r["budget"] == budget)
        verdict = "≥" if gb["test_accuracy"] >= mb["test_accuracy"] else "<"
        print(
            f"{budget:.0%}: gumbel {gb['test_accuracy']:.4f} @ {gb['params_pct']:.1f}% "
            f"{verdict} magnitude_neuron {mb['test_accuracy']:.4f} @ {mb['params_pct']:.1f}%"
        )
    emit(
        {
            "rows": [
                {
                    k: r[k]
                    for k in ("method", "params_pct", "test_accuracy", "macs", "latency_ratio")
                }
                for r in rows
            ]
        }
    )


if __name__ == "__main__":
    main()
