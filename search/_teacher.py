"""Private: the dense teacher that distilling trials learn from, trained once per study.

A teacher is defined by the data set, its architecture (``train.distill.teacher``; the spec's
default is the largest model its space builds), ``train.distill.teacher_epochs``, the loss and
the augmentation; it trains with the schema's default optimiser, learning rate and batch size
and seed 0. It lives in prunetune's cache (``$PRUNETUNE_CACHE/teachers/<key>/``: the weights as
safetensors, ``meta.json`` with its accuracy and config, ``trainings.log`` with one line per
training) keyed by a hash of that definition. A file lock beside the folder makes concurrent
trials (threads, processes or Ray workers on one machine or a shared file system) wait for the
one that trains it; the study's driver trains it before the first trial starts and logs its
accuracy on the study's parent run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune._cache import cache_root, write_atomic
from prunetune._schema import TRAIN

#: Bump when a teacher's training changes in a way its key does not capture.
TEACHER_VERSION = 1
TEACHER_SEED = 0


@dataclass
class Teacher:
    """A trained dense teacher (eval mode) and what it measured.

    Attributes:
        trained: this call trained it (False: loaded from the cache).
        meta: ``val_accuracy``, ``test_accuracy``, ``params``, ``seconds``, ``config``, ``key``.
    """

    model: nn.Module
    meta: dict[str, Any]
    trained: bool

    def state(self) -> dict[str, torch.Tensor]:
        """The weights on the CPU (to ship to trials)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}


def teacher_definition(cfg: Any, loss: str) -> dict[str, Any]:
    """What defines the teacher of trial config ``cfg`` (its cache key's content)."""
    t = cfg.train
    model = t.distill.teacher or cfg.model
    dataset = cfg.dataset if isinstance(cfg.dataset, str) else cfg.dataset.model_dump(mode="json")
    return {
        "version": TEACHER_VERSION,
        "dataset": dataset,
        "model": model.model_dump(mode="json"),
        "epochs": t.distill.teacher_epochs,
        "batch_size": TRAIN["batch_size"].default,
        "lr": TRAIN["lr"].default,
        "optimizer": TRAIN["optimizer"].default,
        "seed": TEACHER_SEED,
        "loss": loss,
        "augment": sorted(t.augment),
    }


def teacher_key(definition: dict[str, Any]) -> str:
    blob = json.dumps(definition, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def teacher_dir(definition: dict[str, Any]) -> Path:
    return cache_root() / "teachers" / teacher_key(definition)


def teacher_for(
    cfg: Any,
    data: Any,
    device: torch.device,
    loss: str,
    given: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Teacher:
    """The teacher of trial config ``cfg`` on ``device``: ``given[key]`` (weights the study's
    driver trained and shipped through Ray's object store, so that trials on other nodes need
    no copy of its cache), else from the cache, else trained on ``data`` (the trial's, already
    loaded) under a lock so that it is trained once."""
    from filelock import FileLock

    definition = teacher_definition(cfg, loss)
    key = teacher_key(definition)
    with torch.random.fork_rng(devices=[]):
        model = _build(cfg, definition, data).to(device)
    if given is not None and key in given:
        model.load_state_dict({k: v.to(device) for k, v in given[key].items()})
        return Teacher(model.eval(), {"key": key, "config": definition}, trained=False)
    folder = teacher_dir(definition)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the caller's random streams are left as they were, whether the teacher trains or loads
    with torch.random.fork_rng(devices=[]), FileLock(str(folder) + ".lock"):
        weights = folder / "teacher.safetensors"
        if weights.is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(weights), device=str(device)))
            meta = json.loads((folder / "meta.json").read_text())
            return Teacher(model.eval(), meta, trained=False)
        meta = _train(model, cfg, definition, data, loss)
        _save(folder, model, meta)
    return Teacher(model.eval(), meta, trained=True)


def _build(cfg: Any, definition: dict[str, Any], data: Any) -> nn.Module:
    from prunetune.search.trial import build_trial_model, parse_config

    tcfg = parse_config(
        {
            "dataset": cfg.dataset if isinstance(cfg.dataset, str) else cfg.dataset.model_dump(),
            "model": definition["model"],
            "method": {"name": "none"},
            "train": {"seed": TEACHER_SEED},
        }
    )
    return build_trial_model(tcfg, data)


def _train(
    model: nn.Module, cfg: Any, definition: dict[str, Any], data: Any, loss: str
) -> dict[str, Any]:
    from prunetune.prune import (
        Topology,
        TrainConfig,
        evaluate_batches,
        make_method,
        train,
    )

    tcfg = TrainConfig(
        epochs=definition["epochs"],
        batch_size=definition["batch_size"],
        lr=definition["lr"],
        optimizer=definition["optimizer"],
        seed=definition["seed"],
        loss=loss,
    )
    batches = None
    if definition["augment"]:
        from prunetune.datasets._augment import augment_batches

        aug = tuple(definition["augment"])

        def batches(g: torch.Generator) -> Any:
            return augment_batches(data.train_batches(tcfg.batch_size, g), aug, generator=g)

    method = make_method({"name": "none"})
    topology = Topology.build(model, data.example(2))
    result = train(model, method, data, tcfg, batches=batches, topology=topology)
    key = "accuracy" if loss == "cross_entropy" else "loss"
    return {
        "key": teacher_key(definition),
        f"val_{key}": evaluate_batches(model, data.eval_batches("val"), loss=loss),
        f"test_{key}": evaluate_batches(model, data.eval_batches("test"), loss=loss),
        "params": topology.dense,
        "seconds": result.seconds,
        "config": definition,
    }


def _save(folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".teacher.{os.getpid()}.part"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2, default=float) + "\n")
    os.replace(tmp, folder / "teacher.safetensors")  # last: its presence means complete
    line = json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    with open(folder / "trainings.log", "a") as f:
        f.write(line + "\n")
