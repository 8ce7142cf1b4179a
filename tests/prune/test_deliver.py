"""Delivery: pt2 with baked-in preprocessing and a dynamic batch, ONNX parity, loading with
plain torch in a process without prunetune, and the safetensors re-trainable form."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune.deliver import (
    MASKS_FILE,
    WEIGHTS_FILE,
    DeliveredModel,
    Standardize,
    check_onnx,
    export_onnx,
    export_pt2,
    load_masked_state,
    load_pt2,
    save_masked_state,
)

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
NO_ONNX = "onnx, onnxscript or onnxruntime is not installed (pip install -e '.[onnx]')"


class ResNetTiny(nn.Module):
    """conv-BN-ReLU stem, one residual block (two conv-BN, identity skip), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (b, 8, 8, 8)
        r = torch.relu(self.bn1(self.conv1(h)))
        h = torch.relu(h + self.bn2(self.conv2(r)))
        return self.head(h.mean(dim=(2, 3)))  # (b, 5)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNetTiny()
    for m in model.modules():  # running stats far from (0, 1): eval and train outputs differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


@dataclass(frozen=True)
class Case:
    name: str
    build: object
    input_shape: tuple[int, ...]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        # Independent of Standardize: broadcast the statistics over dim 1.
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype).reshape(shape if self.per_channel else ())
        std = torch.tensor(self.std, dtype=x.dtype).reshape(shape if self.per_channel else ())
        return (x - mean) / std

    @property
    def per_channel(self) -> bool:
        return not isinstance(self.mean, float)


