"""The root of prunetune's on-disk cache, shared by every package that caches files.

``$PRUNETUNE_CACHE`` if set, else ``~/.cache/prunetune``. Each user of the cache owns one
sub-directory: ``mnist`` and ``digits`` (datasets), ``kernels`` (the compiled mask kernel).
This module imports nothing from prunetune, so any package may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$PRUNETUNE_CACHE`` (with ``~`` expanded) or ``~/.cache/prunetune``; not created here."""
    env = os.environ.get("PRUNETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunetune"
