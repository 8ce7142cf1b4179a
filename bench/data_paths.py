"""Data paths: a factory's in-memory tensors against a factory's ``torch.utils.data.Dataset``s.

Fashion-MNIST, LeNet-300-100 (``mlp`` [300, 100]), Gumbel with its defaults, 2 epochs, batch
128, lr 1e-3, seed 0 — the same split, the same seed and the same trial for every arm; only the
data path differs:

* ``tensors`` — ``data_paths:tensor_factory`` returns the six tensors (the in-memory ``Splits``
  fast path; ``train.num_workers`` 0);
* ``dataset`` — ``data_paths:dataset_factory`` returns three map-style Datasets over the same
  tensors, written as a user writes one for data on disk: ``__getitem__(i)`` returns one
  ``(x, y)`` sample; read through a ``DataLoader`` with ``--workers`` worker processes;
* ``dataset+getitems`` — the same Datasets with ``__getitems__(indices)`` as well, which torch's
  ``DataLoader`` calls with a whole batch of indices (one gather instead of 128 calls).

Issue acceptance: test accuracy of ``dataset`` within 1 point (0.01) of ``tensors``; its
training throughput ≥ 0.5× theirs. Throughput is training samples × epochs over the trial's
``seconds`` (the training loop, including its per-epoch validation pass); wall time is the whole
``run_trial`` (workers' start, export, test evaluation), the data already read from disk.
Timings mean something on a quiet machine only: ``other_cpu_s`` is the CPU every other process
used meanwhile (Linux), ≈ 0 when nothing else ran.

This file is also the module the trials import their factories from (``data_paths:…``): its
folder is put on ``sys.path``, so ``run_trial`` imports it a second time as ``data_paths``.

    .venv/bin/python bench/data_paths.py                 # ~25 s on 2 quiet cores
    .venv/bin/python bench/data_paths.py --repeats 3     # median throughput of 3 runs per arm

Last stdout line: {"acc_diff": …, "throughput_ratio": …, …} — ``acc_diff`` is the absolute test
accuracy difference as a fraction (0.01 = 1 point), ``throughput_ratio`` dataset / tensors.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import emit, print_table, write_csv
from torch.utils.data import Dataset

from prunetune.datasets import Splits, load_dataset
from prunetune.search.trial import run_trial

LENET_300_100 = {"family": "mlp", "widths": [300, 100]}
TRAIN = {"epochs": 2, "batch_size": 128, "lr": 1e-3, "seed": 0}
# arm -> (factory, its params, whether the DataLoader reads it)
ARMS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "tensors": ("tensor_factory", {}, False),
    "dataset": ("dataset_factory", {"batched": False}, True),
    "dataset+getitems": ("dataset_factory", {"batched": True}, True),
}
ACC_BAR = 0.01  # 1 point of accuracy, as a fraction
THROUGHPUT_BAR = 0.5


# -- the factories -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def fashion_mnist(data_dir: str | None = None) -> Splits:
    """Fashion-MNIST's standardised splits, read once per process (both factories share them)."""
    return load_dataset("fashion-mnist", data_dir=data_dir)


def tensor_factory(data_dir: str | None = None) -> dict[str, Any]:
    """The in-memory path: the six tensors, their classes and standardisation."""
    s = fashion_mnist(data_dir)
    return {
        "x_train": s.x_train,
        "y_train": s.y_train,
        "x_val": s.x_val,
        "y_val": s.y_val,
        "x_test": s.x_test,
        "y_test": s.y_test,
        "classes": s.classes,
        "mean": s.mean,
        "std": s.std,
    }


class SampleDataset(Dataset):
    """One split as a user's map-style Dataset: index → one ``(x, y)`` sample, ``x`` a
    ``(1, 28, 28)`` float tensor, ``y`` an int (torchvision's convention, ``classes`` too)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...]) -> None:
        self.x, self.y = x, y
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class BatchedDataset(SampleDataset):
    """:class:`SampleDataset` that also fetches a whole batch at once: the ``DataLoader``'s
    fetcher calls ``__getitems__`` with the batch's indices and collates the samples it returns."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices)
        return list(zip(self.x[idx].unbind(0), self.y[idx].tolist(), strict=True))


def dataset_factory(
    data_dir: str | None = None, batched: bool = False
) -> tuple[Dataset, Dataset, Dataset]:
    """The DataLoader path: train, validation and test Datasets over the same tensors."""
    s = fashion_mnist(data_dir)
    cls = BatchedDataset if batched else SampleDataset
    return tuple(  # type: ignore[return-value]
        cls(getattr(s, f"x_{k}"), getattr(s, f"y_{k}"), s.classes) for k in ("train", "val", "test")
    )


# -- the bench -----------------------------------------------------------------------------------


