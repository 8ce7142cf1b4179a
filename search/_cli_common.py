"""Private: what every CLI command module shares — the error console, ``_fail``, exit codes
and the ``--tracking-uri`` option.

The command modules (:mod:`~prunetune.search.cli_tracking`, :mod:`~prunetune.search.cli_explain`)
import from here and each owns a ``typer.Typer`` sub-app; :mod:`prunetune.search.cli` mounts
them on the root app. Nothing imports :mod:`prunetune.search.cli` back, so there is no cycle.

Only the standard library, typer, rich and light project modules are imported at module level:
``prunetune --help`` builds every command and must not pay for torch, MLflow or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from prunetune.search._errors import ConfigError

console = Console(stderr=True)
EXIT_CONFIG = 2

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
        show_default=False,
    ),
]


def _fail(msg: str, code: int = EXIT_CONFIG) -> typer.Exit:
    """Print ``error: msg`` to stderr; return the ``typer.Exit`` for the caller to raise."""
    from rich.markup import escape

    # escaped: messages quote user values such as [8, 4] or List[str], not rich markup
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _uri(uri: str | None) -> str:
    """The absolute tracking URI of an existing store, or a readable CLI error."""
    from prunetune.search._mlflow import existing_client, resolve_tracking_uri

    try:
        resolved = resolve_tracking_uri(uri, Path.cwd())
        existing_client(resolved)
    except ConfigError as e:
        raise _fail(str(e)) from None
    return resolved
