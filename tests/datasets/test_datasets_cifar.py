"""cifar10: reading generated batch folders in the real format, the restricted unpickler, where
folders are found, and download_cifar10 against file:// and 127.0.0.1 mirrors (no network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.datasets import (
    CIFAR10_SHA256,
    CIFAR10_URL,
    DownloadError,
    dataset_info,
    default_cache_dir,
    download_cifar10,
    load_dataset,
)

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
BATCH_FILES = (*TRAIN_FILES, "test_batch")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
Written = dict[str, tuple[np.ndarray, list[int]]]


def write_batch(path: Path, data: object, labels: object, label: bytes = b"batch") -> None:
    """One batch file as in ``cifar-10-python.tar.gz``: a protocol-2 pickle of a dict with bytes
    keys, ``b"data"`` uint8 ``(n, 3072)`` (the R, G, B planes of each image, each row-major)."""
    n = len(labels)  # type: ignore[arg-type]
    batch = {
        b"batch_label": label,
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def make_folder(
    directory: Path, *, n_per_batch: int = 24, n_test: int = 12, seed: int = 0, meta: bool = True
) -> Written:
    """A miniature ``cifar-10-batches-py``; returns ``{file: (data, labels)}`` as written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written: Written = {}
    for name in BATCH_FILES:
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        write_batch(directory / name, data, labels, name.encode())
        written[name] = (data, labels)
    if meta:
        info = {b"num_cases_per_batch": n_per_batch, b"label_names": [c.encode() for c in CLASSES]}
        (directory / "batches.meta").write_bytes(pickle.dumps(info, protocol=2))
    return written


def train_arrays(written: Written) -> tuple[np.ndarray, np.ndarray]:
    data = np.concatenate([written[name][0] for name in TRAIN_FILES])
    labels = np.concatenate([written[name][1] for name in TRAIN_FILES]).astype(np.int64)
    return data, labels


# --- the registry entry and the loader -----------------------------------------------------------


def test_info() -> None:
    info = dataset_info("cifar10")
    assert (info.task, info.input_shape, info.num_outputs) == ("classification", (3, 32, 32), 10)
    assert info.classes == CLASSES


@pytest.mark.parametrize("seed", [0, 7])
def test_sizes_labels_and_standardised_pixels(tmp_path: Path, seed: int) -> None:
    written = make_folder(tmp_path, n_per_batch=24, n_test=12)
    s = load_dataset("cifar10", data_dir=tmp_path, split_seed=seed)
    assert s.sizes == {"train": 108, "val": 12, "test": 12}  # 120 training images, 1/10 val
    assert s.x_train.shape == (108, 3, 32, 32) and s.x_test.shape == (12, 3, 32, 32)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64

    # An independent computation of the carve and the standardisation.
    data, labels = train_arrays(written)
    perm = np.random.default_rng(seed).permutation(120)
    val_idx, train_idx = np.sort(perm[:12]), np.sort(perm[12:])
    pixels = data[train_idx].astype(np.float64) / 255
    assert s.mean == pytest.approx(pixels.mean(), rel=1e-12)
    assert s.std == pytest.approx(pixels.std(), rel=1e-12)
    raw = int(data[train_idx[0], 0])  # red, row 0, column 0 of the first training image
    assert s.x_train[0, 0, 0, 0].item() == pytest.approx((raw / 255 - s.mean) / s.std, rel=1e-6)

    def expected(rows: np.ndarray) -> torch.Tensor:  # (n, 3072) -> (n, 3, 32, 32), CHW
        return torch.from_numpy(((rows / 255 - s.mean) / s.std).reshape(-1, 3, 32, 32))

    torch.testing.assert_close(s.x_train, expected(data[train_idx]), check_dtype=False)
    torch.testing.assert_close(s.x_val, expected(data[val_idx]), check_dtype=False)
    test_data, test_labels = written["test_batch"]
    torch.testing.assert_close(s.x_test, expected(test_data), check_dtype=False)
    assert s.y_train.tolist() == labels[train_idx].tolist()
    assert s.y_val.tolist() == labels[val_idx].tolist()
    assert s.y_test.tolist() == test_labels  # file order


