"""IDX reader/writer: round trips, exact header bytes, and errors on corrupt files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from prunetune.datasets import read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8),
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10,
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=["labels", "images", "empty-images"],
)
def test_round_trip(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"data-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 7  # writable, not a view of immutable bytes
    assert list(tmp_path.iterdir()) == [path]  # no temp file left by the atomic write


def test_header_bytes_are_the_idx_layout(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"
    write_idx(tmp_path / "images", np.full((2, 1, 3), 255, dtype=np.uint8))
    assert (tmp_path / "images").read_bytes() == (
        b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x03" + b"\xff" * 6
    )


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"


def test_write_casts_integer_arrays_in_range(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.array([0, 128, 255], dtype=np.int64))
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), [0, 128, 255])


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 2), dtype=np.uint8), r"1 \(labels\) or 3 \(images\) dimensions.*\(2, 2\)"),
        (np.zeros(3, dtype=np.float32), "integer dtype, but got float32"),
        (np.array([0, 256]), r"\[0, 255\], but got min=0, max=256"),
        (np.array([-1, 3]), r"\[0, 255\], but got min=-1, max=3"),
    ],
)
def test_write_rejects_bad_arrays(tmp_path: Path, array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_idx(tmp_path / "x", array)
    assert not (tmp_path / "x").exists()


def test_corrupt_magic_names_path_and_values(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")  # dtype 0x0D = float, unsupported
    with pytest.raises(ValueError, match=r"bad-idx1-ubyte.*0x00000801, 0x00000803.*0x00000D01"):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00")  # 3-D needs 16 header bytes
    with pytest.raises(ValueError, match=r"short.*truncated header.*needs 16 bytes, found 10"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"short.*at least 4 bytes.*found 2"):
        read_idx(path)


@pytest.mark.parametrize(("cut", "found"), [(-2, 22), (+3, 27)])
def test_payload_size_mismatch(tmp_path: Path, cut: int, found: int) -> None:
    path = tmp_path / "images"
    write_idx(path, np.ones((2, 3, 4), dtype=np.uint8))  # 16 header + 24 payload bytes
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut < 0 else data + b"\x00" * cut)
    with pytest.raises(
        ValueError, match=rf"images.*\(2, 3, 4\) need 24 payload bytes, found {found}"
    ):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, np.arange(240, dtype=np.uint8).reshape(2, 12, 10))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"images\.gz.*not a valid gzip file"):
        read_idx(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing.gz")
