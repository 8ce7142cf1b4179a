"""Register a study's chosen trials: model versions, aliases and descriptions.

A version's files are written by ``mlflow.pytorch.save_model`` to a temporary directory and
uploaded to a logged model through a client bound to the study's store; nothing here reads or
sets MLflow's global tracking / registry URI or environment variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune._cache import write_atomic
from prunetune.search._errors import ConfigError
from prunetune.search._front import TrialRecord
from prunetune.search._mlflow import existing_client, param_value, require_study_run
from prunetune.search.registry._card import card_json, fmt_int
from prunetune.search.registry._fetch import (
    CARD_FILE,
    MODEL_FILES,
    aliases_by_version,
    load_compact,
    random_inputs,
    versions,
)
from prunetune.search.registry._select import ALIAS_RULES, DEFAULT_SELECT, select_trials

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel, Run
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

log = logging.getLogger("prunetune.search")

TAG_LOGGED_MODEL = "logged_model_id"  # version tag: the logged model holding its files


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version and the trial behind it."""

    name: str
    version: str
    run_id: str
    trial: int
    method: str
    params: int
    params_dense: int
    val_accuracy: float
    test_accuracy: float
    rules: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    created: bool = True

    @property
    def uri(self) -> str:
        """``NAME@ALIAS`` when the version has an alias, else ``NAME/VERSION``."""
        return f"{self.name}@{self.aliases[0]}" if self.aliases else f"{self.name}/{self.version}"


