"""One delivery format for every model: a ``torch.export`` program, its ONNX twin, and a
re-trainable form (dense weights + 0/1 masks in safetensors).

``model.pt2`` carries the data set's preprocessing (:class:`Standardize`) and the model in eval
mode with a dynamic batch dimension; it loads with plain torch — no prunetune, no user code —
via ``torch.export.load(path).module()``, or here as a :class:`DeliveredModel`
(:func:`load_pt2`), which also supports ``eval()`` and ``to(device)``.

This module imports only torch and the standard library (safetensors, onnx and onnxruntime
lazily), so it works where the rest of prunetune is not installed.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from torch import nn
    >>> d = Path(tempfile.mkdtemp())
    >>> model = nn.Sequential(nn.Linear(4, 3))
    >>> p = export_pt2(model, torch.zeros(2, 4), d / "model.pt2", mean=0.5, std=0.25)
    >>> load_pt2(p)(torch.zeros(7, 4)).shape
    torch.Size([7, 3])
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "MASKS_FILE",
    "WEIGHTS_FILE",
    "DeliveredModel",
    "Standardize",
    "check_onnx",
    "export_onnx",
    "export_pt2",
    "load_masked_state",
    "load_pt2",
    "save_masked_state",
]

WEIGHTS_FILE = "weights.safetensors"
MASKS_FILE = "masks.safetensors"

# A traced batch of 1 is specialised to the constant 1 (torch.export's 0/1 specialisation), so
# the program is traced with at least this many rows; the exported batch range is [1, inf).
_MIN_TRACE_BATCH = 2

Stat = float | Sequence[float]


class Standardize(nn.Module):
    """The data set's input preprocessing ``(x - mean) / std`` over dim 1 (features/channels).

    ``mean`` and ``std`` are Python constants in ``forward``, not parameters or buffers, so an
    exported program gains no state and the preprocessing moves with any device. Per-channel
    values are applied channel by channel (``unbind``/``stack``) for the same reason: a tensor
    constant would be pinned to the device it was traced on.

    Example:
        >>> Standardize((0.5, 0.5, 0.5), (0.25, 0.25, 0.5))(torch.ones(2, 3, 4, 4))[0, :, 0, 0]
        tensor([2., 2., 1.])
    """

    def __init__(self, mean: Stat, std: Stat) -> None:
        super().__init__()
        m, s = _stat("mean", mean), _stat("std", std)
        if len(m) > 1 and len(s) > 1 and len(m) != len(s):
            raise ValueError(
                f"per-channel `mean` and `std` must have the same length, but got "
                f"{len(m)} and {len(s)} ({mean=}, {std=})."
            )
        if any(v <= 0 for v in s):
            raise ValueError(f"`std` must be > 0 everywhere, but got {std=}.")
        n = max(len(m), len(s))
        self.mean: tuple[float, ...] = m * n if len(m) == 1 else m
        self.std: tuple[float, ...] = s * n if len(s) == 1 else s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.mean) == 1:
            return (x - self.mean[0]) / self.std[0]
        if x.dim() < 2 or x.shape[1] != len(self.mean):
            raise ValueError(
                f"Standardize has {len(self.mean)} per-channel statistics, so the input's dim 1 "
                f"must have that size, but got input shape {tuple(x.shape)}."
            )
        channels = x.unbind(1)  # C x (b, ...)
        return torch.stack(
            [(c - m) / s for c, m, s in zip(channels, self.mean, self.std, strict=True)], dim=1
        )

    def extra_repr(self) -> str:
        show = (lambda v: v[0]) if len(self.mean) == 1 else (lambda v: v)
        return f"mean={show(self.mean)}, std={show(self.std)}"


def _stat(name: str, value: Stat) -> tuple[float, ...]:
    values = (value,) if isinstance(value, int | float) else tuple(value)
    if not values or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError(
            f"`{name}` must be a finite float or a non-empty sequence of finite floats, "
            f"but got {name}={value!r}."
        )
    return tuple(float(v) for v in values)


def _batch_dynamic(example: torch.Tensor) -> tuple[torch.Tensor, tuple[dict[int, Any]]]:
    """The example to trace (at least two rows) and ``dynamic_shapes`` for a batch in [1, inf)."""
    if example.dim() == 0:
        raise ValueError("`example` must have a batch dimension, but got a 0-d tensor.")
    if example.shape[0] < _MIN_TRACE_BATCH:
        example = example.expand(_MIN_TRACE_BATCH, *example.shape[1:]).contiguous()
    return example, ({0: torch.export.Dim("batch", min=1)},)


def _inference_copy(model: nn.Module, mean: Stat | None, std: Stat | None) -> nn.Module:
    """A CPU copy of ``model`` in eval mode, preceded by :class:`Standardize` when asked; the
    caller's model (its device, mode and parameters) is left as it was."""
    if (mean is None) != (std is None):
        raise ValueError(f"`mean` and `std` must be given together, but got {mean=}, {std=}.")
    model = copy.deepcopy(model).cpu().eval()
    if mean is not None and std is not None:
        model = nn.Sequential(Standardize(mean, std), model)
    return model


