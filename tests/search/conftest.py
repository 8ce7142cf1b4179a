from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY_SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "model": {"family": "mlp", "depth": [1, 2], "width": [8, 32]},
    "methods": {
        "gumbel": {
            "granularity": ["weight", "neuron"],
            "lam": [0.01, 10.0],
            "schedule": ["exponential", "cosine"],
        }
    },
    "train": {"epochs": 1, "batch_size": 64, "lr": [0.001, 0.01]},
    "search": {"n_trials": 4, "max_concurrent": 1, "seed": 0, "population_size": 4},
    "tracking": {"enabled": False},
}


@pytest.fixture
def tiny_spec():
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (2 CPUs), shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path
