"""Graphs beyond the zoo's convnets, as users bring them: a transformer encoder layer (its
attention reads ``out_proj.weight`` without calling the module), Linear layers on token
sequences, channel mixing without parameters, channel shuffles, and forwards prunetune cannot
use. Every group the topology calls prunable must survive surgery: the compact model computes
what the masked model computes; a group it cannot remove is fixed, with the reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import train_briefly

from prunetune.prune import Topology, count_params, export_compact
from prunetune.prune.kfac import factors


class Encoder(nn.Module):
    """Patch embedding, one ``nn.TransformerEncoderLayer`` (16 tokens of width 32), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 32, 4, stride=4)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (b, 16, 32)
        return self.head(self.enc(x).mean(1))


class Mixer(nn.Module):
    """MLP-Mixer block: a token-mixing Linear on the transposed sequence, a channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 32, 4, stride=4)
        self.ln = nn.LayerNorm(32)
        self.tok = nn.Linear(16, 16)
        self.ch1 = nn.Linear(32, 64)
        self.ch2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (b, 16, 32)
        x = x + self.tok(self.ln(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.ch2(F.gelu(self.ch1(self.ln(x))))
        return self.head(x.mean(1))


class Mixing(nn.Module):
    """conv1 → ``mix`` → conv2: ``mix`` ties conv1's channels without having parameters."""

    def __init__(self, mix: str) -> None:
        super().__init__()
        self.mix = mix
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8, affine=False)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if self.mix == "groupnorm":
            y = F.relu(self.gn(y))
        elif self.mix == "softmax":
            y = torch.softmax(y, 1)
        else:  # ShuffleNet's channel shuffle, on the channel count it finds
            y = F.relu(self.bn1(y))
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(F.relu(self.conv2(y)).mean((2, 3)))


def fit(model: nn.Module, shape: tuple[int, ...], cfg: dict, seed: int = 0):
    """:func:`zoo.train_briefly` on inputs of ``shape``; ``(topology, masks, inputs)``."""
    method, topology, xs = train_briefly(model, torch.zeros(2, *shape), cfg, seed)
    return topology, method.masks(), xs


def assert_exact_export(model, topology, masks, xs):
    ex = export_compact(model, masks, topology=topology)
    model.eval()
    with torch.no_grad():
        assert (model(xs) - ex.model(xs)).abs().max().item() <= 1e-4
    weights = {n: m.weight for n, m in masks.items()}
    assert ex.params == count_params(ex.model) == topology.count(model, weights)
    return ex


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_attention_out_proj_is_a_weight_prunable_layer_and_the_ffn_channels_a_group():
    torch.manual_seed(0)
    model = Encoder()
    topo = Topology.build(model, torch.randn(2, 1, 16, 16))
    names = [layer.name for layer in topo.layers]
    assert names == ["embed", "enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]
    assert topo.by_name["enc.self_attn.out_proj"].group is None
    assert [(g.root, g.size) for g in topo.groups] == [("enc.linear1", 64)]
    # MACs: out_proj is applied at each of the 16 tokens, like the FFN's Linears
    assert topo.positions["enc.self_attn.out_proj"] == topo.positions["enc.linear1"] == 16
    assert topo.dense_macs == 16 * 32 * 16 + 16 * (32 * 32 + 32 * 64 + 64 * 32) + 32 * 10


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "magnitude", "density": 0.3},
        {"name": "gumbel", "init_keep_prob": 0.5},
        {"name": "gumbel", "granularity": "neuron", "init_keep_prob": 0.5},
        {"name": "magnitude_neuron", "neurons": 0.5},
        {"name": "kfac", "neurons": 0.5},
    ],
    ids=lambda c: "-".join(str(v) for k, v in c.items() if k in ("name", "granularity")),
)
def test_transformer_encoder_prunes_and_exports_exactly(cfg):
    torch.manual_seed(0)
    model = Encoder()
    topology, masks, xs = fit(model, (1, 16, 16), cfg)
    ex = assert_exact_export(model, topology, masks, xs)
    out_proj = ex.model.enc.self_attn.out_proj.weight
    if cfg["name"] == "gumbel" and "granularity" not in cfg:
        # the attention's weight masks act in training and reach the delivered model
        kept = masks["enc.self_attn.out_proj"].weight
        assert 0 < int(kept.sum()) < kept.numel()
        assert torch.equal(out_proj != 0, kept.bool())
    if "neurons" in cfg:  # half the FFN's hidden channels are gone
        assert ex.model.enc.linear1.out_features == ex.model.enc.linear2.in_features == 32


