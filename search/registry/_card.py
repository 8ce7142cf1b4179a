"""A registered version's record: ``card.json`` (numbers, config, provenance, inputs) and
``MODEL_CARD.md`` (the same for people, with how to load ``model.pt2`` with plain torch)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from prunetune.search._front import TrialRecord
from prunetune.search._mlflow import parse_param


def card_json(
    rec: TrialRecord, parent: Any, study: str, inputs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``card.json`` of the trial ``rec`` of ``study`` (``parent``: the study's run);
    ``inputs`` is what ``model.pt2`` takes (``input.json``: shape, dtype, range, mean, std)."""
    layers: dict[str, dict[str, float]] = {}
    for k, v in rec.metrics.items():
        if k.startswith("layer."):
            layer, _, stat = k[len("layer.") :].rpartition(".")
            layers.setdefault(layer, {})[stat] = v
    card: dict[str, Any] = {
        "study": study,
        "trial": rec.trial,
        "run_id": rec.run_id,
        "study_run_id": parent.info.run_id,
        "method": rec.method,
        "dataset": _dataset(rec.params),
        "data_dir": parse_param(rec.params.get("data_dir")),
        "metrics": {k: v for k, v in rec.metrics.items() if not k.startswith("layer.")},
        "per_layer": layers,
        "hparams": rec.hparams(),
        "config": {k: parse_param(v) for k, v in sorted(rec.params.items())},
    }
    if inputs is not None:
        card["input"] = dict(inputs)
    return card


def _dataset(params: Mapping[str, Any]) -> Any:
    """A built-in data set's name, or a data factory as the trial config gave it
    (``{"factory", "params", "num_classes", "name"}``, from the run's flattened params)."""
    if params.get("dataset"):
        return params["dataset"]
    if "dataset.factory" not in params:
        return None
    d: dict[str, Any] = {"params": {}}
    for k, v in params.items():
        if k.startswith("dataset.params."):
            d["params"][k[len("dataset.params.") :]] = parse_param(v)
        elif k.startswith("dataset."):
            d[k[len("dataset.") :]] = parse_param(v)
    return d


def _dataset_label(d: Any) -> str:
    """A built-in's name, or ``"data factory pkg.mod:fn"`` (or its name)."""
    if isinstance(d, Mapping):
        return str(d.get("name") or f"data factory {d.get('factory', '?')}")
    return "?" if d is None else str(d)


def fmt_int(s: str | None) -> str:
    """``"12345"`` → ``"12,345"``; anything else → ``"?"``."""
    try:
        return f"{int(s):,}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"


def _num(v: Any, fmt: str = ".4g") -> str:
    return "?" if v is None else format(v, fmt)


def _input_lines(inputs: Mapping[str, Any]) -> list[str]:
    shape = ", ".join(str(int(d)) for d in inputs["shape"])
    lo, hi = inputs.get("range") or (None, None)
    mean, std = inputs.get("mean"), inputs.get("std")
    pixels = " (pixels scaled to [0, 1])" if (lo, hi) == (0.0, 1.0) else ""
    values = (
        f", values in `[{_num(lo)}, {_num(hi)}]`{pixels}"
        if lo is not None
        else ", as the data factory returns them"
    )
    if (mean, std) in ((0.0, 1.0), (None, None)):
        standard = "The program applies no standardisation of its own."
    else:
        standard = (
            "The data set's standardisation "
            f"`(x - {_num(mean, '.6g')}) / {_num(std, '.6g')}` is part of the program: do not "
            "standardise the inputs again."
        )
    return [
        "## Inputs",
        "",
        f"`model.pt2` takes **raw** inputs: `{inputs.get('dtype', 'float32')}` tensors of shape "
        f"`(batch, {shape})`, any batch size{values}. {standard}",
    ]


