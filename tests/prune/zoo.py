"""A zoo of small models for contract tests: the structures pruning has to get right.

Every entry of :data:`ZOO` is a factory returning ``(model, x)``: the model freshly built under
``torch.manual_seed(seed)`` (``seed=0`` unless passed; train mode) and an example batch of 4
inputs drawn after it. All have 10 outputs and
run a batch-4 forward in a few milliseconds on one CPU thread.

==================  ==========  =============================================================
name                input       what it exercises
==================  ==========  =============================================================
mlp                 (1, 8, 8)   ``build_family("mlp")``: Flatten + Linear stack [32, 16]
lenet5              (1, 28, 28) ``build_family("lenet5")``: conv-pool-conv-pool-fc-fc-fc
resnet8             (3, 32, 32) ``build_family("resnet", depth=8, channels=[8])``: residual
                                adds, BN, 1x1 projection shortcuts
concat              (3, 32, 32) :class:`ConcatNet`: two conv branches joined by ``torch.cat``
mobilenetv2         (3, 32, 32) :class:`MobileNetV2`: inverted residuals, depthwise convs
                                (``groups=channels``), ReLU6, linear bottlenecks
resnet18            (3, 32, 32) :class:`ResNet18`: torchvision's layout (one in-place ReLU
                                module called twice per block, ``downsample`` shortcuts) at
                                widths (8, 16, 32, 64), 3x3 stem, no max-pool
mobilenetv3_small   (3, 32, 32) :class:`MobileNetV3Small`: hardswish, squeeze-excitation
                                (channel-wise multiply), blocks with and without residual adds,
                                a Linear-hardswish-Linear head
densenet            (3, 32, 32) :class:`DenseNet`: every layer reads the concatenation of all
                                earlier maps of its block, so one BatchNorm holds the channels
                                of several groups (a removal shifts the others' indices)
==================  ==========  =============================================================

Use :func:`output_layer` for the layer whose outputs are the model's outputs (never pruned).

Example:
    >>> from zoo import ZOO
    >>> model, x = ZOO["concat"]()
    >>> model(x).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunetune.models import build_family

NUM_OUTPUTS = 10
BATCH = 4


def _conv_bn(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ConcatNet(nn.Module):
    """Two parallel conv branches (3x3 and 5x5) concatenated on channels, then a conv and a head.

    Pruning a channel of either branch removes one input channel of ``fuse`` at an offset.
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = NUM_OUTPUTS) -> None:
        super().__init__()
        self.branch3 = _conv_bn(in_channels, 8, 3)
        self.branch5 = _conv_bn(in_channels, 6, 5)
        self.fuse = _conv_bn(8 + 6, 16, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.branch3(x), self.branch5(x)], dim=1)  # (b, 14, H, W)
        x = self.fuse(x)  # (b, 16, H / 2, W / 2)
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expand-ReLU6, 3x3 depthwise-ReLU6, 1x1 linear
    projection; a residual add when the block keeps the resolution and the width."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            _conv_bn(c_in, hidden, 1, act=nn.ReLU6),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            _conv_bn(hidden, c_out, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """A narrow MobileNetV2 for 32x32 inputs: stem, three inverted residuals (two with adds)."""

    def __init__(self, in_channels: int = 3, num_outputs: int = NUM_OUTPUTS) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, 8, 3, act=nn.ReLU6),
            InvertedResidual(8, 8, 1, expand=4),  # residual
            InvertedResidual(8, 16, 2, expand=4),
            InvertedResidual(16, 16, 1, expand=4),  # residual
            _conv_bn(16, 32, 1, act=nn.ReLU6),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (b, 32, H / 2, W / 2)
        return self.classifier(torch.flatten(self.pool(x), 1))


class BasicBlock18(nn.Module):
    """torchvision's ResNet BasicBlock: one in-place ReLU module used twice, ``downsample``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016; torchvision's module layout) with a 3x3 stride-1 stem and no
    max-pool for 32x32 inputs, four stages of two BasicBlocks at narrow widths."""

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (8, 16, 32, 64),
        in_channels: int = 3,
        num_outputs: int = NUM_OUTPUTS,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        stages = []
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock18(c_in, c_out, stride), BasicBlock18(c_out, c_out))
            )
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (b, 8, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (b, 64, H / 8, W / 8)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcitation(nn.Module):
    """SE (Hu et al. 2018) as in MobileNetV3: pool, 1x1 reduce, ReLU, 1x1 expand, Hardsigmoid,
    then scale the input channel-wise."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.relu(self.fc1(self.avgpool(x))))  # (b, channels, 1, 1)
        return x * self.scale_activation(scale)