@pytest.mark.parametrize("name", ["magnitude_neuron", "kfac"])
def test_linear_layers_on_a_token_sequence_prune_their_channels(name):
    torch.manual_seed(0)
    model = Mixer()
    topology, masks, xs = fit(model, (1, 16, 16), {"name": name, "neurons": 0.5})
    assert [(g.root, g.size) for g in topology.groups] == [("ch1", 64)]
    assert "LayerNorm ln" in topology.fixed["ch2"]
    ex = assert_exact_export(model, topology, masks, xs)
    assert ex.model.ch1.out_features == 32


def test_kfac_factors_of_a_linear_on_a_sequence_are_a_1x1_convs_over_its_positions():
    """Tokens are samples of a Linear as positions are of a conv (KFC): the same rows."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, 5, generator=g)  # (b, T, in)
    grad = torch.randn(4, 6, 3, generator=g)  # (b, T, out)
    lin = nn.Linear(5, 3)
    conv = nn.Conv2d(5, 3, 1)
    a_lin, g_lin = factors(lin, a, grad)
    a_conv, g_conv = factors(conv, a.transpose(1, 2)[..., None], grad.transpose(1, 2)[..., None])
    assert a_lin.shape == (6, 6) and g_lin.shape == (3, 3)
    torch.testing.assert_close(a_lin, a_conv)
    torch.testing.assert_close(g_lin, g_conv)
    # G sums the positions of a sample (per-sample gradient = sum over its tokens), over b
    rows = grad.reshape(-1, 3) * 4
    torch.testing.assert_close(g_lin, rows.T @ rows / 4)


@pytest.mark.parametrize(
    ("mix", "reason"),
    [
        ("groupnorm", "GroupNorm gn mixes or scales channels"),
        ("softmax", "its closed channels do not reach conv2 as zeros"),
        ("shuffle", "removing its channels changes the model's output"),
    ],
)
def test_channels_a_parameter_free_op_ties_stay_and_the_export_is_exact(mix, reason):
    torch.manual_seed(0)
    model = Mixing(mix)
    example = torch.randn(2, 1, 8, 8)
    topo = Topology.build(model, example)
    assert topo.fixed["conv1"].startswith(reason)
    assert [g.root for g in topo.groups] == ["conv2"]
    # a spec is validated on zeros: the checks probe random values of its shape instead
    assert Topology.build(model, torch.zeros(2, 1, 8, 8)).fixed["conv1"].startswith(reason)
    topology, masks, xs = fit(model, (1, 8, 8), {"name": "magnitude_neuron", "neurons": 0.5})
    ex = assert_exact_export(model, topology, masks, xs)
    assert ex.model.conv1.out_channels == 8 and ex.model.conv2.out_channels == 4


def test_a_shuffle_with_a_hard_coded_channel_count_stays_whole():
    class Hard(Mixing):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn1(self.conv1(x)))
            y = y.view(y.shape[0], 2, 4, *y.shape[2:]).transpose(1, 2).flatten(1, 2)
            return self.fc(F.relu(self.conv2(y)).mean((2, 3)))

    torch.manual_seed(0)
    topo = Topology.build(Hard("shuffle"), torch.randn(2, 1, 8, 8))
    assert topo.fixed["conv1"].startswith("removing its channels breaks the model (RuntimeError")


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ``channel_shuffle``."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: split the channels in two, transform one half (1x1,
    depthwise 3x3, 1x1), concatenate, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch2 = nn.Sequential(
            nn.Conv2d(h, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.Conv2d(h, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return _shuffle(torch.cat((x1, self.branch2(x2)), 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.conv5 = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(torch.relu(self.stem(x)))
        return self.fc(torch.relu(self.conv5(x)).mean((2, 3)))


def test_shufflenet_prunes_inside_its_branches_and_keeps_the_shuffled_trunk():
    """torch-pruning follows the split and the shuffle only part of the way (it finds readers
    for 1-2 of the trunk's 8 channels): the trunk stays whole, the branches' inner channels
    and the last 1x1 conv are pruned, and the export is exact."""
    torch.manual_seed(0)
    model = ShuffleNet()
    topo = Topology.build(model, torch.randn(2, 1, 8, 8))
    assert sorted(g.root for g in topo.groups) == [
        "conv5.0",
        "units.0.branch2.3",
        "units.1.branch2.3",
    ]
    for unit in ("units.0", "units.1"):
        assert "torch-pruning finds a consumer for only" in topo.fixed[f"{unit}.branch2.5"]
    topology, masks, xs = fit(model, (1, 8, 8), {"name": "magnitude_neuron", "neurons": 0.5})
    ex = assert_exact_export(model, topology, masks, xs)
    assert ex.model.units[0].branch2[3].out_channels == 4
    assert ex.model.units[0].branch2[5].out_channels == 8


def test_a_forward_that_returns_a_dict_is_refused_in_one_line():
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(x)}

    with pytest.raises(
        ValueError, match=r"^Dict\.forward returns a dict; prunetune needs one tensor"
    ):
        Topology.build(Dict(), torch.randn(2, 4))


def test_a_layer_the_forward_never_uses_is_refused_by_name():
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 10)
            self.aux = nn.Linear(4, 10)  # e.g. an auxiliary head used only in training

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(ValueError, match=r"^layer aux is not used in the model's forward pass"):
        Topology.build(Spare(), torch.randn(2, 4))


@pytest.mark.parametrize("onnx", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_pruned_transformer_is_delivered_as_pt2_and_onnx(tmp_path, onnx):
    from prunetune.prune.deliver import check_onnx, export_onnx, export_pt2, load_pt2

    torch.manual_seed(0)
    model = Encoder()
    topology, masks, xs = fit(model, (1, 16, 16), {"name": "magnitude_neuron", "neurons": 0.5})
    ex = export_compact(model, masks, topology=topology)
    model.eval()
    with torch.no_grad():
        want = model(xs)
    pt2 = export_pt2(ex.model, xs[:2], tmp_path / "model.pt2")
    assert (load_pt2(pt2).eval()(xs) - want).abs().max().item() <= 1e-4
    if onnx:
        assert check_onnx(export_onnx(pt2, xs[:2], tmp_path / "model.onnx"), xs, want) <= 1e-4


def test_a_model_that_cannot_be_copied_is_refused_at_once_not_left_unpruned():
    """Every group failing the surgery check for a reason of the model's (it cannot be
    deep-copied, so no export could ever run) is an error, not a model with nothing prunable."""
    import threading

    class Locked(Mixing):
        def __init__(self) -> None:
            super().__init__("softmax")
            self.lock = threading.Lock()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"^Locked cannot be exported: the plain copy fails \("):
        Topology.build(Locked(), torch.randn(2, 1, 8, 8))


def test_weight_norm_is_refused_with_the_call_that_removes_it():
    """prunetune's masks are parametrizations of the weight: a layer that already has one of
    the model's own (or the deprecated hook-based weight norm) is named with the remedy."""
    from torch.nn.utils import parametrizations, parametrize, remove_weight_norm, weight_norm

    def net(wrap):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
        wrap(m[0])
        return m

    x = torch.randn(2, 1, 8, 8)
    model = net(parametrizations.weight_norm)
    with pytest.raises(ValueError, match=r"^layer 0's weight carries the model's own parametri"):
        Topology.build(model, x)
    parametrize.remove_parametrizations(model[0], "weight")  # the remedy the message names
    assert [layer.name for layer in Topology.build(model, x).layers] == ["0", "3"]
    model = net(lambda m: weight_norm(m))
    with pytest.raises(ValueError, match=r"remove_weight_norm\(model\.0\) first"):
        Topology.build(model, x)
    remove_weight_norm(model[0])
    assert [layer.name for layer in Topology.build(model, x).layers] == ["0", "3"]


