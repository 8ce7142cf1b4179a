"""A registered version's record: ``card.json`` (numbers, config, provenance) and
``MODEL_CARD.md`` (the same for people)."""

from __future__ import annotations

import json
import math
from typing import Any

from prunetune.search._front import TrialRecord
from prunetune.search._mlflow import parse_param


def card_json(rec: TrialRecord, parent: Any, study: str) -> dict[str, Any]:
    """``card.json`` of the trial ``rec`` of ``study`` (``parent``: the study's run)."""
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
        "data_dir": parse_param(rec.params.get("data_dir")),
        "metrics": {k: v for k, v in rec.metrics.items() if not k.startswith("layer.")},
        "per_layer": layers,
        "hparams": rec.hparams(),
        "config": {k: parse_param(v) for k, v in sorted(rec.params.items())},
    }


def fmt_int(s: str | None) -> str:
    """``"12345"`` → ``"12,345"``; anything else → ``"?"``."""
    try:
        return f"{int(s):,}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"


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