def test_channel_layout_is_chw(tmp_path: Path) -> None:
    make_folder(tmp_path)
    data = np.zeros((24, 3072), dtype=np.uint8)
    data[:, :1024] = 10  # red plane
    data[:, 1024:2048] = 20  # green
    data[:, 2048 + 32 * 5 + 7] = 250  # blue, row 5, column 7
    write_batch(tmp_path / "test_batch", data, [1] * 24)
    s = load_dataset("cifar10", data_dir=tmp_path)
    raw = torch.round((s.x_test * s.std + s.mean) * 255).to(torch.uint8)  # back to bytes
    assert (raw[:, 0] == 10).all() and (raw[:, 1] == 20).all()
    blue = torch.zeros(32, 32, dtype=torch.uint8)
    blue[5, 7] = 250
    assert torch.equal(raw[:, 2], blue.expand(24, 32, 32))


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    make_folder(tmp_path)
    a, b = (load_dataset("cifar10", data_dir=tmp_path, split_seed=3) for _ in range(2))
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    c = load_dataset("cifar10", data_dir=tmp_path, split_seed=4)
    assert not torch.equal(a.y_val, c.y_val)
    assert torch.equal(a.y_test, c.y_test)  # the test split is the file, in order


def test_any_batch_size_and_no_meta(tmp_path: Path) -> None:
    make_folder(tmp_path, n_per_batch=3, n_test=5, meta=False)
    assert load_dataset("cifar10", data_dir=tmp_path).sizes == {"train": 14, "val": 1, "test": 5}


def test_too_few_training_images(tmp_path: Path) -> None:
    make_folder(tmp_path, n_per_batch=1)
    with pytest.raises(ValueError, match=r"at least 10 images together.*but got 5"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- where folders are found ----------------------------------------------------------------


def test_data_dir_may_be_the_folder_or_hold_it(tmp_path: Path) -> None:
    make_folder(tmp_path / "cifar-10-batches-py", n_test=7)
    assert load_dataset("cifar10", data_dir=tmp_path).num_test == 7
    assert load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py").num_test == 7


def test_prunetune_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "env" / "cifar10" / "cifar-10-batches-py", n_test=9)
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "env"))
    assert load_dataset("cifar10").num_test == 9


def test_download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    make_folder(default_cache_dir() / "cifar10" / "cifar-10-batches-py", n_test=6)
    assert load_dataset("cifar10").num_test == 6


