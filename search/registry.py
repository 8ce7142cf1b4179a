"""Model registry: register a study's chosen trials, set aliases, fetch ``NAME@ALIAS``.

:func:`register_study` turns trials selected from the study's Pareto front into versions of
the registered model named after the study, with aliases ``knee``, ``smallest`` (fewest params
with val accuracy ≥ the spec's floor) and ``most-accurate``. Each version carries

* ``extra_files/weights.pt`` — the compact state dict (``torch.load(weights_only=True)``),
  ``extra_files/arch.json`` (rebuilds the module from plain ``torch.nn`` layers),
  ``extra_files/kept_units.json`` and ``extra_files/card.json`` (metrics, config, provenance);
* the MLflow pytorch flavour (``pt2``: a ``torch.export`` program, no pickle) with a signature
  and an input example, so ``mlflow.pytorch.load_model("models:/NAME@ALIAS")`` works;
* tags ``params``, ``params_dense``, ``val_accuracy``, ``test_accuracy``, ``method``,
  ``trial``, ``trial_run_id``, ``selected_as`` and a description with the numbers.

:func:`fetch` rebuilds the model from ``arch.json`` + ``weights.pt`` and never unpickles
project code.

Example:
    >>> from prunetune.search.registry import fetch, register_study
    >>> register_study("sqlite:////abs/mlflow.db", "quickstart")            # doctest: +SKIP
    >>> model = fetch("quickstart@knee", tracking_uri="sqlite:////abs/mlflow.db")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune.search import _mlflow as M
from prunetune.search._errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("prunetune.search")

ALIAS_RULES = ("knee", "smallest", "most-accurate")  # rules whose name is also an alias
DEFAULT_SELECT = ALIAS_RULES
MODEL_FILES = ("weights.pt", "arch.json", "kept_units.json")


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


@dataclass(frozen=True)
class FetchedModel:
    """A fetched model, its record and the files written."""

    model: nn.Module
    arch: dict[str, Any]
    name: str
    version: str
    aliases: tuple[str, ...]
    card: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()

    @property
    def test_accuracy(self) -> float:
        return float(self.card["metrics"]["test_accuracy"])

    @property
    def params(self) -> int:
        return int(self.card["metrics"]["params"])


# --------------------------------------------------------------------------- register


def register_study(
    tracking_uri: str,
    study_name: str,
    select: Sequence[str] = DEFAULT_SELECT,
    min_val_accuracy: float | None = None,
    *,
    model_name: str | None = None,
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

    Returns:
        the chosen versions, in the order the rules chose them (each once).

    Raises:
        ConfigError: unknown study or malformed rule; or a chosen trial has no compact model.
    """
    from prunetune.search import pareto
    from prunetune.search._front import front_of_run, spec_objectives

    if isinstance(select, str):
        select = [select]
    c = M.existing_client(tracking_uri)
    parent = M.require_study_run(c, study_name, tracking_uri)
    floor = min_val_accuracy
    if floor is None:
        floor = spec_objectives(dict(parent.data.params))[1]
    front = front_of_run(c, parent, min_val_accuracy=floor)
    chosen: dict[int, list[str]] = {}
    empty_rules: list[str] = []
    for rule in select:
        try:
            idx = pareto.select(front.points, rule, min_accuracy=floor)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not idx:
            empty_rules.append(rule)
        for i in idx:
            chosen.setdefault(i, []).append(rule)
    name = model_name or study_name
    _ensure_registered_model(c, name, parent)
    by_run = {mv.run_id: mv for mv in _versions(c, name)}
    out: list[RegisteredVersion] = []
    for i, rules in chosen.items():
        rec = front.records[i]
        mv = by_run.get(rec.run_id)
        created = mv is None
        if mv is None:
            mv = _create_version(c, tracking_uri, name, rec, parent, study_name)
        M.retry(c.set_model_version_tag, name, mv.version, "selected_as", ",".join(rules))
        for rule in rules:
            if rule in ALIAS_RULES:
                M.retry(c.set_registered_model_alias, name, rule, mv.version)
        out.append(_registered(name, mv.version, rec, tuple(rules), created))
    for rule in empty_rules:
        log.warning("selection %r chose no trial of study %r", rule, study_name)
        if rule in ALIAS_RULES:
            with contextlib.suppress(Exception):  # absent alias
                c.delete_registered_model_alias(name, rule)
    aliases = _aliases(c, name)
    out = [
        RegisteredVersion(**{**v.__dict__, "aliases": tuple(aliases.get(v.version, ()))})
        for v in out
    ]
    _describe_registered_model(c, name, study_name, parent, aliases)
    return out


