"""``prunetune data download``: invoked on the sub-app itself, against local mirrors only."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prunetune.search.cli_data import DOWNLOADABLE, app

BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PRUNETUNE_DATA", raising=False)
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "pt-cache"))


def _archive(path: Path, n: int = 10) -> str:
    """A miniature cifar-10-python.tar.gz (n images per batch file); returns its SHA-256."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in (*BATCH_FILES, "batches.meta"):
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [b"x.png"] * n,
            }
            payload = pickle.dumps(batch, protocol=2)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_name_exits_2_listing_the_known_ones() -> None:
    result = CliRunner().invoke(app, ["data", "download", "imagenet"])
    assert result.exit_code == 2
    assert "must be one of cifar10, mnist, but got 'imagenet'" in result.output
    assert DOWNLOADABLE == ("cifar10", "mnist")


def test_cifar10_download_prints_a_folder_that_loads(tmp_path: Path) -> None:
    from prunetune.datasets import load_dataset

    archive = tmp_path / "cifar-10-python.tar.gz"
    sha = _archive(archive)
    args = ["data", "download", "cifar10", "--url", archive.as_uri(), "--sha256", sha]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "c" / "cifar-10-batches-py"
    assert result.stdout.strip() == str(folder)
    assert load_dataset("cifar10", data_dir=folder).sizes == {"train": 45, "val": 5, "test": 10}

    # Without --cache-dir: the default cache, where load_dataset looks by itself.
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "pt-cache" / "cifar10" / "cifar-10-batches-py")
    assert load_dataset("cifar10").num_test == 10


def test_checksum_mismatch_exits_1(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    sha = _archive(archive)
    result = CliRunner().invoke(app, ["data", "download", "cifar10", "--url", archive.as_uri()])
    assert result.exit_code == 1
    assert "SHA-256 mismatch" in result.output and sha in result.output


def test_offline_mnist_exits_1_saying_where_to_copy_files(tmp_path: Path) -> None:
    url = (tmp_path / "no-mirror").as_uri()
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--url", url])
    assert result.exit_code == 1
    assert "Could not download" in result.output and "copy them into" in result.output


def test_sha256_is_for_cifar10_only() -> None:
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--sha256", "0" * 64])
    assert result.exit_code == 2
    assert "--sha256 applies to cifar10 only" in result.output
