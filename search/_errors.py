"""User-facing configuration errors: one message naming the field path and the bad value."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A study spec or trial config is invalid; the message names the field and the value."""


def format_pydantic(err: Any, source: str = "") -> str:
    """One readable line per pydantic error: ``field.path: message (got value)``."""
    lines = []
    for e in err.errors():
        # a union's tags ("~family") are no field of the user's
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("~")) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "is not a known field"
        got = e.get("input")
        lines.append(f"{loc}: {msg}, got {got!r}" if e["type"] != "missing" else f"{loc}: {msg}")
    head = f"{source}: " if source else ""
    return head + ("; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines))