def _registered(
    name: str, version: str, rec: M.TrialRecord, rules: tuple[str, ...], created: bool
) -> RegisteredVersion:
    m = rec.metrics
    return RegisteredVersion(
        name=name,
        version=str(version),
        run_id=rec.run_id,
        trial=rec.trial,
        method=rec.method,
        params=round(m["params"]),
        params_dense=round(m.get("params_dense", math.nan))
        if math.isfinite(m.get("params_dense", math.nan))
        else -1,
        val_accuracy=float(m.get("val_accuracy", math.nan)),
        test_accuracy=float(m.get("test_accuracy", math.nan)),
        rules=rules,
        created=created,
    )


def _versions(c: Any, name: str) -> list[Any]:
    return list(M.retry(c.search_model_versions, f"name = {M._quote(name)}"))


def _aliases(c: Any, name: str) -> dict[str, list[str]]:
    rm = M.retry(c.get_registered_model, name)
    out: dict[str, list[str]] = {}
    for alias, version in sorted((rm.aliases or {}).items()):
        out.setdefault(str(version), []).append(alias)
    return out


def _ensure_registered_model(c: Any, name: str, parent: Any) -> None:
    from mlflow.exceptions import MlflowException

    try:
        M.retry(c.get_registered_model, name)
    except MlflowException:
        tags = {"study": name, "dataset": parent.data.tags.get("dataset", "")}
        try:
            M.retry(c.create_registered_model, name, tags=tags)
        except MlflowException:  # created meanwhile
            M.retry(c.get_registered_model, name)


def _describe_registered_model(
    c: Any, name: str, study: str, parent: Any, aliases: dict[str, list[str]]
) -> None:
    lines = [
        f"Pruned models of study `{study}` (dataset {parent.data.tags.get('dataset', '?')}), "
        "chosen on the Pareto front of validation accuracy (max) vs kept parameters (min).",
        "",
    ]
    for version, names in sorted(aliases.items(), key=lambda kv: int(kv[0])):
        mv = M.retry(c.get_model_version, name, version)
        t = mv.tags
        lines.append(
            f"- {', '.join(names)} → v{version}: {_fmt_int(t.get('params'))} params "
            f"({t.get('density_pct', '?')} % of dense), val {t.get('val_accuracy', '?')}, "
            f"test {t.get('test_accuracy', '?')}, {t.get('method', '?')} (trial {t.get('trial')})"
        )
    M.retry(c.update_registered_model, name, description="\n".join(lines))


