"""Contract suite: every registered pruning method keeps the same promises on every model.

Parametrised over ``prunetune.prune.METHODS`` and the model zoo (``zoo.py``: MLP, LeNet-5, the
resnet family, concatenated branches, MobileNetV2- and MobileNetV3-small-style nets, a
ResNet-18 layout), so a newly registered method is covered without editing this file: masks are
exactly 0/1 and shaped like the weights, the compact export computes what the masked model
computes, parameter counts are exact (against the compact model's nonzero entries and an
independent count), dead channel groups shrink the model, seeds are API, and target-density
methods land on their target. The zoo × method grid beyond the fast models is marked ``slow``.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from zoo import ZOO, output_layer, train_briefly

from prunetune.datasets import batches, load_dataset
from prunetune.models import build_model, cnn_spec, mlp_spec
from prunetune.prune import (
    METHODS,
    PruneContext,
    Topology,
    TrainConfig,
    count_params,
    export_compact,
    make_method,
    train,
)
from prunetune.prune._hparams import validate_config
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
        self.export = export_compact(self.model, self.masks, data.x_train[:2])
        self.topology = Topology.build(build_model(spec), data.x_train[:2])
        self.layers = [
            SimpleNamespace(name=layer.name, module=self.model.get_submodule(layer.name))
            for layer in self.topology.layers
        ]


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
    """Count kept parameters of an MLP over explicit unit sets, from the definition: a hidden
    unit is live when it keeps an incoming weight (else it is closed: bias masked, output 0)
    and a kept outgoing weight; weights count between live units (inputs are all live), biases
    of live units; output units are all kept. Only nonzero values count."""
    layers = run.layers
    ws = [raw_weight(layer.module).detach() * run.masks[layer.name].weight for layer in layers]
    n = len(layers)
    live = []
    for k in range(n - 1):
        has_in = {i for i, _ in torch.nonzero(run.masks[layers[k].name].weight).tolist()}
        has_out = {j for _, j in torch.nonzero(run.masks[layers[k + 1].name].weight).tolist()}
        live.append(has_in & has_out)
    live.append(set(range(ws[-1].shape[0])))
    total, prev = 0, set(range(ws[0].shape[1]))
    for k, layer in enumerate(layers):
        total += sum(1 for i, j in torch.nonzero(ws[k]).tolist() if i in live[k] and j in prev)
        b = raw_bias(layer.module)
        if b is not None:
            total += sum(1 for i in live[k] if float(b.detach()[i]) != 0.0)
        prev = live[k]
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
            assert m.bias.shape == (raw_weight(layer.module).shape[0],)
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
    weights = {n: m.weight for n, m in run.masks.items()}
    assert ex.params == run.topology.count(run.model, weights)
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
    budget = sum(max(1, round(NEURONS * g.size)) for g in run.topology.groups)
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


# -- any model: every method on every zoo model --------------------------------------------------

FAST_ZOO = ("mlp", "resnet8", "mobilenetv3_small")


def zoo_config(name: str) -> dict:
    cfg = method_config(name)
    if "density" in METHODS[name].hparams:
        cfg["density"] = 0.1
    if name == "gumbel":
        cfg["init_keep_prob"] = 0.5
    return cfg


def train_on_zoo(model_name: str, method_cfg: dict, seed: int = 0):
    """:func:`zoo.train_briefly` on a zoo model; ``(model, x, method, topology)``."""
    model, x = ZOO[model_name](seed=seed)
    method, topology, _ = train_briefly(model, x, method_cfg, seed)
    return model, x, method, topology


def _zoo_params(names):
    out = []
    for model_name in sorted(ZOO):
        for name in NAMES:
            grans = ("weight", "neuron") if name == "gumbel" else (None,)
            for gran in grans:
                slow = model_name not in FAST_ZOO and name not in names
                marks = (pytest.mark.slow,) if slow else ()
                ident = f"{model_name}-{name}" + (f"-{gran}" if gran else "")
                out.append(pytest.param(model_name, name, gran, id=ident, marks=marks))
    return out


@pytest.mark.parametrize(("model_name", "name", "granularity"), _zoo_params(("gumbel",)))
def test_every_method_prunes_every_zoo_model_exactly(model_name, name, granularity):
    cfg = zoo_config(name)
    if granularity:
        cfg["granularity"] = granularity
    if name == "kfac" and model_name not in ("mlp", "lenet5"):
        model, x = ZOO[model_name]()
        with pytest.raises(ValueError, match=r"^method kfac cannot prune layer \S+: "):
            METHODS["kfac"].check(Topology.build(model, x))
        return
    if name == "grasp" and model_name == "mobilenetv3_small":  # hardsigmoid: no 2nd derivative
        model, x = ZOO[model_name]()
        with pytest.raises(ValueError, match=r"^method grasp cannot prune MobileNetV3Small "):
            METHODS["grasp"].check(Topology.build(model, x))
        return
    model, x, method, topology = train_on_zoo(model_name, cfg)
    masks = method.masks()
    for layer in topology.layers:
        m = masks[layer.name]
        assert m.weight.shape == raw_weight(layer.module).shape
        assert bool(((m.weight == 0) | (m.weight == 1)).all())
    ex = export_compact(model, masks, topology=topology)
    model.eval()
    with torch.no_grad():
        diff = (model(x) - ex.model(x)).abs().max().item()
    assert diff <= 1e-4
    weights = {n: m.weight for n, m in masks.items()}
    assert ex.params == count_params(ex.model) == topology.count(model, weights)
    assert ex.params_dense == sum(p.numel() for p in ZOO[model_name]()[0].parameters())
    live = topology.live(weights)
    dense_numel = sum(p.numel() for p in ZOO[model_name]()[0].parameters())
    if not bool(live.all()):
        assert sum(p.numel() for p in ex.model.parameters()) < dense_numel
    assert output_layer(ex.model).out_features == 10  # the output layer keeps its units


def test_gumbel_neuron_gates_close_channels_after_the_norm_so_resnet_shrinks():
    model, _x, method, topology = train_on_zoo(
        "resnet8", {"name": "gumbel", "granularity": "neuron"}
    )
    masks = method.masks()
    ex = export_compact(model, masks, topology=topology)
    live = topology.live({n: m.weight for n, m in masks.items()})
    assert 0 < int(live.sum()) < topology.channels
    # every BatchNorm entry of a dead channel is gone: each norm keeps its group's live channels
    for g in topology.groups:
        for n in g.norms:
            bn = ex.model.get_submodule(n.name)
            assert (
                bn.num_features
                == bn.running_mean.shape[0]
                == int(topology.group_slice(live, g).sum())
            )
    assert sum(p.numel() for p in ex.model.parameters()) < topology.dense


@pytest.mark.parametrize(
    "model_name",
    [pytest.param(m, marks=() if m in FAST_ZOO else (pytest.mark.slow,)) for m in sorted(ZOO)],
)
def test_gumbel_per_example_channel_noise_on_every_zoo_model(model_name):
    """``noise: sample`` hooks every output that closes a channel (norms, unnormed producers,
    Linear channels last): in training, identical inputs get different outputs; the gates get
    gradients; evaluation and export are the deterministic masks'."""
    cfg = {
        "name": "gumbel",
        "granularity": "neuron",
        "noise": "sample",
        "closed_leak": 0.01,
        "init_keep_prob": 0.5,
    }
    model, x = ZOO[model_name]()
    method = make_method(cfg)
    method.attach(
        model,
        PruneContext.for_model(
            model,
            tuple(x.shape[1:]),
            epochs=1,
            steps_per_epoch=1,
            sample_batch=None,
            topology=Topology.build(model, x),
        ),
    )
    model.train()
    torch.manual_seed(0)
    out = model(x[:1].expand(8, *x.shape[1:]))
    assert not torch.allclose(out, out[:1].expand_as(out))
    out.square().sum().backward()
    grad = method.gates["channels"].logits.grad
    assert bool(torch.isfinite(grad).all()) and int(grad.ne(0).sum()) > 0
    model, x, method, topology = train_on_zoo(model_name, cfg)
    ex = export_compact(model, method.masks(), topology=topology)
    model.eval()
    with torch.no_grad():
        assert (model(x) - ex.model(x)).abs().max().item() <= 1e-4


