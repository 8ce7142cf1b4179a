"""Study spec → Optuna define-by-run search space, conditional on the pruning method.

Optuna first samples ``method`` (when the spec lists several), then only that method's
hyperparameters, each named ``"<method>.<hyperparameter>"`` so that methods never share a
distribution. Ranges come from the method's own table (validated in ``spec``), including its
log scale.
"""

from __future__ import annotations

from typing import Any

from prunetune._hparams import Choice, Float, Int, Param
from prunetune._schema import DISTILL, SEARCHABLE, TRAIN
from prunetune.prune import METHODS
from prunetune.search.spec import FactorySpace, ValidatedSpec


def _suggest(trial: Any, name: str, param: Param, rng: tuple[Any, ...]) -> Any:
    if isinstance(param, Choice):
        return rng[0] if len(rng) == 1 else trial.suggest_categorical(name, list(rng))
    if len(rng) == 1 or rng[0] == rng[1]:
        return rng[0]
    if isinstance(param, Int):
        return trial.suggest_int(name, rng[0], rng[1], log=param.log)
    assert isinstance(param, Float)
    return trial.suggest_float(name, rng[0], rng[1], log=param.log)


def sample_config(trial: Any, vspec: ValidatedSpec) -> dict[str, Any]:
    """Sample one trial config (a ``TrialConfig`` mapping) from ``trial``.

    ``trial`` is an ``optuna.Trial`` (or anything with its ``suggest_*`` methods).
    Hyperparameters a spec does not mention keep the method's default.
    """
    spec = vspec.spec
    names = list(vspec.method_ranges)
    method = names[0] if len(names) == 1 else trial.suggest_categorical("method", names)
    table = METHODS[method].hparams
    hp = {
        k: _suggest(trial, f"{method}.{k}", table[k], rng)
        for k, rng in vspec.method_ranges[method].items()
    }

    m = spec.model
    if isinstance(m, FactorySpace):
        from prunetune._factory import resolve
        from prunetune.models import data_params

        params = {k: d.suggest(trial, f"model.{k}") for k, d in vspec.model_dims.items()}
        info = vspec.data_info
        filled = data_params(
            resolve(m.factory, "model.factory"), params, info.input_shape, info.num_outputs
        )
        return {
            "model": {"factory": m.factory, "params": filled},
            **_rest(trial, vspec, method, hp),
        }
    channels, resnet_depth = list(m.channels), 20
    if m.family == "resnet":
        widths = []
        depths = m.resnet_depths
        resnet_depth = (
            depths[0]
            if len(depths) == 1
            else trial.suggest_categorical("model.resnet_depth", list(depths))
        )
        wlo, whi = m.bounds("width")
        channels = [
            wlo if wlo == whi else trial.suggest_int("model.width_0", wlo, whi, log=m.width_log)
        ]
    elif m.widths is not None:
        widths = list(m.widths)
    else:
        lo, hi = m.bounds("depth")
        depth = lo if lo == hi else trial.suggest_int("model.depth", lo, hi)
        wlo, whi = m.bounds("width")
        widths = [
            wlo if wlo == whi else trial.suggest_int(f"model.width_{i}", wlo, whi, log=m.width_log)
            for i in range(depth)
        ]
    acts = (m.activation,) if isinstance(m.activation, str) else m.activation
    activation = (
        acts[0] if len(acts) == 1 else trial.suggest_categorical("model.activation", list(acts))
    )
    return {
        "model": {
            "family": m.family,
            "widths": widths,
            "channels": channels,
            "activation": activation,
            "depth": resnet_depth,
        },
        **_rest(trial, vspec, method, hp),
    }


def _rest(trial: Any, vspec: ValidatedSpec, method: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The trial config beside its model: data, method and training options (sampled after
    the model's, in the order studies have always drawn them)."""
    spec = vspec.spec
    train = {
        k: _suggest(trial, f"train.{k}", TRAIN[k], rng) for k, rng in vspec.train_ranges.items()
    }
    fixed = {k: getattr(spec.train, k) for k in TRAIN if k not in SEARCHABLE}
    if "augment" in fixed:
        fixed["augment"] = list(fixed["augment"] or ())
    if vspec.distills:  # otherwise the trial's default: no distillation
        d = spec.train.distill
        train["distill"] = {
            **{
                k: _suggest(trial, f"train.distill.{k}", DISTILL[k], rng)
                for k, rng in vspec.distill_ranges.items()
            },
            "teacher_epochs": d.teacher_epochs,
            "teacher": vspec.teacher_model(),
        }
    return {
        "dataset": vspec.dataset_config(),
        "data_dir": spec.data_dir,
        "method": {"name": method, **hp},
        "train": {**fixed, **train},
    }


def make_sampler(vspec: ValidatedSpec, seed_offset: int = 0) -> Any:
    """The Optuna sampler named by ``search.sampler``, seeded by ``search.seed + seed_offset``."""
    import optuna

    s = vspec.spec.search
    seed = s.seed + seed_offset
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
