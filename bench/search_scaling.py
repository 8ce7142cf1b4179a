"""Runner scaling: the same 8 digits trials sequentially vs through the runner, 2 at a time.

(b) runs first: ``run_study`` (Optuna NSGA-II samples, Ray Tune executes, 2 concurrent trials of
1 CPU each, MLflow tracking on unless --no-tracking). (a) then runs exactly the configs (b) ran,
in a plain Python loop calling ``run_trial`` with the same resources per trial (1 thread); (a')
repeats the loop with torch's default threads (the whole machine), for reference.

Figures:
* ``speedup`` = (a) wall time / (b) wall time, Ray already started (as on a cluster);
  ``speedup_cold`` includes starting the local Ray.
* ``overhead_s`` = median over trials of (driver-observed trial time − the trial's own training
  time): Tune scheduling, actor reuse, data loading, export, MLflow logging.
Acceptance (issue 3): speedup ≥ 1.6 on 2 cores, overhead ≤ 1.5 s.

    .venv/bin/python bench/search_scaling.py
Last stdout line: {"speedup": …, "overhead_s": …, ...}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, print_table

SPEC = {
    "name": "scaling",
    "dataset": "digits",
    "model": {"family": "mlp", "depth": [1, 2], "width": [32, 128]},
    "methods": {"gumbel": {"lam": [0.01, 3.0], "granularity": ["weight", "neuron"]}},
    "train": {"epochs": 100, "batch_size": 32, "lr": [0.001, 0.01]},
    "search": {
        "n_trials": 8,
        "max_concurrent": 2,
        "seed": 0,
        "population_size": 8,
        "resources": {"cpu": 1},
    },
    "tracking": {"register": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=SPEC["train"]["epochs"])
    ap.add_argument("--no-tracking", action="store_true")
    args = ap.parse_args()
    import ray

    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import parse_spec
    from prunetune.search.trial import run_trial

    spec = {**SPEC, "train": {**SPEC["train"], "epochs": args.epochs}}
    if args.no_tracking:
        spec["tracking"] = {"enabled": False}
    work = Path(tempfile.mkdtemp(prefix="prunetune-scaling-"))
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_ray = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = run_study(parse_spec(spec), RunOptions(workdir=work, progress=False))
    t_runner = time.perf_counter() - t1
    ray.shutdown()
    assert out.completed == 8, out
    # Exactly the configs the runner ran, as the workers saw them (minus device/threads).
    import optuna

    study = optuna.load_study(study_name=out.study_name, storage=out.storage)
    configs = []
    from prunetune.search.space import sample_config

    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE":
            fixed = optuna.trial.FixedTrial(t.params, number=t.number)
            configs.append(sample_config(fixed, parse_spec(spec)))

    def sequential(threads: int | None) -> tuple[float, list[dict]]:
        t = time.perf_counter()
        ms = [run_trial({**cfg, "threads": threads}).metrics for cfg in configs]
        return time.perf_counter() - t, ms

    # Headline: the same trials with the same per-trial resources as the runner gives them
    # (1 thread each). For reference, the loop with torch's default threads (whole machine).
    t_seq, seq = sequential(1)
    t_seq_all, _ = sequential(None)

    overheads = [tm["driver_seconds"] - tm["train_seconds"] for tm in out.trial_timings]
    rows = [
        {"mode": "(a) sequential loop, 1 thread/trial", "wall_s": t_seq, "trials": len(seq)},
        {"mode": "(a') sequential loop, default threads", "wall_s": t_seq_all, "trials": len(seq)},
        {"mode": "(b) runner, 2 concurrent", "wall_s": t_runner, "trials": out.completed},
        {"mode": "(b) + Ray start-up", "wall_s": t_runner + t_ray, "trials": out.completed},
    ]
    print_table(rows, ["mode", "wall_s", "trials"], "search scaling — 8 digits trials, 2 CPU cores")
    print(
        f"median trial training time: {statistics.median(m['seconds'] for m in seq):.2f} s (sequential)"
    )
    print(
        f"per-trial overhead (driver time − training time): median {statistics.median(overheads):.3f} s, max {max(overheads):.3f} s"
    )
    emit(
        {
            "speedup": round(t_seq / t_runner, 3),
            "speedup_cold": round(t_seq / (t_runner + t_ray), 3),
            "overhead_s": round(statistics.median(overheads), 3),
            "speedup_vs_default_threads": round(t_seq_all / t_runner, 3),
            "sequential_s": round(t_seq, 2),
            "sequential_default_threads_s": round(t_seq_all, 2),
            "runner_s": round(t_runner, 2),
            "ray_start_s": round(t_ray, 2),
            "tracking": not args.no_tracking,
        }
    )


if __name__ == "__main__":
    main()
