"""Models from user factories (``"package.module:callable"``), and ``resnet`` as one.

The callable gets the trial's ``params``; where its signature has ``num_classes``,
``in_channels`` or ``input_shape`` and ``params`` does not set them, they come from the data.
Any ``torch.nn.Module`` it returns is a model prunetune can prune (see ``docs/any-model.md``).

Example:
    >>> from prunetune.models import build_from_factory
    >>> m = build_from_factory("prunetune.models:resnet", {"depth": 8, "width": 4},
    ...                        input_shape=(3, 16, 16), num_outputs=5)
    >>> m.fc.out_features, m.stem[0].in_channels
    (5, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from prunetune._factory import FactoryError, accepts, resolve
from prunetune.models._resnet import CifarResNet

#: Parameters prunetune fills from the data when a factory takes them and the spec is silent.
DATA_PARAMS = ("num_classes", "in_channels", "input_shape")


def data_params(
    fn: Any, params: Mapping[str, Any], input_shape: Sequence[int], num_outputs: int
) -> dict[str, Any]:
    """``params`` plus what ``fn`` takes of :data:`DATA_PARAMS` and ``params`` does not set."""
    from_data = {
        "num_classes": int(num_outputs),
        "in_channels": int(input_shape[0]),
        "input_shape": [int(s) for s in input_shape],
    }
    out = dict(params)
    for name in DATA_PARAMS:
        if name not in out and accepts(fn, name):
            out[name] = from_data[name]
    return out


def build_from_factory(
    path: str,
    params: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    num_outputs: int,
    field: str = "model.factory",
) -> nn.Module:
    """Call the factory ``path`` with ``params`` (+ the data's, see :func:`data_params`).

    Raises:
        FactoryError: the factory does not resolve, raises, or returns no ``nn.Module`` —
            naming ``field`` and ``path``.
    """
    fn = resolve(path, field)
    kwargs = data_params(fn, params, input_shape, num_outputs)
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise FactoryError(
            f"{field}: {path!r} raised {type(e).__name__}: {e} (called with {kwargs})"
        ) from None
    if not isinstance(model, nn.Module):
        raise FactoryError(
            f"{field}: {path!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def resnet(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3
) -> CifarResNet:
    """A CIFAR ResNet (:class:`~prunetune.models.CifarResNet`) as a model factory:
    ``model: {factory: "prunetune.models:resnet", params: {depth: [8, 14, 20], width: [8, 16]}}``
    (``num_classes`` and ``in_channels`` come from the data)."""
    return CifarResNet(depth, width, in_channels, num_classes)


__all__ = ["DATA_PARAMS", "FactoryError", "build_from_factory", "data_params", "resnet"]
