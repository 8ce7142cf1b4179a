"""MO-ASHA: hand-computed rung orders and decisions, the Ray scheduler on fake and real trials.

Points are ``(metric as minimised, log10 parameters)``. Within a front the ε-net starts at the
point with the best metric and then takes the point farthest from those already taken.
"""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest

from prunetune.search._moasha import (
    Rungs,
    eps_net_order,
    nondominated_fronts,
    rung_levels,
    rung_order,
    scale_unit,
)

# A front of four points whose objectives differ in scale: the metric spans 0.3, log10 params 3.
# Scaled to [0, 1] they are A (0, 1), B (1, 0), C (0.1, 0.6), D (0.5, 0.2); E (1, 1) is dominated
# by all four and leaves both ranges as they are.
A, B, C, D, E = (-0.90, 5.0), (-0.60, 2.0), (-0.87, 3.8), (-0.75, 2.6), (-0.60, 5.0)


# -- rung levels -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grace", "eta", "epochs", "levels"),
    [
        (1, 3, 10, (1, 3, 9)),
        (2, 2, 8, (2, 4)),  # 8 is the last epoch: nothing is decided there
        (1, 3, 9, (1, 3)),
        (1, 2, 1, ()),
        (3, 3, 3, ()),
    ],
)
def test_rung_levels(grace, eta, epochs, levels):
    assert rung_levels(grace, eta, epochs) == levels
    assert Rungs(grace, eta, epochs).levels == levels


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grace_epochs": 0}, "grace_epochs=0"),
        ({"reduction_factor": 1}, "reduction_factor=1"),
        ({"reduction_factor": 2.5}, "reduction_factor=2.5"),
        ({"max_epochs": True}, "max_epochs=True"),
    ],
)
def test_rungs_reject_bad_settings(kwargs, match):
    args = {"grace_epochs": 1, "reduction_factor": 3, "max_epochs": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        Rungs(**args)


# -- ordering ----------------------------------------------------------------------------------
def test_fronts_minimise_both_and_keep_identical_points_together():
    pts = [(1.0, 2.0), (0.5, 3.0), (1.0, 2.0), (2.0, 3.0), (0.5, 1.0), (math.nan, 0.0)]
    # (0.5, 1) dominates all but itself; the two (1, 2) tie; (0.5, 3) and (1, 2) are incomparable
    assert nondominated_fronts(pts) == [[4], [0, 1, 2], [3]]
    assert nondominated_fronts([]) == []


def test_scale_unit_maps_each_objective_to_the_unit_interval():
    flat = [v for p in scale_unit([A, B, C, D, E]) for v in p]
    assert flat == pytest.approx([0, 1, 1, 0, 0.1, 0.6, 0.5, 0.2, 1, 1])
    # a constant objective scales to 0
    assert scale_unit([(1.0, 5.0), (3.0, 5.0), (2.0, 5.0)]) == [(0, 0), (1, 0), (0.5, 0)]


def test_eps_net_order_within_a_front_by_hand():
    # Arrival C, B, D, A. Scaled: seed A (best metric); distances to A: C √0.17 = 0.41,
    # B √2 = 1.41, D √0.89 = 0.94 → B. Nearest of {A, B}: C min(0.41, √1.17) = 0.41,
    # D min(0.94, √0.29 = 0.54) = 0.54 → D, then C.
    pts = [C, B, D, A]
    assert eps_net_order(scale_unit(pts)) == [3, 1, 2, 0]
    assert rung_order(pts) == [3, 1, 2, 0]
    # Unscaled, log10 params swamp the metric: C is 1.20 from A, D only 0.62 from B → C first.
    assert eps_net_order(pts) == [3, 1, 0, 2]


def test_eps_net_ties_go_to_the_earliest_arrival():
    # seed: first objective tied between 0 and 2 → 0; then 1 and 2 both at distance 1 → 1
    assert eps_net_order([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]) == [0, 1, 2]
    assert eps_net_order([(0.0, 1.0), (1.0, 1.0), (0.0, 0.0)]) == [0, 1, 2]
    assert eps_net_order([(0.0, 1.0), (0.0, 0.0), (1.0, 1.0)]) == [0, 1, 2]
    assert eps_net_order([(0.5, 0.5), (0.5, 0.5)]) == [0, 1]
    assert eps_net_order([]) == []


def test_rung_order_puts_fronts_first_and_non_finite_points_last():
    pts = [E, (math.inf, 1.0), A, B]
    assert rung_order(pts) == [2, 3, 0, 1]  # front {A, B} (A seeds), then E, then the inf


# -- decisions -----------------------------------------------------------------------------------
def test_a_rung_of_one_continues():
    rungs = Rungs(1, 3, 10)
    assert rungs.record("a", 1, 0.0, 9.0) is True
    assert rungs.points == {1: {"a": (0.0, 9.0)}, 3: {}, 9: {}}
    assert rungs.decisions[1] == {"a": True}


def test_epochs_without_a_rung_decide_nothing():
    rungs = Rungs(1, 3, 10)
    assert rungs.record("a", 1, -0.5, 3.0) is True
    got = [rungs.record("a", e, -0.5, 3.0) for e in range(2, 11)]
    #          epoch:  2     3     4     5     6     7     8     9     10
    assert got == [None, True, None, None, None, None, None, True, None]  # alone at 3 and 9


def test_identical_points_are_ordered_by_arrival():
    rungs = Rungs(1, 3, 10)
    assert rungs.record("a", 1, -0.5, 3.0) is True
    # same point: one front, the seed tie goes to "a"; ceil(2/3) = 1 place → "b" stops
    assert rungs.record("b", 1, -0.5, 3.0) is False
    # a third identical point: 1 place of ceil(3/3) = 1, "c" third
    assert rungs.record("c", 1, -0.5, 3.0) is False
    # η = 2: a 1/1 → on; b 2nd of 2, 1 place; c 3rd of 3, 2 places; d 4th of 4, 2 places
    rungs = Rungs(1, 2, 10)
    assert [rungs.record(k, 1, -0.5, 3.0) for k in "abcd"] == [True, False, False, False]


def test_a_newcomer_dominating_every_recorded_point_continues():
    rungs = Rungs(1, 3, 10)
    # a chain: each point dominated by the one before
    chain = [(-0.50 + 0.02 * i, 3.0 + 0.1 * i) for i in range(8)]
    got = [rungs.record(f"t{i}", 1, *p) for i, p in enumerate(chain)]
    assert got == [True] + [False] * 7  # the k-th arrival is last of k with ceil(k/3) < k places
    newcomer = (-0.90, 1.0)
    pts = [*chain, newcomer]
    order = rung_order(pts)
    assert order == [8, 0, 1, 2, 3, 4, 5, 6, 7]  # alone in the first front
    # Syne Tune's reading takes that order for per-point priorities: the newcomer's "rank" is
    # the value at its index, order[-1] / n = 7/9 > 1/η, so it would stop the best trial.
    assert order[-1] / len(order) > 1 / 3
    assert rungs.record("new", 1, *newcomer) is True


def test_the_eps_net_decides_within_a_front():
    rungs = Rungs(1, 2, 2)  # one rung, at epoch 1; η = 2
    # A: alone → on. B: {A, B} one front, A seeds, 1 place → off. E: dominated, 2nd front of
    # 3, 2 places → off. C: front A, B, C (C nearest to A) → third of 4, 2 places → off.
    # D: front order A, B, D, C (see the ε-net test) → third of 5, ceil(5/2) = 3 places → on;
    # by unscaled distances D would be fourth and stop.
    got = [rungs.record(k, 1, *p) for k, p in zip("ABECD", (A, B, E, C, D), strict=True)]
    assert got == [True, False, False, False, True]
    assert eps_net_order([A, B, C, D]) == [0, 1, 2, 3]  # unscaled: D last (C first)


def test_each_rung_decides_once():
    rungs = Rungs(1, 3, 10)
    assert rungs.record("a", 1, -0.5, 3.0) is True
    assert rungs.record("b", 1, -0.4, 3.0) is False
    # a restarted trial reports epoch 1 again, now better: nothing is decided or replaced
    assert rungs.record("b", 1, -0.9, 1.0) is None
    assert rungs.points[1] == {"a": (-0.5, 3.0), "b": (-0.4, 3.0)}
    assert rungs.decisions[1] == {"a": True, "b": False}


def test_a_skipped_rung_is_decided_with_the_next_epoch_and_a_stop_ends_there():
    rungs = Rungs(1, 3, 10)
    assert rungs.record("a", 3, -0.5, 3.0) is True  # epochs 1..3 in one row: rungs 1 and 3
    assert rungs.points[1] == rungs.points[3] == {"a": (-0.5, 3.0)}
    assert rungs.record("b", 3, -0.4, 3.0) is False  # stopped at rung 1 ...
    assert "b" not in rungs.points[3]  # ... so never recorded at rung 3


def test_rebuild_from_history_then_decide_a_new_arrival():
    rungs = Rungs(1, 3, 4)  # rungs 1 and 3
    history = {
        ("trial", 0): {1: (-0.50, 3.0), 2: (-0.60, 3.0), 3: (-0.70, 3.0), 4: (-0.75, 3.0)},
        # stopped at epoch 1; its epochs 2-3 travelled in the same batch and are left out
        ("trial", 1): {1: (-0.40, 3.0), 2: (-0.45, 3.0), 3: (-0.90, 1.0)},
        ("trial", 2): {1: (-0.55, 2.0)},  # running when the driver died
    }
    rungs.rebuild(history, stopped={("trial", 1): 1})
    assert list(rungs.points[1]) == [("trial", 0), ("trial", 1), ("trial", 2)]
    assert rungs.points[3] == {("trial", 0): (-0.70, 3.0)}
    assert rungs.decisions == {1: {}, 3: {}}
    # rung 1: fronts [t2], [x], [t0], [t1] → x second of 4, 2 places → on
    assert rungs.record("x", 1, -0.52, 2.5) is True
    # rung 3: {t0, x} one front, t0 (better metric) seeds, 1 place → x stops
    assert rungs.record("x", 3, -0.65, 2.5) is False
    # without the rebuilt points x would have been alone at rung 3
    assert Rungs(1, 3, 4).record("x", 3, -0.65, 2.5) is True


def test_an_excused_trial_passes_its_rungs_unjudged_and_takes_no_place():
    rungs = Rungs(1, 3, 10)  # rungs 1, 3, 9
    assert rungs.record("a", 1, -0.5, 3.0) is True
    assert rungs.record("b", 1, -0.4, 3.0) is False
    rungs.excuse("m", 1)  # a late pruner, still dense at epoch 1
    assert rungs.points[1] == {"a": (-0.5, 3.0), "b": (-0.4, 3.0)}
    assert rungs.excused[1] == {"m"} and rungs.decisions[1] == {"a": True, "b": False}
    # c, second of three at rung 1, gets ceil(3/3) = 1 place: stopped as if m had never come
    # (counted, m would make four and two places)
    assert rungs.record("c", 1, -0.45, 2.0) is False
    # m settled at epoch 2 (no rung): rung 1 stays passed, nothing is lent to it
    assert rungs.record("m", 2, -0.9, 1.0) is None and "m" not in rungs.points[1]
    # rung 3 judges m on its own epoch-3 values: alone there, it continues
    assert rungs.record("m", 3, -0.8, 1.0) is True
    assert rungs.points[3] == {"m": (-0.8, 1.0)} and "m" not in rungs.excused[3]
    # one row excuses every rung it reaches (epochs 1..3 in one batch)
    rungs.excuse("n", 3)
    assert "n" in rungs.excused[1] and "n" in rungs.excused[3] and "n" not in rungs.excused[9]
    # a restored checkpoint from before rungs excused anything: none excused
    old = Rungs(1, 3, 10)
    del old.excused
    assert pickle.loads(pickle.dumps(old)).excused == {1: set(), 3: set(), 9: set()}


def test_rebuild_excuses_the_epochs_that_were_excused():
    rungs = Rungs(1, 3, 4)  # rungs 1 and 3
    rungs.rebuild(
        {("trial", 0): {1: None, 2: None, 3: (-0.7, 2.0)}, ("trial", 1): {1: (-0.5, 3.0)}}
    )
    assert rungs.points == {1: {("trial", 1): (-0.5, 3.0)}, 3: {("trial", 0): (-0.7, 2.0)}}
    assert rungs.excused == {1: {("trial", 0)}, 3: set()}


# -- the Ray Tune scheduler ----------------------------------------------------------------------
def _row(epoch, acc, params):
    return {"epoch": epoch, "val_accuracy": acc, "params": params}


@pytest.fixture
def moasha():
    from prunetune.search._moasha import MOASHA

    return MOASHA


def test_scheduler_batched_rows(moasha):
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
    s = moasha("val_accuracy", "max", max_epochs=10, grace_epochs=1, reduction_factor=3)
    assert isinstance(s, FIFOScheduler)
    assert s.rungs.levels == (1, 3, 9)

    def result(trial, rows, **extra):
        return s.on_trial_result(None, SimpleNamespace(trial_id=trial), {"epoch_rows": rows, **extra})  # fmt: skip

    a = [_row(1, 0.5, 1000), _row(2, 0.6, 1000), _row(3, 0.7, 1000)]
    assert result("a", a) == CONTINUE  # alone at rungs 1 and 3
    assert result("b", [_row(1, 0.4, 1000)]) == STOP  # dominated by a: 1 place of 2
    assert s.stopped == {"b": 1}
    assert result("b", [_row(2, 0.9, 10)]) == STOP  # stopped stays stopped
    # c: first at rung 1 (dominates a, b); at rung 3 a dominates it → stopped at 3
    c = [_row(1, 0.6, 100), _row(2, 0.62, 1000), _row(3, 0.65, 1000)]
    assert result("c", c) == STOP
    assert s.stopped == {"b": 1, "c": 3}
    # d: last of 4 at rung 1 (2 places); its rung-3 row in the same batch is ignored
    d = [_row(1, 0.3, 10_000), _row(2, 0.9, 10), _row(3, 0.99, 10)]
    assert result("d", d) == STOP
    assert s.stopped["d"] == 1 and "d" not in s.rungs.points[3]
    # Tune re-sends a finished trial's last result (done=True): nothing is decided again
    assert result("a", a, done=True) == CONTINUE
    # a final result's rows count for later trials but stop nothing: that trial has finished
    assert result("e", [_row(1, 0.1, 1e6)], final=1) == CONTINUE
    assert "e" not in s.stopped and s.rungs.decisions[1]["e"] is False
    assert s.rungs.points[1]["a"] == (-0.5, 3.0)  # −accuracy, log10 params
    assert "rungs at epochs [1, 3, 9]" in s.debug_string()


def test_scheduler_reads_minimised_metrics_and_plain_results(moasha):
    from ray.tune.schedulers import TrialScheduler

    s = moasha("val_loss", "min", max_epochs=4, size_metric="kept", epoch_attr="ep")
    plain = {"ep": 1, "val_loss": 0.25, "kept": 0.0}  # no epoch_rows: the result is one row
    assert s.on_trial_result(None, SimpleNamespace(trial_id="a"), plain) == TrialScheduler.CONTINUE
    assert s.rungs.points[1] == {"a": (0.25, 0.0)}  # params clamp to 1 before log10
    with pytest.raises(ValueError, match=r"\['kept'\]"):
        s.on_trial_result(None, SimpleNamespace(trial_id="b"), {"epoch_rows": [{"ep": 1, "val_loss": 1}]})  # fmt: skip
    with pytest.raises(ValueError, match="mode='maximize'"):
        moasha("val_loss", "maximize", max_epochs=4)


def test_scheduler_search_properties_save_restore_and_rebuild(moasha, tmp_path):
    s = moasha("val_accuracy", "max", max_epochs=4)
    assert s.set_search_properties(None, None)
    assert s.set_search_properties("val_accuracy", "max")
    assert not s.set_search_properties("val_loss", "min")
    s.rebuild(
        {("trial", 0): [_row(1, 0.5, 1000), _row(3, 0.7, 1000)], ("trial", 1): [_row(1, 0.4, 100)]}
    )
    assert s.rungs.points == {
        1: {("trial", 0): (-0.5, 3.0), ("trial", 1): (-0.4, 2.0)},
        3: {("trial", 0): (-0.7, 3.0)},
    }
    s.on_trial_result(None, SimpleNamespace(trial_id="x"), {"epoch_rows": [_row(1, 0.1, 1e5)]})
    assert s.stopped == {"x": 1}
    s.save(str(tmp_path / "sched.pkl"))
    t = moasha("val_accuracy", "max", max_epochs=4)
    t.restore(str(tmp_path / "sched.pkl"))
    assert t.rungs.points == s.rungs.points and t.stopped == {"x": 1}
    u = pickle.loads(pickle.dumps(s))  # Tune pickles its scheduler with the Tuner
    assert type(u) is moasha and u.stopped == {"x": 1}


def test_scheduler_excuses_settling_rows_and_rebuilds_them(moasha):
    from ray.tune.schedulers import TrialScheduler

    s = moasha("val_accuracy", "max", max_epochs=4)  # rungs 1 and 3
    a = [_row(1, 0.9, 100), _row(3, 0.9, 100)]
    assert (
        s.on_trial_result(None, SimpleNamespace(trial_id="a"), {"epoch_rows": a})
        == TrialScheduler.CONTINUE
    )
    # dense and far behind at epoch 1, but settling: passes rung 1; at rung 3 a dominates it
    m = [{**_row(1, 0.1, 1e5), "settling": 1.0}, _row(3, 0.5, 1e3)]
    res = s.on_trial_result(None, SimpleNamespace(trial_id="m"), {"epoch_rows": m})
    assert res == TrialScheduler.STOP and s.stopped == {"m": 3}
    assert set(s.rungs.points[1]) == {"a"} and s.rungs.excused[1] == {"m"}
    assert "1 passed a rung unjudged" in s.debug_string()
    t = moasha("val_accuracy", "max", max_epochs=4)
    t.rebuild({("trial", 0): a, ("trial", 1): m}, stopped={("trial", 1): 3})
    assert t.rungs.points == {1: {("trial", 0): (-0.9, 2.0)}, 3: {("trial", 0): (-0.9, 2.0), ("trial", 1): (-0.5, 3.0)}}  # fmt: skip
    assert t.rungs.excused == {1: {("trial", 1)}, 3: set()}


def test_real_pruners_pass_the_rungs_until_their_prune_has_settled(moasha):
    # Digits, 6 epochs, rungs 1 and 3. Magnitude prunes to 3% at the end of epoch 3: dense (at
    # its budget's count) before, at chance that epoch, recovering after. Judged at rung 3 it
    # was stopped there, though it ends with fewer parameters than the Gumbel trial, i.e. on
    # the front beside it: every late pruner and lottery ticket stood to be cut this way.
    from prunetune.search.trial import run_trial

    base = {"dataset": "digits", "model": {"family": "mlp", "widths": [32]}, "threads": 1}
    base["train"] = {"epochs": 6, "lr": 0.01}
    gumbel = run_trial({**base, "method": {"name": "gumbel", "lam": 1.0}})
    mag = run_trial({**base, "method": {"name": "magnitude", "density": 0.03, "prune_at": 0.5}})
    assert not any("settling" in r for r in gumbel.history)  # learned masks: nothing scheduled
    # the prune at step 3 × per epoch; a full epoch after it by the end of epoch 4
    assert [r["epoch"] for r in mag.history if "settling" in r] == [1, 2, 3]
    assert mag.history[2]["val_accuracy"] < 0.11 < mag.history[3]["val_accuracy"]
    assert mag.metrics["params"] < gumbel.metrics["params"]

    def decide(strip):
        s = moasha("val_accuracy", "max", max_epochs=6)
        for key, out in (("g", gumbel), ("m", mag)):
            rows = [{k: v for k, v in r.items() if not (strip and k == "settling")} for r in out.history]  # fmt: skip
            s.on_trial_result(None, SimpleNamespace(trial_id=key), {"epoch_rows": rows})
        return s

    assert decide(strip=True).stopped == {"m": 3}  # what the rungs did before rows said settling
    s = decide(strip=False)
    assert s.stopped == {} and s.rungs.excused == {1: {"m"}, 3: {"m"}}


# Epoch-1 and epoch-3 (accuracy, params) of six trials; rungs at epochs 1 and 3 (η = 3, 4 epochs).
CURVES = {
    0: (0.50, 0.70, 1000),  # rung 1: alone → on; rung 3: alone → on
    1: (0.40, 0.45, 1000),  # rung 1: dominated by 0, 1 place of 2 → stop at 1
    2: (0.60, 0.80, 100),  # rung 1: dominates all → on; rung 3: dominates 0 → on
    3: (0.45, 0.50, 10),  # rung 1: front {2, 3}, second of 4, 2 places → on;
    #                        rung 3: front {2, 3}, second of 3, 1 place → stop at 3
    4: (0.30, 0.35, 10_000),  # rung 1: dominated, 2 places of 5 → stop at 1
    # rung 1: front {2, 3, 5}; scaled 2 (0, 1/3), 3 (1/2, 0), 5 (1/15, 0.23): the ε-net takes
    # 2, then 3 (0.60 from 2; 5 is 0.12 from 2) → 5 third of 6, 2 places → stop at 1
    5: (0.58, 0.60, 50),
}


def test_moasha_in_a_real_tuner(ray_local, moasha, tmp_path):
    from ray import tune

    curves = CURVES

    def trainable(config):  # nested: Ray pickles it by value (workers cannot import tests)
        from ray import tune

        acc1, acc3, params = curves[config["i"]]
        accs = [acc1, (acc1 + acc3) / 2, acc3, acc3 + 0.01]
        rows = [
            {"epoch": e, "val_accuracy": a, "params": params} for e, a in enumerate(accs, start=1)
        ]
        tune.report({**rows[0], "epoch_rows": rows[:1]})
        tune.report({**rows[2], "epoch_rows": rows[1:3]})  # epochs 2 and 3 in one batch
        tune.report({**rows[3], "epoch_rows": rows[3:], "final": 1})

    sched = moasha("val_accuracy", "max", max_epochs=4, grace_epochs=1, reduction_factor=3)
    tuner = tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(CURVES))},
        # one at a time: trials reach each rung in the order 0..5
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="moasha", verbose=0),
    )
    grid = tuner.fit()
    by_i = {r.config["i"]: r.metrics for r in grid}
    last = {i: (m["epoch"], bool(m.get("final"))) for i, m in by_i.items()}
    assert last == {0: (4, True), 1: (1, False), 2: (4, True), 3: (3, False), 4: (1, False), 5: (1, False)}  # fmt: skip
    stopped = {by_i[i]["trial_id"]: e for i, (e, final) in last.items() if not final}
    assert sched.stopped == stopped
