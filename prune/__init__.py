"""Pruning methods behind one interface, training with masks, and compact export.

Methods register by name (``METHODS``); a study spec picks them by that name and the method's
``hparams`` table validates its config and builds its search space.
"""

import torch as _torch

# Pruned weights get zero gradients, so their optimiser state decays into denormal floats,
# which are ~100x slower on CPUs. Flush-to-zero is per thread, and threads inherit it from
# their creator (POSIX), so it is set here, before torch's intra-op pool usually starts.
_torch.set_flush_denormal(True)

from prunetune.prune import dense as _dense  # noqa: F401  (registers "none")
from prunetune.prune import grasp as _grasp  # noqa: F401  (registers "grasp")
from prunetune.prune import gumbel as _gumbel  # noqa: F401  (registers "gumbel")
from prunetune.prune import kfac as _kfac  # noqa: F401  (registers "kfac")
from prunetune.prune import lottery as _lottery  # noqa: F401  (registers "lottery")
from prunetune.prune import magnitude as _magnitude  # noqa: F401  ("magnitude", "magnitude_neuron")
from prunetune.prune import random_init as _random_init  # noqa: F401  (registers "random")
from prunetune.prune import snip as _snip  # noqa: F401  (registers "snip")
from prunetune.prune import synflow as _synflow  # noqa: F401  (registers "synflow")
from prunetune.prune._base import (
    METHODS,
    Mask,
    PruneContext,
    PruningMethod,
    get_method,
    make_method,
    register_method,
)
from prunetune.prune._frozen import FrozenMasks, bake_masks
from prunetune.prune._hparams import Choice, Float, HParamTable, Int, validate_config
from prunetune.prune._masking import FixedMask, attach_fixed_masks, fixed_masks, remove_masks
from prunetune.prune._topology import ChannelGroup, Layer, Topology
from prunetune.prune._train import (
    TrainConfig,
    TrainResult,
    distill_loss,
    evaluate,
    evaluate_batches,
    train,
)
from prunetune.prune.export import ExportResult, count_params, export_compact, plain_copy

__all__ = [
    "METHODS",
    "ChannelGroup",
    "Choice",
    "ExportResult",
    "FixedMask",
    "Float",
    "FrozenMasks",
    "HParamTable",
    "Int",
    "Layer",
    "Mask",
    "PruneContext",
    "PruningMethod",
    "Topology",
    "TrainConfig",
    "TrainResult",
    "attach_fixed_masks",
    "bake_masks",
    "count_params",
    "distill_loss",
    "evaluate",
    "evaluate_batches",
    "export_compact",
    "fixed_masks",
    "get_method",
    "make_method",
    "plain_copy",
    "register_method",
    "remove_masks",
    "train",
    "validate_config",
]
