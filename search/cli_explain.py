"""``prunetune explain``: pathways, feature importance and symmetry of a pruned model.

A command of :data:`app`, which :mod:`prunetune.search.cli` mounts on the root app::

    prunetune explain quickstart@knee -o explain/      # a registered model
    prunetune explain --run 3f2a... -o explain/        # a trial run's compact model
    prunetune explain --run 3f2a... --log              # ... and log the files to that run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prunetune.search._cli_common import TrackingUri, _fail, _uri, console
from prunetune.search._errors import ConfigError

app = typer.Typer()


@app.command()
def explain(
    model_uri: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME@ALIAS]",
            help="registered model: NAME@ALIAS (e.g. quickstart@knee) or NAME/VERSION",
            show_default=False,
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option("--run", help="an MLflow trial run id instead of a registered model"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the files")] = Path(
        "explain"
    ),
    dataset: Annotated[
        str | None,
        typer.Option(help="dataset for class names (default: the model card's / run's)"),
    ] = None,
    tol: Annotated[
        float, typer.Option(min=0.0, max=1.99, help="relative tolerance of feature symmetry")
    ] = 0.1,
    max_edges: Annotated[
        int, typer.Option(min=1, help="draw every kept edge up to this many")
    ] = 1000,
    top_k: Annotated[int, typer.Option(min=1, help="paths drawn beyond --max-edges")] = 100,
    scale_by_std: Annotated[
        bool,
        typer.Option(
            "--scale-by-std",
            help="weigh each feature's path norm by its std over the training data",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="where the dataset's files are (--scale-by-std)")
    ] = None,
    log: Annotated[
        bool, typer.Option("--log", help="also log the files as artifacts of the --run")
    ] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Draw a pruned model's information pathways; write feature importance and symmetry.

    Writes pathways.{png,svg}, components.json, importance.{csv,json,png} (images:
    importance_heatmap.png and importance_per_class.png), symmetry.{csv,md} and
    explanation.md into --out.
    """
    from prunetune.explain import UnsupportedModelError, feature_std, write_explanations
    from prunetune.search.explain import load_run_model, log_files

    if (model_uri is None) == (run is None):
        raise _fail("give exactly one of NAME@ALIAS or --run RUN_ID.")
    if log and run is None:
        raise _fail("--log needs --run (the files are logged to that run).")
    turi = _uri(tracking_uri)
    try:
        if run is not None:
            model, arch, kept, ds = load_run_model(run, turi)
            title = f"run {run}"
        else:
            model, arch, kept, ds, title = _registered(model_uri, turi)  # type: ignore[arg-type]
        scale = None
        if scale_by_std:
            if not (dataset or ds):
                raise ConfigError("--scale-by-std needs a dataset; pass --dataset.")
            scale = feature_std(dataset or ds, str(data_dir) if data_dir else None)  # type: ignore[arg-type]
        files = write_explanations(
            model,
            arch,
            out,
            kept_units=kept,
            dataset=dataset or ds,
            tol=tol,
            max_edges=max_edges,
            top_k=top_k,
            title=f"Information pathways — {title}",
            input_scale=scale,
        )
        logged = log_files(run, turi, files.values()) if run is not None and log else []
    except UnsupportedModelError as e:  # bad input: a model the analysis cannot read
        raise _fail(str(e)) from None
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e), 1) from None
    comp = json.loads(files["components"].read_text())
    console.print(
        f"{title}: {comp['num_components']} component(s), {comp['num_edges']} kept edges → {out}",
        highlight=False,
    )
    for c in comp["components"]:
        ins = ", ".join(c["inputs"][:8]) + (" …" if len(c["inputs"]) > 8 else "")
        console.print(f"  {{{ins}}} → {{{', '.join(c['outputs'])}}}", highlight=False)
    for p in files.values():
        console.print(f"  {p}", highlight=False)
    if log:
        console.print(f"logged to run {run}: {', '.join(logged)}", highlight=False)


def _registered(
    uri: str, tracking_uri: str
) -> tuple[object, dict, dict[str, list[int]] | None, str | None, str]:
    """Fetch a registered model's compact layers (before the standardisation that
    ``model.pt2`` carries), input shape, kept units and dataset."""
    import tempfile

    from prunetune.search import registry

    with tempfile.TemporaryDirectory(prefix="prunetune-explain-") as tmp:
        got = registry.fetch_to(uri, tmp, tracking_uri=tracking_uri)
        model, input_shape = registry.compact_module(tmp)
        ku = Path(tmp) / "kept_units.json"
        kept = json.loads(ku.read_text()) if ku.is_file() else None
    ds = got.card.get("dataset")
    label = f"{got.name} v{got.version}" + (f" ({', '.join(got.aliases)})" if got.aliases else "")
    return model, {"input_shape": list(input_shape)}, kept, (str(ds) if ds else None), label
