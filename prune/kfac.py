"""KFAC neuron pruning while training, steered toward flatter minima.

After Ebrahimi & Klabjan (2021), "Neuron-based Pruning of Deep Neural Networks with Better
Generalization using Kronecker Factored Curvature Approximation", arXiv:2111.08577: prune
neurons (not weights) during training from scratch, ranking them by a second-order saliency
from a Kronecker-factored curvature approximation, and direct the weights toward a flatter
solution by controlling the Hessian's spectral radius.

What is implemented:

* **Curvature factors** (K-FAC, Martens & Grosse 2015; convolutions as in KFC, Grosse & Martens
  2016, spatial positions treated as samples, and a Linear's tokens likewise on a sequence):
  per prunable layer, running averages (decay
  ``decay``, refreshed every ``stat_every`` steps on the training batch) of
  ``A = E[ã ãᵀ]`` (``ã`` = layer input with a 1 appended for the bias) and ``G = E[g gᵀ]``
  (``g`` = per-sample gradient of the loss w.r.t. the layer's pre-activations, with the batch's
  true labels: the empirical Fisher). The layer's Hessian block is approximated by ``G ⊗ A``.
* **Neuron saliency**: removing hidden unit ``j`` zeroes its incoming weights and bias
  ``w̃_j``; the second-order loss increase (OBD-style, gradient term dropped) is
  ``½ vec(δW)ᵀ (G ⊗ A) vec(δW) = ½ G_jj · w̃_jᵀ A w̃_j``. Units with the lowest saliency go
  first, on the cubic schedule of :mod:`prunetune.prune._neurons`, toward the ``neurons``
  budget: the same fraction of each layer by default, or ranked across layers
  (``allocation: global``; saliencies are loss increases, so comparable). On Fashion-MNIST
  LeNet-300-100 global ranking was far better at 8 live units and worse at 32 (it keeps too few
  first-layer units: single-unit saliencies miss their redundancy), hence the default.
* ``saliency: outgoing`` instead zeroes the unit's outgoing weights in the next layer:
  ``½ Σ_{a,b ∈ cols(j)} A⁺_ab (Wᵀ G⁺ W)_ab`` with the next layer's factors.
* **Flatness term**: the spectral radius of a layer's block is ``ρ_l = λ_max(A_l) λ_max(G_l)``,
  each factor's top eigenpair found by warm-started power iteration (``power_iters`` steps per
  refresh). The training loss gets ``flat · Σ_l λ_max(G_l) · uᵀ Â_l u`` where ``u`` is ``A_l``'s
  top eigenvector and ``Â_l`` the current batch's ``E[ã ãᵀ]`` — a differentiable estimate of
  ``Σ_l ρ_l`` (an upper bound on the block-diagonal spectral radius ``max_l ρ_l``) whose gradient
  shrinks the activations along the sharpest input direction of each layer. ``stats()`` reports
  ``spectral_radius = max_l ρ_l``.

Where it departs from the paper (or may; only the abstract was available while writing this):
the saliency is the OBD-style quadratic term on the K-FAC blocks (no OBS weight compensation,
no cross-layer curvature); the flatness term is a penalty on the K-FAC spectral-radius estimate
with ``G`` held fixed between refreshes (no Hessian-vector products, no constrained
optimisation); the Fisher is empirical (true labels), not sampled from the model; neurons are
removed on a fixed cubic schedule to a given budget rather than until an accuracy criterion
stops pruning.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "kfac", "neurons": 0.05, "flat": 1e-3})
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from prunetune.prune._base import register_method
from prunetune.prune._hparams import Choice, Float, HParamTable, Int
from prunetune.prune._neurons import NEURON_HPARAMS, NeuronPruning
from prunetune.prune._topology import Layer, Topology, raw_bias, raw_weight


def layer_inputs(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Rows ``ã`` of the input factor: ``(b, in [+1])``; ``(b·T, in [+1])`` for a Linear on a
    sequence ``(b, …, in)`` (every position a sample, as a conv's); ``(b·L, C·k [+1])`` for a
    conv (``C·k·k`` for a Conv2d), its input padded as the conv pads it (``padding='same'``,
    reflect or circular ``padding_mode``)."""
    if isinstance(module, nn.Linear):
        a = a.reshape(-1, a.shape[-1])
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        a = nn.functional.pad(a, module._reversed_padding_repeated_twice, mode=mode)
        if isinstance(module, nn.Conv1d):  # (b, C, L) as (b, C, 1, L) under a (1, k) kernel
            a = a.unsqueeze(2)
            kernel, dilation, stride = (
                (1, *module.kernel_size),
                (1, *module.dilation),
                (1, *module.stride),
            )
        else:
            kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        a = nn.functional.unfold(a, kernel, dilation, 0, stride)  # (b, C·k·k, L)
        a = a.transpose(1, 2).reshape(-1, a.shape[1])
    if raw_bias(module) is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
    return a


