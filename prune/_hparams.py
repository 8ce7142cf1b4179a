"""The hyperparameter declarations of the methods: :mod:`prunetune._hparams` (torch-free, so
that the trial-config schema and the CLI can use them without importing torch)."""

from prunetune._hparams import (
    Choice,
    Float,
    HParamTable,
    Int,
    Param,
    check_range,
    describe,
    validate_config,
)

__all__ = [
    "Choice",
    "Float",
    "HParamTable",
    "Int",
    "Param",
    "check_range",
    "describe",
    "validate_config",
]