def test_a_group_with_every_channel_dead_keeps_one_zero_channel_and_is_collapsed():
    model, x = ZOO["mlp"]()
    topology = Topology.build(model, x)
    masks = {layer.name: torch.ones_like(layer.module.weight) for layer in topology.layers}
    masks[topology.layers[1].name].zero_()  # the second hidden layer keeps nothing
    from prunetune.prune import Mask

    ex = export_compact(model, {n: Mask(m) for n, m in masks.items()}, x)
    assert ex.collapsed
    assert ex.model.get_submodule(topology.layers[1].name).out_features == 1
    out = ex.model.eval()(x)
    assert torch.allclose(out, out[:1].expand_as(out))  # no longer depends on the input
    model.eval()
    with torch.no_grad():
        plain = model.get_submodule(topology.layers[1].name)
        plain.weight.zero_()
        plain.bias.zero_()
        assert torch.allclose(model(x), out, atol=1e-6)


def test_output_layer_is_never_channel_pruned_and_layers_are_named_by_module_path():
    model, x = ZOO["resnet18"]()
    topology = Topology.build(model, x)
    names = [layer.name for layer in topology.layers]
    assert "layer1.0.conv1" in names and "fc" in names
    fc = topology.by_name["fc"]
    assert fc.group is None and "fc" in topology.fixed
    assert all(g.root != "fc" for g in topology.groups)
