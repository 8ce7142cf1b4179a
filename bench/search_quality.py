"""Search quality: multi-objective samplers vs random search on the Fashion-MNIST Gumbel space.

The space is Fashion-MNIST LeNet-300-100 (266,610 parameters, widths fixed) with per-weight
Gumbel pruning over the ranges of ``studies/fashion-mlp.yaml`` (revised for budgets ≤ 1%: λ from
3, where the 15-epoch λ sweep starts pruning below 1%) plus the training recipe as dimensions
(fine-tune phase with frozen masks, its learning rate, the learning-rate schedule,
distillation from the dense teacher; ``--no-new-dims`` drops them), 8 epochs per trial. Per
seed: NSGA-II, TPE and GP studies of 32 trials and a random-search study of 96, 2 trials at a
time of 1 CPU each, tracking off, each study in its own temporary store; Ray is started once.
Every study uses the same fixed hypervolume reference: the product's default for this space
(accuracy 0, the dense parameter count), computed once and set as ``objectives.reference_point``.

Figures per study: the hypervolume as the product measures it (``_front.front_of_study``:
``log_hypervolume`` of validation accuracy × log10 parameters from the study's stored
reference, over its COMPLETE trials less those tagged collapsed); how many collapsed; the best
test accuracy with ≤ 2,666, ≤ 800 and ≤ 400 parameters (1%, 0.3%, 0.15% of LeNet-300-100),
selected on validation accuracy. Then the medians over seeds per sampler, beside the λ
sweep's figures (``bench/out/gumbel_frontier.csv``, if present), and the best trial under each
budget over all studies. ``--recipe`` re-trains the 3 best configurations under each budget
and the 2 best up to 1.5 times it (by validation accuracy; a longer run prunes further)
in-process at full length (``--recipe-epochs``, fine-tune epochs kept), each holding the budget
(Gumbel's ``max_density`` set to it: the deterministic masks keep the largest logits up to the
budget, as a user who needs ≤ N parameters runs the recipe), and selects among those that fit
the budget, on validation; ``best_test`` then comes from them. ``--recipe-free`` also re-trains
the candidates as found, without the cap (``best_test_free``: a longer run lands where it
lands, often just over the budget).

Acceptance (issue 15): the best multi-objective sampler's median hypervolume after 32 trials
≥ random search's after 96; ``best_test["0.3"]`` ≥ 0.85 and ``best_test["0.15"]`` ≥ 0.82.

    .venv/bin/python bench/search_quality.py --recipe        # 2 seeds: ~2 h 10 min on 2 cores
    .venv/bin/python bench/search_quality.py --resume --recipe --recipe-epochs 60   # README's
    .venv/bin/python bench/search_quality.py --seeds 1       # a quick look
    .venv/bin/python bench/search_quality.py --resume ...    # skip studies already finished

Each finished study (and each re-trained recipe) is appended to
``bench/out/search_quality.jsonl``; ``--resume`` reuses the records whose settings match.
Writes ``bench/out/search_quality.csv`` (every trial) and ``bench/out/search_quality.png``.
Last stdout line: {"hv": {"nsga2", "tpe", "gp", "random96"}, "best_test": {"1", "0.3", "0.15"},
"best_test_source", "best_test_free" (with --recipe-free), "best_sampler",
"hv_best_over_random", "pass", ...}
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT_DIR, emit, print_table, write_csv

SPEC: dict[str, Any] = {
    "name": "search-quality",
    "dataset": "fashion-mnist",
    "model": {"family": "mlp", "widths": [300, 100], "activation": "relu"},
    "methods": {
        # studies/fashion-mlp.yaml's Gumbel ranges, revised for the budgets this bench reads
        # (≤ 1% of LeNet-300-100): per-weight gates only (channel gates cannot go below one
        # unit's 784 inputs), and λ from where the 15-epoch λ sweep starts pruning below 1%.
        "gumbel": {
            "granularity": "weight",
            "schedule": ["exponential", "cosine", "linear"],
            "tau_start": [0.5, 2.0],
            "tau_end": [0.05, 0.5],
            "penalty": ["density", "target"],
            "lam": [3.0, 300.0],
            "target_density": [0.001, 0.02],
            "warmup_epochs": [0.0, 2.0],
            "logit_lr": [0.01, 0.2],
            "init_keep_prob": [0.7, 0.95],
        }
    },
    "train": {
        "epochs": 8,
        "batch_size": 128,
        "lr": [0.0005, 0.005],
        "optimizer": "adam",
        # the training recipe as search dimensions (issue 15); --no-new-dims drops these keys
        "finetune_epochs": [0, 4],  # a fine-tune phase with frozen masks
        "finetune_lr": [0.0001, 0.003],
        "lr_schedule": ["constant", "cosine"],
        "distill": {"alpha": [0.0, 0.9], "temperature": [1.0, 8.0]},  # teacher: largest model
    },
    "search": {
        "population_size": 8,  # NSGA-II: 4 generations in 32 trials
        "max_concurrent": 2,
        "max_failures": 8,  # a failed trial is a figure here, not a reason to stop the bench
        "resources": {"cpu": 1},
    },
    "tracking": {"enabled": False},
}
NEW_TRAIN_DIMS = ("finetune_epochs", "finetune_lr", "lr_schedule", "distill")
#: budget label (% of LeNet-300-100's 266,610 parameters) → most parameters allowed
BUDGETS = {"1": 2666, "0.3": 800, "0.15": 400}
MO_SAMPLERS = ("nsga2", "tpe", "gp")
SWEEP_CSV = OUT_DIR / "gumbel_frontier.csv"
SWEEP_LABEL = "lambda sweep (bench/gumbel_frontier.py, 15 epochs)"
LOG = OUT_DIR / "search_quality.jsonl"
COLORS = {"nsga2": "tab:blue", "tpe": "tab:orange", "gp": "tab:green", "random96": "0.55"}
MARKERS = {"nsga2": "o", "tpe": "s", "gp": "^", "random96": "D"}
_T0 = time.time()


def say(msg: str) -> None:
    print(f"[search_quality {time.time() - _T0:7.0f}s] {msg}", file=sys.stderr, flush=True)


# -- the studies --------------------------------------------------------------------------------
def base_spec(args: argparse.Namespace) -> dict[str, Any]:
    """SPEC with the command line's settings (no sampler, seed or trial count yet)."""
    spec = copy.deepcopy(SPEC)
    spec["dataset"] = args.dataset
    spec["data_dir"] = args.data_dir
    spec["train"]["epochs"] = args.epochs
    if args.no_new_dims:
        for k in NEW_TRAIN_DIMS:
            spec["train"].pop(k, None)
    return spec


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """``(label, sampler, n_trials, seed)`` of every study, seed by seed."""
    samplers = [(s, s, args.trials) for s in MO_SAMPLERS]
    samplers.append(("random96", "random", args.random_trials))
    return [(lab, s, n, seed) for seed in range(args.seeds) for lab, s, n in samplers]