def trial_config(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    factory, params, loader = ARMS[arm]
    if args.data_dir is not None:
        params = {**params, "data_dir": args.data_dir}
    return {
        "dataset": {
            "factory": f"data_paths:{factory}",
            "params": params,
            "num_classes": 10,
            "name": f"fashion-mnist ({arm})",
        },
        "model": LENET_300_100,
        "method": {"name": "gumbel"},
        "train": {
            **TRAIN,
            "epochs": args.epochs,
            "seed": args.seed,
            "num_workers": args.workers if loader else 0,
        },
        "device": args.device,
    }


def machine_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy (Linux ``/proc/stat``); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the loader workers, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_arm(arm: str, args: argparse.Namespace, n_train: int) -> dict[str, Any]:
    busy0, own0 = machine_cpu_s(), own_cpu_s()
    t0 = time.perf_counter()
    out = run_trial(
        trial_config(arm, args),
        lambda row: print(
            f"  {arm} epoch {row['epoch']:.0f}: loss={row['loss']:.4f} "
            f"val={row['val_accuracy']:.4f}",
            file=sys.stderr,
            flush=True,
        ),
    )
    wall = time.perf_counter() - t0
    m = out.metrics
    del out
    gc.collect()  # the trial's loader workers are joined, so their CPU is counted
    busy1, own = machine_cpu_s(), own_cpu_s() - own0
    # Timings are only worth reading on a quiet machine: what else ran is measured, not assumed.
    other = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - own)
    return {
        "arm": arm,
        "train_s": m["seconds"],
        "wall_s": wall,
        "samples_per_s": n_train * args.epochs / m["seconds"],
        "val_accuracy": m["val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "density": m["density"],
        "children_left": len(multiprocessing.active_children()),
        "cpu_s": own,
        "other_cpu_s": other,
    }


def _total(values: Any) -> float | None:
    vs = list(values)
    return None if any(v is None for v in vs) else sum(vs)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the Dataset arms")
    ap.add_argument("--repeats", type=int, default=1, help="runs per arm (median throughput)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--seed", type=int, default=TRAIN["seed"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if "tensors" not in args.arms:
        ap.error("--arms must include tensors (the reference)")

    # The module the trials import the factories from: read the data there once, so that every
    # arm's wall time starts with the data in memory.
    factories = importlib.import_module("data_paths")
    n_train = factories.fashion_mnist(args.data_dir).num_train
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{args.workers} loader workers, {n_train:,} training samples × {args.epochs} epochs",
        flush=True,
    )

    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    for _ in range(args.repeats):
        for arm in args.arms:  # interleaved, so a change of load shifts every arm
            runs[arm].append(run_arm(arm, args, n_train))

    ref = runs["tensors"]
    ref_speed = statistics.median(r["samples_per_s"] for r in ref)
    ref_acc = statistics.median(r["test_accuracy"] for r in ref)
    rows = []
    for arm, rs in runs.items():
        speed = statistics.median(r["samples_per_s"] for r in rs)
        acc = statistics.median(r["test_accuracy"] for r in rs)
        rows.append(
            {
                "arm": arm,
                "workers": args.workers if ARMS[arm][2] else 0,
                "train_s": statistics.median(r["train_s"] for r in rs),
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "samples_per_s": speed,
                "throughput_ratio": speed / ref_speed,
                "val_accuracy": statistics.median(r["val_accuracy"] for r in rs),
                "test_accuracy": acc,
                "acc_diff": abs(acc - ref_acc),
                "density": statistics.median(r["density"] for r in rs),
                "children_left": max(r["children_left"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "other_cpu_s": _total(r["other_cpu_s"] for r in rs),
            }
        )
    print_table(
        rows,
        [c for c in rows[0] if c not in ("density", "children_left")],  # both in the CSV
        f"Data paths — Fashion-MNIST LeNet-300-100, Gumbel, {args.epochs} epochs, median of "
        f"{args.repeats} (acc_diff: |test accuracy − tensors'| as a fraction, bar {ACC_BAR}; "
        "cpu_s: this process and its loader workers; other_cpu_s: every other process during "
        "the arm's runs, ≈ 0 on a quiet machine)",
    )
    write_csv("data_paths.csv", rows)

    by_arm = {r["arm"]: r for r in rows}
    head = by_arm.get("dataset") or by_arm.get("dataset+getitems") or by_arm["tensors"]
    summary: dict[str, Any] = {
        "acc_diff": head["acc_diff"],
        "throughput_ratio": head["throughput_ratio"],
        "arm": head["arm"],
    }
    if "dataset+getitems" in by_arm and head["arm"] != "dataset+getitems":
        summary["getitems_acc_diff"] = by_arm["dataset+getitems"]["acc_diff"]
        summary["getitems_throughput_ratio"] = by_arm["dataset+getitems"]["throughput_ratio"]
    summary["threads"] = torch.get_num_threads()
    summary["other_cpu_s"] = _total(r["other_cpu_s"] for r in rows)
    summary["pass"] = bool(
        head["arm"] != "tensors"
        and head["acc_diff"] <= ACC_BAR
        and head["throughput_ratio"] >= THROUGHPUT_BAR
    )
    emit(summary)


if __name__ == "__main__":
    main()
