"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a big-endian header followed by a flat payload:

* 4 bytes of magic number ``0x00 0x00 <dtype code> <ndim>``;
* ``ndim`` unsigned 32-bit dimension sizes;
* ``prod(dims)`` items of the given dtype.

Only unsigned-byte payloads are supported (dtype code ``0x08``), in the two layouts the datasets
use: 1-D label vectors (magic ``0x00000801``) and 3-D image stacks (magic ``0x00000803``).
Files whose name ends in ``.gz`` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from prunetune._cache import write_atomic

__all__ = ["IDX_MAGIC", "read_idx", "write_idx"]

#: Supported magic numbers and the number of dimensions each declares.
IDX_MAGIC: dict[int, int] = {
    0x00000801: 1,  # ubyte labels, shape (n,)
    0x00000803: 3,  # ubyte images, shape (n, rows, cols)
}
_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    """Returns the decompressed content of ``path``, raising ``ValueError`` on broken gzip."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        # A missing file is the caller's problem, not a corrupt one.
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(
            f"IDX file {str(path)!r} is not a valid gzip file (truncated or corrupt): {exc}"
        ) from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an unsigned-byte IDX file (optionally gzipped) into a numpy array.

    Args:
        path: The file. A name ending in ``.gz`` is decompressed with gzip.

    Returns:
        A writable ``uint8`` array of shape ``(n,)`` for label files or ``(n, rows, cols)`` for
        image files.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the header is truncated, the magic number is not one of
            :data:`IDX_MAGIC`, or the payload size differs from the one the header declares.
            The message names the path, what was expected and what was found.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> write_idx(p, np.array([3, 1, 4], dtype=np.uint8))
        >>> read_idx(p).tolist()
        [3, 1, 4]
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"IDX file {str(path)!r} has a truncated header: expected at least 4 bytes of magic "
            f"number, found {len(data)} bytes in the whole file."
        )
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic not in IDX_MAGIC:
        expected = ", ".join(f"0x{m:08X}" for m in IDX_MAGIC)
        raise ValueError(
            f"IDX file {str(path)!r} has an unsupported or corrupt magic number: expected one of "
            f"({expected}) for unsigned-byte labels/images, found 0x{magic:08X}."
        )
    ndim = IDX_MAGIC[magic]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"IDX file {str(path)!r} has a truncated header: magic 0x{magic:08X} declares {ndim} "
            f"dimension(s), so the header needs {header_len} bytes, found {len(data)}."
        )
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    expected_payload = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header_len
    if payload != expected_payload:
        raise ValueError(
            f"IDX file {str(path)!r} is truncated or corrupt: header dims {tuple(dims)} need "
            f"{expected_payload} payload bytes, found {payload}."
        )
    # frombuffer is a zero-copy view of the immutable ``bytes``; one copy makes it writable so
    # callers can modify it in place without surprises.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def write_idx(path: str | os.PathLike[str], array: ArrayLike) -> None:
    """Writes a 1-D or 3-D unsigned-byte array as an IDX file, atomically.

    The file is written to a temporary sibling and moved into place with ``os.replace``, so a
    reader never sees half a file. gzip output uses ``mtime=0``, so the same array always gives
    the same bytes (and the same checksum).

    Args:
        path: Destination. A name ending in ``.gz`` is gzip-compressed.
        array: Integer values in ``[0, 255]``, with 1 dimension (labels) or 3 (images).

    Raises:
        ValueError: If ``array`` is not 1-D or 3-D, is not of an integer dtype, or has values
            outside ``[0, 255]``.
    """
    path = Path(path)
    arr = np.asarray(array)
    ndim_to_magic = {ndim: magic for magic, ndim in IDX_MAGIC.items()}
    if arr.ndim not in ndim_to_magic:
        raise ValueError(
            f"The 'array' parameter of write_idx must have 1 (labels) or 3 (images) dimensions, "
            f"but got shape {arr.shape}."
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"The 'array' parameter of write_idx must have an integer dtype, "
                f"but got {arr.dtype}."
            )
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"The 'array' parameter of write_idx must hold values in [0, 255], but got "
                f"min={int(arr.min())}, max={int(arr.max())}."
            )
        arr = arr.astype(np.uint8)
    header = struct.pack(f">I{arr.ndim}I", ndim_to_magic[arr.ndim], *arr.shape)
    content = header + np.ascontiguousarray(arr).tobytes()
    if path.suffix == ".gz":
        content = gzip.compress(content, compresslevel=6, mtime=0)

    write_atomic(path, content)
