"""CIFAR-10's python version: reading ``cifar-10-batches-py`` safely, and downloading it.

The batch files are Python pickles, and unpickling runs whatever callables a file names. They
are therefore read with :class:`_BatchUnpickler`, which resolves only the few numpy and codec
globals a CIFAR-10 batch is made of and refuses every other one.
"""

from __future__ import annotations

import http.client
import logging
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from prunetune._cache import write_atomic
from prunetune.datasets._download import (
    _SCHEMES,
    DownloadError,
    _fetch,
    default_cache_dir,
    file_sha256,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILES",
    "CIFAR10_FOLDER",
    "CIFAR10_SHA256",
    "CIFAR10_URL",
    "cifar10_files_in",
    "download_cifar10",
    "read_cifar10",
]

_log = logging.getLogger(__name__)

#: Label order of ``batches.meta``'s ``label_names``.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The folder the archive unpacks to, and the name the loader also looks for.
CIFAR10_FOLDER = "cifar-10-batches-py"

#: The batch files a CIFAR-10 folder must hold: five training batches, then the test batch.
CIFAR10_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")

# Also extracted by download_cifar10 (it holds the class names), but never needed to load.
_META_FILE = "batches.meta"

#: The python version of CIFAR-10 on its authors' site (Krizhevsky, 2009).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_ARCHIVE = "cifar-10-python.tar.gz"

#: SHA-256 of ``cifar-10-python.tar.gz`` (170,498,071 bytes). Source: Keras,
#: ``keras/src/datasets/cifar10.py`` (keras-team/keras commit ac2ee342), passed as ``file_hash``
#: to ``get_file``; the same digest is in TensorFlow's ``tensorflow/python/keras/datasets/
#: cifar10.py`` (commit 6fca0304). torchvision checks the same file's MD5,
#: c58f30108f718f92721af3b95e74349a.
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE  # one row of b"data": the R, G, B planes, each row-major
_NUM_CLASSES = len(CIFAR10_CLASSES)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Written into the folder after every batch file: the digest of the archive they came from.
_MARKER = ".archive-sha256"

# Every global a CIFAR-10 batch pickle needs: numpy's array reconstruction (module paths of
# numpy 1 and 2, pickle protocols 0-5) and, in pickles of protocol <= 2 written by Python 3,
# ``_codecs.encode`` for bytes objects.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS`: a file naming anything else
    (``os.system``, ``builtins.eval``…) is refused before that global is even imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS))
            raise pickle.UnpicklingError(
                f"refusing the global {module}.{name}: a CIFAR-10 batch only needs {allowed}. "
                f"The file is not a CIFAR-10 batch, or it was tampered with."
            )
        return super().find_class(module, name)


def _unpickle(f: BinaryIO) -> Any:
    # encoding="bytes": the files were written by Python 2, whose str keys and pixel buffers
    # must stay bytes (latin-1 would also work for the keys, but not the numpy buffers).
    return _BatchUnpickler(f, encoding="bytes").load()


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as ``(x, y)``: uint8 ``(n, 3, 32, 32)`` and int64 ``(n,)``."""
    where = f"cifar10: {str(path)!r}"
    try:
        with open(path, "rb") as f:
            batch = _unpickle(f)
    except OSError:
        raise
    except Exception as exc:  # any failure to parse untrusted bytes means the same thing
        raise ValueError(f"{where} is not a readable CIFAR-10 batch pickle: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{where} must hold a dict with the keys b'data' and b'labels', but got {keys}."
        )
    data, labels = batch[b"data"], batch[b"labels"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _PIXELS
    ):
        got = (
            f"dtype {data.dtype} with shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(f"{where}: b'data' must be a uint8 array (n, {_PIXELS}), but got {got}.")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):  # ragged nested lists
        y = np.asarray(labels, dtype=object)
    if (
        y.ndim != 1
        or len(y) != len(data)
        or not (y.size == 0 or np.issubdtype(y.dtype, np.integer))
    ):
        raise ValueError(
            f"{where}: b'labels' must hold one int per row of b'data' ({len(data)}), but got "
            f"{y.size} value(s) of dtype {y.dtype} with shape {y.shape}."
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) >= _NUM_CLASSES):
        raise ValueError(
            f"{where}: b'labels' must lie in [0, {_NUM_CLASSES}), but got min={int(y.min())}, "
            f"max={int(y.max())}."
        )
    return data.reshape(len(data), 3, _SIDE, _SIDE), y.astype(np.int64)


def cifar10_files_in(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Maps each of :data:`CIFAR10_FILES` to its file in ``directory``; and the missing ones."""
    found = {name: directory / name for name in CIFAR10_FILES if (directory / name).is_file()}
    return found, [name for name in CIFAR10_FILES if name not in found]


