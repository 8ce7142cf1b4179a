"""examples/your-own-model, end to end as a user runs it: ``prunetune search study.yaml`` in a
copy of the folder (4 trials), registration, ``prunetune fetch NAME@knee -o model --verify``, and
``model.pt2`` loaded in a process where neither prunetune nor the example's package imports —
reproducing the recorded test accuracy, all within 3 minutes on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "your-own-model"
NAME = "your-own-model"  # the study's name, and its registered model's
PACKAGE = "tinyshapes"  # the example's own package
BUDGET_S = 180.0  # the whole test, on 2 CPU cores


def _prunetune() -> list[str]:
    """The venv's ``prunetune`` command, as a user calls it."""
    exe = Path(sys.executable).with_name("prunetune")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "prunetune.search.cli"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(
        [*_prunetune(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"prunetune {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return " ".join((out.stdout + out.stderr).split())  # rich wraps long lines


# The user's side: torch and NumPy only. prunetune is installed in this environment (editable),
# so it is blocked outright; the example's package is not on the path (-I) and is blocked too.
LOAD = textwrap.dedent(
    f"""
    import json, sys
    for name in ("prunetune", {PACKAGE!r}):
        sys.modules[name] = None  # importing it now fails
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(name + " must not be importable here")
    import numpy as np
    import torch

    model_dir, data_dir = sys.argv[1], sys.argv[2]
    model = torch.export.load(model_dir + "/model.pt2").module()
    x = torch.from_numpy(np.load(data_dir + "/x_test.npy"))
    y = torch.from_numpy(np.load(data_dir + "/y_test.npy"))
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    loaded = sorted(
        m for m, v in sys.modules.items()
        if v is not None and m.split(".")[0] in ("prunetune", {PACKAGE!r})
    )
    print(json.dumps({{"accuracy": correct / len(y), "n": len(y), "loaded": loaded}}))
    """
)


def test_the_example_is_searched_registered_fetched_and_loads_without_its_code(tmp_path):
    import optuna
    from mlflow import MlflowClient

    from prunetune._factory import import_paths
    from prunetune.datasets import load_data

    start = time.monotonic()
    work = tmp_path / NAME
    shutil.copytree(
        EXAMPLE,
        work,
        ignore=shutil.ignore_patterns(
            "__pycache__", "*.db", "mlartifacts", "mlruns", "ray_results", "model"
        ),
    )
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}

    # 1. search (and register) as the README says: cd examples/your-own-model && prunetune search
    _run(["search", "study.yaml", "--quiet"], work, env, timeout=BUDGET_S)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{work / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 4, states

    # 2. fetch the knee; --verify re-evaluates the test split against the record
    out = _run(["fetch", f"{NAME}@knee", "-o", "model", "--verify"], work, env, timeout=120)
    assert "verified: test accuracy" in out, out
    model_dir = work / "model"
    card = json.loads((model_dir / "card.json").read_text())
    inputs = json.loads((model_dir / "input.json").read_text())
    assert inputs["shape"] == [1, 16, 16] and inputs["num_outputs"] == 6

    # the record: the registered version's MLflow run
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias(NAME, "knee")
    recorded = client.get_run(version.run_id).data.metrics["test_accuracy"]
    assert card["metrics"]["test_accuracy"] == pytest.approx(recorded, abs=1e-12)

    # 3. the raw test inputs, from the example's own data factory (as the trial made them)
    with import_paths(work):
        data = load_data(card["dataset"])
    sys.modules.pop(f"{PACKAGE}.data", None)
    sys.modules.pop(PACKAGE, None)
    x_raw = data.x_test * inputs["std"] + inputs["mean"]  # model.pt2 standardises inside
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.save(data_dir / "x_test.npy", x_raw.numpy())
    np.save(data_dir / "y_test.npy", data.y_test.numpy())

    # 4. load model.pt2 where neither prunetune nor tinyshapes imports, from another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD, str(model_dir), str(data_dir)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []  # no prunetune or tinyshapes module was loaded
    assert got["n"] == len(data.y_test) == 450
    assert got["accuracy"] == pytest.approx(recorded, abs=0.005)
    assert recorded > 0.8  # the example learns (its knee is a useful model)

    elapsed = time.monotonic() - start
    print(f"\nyour-own-model end to end: {elapsed:.1f} s (budget {BUDGET_S:.0f} s)")
    assert elapsed <= BUDGET_S, f"took {elapsed:.1f} s, over the {BUDGET_S:.0f} s budget"
