"""A model factory: a small residual CNN with BatchNorm.

``conv stem → blocks × BasicBlock → global average pool → Linear``. The residual add ties the
stem's channels to every block's second conv, so prunetune removes those channels together
(one channel group), while each block's inner channels form a group of their own.

A prunetune spec calls it as ``model: {factory: "tinyshapes.nets:build", params: {...}}``;
``num_classes`` and ``in_channels`` are filled from the data.

Example:
    >>> import torch
    >>> from tinyshapes.nets import build
    >>> build(width=8, blocks=2, num_classes=6)(torch.zeros(4, 1, 16, 16)).shape
    torch.Size([4, 6])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ShapeNet", "build"]


class BasicBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant width (He et al. 2016)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))  # (b, c, h, w)
        return torch.relu(x + self.bn2(self.conv2(y)))


class ShapeNet(nn.Module):
    """The CNN: a 3×3 conv stem, ``blocks`` residual blocks, average pool and a Linear head."""

    def __init__(self, width: int, blocks: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*(BasicBlock(width) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (b, width, h, w)
        return self.head(x.mean((2, 3)))  # (b, num_classes)


def build(
    width: int = 16, blocks: int = 1, num_classes: int = 10, in_channels: int = 1
) -> nn.Module:
    """The factory: a :class:`ShapeNet` of ``width`` channels and ``blocks`` residual blocks.

    Raises:
        ValueError: ``width`` or ``blocks`` is below 1.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    return ShapeNet(width, blocks, num_classes, in_channels)
