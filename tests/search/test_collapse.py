"""Collapse is a known outcome, not a front point; identical front points are shown once.

A collapsed trial is COMPLETE in the record with its true values (the sampler learns from
them), but it is off the front, the hypervolume, the selections, the figures and the registry's
aliases; the tables of every trial mark it. Studies are real Optuna storages, written by hand as
the searcher writes them (its own telling is tested through the searcher itself, without Ray).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from prunetune.search import pareto
from prunetune.search._front import (
    front_csv,
    front_html,
    front_of_study,
    point_label,
    records_of_study,
    trials_csv,
    write_front_files,
)
from prunetune.search._record import (
    ATTR_COLLAPSED,
    ATTR_CONFIG,
    ATTR_REFERENCE,
    ATTR_RESULT,
    final_metrics,
)

LG2 = math.log10(2)  # log10(100) - log10(50) = log10(1000) - log10(500)


def _study(trials, storage=None, name="col"):
    """``trials``: ``(val_accuracy, params, collapsed)``; ``collapsed`` None writes a result
    without the key (a study from before trials reported it). Reference (0, 1000)."""
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_accuracy", "params"])
    study.set_user_attr(ATTR_REFERENCE, [0.0, 1000.0])
    for acc, params, collapsed in trials:
        result = {"val_accuracy": acc, "params": params, "params_dense": 1000, "test_accuracy": acc}
        if collapsed is not None:
            result["collapsed"] = int(collapsed)
        attrs = {
            ATTR_RESULT: result,
            ATTR_CONFIG: {"method": {"name": "gumbel", "lam": 1.0}, "train": {"lr": 0.01}},
        }
        if collapsed:
            attrs[ATTR_COLLAPSED] = True
        study.add_trial(optuna.trial.create_trial(values=[acc, params], user_attrs=attrs))
    return study


# trial 1 collapsed at a point that dominates every other trial
COLLAPSE = [(0.80, 100, 0), (0.95, 10, 1), (0.90, 500, 0), (0.70, 50, 0)]
# on (acc, log10 params) from (0, log10 1000): steps at 50, 100, 500 params
HV_WITHOUT_1 = LG2 * 0.70 + (1 - LG2) * 0.80 + LG2 * 0.90
HV_WITH_1 = 2 * 0.95  # what the collapsed point alone would claim: (3 - log10 10) * 0.95


def _trials(f, idx):
    return [f.records[i].trial for i in idx]


def _hovered(page: str, n: int) -> bool:
    """Whether the plotly page has a point whose hover names trial ``n`` (plotly's JSON
    escapes ``<``)."""
    return f"\\u003cb\\u003etrial {n}\\u003c" in page


def test_a_collapsed_trial_keeps_its_values_but_is_off_the_front_hv_and_selections():
    study = _study(COLLAPSE)
    t = study.trials[1]
    assert t.state.name == "COMPLETE" and t.values == [0.95, 10.0]  # the sampler sees these
    f = front_of_study(study)
    assert _trials(f, f.front) == [3, 0, 2]  # by params ascending; trial 1 absent
    assert f.points[1] is None and f.ranks[1] is None
    assert f.records[1].measured == (0.95, 10.0)
    assert f.hypervolume == pytest.approx(HV_WITHOUT_1)
    assert f.hypervolume != pytest.approx(HV_WITH_1)
    # knee: normalised front (0, 0), (log10 2 / log10 10, 0.5), (1, 1); the middle one
    assert _trials(f, [f.knee, f.smallest, f.most_accurate]) == [0, 3, 2]
    assert 1 not in _trials(f, pareto.select(f.points, "all-pareto"))
    assert 1 not in _trials(f, pareto.select(f.points, "min-val-accuracy=0.9"))
    assert (f.finished, f.collapsed, f.failed) == (4, 1, 0)
    assert f.summary == "4 finished, 1 collapsed (off the front), 0 failed"
    data = f.to_json()
    assert data["trials_collapsed"] == 1 and data["trials_finished"] == 4
    assert [r["trial"] for r in data["front"]] == [3, 0, 2]


def test_the_tables_of_every_trial_mark_the_collapsed_one():
    f = front_of_study(_study(COLLAPSE))
    rows = {r["trial"]: r for r in f.trial_rows()}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[1]["collapsed"] is True and rows[1]["rank"] is None
    assert not rows[1]["on_front"] and rows[1]["val_accuracy"] == 0.95
    assert [rows[n]["collapsed"] for n in (0, 2, 3)] == [False] * 3
    assert [rows[n]["rank"] for n in (0, 2, 3)] == [0] * 3
    table = {r["trial"]: r for r in csv.DictReader(io.StringIO(trials_csv(f)))}
    assert (table["1"]["collapsed"], table["1"]["rank"], table["1"]["on_front"]) == (
        "true",
        "",
        "false",
    )
    assert (table["0"]["collapsed"], table["0"]["rank"], table["0"]["on_front"]) == (
        "false",
        "0",
        "true",
    )
    assert table["1"]["params"] == "10" and table["1"]["method.lam"] == "1.0"
    shown = [r["trial"] for r in csv.DictReader(io.StringIO(front_csv(f)))]
    assert shown == ["3", "0", "2"]
    page = front_html(f)
    assert not _hovered(page, 1) and all(_hovered(page, n) for n in (0, 2, 3))
    assert "1 collapsed (off the front)" in page


def test_identical_front_points_are_shown_once_with_their_count():
    # trials 0, 2, 3: the same point; 4 is dominated by it; 1 is the smallest
    trials = [(0.9, 100, 0), (0.8, 50, 0), (0.9, 100, 0), (0.9, 100, 0), (0.85, 200, 0)]
    f = front_of_study(_study(trials))
    assert _trials(f, f.front) == [1, 0, 2, 3]  # all of them rank first
    assert [_trials(f, g) for g in f.groups] == [[1], [0, 2, 3]]
    rows = f.front_rows()
    assert [(r["trial"], r["count"], r["same_as"]) for r in rows] == [(1, 1, []), (0, 3, [2, 3])]
    # the selections pick the trial shown: the lowest-numbered
    assert _trials(f, [f.knee, f.smallest, f.most_accurate]) == [0, 1, 0]
    assert point_label(f, f.groups[1]) == "#0 ×3 knee/most-accurate"
    assert point_label(f, f.groups[0]) == "#1 smallest"
    got = [
        (r["trial"], r["count"], r["same_as"]) for r in csv.DictReader(io.StringIO(front_csv(f)))
    ]
    assert got == [("1", "1", ""), ("0", "3", "2;3")]
    assert json.dumps("×3 (also 2, 3)")[1:-1] in front_html(f)  # plotly's JSON escapes ×
    # duplicates add no area: log10 50 → 100 at 0.8, then 100 → 1000 at 0.9
    hv = LG2 * 0.8 + 1.0 * 0.9
    assert f.hypervolume == pytest.approx(hv)
    assert front_of_study(_study([trials[0], trials[1]], name="once")).hypervolume == (
        pytest.approx(hv)
    )
    assert [r["trial"] for r in f.to_json()["front"]] == [1, 0]


def test_the_figures_show_each_point_once_and_leave_collapsed_trials_out(tmp_path):
    trials = [*COLLAPSE, (0.90, 500, 0), (0.90, 500, 0)]  # trials 4, 5 = trial 2's point
    f = front_of_study(_study(trials))
    files = write_front_files(f, tmp_path)
    assert sorted(p.name for p in files) == [
        "pareto_front.csv",
        "pareto_front.html",
        "pareto_front.json",
        "pareto_front.png",
        "trials.csv",
    ]
    assert (tmp_path / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [point_label(f, g) for g in f.groups] == [
        "#3 smallest",
        "#0 knee",
        "#2 ×3 most-accurate",
    ]
    data = json.loads((tmp_path / "pareto_front.json").read_text())
    assert [(r["trial"], r["count"]) for r in data["front"]] == [(3, 1), (0, 1), (2, 3)]
    assert f.hypervolume == pytest.approx(HV_WITHOUT_1)


def test_older_results_without_the_key_are_not_collapsed_and_the_result_alone_suffices():
    study = _study([(0.8, 100, None), (0.9, 200, 0)])
    # a result saying collapsed, told without the user attribute: the stored result decides
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.95, 10], user_attrs={ATTR_RESULT: {"val_accuracy": 0.95, "collapsed": 1}}
        )
    )
    assert [r.collapsed for r in records_of_study(study)] == [False, False, True]
    f = front_of_study(study)
    assert _trials(f, f.front) == [0, 1] and f.collapsed == 1


def test_final_metrics_keep_the_collapse_flag():
    got = final_metrics({"val_accuracy": 0.1, "params": 10, "collapsed": 1, "done": True})
    assert got == {"val_accuracy": 0.1, "params": 10, "collapsed": 1}


def test_the_searcher_tells_a_collapsed_trial_complete_with_its_values_and_the_tag(tmp_path):
    from prunetune.search._record import open_storage, searcher_class

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = searcher_class()(
        space=lambda t: {"trial_config": {"lr": t.suggest_float("lr", 1e-3, 1e-1)}},
        metric=["val_accuracy", "params"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=open_storage(url, 60.0),
        n_trials=2,
        checkpoints={},
        session="test",
    )
    try:
        for tid, collapsed in (("a", 1), ("b", 0)):
            assert isinstance(search.suggest(tid), dict)
            result = {"val_accuracy": 0.1, "params": 10.0, "collapsed": collapsed}
            search.on_trial_complete(tid, {**result, "training_iteration": 2})
    finally:
        search.close()
    a, b = optuna.load_study(study_name="s", storage=url).trials
    assert a.state.name == b.state.name == "COMPLETE"
    assert a.values == b.values == [0.1, 10.0]  # true values: the sampler learns the region
    assert a.user_attrs[ATTR_COLLAPSED] is True and a.user_attrs[ATTR_RESULT]["collapsed"] == 1
    assert ATTR_COLLAPSED not in b.user_attrs and b.user_attrs[ATTR_RESULT]["collapsed"] == 0


def test_the_pareto_command_counts_collapsed_trials_and_shows_duplicates_once(tmp_path):
    from prunetune.search.cli import app

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study([*COLLAPSE, (0.90, 500, 0), (0.90, 500, 0)], storage=storage, name="cli")
    runner = CliRunner()
    base = ["pareto", "cli", "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "6 finished, 1 collapsed (off the front), 0 failed" in text
    assert "×3" in text
    res = runner.invoke(app, [*base, "--json"])
    data = json.loads(res.stdout)
    assert [(r["trial"], r["count"]) for r in data["front"]] == [(3, 1), (0, 1), (2, 3)]
    assert data["trials_collapsed"] == 1
    res = runner.invoke(app, [*base, "--all", "--json"])
    marks = {
        r["trial"]: (r["collapsed"], r["on_front"], r["shown_as"])
        for r in json.loads(res.stdout)["trials"]
    }
    assert marks == {
        0: (False, True, None),
        1: (True, False, None),
        2: (False, True, None),
        3: (False, True, None),
        4: (False, False, 2),  # on the front, at trial 2's point: shown by trial 2
        5: (False, False, 2),
    }
    res = runner.invoke(app, [*base, "--all"])
    assert res.exit_code == 0 and "collapsed" in res.output


# -- real trials: the MLflow tag and the registry's aliases -----------------------------------
SPEC = {"name": "colreg", "dataset": "digits", "search": {"sampler": "random"}}
CONFIGS = [
    {
        "dataset": "digits",
        "model": {"widths": [w]},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.02, "seed": i},
        "method": {"name": "gumbel", "lam": lam, "granularity": "weight"},
        "threads": 1,
    }
    for i, (w, lam) in enumerate([(16, 0.01), (8, 1.0)])
]


def test_a_collapsed_trial_is_tagged_in_mlflow_and_never_gets_an_alias(tmp_path):
    """Two real trials; the one every alias would choose alone (the most accurate: always on
    the front) is told collapsed, as the searcher tells it. Its run is tagged, never on the
    front, and registering the study puts every alias on the other trial."""
    from mlflow import MlflowClient

    from prunetune.search.registry import register_study
    from prunetune.search.tracking import StudyMirror
    from prunetune.search.trial import run_trial

    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(
        study_name="colreg", storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_accuracy", "params"])
    study.set_user_attr("spec", SPEC)
    results = [run_trial(cfg) for cfg in CONFIGS]
    pts = [(r.metrics["val_accuracy"], r.metrics["params"]) for r in results]
    bad = max(range(2), key=lambda n: (pts[n][0], -pts[n][1]))
    study.set_user_attr(ATTR_REFERENCE, [0.0, max(r.metrics["params_dense"] for r in results)])
    metrics, dirs = [], []
    for n, (cfg, res) in enumerate(zip(CONFIGS, results, strict=True)):
        metrics.append({**final_metrics(res.metrics), "collapsed": int(n == bad)})
        dirs.append(str(res.save(tmp_path / "checkpoints" / f"trial-{n}")))
        attrs = {ATTR_CONFIG: cfg, ATTR_RESULT: metrics[n], "driver": "gone"}
        if n == bad:
            attrs[ATTR_COLLAPSED] = True
        study.add_trial(optuna.trial.create_trial(values=list(pts[n]), user_attrs=attrs))
    mirror = StudyMirror(uri, "colreg", "colreg", SPEC, storage, explain=False)
    mirror.start(study)
    for n, cfg in enumerate(CONFIGS):
        mirror.trial_started(n, cfg)
        mirror.trial_epochs(n, results[n].history)
        mirror.trial_finished(n, metrics[n], dirs[n])
    mirror.close()

    c = MlflowClient(uri)
    runs = {n: c.get_run(mirror.runs[n]) for n in range(2)}
    assert runs[bad].data.tags.get("collapsed") == "true"
    assert "collapsed" not in runs[1 - bad].data.tags
    assert runs[bad].data.tags.get("pareto") is None
    assert runs[1 - bad].data.tags.get("pareto") == "true"
    parent = c.get_run(mirror.parent_run_id)
    assert parent.data.metrics["trials_collapsed"] == 1
    assert parent.data.metrics["trials_finished"] == 2 and parent.data.metrics["pareto_size"] == 1
    d = Path(c.download_artifacts(mirror.parent_run_id, "trials.csv", str(tmp_path / "p")))
    marked = {r["trial"]: r["collapsed"] for r in csv.DictReader(io.StringIO(d.read_text()))}
    assert marked == {str(bad): "true", str(1 - bad): "false"}

    versions = register_study(uri, "colreg")
    aliases = {a: v.run_id for v in versions for a in v.aliases}
    assert aliases == dict.fromkeys(("knee", "smallest", "most-accurate"), mirror.runs[1 - bad])
    assert all(v.trial != bad for v in versions)
    assert register_study(uri, "colreg", ["all-pareto"])[0].trial == 1 - bad


# -- the trial: detection and stopping --------------------------------------------------------


def test_a_trial_whose_output_no_longer_depends_on_its_input_stops_that_epoch_collapsed():
    from prunetune.search.trial import run_trial

    cfg = {
        "dataset": "digits",
        "model": {"family": "mlp", "widths": [16]},
        "method": {"name": "gumbel", "lam": 1000.0, "logit_lr": 1.0, "init_keep_prob": 0.5},
        "train": {"epochs": 6, "lr": 0.01, "finetune_epochs": 2},
        "threads": 1,
    }
    out = run_trial(cfg)
    # every weight pruned in the first epoch: the 10 output biases are all that is left
    assert [(r["epoch"], r["params"], r["collapsed"]) for r in out.history] == [(1, 10.0, 1.0)]
    assert out.metrics["collapsed"] == 1 and out.metrics["params"] == 10
    healthy = run_trial({**cfg, "method": {"name": "gumbel", "lam": 0.5}})
    assert healthy.metrics["collapsed"] == 0 and len(healthy.history) == 8
    assert all("collapsed" not in r for r in healthy.history)


def test_a_fall_to_chance_at_a_scheduled_prune_waits_an_epoch_before_it_counts_as_collapse():
    # magnitude prunes to 3% at the end of epoch 3 of 6: that epoch's validation is at chance
    # (digits: 10 classes), the next recovers. It was stopped there as collapsed, so one-shot
    # and lottery baselines at small budgets never fine-tuned (method_comparison: magnitude at
    # 1% of Fashion-MNIST LeNet-300-100 reported 6.7% instead of 81.3%).
    from prunetune.search.trial import run_trial

    cfg = {
        "dataset": "digits",
        "model": {"family": "mlp", "widths": [32]},
        "method": {"name": "magnitude", "density": 0.03, "prune_at": 0.5},
        "train": {"epochs": 6, "lr": 0.01},
        "threads": 1,
    }
    out = run_trial(cfg)
    acc = [r["val_accuracy"] for r in out.history]
    assert len(acc) == 6 and acc[2] < 0.11 < 0.25 < min(acc[3:]), acc
    assert out.metrics["collapsed"] == 0
    # still at chance a full epoch after the prune: collapsed, and stopped there
    dead = run_trial({**cfg, "method": {**cfg["method"], "density": 0.015}})
    assert [(r["epoch"], "collapsed" in r) for r in dead.history] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert dead.metrics["collapsed"] == 1


def test_the_collapse_probe_is_not_fooled_by_inputs_that_leave_every_unit_off():
    # One hidden ReLU unit that fires on one pixel above what the first eight validation
    # images show there: those eight all get the same output, the rest of the split does not.
    # With eight inputs the check called such a model collapsed and stopped its trial
    # (magnitude_neuron at 0.6% of Fashion-MNIST LeNet-300-100, 14 units live: stopped at
    # 25.6%, where unstopped it ends at 41.9%).
    import torch
    from torch import nn

    from prunetune.datasets._factory import load_data
    from prunetune.search.trial import PROBE_INPUTS, _input_independent, _probe_inputs

    data = load_data("digits")
    probe = _probe_inputs(data)
    first, _ = next(iter(data.eval_batches("val")))
    assert PROBE_INPUTS == 256 and torch.equal(probe, first[:256])
    x = probe.flatten(1)
    p = int((x.max(0).values - x[:8].max(0).values).argmax())  # brighter later than in the 8
    assert x[8:, p].max() > x[:8, p].max()
    model = nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1], 1), nn.ReLU(), nn.Linear(1, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, p] = 1.0
        model[1].bias.fill_(-float(x[:8, p].max()))
    assert _input_independent(model, probe[:8])  # what eight inputs concluded
    assert not _input_independent(model, probe)


def test_chance_level_allows_for_the_noise_of_a_small_validation_split():
    from types import SimpleNamespace

    import torch

    from prunetune.search.trial import _Chance

    def data(labels):
        y = torch.tensor(labels)
        return SimpleNamespace(eval_batches=lambda split: [(torch.zeros(len(y), 1), y)])

    big = _Chance.of(data([0] * 500 + [1] * 4500))  # 90% majority, 5,000 samples
    assert big.share == pytest.approx(0.9) and big.margin == pytest.approx(0.01)
    small = _Chance.of(data([0, 0, 0, 1, 1, 2, 3, 3]))  # 3/8 majority, 8 samples
    assert small.share == pytest.approx(0.375)
    assert small.margin == pytest.approx(2 * (0.375 * 0.625 / 8) ** 0.5)  # 0.342
    assert small.holds(0.7) and not small.holds(0.75)