def _atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` a temporary sibling of ``path`` (same suffix), then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_pt2(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    mean: Stat | None = None,
    std: Stat | None = None,
) -> Path:
    """Write ``model`` (with ``Standardize(mean, std)`` in front when given) as a
    ``torch.export`` program in eval mode on CPU with a dynamic batch dimension.

    Args:
        model: the model; it is copied, so its device and train/eval mode are untouched.
        example: an input batch ``(b, *input_shape)``; only its shape and dtype matter.
        path: the ``.pt2`` file to write (atomically).
        mean: the data set's mean — a float or one per channel (dim 1).
        std: the data set's standard deviation, as ``mean``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"`path` must end in '.pt2' (torch.export's archive), but got {path}.")
    module = _inference_copy(model, mean, std)
    x, dynamic_shapes = _batch_dynamic(example.detach().cpu())
    program = torch.export.export(module, (x,), dynamic_shapes=dynamic_shapes)
    return _atomic_write(path, lambda p: torch.export.save(program, p))


class DeliveredModel(nn.Module):
    """A loaded ``model.pt2``: inference-only, movable, usable where an ``nn.Module`` is.

    The module from ``torch.export.load(path).module()`` raises ``NotImplementedError`` on
    ``eval()``/``train()`` (torch 2.13), and ``to(device)`` leaves its tensor constants behind.
    This wrapper makes ``eval()`` a no-op (the program was exported in eval mode), refuses
    ``train(True)``, and moves the constants with the parameters and buffers.

    Example:
        >>> import tempfile
        >>> p = export_pt2(nn.Linear(4, 3), torch.zeros(2, 4), Path(tempfile.mkdtemp()) / "m.pt2")
        >>> load_pt2(p).eval().to("cpu")(torch.zeros(1, 4)).shape
        torch.Size([1, 3])
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        module.training = False  # the program's semantics; set directly, train() would raise
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> DeliveredModel:
        if mode:
            raise ValueError(
                "a delivered model is inference-only (a torch.export program in eval mode), so "
                f"`mode` must be False, but got {mode=}. To train further, load the re-trainable "
                "form (weights.safetensors + masks.safetensors) with load_masked_state."
            )
        return self  # already in eval mode; the inner module's train() would raise

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        super()._apply(fn, recurse)
        # Lifted tensor constants are plain attributes of the graph's submodules, which
        # nn.Module._apply does not visit.
        for sub in self.module.modules():
            for name, value in list(vars(sub).items()):
                if isinstance(value, torch.Tensor):
                    setattr(sub, name, fn(value))
        return self


def load_pt2(path: str | os.PathLike[str]) -> DeliveredModel:
    """Load a ``model.pt2`` written by :func:`export_pt2` (or any ``torch.export.save``)."""
    return DeliveredModel(torch.export.load(Path(path)).module())


def export_onnx(
    model: str | os.PathLike[str] | nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor,
    path: str | os.PathLike[str],
) -> Path:
    """Write an ONNX model (one file, dynamic batch) with torch's dynamo exporter.

    Args:
        model: a ``.pt2`` path (its program is converted as is, preprocessing included), an
            ``ExportedProgram``, or a module (exported in eval mode on a CPU copy, as
            :func:`export_pt2` does, without preprocessing).
        example: an input batch ``(b, *input_shape)``.
        path: the ``.onnx`` file to write (atomically; weights inside, so under 2 GB).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    x, dynamic_shapes = _batch_dynamic(example.detach().cpu())
    if isinstance(model, str | os.PathLike):
        model = torch.export.load(Path(model))
    if isinstance(model, torch.export.ExportedProgram):
        target: nn.Module | torch.export.ExportedProgram = model
        kwargs: dict[str, Any] = {}  # the program's own dynamic shapes apply
    else:
        target = _inference_copy(model, None, None)
        kwargs = {"dynamic_shapes": dynamic_shapes}
    program = torch.onnx.export(target, (x,), dynamo=True, verbose=False, **kwargs)
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program.")
    return _atomic_write(path, lambda p: program.save(p, external_data=False))


def check_onnx(
    path: str | os.PathLike[str],
    example: torch.Tensor,
    expected: torch.Tensor,
    atol: float = 1e-4,
) -> float:
    """Run the ONNX model on ``example`` with onnxruntime (CPU) and compare with ``expected``.

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: the output's shape differs from ``expected``'s, or an element differs by
            more than ``atol``.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}
    out = session.run(None, feed)[0]
    want = expected.detach().cpu().numpy()
    if out.shape != want.shape:
        raise ValueError(
            f"the ONNX output of {path} must have the expected shape {want.shape}, "
            f"but got {out.shape}."
        )
    diff = float(np.max(np.abs(out - want))) if out.size else 0.0
    if not diff <= atol:  # also catches NaN
        raise ValueError(
            f"the ONNX outputs of {path} must match the expected outputs within {atol=}, "
            f"but the max abs diff is {diff:.3g}."
        )
    return diff


def _flat_masks(
    masks: Mapping[str, torch.Tensor]
    | Mapping[str, Mapping[str, torch.Tensor]]
    | Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """``{"layer.weight": mask}`` from that form, ``{"layer": {"weight": mask}}``, or
    ``{"layer": Mask(weight=..., bias=...)}`` (any dataclass; ``None`` fields are skipped)."""
    flat: dict[str, torch.Tensor] = {}
    for name, value in masks.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        for tensor_name, mask in value.items():
            if mask is not None:
                flat[f"{name}.{tensor_name}" if name else tensor_name] = mask
    return flat


def _dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` as a plain model would have it: each parametrized tensor
    under its plain key with its effective value, parametrization internals dropped."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{name}." if name else ""
        internal = f"{prefix}parametrizations."
        state = {k: v for k, v in state.items() if not k.startswith(internal)}
        for tensor_name in module.parametrizations:
            state[prefix + tensor_name] = getattr(module, tensor_name)
    return state


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # A copy, so tied tensors do not share memory (safetensors refuses shared storage).
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def save_masked_state(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor]
    | Mapping[str, Mapping[str, torch.Tensor]]
    | Mapping[str, Any],
    directory: str | os.PathLike[str],
) -> Path:
    """Write the re-trainable form: ``weights.safetensors`` (the dense model's plain state
    dict, masked weights at their effective values) and ``masks.safetensors`` (0/1 masks
    keyed like the weights they mask, e.g. ``"layer1.0.conv1.weight"``).

    Args:
        model: the model, with or without mask parametrizations.
        masks: ``{"layer.weight": mask}``, ``{"layer": {"weight": mask, "bias": mask}}`` or
            ``{"layer": Mask(...)}``.
        directory: where to write the two files (created if missing).

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    weights = {k: _cpu_copy(v) for k, v in _dense_state(model).items()}
    flat = {k: _cpu_copy(v).float() for k, v in _flat_masks(masks).items()}
    for key, mask in flat.items():
        if key not in weights:
            raise ValueError(
                f"mask '{key}' must name a tensor of the model's plain state dict, "
                f"but it has no such key (it has e.g. {sorted(weights)[:5]})."
            )
        if mask.shape != weights[key].shape:
            raise ValueError(
                f"mask '{key}' must have its tensor's shape {tuple(weights[key].shape)}, "
                f"but got {tuple(mask.shape)}."
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask '{key}' must hold only 0 and 1, but got other values.")
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(weights, os.fspath(p)))
    _atomic_write(directory / MASKS_FILE, lambda p: save_file(flat, os.fspath(p)))
    return directory


def load_masked_state(
    model: nn.Module, directory: str | os.PathLike[str]
) -> dict[str, torch.Tensor]:
    """Load ``weights.safetensors`` into the plain ``model`` (strictly) and return the masks
    from ``masks.safetensors`` (``{"layer.weight": 0/1 float tensor}``, on CPU)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise ValueError(
                "`model` must be a plain model (no parametrizations) to load the dense weights "
                f"into, but module '{name}' has parametrizations on "
                f"{sorted(module.parametrizations)}."
            )
    model.load_state_dict(load_file(os.fspath(directory / WEIGHTS_FILE)), strict=True)
    return load_file(os.fspath(directory / MASKS_FILE))
