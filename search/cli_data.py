"""``prunetune data``: fetch the datasets that are not bundled, into the local cache.

A command group of :data:`app`, which :mod:`prunetune.search.cli` mounts on the root app::

    prunetune data download mnist        # -> ~/.cache/prunetune/mnist
    prunetune data download cifar10      # -> ~/.cache/prunetune/cifar10/cifar-10-batches-py

Every file is verified against its published SHA-256 before it is kept; ``load_dataset``
then finds it without a ``--data-dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunetune.search._cli_common import _fail

__all__ = ["DOWNLOADABLE", "app"]

app = typer.Typer()
data_app = typer.Typer(
    help="Fetch datasets that are not bundled (verified by SHA-256) into the local cache.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

#: The datasets ``prunetune data download`` knows.
DOWNLOADABLE: tuple[str, ...] = ("cifar10", "mnist")


@data_app.command()
def download(
    name: Annotated[str, typer.Argument(metavar="NAME", help=f"one of {', '.join(DOWNLOADABLE)}")],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="where to put the files (default: $PRUNETUNE_CACHE/NAME, else "
            "~/.cache/prunetune/NAME, where load_dataset looks)",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="a mirror: the archive's URL for cifar10, the files' directory for mnist "
            "(http(s):// or file://); the files must still match the known SHA-256",
            show_default=False,
        ),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(hidden=True, help="cifar10 only: the archive's SHA-256 (tests, re-packed)"),
    ] = None,
) -> None:
    """Download a dataset, verify its SHA-256 and print the directory holding its files."""
    if name not in DOWNLOADABLE:
        raise _fail(f"NAME must be one of {', '.join(DOWNLOADABLE)}, but got {name!r}.")
    if sha256 is not None and name != "cifar10":
        raise _fail(f"--sha256 applies to cifar10 only, but NAME is {name!r}.")
    from prunetune.datasets import download_cifar10, download_mnist

    try:
        if name == "cifar10":
            options = {"url": url, "sha256": sha256}
            folder = download_cifar10(cache_dir, **{k: v for k, v in options.items() if v})
        else:
            folder = download_mnist(cache_dir, **({"base_url": url} if url else {}))
    except (ValueError, OSError) as e:  # DownloadError is an OSError; ValueError: bad checksum
        raise _fail(str(e), 1) from None
    typer.echo(folder)  # alone on stdout, for scripts: DIR=$(prunetune data download cifar10)
