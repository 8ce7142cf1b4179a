"""Issue 6 acceptance: Gumbel-pruned 4-10-10-2 SiLU networks on pathways-toy, seeds 0-4.

Each seed trains ``prunetune.search.explain.TOY_RECIPE`` (no seed picking) and checks that the
pruned network has exactly two connected components, {x1, x2} -> y1 and {x3, x4} -> y2, with
x1/x2 opposite and x3/x4 equal in the symmetry report. Required: at least 4 of 5.

    .venv/bin/python bench/pathways_seeds.py
Last stdout line: {"separated": N, "seeds": 5, "per_seed": [...]}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, print_table

from prunetune.search.explain import toy_pathways


def main() -> None:
    rows = [toy_pathways(seed) for seed in range(5)]
    print_table(
        [
            {**r, "components": str(r["components"]), "symmetry": "/".join(r["symmetry"])}
            for r in rows
        ],
        ["seed", "separated", "components", "symmetry", "val_loss", "params"],
        "pathways-toy: Gumbel-pruned 4-10-10-2 SiLU networks",
    )
    emit(
        {
            "separated": sum(r["separated"] for r in rows),
            "seeds": len(rows),
            "pass": sum(r["separated"] for r in rows) >= 4,
            "per_seed": [{"seed": r["seed"], "separated": r["separated"]} for r in rows],
        }
    )


if __name__ == "__main__":
    main()
