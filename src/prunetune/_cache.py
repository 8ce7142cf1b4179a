"""The root of prunetune's on-disk cache, shared by every package that caches files.

``$PRUNETUNE_CACHE`` if set, else ``~/.cache/prunetune``. Each user of the cache owns one
sub-directory: ``mnist`` and ``digits`` (datasets), ``kernels`` (the compiled mask kernel).
This module imports nothing from prunetune, so any package may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_root", "write_atomic"]


def cache_root() -> Path:
    """``$PRUNETUNE_CACHE`` (with ``~`` expanded) or ``~/.cache/prunetune``; not created here."""
    env = os.environ.get("PRUNETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunetune"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file beside it and ``os.replace``: a reader sees the
    old file or the new one, never half of either (the folder is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