def register_study(
    tracking_uri: str,
    study_name: str,
    select: Sequence[str] = DEFAULT_SELECT,
    min_val_accuracy: float | None = None,
    *,
    model_name: str | None = None,
    storage: str | None = None,
) -> list[RegisteredVersion]:
    """Register the study's selected trials as versions of the model named after the study.

    Re-registering is idempotent: a trial already registered keeps its version; aliases move
    to where the rules point now (an alias whose rule selects nothing is removed).

    Args:
        tracking_uri: the study's MLflow store.
        study_name: the study (its parent run is tagged ``prunetune.study``).
        select: rules of :func:`prunetune.search.pareto.select`: ``knee``, ``smallest``,
            ``most-accurate``, ``all-pareto``, ``min-val-accuracy=X``. The first three set
            the alias of the same name.
        min_val_accuracy: floor for ``smallest``; default the spec's
            ``objectives.min_val_accuracy``.
        model_name: registered model name; default ``study_name``.
        storage: the study's Optuna storage (its record); default the one its parent run names.

    Returns:
        the chosen versions, in the order the rules chose them (each once).

    Raises:
        ConfigError: unknown study or malformed rule; or a chosen trial has no compact model.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(select, str):
        select = [select]
    c = existing_client(tracking_uri)
    parent = require_study_run(c, study_name, tracking_uri)
    selection = select_trials(c, parent, select, min_val_accuracy, storage)
    name = model_name or study_name
    _ensure_registered_model(c, name, parent)
    by_run = {mv.run_id: mv for mv in versions(c, name)}
    out: list[RegisteredVersion] = []
    for rec, rules in selection.chosen:
        mv = by_run.get(rec.run_id)
        created = mv is None
        if mv is None:
            mv = _create_version(c, name, rec, parent, study_name)
        c.set_model_version_tag(name, mv.version, "selected_as", ",".join(rules))
        for rule in rules:
            if rule in ALIAS_RULES:
                c.set_registered_model_alias(name, rule, mv.version)
        out.append(_registered(name, mv.version, rec, rules, created))
    for rule in selection.empty_rules:
        log.warning("selection %r chose no trial of study %r", rule, study_name)
        if rule in ALIAS_RULES:
            with contextlib.suppress(MlflowException):  # absent alias
                c.delete_registered_model_alias(name, rule)
    aliases = aliases_by_version(c, name)
    out = [replace(v, aliases=tuple(aliases.get(v.version, ()))) for v in out]
    _describe_registered_model(c, name, study_name, parent, aliases)
    return out


def _registered(
    name: str, version: str, rec: TrialRecord, rules: tuple[str, ...], created: bool
) -> RegisteredVersion:
    m = rec.metrics
    dense = m.get("params_dense", math.nan)
    return RegisteredVersion(
        name=name,
        version=str(version),
        run_id=rec.run_id,
        trial=rec.trial,
        method=rec.method,
        params=round(m["params"]),
        params_dense=round(dense) if math.isfinite(dense) else -1,
        val_accuracy=float(m.get("val_accuracy", math.nan)),
        test_accuracy=float(m.get("test_accuracy", math.nan)),
        rules=rules,
        created=created,
    )


def _ensure_registered_model(c: MlflowClient, name: str, parent: Run) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        tags = {"study": name, "dataset": parent.data.tags.get("dataset", "")}
        c.create_registered_model(name, tags=tags)


def _describe_registered_model(
    c: MlflowClient, name: str, study: str, parent: Run, aliases: dict[str, list[str]]
) -> None:
    lines = [
        f"Pruned models of study `{study}` (dataset {parent.data.tags.get('dataset', '?')}), "
        "chosen on the Pareto front of validation accuracy (max) vs kept parameters (min).",
        "",
    ]
    for version, names in sorted(aliases.items(), key=lambda kv: int(kv[0])):
        t = c.get_model_version(name, version).tags
        lines.append(
            f"- {', '.join(names)} → v{version}: {fmt_int(t.get('params'))} params "
            f"({t.get('density_pct', '?')} % of dense), val {t.get('val_accuracy', '?')}, "
            f"test {t.get('test_accuracy', '?')}, {t.get('method', '?')} (trial {t.get('trial')})"
        )
    c.update_registered_model(name, description="\n".join(lines))


def _create_version(
    c: MlflowClient, name: str, rec: TrialRecord, parent: Run, study: str
) -> ModelVersion:
    """Log trial ``rec``'s delivered model as a logged model and make it a version of ``name``.

    The version's source is the logged model's artifact location (a path, or
    ``mlflow-artifacts:/…`` on a server), which resolves without MLflow's global URIs —
    unlike ``models:/<model_id>``, which a SQLite registry resolves with ``MlflowClient()``.
    """
    lm = _log_model(c, rec, parent, study)
    tags = {**_version_tags(rec, study), TAG_LOGGED_MODEL: lm.model_id}
    return c.create_model_version(
        name,
        source=lm.artifact_location,
        run_id=rec.run_id,
        tags=tags,
        description=_version_description(rec, study, tags),
        model_id=lm.model_id,
    )


def _log_model(c: MlflowClient, rec: TrialRecord, parent: Run, study: str) -> LoggedModel:
    """A READY logged model (pytorch flavour, pt2) with the version's files in
    ``extra_files/``, linked to the trial's run as its output.

    Raises:
        ConfigError: the trial's run has no ``model/`` artifact.
    """
    from mlflow.entities import LoggedModelOutput

    from prunetune.prune.deliver import export_pt2

    with tempfile.TemporaryDirectory(prefix="prunetune-register-") as tmp:
        d = Path(tmp)
        trial = _download_trial(c, rec, d / "trial")
        model, inputs = _delivered_model(trial, rec)
        files = d / "files"
        files.mkdir()
        # two rows: torch.export would fix a batch of one to the constant 1
        example = random_inputs(inputs, n=2)  # (2, *shape), raw
        export_pt2(model, example, files / "model.pt2")
        for src in (trial / "config.json", *(trial / "model" / f for f in MODEL_FILES)):
            if src.is_file() and not (files / src.name).exists():
                shutil.copyfile(src, files / src.name)
        write_atomic(files / "input.json", json.dumps(inputs, indent=2) + "\n")
        card = card_json(rec, parent, study, inputs)
        write_atomic(files / CARD_FILE, json.dumps(card, indent=2, default=str) + "\n")
        lm = c.create_logged_model(
            parent.info.experiment_id,
            name=f"{study}-trial-{rec.trial:04d}",
            source_run_id=rec.run_id,
            tags={"study": study, "trial": str(rec.trial), "method": rec.method},
            params={k: param_value(v) for k, v in rec.hparams().items()},
        )
        try:
            flavour = d / "mlflow-model"
            _save_flavour(model, example, sorted(files.iterdir()), flavour, lm, rec.run_id)
            c.log_model_artifacts(lm.model_id, str(flavour))
        except BaseException:
            c.finalize_logged_model(lm.model_id, "FAILED")
            raise
    lm = c.finalize_logged_model(lm.model_id, "READY")
    c.log_outputs(rec.run_id, [LoggedModelOutput(lm.model_id, step=0)])
    return lm


def _download_trial(c: MlflowClient, rec: TrialRecord, dst: Path) -> Path:
    """The trial's checkpoint files from its run (``model/`` and ``config.json``, mirrored by
    the driver) into ``dst``; returns ``dst``.

    Raises:
        ConfigError: the run has no ``model/`` artifact.
    """
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True)
    try:
        c.download_artifacts(rec.run_id, "model", str(dst))
    except Exception as e:  # MlflowException or OSError, depending on the store
        raise ConfigError(
            f"trial {rec.trial} (run {rec.run_id}) has no compact model artifact "
            f"'model/' to register: {e}"
        ) from None
    with contextlib.suppress(MlflowException, OSError):  # a run that predates config.json
        c.download_artifacts(rec.run_id, "config.json", str(dst))
    return dst


def _delivered_model(trial: Path, rec: TrialRecord) -> tuple[nn.Module, dict[str, Any]]:
    """What the version delivers: ``Standardize(mean, std)`` then the trial's compact model
    (eval mode, raw inputs in), and ``input.json``.

    The compact model is rebuilt from the trial's config and safetensors
    (:func:`~prunetune.search.trial.rebuild_compact`, any model); a run that predates them
    gives ``arch.json`` + ``weights.pt``, and its data set's statistics.
    """
    from torch import nn

    from prunetune.prune.deliver import WEIGHTS_FILE, Standardize
    from prunetune.search.trial import rebuild_compact

    try:
        if (trial / "model" / WEIGHTS_FILE).is_file() and (trial / "config.json").is_file():
            compact, inputs = rebuild_compact(trial)
        else:
            compact, inputs = load_compact(trial / "model"), _legacy_inputs(trial / "model", rec)
    except ValueError as e:  # ConfigError included: name the trial once
        raise ConfigError(f"cannot register trial {rec.trial} (run {rec.run_id}): {e}") from None
    model = nn.Sequential(Standardize(inputs["mean"], inputs["std"]), compact)
    return model.eval(), inputs


def _legacy_inputs(model_dir: Path, rec: TrialRecord) -> dict[str, Any]:
    """``input.json`` of a run that predates it: the shape from ``arch.json``, the
    standardisation from the trial's data set (loaded here, as the trial loaded it)."""
    from prunetune.datasets import load_dataset
    from prunetune.search._mlflow import parse_param

    arch = json.loads((model_dir / "arch.json").read_text())
    dataset = rec.params.get("dataset")
    if not dataset:
        raise ConfigError(
            "it has no input.json and names no dataset (param 'dataset'), so the "
            "standardisation of its inputs is unknown."
        )
    try:
        data = load_dataset(dataset, data_dir=parse_param(rec.params.get("data_dir")))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(
            f"it has no input.json; its dataset {dataset!r} gives the standardisation, "
            f"but it does not load: {e}"
        ) from None
    return {
        "shape": list(arch["input_shape"]),
        "dtype": "float32",
        "range": [0.0, 1.0],
        "mean": float(data.mean),
        "std": float(data.std),
        "num_outputs": int(data.num_outputs),
    }


