"""Memory of a reused Ray Tune trial actor across a study's trials, with and without a cap on
glibc's malloc arenas.

Ray Tune reuses a trial actor for the next trial (prunetune's runner sets ``reuse_actors``) and
runs each trial in a new thread of that process. glibc gives a new thread a new malloc arena,
and the freed arenas keep their pages, so without a cap the actor's resident memory grows with
every trial. The runner gives its workers ``MALLOC_ARENA_MAX=2`` (``search/runner.py``,
``WORKER_MALLOC_ARENAS``); ``MALLOC_ARENA_MAX=0`` in the driver's environment is glibc's
default, no cap.

Each arm runs one study through the real runner (local Ray, one trial at a time, so one actor
runs them all): LeNet-300-100 on Fashion-MNIST, per-weight Gumbel gates, ``--epochs`` epochs per
trial, no tracking. A thread samples the resident memory of the process titled
``ray::ImplicitFunc`` every 0.2 s. Each trial's peak and floor come from the samples between its
start and end (Optuna's timestamps).

    .venv/bin/python bench/worker_memory.py                  # both arms, ~3 min on 2 cores
    .venv/bin/python bench/worker_memory.py --arms default --trials 6

Last stdout line: {"arms": [{"malloc_arena_max", "trials", "first_peak_mb", "last_peak_mb",
"growth_mb_per_trial", "floor_growth_mb_per_trial", "mean_trial_s"}, ...]}: the growths are
least-squares slopes against the trials' order, of each trial's peak and of its floor (the least
sample in the trial's window, what the process holds between trials; the first trial's floor,
before the actor has loaded anything, is left out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, print_table

SPEC: dict[str, Any] = {
    "name": "worker-memory",
    "dataset": "fashion-mnist",
    "model": {"family": "mlp", "widths": [300, 100], "activation": "relu"},
    "methods": {"gumbel": {"granularity": "weight", "lam": [0.1, 10.0]}},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.002, "optimizer": "adam"},
    "search": {
        "sampler": "random",
        "max_concurrent": 1,
        "resources": {"cpu": 1},
        "seed": 0,
    },
    "tracking": {"enabled": False},
}


class Sampler(threading.Thread):
    """(time, RSS bytes) of every process titled ``ray::ImplicitFunc`` (a running trial)."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            now = time.time()
            for p in psutil.process_iter(["cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if cmd.startswith("ray::ImplicitFunc"):
                        self.samples.append((now, p.memory_info().rss))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.done.wait(self.period)


def run_arm(arenas: str, args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import optuna
    import ray

    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import parse_spec

    if arenas == "default":  # the runner's own value
        os.environ.pop("MALLOC_ARENA_MAX", None)
    else:  # the runner forwards the driver's value
        os.environ["MALLOC_ARENA_MAX"] = arenas
    spec = copy.deepcopy(SPEC)
    spec["data_dir"] = args.data_dir
    spec["train"]["epochs"] = args.epochs
    spec["search"]["n_trials"] = args.trials
    sampler = Sampler()
    sampler.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
            out = run_study(parse_spec(spec), RunOptions(workdir=Path(tmp), progress=False))
            study = optuna.load_study(study_name=out.study_name, storage=out.storage)
            windows = sorted(
                (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
                for t in study.trials
                if t.state.name == "COMPLETE"
            )
    finally:
        sampler.done.set()
        sampler.join()
        ray.shutdown()
    peaks, floors = [], []
    for start, end in windows:
        inside = [rss / 2**20 for t, rss in sampler.samples if start <= t <= end]
        if inside:
            peaks.append(max(inside))
            floors.append(min(inside))
    print(f"MALLOC_ARENA_MAX={arenas}: trial peaks (MB) {[round(p) for p in peaks]}", flush=True)
    print(f"MALLOC_ARENA_MAX={arenas}: trial floors (MB) {[round(p) for p in floors]}", flush=True)
    return {
        "malloc_arena_max": arenas,
        "trials": len(peaks),
        "first_peak_mb": round(peaks[0], 1),
        "last_peak_mb": round(peaks[-1], 1),
        "growth_mb_per_trial": round(slope(peaks), 1),
        "floor_growth_mb_per_trial": round(slope(floors[1:]), 1),
        "mean_trial_s": round(statistics.fmean(e - s for s, e in windows), 2),
    }


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, 2, …"""
    n = len(ys)
    mx, my = (n - 1) / 2, statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sum((x - mx) ** 2 for x in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        default=["0", "default"],
        help="MALLOC_ARENA_MAX of each arm (0: glibc's default, no cap; default: the runner's, 2)",
    )
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    arms = [run_arm(a, args) for a in args.arms]
    print_table(arms, list(arms[0]), title="Trial actor memory across trials")
    emit({"arms": arms})


if __name__ == "__main__":
    main()