CASES = [
    Case("resnet", _resnet, (3, 8, 8), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
    Case("mlp", _mlp, (6,), 0.5, 0.3),
]


def _eval_copy(model: nn.Module) -> nn.Module:
    # A copy: the shared fixture model keeps its mode and BN statistics across tests.
    return copy.deepcopy(model).eval()


@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    """Each case's model (in train mode, as after training) and its exported model.pt2."""
    out = {}
    for case in CASES:
        model = case.build().train()
        path = tmp_path_factory.mktemp(case.name) / "model.pt2"
        example = torch.randn(3, *case.input_shape)
        assert export_pt2(model, example, path, mean=case.mean, std=case.std) == path
        assert all(m.training for m in model.modules())  # the export left its mode alone
        out[case.name] = (case, model, path)
    return out


@pytest.mark.parametrize("name", [c.name for c in CASES])
@pytest.mark.parametrize("batch", [1, 7])
def test_pt2_matches_eval_model_on_standardized_input(delivered, name, batch):
    case, model, path = delivered[name]
    x = torch.randn(batch, *case.input_shape, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        got = load_pt2(path)(x)
        want = _eval_copy(model)(case.standardize(x))
        trained = copy.deepcopy(model).train()(case.standardize(x))
    assert got.shape == (batch, *want.shape[1:])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if name == "resnet" and batch > 1:  # BN in eval mode, not batch statistics
        assert (got - trained).abs().max() > 1e-2


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_preprocessing_adds_no_state(delivered, name):
    _, model, path = delivered[name]
    program = torch.export.load(path)
    sig = program.graph_signature
    assert len(sig.parameters) == len(list(model.parameters()))
    assert len(sig.buffers) == len(list(model.buffers()))
    assert not sig.lifted_tensor_constants and not program.constants


def test_batch_one_example_still_exports_a_dynamic_batch(tmp_path):
    model = _mlp().eval()
    path = export_pt2(model, torch.randn(1, 6), tmp_path / "model.pt2")
    x = torch.randn(7, 6)
    with torch.no_grad():
        torch.testing.assert_close(load_pt2(path)(x), model(x), atol=1e-6, rtol=0)


def test_delivered_model_is_an_inference_module(delivered):
    _, _, path = delivered["mlp"]
    dm = load_pt2(path)
    assert isinstance(dm, DeliveredModel) and not dm.training
    assert dm.eval() is dm and dm.train(False) is dm and dm.to("cpu") is dm
    assert nn.Sequential(dm).eval()[0] is dm  # a parent's eval() reaches it without error
    with pytest.raises(ValueError, match=r"inference-only.*got mode=True"):
        dm.train()
    with pytest.raises(ValueError, match="inference-only"):
        nn.Sequential(dm).train()


class _TensorConstant(nn.Module):
    """A forward that creates a tensor constant, which torch.export lifts out of the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([1.0, 2.0, 3.0])


def test_to_moves_parameters_and_tensor_constants(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), _TensorConstant())
    dm = load_pt2(export_pt2(model, torch.randn(2, 3), tmp_path / "model.pt2"))
    dm.to("meta")
    assert all(t.device.type == "meta" for t in [*dm.parameters(), *dm.buffers()])
    assert dm(torch.randn(4, 3, device="meta")).device.type == "meta"


def test_standardize_numbers_and_validation():
    x = torch.tensor([[[[1.0]], [[2.0]], [[3.0]]]])  # (1, 3, 1, 1)
    got = Standardize((1.0, 1.0, 1.0), (1.0, 0.5, 0.25))(x).flatten().tolist()
    assert got == [0.0, 2.0, 8.0]
    assert Standardize(0.5, 0.25)(torch.tensor([1.0])).item() == 2.0
    assert Standardize(0, (1, 2)).mean == (0.0, 0.0)  # a scalar broadcasts to the channels
    assert list(Standardize(0.5, 0.25).parameters()) == list(Standardize(0.5, 0.25).buffers())
    assert repr(Standardize(0.5, 0.25)) == "Standardize(mean=0.5, std=0.25)"
    assert "mean=(0.1, 0.2), std=(0.3, 0.4)" in repr(Standardize((0.1, 0.2), (0.3, 0.4)))
    with pytest.raises(ValueError, match=r"`std` must be > 0.*std=\(1.0, 0.0\)"):
        Standardize(0.0, (1.0, 0.0))
    with pytest.raises(ValueError, match=r"same length.*3 and 2"):
        Standardize((0.0, 0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="finite float"):
        Standardize(float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"dim 1 must have that size.*\(2, 4\)"):
        Standardize((0.0, 0.0, 0.0), 1.0)(torch.zeros(2, 4))


def test_export_pt2_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"given together.*mean=0\.5, std=None"):
        export_pt2(_mlp(), torch.randn(2, 6), tmp_path / "model.pt2", mean=0.5)
    with pytest.raises(ValueError, match=r"must end in '\.pt2'"):
        export_pt2(_mlp(), torch.randn(2, 6), tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.skipif(not HAS_ONNX, reason=NO_ONNX)
def test_onnx_matches_pt2_and_check_onnx_catches_differences(delivered, tmp_path):
    case, model, path = delivered["resnet"]
    onnx_path = export_onnx(path, torch.randn(2, *case.input_shape), tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file, no .data
    x = torch.randn(7, *case.input_shape)
    with torch.no_grad():
        want = _eval_copy(model)(case.standardize(x))
    assert check_onnx(onnx_path, x, want, atol=1e-4) <= 1e-4
    with pytest.raises(ValueError, match=r"within atol=0\.0001.*max abs diff is 0\.5"):
        check_onnx(onnx_path, x, want + 0.5)
    with pytest.raises(ValueError, match=r"expected shape \(7, 4\)"):
        check_onnx(onnx_path, x, want[:, :4])


_PLAIN_LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["prunetune"] = None  # prunetune cannot be imported in this process
    try:
        import prunetune  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("prunetune must not be importable here")
    from pathlib import Path
    import torch
    for d in map(Path, sys.argv[1:]):
        x, want = torch.load(d / "x.pt"), torch.load(d / "want.pt")
        with torch.no_grad():
            got = torch.export.load(d / "model.pt2").module()(x)
        print(d.name, "pt2", (got - want).abs().max().item())
        if (d / "model.onnx").exists():
            import onnxruntime as ort
            s = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
            got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
            print(d.name, "onnx", float(abs(got - want.numpy()).max()))
    """
)


def test_plain_torch_and_onnxruntime_load_without_prunetune(delivered, tmp_path):
    dirs = []
    for case, model, path in delivered.values():
        d = tmp_path / case.name
        d.mkdir()
        (d / "model.pt2").write_bytes(path.read_bytes())
        if HAS_ONNX:
            export_onnx(path, torch.randn(2, *case.input_shape), d / "model.onnx")
        x = torch.randn(7, *case.input_shape)
        with torch.no_grad():
            torch.save(x, d / "x.pt")
            torch.save(_eval_copy(model)(case.standardize(x)), d / "want.pt")
        dirs.append(d)
    run = subprocess.run(
        [sys.executable, "-c", _PLAIN_LOADER, *map(str, dirs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    diffs = {(n, fmt): float(v) for n, fmt, v in map(str.split, run.stdout.splitlines())}
    assert {n for n, _ in diffs} == {c.name for c in CASES}
    assert all(diffs[c.name, "pt2"] <= 1e-4 for c in CASES), diffs
    if not HAS_ONNX:
        pytest.skip(f"pt2 half passed; ONNX half skipped: {NO_ONNX}")
    assert all(diffs[c.name, "onnx"] <= 1e-4 for c in CASES), diffs


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_masked_state_round_trip(tmp_path):
    masked, gen = _mlp(), torch.Generator().manual_seed(0)
    masks = {
        "0": {"weight": (torch.rand(16, 6, generator=gen) < 0.5).float()},
        "2": {
            "weight": (torch.rand(4, 16, generator=gen) < 0.5).float(),
            "bias": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        },
    }
    for layer, tensors in masks.items():
        for tensor_name, mask in tensors.items():
            parametrize.register_parametrization(masked[int(layer)], tensor_name, _Mask(mask))
    assert save_masked_state(masked, masks, tmp_path) == tmp_path

    from safetensors.torch import load_file

    plain = _mlp()  # same architecture; its own weights are overwritten
    assert set(load_file(tmp_path / WEIGHTS_FILE)) == set(plain.state_dict())
    got = load_masked_state(plain, tmp_path)
    assert set(got) == {"0.weight", "2.weight", "2.bias"}
    for key, mask in got.items():
        layer, tensor_name = key.split(".")
        assert torch.equal(mask, masks[layer][tensor_name])
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    x = torch.randn(9, 6)
    with torch.no_grad():
        assert torch.equal(plain(x), masked(x))
    assert plain[2].bias[1].item() == 0.0 and plain[2].weight.count_nonzero() > 0
    assert set(load_file(tmp_path / MASKS_FILE)) == set(got)


def test_masked_state_accepts_flat_and_dataclass_masks(tmp_path):
    @dataclass(frozen=True)
    class Mask:  # the shape of prunetune.prune.Mask
        weight: torch.Tensor
        bias: torch.Tensor | None = None

    model, w = _mlp(), torch.ones(16, 6)
    save_masked_state(model, {"0": Mask(w)}, tmp_path / "a")
    save_masked_state(model, {"0.weight": w}, tmp_path / "b")
    for d in ("a", "b"):
        assert set(load_masked_state(_mlp(), tmp_path / d)) == {"0.weight"}


def test_masked_state_rejects_bad_masks_and_parametrized_targets(tmp_path):
    model = _mlp()
    with pytest.raises(ValueError, match=r"'0\.weight' must hold only 0 and 1"):
        save_masked_state(model, {"0.weight": torch.full((16, 6), 0.5)}, tmp_path)
    with pytest.raises(ValueError, match=r"'0\.weight' must have its tensor's shape \(16, 6\)"):
        save_masked_state(model, {"0.weight": torch.ones(6, 16)}, tmp_path)
    with pytest.raises(ValueError, match=r"'5\.weight' must name a tensor"):
        save_masked_state(model, {"5.weight": torch.ones(1)}, tmp_path)
    assert list(tmp_path.iterdir()) == []
    save_masked_state(model, {}, tmp_path)
    parametrize.register_parametrization(model[0], "weight", _Mask(torch.ones(16, 6)))
    with pytest.raises(ValueError, match=r"plain model.*module '0'.*\['weight'\]"):
        load_masked_state(model, tmp_path)
