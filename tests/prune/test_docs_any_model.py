"""The runnable example of docs/any-model.md runs and keeps its promises."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "any-model.md"


def test_the_any_model_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    torch.set_num_threads(1)
    scope: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)  # the asserts inside must hold
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "['conv1', 'conv2', 'conv3', 'fc']"
    assert out[1] == "[('conv1', 16), ('conv2', 32)]"
    assert out[2] == "{'fc': \"its channels are the model's output\"}"
    ex = scope["ex"]
    assert ex.params < ex.params_dense
    assert (ex.model.conv1.out_channels, ex.model.conv2.out_channels) == (8, 16)  # half of each
