"""Test-wide isolation: tests never read or write a developer's own MLflow server or data."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch):
    # A user's MLFLOW_TRACKING_URI (say, a team server) must never receive test runs, and one
    # test that sets it (mlflow.set_tracking_uri exports it) must not leak into the next.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