def study_spec(spec: dict[str, Any], label: str, sampler: str, n: int, seed: int) -> dict:
    out = copy.deepcopy(spec)
    out["name"] = f"search-quality-{label}-s{seed}"
    out["search"] |= {"sampler": sampler, "n_trials": n, "seed": seed}
    return out


def run_one(spec: dict[str, Any], label: str, seed: int) -> dict[str, Any]:
    """Run one study; its summary and every trial (plain JSON values). The hypervolume and the
    collapse tags are the product's (``_front.front_of_study``), read from the study's record."""
    import optuna

    from prunetune.search._front import front_of_study
    from prunetune.search._record import ATTR_CONFIG
    from prunetune.search.runner import RunOptions, StudyFailed, run_study
    from prunetune.search.spec import parse_spec

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-sq-") as tmp:
        try:
            outcome = run_study(parse_spec(spec), RunOptions(workdir=Path(tmp), progress=True))
        except StudyFailed as e:  # its completed trials are kept: measure them
            say(f"{label} seed {seed}: {e}")
            outcome = e.outcome
        study = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage)
        front = front_of_study(study)
        configs = {t.number: t.user_attrs.get(ATTR_CONFIG) for t in study.trials}
        states = {t.number: t.state.name for t in study.trials}
    trials = []
    for r in front.records:
        done = states[r.trial] == "COMPLETE"
        trials.append(
            {
                "number": r.trial,
                "state": states[r.trial],
                "val": _num(r.val_accuracy) if done else None,
                "params": _num(r.params_kept) if done else None,
                "test": _num(r.test_accuracy) if done else None,
                "collapsed": bool(r.collapsed),
                "config": configs[r.trial],
            }
        )
    return {
        "kind": "study",
        "key": f"{label}-s{seed}",
        "spec": spec,
        "sampler": label,
        "seed": seed,
        "reference": list(front.reference),
        "hv": front.hypervolume,
        "complete": sum(t["state"] == "COMPLETE" for t in trials),
        "failed": sum(t["state"] == "FAIL" for t in trials),
        "collapsed": sum(t["collapsed"] for t in trials if t["state"] == "COMPLETE"),
        "wall_s": time.time() - t0,
        "trials": trials,
    }


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _usable(t: dict[str, Any]) -> bool:
    """COMPLETE, not collapsed, both objectives finite: what the front and hypervolume use."""
    return (
        t["state"] == "COMPLETE"
        and not t["collapsed"]
        and _num(t["val"]) is not None
        and _num(t["params"]) is not None
    )


