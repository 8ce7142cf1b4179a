"""The MLflow adapter of :mod:`prunetune.explain`: a trial run's model in, its explanation
files out as artifacts of the run (``explain/pathways.png``, ``importance.csv``, …).

The analysis and the drawing are :mod:`prunetune.explain` (no MLflow there); this module only
loads a run's compact model and logs files. It also keeps the issue-6 toy recipe, which trains
through :func:`prunetune.search.trial.run_trial`.

Example:
    >>> from prunetune.search.explain import log_explanations
    >>> log_explanations(run_id, "sqlite:///mlflow.db")                        # doctest: +SKIP
    ['explain/components.json', 'explain/explanation.md', ...]
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from prunetune.prune.export import ExportResult


def _run_dataset(client: Any, run_id: str) -> str | None:
    run = client.get_run(run_id)
    ds = run.data.params.get("dataset") or run.data.tags.get("dataset")
    return str(ds) if ds else None


def load_run_model(
    run_id: str, tracking_uri: str
) -> tuple[nn.Module, dict[str, Any], dict[str, list[int]] | None, str | None]:
    """A trial run's compact model from its ``model/`` artifacts (the trial's checkpoint,
    mirrored by the driver): ``(model, arch, kept_units, dataset)``.

    ``model/arch.json`` + ``weights.pt`` when the run has them (built-in chain families);
    else the model rebuilt from ``config.json`` and the safetensors
    (:func:`~prunetune.search.trial.rebuild_compact`), with ``arch`` = its input shape.

    Raises:
        ValueError: the run has no ``model/`` artifacts or they do not fit together.
    """
    from prunetune.search import _mlflow as M
    from prunetune.search.registry import load_compact

    c = M.client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="prunetune-explain-") as tmp:
        try:
            c.download_artifacts(run_id, "model", tmp)
        except Exception as e:
            raise ValueError(f"run {run_id} has no compact model artifacts 'model/': {e}") from None
        mdir = Path(tmp) / "model"
        if (mdir / "arch.json").is_file():
            model = load_compact(mdir)
            arch = json.loads((mdir / "arch.json").read_text())
        else:
            from prunetune.search.trial import rebuild_compact

            try:
                c.download_artifacts(run_id, "config.json", tmp)
            except Exception as e:
                raise ValueError(f"run {run_id} has no arch.json and no config.json: {e}") from None
            model, inputs = rebuild_compact(tmp)
            arch = {"input_shape": list(inputs["shape"])}
        ku_path = mdir / "kept_units.json"
        kept = json.loads(ku_path.read_text()) if ku_path.is_file() else None
    return model, arch, kept, _run_dataset(c, run_id)


def log_explanations(
    run_id: str,
    tracking_uri: str,
    export_result: ExportResult | None = None,
    dataset: str | None = None,
    *,
    artifact_path: str = "explain",
    tol: float = 0.1,
) -> list[str]:
    """Write the explanation files for a trial and log them as artifacts of ``run_id``.

    Args:
        run_id: the (trial) run to attach the files to.
        tracking_uri: its MLflow store.
        export_result: the trial's compact model; ``None`` loads it from the run's
            ``model/`` artifacts.
        dataset: registered dataset name (class names); ``None`` reads the run's
            ``dataset`` param.
        artifact_path: artifact folder of the run.
        tol: relative tolerance of feature symmetry.

    Returns:
        the artifact paths logged, e.g. ``["explain/pathways.png", ...]``.
    """
    from prunetune.explain import write_explanations
    from prunetune.search import _mlflow as M

    c = M.client(tracking_uri)
    if export_result is None:
        model, arch, kept, ds = load_run_model(run_id, tracking_uri)
    else:
        model, arch, kept, ds = (
            export_result.model,
            export_result.arch,
            export_result.kept_units,
            None,
        )
    if dataset is None:
        dataset = ds if export_result is None else _run_dataset(c, run_id)
    with tempfile.TemporaryDirectory(prefix="prunetune-explain-") as tmp:
        files = write_explanations(model, arch, tmp, kept_units=kept, dataset=dataset, tol=tol)
        return log_files(run_id, tracking_uri, files.values(), artifact_path)


def log_files(
    run_id: str, tracking_uri: str, files: Iterable[Path], artifact_path: str = "explain"
) -> list[str]:
    """Log already written explanation ``files`` as artifacts of ``run_id``; returns their
    artifact paths."""
    from prunetune.search import _mlflow as M

    c = M.client(tracking_uri)
    paths = sorted(set(files))
    with tempfile.TemporaryDirectory(prefix="prunetune-explain-") as tmp:
        for p in paths:  # one upload, of exactly these files
            shutil.copyfile(p, Path(tmp) / p.name)
        c.log_artifacts(run_id, tmp, artifact_path)
    return [f"{artifact_path}/{p.name}" for p in paths]


# The tutorial task of Zhang, Tao & Zhang (2023): settings that make Gumbel-pruned 4-10-10-2
# SiLU networks on pathways-toy split into {x1, x2} -> y1 and {x3, x4} -> y2 (issue 6; the
# slow test and bench/pathways_seeds.py both use them).
TOY_RECIPE: dict[str, Any] = {
    "dataset": "pathways-toy",
    "model": {"family": "mlp", "widths": [10, 10], "activation": "silu"},
    "method": {
        "name": "gumbel",
        "granularity": "weight",
        "lam": 1.5,
        "logit_lr": 0.05,
        "warmup_epochs": 100,
        "init_keep_prob": 0.99,
        "schedule": "exponential",
        "tau_start": 1.0,
        "tau_end": 0.1,
    },
    "train": {"epochs": 800, "batch_size": 64, "lr": 0.01, "optimizer": "adam"},
    "threads": 1,
    "device": "cpu",
}
TOY_SYMMETRY_TOL = 0.1


def toy_pathways(seed: int) -> dict[str, Any]:
    """Train :data:`TOY_RECIPE` with ``seed`` and report its components and symmetry;
    ``separated`` is True for exactly {x1, x2} -> y1, {x3, x4} -> y2, x1 ~ -x2, x3 ~ x4."""
    from prunetune.explain import explain as explain_model
    from prunetune.search.trial import run_trial

    cfg = {**TOY_RECIPE, "train": {**TOY_RECIPE["train"], "seed": seed}}
    res = run_trial(cfg)
    ex = res.export
    e = explain_model(ex.model, (4,), kept_units=ex.kept_units, tol=TOY_SYMMETRY_TOL)
    comps = [(c.inputs, c.outputs) for c in e.components]
    sym = (e.symmetry.relation(0, 1), e.symmetry.relation(2, 3))
    return {
        "seed": seed,
        "separated": comps == [((0, 1), (0,)), ((2, 3), (1,))] and sym == ("opposite", "equal"),
        "components": comps,
        "symmetry": sym,
        "val_loss": res.metrics["val_loss"],
        "params": res.metrics["params"],
    }


__all__ = [
    "TOY_RECIPE",
    "TOY_SYMMETRY_TOL",
    "load_run_model",
    "log_explanations",
    "log_files",
    "toy_pathways",
]
