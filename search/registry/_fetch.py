"""Read a registered version back: parse ``NAME@ALIAS``, resolve it, download its files and
load ``model.pt2`` (a ``torch.export`` program: no unpickling of project code). Versions
registered before ``model.pt2`` are rebuilt from ``arch.json`` + ``weights.pt``."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunetune._cache import write_atomic
from prunetune.search._errors import ConfigError
from prunetune.search._mlflow import _quote, existing_client, resolve_tracking_uri
from prunetune.search.registry._card import model_card_markdown

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

# A version's files (``extra_files/`` of its MLflow model) besides ``card.json``: the
# delivered program, the re-trainable form, and what the trial recorded about it.
MODEL_FILES = (
    "model.pt2",
    "weights.safetensors",
    "masks.safetensors",
    "kept_units.json",
    "input.json",
    "config.json",
)
LEGACY_FILES = ("weights.pt", "arch.json", "kept_units.json")  # versions before model.pt2
CARD_FILE = "card.json"
ONNX_FILE = "model.onnx"  # written on request by write_onnx, never stored
EXTRA_FILES = "extra_files"  # where the pytorch flavour keeps ``extra_files`` in a model


@dataclass(frozen=True)
class FetchedModel:
    """A fetched model, its record and the files written.

    ``model`` is a :class:`~prunetune.prune.deliver.DeliveredModel` (``model.pt2``: raw inputs
    in, the data set's standardisation inside; ``.eval()`` and ``.to(device)`` work); for a
    version registered before ``model.pt2`` it is the ``nn.Sequential`` rebuilt from
    ``arch.json`` (standardised inputs in), and ``arch`` is that architecture.

    Example:
        >>> got = fetch("quickstart@knee", tracking_uri="sqlite:////abs/mlflow.db")  # doctest: +SKIP
        >>> got.model(got.random_inputs(4)).shape                                   # doctest: +SKIP
        torch.Size([4, 10])
    """

    model: nn.Module
    name: str
    version: str
    aliases: tuple[str, ...]
    inputs: dict[str, Any] = field(default_factory=dict)  # input.json: shape, dtype, range, …
    card: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    arch: dict[str, Any] | None = None  # versions registered before model.pt2 only

    @property
    def test_accuracy(self) -> float:
        return float(self.card["metrics"]["test_accuracy"])

    @property
    def params(self) -> int:
        return int(self.card["metrics"]["params"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape, without the batch dimension."""
        return tuple(int(d) for d in self.inputs["shape"])

    def random_inputs(self, n: int = 8, seed: int = 0) -> torch.Tensor:
        """``n`` raw inputs drawn uniformly from the input range, ``(n, *input_shape)``."""
        return random_inputs(self.inputs, n, seed)


def random_inputs(inputs: dict[str, Any], n: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` inputs as ``input.json`` describes them (``shape``; ``range``, else ``[0, 1]``),
    drawn uniformly with a seeded generator: ``(n, *shape)`` float32."""
    import torch

    lo, hi = inputs.get("range") or (0.0, 1.0)
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n, *inputs["shape"]), generator=gen)


def load_compact(directory: str | Path) -> nn.Sequential:
    """Rebuild a compact model from ``arch.json`` + ``weights.pt`` in ``directory`` (the
    format of versions registered before ``model.pt2``, and of built-in chain trials).

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


def compact_module(directory: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """The compact model of a fetched directory *without* the standardisation, and one
    input's shape — for analyses that read the layers (``prunetune explain``).

    ``arch.json`` + ``weights.pt`` when present (older versions); else the trial's model
    rebuilt from ``config.json`` + ``weights.safetensors`` + ``masks.safetensors`` and cut as
    the trial cut it (:func:`prunetune.search.trial.rebuild_compact`).

    Raises:
        ValueError: the directory holds neither form.
    """
    from prunetune.search.trial import rebuild_compact

    d = Path(directory)
    if (d / "arch.json").is_file() and (d / "weights.pt").is_file():
        arch = json.loads((d / "arch.json").read_text())
        return load_compact(d), tuple(int(s) for s in arch["input_shape"])
    need = ("config.json", "weights.safetensors", "masks.safetensors", "input.json")
    missing = [f for f in need if not (d / f).is_file()]
    if missing:
        raise ValueError(
            f"{d} must hold arch.json + weights.pt, or {' + '.join(need)} to rebuild the "
            f"compact model, but it lacks {', '.join(missing)}."
        )
    with tempfile.TemporaryDirectory(prefix="prunetune-rebuild-") as tmp:
        trial = Path(tmp)  # the layout of a saved trial (TrialResult.save)
        (trial / "model").mkdir()
        (trial / "config.json").write_bytes((d / "config.json").read_bytes())
        for f in need[1:]:
            (trial / "model" / f).write_bytes((d / f).read_bytes())
        model, inputs = rebuild_compact(trial)
    return model, tuple(int(s) for s in inputs["shape"])


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
    """Download ``uri``'s files into ``out_dir`` and load its model.

    Writes ``model.pt2`` (the delivered program: raw inputs in), ``weights.safetensors`` +
    ``masks.safetensors`` (the re-trainable form), ``kept_units.json``, ``input.json``,
    ``config.json``, ``card.json`` (the trial's metrics, config and provenance plus
    name/version/aliases) and ``MODEL_CARD.md``. A version registered before ``model.pt2``
    gives ``weights.pt``, ``arch.json``, ``kept_units.json`` and the two cards.

    Raises:
        ConfigError: the model, alias or version does not exist.
        ValueError: the version holds neither ``model.pt2`` nor ``arch.json`` +
            ``weights.pt``, or they do not load.
    """
    turi = tracking_uri or resolve_tracking_uri(None, Path.cwd())
    c = existing_client(turi)
    mv = _resolve(c, uri, turi)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="prunetune-fetch-") as tmp:
        src = _download_extra_files(c, mv, turi, Path(tmp))
        present = {f for f in (*MODEL_FILES, *LEGACY_FILES, CARD_FILE) if (src / f).is_file()}
        if "model.pt2" not in present and not {"arch.json", "weights.pt"} <= present:
            raise ValueError(
                f"version {mv.version} of {mv.name!r} must hold model.pt2 (or, registered "
                f"before it, arch.json + weights.pt), but it holds {sorted(present) or 'none'}."
            )
        for f in dict.fromkeys((*MODEL_FILES, *LEGACY_FILES, CARD_FILE, ONNX_FILE)):
            if f in present:
                write_atomic(out / f, (src / f).read_bytes())
                files.append(out / f)
            else:  # left by an earlier fetch into out_dir: not this version's
                (out / f).unlink(missing_ok=True)
    card = json.loads((out / CARD_FILE).read_text()) if CARD_FILE in present else {}
    aliases = tuple(sorted(getattr(mv, "aliases", []) or []))
    card.update({"name": mv.name, "version": str(mv.version), "aliases": list(aliases)})
    arch: dict[str, Any] | None = None
    if "model.pt2" in present:
        from prunetune.prune.deliver import load_pt2

        model: nn.Module = load_pt2(out / "model.pt2")
        inputs = json.loads((out / "input.json").read_text()) if "input.json" in present else {}
        inputs = inputs or card.get("input", {})
    else:
        model = load_compact(out)
        arch = json.loads((out / "arch.json").read_text())
        inputs = {"shape": list(arch["input_shape"]), "dtype": "float32"}
    write_atomic(out / CARD_FILE, json.dumps(card, indent=2, default=str) + "\n")
    write_atomic(out / "MODEL_CARD.md", model_card_markdown(card, uri, arch))
    files += [out / CARD_FILE, out / "MODEL_CARD.md"]
    return FetchedModel(
        model=model,
        name=mv.name,
        version=str(mv.version),
        aliases=aliases,
        inputs=inputs,
        card=card,
        files=tuple(dict.fromkeys(files)),
        arch=arch,
    )


def fetch(uri: str, *, tracking_uri: str | None = None) -> FetchedModel:
    """A registered pruned model, loaded, with its record.

    ``.model`` is a :class:`~prunetune.prune.deliver.DeliveredModel` that takes raw inputs
    (``.inputs``: shape, dtype, range; the standardisation is inside) and supports ``.eval()``
    and ``.to(device)``; for a version registered before ``model.pt2`` it is the rebuilt
    ``nn.Sequential`` (standardised inputs). No files are kept (``files`` is empty); use
    :func:`fetch_to` for them.

    Args:
        uri: ``NAME@ALIAS`` (e.g. ``"quickstart@knee"``) or ``NAME/VERSION``.
        tracking_uri: the store; default ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``.

    Example:
        >>> import prunetune
        >>> got = prunetune.fetch("quickstart@knee")  # doctest: +SKIP
        >>> logits = got.model(got.random_inputs(4))  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="prunetune-fetch-") as tmp:
        return replace(fetch_to(uri, tmp, tracking_uri=tracking_uri), files=())


def write_onnx(
    got: FetchedModel, out_dir: str | Path, *, n: int = 8, seed: int = 0
) -> tuple[Path, float]:
    """Write ``out_dir/model.onnx`` for a model :func:`fetch_to` wrote to ``out_dir`` and
    check it with onnxruntime against the fetched model on ``n`` random raw inputs
    (:meth:`FetchedModel.random_inputs`); needs ``pip install 'prunetune[onnx]'``.

    The program in ``model.pt2`` is converted as is (standardisation included); a version
    registered before ``model.pt2`` converts its rebuilt module (standardised inputs).

    Returns:
        the ONNX file and the largest absolute difference of its outputs.

    Raises:
        ValueError: ``model.pt2`` is missing from ``out_dir``, or the ONNX outputs differ by
            more than 1e-4 (the file is then removed).
    """
    import torch

    from prunetune.prune.deliver import check_onnx, export_onnx

    out = Path(out_dir)
    if got.arch is None and not (out / "model.pt2").is_file():
        raise ValueError(f"{out} must contain model.pt2 (written by fetch_to) to convert it.")
    x = got.random_inputs(n, seed)  # (n, *input_shape)
    source = out / "model.pt2" if got.arch is None else got.model
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" and the like
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations
            path = export_onnx(source, x, out / ONNX_FILE)
    finally:
        quiet.setLevel(level)
    with torch.no_grad():
        expected = got.model(x)
    try:
        diff = check_onnx(path, x, expected)
    except ValueError:
        path.unlink(missing_ok=True)
        raise
    return path, diff


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
