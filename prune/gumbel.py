"""Pruning by gradient descent with Gumbel-softmax masks.

Zhang, Tao & Zhang (2023), "Neural Network Pruning by Gradient Descent", arXiv:2311.12526.
Each weight (granularity ``weight``) or each hidden neuron / conv channel (granularity
``neuron``) has a learnable keep/drop logit θ. A two-class Gumbel-softmax over
(keep, drop) logits (θ, 0) is a binary concrete variable: ``y = σ((θ + L) / τ)`` with logistic
noise ``L = log u − log(1 − u)``. Training uses the straight-through hard mask
``1[θ + L > 0]`` in the forward pass and the gradient of ``y`` backward; evaluation uses the
deterministic mask ``1[θ > 0]``. A sparsity penalty on the expected kept-parameter fraction
(``P(keep) = σ(θ)``) pushes logits down; the temperature τ is annealed by a schedule.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "gumbel", "lam": 2.0, "granularity": "weight"})
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune import _fused
from prunetune.prune._base import Mask, PruneContext, PruningMethod, register_method
from prunetune.prune._hparams import Choice, Float, HParamTable
from prunetune.prune._topology import raw_bias, raw_weight

SCHEDULES = ("constant", "linear", "exponential", "cosine")


def temperature(schedule: str, tau_start: float, tau_end: float, progress: float) -> float:
    """Temperature at ``progress`` ∈ [0, 1] of the annealing window."""
    t = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return tau_start
    if schedule == "linear":
        return tau_start + (tau_end - tau_start) * t
    if schedule == "exponential":
        return tau_start * (tau_end / tau_start) ** t
    if schedule == "cosine":
        return tau_end + (tau_start - tau_end) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, but got {schedule!r}.")


class _HardConcrete(torch.autograd.Function):
    """Straight-through binary concrete sample and keep probability, in one autograd node.

    With ``u ~ U(0, 1)``, ``1[u < σ(θ)]`` equals ``1[θ + L > 0]`` for the logistic noise
    ``L = logit(1 − u)``, so the forward pass needs no logarithms. Backward applies the
    concrete gradient ``∂σ((θ + L)/τ)/∂θ = y (1 − y) / τ`` to the hard sample and
    ``σ'(θ)`` to the keep probability (which the sparsity penalty uses). Used for neuron gates
    (a few hundred logits); the sample is the mask kernels' (``prunetune.prune._fused``) of a
    weight of ones, so neuron and per-weight gates draw one noise, on the compiled kernel when
    it is available and on ATen ops otherwise. Per-weight gates use :class:`_MaskedWeight`.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ones = torch.ones_like(logits)
        hard, _, rows_q, noise = _fused.mask_forward(logits, ones, False)  # 1 · 1[u < σ(θ)]
        p = torch.sigmoid(logits)
        ctx.save_for_backward(logits, p)
        ctx.rows_q, ctx.noise, ctx.tau = rows_q, noise, tau
        return hard, p

    @staticmethod
    def backward(ctx: Any, g_hard: torch.Tensor, g_p: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        logits, p = ctx.saved_tensors
        # g·y(1 − y)/τ with z/τ = (θ + logit(1 − u))/τ = (θ − logit(u))/τ; no count term (c = 0)
        _, grad = _fused.mask_backward(
            logits,
            torch.ones_like(logits),
            ctx.rows_q,
            ctx.noise,
            ctx.tau,
            False,
            g_hard,
            logits.new_zeros(()),
        )
        return grad.add_(p * (1.0 - p) * g_p), None


class _MaskedWeight(torch.autograd.Function):
    """``w · 1[u < σ(θ)]`` for per-weight gates, and the layer's expected kept parameters.

    One fused kernel each way (``prunetune.prune._fused``). Forward draws ``u``, masks ``w`` and
    returns the penalty's count ``Σ σ(θ)`` (+ ``Σ_rows (1 − Π_row (1 − σ(θ)))``, the expected
    live units, when the layer's bias counts); backward returns ``∂L/∂w`` through the mask and
    ``∂L/∂θ`` = the straight-through concrete gradient ``g·w·y(1 − y)/τ`` with
    ``y = σ((θ − logit u)/τ)``, plus the count's gradient. The kernel regenerates ``u`` from a
    per-call key, so nothing the size of ``θ`` is kept for backward; the ATen path (CUDA,
    float64, no compiler) draws the same ``u`` from the same key and keeps it.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, weight: torch.Tensor, tau: float, count_rows: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out, expected, rows_q, noise = _fused.mask_forward(logits, weight, count_rows)
        ctx.save_for_backward(logits, weight)
        ctx.rows_q, ctx.noise, ctx.tau, ctx.count_rows = rows_q, noise, tau, count_rows
        return out, expected

    @staticmethod
    def backward(
        ctx: Any, g: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        logits, weight = ctx.saved_tensors
        grad_w, grad_logits = _fused.mask_backward(
            logits, weight, ctx.rows_q, ctx.noise, ctx.tau, ctx.count_rows, g, c
        )
        return grad_logits, grad_w, None, None


class GumbelGate(nn.Module):
    """Keep/drop logits of one layer; samples in training, thresholds in evaluation.

    ``count_rows`` (per-weight gates): the layer's bias counts while its unit keeps at least
    one incoming weight, so :meth:`expected_count` adds ``P(row live) = 1 − Π_j (1 − p_ij)``.
    """

    def __init__(self, shape: tuple[int, ...], init_logit: float, count_rows: bool = False) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full(shape, init_logit))
        self.tau = 1.0
        self.count_rows = count_rows
        self._sample: torch.Tensor | None = None
        self._p: torch.Tensor | None = None  # σ(θ) of the current step, shared with the penalty
        self._expected: torch.Tensor | None = None  # this step's count (per-weight gates)

    def _sampling(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def sample(self) -> torch.Tensor:
        if self._sampling():
            self._sample, self._p = _HardConcrete.apply(self.logits, self.tau)
        else:
            self._sample, self._p = (self.logits > 0).to(self.logits.dtype), None
        return self._sample

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` times a sampled (training) or the deterministic (evaluation) per-weight mask."""
        if self._sampling():
            out, self._expected = _MaskedWeight.apply(self.logits, w, self.tau, self.count_rows)
            return out
        self._expected = None
        return w * self.hard()

    def hard(self) -> torch.Tensor:
        return (self.logits.detach() > 0).to(self.logits.dtype)

    def keep_prob(self) -> torch.Tensor:
        """σ(θ), reusing this step's (differentiable) value when the forward pass made one."""
        p, self._p = self._p, None
        return p if p is not None else torch.sigmoid(self.logits)

    def expected_count(self) -> torch.Tensor:
        """Expected kept weights (+ live rows if ``count_rows``), reusing this step's value."""
        e, self._expected = self._expected, None
        if e is not None:
            return e
        e = torch.sigmoid(self.logits).sum()
        if self.count_rows:
            rows = self.logits.shape[0]
            e = e + (rows - torch.sigmoid(-self.logits).reshape(rows, -1).prod(1).sum())
        return e


class _WeightMask(nn.Module):
    """Parametrization of ``weight``: samples the gate (shared with the bias for neurons)."""

    def __init__(self, gate: GumbelGate, neuron: bool, weight_dim: int) -> None:
        super().__init__()
        self.gate = gate
        self.view = (-1,) + (1,) * (weight_dim - 1) if neuron else None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.view is None:
            return self.gate.masked(w)
        return w * self.gate.sample().view(self.view)


class _BiasMask(nn.Module):
    """Parametrization of ``bias`` for neuron gates: reuses the sample drawn for the weight
    (``nn.Linear``/``nn.Conv2d`` read ``weight`` before ``bias`` in ``forward``)."""

    def __init__(self, gate: GumbelGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        m = self.gate._sample if self.gate._sample is not None else self.gate.sample()
        return b * m


@register_method
class GumbelPruning(PruningMethod):
    """Gumbel-softmax masks learned jointly with the weights (Zhang, Tao & Zhang 2023)."""

    name = "gumbel"
    hparams: ClassVar[HParamTable] = {
        "granularity": Choice(
            ("weight", "neuron"), "weight", help="one gate per weight or per hidden neuron/channel"
        ),
        "schedule": Choice(SCHEDULES, "exponential", help="temperature annealing schedule"),
        "tau_start": Float(0.05, 10.0, 1.0, log=True, help="temperature at the start"),
        "tau_end": Float(0.01, 10.0, 0.1, log=True, help="temperature at the end of annealing"),
        "anneal_fraction": Float(0.05, 1.0, 1.0, help="fraction of training over which τ anneals"),
        "penalty": Choice(
            ("density", "target"), "density", help="λ·E[density] or λ·|E[density] − target|"
        ),
        "lam": Float(1e-4, 1e3, 1.0, log=True, help="sparsity penalty weight λ"),
        "target_density": Float(
            1e-4, 1.0, 0.01, log=True, help="target kept fraction (penalty 'target')"
        ),
        "warmup_epochs": Float(
            0.0, 100.0, 0.0, help="epochs over which λ ramps up linearly from 0"
        ),
        "logit_lr": Float(1e-4, 1.0, 0.05, log=True, help="learning rate of the mask logits"),
        "init_keep_prob": Float(0.5, 0.999, 0.9, help="initial keep probability σ(θ₀)"),
    }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        c = self.config
        self.ctx = ctx
        self._layers = ctx.layers
        init = math.log(c["init_keep_prob"] / (1.0 - c["init_keep_prob"]))
        self.neuron = c["granularity"] == "neuron"
        self.gates: dict[str, GumbelGate] = {}
        self.dense_count = 0
        self._fixed_count = 0  # per-weight gates: the output layer's biases, always counted
        for i, layer in enumerate(self._layers):
            w = raw_weight(layer.module)
            self.dense_count += w.numel() + (
                layer.out_units if raw_bias(layer.module) is not None else 0
            )
            last = i == len(self._layers) - 1
            if self.neuron and last:
                continue  # output units are never pruned
            has_bias = raw_bias(layer.module) is not None
            if self.neuron:
                gate = GumbelGate((layer.out_units,), init)
            else:
                gate = GumbelGate(tuple(w.shape), init, count_rows=has_bias and not last)
                self._fixed_count += layer.out_units if has_bias and last else 0
            gate = gate.to(w.device)
            parametrize.register_parametrization(
                layer.module, "weight", _WeightMask(gate, self.neuron, w.dim()), unsafe=True
            )
            if self.neuron and has_bias:
                parametrize.register_parametrization(
                    layer.module, "bias", _BiasMask(gate), unsafe=True
                )
            self.gates[layer.name] = gate
        self._step = 0
        self._epoch = 0
        self._set_tau(0)

    # -- schedule -----------------------------------------------------------------------------
    def _set_tau(self, step: int) -> None:
        c = self.config
        window = max(1, round(c["anneal_fraction"] * self.ctx.total_steps))
        self.tau = temperature(c["schedule"], c["tau_start"], c["tau_end"], step / window)
        for g in self.gates.values():
            g.tau = self.tau

    def on_step(self, step: int) -> None:
        self._step = step
        self._set_tau(step)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def lam_now(self) -> float:
        warm = self.config["warmup_epochs"]
        if warm <= 0:
            return self.config["lam"]
        progress = self._step / max(1, self.ctx.steps_per_epoch) / warm
        return self.config["lam"] * min(1.0, progress)

    # -- penalty ------------------------------------------------------------------------------
    def expected_params(self) -> torch.Tensor:
        """E[kept weights + biases of live units] under the current keep probabilities."""
        if not self.neuron:
            # Σ p_ij, plus Σ_i P(unit i keeps ≥ 1 incoming weight) for hidden layers' biases
            counts = [g.expected_count() for g in self.gates.values()]
            return torch.stack(counts).sum() + self._fixed_count
        total = torch.zeros((), device=next(iter(self.gates.values())).logits.device)
        prev_units: torch.Tensor | None = None  # E[# live units] of the previous layer
        for layer in self._layers:
            w = raw_weight(layer.module)
            has_bias = raw_bias(layer.module) is not None
            gate = self.gates.get(layer.name)
            per_unit_in = w[0].numel() // layer.in_units  # kernel size × repeat
            q = (
                gate.keep_prob()
                if gate is not None
                else torch.ones(layer.out_units, device=w.device)
            )
            inputs = prev_units if prev_units is not None else torch.tensor(float(layer.in_units))
            total = total + q.sum() * inputs * per_unit_in + (q.sum() if has_bias else 0.0)
            prev_units = q.sum()
        return total

    def penalty(self) -> torch.Tensor:
        density = self.expected_params() / self.dense_count
        self._last_density = float(density.detach())
        if self.config["penalty"] == "target":
            density = (density - self.config["target_density"]).abs()
        return self.lam_now() * density

    # -- masks --------------------------------------------------------------------------------
    def masks(self) -> dict[str, Mask]:
        out = {}
        for layer in self._layers:
            w = raw_weight(layer.module)
            gate = self.gates.get(layer.name)
            if gate is None:
                out[layer.name] = Mask(weight=torch.ones_like(w).detach())
            elif self.neuron:
                h = gate.hard()
                out[layer.name] = Mask(
                    weight=h.view((-1,) + (1,) * (w.dim() - 1)).expand_as(w).clone(), bias=h.clone()
                )
            else:
                out[layer.name] = Mask(weight=gate.hard().clone())
        return out

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": [g.logits for g in self.gates.values()],
                "lr": self.config["logit_lr"],
                "weight_decay": 0.0,
                "name": "mask_logits",
            }
        ]

    def stats(self) -> dict[str, float]:
        return {
            "temperature": float(self.tau),
            "lambda": float(self.lam_now()),
            "expected_density": float(getattr(self, "_last_density", float("nan"))),
        }