# -- the log: one JSON line per finished study / re-trained recipe ----------------------------
def read_log() -> list[dict[str, Any]]:
    if not LOG.is_file():
        return []
    out = []
    for line in LOG.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


def append_log(record: dict[str, Any]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- selection under budgets ------------------------------------------------------------------
def ranked_under(trials: list[dict[str, Any]], limit: float) -> list[dict[str, Any]]:
    """Usable trials with ≤ ``limit`` parameters, best validation accuracy first (ties: fewer
    parameters)."""
    ok = [t for t in trials if _usable(t) and t["params"] <= limit]
    return sorted(ok, key=lambda t: (-t["val"], t["params"]))


def best_test(trials: list[dict[str, Any]], limit: float) -> float | None:
    ranked = ranked_under(trials, limit)
    return ranked[0]["test"] if ranked else None


def tagged(study: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**t, "sampler": study["sampler"], "seed": study["seed"]} for t in study["trials"]]


def sweep_figures(ref: list[float]) -> dict[str, Any] | None:
    """The λ sweep's best test accuracy under each budget and its hypervolume (validation
    accuracy, the same reference), from ``bench/out/gumbel_frontier.csv``."""
    if not SWEEP_CSV.is_file():
        return None
    from prunetune.search._front import log_hypervolume

    with SWEEP_CSV.open() as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    row: dict[str, Any] = {"sampler": SWEEP_LABEL, "studies": 1, "trials": len(rows)}
    row["hv"] = log_hypervolume([(r["val_accuracy"], r["params"]) for r in rows], ref)
    for b, limit in BUDGETS.items():
        under = [r["test_accuracy"] for r in rows if r["params"] <= limit]
        row[f"test@{b}%"] = max(under) if under else None
    return row


