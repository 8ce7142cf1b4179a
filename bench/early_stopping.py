"""Early stopping: MO-ASHA vs no stopping on the same study, under the same time budget.

A Fashion-MNIST LeNet-300-100 Gumbel study (the space of ``studies/fashion-mlp.yaml`` with the
widths fixed at 300-100, 30 epochs so that no stopping finishes about 16 trials in the 600-s
budget on 2 cores), NSGA-II, 2 trials at a time of 1 CPU each, run twice per seed: with
``search.scheduler: {name: mo-asha, grace_epochs: 1, reduction_factor: 3}`` and without, each
arm for ``--budget`` seconds (``search.time_budget``: no trial starts after it; running trials
finish). Same sampler, spec and seed in both arms; Ray is started once, before either arm's
clock starts. Tracking is off in both arms (the record is the truth; MLflow only mirrors it).

The hypervolume is the product's (``_front.log_hypervolume``: validation accuracy × log10
parameters, from the study's fixed reference), over the COMPLETE trials finished by each time
that did not collapse (as the product's front leaves collapsed trials out).
Figures per seed: ``t_reach`` = the first time MO-ASHA's hypervolume reaches no-stopping's at
the end of the budget, as a fraction of the budget (``time_ratio``; inf if never), and
``hv_ratio_at_end`` = MO-ASHA's hypervolume at the end of the budget / no-stopping's.
Acceptance (issue 14): median time_ratio ≤ 0.6 and median hv_ratio_at_end ≥ 1 over 2 seeds.

    .venv/bin/python bench/early_stopping.py                 # 2 seeds × 2 arms × 600 s
    .venv/bin/python bench/early_stopping.py --budget 120 --seeds 1   # a quick look
Last stdout line: {"time_ratio": …, "hv_ratio_at_end": …}
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT_DIR, emit, print_table, write_csv

SPEC: dict[str, Any] = {
    "name": "early-stopping",
    "dataset": "fashion-mnist",
    "model": {"family": "mlp", "widths": [300, 100], "activation": "relu"},
    "methods": {
        "gumbel": {
            "granularity": ["weight", "neuron"],
            "schedule": ["exponential", "cosine", "linear"],
            "tau_start": [0.5, 2.0],
            "tau_end": [0.05, 0.5],
            "penalty": ["density", "target"],
            "lam": [0.1, 100.0],
            "target_density": [0.001, 0.1],
            "warmup_epochs": [0.0, 2.0],
            "logit_lr": [0.01, 0.2],
            "init_keep_prob": [0.7, 0.95],
        }
    },
    "train": {"epochs": 30, "batch_size": 128, "lr": [0.0005, 0.005], "optimizer": "adam"},
    "search": {
        "sampler": "nsga2",
        "population_size": 8,
        "n_trials": 10_000,  # the time budget ends the study
        "max_concurrent": 2,
        "resources": {"cpu": 1},
    },
    "tracking": {"enabled": False},
}


def run_arm(seed: int, stopping: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One study; its completed trials' finish times (s from the arm's start) and points."""
    import optuna

    from prunetune.search._record import ATTR_RESULT, is_collapsed
    from prunetune.search.runner import RunOptions, run_study
    from prunetune.search.spec import parse_spec

    spec = copy.deepcopy(SPEC)
    spec["data_dir"] = args.data_dir
    spec["train"]["epochs"] = args.epochs
    spec["search"] |= {"seed": seed, "time_budget": args.budget}
    if stopping:
        spec["search"]["scheduler"] = {
            "name": "mo-asha",
            "grace_epochs": args.grace,
            "reduction_factor": args.eta,
        }
    with tempfile.TemporaryDirectory(prefix="bench-es-") as tmp:
        t0 = time.time()
        outcome = run_study(parse_spec(spec), RunOptions(workdir=Path(tmp), progress=False))
        wall = time.time() - t0
        study = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage)
        ref = study.user_attrs["hv_reference"]
        done = []
        for t in study.trials:
            # a collapsed trial is off the product's front and hypervolume (at chance, ~10
            # parameters, it would still add a sliver of area above the reference accuracy 0)
            if t.state.name == "COMPLETE" and not is_collapsed(t.user_attrs.get(ATTR_RESULT)):
                end = t.datetime_complete.timestamp() - t0
                done.append((end, float(t.values[0]), float(t.values[1])))
        states = [t.state.name for t in study.trials]
    return {
        "seed": seed,
        "arm": "mo-asha" if stopping else "none",
        "done": sorted(done),
        "ref": ref,
        "wall": wall,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
    }


