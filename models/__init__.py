"""Architectures built from a widths spec: plain ``nn.Sequential`` stacks of standard layers.

Every model here is described by an *architecture spec* — a JSON-serialisable list of layer
dicts — and :func:`build_model` turns a spec into a plain ``torch.nn.Sequential``. The same spec
format describes the compact models produced by ``prunetune.prune.export``, so a fetched model
is rebuilt from plain ``torch.nn`` layers without unpickling any project code.

Example:
    >>> from prunetune.models import mlp_spec, build_model
    >>> model = build_model(mlp_spec((1, 8, 8), [32, 16], num_outputs=10))
    >>> sum(p.numel() for p in model.parameters())
    2778
"""

from prunetune.models._arch import (
    ACTIVATIONS,
    FAMILIES,
    ArchSpec,
    build_model,
    cnn_spec,
    family_spec,
    lenet5_spec,
    mlp_spec,
)

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "ArchSpec",
    "build_model",
    "cnn_spec",
    "family_spec",
    "lenet5_spec",
    "mlp_spec",
]
