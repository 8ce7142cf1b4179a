"""Contract suite: every registered pruning method keeps the same promises.

Parametrised over ``prunetune.prune.METHODS``, so a newly registered method is covered without
editing this file: masks are exactly 0/1 and shaped like the weights, the compact export computes
what the masked model computes, parameter counts are exact, seeds are API, and target-density
methods land on their target.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from prunetune.datasets import batches, load_dataset
from prunetune.models import build_model, cnn_spec, mlp_spec
from prunetune.prune import (
    METHODS,
    TrainConfig,
    count_params,
    export_compact,
    make_method,
    prunable_layers,
    train,
)
from prunetune.prune._hparams import validate_config
from prunetune.prune._scoring import live_params
from prunetune.prune._topology import raw_bias, raw_weight

NAMES = sorted(METHODS)
MLP = mlp_spec((1, 8, 8), [24, 16], 10)
CNN = cnn_spec((1, 8, 8), [4], [12], 10)
TRAIN = TrainConfig(epochs=2, batch_size=64, lr=1e-2, seed=0)
DENSITY = 0.2
NEURONS = 0.3


def method_config(name: str) -> dict:
    """Defaults, plus a budget that prunes visibly on a tiny model."""
    table = METHODS[name].hparams
    cfg: dict = {"name": name}
    if "density" in table:
        cfg["density"] = DENSITY
    if "neurons" in table:
        cfg["neurons"] = NEURONS
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine two threads wait
    on each other (the suite ran ~30x slower with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


class Run:
    def __init__(self, data, name: str, spec: dict, seed: int) -> None:
        torch.manual_seed(seed)
        self.spec = spec
        self.model = build_model(spec)
        self.method = make_method(method_config(name))
        cfg = replace(TRAIN, seed=seed)
        self.result = train(
            self.model,
            self.method,
            data,
            cfg,
            batches=lambda g: batches(data.x_train, data.y_train, cfg.batch_size, generator=g),
        )
        self.masks = self.method.masks()
        self.export = export_compact(self.model, spec, self.masks)
        self.layers = prunable_layers(self.model, spec["input_shape"])


@pytest.fixture(scope="module")
def runs(data):
    cache: dict = {}

    def get(name: str, spec: dict = MLP, seed: int = 0, fresh: bool = False) -> Run:
        key = (name, id(spec), seed)
        if fresh:
            return Run(data, name, spec, seed)
        if key not in cache:
            cache[key] = Run(data, name, spec, seed)
        return cache[key]

    return get


def independent_count(run: Run) -> int:
    """Count kept parameters of an MLP by explicit graph reachability over unit sets."""
    layers = run.layers
    edges = []  # per layer: set of (out, in) with a kept nonzero weight
    for layer in layers:
        w = raw_weight(layer.module).detach() * run.masks[layer.name].weight
        edges.append({(int(i), int(j)) for i, j in torch.nonzero(w).tolist()})
    # varying: reachable from the inputs; used: reaches the outputs. Inputs are pixels here.
    inputs = set(range(raw_weight(layers[0].module).shape[1]))
    varying = [inputs]
    for e in edges:
        varying.append({i for i, j in e if j in varying[-1]})
    used = [set(range(layers[-1].out_units))]
    for e in reversed(edges[1:]):
        used.insert(0, {j for i, j in e if i in used[0]})
    total, prev = 0, inputs
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        kept = set(range(layer.out_units)) if last else varying[k + 1] & used[k]
        total += sum(1 for i, j in edges[k] if i in kept and j in prev)
        total += len(kept) if raw_bias(layer.module) is not None else 0
        prev = kept
    return total


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_masks_are_binary_and_shaped_like_the_weights(runs, name, spec):
    run = runs(name, spec)
    assert set(run.masks) == {layer.name for layer in run.layers}
    for layer in run.layers:
        m = run.masks[layer.name]
        assert m.weight.shape == raw_weight(layer.module).shape
        assert bool(((m.weight == 0) | (m.weight == 1)).all())
        if m.bias is not None:
            assert m.bias.shape == (layer.out_units,)
            assert bool(((m.bias == 0) | (m.bias == 1)).all())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_compact_model_computes_what_the_masked_model_computes(runs, data, name, spec):
    run = runs(name, spec)
    run.model.eval()
    with torch.no_grad():
        diff = (run.model(data.x_test) - run.export.model(data.x_test)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_exact(runs, name):
    run = runs(name)
    ex = run.export
    assert ex.params == count_params(ex.model)
    assert ex.params == independent_count(run)
    assert ex.params == live_params(run.layers, {n: m.weight for n, m in run.masks.items()})
    assert ex.params_dense == sum(p.numel() for p in build_model(MLP).parameters())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_results(runs, name):
    a, b = runs(name), runs(name, fresh=True)
    # losses, val accuracy and method stats, epoch by epoch
    assert a.result.history == b.result.history
    assert a.export.params == b.export.params
    for n in a.masks:
        assert torch.equal(a.masks[n].weight, b.masks[n].weight)
    sa, sb = a.export.model.state_dict(), b.export.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_different_seed_gives_different_results(runs, name):
    a, b = runs(name), runs(name, seed=1)
    assert [r["loss"] for r in a.result.history] != [r["loss"] for r in b.result.history]
    sa, sb = a.export.model.state_dict(), b.export.model.state_dict()
    assert any(sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", [n for n in NAMES if "density" in METHODS[n].hparams])
def test_realised_density_is_at_most_and_close_to_the_target(runs, name):
    density = runs(name).export.density
    assert DENSITY - 0.01 <= density <= DENSITY


@pytest.mark.parametrize("name", [n for n in NAMES if "neurons" in METHODS[n].hparams])
def test_neuron_methods_reach_their_budget(runs, name):
    run = runs(name)
    budget = sum(max(1, round(NEURONS * layer.out_units)) for layer in run.layers[:-1])
    assert run.method.stats()["live_units"] == budget
    assert 0 < run.export.live_neurons <= budget


@pytest.mark.parametrize("name", NAMES)
def test_hparam_table_rejects_invalid_values_by_name(name):
    table = METHODS[name].hparams
    assert validate_config(table, {}) == {k: p.default for k, p in table.items()}
    for field, param in table.items():
        for bad in param.invalid_values():
            with pytest.raises(ValueError, match=rf"method\.{field} "):
                make_method({"name": name, field: bad})
