"""Private: each input feature's share of the surviving input→output path norm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from prunetune.explain._pathways import effective_weights
from prunetune.prune._base import Mask
from prunetune.prune._chain import ChainLayer as Layer

# --------------------------------------------------------------------------- importance


@dataclass(frozen=True)
class FeatureImportance:
    """Path-norm importance of each input feature.

    Attributes:
        input_shape: shape of one input sample; features are its flattened elements.
        path_norm: ``[num_outputs, num_features]``, ``Σ_paths Π |w|^power`` from each feature to
            each output through kept weights.
        overall: ``[num_features]``, each feature's share of the total path norm (sums to 1,
            or all 0 when nothing survives); exactly 0 without a surviving path.
        per_output: ``[num_outputs, num_features]``, shares per output (rows sum to 1, or 0
            for an output no feature reaches).
    """

    input_shape: tuple[int, ...]
    path_norm: torch.Tensor
    overall: torch.Tensor
    per_output: torch.Tensor

    def heatmap(self, output: int | None = None) -> torch.Tensor:
        """Shares in the input's shape: ``overall`` (``output=None``) or one output's.

        Raises:
            ValueError: ``output`` is out of range.
        """
        if output is None:
            return self.overall.view(self.input_shape)
        n = self.per_output.shape[0]
        if not 0 <= output < n:
            raise ValueError(f"`0 <= output < {n}` must hold, but got {output=}.")
        return self.per_output[output].view(self.input_shape)

    def heatmaps(self) -> torch.Tensor:
        """Per-output shares, ``[num_outputs, *input_shape]``."""
        return self.per_output.view(self.per_output.shape[0], *self.input_shape)


def _abs_forward(
    model: nn.Sequential, layers: list[Layer], ws: list[torch.Tensor], x: torch.Tensor, power: float
) -> torch.Tensor:
    """``x`` through the network with weights ``|w|^power``, no biases, identity activations
    and max-pooling replaced by a sum over its window: a linear map that counts every path."""
    by_index = {layer.index: w for layer, w in zip(layers, ws, strict=True)}
    for i, m in enumerate(model):
        if i in by_index:
            w = by_index[i].abs() ** power
            if isinstance(m, nn.Linear):
                x = F.linear(x, w)
            else:
                assert isinstance(m, nn.Conv2d)
                x = F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.MaxPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            x = F.avg_pool2d(x, k, m.stride, m.padding) * (k[0] * k[1])
        elif isinstance(m, nn.Flatten):
            x = m(x)
        # activations and dropout: identity
    return x


@torch.no_grad()
def feature_importance(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, Mask] | None = None,
    power: float = 1.0,
    input_scale: torch.Tensor | None = None,
    chunk: int = 1024,
) -> FeatureImportance:
    """Each input feature's share of the surviving input→output path norm.

    ``P[k, i] = Σ_{paths i → k} Π_{w on path} |w|^power`` (Neyshabur et al. 2015's path norm
    for ``power`` = 1 or 2), computed by pushing the identity basis through the network with
    absolute weights. With only Linear layers this is ``|W_L| ⋯ |W_1|``.

    The path norm sees weights only: an input that barely varies (an image's border pixels) can
    carry a large one. ``input_scale`` (e.g. each feature's standard deviation over the
    training data) multiplies column ``i`` by ``s_i`` to weigh features by how much they vary.

    Args:
        model: compact or masked ``nn.Sequential``.
        input_shape: shape of one input sample.
        masks: hard masks per prunable layer name (default: the model's own weights).
        power: exponent applied to ``|w|``.
        input_scale: non-negative per-feature factors, ``input_shape`` or flattened.
        chunk: basis vectors per forward pass.

    Raises:
        ValueError: ``power <= 0``, a bad ``input_scale``, or an unsupported model.
    """
    if not power > 0:
        raise ValueError(f"`power > 0` must hold, but got {power=}.")
    layers, ws = effective_weights(model, input_shape, masks)
    return _importance(model, layers, ws, input_shape, power, chunk, input_scale)


def _importance(
    model: nn.Module,
    layers: list[Layer],
    ws: list[torch.Tensor],
    input_shape: Sequence[int],
    power: float,
    chunk: int,
    input_scale: torch.Tensor | None = None,
) -> FeatureImportance:
    shape = tuple(int(d) for d in input_shape)
    n = math.prod(shape)
    scale = None
    if input_scale is not None:
        scale = torch.as_tensor(input_scale).detach().to("cpu", torch.float64).reshape(-1)
        if scale.numel() != n or not bool((scale >= 0).all()):
            raise ValueError(
                f"input_scale must hold {n} non-negative factors (one per feature of "
                f"{shape}), but got {scale.numel()} with min {float(scale.min()):g}."
            )
    cols = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        basis = torch.zeros(stop - start, n, dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        cols.append(_abs_forward(model, layers, ws, basis.view(-1, *shape), power))  # type: ignore[arg-type]
    pn = torch.cat(cols).T.contiguous()  # (num_outputs, num_features)
    if scale is not None:
        pn = pn * scale[None, :]
    total = pn.sum()
    overall = pn.sum(0) / total if total > 0 else torch.zeros(n, dtype=torch.float64)
    row = pn.sum(1, keepdim=True)
    per_output = torch.where(row > 0, pn / row.clamp_min(torch.finfo(pn.dtype).tiny), 0.0)
    return FeatureImportance(
        input_shape=shape, path_norm=pn, overall=overall, per_output=per_output
    )
