"""The install: the package layout and the CPU-only torch where no GPU is present."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

import torch


def test_packages_install_under_prunetune():
    import prunetune.datasets
    import prunetune.models
    import prunetune.prune
    import prunetune.search

    for mod in (prunetune.search, prunetune.models, prunetune.prune, prunetune.datasets):
        assert mod.__name__.startswith("prunetune.")


def test_cpu_torch_build_pulls_no_cuda_packages():
    if torch.version.cuda is not None:
        return  # a CUDA build legitimately brings nvidia-* packages
    nvidia = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if d.metadata["Name"].lower().startswith("nvidia-")
    )
    assert nvidia == [], nvidia
    assert md.version("torch").startswith("2.13.0")


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "prunetune.search.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    for cmd in ("search", "train", "methods", "pareto", "register", "fetch", "models", "ui"):
        assert cmd in out.stdout