class MobileNetV3Block(nn.Module):
    """MobileNetV3 inverted residual (Howard et al. 2019): optional 1x1 expansion, depthwise
    k x k, optional SE, linear 1x1 projection; residual add at stride 1 with equal widths."""

    def __init__(
        self,
        c_in: int,
        kernel: int,
        hidden: int,
        c_out: int,
        use_se: bool,
        act: type[nn.Module],
        stride: int,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if hidden != c_in:  # torchvision skips the expansion when it would be the identity width
            layers.append(_conv_bn(c_in, hidden, 1, act=act))
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if use_se:
            layers.append(SqueezeExcitation(hidden, max(4, hidden // 4)))
        layers.append(_conv_bn(hidden, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small's layout at narrow widths for 32x32 inputs (stride-1 stem)."""

    def __init__(self, in_channels: int = 3, num_outputs: int = NUM_OUTPUTS) -> None:
        super().__init__()
        relu, hs = nn.ReLU, nn.Hardswish
        self.features = nn.Sequential(
            _conv_bn(in_channels, 8, 3, act=hs),
            # c_in, kernel, hidden, c_out, SE, activation, stride
            MobileNetV3Block(8, 3, 8, 8, True, relu, 2),  # SE, no expansion, no residual
            MobileNetV3Block(8, 3, 24, 16, False, relu, 2),
            MobileNetV3Block(16, 3, 32, 16, False, relu, 1),  # residual
            MobileNetV3Block(16, 5, 48, 16, True, hs, 1),  # SE and residual
            _conv_bn(16, 48, 1, act=hs),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 64), nn.Hardswish(), nn.Linear(64, num_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (b, 48, H / 4, W / 4)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """torchvision's dense layer: BN-ReLU-1x1 conv (bottleneck) then BN-ReLU-3x3 conv (the
    growth), on the concatenation of every earlier feature map of its block."""

    def __init__(self, c_in: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, bottleneck, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class DenseNet(nn.Module):
    """DenseNet (Huang et al. 2017) in torchvision's layout at narrow widths for 32x32 inputs:
    a 3x3 stem, two blocks of two dense layers (growth 4, bottleneck 8) joined by a transition
    (BN-ReLU-1x1 conv halving the channels, 2x2 average pool), a final BN. Every channel is
    read by several BatchNorms, each through its own concatenation."""

    def __init__(self, in_channels: int = 3, num_outputs: int = NUM_OUTPUTS) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.block1 = nn.ModuleList([DenseLayer(8, 4, 8), DenseLayer(12, 4, 8)])
        self.transition = nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.ModuleList([DenseLayer(8, 4, 8), DenseLayer(12, 4, 8)])
        self.norm = nn.BatchNorm2d(16)
        self.classifier = nn.Linear(16, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.block1:
            features.append(layer(features))
        features = [self.transition(torch.cat(features, 1))]
        for layer in self.block2:
            features.append(layer(features))
        x = torch.relu(self.norm(torch.cat(features, 1)))  # (b, 16, H / 2, W / 2)
        return self.classifier(x.mean((2, 3)))


def _factory(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...]
) -> Callable[..., tuple[nn.Module, torch.Tensor]]:
    def make(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(seed)
        model = build()
        return model, torch.randn(BATCH, *input_shape)  # (4, *input_shape)

    return make


IMAGE = (3, 32, 32)

ZOO: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "mlp": _factory(
        lambda: build_family("mlp", (1, 8, 8), NUM_OUTPUTS, widths=[32, 16]), (1, 8, 8)
    ),
    "lenet5": _factory(
        lambda: build_family("lenet5", (1, 28, 28), NUM_OUTPUTS, widths=[120, 84]), (1, 28, 28)
    ),
    "resnet8": _factory(
        lambda: build_family("resnet", IMAGE, NUM_OUTPUTS, depth=8, channels=[8]), IMAGE
    ),
    "concat": _factory(ConcatNet, IMAGE),
    "mobilenetv2": _factory(MobileNetV2, IMAGE),
    "resnet18": _factory(ResNet18, IMAGE),
    "mobilenetv3_small": _factory(MobileNetV3Small, IMAGE),
    "densenet": _factory(DenseNet, IMAGE),
}


def train_briefly(model: nn.Module, x: torch.Tensor, method_cfg: dict, seed: int = 0):
    """Two epochs of batch 8 on 32 random inputs shaped like ``x`` (random labels of 10
    classes), after the method's structure check; returns ``(method, topology, inputs)``.
    Gumbel's gate logits are then drawn at random so that its masks prune visibly."""
    from types import SimpleNamespace

    from prunetune.datasets import batches
    from prunetune.prune import Topology, TrainConfig, make_method, train

    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(32, *x.shape[1:], generator=g)
    ys = torch.randint(0, 10, (32,), generator=g)
    data = SimpleNamespace(
        input_shape=tuple(x.shape[1:]), x_train=xs, y_train=ys, x_val=xs[:8], y_val=ys[:8]
    )
    method = make_method(method_cfg)
    topology = Topology.build(model, x)
    type(method).check(topology)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=seed)
    train(
        model,
        method,
        data,
        cfg,
        batches=lambda gen: batches(xs, ys, cfg.batch_size, generator=gen),
        topology=topology,
    )
    if method_cfg["name"] == "gumbel":
        with torch.no_grad():
            for gate in method.gates.values():
                gate.logits.copy_(torch.randn(gate.logits.shape, generator=g) + 0.3)
    return method, topology, xs


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier: the last ``nn.Linear`` registered (true of every zoo model)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