def test_a_vit_with_class_token_and_position_embedding_builds_quietly():
    """Bare nn.Parameters on the residual stream (class token, position embedding) fix its
    channels; each encoder layer's feed-forward width is a group; torch-pruning's warnings
    about them stay out of the user's log."""
    import warnings

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(1, 32, 4, stride=4)
            self.cls = nn.Parameter(torch.zeros(1, 1, 32))
            self.pos = nn.Parameter(torch.randn(1, 17, 32) * 0.02)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.enc(x)[:, 0])

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        topo = Topology.build(ViT(), torch.randn(2, 1, 16, 16))
    assert sorted((g.root, g.size) for g in topo.groups) == [
        ("enc.layers.0.linear1", 64),
        ("enc.layers.1.linear1", 64),
    ]


def test_layers_sharing_one_weight_are_refused_by_name():
    """Tied weights would be masked twice and counted twice (the dense count was 714 for a
    model of 458 parameters)."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = nn.Linear(16, 16)
            self.b.weight = self.a.weight
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))))

    model = Tied()
    with pytest.raises(ValueError, match=r"^layers a and b share one weight tensor"):
        Topology.build(model, torch.randn(2, 16))
    model.b.weight = nn.Parameter(model.a.weight.detach().clone())  # the remedy it names
    assert Topology.build(model, torch.randn(2, 16)).dense == 16 * 16 * 2 + 16 * 2 + 170