def _load_lines(ref: str, inputs: Mapping[str, Any]) -> list[str]:
    shape = ", ".join(str(int(d)) for d in inputs["shape"])
    lo, hi = inputs.get("range") or (0.0, 1.0)
    if (lo, hi) == (0.0, 1.0):
        example = f"x = torch.rand(4, {shape})  # a batch of raw inputs in [0, 1]"
    else:
        example = f"x = {lo!r} + {hi - lo!r} * torch.rand(4, {shape})  # raw, in [{lo}, {hi}]"
    return [
        "## Load",
        "",
        "With plain torch, from these files (no prunetune, no model code):",
        "",
        "```python",
        "import torch",
        "",
        'model = torch.export.load("model.pt2").module()  # already in eval mode',
        example,
        "logits = model(x)",
        "```",
        "",
        f'With prunetune: `prunetune.fetch("{ref}").model` (supports `.eval()` and '
        f'`.to(device)`); with MLflow: `mlflow.pytorch.load_model("models:/{ref}")`; as ONNX: '
        f"`prunetune fetch {ref} -o DIR --onnx` writes `model.onnx` (checked with onnxruntime).",
        "",
        "To train further: `weights.safetensors` holds the masked dense model (masks baked in) "
        "and `masks.safetensors` its 0/1 masks, keyed like the weights "
        "(`prunetune.prune.deliver.load_masked_state`); `config.json` is the trial's config.",
        "",
    ]


def _legacy_lines(ref: str, arch: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Compact architecture",
        "",
        f"Input shape {arch.get('input_shape')} (standardised inputs).",
        "",
        "| # | layer | in | out |",
        "|---|---|---|---|",
    ]
    for i, layer in enumerate(arch.get("layers", [])):
        lines.append(
            f"| {i} | {layer.get('type')} | {layer.get('in', '')} | {layer.get('out', '')} |"
        )
    return [
        *lines,
        "",
        "## Load",
        "",
        "```python",
        "import prunetune",
        f'model = prunetune.fetch("{ref}").model  # plain torch.nn.Sequential',
        "",
        "# or from these files, with torch and prunetune.models only:",
        "import json, torch",
        "from prunetune.models import build_model",
        'model = build_model(json.load(open("arch.json")))',
        'model.load_state_dict(torch.load("weights.pt", weights_only=True))',
        "```",
        "",
    ]


def model_card_markdown(
    card: Mapping[str, Any], uri: str = "", arch: Mapping[str, Any] | None = None
) -> str:
    """A human-readable model card from ``card.json``: inputs and how to load ``model.pt2``,
    or for a version registered before ``model.pt2`` (``arch`` given) its compact layers."""
    m = card.get("metrics", {})
    name, version = card.get("name", "?"), card.get("version", "?")
    aliases = ", ".join(card.get("aliases", [])) or "none"
    ref = f"{name}@{card['aliases'][0]}" if card.get("aliases") else uri or f"{name}/{version}"

    def num(k: str, fmt: str = ".4f") -> str:
        v = m.get(k)
        return "?" if v is None else format(v, fmt)

    lines = [
        f"# {name} v{version}",
        "",
        f"Aliases: {aliases}. Pruned with **{card.get('method', '?')}** on "
        f"**{_dataset_label(card.get('dataset'))}**; trial {card.get('trial', '?')} of study "
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
    ]
    inputs = card.get("input")
    if inputs:
        lines += [*_input_lines(inputs), ""]
    if card.get("per_layer"):
        lines += ["| prunable layer | units kept | density |", "|---|---|---|"]
        for layer, d in card["per_layer"].items():
            lines.append(
                f"| {layer} | {d.get('units', 0):.0f} of {d.get('units_dense', 0):.0f} | "
                f"{100 * d.get('density', math.nan):.2f} % |"
            )
        lines.append("")
    if card.get("hparams"):
        lines += ["## Hyperparameters", ""]
        lines += [f"- `{k}` = `{json.dumps(v)}`" for k, v in card["hparams"].items()]
        lines.append("")
    if inputs:
        lines += _load_lines(ref, inputs)
    elif arch is not None:
        lines += _legacy_lines(ref, arch)
    return "\n".join(lines)