def hv_at(arm: dict[str, Any], t: float) -> float:
    from prunetune.search._front import log_hypervolume

    pts = [(acc, params) for end, acc, params in arm["done"] if end <= t]
    return log_hypervolume(pts, arm["ref"]) if pts else 0.0


def time_to_reach(arm: dict[str, Any], target: float) -> float:
    """The first completion time at which ``arm``'s hypervolume reaches ``target``."""
    for end, _, _ in arm["done"]:
        if hv_at(arm, end) >= target - 1e-12:
            return end
    return math.inf


def plot(arms: list[dict[str, Any]], budget: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        ts = [0.0] + [e for e, _, _ in arm["done"]] + [max(budget, arm["wall"])]
        ax.step(
            ts,
            [hv_at(arm, t) for t in ts],
            where="post",
            label=f"{arm['arm']} (seed {arm['seed']})",
            linestyle="-" if arm["arm"] == "mo-asha" else "--",
        )
    ax.axvline(budget, color="grey", lw=0.8)
    ax.set_xlabel("elapsed (s)")
    ax.set_ylabel("hypervolume (val accuracy × log10 params)")
    ax.set_title("MO-ASHA vs no stopping, Fashion-MNIST LeNet-300-100 Gumbel study")
    ax.legend()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "early_stopping.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=600.0, help="seconds per arm (time budget)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    p.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="epochs per trial (30: no stopping finishes about 16 trials in 600 s on 2 cores)",
    )
    p.add_argument("--grace", type=int, default=1, help="MO-ASHA grace epochs")
    p.add_argument("--eta", type=int, default=3, help="MO-ASHA reduction factor")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    args = p.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    arms, rows, series = [], [], []
    for seed in range(args.seeds):
        pair = {s: run_arm(seed, s, args) for s in (False, True)}
        arms += [pair[False], pair[True]]
        target = hv_at(pair[False], args.budget)
        reach = time_to_reach(pair[True], target)
        rows.append(
            {
                "seed": seed,
                "hv_none_end": target,
                "hv_mo_end": hv_at(pair[True], args.budget),
                "trials_none": pair[False]["complete"],
                "trials_mo": pair[True]["complete"],
                "stopped_mo": pair[True]["pruned"],
                "t_reach_s": reach,
                "time_ratio": reach / args.budget,
                "hv_ratio_at_end": hv_at(pair[True], args.budget) / target if target else math.inf,
            }
        )
        for arm in pair.values():
            for end, acc, params in arm["done"]:
                series.append(
                    {
                        "seed": seed,
                        "arm": arm["arm"],
                        "t_s": end,
                        "val_accuracy": acc,
                        "params": params,
                        "hv": hv_at(arm, end),
                    }
                )
    ray.shutdown()
    print_table(
        series,
        ["seed", "arm", "t_s", "val_accuracy", "params", "hv"],
        "hypervolume over time (each completed trial)",
    )
    print_table(
        rows,
        [
            "seed",
            "hv_none_end",
            "hv_mo_end",
            "trials_none",
            "trials_mo",
            "stopped_mo",
            "t_reach_s",
            "time_ratio",
            "hv_ratio_at_end",
        ],
        f"MO-ASHA vs no stopping, {args.budget:g} s per arm",
    )
    write_csv("early_stopping.csv", series)
    print(f"figure: {plot(arms, args.budget)}")
    emit(
        {
            "time_ratio": statistics.median(r["time_ratio"] for r in rows),
            "hv_ratio_at_end": statistics.median(r["hv_ratio_at_end"] for r in rows),
            "budget_s": args.budget,
            "seeds": args.seeds,
            "trials_none": [r["trials_none"] for r in rows],
            "trials_mo": [r["trials_mo"] for r in rows],
            "stopped_mo": [r["stopped_mo"] for r in rows],
        }
    )


if __name__ == "__main__":
    main()