def read_cifar10(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads located batch files (see :func:`cifar10_files_in`) in file order.

    Any number of images per file is accepted, so that tests can use miniature folders.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``(n, 3, 32, 32)`` images of
        ``data_batch_1..5`` concatenated and of ``test_batch``, with int64 labels.

    Raises:
        ValueError: If a file is not a well-formed CIFAR-10 batch, or names a global a batch
            never needs; the message names the file.
    """
    train = [_read_batch(files[name]) for name in CIFAR10_FILES[:-1]]
    x_test, y_test = _read_batch(files[CIFAR10_FILES[-1]])
    x_train = np.concatenate([x for x, _ in train])  # (50000, 3, 32, 32) for the real files
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _extract(archive: Path, folder: Path) -> None:
    """Writes the batch files of ``archive`` into ``folder``, each atomically.

    Only the expected members are read, and each is written under a name this function
    chooses, so no member name (``../``, absolute paths, links) can place a file elsewhere.
    """
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in (*CIFAR10_FILES, _META_FILE)}
    written: set[str] = set()
    try:
        # One sequential pass: seeking back in a gzip stream would decompress it again.
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                if src is None:  # never for a regular file; reported as missing below
                    continue
                write_atomic(folder / name, src.read())
                written.add(name)
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"{archive} is not a readable .tar.gz archive: {exc}") from exc
    missing = [name for name in wanted.values() if name not in written]
    if missing:
        raise ValueError(
            f"{archive} must contain the regular files {sorted(wanted)}, but lacks "
            f"{[f'{CIFAR10_FOLDER}/{name}' for name in missing]}."
        )


def download_cifar10(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    url: str = CIFAR10_URL,
    sha256: str = CIFAR10_SHA256,
    timeout: float = 60.0,
) -> Path:
    """Downloads CIFAR-10's python version, verifies its SHA-256 and unpacks the batch files.

    The archive is streamed into a temporary file in ``cache_dir``, checked, and removed once
    its files are extracted into ``cache_dir / "cifar-10-batches-py"``; only the batch files
    and ``batches.meta`` are extracted, each written atomically. A folder already extracted
    from an archive with this digest is kept without touching the network, and a verified
    ``cifar-10-python.tar.gz`` placed in ``cache_dir`` by hand (for an offline machine) is
    unpacked instead of downloading (and left there).

    Args:
        cache_dir: Destination directory; default ``default_cache_dir() / "cifar10"``
            (``$PRUNETUNE_CACHE/cifar10`` or ``~/.cache/prunetune/cifar10``), where
            ``load_dataset("cifar10")`` looks.
        url: The archive's URL; ``http(s)://`` or ``file://``.
        sha256: The archive's expected SHA-256, default :data:`CIFAR10_SHA256`. Overriding
            is meant for tests and private mirrors.
        timeout: Seconds to wait on the connection, ``> 0``.

    Returns:
        The folder holding the batch files, ``cache_dir / "cifar-10-batches-py"``.

    Raises:
        ValueError: If an argument is invalid, the downloaded archive's SHA-256 differs from
            ``sha256`` (the message gives both; nothing is saved), or the archive lacks a
            batch file.
        DownloadError: If the archive cannot be fetched; the message says where to copy it by
            hand on an offline machine.

    Example:
        >>> folder = download_cifar10()  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
        ['batches.meta', 'data_batch_1', ..., 'test_batch']
    """
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(
            f"The 'url' parameter of download_cifar10 must use one of the schemes {_SCHEMES}, "
            f"but got {url!r}."
        )
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
        raise ValueError(
            f"The 'sha256' parameter of download_cifar10 must be a 64-character hex SHA-256, "
            f"but got {sha256!r}."
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(
            f"The 'timeout' parameter of download_cifar10 must be a number > 0, but got "
            f"{timeout!r}."
        )
    sha256 = sha256.lower()
    dest_dir = (
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "cifar10"
    )
    folder = dest_dir / CIFAR10_FOLDER
    marker = folder / _MARKER
    if (
        marker.is_file()
        and marker.read_text().strip() == sha256
        and not cifar10_files_in(folder)[1]
    ):
        _log.debug("%s already extracted from the verified archive", folder)
        return folder

    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / _ARCHIVE
    # An archive copied here by hand (offline machines) is used, and left in place.
    fetched = not (archive.is_file() and file_sha256(archive) == sha256)
    if fetched:
        _log.info("downloading %s -> %s", url, archive)
        try:
            _fetch(url, archive, sha256, timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"Could not download {url}: {reason}. If this machine is offline, fetch "
                f"{_ARCHIVE} on another machine (from {CIFAR10_URL}) and copy it into "
                f"{dest_dir}, then run this again; or unpack it yourself into any directory "
                f"you then pass as --data-dir / data_dir=..., or into $PRUNETUNE_DATA/cifar10."
            ) from exc
    _log.info("unpacking %s -> %s", archive, folder)
    try:
        _extract(archive, folder)
    finally:
        if fetched:  # the batch files are what load_dataset reads; 170 MB less on disk
            archive.unlink(missing_ok=True)
    write_atomic(marker, sha256 + "\n")
    return folder
