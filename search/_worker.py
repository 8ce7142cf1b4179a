"""Private: the trial process runs one trial and reports it to Ray Tune, nothing else: epochs
and final metrics through ``tune.report``, weights and masks as a Tune checkpoint. It imports
neither MLflow nor Optuna; the driver records and mirrors what it reports."""

from __future__ import annotations

import tempfile
import time
from typing import Any

REPORT_SECONDS = 1.0  # least interval between intermediate results sent to Tune

# A trial of this process ended without its closing collection: the scheduler stopped it.
_uncollected = False


def trainable(
    config: dict[str, Any],
    *,
    threads: int,
    paths: tuple[str, ...] = (),
    flush_epochs: tuple[int, ...] = (),
    teachers: dict[str, Any] | None = None,
) -> None:
    """Ray Tune function trainable: ``config`` holds ``trial_config`` and ``trial_number``;
    ``paths`` (the spec's folder and the driver's working directory) join the import path, so
    the study's factories resolve here as they did on the driver (folders this node lacks are
    skipped: on a cluster, code travels with ``--runtime-env`` or is installed). Epochs in
    ``flush_epochs`` (an early-stopping scheduler's rungs) are reported at once. ``teachers``:
    the study's distillation teachers' weights by key (trained once, by the driver)."""
    import gc
    import os
    import sys

    import ray
    import torch
    from ray import tune

    from prunetune.search.trial import run_trial

    for p in paths:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)

    # Tune reuses this process for the next trial. What a trial leaves in reference cycles
    # (its data, model and optimizer) waits for a full collection, which a process holding
    # torch's objects seldom runs: without one per trial, a reused actor's memory grew by a
    # data set per trial (bench/worker_memory.py). A trial collects when it ends; one stopped
    # mid-epoch leaves it to the next (a collection costs ~0.1 s).
    global _uncollected
    if _uncollected:
        gc.collect()
    _uncollected = True
    t_start = time.time()
    number = int(config["trial_number"])
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    cfg = {**config["trial_config"], "device": device, "threads": threads}
    rows: list[dict[str, float]] = []
    last = [-float("inf")]

    def report(row: dict[str, float]) -> None:
        rows.append(row)
        # Each report is a round trip through the driver's event loop, which shares the cores
        # with the trials: epochs travel in batches, at most every REPORT_SECONDS.
        now = time.monotonic()
        if now - last[0] >= REPORT_SECONDS or int(row.get("epoch", 0)) in flush_epochs:
            last[0] = now
            tune.report({**row, "trial_number": number, "epoch_rows": rows[:]})
            rows.clear()

    result = run_trial(cfg, report, teachers=teachers)
    final = {
        **result.metrics,
        "trial_number": number,
        "epoch_rows": rows,
        "node_id": ray.get_runtime_context().get_node_id(),
        "worker_start": t_start,
        "worker_end": time.time(),
        "final": 1,
    }
    with tempfile.TemporaryDirectory(prefix="prunetune-trial-") as tmp:
        result.save(tmp)
        del result
        gc.collect()
        _uncollected = False
        if torch.cuda.is_initialized():  # trials sharing a GPU (gpu: 0.25) get this one's cache
            torch.cuda.empty_cache()
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
