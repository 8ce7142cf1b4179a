"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

Unlike the other families these are not ``nn.Sequential`` stacks: the residual adds need a real
``forward``. They are still plain ``torch.nn`` modules with no pruning logic; masks attach from
outside and torch-pruning's dependency graph couples the channels that the adds tie together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunetune._schema import RESNET_DEPTHS

# depth = 6n + 2 (n BasicBlocks per stage, 2 convs each, plus the stem conv and the classifier);
# RESNET_DEPTHS is declared once, with the trial config.


def _check_positive(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, but got {value!r}.")
    return value


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows has its own shift.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (identity or projection) shortcut, then ReLU.

    Where the block changes the resolution or the width, the shortcut is a strided 1x1 conv + BN
    (the paper's option B); elsewhere it is the identity.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))  # (b, c_out, H / stride, W / stride)
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2``: a 3x3 stem, three stages of ``n`` BasicBlocks with
    widths ``(w, 2w, 4w)`` (stride 2 entering stages 2 and 3), global average pool, Linear.

    Paper: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
    section 4.2; downsampling shortcuts are 1x1 projections (option B).

    Args:
        depth: one of ``8, 14, 20, 32`` (``n = 1, 2, 3, 5``).
        width: channels of the stem and of the first stage (the paper's 16).
        in_channels: channels of the input image.
        num_outputs: size of the final Linear layer.

    Raises:
        ValueError: a depth outside ``RESNET_DEPTHS``, or a width, channel count or output count
            that is not a positive integer.

    Example:
        >>> import torch
        >>> from prunetune.models import CifarResNet
        >>> model = CifarResNet(depth=20, width=16, in_channels=3, num_outputs=10)
        >>> sum(p.numel() for p in model.parameters())
        272474
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, depth: int = 20, width: int = 16, in_channels: int = 3, num_outputs: int = 10
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or depth not in RESNET_DEPTHS:
            raise ValueError(
                f"model.depth must be one of {list(RESNET_DEPTHS)}, but got {depth!r}."
            )
        width = _check_positive(width, "model.width")
        in_channels = _check_positive(in_channels, "in_channels")
        num_outputs = _check_positive(num_outputs, "num_outputs")
        n = (depth - 2) // 6
        self.depth, self.width = depth, width
        self.stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, c_out, stride)]
            blocks += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (b, width, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (b, 4 * width, H / 4, W / 4)
        return self.fc(self.flatten(self.pool(x)))  # (b, num_outputs)


def resnet_model(
    input_shape: Sequence[int], num_outputs: int, depth: int = 20, width: int = 16
) -> CifarResNet:
    """A :class:`CifarResNet` for images of shape ``input_shape = (C, H, W)``.

    Raises:
        ValueError: the input is not an image of at least 8x8 pixels, or as
            :class:`CifarResNet`.
    """
    if len(input_shape) != 3 or min(input_shape[1:]) < 8:
        raise ValueError(
            f"resnet needs image inputs (C, H, W) of at least 8x8 pixels, "
            f"but got {tuple(input_shape)}."
        )
    return CifarResNet(depth, width, int(input_shape[0]), num_outputs)
