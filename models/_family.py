"""One entry point for every built-in family, Sequential (spec-built) or not."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from prunetune.models._arch import build_model, family_spec
from prunetune.models._resnet import resnet_model


def build_family(
    family: str,
    input_shape: Sequence[int],
    num_outputs: int,
    widths: Sequence[int] = (),
    channels: Sequence[int] = (),
    activation: str = "relu",
    depth: int = 20,
) -> nn.Module:
    """Build a built-in family: ``mlp``, ``lenet5``, ``cnn`` or ``resnet``.

    ``mlp``, ``lenet5`` and ``cnn`` are ``build_model(family_spec(...))``, so they stay plain
    ``nn.Sequential`` stacks (same modules, same initialisation under the same torch seed).
    ``resnet`` is a :class:`~prunetune.models.CifarResNet` of ``depth`` (8, 14, 20 or 32) whose
    stem width is ``channels[0]`` (16 when ``channels`` is empty); it has no hidden FC layers, so
    ``widths`` is ignored, and it is a ReLU network.

    Args:
        family: one of :data:`~prunetune.models.FAMILIES`.
        input_shape: ``(C, H, W)`` for images, ``(F,)`` for flat features (mlp only).
        num_outputs: size of the final Linear layer.
        widths: hidden fully connected widths (mlp, lenet5, cnn).
        channels: conv channels (lenet5, cnn); ``[w]``, the stem width, for resnet.
        activation: one of :data:`~prunetune.models.ACTIVATIONS`; ``relu`` for resnet.
        depth: resnet depth; the other families express depth through ``widths``.

    Raises:
        ValueError: an unknown family, or an argument the family cannot take (names the field
            and the value).

    Example:
        >>> from prunetune.models import build_family
        >>> model = build_family("resnet", (3, 32, 32), 10, depth=8, channels=[8])
        >>> sum(p.numel() for p in model.parameters())
        19954
    """
    if family != "resnet":
        return build_model(
            family_spec(family, input_shape, num_outputs, widths, channels, activation)
        )
    if activation != "relu":
        raise ValueError(
            f"model.activation must be 'relu' for family 'resnet', but got {activation!r}."
        )
    if len(channels) > 1:
        raise ValueError(
            f"model.channels for family 'resnet' must be [width] (stages use width, 2*width, "
            f"4*width), but got {list(channels)}."
        )
    return resnet_model(input_shape, num_outputs, depth, width=channels[0] if channels else 16)
