"""download_mnist against file:// mirrors: checksums, atomicity, caching, offline errors.

There is no network at test time; every "mirror" is a directory of fake IDX files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from prunetune.datasets import (
    MNIST_SHA256,
    DownloadError,
    default_cache_dir,
    download_mnist,
    file_sha256,
    load_dataset,
)

GZ_NAMES = sorted(MNIST_SHA256)


@pytest.fixture
def mirror(tmp_path: Path, make_idx_dataset: Callable[..., dict]) -> tuple[str, dict[str, str]]:
    """A file:// mirror of fake MNIST files and their real SHA-256 digests."""
    src = tmp_path / "mirror"
    make_idx_dataset(src, n_train=36, n_test=12)
    sums = {name: hashlib.sha256((src / name).read_bytes()).hexdigest() for name in GZ_NAMES}
    return src.as_uri(), sums


def test_known_mnist_checksums_are_sha256_of_the_four_files() -> None:
    assert GZ_NAMES == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in MNIST_SHA256.values())
    # Spot-check one value against TensorFlow Datasets' url_checksums/mnist.txt.
    assert MNIST_SHA256["t10k-labels-idx1-ubyte.gz"].startswith("f7ae60f92e00ec6d")


def test_download_verifies_and_loads(tmp_path: Path, mirror: tuple[str, dict[str, str]]) -> None:
    base_url, sums = mirror
    dest = download_mnist(tmp_path / "cache", base_url=base_url, checksums=sums)
    assert dest == tmp_path / "cache"
    assert sorted(p.name for p in dest.iterdir()) == GZ_NAMES  # no leftover temp files
    for name in GZ_NAMES:
        assert (dest / name).read_bytes() == (tmp_path / "mirror" / name).read_bytes()
        assert file_sha256(dest / name) == sums[name]
    assert load_dataset("mnist", data_dir=dest).sizes == {"train": 33, "val": 3, "test": 12}


def test_default_destination_is_where_load_dataset_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: tuple[str, dict[str, str]]
) -> None:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "pt-cache"))
    base_url, sums = mirror
    dest = download_mnist(base_url=base_url, checksums=sums)
    assert dest == default_cache_dir() / "mnist" == tmp_path / "pt-cache" / "mnist"
    assert load_dataset("mnist").num_test == 12


def test_wrong_checksum_raises_and_leaves_no_file(
    tmp_path: Path, mirror: tuple[str, dict[str, str]]
) -> None:
    base_url, sums = mirror
    bad = dict(sums, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    dest = tmp_path / "cache"
    with pytest.raises(
        ValueError,
        match=rf"SHA-256 mismatch for train-labels-idx1-ubyte\.gz.*expected 0{{64}}, got "
        rf"{sums['train-labels-idx1-ubyte.gz']}",
    ):
        download_mnist(dest, base_url=base_url, checksums=bad)
    assert not (dest / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]


def test_offline_error_says_where_to_put_files(tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    url = (tmp_path / "no-such-mirror").as_uri()
    with pytest.raises(
        DownloadError, match=r"(?s)Could not download .*offline.*copy them into"
    ) as info:
        download_mnist(dest, base_url=url)
    assert str(dest) in str(info.value)
    assert "--data-dir" in str(info.value)
    assert isinstance(info.value, OSError)
    assert list(dest.iterdir()) == []


def test_verified_files_are_not_fetched_again(
    tmp_path: Path, mirror: tuple[str, dict[str, str]]
) -> None:
    base_url, sums = mirror
    dest = download_mnist(tmp_path / "cache", base_url=base_url, checksums=sums)
    # Every file is present and verified, so an unreachable mirror is never contacted.
    unreachable = (tmp_path / "gone").as_uri()
    assert download_mnist(dest, base_url=unreachable, checksums=sums) == dest


def test_corrupted_cached_file_is_replaced(
    tmp_path: Path, mirror: tuple[str, dict[str, str]]
) -> None:
    base_url, sums = mirror
    dest = download_mnist(tmp_path / "cache", base_url=base_url, checksums=sums)
    (dest / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    download_mnist(dest, base_url=base_url, checksums=sums)
    assert file_sha256(dest / "t10k-images-idx3-ubyte.gz") == sums["t10k-images-idx3-ubyte.gz"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://example.org/mnist/"}, r"'base_url'.*schemes.*ftp://example\.org"),
        ({"timeout": 0}, r"'timeout'.*> 0, but got 0"),
        ({"checksums": {"train-images-idx3-ubyte.gz": "0" * 64}}, r"'checksums'.*exactly the keys"),
        (
            {"checksums": dict.fromkeys(MNIST_SHA256, "abc")},
            r"'checksums'.*64-character hex.*'abc'",
        ),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        download_mnist(tmp_path / "cache", **kwargs)
