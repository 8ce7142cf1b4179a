"""`prunetune ui` serves the study store; headless Chromium shows the parent run's Pareto plot.

Slow (MLflow server start-up plus a browser). Skipped when Chromium is not installed
(Debian: ``apt-get install -y chromium``). Only loopback traffic.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STUDY = "ui-study"
TAB_BLUE = (31, 119, 180)  # matplotlib's tab:blue: the Pareto front markers in pareto_front.png


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_study) -> str:
    configs = [
        {
            "dataset": "digits",
            "model": {"widths": [w]},
            "train": {"epochs": 2, "lr": 0.02, "batch_size": 64},
            "method": {"name": "gumbel", "lam": lam},
        }
        for w, lam in [(8, 0.1), (16, 1.0), (32, 5.0)]
    ]
    spec = {"name": STUDY, "dataset": "digits"}
    return make_study(tmp_path_factory.mktemp("ui"), STUDY, spec, configs)["uri"]


@pytest.fixture
def ui_url(store, tmp_path):
    """`prunetune ui STUDY` running; yields the parent run URL it printed."""
    exe = Path(sys.executable).with_name("prunetune")
    out = tmp_path / "ui.out"
    cmd = [str(exe), "ui", STUDY, "--tracking-uri", store, "--port", str(_free_port())]
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(
                r"MLflow UI: (http://127\.0\.0\.1:\d+/\S+)", out.read_text(errors="replace")
            )
            url = m.group(1) if m else time.sleep(0.5)
        assert url is not None, out.read_text(errors="replace")[-3000:]
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `prunetune ui` stops its server on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # nothing of ours is left listening
        port = int(re.search(r":(\d+)/", url or ":0/").group(1)) if url else None
        if port:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_ui_shows_parent_run_with_pareto_plot(ui_url, tmp_path):
    from PIL import Image

    assert re.search(r"/#/experiments/\d+/runs/[0-9a-f]{32}$", ui_url)
    shot = tmp_path / "parent-run.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
        "--virtual-time-budget=30000",
        f"--screenshot={shot}",
        f"{ui_url}/artifacts/pareto_front.png",
    ]
    subprocess.run(cmd, check=False, capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (1000, 1400, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # a rendered page, not a blank one
    # the Pareto front markers of pareto_front.png are on screen
    assert int((img == TAB_BLUE).all(axis=2).sum()) >= 20
    print(f"screenshot: {shot}")
