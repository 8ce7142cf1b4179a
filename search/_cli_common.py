"""Private: what the MLflow-facing CLI modules share (``cli_tracking``, ``cli_explain``).

It must not import :mod:`prunetune.search.cli` at module level: ``cli`` imports the command
modules at its end, and a command module imported first (``import cli_tracking``) must find
these names defined before that cycle comes back to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunetune.search._errors import ConfigError

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
        show_default=False,
    ),
]


def _uri(uri: str | None) -> str:
    """The absolute tracking URI of an existing store, or a readable CLI error."""
    from prunetune.search._mlflow import existing_client, resolve_tracking_uri
    from prunetune.search.cli import _fail

    try:
        resolved = resolve_tracking_uri(uri, Path.cwd())
        existing_client(resolved)
    except ConfigError as e:
        raise _fail(str(e)) from None
    return resolved