def test_missing_file_lists_every_searched_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    partial = tmp_path / "partial"
    make_folder(partial)
    (partial / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", data_dir=partial)
    message = str(info.value)
    searched = [
        partial,
        partial / "cifar-10-batches-py",
        partial / "cifar10",
        partial / "cifar10" / "cifar-10-batches-py",
        tmp_path / "env" / "cifar10",
        tmp_path / "env" / "cifar10" / "cifar-10-batches-py",
        tmp_path / "env",
        tmp_path / "env" / "cifar-10-batches-py",
        tmp_path / "cache" / "cifar10",
        tmp_path / "cache" / "cifar10" / "cifar-10-batches-py",
    ]
    positions = [message.index(f"  - {p}  (") for p in searched]
    assert positions == sorted(positions)  # listed in search order
    assert f"  - {partial}  (missing: data_batch_3)" in message
    assert f"  - {tmp_path / 'env'}  (no such directory)" in message
    for name in BATCH_FILES:
        assert f"\n  {name}\n" in message + "\n"
    assert "prunetune data download cifar10" in message
    assert str(tmp_path / "cache" / "cifar10" / "cifar-10-batches-py") in message
    assert "--data-dir" in message and "$PRUNETUNE_DATA" in message


# --- malformed and malicious files ------------------------------------------------------------


class _Exploit:
    """Pickles to a call of ``os.system``: unpickling it with plain pickle runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["top", "labels"])
def test_a_pickle_naming_os_system_is_refused(tmp_path: Path, where: str) -> None:
    make_folder(tmp_path)
    proof = tmp_path / "pwned"
    exploit = _Exploit(f"touch {proof}")
    path = tmp_path / "data_batch_2"
    if where == "top":
        path.write_bytes(pickle.dumps(exploit, protocol=2))
    else:  # hidden inside an otherwise valid batch
        write_batch(path, np.zeros((2, 3072), np.uint8), [0, exploit])
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(path))}.*refusing the global (posix|nt|os)\.system: a CIFAR-10 "
        r"batch only needs .*numpy\.ndarray",
    ):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not proof.exists()


def test_builtins_are_refused_too(tmp_path: Path) -> None:
    make_folder(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # protocol 0: eval("1+1")
    with pytest.raises(ValueError, match=r"refusing the global builtins\.eval"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("data", "labels", "match"),
    [
        (
            np.zeros((4, 3000), np.uint8),
            [0] * 4,
            r"b'data' must be a uint8 array \(n, 3072\).*"
            r"dtype uint8 with shape \(4, 3000\)",
        ),
        (np.zeros((4, 3072), np.float32), [0] * 4, r"b'data' must be a uint8.*dtype float32"),
        (np.zeros((4, 3072), np.uint8), [0] * 3, r"one int per row of b'data' \(4\).*3 value"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], r"must lie in \[0, 10\).*max=10"),
        (np.zeros((4, 3072), np.uint8), [0, -1, 2, 3], r"must lie in \[0, 10\).*min=-1"),
        (np.zeros((4, 3072), np.uint8), [[1], [1, 2], 0, 0], r"one int per row.*dtype object"),
        (np.zeros((4, 3072), np.uint8), [0.5] * 4, r"one int per row.*dtype float64"),
    ],
)
def test_malformed_batch_names_the_file(
    tmp_path: Path, data: np.ndarray, labels: list[int], match: str
) -> None:
    make_folder(tmp_path)
    write_batch(tmp_path / "data_batch_4", data, labels)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "data_batch_4")) + ".*" + match):
        load_dataset("cifar10", data_dir=tmp_path)


def test_truncated_and_non_dict_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"data_batch_1'? is not a readable CIFAR-10 batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match=r"must hold a dict with the keys b'data' and b'labels'"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_of_a_numpy_batch_loads(tmp_path: Path, protocol: int) -> None:
    written = make_folder(tmp_path)
    data, labels = written["test_batch"]
    batch = {b"labels": labels, b"data": data}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    s = load_dataset("cifar10", data_dir=tmp_path)
    assert s.y_test.tolist() == labels


# --- download_cifar10 -------------------------------------------------------------------------


def make_archive(path: Path, folder: Path, *, extra: dict[str, bytes] | None = None) -> str:
    """``cifar-10-python.tar.gz`` of ``folder`` (members under ``cifar-10-batches-py/``, plus
    ``extra`` members by name); returns its SHA-256."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=f"cifar-10-batches-py/{file.name}")
        for name, payload in (extra or {}).items():
            member = tarfile.TarInfo(name)
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[Path, str]:
    """A miniature CIFAR-10 archive with hostile extra members, and its SHA-256."""
    make_folder(tmp_path / "src")
    (tmp_path / "src" / "readme.html").write_text("<html></html>")
    extra = {
        "../escaped": b"outside",
        "/tmp/prunetune-test-absolute": b"outside",
        "cifar-10-batches-py/../../escaped2": b"outside",
    }
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    return archive, make_archive(archive, tmp_path / "src", extra=extra)


def _assert_same(a: Path, b: Path) -> None:
    x, y = load_dataset("cifar10", data_dir=a), load_dataset("cifar10", data_dir=b)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(x, field), getattr(y, field)), field


def test_known_checksum() -> None:
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    # Keras' keras/src/datasets/cifar10.py passes this digest to get_file.
    assert CIFAR10_SHA256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


def test_download_extracts_only_the_batch_files_and_loads(
    tmp_path: Path, mirror: tuple[Path, str]
) -> None:
    archive, sha = mirror
    folder = download_cifar10(tmp_path / "cache", url=archive.as_uri(), sha256=sha)
    assert folder == tmp_path / "cache" / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*BATCH_FILES, "batches.meta", ".archive-sha256"]
    )
    assert sorted(p.name for p in folder.parent.iterdir()) == ["cifar-10-batches-py"]  # no archive
    for name in (*BATCH_FILES, "batches.meta"):
        assert (folder / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cache" / "escaped").exists()
    assert not (tmp_path / "escaped2").exists()
    assert not Path("/tmp/prunetune-test-absolute").exists()
    _assert_same(tmp_path / "cache", tmp_path / "src")
    _assert_same(folder, tmp_path / "src")


def test_default_destination_is_where_load_dataset_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: tuple[Path, str]
) -> None:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "pt-cache"))
    archive, sha = mirror
    folder = download_cifar10(url=archive.as_uri(), sha256=sha)
    assert folder == tmp_path / "pt-cache" / "cifar10" / "cifar-10-batches-py"
    assert load_dataset("cifar10").num_test == 12