def _fmt_int(s: str | None) -> str:
    try:
        return f"{int(s):,}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``uri`` only meanwhile.

    Some MLflow 3 code paths build their own ``MlflowClient()`` from the globals (a
    flavour's ``log_model``; the SQL registry store resolving a ``models:/<model_id>``
    source), so a client bound to ``uri`` alone is not enough.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as rsu
    from mlflow.tracking._tracking_service import utils as tsu

    old_t = getattr(tsu, "_tracking_uri", None)
    old_r = getattr(rsu, "_registry_uri", None)
    # set_*_uri also export MLFLOW_*_URI (and unset it for None): restore the caller's env.
    old_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_t)
        rsu._registry_uri = old_r
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _create_version(
    c: Any, tracking_uri: str, name: str, rec: M.TrialRecord, parent: Any, study: str
) -> Any:
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory(prefix="prunetune-register-") as tmp:
        d = Path(tmp)
        try:
            M.retry(c.download_artifacts, rec.run_id, "model", str(d))
        except Exception as e:
            raise ConfigError(
                f"trial {rec.trial} (run {rec.run_id}) has no compact model artifact "
                f"'model/' to register: {e}"
            ) from None
        mdir = d / "model"
        model = load_compact(mdir)
        card = _card(rec, parent, study)
        (mdir / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
        arch = json.loads((mdir / "arch.json").read_text())
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((2, *arch["input_shape"]), generator=gen)  # (2, *input_shape)
        with torch.no_grad():
            y = model(x)
        signature = infer_signature(x.numpy(), y.numpy())
        lm = M.retry(
            c.create_logged_model,
            parent.info.experiment_id,
            name=f"{study}-trial-{rec.trial:04d}",
            source_run_id=rec.run_id,
            tags={"study": study, "trial": str(rec.trial), "method": rec.method},
            params={k: M.param_value(v) for k, v in rec.hparams().items()},
        )
        with _global_tracking_uri(tracking_uri):  # see _global_tracking_uri
            mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=x.numpy(),
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                extra_files=[str(mdir / f) for f in (*MODEL_FILES, "card.json")],
                model_id=lm.model_id,
                run_id=rec.run_id,
                await_registration_for=0,
            )
        M.retry(c.finalize_logged_model, lm.model_id, "READY")
    m = rec.metrics
    params = round(m["params"])
    dense = m.get("params_dense", math.nan)
    tags = {
        "params": str(params),
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
    desc = (
        f"Trial {rec.trial} of study {study}: {rec.method}, {params:,} of "
        f"{_fmt_int(tags['params_dense'])} parameters kept ({tags['density_pct']} %), "
        f"val {rec.metric.removeprefix('val_')} {rec.val_value:.4f}, test "
        f"{rec.metric.removeprefix('val_')} {rec.test_value:.4f}."
    )
    with _global_tracking_uri(tracking_uri):
        return M.retry(
            c.create_model_version,
            name,
            source=f"models:/{lm.model_id}",
            run_id=rec.run_id,
            tags=tags,
            description=desc,
            model_id=lm.model_id,
        )


def _card(rec: M.TrialRecord, parent: Any, study: str) -> dict[str, Any]:
    layers: dict[str, dict[str, float]] = {}
    for k, v in rec.metrics.items():
        if k.startswith("layer."):
            layer, _, stat = k[len("layer.") :].rpartition(".")
            layers.setdefault(layer, {})[stat] = v
    return {
        "study": study,
        "trial": rec.trial,
        "run_id": rec.run_id,
        "study_run_id": parent.info.run_id,
        "method": rec.method,
        "dataset": rec.params.get("dataset"),
        "data_dir": M.parse_param(rec.params.get("data_dir")),
        "metrics": {k: v for k, v in rec.metrics.items() if not k.startswith("layer.")},
        "per_layer": layers,
        "hparams": rec.hparams(),
        "config": {k: M.parse_param(v) for k, v in sorted(rec.params.items())},
    }


# --------------------------------------------------------------------------- fetch


def load_compact(directory: str | Path) -> nn.Sequential:
    """Rebuild a compact model from ``arch.json`` + ``weights.pt`` in ``directory``.

    The weights are read with ``torch.load(weights_only=True)``: tensors only, no code.

    Raises:
        ValueError: a file is missing, the weights do not fit the architecture, or the
            rebuilt model contains a module outside ``torch.nn``.
    """
    import torch

    from prunetune.models import build_model

    d = Path(directory)
    for f in ("arch.json", "weights.pt"):
        if not (d / f).is_file():
            raise ValueError(f"{d} must contain {f} (a fetched or exported compact model).")
    arch = json.loads((d / "arch.json").read_text())
    state = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
    with warnings.catch_warnings():  # a fully pruned layer has zero-sized weights
        warnings.simplefilter("ignore", UserWarning)
        model = build_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights.pt does not fit arch.json in {d}: {e}") from None
    foreign = sorted({type(m).__module__ for m in model.modules()} - _torch_modules(model))
    if foreign:
        raise ValueError(f"the rebuilt model uses modules outside torch.nn: {foreign}")
    return model.eval()


def _torch_modules(model: nn.Module) -> set[str]:
    return {
        type(m).__module__ for m in model.modules() if type(m).__module__.startswith("torch.nn.")
    }


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` / ``NAME/VERSION`` (optionally ``models:/``-prefixed) → (name, alias, version).

    Raises:
        ConfigError: neither form.
    """
    text = uri.strip().removeprefix("models:/")
    if "@" in text:
        name, _, alias = text.rpartition("@")
        if name and alias and "/" not in alias:
            return name, alias, None
    elif "/" in text:
        name, _, version = text.rpartition("/")
        if name and version.isdigit():
            return name, None, version
    raise ConfigError(
        f"model URI must be NAME@ALIAS (e.g. quickstart@knee) or NAME/VERSION, but got {uri!r}."
    )


def resolve_version(uri: str, tracking_uri: str) -> Any:
    """The ``ModelVersion`` that ``uri`` names.

    Raises:
        ConfigError: the model, alias or version does not exist (lists what does).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    c = M.existing_client(tracking_uri)
    try:
        rm = M.retry(c.get_registered_model, name)
    except MlflowException:
        names = sorted(r.name for r in M.retry(c.search_registered_models))
        raise ConfigError(
            f"no registered model {name!r} in {tracking_uri!r}; registered: {names or 'none'}."
        ) from None
    try:
        if alias is not None:
            return M.retry(c.get_model_version_by_alias, name, alias)
        return M.retry(c.get_model_version, name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ConfigError(
            f"registered model {name!r} has no {what}; aliases: "
            f"{dict(sorted((rm.aliases or {}).items())) or 'none'}."
        ) from None


def fetch_to(uri: str, out_dir: str | Path, *, tracking_uri: str | None = None) -> FetchedModel:
    """Download ``uri``'s compact model into ``out_dir`` and rebuild it.

    Writes ``weights.pt``, ``arch.json``, ``kept_units.json``, ``card.json`` (the trial's
    metrics, config and provenance plus name/version/aliases) and ``MODEL_CARD.md``.
    """
    from prunetune.search._mlflow import resolve_tracking_uri

    turi = tracking_uri or resolve_tracking_uri(None, Path.cwd())
    mv = resolve_version(uri, turi)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import mlflow.artifacts

    with (
        tempfile.TemporaryDirectory(prefix="prunetune-fetch-") as tmp,
        _global_tracking_uri(turi),
    ):
        src = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{mv.name}/{mv.version}/extra_files",
            dst_path=tmp,
            tracking_uri=turi,
            registry_uri=turi,
        )
        files = []
        for f in (*MODEL_FILES, "card.json"):
            if (Path(src) / f).is_file():
                shutil.copyfile(Path(src) / f, out / f)
                files.append(out / f)
    model = load_compact(out)
    card = json.loads((out / "card.json").read_text()) if (out / "card.json").is_file() else {}
    aliases = tuple(sorted(getattr(mv, "aliases", []) or []))
    card.update({"name": mv.name, "version": str(mv.version), "aliases": list(aliases)})
    (out / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    arch = json.loads((out / "arch.json").read_text())
    md = out / "MODEL_CARD.md"
    md.write_text(model_card_markdown(card, arch, uri))
    files.append(md)
    return FetchedModel(
        model=model,
        arch=arch,
        name=mv.name,
        version=str(mv.version),
        aliases=aliases,
        card=card,
        files=tuple(dict.fromkeys(files)),
    )


def fetch(uri: str, *, tracking_uri: str | None = None) -> nn.Module:
    """A registered pruned model as a plain ``torch.nn`` module (eval mode, CPU).

    Args:
        uri: ``NAME@ALIAS`` (e.g. ``"quickstart@knee"``) or ``NAME/VERSION``.
        tracking_uri: the store; default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``.

    Example:
        >>> import prunetune
        >>> model = prunetune.fetch("quickstart@knee")  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="prunetune-fetch-") as tmp:
        return fetch_to(uri, tmp, tracking_uri=tracking_uri).model


def model_card_markdown(card: dict[str, Any], arch: dict[str, Any], uri: str = "") -> str:
    """A human-readable model card from ``card.json`` and the compact architecture."""
    m = card.get("metrics", {})
    name, version = card.get("name", "?"), card.get("version", "?")
    aliases = ", ".join(card.get("aliases", [])) or "none"
    ref = f"{name}@{card['aliases'][0]}" if card.get("aliases") else f"{name}/{version}"

    def num(k: str, fmt: str = ".4f") -> str:
        v = m.get(k)
        return "?" if v is None else format(v, fmt)

    lines = [
        f"# {name} v{version}",
        "",
        f"Aliases: {aliases}. Pruned with **{card.get('method', '?')}** on "
        f"**{card.get('dataset', '?')}**; trial {card.get('trial', '?')} of study "
        f"`{card.get('study', '?')}` (MLflow run `{card.get('run_id', '?')}`).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| kept parameters | {num('params', ',.0f')} of {num('params_dense', ',.0f')} "
        f"({100 * m.get('density', math.nan):.2f} %) |",
        f"| validation accuracy | {num('val_accuracy')} |",
        f"| test accuracy | {num('test_accuracy')} |",
        f"| live hidden neurons | {num('live_neurons', ',.0f')} |",
        "",
        "Validation accuracy selected the model; test accuracy was measured once, never used "
        "to select.",
        "",
        "## Compact architecture",
        "",
        f"Input shape {arch.get('input_shape')}.",
        "",
        "| # | layer | in | out |",
        "|---|---|---|---|",
    ]
    for i, layer in enumerate(arch.get("layers", [])):
        lines.append(
            f"| {i} | {layer.get('type')} | {layer.get('in', '')} | {layer.get('out', '')} |"
        )
    if card.get("per_layer"):
        lines += ["", "| prunable layer | units kept | density |", "|---|---|---|"]
        for layer, d in card["per_layer"].items():
            lines.append(
                f"| {layer} | {d.get('units', 0):.0f} of {d.get('units_dense', 0):.0f} | "
                f"{100 * d.get('density', math.nan):.2f} % |"
            )
    if card.get("hparams"):
        lines += ["", "## Hyperparameters", ""]
        lines += [f"- `{k}` = `{json.dumps(v)}`" for k, v in card["hparams"].items()]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "import prunetune",
        f'model = prunetune.fetch("{ref}")  # plain torch.nn.Sequential',
        "",
        "# or from these files, with torch and prunetune.models only:",
        "import json, torch",
        "from prunetune.models import build_model",
        'model = build_model(json.load(open("arch.json")))',
        'model.load_state_dict(torch.load("weights.pt", weights_only=True))',
        "```",
        "",
    ]
    return "\n".join(lines)


