"""Runner scaling: the same 8 digits trials sequentially vs through the runner, 2 at a time.

(b) runs first: ``run_study`` (Optuna NSGA-II samples, Ray Tune executes, 2 concurrent trials of
1 CPU each, MLflow tracking on unless --no-tracking, a fresh study and store each round). (a)
then runs exactly the configs (b) ran, in a plain Python loop calling ``run_trial`` with the same
resources per trial (1 thread). ``--rounds`` repeats (b)-(a) pairs; a shared VM's speed drifts
over minutes, so each round's ratio compares neighbours in time. ``--default-threads`` adds (a'),
the loop with torch's default threads (the whole machine), for reference.

Figures:
* ``speedup`` = median over rounds of (a) wall time / (b) wall time, Ray already started (as
  on a cluster); ``speedup_cold`` adds starting the local Ray to the median round's (b).
* ``overhead_s`` = median over trials of (driver-observed trial time − the trial's own training
  time): Tune scheduling, actor reuse, data loading, export, MLflow logging.
* ``start_cpu_s`` = the worst, over the runner's worker processes, of the process CPU spent
  before its first trial's first training step (Ray worker, Tune, imports, data, model): what a
  trial process costs before it does any work (issue 11: ≤ 5 s). A reused actor's later trials
  do not pay it again, so each process counts once, at its first trial.
* Where (b)'s time goes, per round: ``first_trial_s`` (study start → the first trial function
  runs: study and store set-up, Tune, the worker processes' start), ``trials_s`` (→ the last
  trial function returns) and ``after_s`` (→ ``run_study`` returns: the front's last update).
Acceptance (issue 11): start_cpu_s ≤ 5; speedup ≥ 1.6 with ``--epochs 300`` (~30-s trials) and
≥ 1.45 at the default ~8-s trials (median of 3 rounds); overhead ≤ 0.2 s per trial.

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
from typing import Any

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
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="(b) then (a), this many times; the headline is the median round's speedup "
        "(a shared 2-core VM drifts by tens of percent over minutes)",
    )
    ap.add_argument(
        "--default-threads", action="store_true", help="also time (a') once, for reference"
    )
    args = ap.parse_args()
    import ray

    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import parse_spec
    from prunetune.search.trial import run_trial

    spec = {**SPEC, "train": {**SPEC["train"], "epochs": args.epochs}}
    if args.no_tracking:
        spec["tracking"] = {"enabled": False}
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_ray = time.perf_counter() - t0

    def runner_round() -> tuple[float, list[dict], Any]:
        work = Path(tempfile.mkdtemp(prefix="prunetune-scaling-"))
        t1, epoch1 = time.perf_counter(), time.time()
        out = run_study(parse_spec(spec), RunOptions(workdir=work, progress=False))
        wall = time.perf_counter() - t1
        first = min(r["worker_start"] for r in out.results) - epoch1
        last = max(r["worker_end"] for r in out.results) - epoch1
        phases = {"first_trial_s": first, "trials_s": last - first, "after_s": wall - last}
        assert out.completed == 8, out
        # Exactly the configs the runner ran, as the workers saw them (minus device/threads).
        import optuna

        from prunetune.search.space import sample_config

        study = optuna.load_study(study_name=out.study_name, storage=out.storage)
        configs = [
            sample_config(optuna.trial.FixedTrial(t.params, number=t.number), parse_spec(spec))
            for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"
        ]
        return wall, configs, out, phases

    def sequential(configs: list[dict], threads: int | None) -> tuple[float, list[dict]]:
        t = time.perf_counter()
        ms = [run_trial({**cfg, "threads": threads}).metrics for cfg in configs]
        return time.perf_counter() - t, ms

    rounds, overheads, seq, start_cpu = [], [], [], []
    for r in range(args.rounds):
        t_runner, configs, out, phases = runner_round()
        # (a): the same trials with the same per-trial resources as the runner gives them
        t_seq, seq = sequential(configs, 1)
        overheads += out.overheads
        first: dict[int, dict] = {}  # each worker process's first trial
        for res in sorted(out.results, key=lambda x: x["worker_start"]):
            first.setdefault(res["pid"], res)
        start_cpu += [res["start_cpu_s"] for res in first.values()]
        rounds.append(
            {
                "round": r + 1,
                "sequential_s": t_seq,
                "runner_s": t_runner,
                "speedup": t_seq / t_runner,
                **phases,
            }
        )
        print(
            f"round {r + 1}: sequential {t_seq:.1f} s, runner {t_runner:.1f} s, "
            f"speedup {t_seq / t_runner:.3f}",
            flush=True,
        )
    t_seq_all = sequential(configs, None)[0] if args.default_threads else None
    ray.shutdown()

    mid = sorted(rounds, key=lambda x: x["speedup"])[(len(rounds) - 1) // 2]
    print_table(
        rounds,
        ["round", "sequential_s", "runner_s", "speedup", "first_trial_s", "trials_s", "after_s"],
        "search scaling — 8 digits trials, (a) 1 thread/trial vs (b) runner, 2 concurrent",
    )
    print(
        f"median trial training time: {statistics.median(m['seconds'] for m in seq):.2f} s "
        "(sequential, last round)"
    )
    print(
        f"per-trial overhead (driver time − training time): median "
        f"{statistics.median(overheads):.3f} s, max {max(overheads):.3f} s"
    )
    if t_seq_all is not None:
        print(f"(a') sequential with default threads: {t_seq_all:.1f} s")
    print(
        f"trial process start-up CPU (before the first training step): median "
        f"{statistics.median(start_cpu):.2f} s, max {max(start_cpu):.2f} s over {len(start_cpu)}"
    )
    emit(
        {
            "start_cpu_s": round(max(start_cpu), 2),
            "speedup": round(statistics.median(x["speedup"] for x in rounds), 3),
            "speedups": [round(x["speedup"], 3) for x in rounds],
            "speedup_cold": round(mid["sequential_s"] / (mid["runner_s"] + t_ray), 3),
            "overhead_s": round(statistics.median(overheads), 3),
            "sequential_s": [round(x["sequential_s"], 2) for x in rounds],
            "runner_s": [round(x["runner_s"], 2) for x in rounds],
            "ray_start_s": round(t_ray, 2),
            **{k: [round(x[k], 2) for x in rounds] for k in ("first_trial_s", "after_s")},
            "tracking": not args.no_tracking,
            **({"sequential_default_threads_s": round(t_seq_all, 2)} if t_seq_all else {}),
        }
    )


if __name__ == "__main__":
    main()
