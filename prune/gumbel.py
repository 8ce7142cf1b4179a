"""Pruning by gradient descent with Gumbel-softmax masks.

Zhang, Tao & Zhang (2023), "Neural Network Pruning by Gradient Descent", arXiv:2311.12526.
Each weight (granularity ``weight``) or each hidden neuron / conv channel (granularity
``neuron``) has a learnable keep/drop logit θ. A two-class Gumbel-softmax over
(keep, drop) logits (θ, 0) is a binary concrete variable: ``y = σ((θ + L) / τ)`` with logistic
noise ``L = log u − log(1 − u)``. Training uses the straight-through hard mask
``1[θ + L > 0]`` in the forward pass and the gradient of ``y`` backward; evaluation uses the
deterministic mask ``1[θ > 0]``. A sparsity penalty on the expected kept-parameter fraction
(``P(keep) = σ(θ)``) pushes logits down; the temperature τ is annealed by a schedule.

The deterministic mask can land well above the penalty's target: gates the target penalty leaves
near σ(θ) = ½ count half in expectation but fully once ``θ > 0``. ``max_density`` (an addition
to the paper) caps it: the deterministic masks keep the gates with the largest logits, and only
as many as fit ``max_density`` of the dense parameter count (:meth:`Topology.count`'s
definition). The cap is set before every validation, at ``freeze_at`` and for export, so what is
evaluated is what is exported; the weights adapt to it during ``freeze_at``'s frozen stretch or a
fine-tune phase.

Channel gates (also additions): ``noise: sample`` draws one mask per example rather than one per
batch; ``closed_leak`` lets a closed channel pass a small share of its output in training, so
that a ReLU after the gate (gradient 0 at 0) still passes it the gradient of reopening the
channel; ``target_ramp`` lowers the target density from 1 on a cubic schedule.

Example:
    >>> from prunetune.prune import make_method
    >>> method = make_method({"name": "gumbel", "lam": 2.0, "granularity": "weight"})
"""

from __future__ import annotations