def test_wrong_checksum_raises_and_saves_nothing(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    archive, sha = mirror
    dest = tmp_path / "cache"
    url = re.escape(archive.as_uri())
    with pytest.raises(
        ValueError,
        match=rf"SHA-256 mismatch for cifar-10-python\.tar\.gz downloaded from {url}: expected "
        rf"0{{64}}, got {sha}",
    ):
        download_cifar10(dest, url=archive.as_uri(), sha256="0" * 64)
    assert list(dest.iterdir()) == []  # no folder, archive or temp file


def test_the_real_checksum_refuses_a_fake_archive(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    archive, sha = mirror
    with pytest.raises(ValueError, match=rf"expected {CIFAR10_SHA256}, got {sha}"):
        download_cifar10(tmp_path / "cache", url=archive.as_uri())


def test_extracted_folder_is_not_fetched_again(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    archive, sha = mirror
    folder = download_cifar10(tmp_path / "cache", url=archive.as_uri(), sha256=sha)
    gone = (tmp_path / "gone.tar.gz").as_uri()  # never contacted
    assert download_cifar10(tmp_path / "cache", url=gone, sha256=sha) == folder
    (folder / "test_batch").unlink()  # incomplete: fetched again, and fails offline
    with pytest.raises(DownloadError):
        download_cifar10(tmp_path / "cache", url=gone, sha256=sha)


def test_an_archive_copied_by_hand_is_unpacked_offline(
    tmp_path: Path, mirror: tuple[Path, str]
) -> None:
    archive, sha = mirror
    dest = tmp_path / "cache"
    dest.mkdir()
    shutil.copy(archive, dest / "cifar-10-python.tar.gz")
    gone = (tmp_path / "gone.tar.gz").as_uri()
    folder = download_cifar10(dest, url=gone, sha256=sha)
    assert (dest / "cifar-10-python.tar.gz").is_file()  # left where the user put it
    _assert_same(folder, tmp_path / "src")


def test_offline_error_says_where_to_put_the_archive(tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    url = (tmp_path / "no-such-mirror" / "cifar-10-python.tar.gz").as_uri()
    with pytest.raises(DownloadError, match=r"(?s)Could not download .*offline.*copy it") as info:
        download_cifar10(dest, url=url)
    assert str(dest) in str(info.value) and "--data-dir" in str(info.value)
    assert list(dest.iterdir()) == []


def test_archive_without_a_batch_file(tmp_path: Path) -> None:
    make_folder(tmp_path / "src")
    (tmp_path / "src" / "data_batch_5").unlink()
    archive = tmp_path / "cifar-10-python.tar.gz"
    sha = make_archive(archive, tmp_path / "src")
    with pytest.raises(ValueError, match=r"lacks \['cifar-10-batches-py/data_batch_5'\]"):
        download_cifar10(tmp_path / "cache", url=archive.as_uri(), sha256=sha)


@pytest.fixture
def http_mirror(mirror: tuple[Path, str]) -> Iterator[tuple[str, str]]:
    """``mirror`` served over HTTP on 127.0.0.1 (an ephemeral port)."""
    archive, sha = mirror

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", sha
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_http(tmp_path: Path, http_mirror: tuple[str, str]) -> None:
    url, sha = http_mirror
    folder = download_cifar10(tmp_path / "cache", url=url, sha256=sha)
    _assert_same(folder, tmp_path / "src")
    with pytest.raises(DownloadError, match=r"\.missing: File not found"):
        download_cifar10(tmp_path / "other", url=url + ".missing", sha256=sha)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://example.org/c.tar.gz"}, r"'url'.*schemes.*ftp://example\.org"),
        ({"sha256": "abc"}, r"'sha256'.*64-character hex.*'abc'"),
        ({"timeout": 0}, r"'timeout'.*> 0, but got 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        download_cifar10(tmp_path / "cache", **kwargs)


def test_numpy_1_module_path_of_the_real_files_loads(tmp_path: Path) -> None:
    # The real files (Python 2, numpy 1) name numpy.core.multiarray._reconstruct.
    written = make_folder(tmp_path)
    path = tmp_path / "test_batch"
    raw = path.read_bytes()
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw  # protocol 2's GLOBAL opcode
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_dataset("cifar10", data_dir=tmp_path).y_test.tolist() == written["test_batch"][1]
