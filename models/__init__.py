"""Built-in model families: ``nn.Sequential`` stacks built from a spec, and CIFAR ResNets.

The Sequential families (``mlp``, ``lenet5``, ``cnn``) are described by an *architecture spec* —
a JSON-serialisable list of layer dicts — and :func:`build_model` turns a spec into a plain
``torch.nn.Sequential``. The same spec format describes the compact models produced by
``prunetune.prune.export``, so a fetched model is rebuilt from plain ``torch.nn`` layers without
unpickling any project code. ``resnet`` (:class:`CifarResNet`) has residual adds and so no
Sequential spec; :func:`build_family` builds every family by name. A user's own model comes
from a factory (:func:`build_from_factory`, ``"package.module:callable"``); :func:`resnet` is the
built-in ResNet as one.

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
from prunetune.models._factory import DATA_PARAMS, build_from_factory, data_params, resnet
from prunetune.models._family import build_family
from prunetune.models._resnet import RESNET_DEPTHS, BasicBlock, CifarResNet, resnet_model

__all__ = [
    "ACTIVATIONS",
    "DATA_PARAMS",
    "FAMILIES",
    "RESNET_DEPTHS",
    "ArchSpec",
    "BasicBlock",
    "CifarResNet",
    "build_family",
    "build_from_factory",
    "build_model",
    "cnn_spec",
    "data_params",
    "family_spec",
    "lenet5_spec",
    "mlp_spec",
    "resnet",
    "resnet_model",
]