def list_models(tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered model with its versions, aliases and recorded numbers."""
    c = M.existing_client(tracking_uri)
    out = []
    for rm in M.retry(c.search_registered_models):
        aliases = _aliases(c, rm.name)
        versions = sorted(_versions(c, rm.name), key=lambda v: int(v.version))
        out.append(
            {
                "name": rm.name,
                "description": rm.description or "",
                "versions": [
                    {
                        "version": str(v.version),
                        "aliases": aliases.get(str(v.version), []),
                        "params": _maybe_int(v.tags.get("params")),
                        "val_accuracy": _maybe_float(v.tags.get("val_accuracy")),
                        "test_accuracy": _maybe_float(v.tags.get("test_accuracy")),
                        "method": v.tags.get("method", ""),
                        "trial": _maybe_int(v.tags.get("trial")),
                        "run_id": v.run_id,
                    }
                    for v in versions
                ],
            }
        )
    return out


def _maybe_int(s: str | None) -> int | None:
    try:
        return int(s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _maybe_float(s: str | None) -> float | None:
    try:
        return float(s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


__all__ = [
    "ALIAS_RULES",
    "FetchedModel",
    "RegisteredVersion",
    "fetch",
    "fetch_to",
    "list_models",
    "load_compact",
    "parse_model_uri",
    "register_study",
    "resolve_version",
]