import bisect
import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunetune.prune import _fused
from prunetune.prune._base import Mask, PruneContext, PruningMethod, register_method
from prunetune.prune._hparams import Choice, Float, HParamTable
from prunetune.prune._masking import (
    ChannelSource,
    Clock,
    attach_channel_masks,
    channel_layer_masks,
    member_perm,
)
from prunetune.prune._topology import Topology, raw_param, raw_weight

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
        self.threshold = 0.0  # deterministic mask: θ > threshold (set by ``max_density``)

    frozen = False  # after ``freeze_at``: the deterministic mask, in training too

    def _sampling(self) -> bool:
        return self.training and torch.is_grad_enabled() and not self.frozen

    def clear_cache(self) -> None:
        """Forget this step's sample (before a deep copy)."""
        self._sample = self._p = self._expected = None

    def sample(self) -> torch.Tensor:
        if self._sampling():
            self._sample, self._p = _HardConcrete.apply(self.logits, self.tau)
        else:
            self._sample, self._p = self.hard(), None
        return self._sample

    def masked(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` times a sampled (training) or the deterministic (evaluation) per-weight mask."""
        if self._sampling():
            out, self._expected = _MaskedWeight.apply(self.logits, w, self.tau, self.count_rows)
            return out
        self._expected = None
        return w * self.hard()

    def hard(self) -> torch.Tensor:
        return (self.logits.detach() > self.threshold).to(self.logits.dtype)

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
    """Parametrization of a prunable layer's ``weight`` by its per-weight gate."""

    def __init__(self, gate: GumbelGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.gate.masked(w)


class _GatedChannels(ChannelSource):
    """Channel gates (granularity ``neuron``): one gate per channel of every channel group,
    sampled once per forward pass and shared by all of the channel's members.

    ``per_sample`` (hparam ``noise: sample``): in training, every example of the batch draws its
    own mask (channel dropout with learned rates), applied by forward hooks to the outputs that
    close a channel (its norms', else its producers'); the parametrizations then pass their
    tensors through, and evaluation and frozen masks are the parametrizations' as before.
    """

    def __init__(
        self, gate: GumbelGate, clock: Clock, per_sample: bool = False, leak: float = 0.0
    ) -> None:
        super().__init__()
        self.gate = gate
        self.clock = clock
        self.per_sample = per_sample
        self.leak = leak
        self._tick = -1
        self._v: torch.Tensor | None = None

    def vector(self) -> torch.Tensor:
        g = self.gate
        if g._sampling():
            if self.per_sample:  # the hooks mask per example
                return g.logits.new_ones(g.logits.shape[0] + 1)
            if self._tick != self.clock.tick or self._v is None:
                self._tick = self.clock.tick
                s = self._leaky(g.sample())
                self._v = torch.cat([s, s.new_ones(1)])
            return self._v
        h = g.hard()
        return torch.cat([h, h.new_ones(1)])

    def matrix(self, batch: int) -> torch.Tensor | None:
        """This forward pass's per-example masks, ``(batch, channels + 1)`` (last column 1);
        None when an earlier output of this pass had another batch size (the members of a
        channel must share one draw)."""
        if self._tick == self.clock.tick and self._v is not None and self._v.shape[0] != batch:
            return None
        if self._tick != self.clock.tick or self._v is None:
            self._tick = self.clock.tick
            g = self.gate
            logits = g.logits.expand(batch, -1).contiguous()
            hard, _ = _HardConcrete.apply(logits, g.tau)
            g._p = None  # the penalty takes σ(θ) of the logits themselves
            self._v = torch.cat([self._leaky(hard), hard.new_ones(batch, 1)], 1)
        return self._v

    def _leaky(self, hard: torch.Tensor) -> torch.Tensor:
        """A training sample with closed channels passing ``leak`` of their output (see the
        ``closed_leak`` hyperparameter); the gradient to the gates is unchanged but for the
        factor ``1 − leak``."""
        return hard if self.leak == 0 else hard * (1.0 - self.leak) + self.leak

    def clear_cache(self) -> None:
        self._v, self._tick = None, -1


class _SampleMask:
    """Forward hook: the output's channels times this pass's per-example gates (while the gate
    samples with ``noise: sample``)."""

    def __init__(self, source: _GatedChannels, name: str, perm: torch.Tensor, last: bool):
        self.source, self.name, self.perm, self.last = source, name, perm, last

    def __call__(self, module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if not self.source.gate._sampling():
            return None
        axis = out.dim() - 1 if self.last else 1
        v = self.source.matrix(out.shape[0]) if out.dim() >= 2 else None
        if v is None or out.shape[axis] != len(self.perm):
            raise RuntimeError(
                f"gumbel noise 'sample' needs {self.name}'s output as (batch, channels, ...) "
                f"with the batch of the rest of the forward pass, but got shape "
                f"{tuple(out.shape)}; use noise 'batch' for this model."
            )
        if self.perm.device != out.device:  # once, not a copy per step
            self.perm = self.perm.to(out.device)
        m = v[:, self.perm]
        shape = [out.shape[0]] + [1] * (out.dim() - 1)
        shape[axis] = len(self.perm)
        return out * m.view(shape).to(out.dtype)


def _sample_hooks(
    model: nn.Module, topology: Topology, source: _GatedChannels
) -> list[torch.utils.hooks.RemovableHandle]:
    """Register :class:`_SampleMask` on every module whose output closes a channel: the
    groups' norms, and producers that feed no norm of their group."""
    names: dict[str, None] = {}
    for g in topology.groups:
        names.update((n.name, None) for n in g.norms)
        names.update((p.name, None) for p in g.producers if p.name not in g.normed)
    handles = []
    for name in names:
        module = model.get_submodule(name)
        w = raw_param(module, "weight")
        rows = w.shape[0] if w is not None else module.num_features  # a norm without affine
        perm = member_perm(topology, name, rows)
        hook = _SampleMask(source, name, perm, last=isinstance(module, nn.Linear))
        handles.append(module.register_forward_hook(hook))
    return handles


class _OpenRows(ChannelSource):
    """Channel closing for per-weight gates: a channel is open while some producer row keeps a
    weight (``θ >`` the gate's threshold); closed channels get their biases and norm parameters
    masked."""

    def __init__(self, topology: Topology, gates: dict[str, GumbelGate], clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.n = topology.channels
        self._rows = [
            (gates[p.name], p.idx, g.offset + p.root)
            for g in topology.groups
            for p in g.producers
            if p.name in gates
        ]
        self._tick = -1
        self._v: torch.Tensor | None = None

    def vector(self) -> torch.Tensor:
        training = bool(self._rows) and self._rows[0][0]._sampling()
        if training and self._tick == self.clock.tick and self._v is not None:
            return self._v
        self._tick = self.clock.tick
        dev = self._rows[0][0].logits.device if self._rows else torch.device("cpu")
        acc = torch.zeros(self.n + 1, device=dev)
        acc[-1] = 1.0
        for gate, idx, flat in self._rows:
            with torch.no_grad():
                rows = (gate.logits > gate.threshold).flatten(1)[idx.to(dev)].any(1).float()
            acc.index_add_(0, flat.to(dev), rows)
        self._v = (acc > 0).float()
        return self._v

    def clear_cache(self) -> None:
        self._v, self._tick = None, -1


@register_method
class GumbelPruning(PruningMethod):
    """Gumbel-softmax masks learned jointly with the weights (Zhang, Tao & Zhang 2023)."""

    name = "gumbel"
    hparams: ClassVar[HParamTable] = {
        "granularity": Choice(
            ("weight", "neuron"), "weight", help="one gate per weight or per hidden neuron/channel"
        ),
        "noise": Choice(
            ("batch", "sample"),
            "batch",
            help="neuron gates: one mask draw per batch, or one per example (channel dropout "
            "with learned rates: lower-variance gradients for weights and gates)",
        ),
        "closed_leak": Float(
            0.0,
            0.1,
            0.0,
            help="neuron gates, training samples only: a closed channel passes this share of "
            "its output, so an activation after it (ReLU: gradient 0 at 0) still passes its "
            "gate the gradient of reopening it (evaluation and export: exactly 0)",
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
        "target_ramp": Float(
            0.0,
            1.0,
            0.0,
            help="fraction of training over which the target falls from 1 to target_density "
            "on a cubic schedule, so the gates settle on a trained network (penalty 'target'; "
            "the MAC budget mac_density falls with it; 0 = the targets from the first step)",
        ),
        "warmup_epochs": Float(
            0.0, 100.0, 0.0, help="epochs over which λ ramps up linearly from 0"
        ),
        "logit_lr": Float(1e-4, 1.0, 0.05, log=True, help="learning rate of the mask logits"),
        "init_keep_prob": Float(0.5, 0.999, 0.9, help="initial keep probability σ(θ₀)"),
        "freeze_at": Float(
            0.05,
            1.0,
            1.0,
            help="fraction of training after which the masks freeze at 1[θ > 0] (the weights "
            "train on with the masks evaluation uses; 1 = never)",
        ),
        "max_density": Float(
            1e-4,
            1.0,
            1.0,
            log=True,
            help="cap on the kept fraction of the deterministic masks: the largest logits are "
            "kept up to this share of the dense count (1 = no cap)",
        ),
        "cap_mode": Choice(
            ("open", "fill"),
            "open",
            help="max_density keeps the open gates (θ > 0) up to the cap ('open'), or the "
            "largest logits up to the cap whatever their sign ('fill': the budget is spent even "
            "where gates are undecided at θ ≈ 0)",
        ),
        "mac_density": Float(
            1e-4,
            1.0,
            1.0,
            log=True,
            help="MAC budget: adds λ·max(0, E[MACs]/dense MACs − mac_density) to the penalty, "
            "so the gates spend the parameter budget where it costs little compute (1 = off)",
        ),
    }

    def attach(self, model: nn.Module, ctx: PruneContext) -> None:
        c = self.config
        self.ctx = ctx
        self.model = model
        topo = ctx.topology
        self._layers = ctx.layers
        init = math.log(c["init_keep_prob"] / (1.0 - c["init_keep_prob"]))
        self.neuron = c["granularity"] == "neuron"
        self.dense_count = topo.dense
        self.clock = Clock(model)
        device = raw_weight(self._layers[0].module).device
        self.gates: dict[str, GumbelGate] = {}
        if self.neuron:
            gate = GumbelGate((topo.channels,), init).to(device)
            self.gates["channels"] = gate
            source = _GatedChannels(
                gate, self.clock, per_sample=c["noise"] == "sample", leak=c["closed_leak"]
            )
            self._source: ChannelSource = source
            attach_channel_masks(model, topo, source, rows=True)
            if source.per_sample:
                self._hooks = tuple(_sample_hooks(model, topo, source))
        else:
            extras, self._const = topo.weight_gating_terms()
            self._extras: dict[str, float] = {}  # root layer → bias/norm entries per channel
            for g in topo.groups:
                self._extras[g.root] = extras[g.offset : g.offset + g.size].float().mean().item()
            for layer in self._layers:
                w = raw_weight(layer.module)
                rows = self._extras.get(layer.name, 0.0) > 0
                gate = GumbelGate(tuple(w.shape), init, count_rows=rows).to(device)
                parametrize.register_parametrization(
                    layer.module, "weight", _WeightMask(gate), unsafe=True
                )
                self.gates[layer.name] = gate
            self._source = _OpenRows(topo, self.gates, self.clock)
            attach_channel_masks(model, topo, self._source, rows=False)
        self._step = 0
        self._epoch = 0
        self._set_tau(0)

    _hooks: tuple[torch.utils.hooks.RemovableHandle, ...] = ()  # noise 'sample' hooks

    def detach(self) -> None:
        """Remove the per-example mask hooks (before the masks are baked for fine-tuning)."""
        for h in self._hooks:
            h.remove()
        self._hooks = ()

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
        if not self.frozen and step >= self.config["freeze_at"] * self.ctx.total_steps:
            self.frozen = True
            for g in self.gates.values():
                g.frozen = True
                g.logits.requires_grad_(False)
            self.apply_cap()

    frozen = False
    _cap_set = False  # the cap's threshold is final (set after the masks froze)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def on_epoch_end(self, epoch: int) -> None:
        self.apply_cap()  # before validation: evaluate what export will keep

    # -- the cap on the deterministic masks -----------------------------------------------------
    def _count_above(self, t: float) -> int:
        """Parameters the deterministic masks ``θ > t`` keep."""
        topo = self.ctx.topology
        if self.neuron:
            keep = (self.gates["channels"].logits.detach() > t).float()
            return round(float(topo.expected(keep)))
        masks = {name: g.logits.detach() > t for name, g in self.gates.items()}
        return topo.count(self.model, masks)

    def apply_cap(self) -> None:
        """Set every gate's threshold to the smallest ``t ≥ 0`` at which ``θ > t`` keeps at
        most ``max_density`` of the dense count (binary search over the positive logits; the
        count only grows as ``t`` falls); with ``cap_mode: fill`` and room under the cap, to
        the smallest ``t < 0`` that still fits (over the other logits). No-op without a cap,
        and once frozen and set."""
        cap = self.config["max_density"]
        if cap >= 1.0 or (self.frozen and self._cap_set):
            return
        self._cap_set = self.frozen
        limit = cap * self.dense_count
        t = 0.0
        over = self._count_above(0.0) > limit
        if over or self.config["cap_mode"] == "fill":
            v = torch.cat([g.logits.detach().flatten() for g in self.gates.values()])
            v = (v[v > 0] if over else v[v <= 0]).sort(descending=True).values.cpu()
            if len(v) == 0:  # over: the cap is below what no gate at all keeps
                v = torch.zeros(1)
            # θ > v[i] keeps the i largest; the first i that breaks the cap, then one before it
            k = bisect.bisect_left(
                range(len(v)), True, key=lambda i: self._count_above(float(v[i])) > limit
            )
            t = float(v[max(k - 1, 0)])
        for g in self.gates.values():
            g.threshold = t

    def lam_now(self) -> float:
        warm = self.config["warmup_epochs"]
        if warm <= 0:
            return self.config["lam"]
        progress = self._step / max(1, self.ctx.steps_per_epoch) / warm
        return self.config["lam"] * min(1.0, progress)

    def target_now(self) -> float:
        """The target density at this step: ``target_density`` after ``target_ramp``; before,
        ``t + (1 − t)(1 − step/ramp)³`` (Zhu & Gupta 2017's cubic schedule: most of the
        pruning early, small steps as the budget nears)."""
        return self._ramped(self.config["target_density"])

    def mac_budget_now(self) -> float:
        """The MAC budget at this step: ``mac_density`` on the target's ramp (were it held
        from the first step while the parameter target ramps, the MAC hinge alone would set
        the early gates, cutting the compute-heavy channels first and overshooting)."""
        return self._ramped(self.config["mac_density"])

    def _ramped(self, t: float) -> float:
        ramp = self.config["target_ramp"] * self.ctx.total_steps
        if ramp <= 0 or self._step >= ramp or self.config["penalty"] != "target":
            return t
        return t + (1.0 - t) * (1.0 - self._step / ramp) ** 3

    # -- penalty ------------------------------------------------------------------------------
    def expected_params(self) -> torch.Tensor:
        """E[kept parameters] under the current keep probabilities (:meth:`Topology.count`'s
        definition): channel gates through :meth:`Topology.expected`; per-weight gates as
        Σ σ(θ) plus, per channel group, its bias/norm entries times P(root row keeps a weight)."""
        if self.neuron:
            return self.ctx.topology.expected(self.gates["channels"].keep_prob())
        total = torch.zeros((), device=next(iter(self.gates.values())).logits.device)
        for name, gate in self.gates.items():
            m = self._extras.get(name, 0.0)
            if m == 0.0 or m == 1.0:
                total = total + gate.expected_count()
            else:
                e = gate.expected_count()
                kept = torch.sigmoid(gate.logits).sum()
                total = total + kept + m * (e - kept)
        return total + self._const

    def expected_macs(self) -> torch.Tensor:
        """E[multiply-accumulates per sample] of the prunable layers (:meth:`Topology.
        expected_macs`): channel gates through the topology; per-weight gates as each layer's
        Σ σ(θ) times its output positions (the MACs of sparse kernels)."""
        topo = self.ctx.topology
        if self.neuron:
            return topo.expected_macs(torch.sigmoid(self.gates["channels"].logits))
        return sum(
            torch.sigmoid(g.logits).sum() * topo.positions.get(name, 1)
            for name, g in self.gates.items()
        )

    def penalty(self) -> torch.Tensor | None:
        if self.frozen:
            return None
        density = self.expected_params() / self.dense_count
        self._last_density = float(density.detach())
        if self.config["penalty"] == "target":
            density = (density - self.target_now()).abs()
        budget = self.mac_budget_now()
        if self.config["mac_density"] < 1.0 and self.ctx.topology.dense_macs > 0:
            macs = self.expected_macs() / self.ctx.topology.dense_macs
            self._last_macs = float(macs.detach())
            density = density + torch.relu(macs - budget)
        return self.lam_now() * density

    # -- masks --------------------------------------------------------------------------------
    def masks(self) -> dict[str, Mask]:
        self.apply_cap()
        if self.neuron:
            h = self.gates["channels"].hard()
            return channel_layer_masks(self.ctx.topology, torch.cat([h, h.new_ones(1)]))
        return {
            layer.name: Mask(weight=self.gates[layer.name].hard().clone()) for layer in self._layers
        }

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
            **(
                {"target": self.target_now()}
                if self.config["penalty"] == "target" and self.config["target_ramp"] > 0
                else {}
            ),
            "expected_density": float(getattr(self, "_last_density", float("nan"))),
            **(
                {"cap_threshold": next(iter(self.gates.values())).threshold}
                if self.config["max_density"] < 1
                else {}
            ),
            **(
                {"expected_mac_density": float(getattr(self, "_last_macs", float("nan")))}
                if self.config["mac_density"] < 1
                else {}
            ),
        }
