"""The AutoML layer: study specs, Optuna search spaces, Ray Tune runner, MLflow tracking.

Heavy engines (torch, Ray, MLflow, Optuna) are imported lazily: the re-exports below load
:mod:`~prunetune.search.trial` (and with it torch) on first access, so that importing a light
submodule such as :mod:`~prunetune.search.cli` for ``prunetune --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunetune.search.trial import TrialConfig, TrialResult, parse_config, run_trial

__all__ = ["TrialConfig", "TrialResult", "parse_config", "run_trial"]

# Re-exported name -> the submodule that defines it.
_LAZY = {name: "prunetune.search.trial" for name in __all__}


def __getattr__(name: str) -> Any:
    """PEP 562: import a re-export's module on first access and cache the name here."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