def factors(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``A = E[ã ãᵀ]`` and ``G = E[g gᵀ]`` of one batch.

    Args:
        a: the layer's input batch.
        g: gradient of the *mean* batch loss w.r.t. the layer's output; scaled by the batch size
            it is the per-sample gradient.
    """
    b = a.shape[0]
    rows = layer_inputs(module, a)
    g = g * b
    if isinstance(module, nn.Linear):  # (b, out), or (b, …, out) on a sequence → (b·T, out)
        g = g.reshape(-1, g.shape[-1])
    else:  # (b, out, L) or (b, out, H, W) → (b·L, out); positions summed per sample
        g = g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])
    return rows.T @ rows / rows.shape[0], g.T @ g / b


def top_eig(m: torch.Tensor, v: torch.Tensor, iters: int) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue and eigenvector of a symmetric PSD matrix by power iteration."""
    for _ in range(iters):
        w = m @ v
        v = w / w.norm().clamp_min(1e-30)
    return float(v @ m @ v), v


def neuron_saliency(
    w: torch.Tensor, b: torch.Tensor | None, a_f: torch.Tensor, g_f: torch.Tensor
) -> torch.Tensor:
    """``½ G_jj · w̃_jᵀ A w̃_j`` per output unit ``j`` (``w̃_j`` = incoming weights + bias)."""
    wt = w.flatten(1)
    if b is not None:
        wt = torch.cat([wt, b[:, None]], 1)
    return 0.5 * torch.diagonal(g_f) * ((wt @ a_f) * wt).sum(1)


def outgoing_saliency(
    w_next: torch.Tensor, a_next: torch.Tensor, g_next: torch.Tensor, units: int, bias: bool
) -> torch.Tensor:
    """``½ vec(δW)ᵀ (G ⊗ A) vec(δW)`` of the *next* layer when unit ``j``'s outgoing weights
    (its input columns there, ``k·k`` per channel for a conv, ``H·W`` after a flatten) are zeroed:
    ``½ Σ_{a,b ∈ cols(j)} A_ab (Wᵀ G W)_ab``."""
    wf = w_next.flatten(1)  # (out, cols), columns channel-major like unfold and flatten
    a = a_next[:-1, :-1] if bias else a_next
    per = wf.shape[1] // units
    prod = (a * (wf.T @ g_next @ wf)).view(units, per, units, per)
    return 0.5 * torch.einsum("ipiq->i", prod)


@register_method
class KFACNeuronPruning(NeuronPruning):
    """Neuron pruning during training with K-FAC saliency and a flatness term."""

    name = "kfac"
    hparams: ClassVar[HParamTable] = {
        **NEURON_HPARAMS,
        "stat_every": Int(1, 1000, 10, log=True, help="steps between K-FAC factor refreshes"),
        "decay": Float(0.0, 0.999, 0.9, help="running-average decay of the factors"),
        "flat": Float(0.0, 10.0, 1e-3, help="weight of the spectral-radius (flatness) term"),
        "power_iters": Int(1, 100, 5, help="power-iteration steps per refresh (warm-started)"),
        "samples": Int(1, 65536, 256, log=True, help="batch size of a first factor estimate"),
        "saliency": Choice(
            ("incoming", "outgoing"),
            "incoming",
            help="zero the unit's incoming weights + bias, or its outgoing weights",
        ),
    }

    def setup(self) -> None:
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self.eig: dict[str, tuple[float, torch.Tensor, float, torch.Tensor]] = {}
        self._a: dict[str, torch.Tensor] = {}
        self._g: dict[str, torch.Tensor] = {}
        self._collect = True
        for layer in self.ctx.layers:
            layer.module.register_forward_hook(self._hook(layer))

    def _hook(self, layer: Layer) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            self._a[layer.name] = inputs[0]  # kept with its graph for the flatness term
            if self._collect and out.requires_grad:
                out.register_hook(lambda g: self._g.__setitem__(layer.name, g.detach()))

        return hook

    def _refresh(self) -> None:
        """Fold the captured batch into the running factors; update their top eigenpairs."""
        d = self.config["decay"]
        for layer in self.ctx.layers:
            if layer.name not in self._g:
                continue
            a_f, g_f = factors(layer.module, self._a[layer.name].detach(), self._g[layer.name])
            first = layer.name not in self.A
            self.A[layer.name] = a_f if first else d * self.A[layer.name] + (1 - d) * a_f
            self.G[layer.name] = g_f if first else d * self.G[layer.name] + (1 - d) * g_f
            it = self.config["power_iters"]
            if layer.name not in self.eig:  # cold start: random direction, more iterations
                self.eig[layer.name] = (0.0, _start(a_f), 0.0, _start(g_f))
                it *= 10
            _, u0, _, v0 = self.eig[layer.name]
            la, u = top_eig(self.A[layer.name], u0, it)
            lg, v = top_eig(self.G[layer.name], v0, it)
            self.eig[layer.name] = (la, u, lg, v)
        self._g.clear()

    def on_step(self, step: int) -> None:
        if self._g:
            self._refresh()
        self._collect = step % self.config["stat_every"] == 0
        super().on_step(step)

    def _estimate(self) -> None:
        """Factors from one sampled batch (before the first refresh during training)."""
        x, y = self.ctx.sample_batch(self.config["samples"])
        self._collect = True
        self.ctx.loss_fn(self.model(x), y).backward()
        for p in self.model.parameters():
            p.grad = None
        self._refresh()

    @classmethod
    def check(cls, topology: Topology) -> None:
        """K-FAC's per-layer saliency needs each unit made by one layer and read by at most one
        (a chain of Linear/conv layers, no normalisation)."""
        for layer in topology.layers:
            if layer.kind == "grouped":
                raise ValueError(
                    f"method kfac cannot prune layer {layer.name}: it is a grouped "
                    f"{type(layer.module).__name__}; K-FAC factors are written for ungrouped "
                    "Linear and conv layers (use magnitude_neuron or gumbel)."
                )
        for g in topology.groups:
            why = None
            if len(g.producers) != 1:
                why = f"its channels are made by {len(g.producers)} layers (a residual add?)"
            elif g.norms:
                why = f"its channels are normalised by {g.norms[0].name}"
            elif len(g.consumers) > 1:
                why = f"its channels are read by {len(g.consumers)} layers"
            elif topology.by_name[g.root].kind not in ("linear", "conv"):
                why = f"it is a {topology.by_name[g.root].kind} conv"
            if why:
                raise ValueError(
                    f"method kfac cannot prune layer {g.root}: {why}; K-FAC neuron saliency "
                    "needs a chain of Linear/conv layers (use magnitude_neuron or gumbel)."
                )

    def neuron_scores(self) -> torch.Tensor:
        incoming = self.config["saliency"] == "incoming"
        needed = {
            (g.producers if incoming else g.consumers)[0].name for g in self.ctx.topology.groups
        }
        if any(name not in self.A for name in needed):
            self._estimate()
        out = torch.zeros(self.ctx.topology.channels, dtype=torch.float64)
        by_name = self.ctx.topology.by_name
        with torch.no_grad():
            for g in self.ctx.topology.groups:
                layer = by_name[g.producers[0].name]
                if self.config["saliency"] == "incoming":
                    s = neuron_saliency(
                        raw_weight(layer.module),
                        raw_bias(layer.module),
                        self.A[layer.name],
                        self.G[layer.name],
                    )
                else:
                    nxt = by_name[g.consumers[0].name]
                    s = outgoing_saliency(
                        raw_weight(nxt.module),
                        self.A[nxt.name],
                        self.G[nxt.name],
                        layer.out_units,
                        raw_bias(nxt.module) is not None,
                    )
                out[g.offset : g.offset + g.size] = s.double().cpu()
        return out

    def penalty(self) -> torch.Tensor | None:
        if self.config["flat"] == 0 or not self.eig:
            return None
        total = None
        for layer in self.ctx.layers:
            a = self._a.get(layer.name)
            if layer.name not in self.eig or a is None or not a.requires_grad:
                continue  # e.g. the first layer: its input does not depend on the weights
            _, u, lg, _ = self.eig[layer.name]
            term = lg * (layer_inputs(layer.module, a) @ u).pow(2).mean()
            total = term if total is None else total + term
        return None if total is None else self.config["flat"] * total

    def stats(self) -> dict[str, float]:
        rho = max((la * lg for la, _, lg, _ in self.eig.values()), default=float("nan"))
        return {**super().stats(), "spectral_radius": rho}


def _start(m: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random unit vector (not all-ones: G of a softmax output annihilates 1)."""
    v = torch.randn(m.shape[0], generator=torch.Generator().manual_seed(m.shape[0]))
    return (v / v.norm()).to(m)
