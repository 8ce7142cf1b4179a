"""The AutoML layer: study specs, Optuna search spaces, Ray Tune runner, MLflow tracking.

Heavy engines (Ray, MLflow) are imported lazily inside the functions that use them.
"""

from prunetune.search.trial import TrialConfig, TrialResult, parse_config, run_trial

__all__ = ["TrialConfig", "TrialResult", "parse_config", "run_trial"]
