"""Downloading MNIST into the local cache, with SHA-256 verification and atomic writes."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from prunetune._cache import cache_root

__all__ = [
    "IDX_FILE_STEMS",
    "MNIST_BASE_URL",
    "MNIST_SHA256",
    "DownloadError",
    "default_cache_dir",
    "download_mnist",
    "file_sha256",
]

_log = logging.getLogger(__name__)

#: The four files of an MNIST-style dataset, without the optional ``.gz`` suffix.
IDX_FILE_STEMS: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: The mirror torchvision uses (yann.lecun.com often refuses automated downloads).
MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: SHA-256 of the four gzipped MNIST files. Source: TensorFlow Datasets,
#: ``tensorflow_datasets/url_checksums/mnist.txt`` (commit 31f1255e), which also records the
#: sizes 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes; the same digests appear in many
#: independent projects that fetch from the S3 and storage.googleapis.com mirrors.
MNIST_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    }
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A dataset file could not be fetched (offline, unreachable mirror, HTTP error)."""


def default_cache_dir() -> Path:
    """Root of prunetune's cache: ``$PRUNETUNE_CACHE`` or ``~/.cache/prunetune``.

    Datasets live in sub-directories named after them (``<root>/mnist`` for downloads,
    ``<root>/digits`` for the split cache); the compiled mask kernel in ``<root>/kernels``.
    The one definition is :func:`prunetune._cache.cache_root`.
    """
    return cache_root()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_checksums(checksums: Mapping[str, str]) -> dict[str, str]:
    expected = set(MNIST_SHA256)
    if set(checksums) != expected:
        raise ValueError(
            f"The 'checksums' parameter of download_mnist must have exactly the keys "
            f"{sorted(expected)}, but got {sorted(checksums)}."
        )
    out = {}
    for name, digest in checksums.items():
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
            raise ValueError(
                f"The 'checksums' parameter of download_mnist must map each file to a "
                f"64-character hex SHA-256, but got {digest!r} for {name!r}."
            )
        out[name] = digest.lower()
    return out


def _fetch(url: str, dest: Path, expected_sha256: str, timeout: float) -> None:
    """Streams ``url`` into a temp file next to ``dest``, verifies it, then renames it."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ValueError(
                f"SHA-256 mismatch for {dest.name} downloaded from {url}: expected "
                f"{expected_sha256}, got {actual}. The file was not saved; the mirror may serve "
                f"a different or corrupted file."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str = MNIST_BASE_URL,
    timeout: float = 60.0,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Downloads the four gzipped MNIST IDX files and verifies their SHA-256 digests.

    Files already in ``cache_dir`` with the right digest are kept without touching the
    network, so calling this twice is cheap. Each file is streamed into a temporary file in
    ``cache_dir``, checked, and only then moved into place with ``os.replace``: an interrupted
    or corrupted download never leaves a file under the final name.

    Args:
        cache_dir: Destination directory; default ``default_cache_dir() / "mnist"``
            (``$PRUNETUNE_CACHE/mnist`` or ``~/.cache/prunetune/mnist``), where
            ``load_dataset("mnist")`` looks.
        base_url: URL of the directory holding the files; ``http(s)://`` or ``file://``.
        timeout: Seconds to wait on the connection, ``> 0``.
        checksums: SHA-256 per file name (the keys of :data:`MNIST_SHA256`); default
            :data:`MNIST_SHA256`. Overriding is meant for tests and private mirrors.

    Returns:
        The directory holding the four files.

    Raises:
        ValueError: If an argument is invalid, or a downloaded file's SHA-256 differs from the
            expected one (the message names the file, the expected and the actual digest).
        DownloadError: If a file cannot be fetched; the message says where to copy the files
            by hand on an offline machine.

    Example:
        >>> path = download_mnist()  # doctest: +SKIP
        >>> sorted(p.name for p in path.glob("*.gz"))  # doctest: +SKIP
        ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', ...]
    """
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(
            f"The 'base_url' parameter of download_mnist must use one of the schemes "
            f"{_SCHEMES}, but got {base_url!r}."
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(
            f"The 'timeout' parameter of download_mnist must be a number > 0, but got {timeout!r}."
        )
    expected = _check_checksums(MNIST_SHA256 if checksums is None else checksums)
    dest_dir = (
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "mnist"
    )
    dest_dir.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"

    for name, sha in expected.items():
        dest = dest_dir / name
        if dest.is_file() and file_sha256(dest) == sha:
            _log.debug("%s already present and verified", dest)
            continue
        url = base + name
        _log.info("downloading %s -> %s", url, dest)
        try:
            _fetch(url, dest, sha, timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"Could not download {name} from {url}: {reason}. If this machine is offline, "
                f"fetch the four files {sorted(expected)} on another machine (e.g. from "
                f"{MNIST_BASE_URL}) and copy them into {dest_dir} — or into any directory you "
                f"then pass as --data-dir / data_dir=..., or $PRUNETUNE_DATA/mnist."
            ) from exc
    return dest_dir
