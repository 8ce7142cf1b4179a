"""Helpers shared by the benchmark scripts: result printing and the last-line JSON contract."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    Console(stderr=False, width=160).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_csv(name: str, rows: Sequence[dict[str, Any]]) -> Path:
    import csv

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def emit(summary: dict[str, Any]) -> None:
    """The last stdout line: one JSON object of the headline figures."""
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