# -- full-length re-training ------------------------------------------------------------------
def distinct(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first trial of each configuration, in order: samplers seeded alike draw the same
    start-up trials (Optuna's random start of TPE, GP and NSGA-II's first generation)."""
    seen, out = set(), []
    for t in trials:
        c = json.dumps(t["config"], sort_keys=True)
        if t["config"] is not None and c not in seen:
            seen.add(c)
            out.append(t)
    return out


def candidates(pool: list[dict[str, Any]], limit: float) -> list[dict[str, Any]]:
    """What ``--recipe`` re-trains for a budget: the 3 best distinct configurations under it
    and the 2 best between it and 1.5 times it (a longer run of a sparsity penalty prunes
    further), by validation accuracy."""
    under = distinct(ranked_under(pool, limit))[:3]
    near = [t for t in distinct(ranked_under(pool, 1.5 * limit)) if t["params"] > limit][:2]
    return under + near


def recipe(
    pool: list[dict[str, Any]],
    args: argparse.Namespace,
    done: dict[tuple[str, str], dict[str, Any]],
    hold: bool,
    dense: float,
) -> dict[str, dict[str, Any]]:
    """For each budget, its :func:`candidates` re-trained in-process for ``--recipe-epochs``;
    the best that fits the budget after re-training, by validation. ``{budget: row}``.

    ``hold``: each candidate is re-trained once per budget with Gumbel's ``max_density`` set to
    the budget (the deterministic masks keep the largest logits up to it), as a user who needs
    ≤ N parameters runs the recipe; else once, as found (a longer run lands where it lands).
    ``dense``: the model's dense parameter count (the hypervolume reference's)."""
    from prunetune.search._record import is_collapsed
    from prunetune.search.trial import run_trial

    def key_of(t: dict[str, Any]) -> str:
        return f"{t['sampler']}-s{t['seed']}#{t['number']}"

    top = {b: candidates(pool, limit) for b, limit in BUDGETS.items()}
    jobs = {}  # record key → (trial, config)
    for b, ts in top.items():
        for t in ts:
            cfg = copy.deepcopy(t["config"])
            cfg["train"]["epochs"] = args.recipe_epochs  # fine-tune epochs are kept
            key = key_of(t)
            if hold:
                cfg["method"]["max_density"] = min(1.0, BUDGETS[b] / dense)
                key += f"@{b}"
            jobs[key] = (t, cfg)
    retrained: dict[str, dict[str, Any]] = {}
    for key, (t, cfg) in jobs.items():
        old = done.get((key, json.dumps(cfg, sort_keys=True)))
        if old is not None:
            retrained[key] = old
            continue
        say(f"recipe {key}: re-training for {args.recipe_epochs} epochs")
        t0 = time.time()
        m = run_trial(cfg).metrics
        row = {
            "kind": "recipe",
            "key": key,
            "config": cfg,
            "search_val": t["val"],
            "search_params": t["params"],
            "val": float(m["val_accuracy"]),
            "test": float(m["test_accuracy"]),
            "params": float(m["params"]),
            "collapsed": is_collapsed(m),
            "wall_s": time.time() - t0,
        }
        say(
            f"recipe {key}: val {row['val']:.4f} test {row['test']:.4f} params "
            f"{row['params']:.0f} (search: val {t['val']:.4f}, params {t['params']:.0f})"
        )
        append_log(row)
        retrained[key] = row
    out: dict[str, dict[str, Any]] = {}
    for b, limit in BUDGETS.items():
        fit = [retrained[key_of(t) + (f"@{b}" if hold else "")] for t in top[b]]
        fit = [r for r in fit if r["params"] <= limit and not r["collapsed"]]
        if fit:
            out[b] = max(fit, key=lambda r: (r["val"], -r["params"]))
    return out


# -- the figure -------------------------------------------------------------------------------
def plot(studies: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunetune.search.pareto import pareto_front

    fig, ax = plt.subplots(figsize=(8, 5))
    for label in ("random96", *MO_SAMPLERS):  # random behind; shared start-up trials overlap
        color, marker = COLORS[label], MARKERS[label]
        pts = [
            (t["val"], t["params"])
            for s in studies
            if s["sampler"] == label
            for t in s["trials"]
            if _usable(t)
        ]
        if not pts:
            continue
        ax.scatter(
            [p[1] for p in pts], [p[0] for p in pts], s=8, color=color, alpha=0.25, marker=marker
        )
        front = [pts[i] for i in pareto_front(pts)]
        xs, ys = [p[1] for p in front], [p[0] for p in front]
        ax.step(xs, ys, where="post", color=color, lw=1.4)
        ax.scatter(
            xs,
            ys,
            s=30,
            color=color,
            marker=marker,
            facecolors="none" if label != "random96" else color,
            zorder=3,
            label=f"{label} front ({len(pts)} trials)",
        )
    if SWEEP_CSV.is_file() and studies and studies[0]["spec"]["dataset"] == "fashion-mnist":
        with SWEEP_CSV.open() as f:
            rows = list(csv.DictReader(f))
        ax.scatter(
            [float(r["params"]) for r in rows],
            [float(r["val_accuracy"]) for r in rows],
            marker="x",
            color="black",
            label="λ sweep (15 epochs)",
        )
    for b, limit in BUDGETS.items():
        ax.axvline(limit, color="grey", lw=0.6, ls=":")
        ax.annotate(f"{b}%", (limit, 0.02), xycoords=("data", "axes fraction"), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("kept parameters (log)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Fronts per sampler, seeds merged, collapsed trials left out")
    ax.legend(fontsize=8, loc="upper left")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "search_quality.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _median(vals: list[Any]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (search.seed)")
    p.add_argument("--trials", type=int, default=32, help="trials per NSGA-II/TPE/GP study")
    p.add_argument("--random-trials", type=int, default=96, help="trials per random study")
    p.add_argument("--epochs", type=int, default=SPEC["train"]["epochs"], help="per trial")
    p.add_argument("--dataset", default=SPEC["dataset"], help="override (e.g. digits, smoke)")
    p.add_argument("--data-dir", default=None, help="the data set's folder (default: found)")
    p.add_argument("--no-new-dims", action="store_true", help=f"drop {list(NEW_TRAIN_DIMS)}")
    p.add_argument("--recipe", action="store_true", help="re-train the best at full length")
    p.add_argument("--recipe-epochs", type=int, default=15, help="train.epochs of --recipe")
    p.add_argument(
        "--recipe-free",
        action="store_true",
        help="also re-train the candidates without holding the budget (max_density), as found",
    )
    p.add_argument("--resume", action="store_true", help=f"reuse the finished studies in {LOG}")
    args = p.parse_args()

    from prunetune.search._front import reference_point
    from prunetune.search.spec import parse_spec

    spec = base_spec(args)
    ref = [float(v) for v in reference_point(parse_spec(spec))]
    spec["objectives"] = {"reference_point": ref}  # one reference for every study
    say(f"hypervolume reference {ref}; log {LOG}")
    old = read_log() if args.resume else []
    if not args.resume and LOG.is_file():
        LOG.replace(LOG.with_suffix(".prev.jsonl"))  # a rerun never loses the last run's log
    prev = {r["key"]: r for r in old if r.get("kind") == "study"}
    # keyed by trial and config: re-trainings of one trial at other lengths are kept apart
    prev_recipes = {
        (r["key"], json.dumps(r["config"], sort_keys=True)): r
        for r in old
        if r.get("kind") == "recipe"
    }

    studies: list[dict[str, Any]] = []
    todo = plan(args)
    ray_started = False
    for i, (label, sampler, n, seed) in enumerate(todo, 1):
        s = study_spec(spec, label, sampler, n, seed)
        r = prev.get(f"{label}-s{seed}")
        if r is not None and r["spec"] == json.loads(json.dumps(s)):
            say(f"[{i}/{len(todo)}] {label} seed {seed}: reused from the log (hv {r['hv']:.4g})")
            studies.append(r)
            continue
        if not ray_started:
            import ray

            ray.init(
                num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
            )
            ray_started = True
        say(f"[{i}/{len(todo)}] {label} seed {seed}: {n} trials, {args.epochs} epochs each")
        r = run_one(s, label, seed)
        if not all(math.isclose(a, b) for a, b in zip(r["reference"], ref, strict=True)):
            raise RuntimeError(
                f"study {r['key']} stored the hypervolume reference {r['reference']}, "
                f"expected the common {ref}"
            )
        append_log(r)
        say(
            f"[{i}/{len(todo)}] {label} seed {seed}: done in {r['wall_s']:.0f}s, {r['complete']} "
            f"complete, {r['failed']} failed, {r['collapsed']} collapsed, hv {r['hv']:.4g}"
        )
        studies.append(r)
    if ray_started:
        import ray

        ray.shutdown()

    # per study, then medians over seeds per sampler
    rows = []
    for s in studies:
        row = {k: s[k] for k in ("sampler", "seed", "complete", "failed", "collapsed", "hv")}
        row["wall_s"] = s["wall_s"]
        for b, limit in BUDGETS.items():
            row[f"test@{b}%"] = best_test(s["trials"], limit)
        rows.append(row)
    cols = ["sampler", "seed", "complete", "failed", "collapsed", "hv", "wall_s"]
    cols += [f"test@{b}%" for b in BUDGETS]
    print_table(rows, cols, "per study (test accuracy of the best trial on validation, ≤ budget)")
    medians = []
    for label in COLORS:
        mine = [r for r in rows if r["sampler"] == label]
        if not mine:
            continue
        m: dict[str, Any] = {"sampler": label, "studies": len(mine)}
        m["trials"] = _median([r["complete"] for r in mine])
        m["collapsed"] = _median([r["collapsed"] for r in mine])
        m["hv"] = _median([r["hv"] for r in mine])
        for b in BUDGETS:
            m[f"test@{b}%"] = _median([r[f"test@{b}%"] for r in mine])
        medians.append(m)
    sweep = sweep_figures(ref) if args.dataset == "fashion-mnist" else None
    mcols = ["sampler", "studies", "trials", "collapsed", "hv", *[f"test@{b}%" for b in BUDGETS]]
    print_table(
        medians + ([sweep] if sweep else []),
        mcols,
        f"medians over {args.seeds} seed(s); the λ sweep: best test ≤ budget, hv on its val",
    )

    # the best under each budget over every study, selected on validation
    pool = [t for s in studies for t in tagged(s)]
    best: dict[str, dict[str, Any] | None] = {}
    brow = []
    for b, limit in BUDGETS.items():
        ranked = ranked_under(pool, limit)
        best[b] = ranked[0] if ranked else None
        t = best[b] or {}
        brow.append(
            {
                "budget": f"{b}% (≤ {limit})",
                "sampler": t.get("sampler"),
                "seed": t.get("seed"),
                "trial": t.get("number"),
                "params": t.get("params"),
                "val": t.get("val"),
                "test": t.get("test"),
            }
        )
    recipes = recipe(pool, args, prev_recipes, True, ref[1]) if args.recipe else {}
    free = recipe(pool, args, prev_recipes, False, ref[1]) if args.recipe_free else {}
    if args.recipe:
        for row, b in zip(brow, BUDGETS, strict=True):
            r = recipes.get(b) or {}
            row |= {f"recipe_{k}": r.get(k) for k in ("key", "params", "val", "test")}
            if args.recipe_free:
                row["free_test"] = (free.get(b) or {}).get("test")
    source = (
        f"recipe ({args.recipe_epochs} epochs, 5 candidates re-trained, budget held)"
        if args.recipe
        else "search"
    )
    bcols = ["budget", "sampler", "seed", "trial", "params", "val", "test"]
    if args.recipe:
        bcols += ["recipe_key", "recipe_params", "recipe_val", "recipe_test"]
        bcols += ["free_test"] if args.recipe_free else []
    print_table(brow, bcols, f"best ≤ budget over all studies, on val; best_test from: {source}")

    trial_rows = [
        {k: t[k] for k in ("sampler", "seed", "number", "state", "val", "test", "params")}
        | {"collapsed": t["collapsed"]}
        for t in pool
    ]
    if trial_rows:
        print(f"trials: {write_csv('search_quality.csv', trial_rows)}")
    print(f"figure: {plot(studies)}")

    hv = {m["sampler"]: m["hv"] for m in medians}
    mo = {k: v for k, v in hv.items() if k in MO_SAMPLERS and v is not None}
    best_sampler = max(mo, key=mo.__getitem__) if mo else None
    rnd = hv.get("random96")
    ratio = mo[best_sampler] / rnd if best_sampler and rnd else None
    if args.recipe:
        tests = {b: (recipes[b]["test"] if b in recipes else None) for b in BUDGETS}
    else:
        tests = {b: (best[b] or {}).get("test") for b in BUDGETS}
    pass_hv = ratio is not None and ratio >= 1.0
    pass_acc = (tests["0.3"] or 0.0) >= 0.85 and (tests["0.15"] or 0.0) >= 0.82
    emit(
        {
            "hv": hv,
            "best_test": tests,
            "best_test_source": "recipe" if args.recipe else "search",
            **(
                {"best_test_free": {b: (free.get(b) or {}).get("test") for b in BUDGETS}}
                if args.recipe_free
                else {}
            ),
            "best_sampler": best_sampler,
            "hv_best_over_random": ratio,
            "collapsed": {
                lab: sum(r["collapsed"] for r in rows if r["sampler"] == lab) for lab in hv
            },
            "pass_hv": pass_hv,
            "pass_accuracy": pass_acc,
            "pass": pass_hv and pass_acc,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "new_dims": not args.no_new_dims,
            "reference": ref,
        }
    )


if __name__ == "__main__":
    main()