def _save_flavour(
    model: nn.Module,
    example: torch.Tensor,
    extra_files: Sequence[Path],
    path: Path,
    lm: LoggedModel,
    run_id: str,
) -> None:
    """``mlflow.pytorch.save_model`` (pt2, dynamic batch, signature, input example) to the
    local ``path``, with ``extra_files``.

    The ``MLmodel`` names the logged model and the run, as ``log_model`` would write them.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import Model, infer_signature

    with torch.no_grad():
        y = model(example)
    mlflow.pytorch.save_model(
        model,
        str(path),
        mlflow_model=Model(
            artifact_path=lm.artifact_location,
            run_id=run_id,
            model_uuid=lm.model_id,
            model_id=lm.model_id,
        ),
        serialization_format="pt2",
        signature=infer_signature(example.numpy(), y.numpy()),
        input_example=example.numpy(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        extra_files=[str(f) for f in extra_files],
    )


def _version_tags(rec: TrialRecord, study: str) -> dict[str, str]:
    m = rec.metrics
    dense = m.get("params_dense", math.nan)
    return {
        "params": str(round(m["params"])),
        "params_dense": str(round(dense)) if math.isfinite(dense) else "",
        "density_pct": f"{100 * m.get('density', math.nan):.2f}",
        **{
            k: repr(float(m[k]))
            for k in ("val_accuracy", "test_accuracy", "val_loss", "test_loss")
            if k in m
        },
        "method": rec.method,
        "trial": str(rec.trial),
        "trial_run_id": rec.run_id,
        "study": study,
        "dataset": rec.params.get("dataset", ""),
    }


def _version_description(rec: TrialRecord, study: str, tags: dict[str, str]) -> str:
    metric = rec.metric.removeprefix("val_")
    return (
        f"Trial {rec.trial} of study {study}: {rec.method}, {round(rec.metrics['params']):,} "
        f"of {fmt_int(tags['params_dense'])} parameters kept ({tags['density_pct']} %), "
        f"val {metric} {rec.val_value:.4f}, test {metric} {rec.test_value:.4f}."
    )
