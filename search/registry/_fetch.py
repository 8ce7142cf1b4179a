"""Read a registered version back: parse ``NAME@ALIAS``, resolve it, download its compact
model and rebuild it from ``arch.json`` + ``weights.pt`` (no unpickling of project code)."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune.search._errors import ConfigError
from prunetune.search._mlflow import _quote, existing_client, resolve_tracking_uri
from prunetune.search.registry._card import model_card_markdown

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

MODEL_FILES = ("weights.pt", "arch.json", "kept_units.json")
EXTRA_FILES = "extra_files"  # where the pytorch flavour keeps ``extra_files`` in a model


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


def resolve_version(uri: str, tracking_uri: str) -> ModelVersion:
    """The ``ModelVersion`` that ``uri`` names.

    Raises:
        ConfigError: the model, alias or version does not exist (lists what does).
    """
    return _resolve(existing_client(tracking_uri), uri, tracking_uri)


def _resolve(c: MlflowClient, uri: str, tracking_uri: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        names = sorted(r.name for r in c.search_registered_models())
        raise ConfigError(
            f"no registered model {name!r} in {tracking_uri!r}; registered: {names or 'none'}."
        ) from None
    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        return c.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ConfigError(
            f"registered model {name!r} has no {what}; aliases: "
            f"{dict(sorted((rm.aliases or {}).items())) or 'none'}."
        ) from None


def _download_extra_files(c: MlflowClient, mv: ModelVersion, tracking_uri: str, dst: Path) -> Path:
    """Download version ``mv``'s ``extra_files/`` into ``dst``; the local directory.

    The registry's download location (the logged model's artifact location, also for
    versions whose source is ``models:/<model_id>``) is read with the bound client, and the
    download is given ``tracking_uri`` explicitly: an ``mlflow-artifacts:/`` location resolves
    against that server, not against the process's global tracking URI.
    """
    import mlflow.artifacts

    location = c.get_model_version_download_uri(mv.name, mv.version)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{EXTRA_FILES}",
            dst_path=str(dst),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
    )


def fetch_to(uri: str, out_dir: str | Path, *, tracking_uri: str | None = None) -> FetchedModel:
    """Download ``uri``'s compact model into ``out_dir`` and rebuild it.

    Writes ``weights.pt``, ``arch.json``, ``kept_units.json``, ``card.json`` (the trial's
    metrics, config and provenance plus name/version/aliases) and ``MODEL_CARD.md``.
    """
    turi = tracking_uri or resolve_tracking_uri(None, Path.cwd())
    c = existing_client(turi)
    mv = _resolve(c, uri, turi)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with tempfile.TemporaryDirectory(prefix="prunetune-fetch-") as tmp:
        src = _download_extra_files(c, mv, turi, Path(tmp))
        for f in (*MODEL_FILES, "card.json"):
            if (src / f).is_file():
                shutil.copyfile(src / f, out / f)
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


def versions(c: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of the registered model ``name``."""
    return list(c.search_model_versions(f"name = {_quote(name)}"))


def aliases_by_version(c: MlflowClient, name: str) -> dict[str, list[str]]:
    """``{version: [alias, ...]}`` of the registered model ``name``, aliases sorted."""
    rm = c.get_registered_model(name)
    out: dict[str, list[str]] = {}
    for alias, version in sorted((rm.aliases or {}).items()):
        out.setdefault(str(version), []).append(alias)
    return out


def list_models(tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered model with its versions, aliases and recorded numbers."""
    c = existing_client(tracking_uri)
    out = []
    for rm in c.search_registered_models():
        aliases = aliases_by_version(c, rm.name)
        found = sorted(versions(c, rm.name), key=lambda v: int(v.version))
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
                    for v in found
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
