"""Architecture specs (plain dicts) and the builder that turns them into ``nn.Sequential``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunetune._schema import ACTIVATIONS as _ACTIVATION_NAMES
from prunetune._schema import FAMILIES  # declared once, with the trial config

# An architecture spec: {"input_shape": [C, H, W] or [F], "layers": [{"type": ..., ...}, ...]}.
ArchSpec = dict[str, Any]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}
assert tuple(ACTIVATIONS) == _ACTIVATION_NAMES


def _linear(d: dict[str, Any]) -> nn.Module:
    return nn.Linear(int(d["in"]), int(d["out"]), bias=bool(d.get("bias", True)))


def _conv(d: dict[str, Any]) -> nn.Module:
    return nn.Conv2d(
        int(d["in"]),
        int(d["out"]),
        int(d["kernel"]),
        stride=int(d.get("stride", 1)),
        padding=int(d.get("padding", 0)),
        bias=bool(d.get("bias", True)),
    )


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "linear": _linear,
    "conv2d": _conv,
    "flatten": lambda d: nn.Flatten(),
    "maxpool2d": lambda d: nn.MaxPool2d(int(d["kernel"])),
    **{name: (lambda d, f=f: f()) for name, f in ACTIVATIONS.items()},
}


def build_model(spec: ArchSpec) -> nn.Sequential:
    """Build a plain ``nn.Sequential`` from an architecture spec.

    Raises:
        ValueError: the spec names an unknown layer type or misses a field.
    """
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"An architecture spec needs a non-empty 'layers' list, got {layers!r}.")
    modules = []
    for i, d in enumerate(layers):
        kind = d.get("type")
        if kind not in _BUILDERS:
            raise ValueError(
                f"layers[{i}].type must be one of {sorted(_BUILDERS)}, but got {kind!r}."
            )
        try:
            modules.append(_BUILDERS[kind](d))
        except KeyError as e:
            raise ValueError(f"layers[{i}] ({kind}) misses the field {e.args[0]!r}.") from None
    return nn.Sequential(*modules)


def _check_widths(widths: Sequence[int], field: str = "widths") -> list[int]:
    out = []
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"{field}[{i}] must be a positive integer, but got {w!r}.")
        out.append(w)
    return out


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, but got {activation!r}."
        )


def mlp_spec(
    input_shape: Sequence[int],
    widths: Sequence[int],
    num_outputs: int,
    activation: str = "relu",
) -> ArchSpec:
    """Fully connected network; LeNet-300-100 is ``widths=[300, 100]`` on 28x28 inputs."""
    widths = _check_widths(widths)
    _check_activation(activation)
    n_in = math.prod(input_shape)
    layers: list[dict[str, Any]] = [{"type": "flatten"}] if len(input_shape) > 1 else []
    for w in widths:
        layers += [{"type": "linear", "in": n_in, "out": w}, {"type": activation}]
        n_in = w
    layers.append({"type": "linear", "in": n_in, "out": num_outputs})
    return {"input_shape": list(input_shape), "layers": layers}


def cnn_spec(
    input_shape: Sequence[int],
    channels: Sequence[int],
    widths: Sequence[int],
    num_outputs: int,
    activation: str = "relu",
    kernel: int = 3,
) -> ArchSpec:
    """Small CNN: per entry of ``channels`` a 'same' conv + activation + 2x2 max-pool, then an MLP.

    Raises:
        ValueError: the input is not an image or is too small for that many pooling stages.
    """
    channels = _check_widths(channels, "channels")
    widths = _check_widths(widths)
    _check_activation(activation)
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs an image input (C, H, W), but got {tuple(input_shape)}.")
    c, h, w = input_shape
    if min(h, w) >> len(channels) < 1:
        raise ValueError(
            f"cnn with {len(channels)} pooling stages needs inputs of at least "
            f"{2 ** len(channels)}x{2 ** len(channels)} pixels, but got {h}x{w}."
        )
    layers: list[dict[str, Any]] = []
    for ch in channels:
        layers += [
            {"type": "conv2d", "in": c, "out": ch, "kernel": kernel, "padding": kernel // 2},
            {"type": activation},
            {"type": "maxpool2d", "kernel": 2},
        ]
        c, h, w = ch, h // 2, w // 2
    head = mlp_spec((c, h, w), widths, num_outputs, activation)
    return {"input_shape": list(input_shape), "layers": layers + head["layers"]}


def lenet5_spec(
    input_shape: Sequence[int],
    num_outputs: int,
    widths: Sequence[int] = (120, 84),
    channels: Sequence[int] = (6, 16),
    activation: str = "relu",
) -> ArchSpec:
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs: conv5(pad 2)-pool-conv5-pool-fc-fc-fc.

    Raises:
        ValueError: the input is not 28x28 or 32x32 (the second 5x5 conv needs at least 5x5).
    """
    channels = _check_widths(channels, "channels")
    widths = _check_widths(widths)
    _check_activation(activation)
    if len(channels) != 2:
        raise ValueError(f"lenet5 has exactly 2 conv layers, but got channels={channels}.")
    if len(input_shape) != 3 or input_shape[1] < 20 or input_shape[2] < 20:
        raise ValueError(
            f"lenet5 needs image inputs of at least 20x20 pixels (C, H, W), "
            f"but got {tuple(input_shape)}; use family 'mlp' or 'cnn' for small images."
        )
    c, h, w = input_shape
    pad = 2 if h == 28 else 0
    h1, w1 = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
    h2, w2 = (h1 - 4) // 2, (w1 - 4) // 2
    layers: list[dict[str, Any]] = [
        {"type": "conv2d", "in": c, "out": channels[0], "kernel": 5, "padding": pad},
        {"type": activation},
        {"type": "maxpool2d", "kernel": 2},
        {"type": "conv2d", "in": channels[0], "out": channels[1], "kernel": 5},
        {"type": activation},
        {"type": "maxpool2d", "kernel": 2},
    ]
    head = mlp_spec((channels[1], h2, w2), widths, num_outputs, activation)
    return {"input_shape": list(input_shape), "layers": layers + head["layers"]}


# Every built-in family; build any of them with ``prunetune.models.build_family``. Only the
# first three are ``nn.Sequential`` specs (``family_spec``); resnet has residual adds.


def family_spec(
    family: str,
    input_shape: Sequence[int],
    num_outputs: int,
    widths: Sequence[int],
    channels: Sequence[int] = (),
    activation: str = "relu",
) -> ArchSpec:
    """Architecture spec of a named Sequential family (``mlp``, ``lenet5``, ``cnn``).

    Raises:
        ValueError: an unknown family, or ``resnet`` (not a Sequential spec: its residual adds
            need :func:`prunetune.models.build_family`).
    """
    if family == "mlp":
        return mlp_spec(input_shape, widths, num_outputs, activation)
    if family == "lenet5":
        return lenet5_spec(input_shape, num_outputs, widths, channels or (6, 16), activation)
    if family == "cnn":
        return cnn_spec(input_shape, channels or (16, 32), widths, num_outputs, activation)
    if family == "resnet":
        raise ValueError(
            "model.family 'resnet' has no Sequential architecture spec (its blocks add "
            "residuals); build it with prunetune.models.build_family('resnet', ...)."
        )
    raise ValueError(f"model.family must be one of {list(FAMILIES)}, but got {family!r}.")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _output_shape(spec: ArchSpec) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(build_model(spec)(torch.zeros(1, *spec["input_shape"])).shape[1:])
