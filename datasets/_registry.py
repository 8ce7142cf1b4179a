"""The table of known datasets, and ``load_dataset`` which turns a name into :class:`Splits`."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from prunetune.datasets._cifar import (
    CIFAR10_CLASSES,
    CIFAR10_FILES,
    CIFAR10_FOLDER,
    cifar10_files_in,
    read_cifar10,
)
from prunetune.datasets._download import IDX_FILE_STEMS, default_cache_dir
from prunetune.datasets._idx import read_idx
from prunetune.datasets._splits import Splits, Task
from prunetune.datasets._toy import load_pathways_toy

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "load_dataset"]

#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# 5,000 of the 60,000 MNIST-style training images become the validation split; smaller
# (e.g. test) files keep the same 1/12 ratio.
_VAL_FRACTION_DENOM = 12
# 5,000 of CIFAR-10's 50,000 training images become the validation split (1/10).
_CIFAR_VAL_FRACTION_DENOM = 10
# sklearn's random_state and numpy's SeedSequence both accept this range.
_MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like, known without loading it (used to validate specs).

    Attributes:
        name: Registry name.
        task: ``"classification"`` or ``"regression"``.
        input_shape: Shape of one sample, e.g. ``(1, 28, 28)``.
        num_outputs: Number of classes (or regression targets).
        classes: Class names, in label order.
        description: One line for ``--help`` texts and reports.
    """

    name: str
    task: Task
    input_shape: tuple[int, ...]
    num_outputs: int
    classes: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    # (info, data_dir, split_seed) -> Splits on the CPU.
    load: Callable[[DatasetInfo, Path | None, int], Splits]


# --- digits ----------------------------------------------------------------------------------


def _load_digits(info: DatasetInfo, data_dir: Path | None, split_seed: int) -> Splits:
    """sklearn's bundled 8x8 digits: stratified 20% test, then 10% of the rest for validation.

    The pixels, labels and split indices are cached per scikit-learn version and split seed
    (:func:`_digits_cache_path`): every Ray worker of a study loads digits, and importing
    scikit-learn costs each of them ~1.6 s of CPU that the trials running beside it need.
    """
    del data_dir  # bundled with scikit-learn, nothing to find
    path = _digits_cache_path(split_seed)
    arrays = _read_digits_cache(path) if path is not None else None
    if arrays is None:
        arrays = _digits_from_sklearn(split_seed)
        if path is not None:
            _write_digits_cache(path, arrays)
    pixels, y, parts = arrays
    # Pixels are counts 0..16 (an 8x8 downsampling of 32x32 bitmaps), so /16 maps them to [0, 1].
    x = (pixels / 16.0).astype(np.float32).reshape(-1, *info.input_shape)  # (1797, 1, 8, 8)
    return Splits.select(info, x, y, parts)


_DigitsArrays = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]
_SPLIT_NAMES = ("train", "val", "test")
_DIGITS_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


def _digits_from_sklearn(split_seed: int) -> _DigitsArrays:
    # sklearn is slow to import; only pay for it when the cache cannot answer.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = bunch.data.astype(np.uint8)  # exact: the counts are integers 0..16
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, random_state=split_seed, stratify=y)
    train, val = train_test_split(rest, test_size=0.1, random_state=split_seed, stratify=y[rest])
    # Sorting makes each split depend only on which samples it holds, and keeps file order.
    parts = {k: np.sort(v) for k, v in zip(_SPLIT_NAMES, (train, val, test), strict=True)}
    return pixels, y, parts


def _digits_cache_path(split_seed: int) -> Path | None:
    """``<cache>/digits/…-sklearn<version>-split<seed>.npz``; ``None`` without scikit-learn.

    Keyed by the installed scikit-learn version (read from its metadata, without importing
    it): both the bundled data and ``train_test_split`` come from there.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        sk = version("scikit-learn")
    except PackageNotFoundError:
        return None  # load_digits will then say what is missing
    name = f"digits-v{_DIGITS_CACHE_FORMAT}-sklearn{sk}-split{split_seed}.npz"
    return default_cache_dir() / "digits" / name


def _read_digits_cache(path: Path) -> _DigitsArrays | None:
    """The cached arrays, or ``None`` if the file is missing, unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as f:
            pixels, y = f["pixels"], f["y"]
            parts = {k: f[k] for k in _SPLIT_NAMES}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    n = len(y)
    every = np.sort(np.concatenate(list(parts.values())))
    if (
        pixels.ndim != 2
        or len(pixels) != n
        or pixels.dtype != np.uint8
        or y.dtype != np.int64
        or not np.array_equal(every, np.arange(n))
    ):
        return None  # a partition of the samples, or nothing
    return pixels, y, parts


def _write_digits_cache(path: Path, arrays: _DigitsArrays) -> None:
    """Write atomically (concurrent workers race harmlessly); a read-only cache is no error."""
    pixels, y, parts = arrays
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pixels=pixels, y=y, **parts)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# --- MNIST-style IDX datasets -----------------------------------------------------------------


def _idx_files_in(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Maps each IDX stem to its file in ``directory`` (raw preferred over ``.gz``)."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in IDX_FILE_STEMS:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def _search_dirs(name: str, data_dir: Path | None, defaults: tuple[Path, ...]) -> list[Path]:
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [data_dir, data_dir / name]
    env = os.environ.get("PRUNETUNE_DATA")
    if env:
        # The per-dataset sub-directory first: MNIST and Fashion-MNIST use the same file names,
        # so a bare $PRUNETUNE_DATA can only ever hold one of them.
        root = Path(env).expanduser()
        dirs += [root / name, root]
    dirs += defaults
    return list(dict.fromkeys(dirs))  # de-duplicate, keep order


_FilesIn = Callable[[Path], tuple[dict[str, Path], list[str]]]


def _locate(
    name: str, dirs: list[Path], files_in: _FilesIn, expected: str, hint: str
) -> dict[str, Path]:
    """The files of the first of ``dirs`` where ``files_in`` finds none missing.

    ``expected`` (which files one directory must hold) and ``hint`` (how to get them) end the
    error that lists every directory searched and what each lacked.
    """
    searched: list[str] = []
    for directory in dirs:
        if not directory.is_dir():
            searched.append(f"  - {directory}  (no such directory)")
            continue
        found, missing = files_in(directory)
        if not missing:
            return found
        searched.append(f"  - {directory}  (missing: {', '.join(missing)})")
    raise FileNotFoundError(
        f"Could not find the {name!r} dataset. Searched these directories, in order:\n"
        + "\n".join(searched)
        + f"\n{expected}\n"
        + hint
    )


_IDX_EXPECTED = "One directory must contain all four IDX files, gzipped or raw:\n" + "\n".join(
    f"  {stem}.gz  (or {stem})" for stem in IDX_FILE_STEMS
)


def _standardise_lut(train_u8: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Lookup table uint8 -> float32 mapping pixels to ``(p / 255 - mean) / std``.

    Mean and (population) std are exact: computed in float64 from the 256-bin histogram of the
    training pixels rather than by reducing a 43M-element float array. ``torch.bincount`` is used
    because it is ~6x faster than ``np.bincount`` on uint8 input.
    """
    counts = torch.bincount(torch.from_numpy(train_u8).reshape(-1), minlength=256)
    counts = counts.numpy().astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float(counts @ levels / total)
    std = math.sqrt(float(counts @ (levels - mean) ** 2 / total))
    if std == 0.0:
        raise ValueError(
            f"Cannot standardise: every training pixel has the value {round(mean * 255)}, so "
            f"the training std is 0."
        )
    return ((levels - mean) / std).astype(np.float32), mean, std


def _read_pair(info: DatasetInfo, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != info.input_shape[1:]:
        raise ValueError(
            f"{info.name}: images in {str(images)!r} must have shape (n, "
            f"{', '.join(map(str, info.input_shape[1:]))}), but got {x.shape}."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{info.name}: {str(labels)!r} must hold one label per image in {str(images)!r} "
            f"({len(x)}), but got shape {y.shape}."
        )
    if len(y) and int(y.max()) >= info.num_outputs:
        raise ValueError(
            f"{info.name}: labels in {str(labels)!r} must lie in [0, {info.num_outputs}), but got "
            f"max={int(y.max())}."
        )
    return x, y.astype(np.int64)


def _idx_loader(
    defaults: Callable[[], tuple[Path, ...]], hint: Callable[[], str]
) -> Callable[[DatasetInfo, Path | None, int], Splits]:
    """Builds the loader of an MNIST-style dataset whose default location is ``defaults()``."""

    def load(info: DatasetInfo, data_dir: Path | None, split_seed: int) -> Splits:
        dirs = _search_dirs(info.name, data_dir, defaults())
        files = _locate(info.name, dirs, _idx_files_in, _IDX_EXPECTED, hint())
        x_train_u8, y_train_all = _read_pair(
            info, files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]
        )
        x_test_u8, y_test = _read_pair(
            info, files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]
        )
        n = len(y_train_all)
        n_val = n // _VAL_FRACTION_DENOM  # 5,000 for the standard 60,000
        if n_val < 1:
            raise ValueError(
                f"{info.name}: the training file {str(files['train-images-idx3-ubyte'])!r} must "
                f"hold at least {_VAL_FRACTION_DENOM} images to carve a validation split, "
                f"but got {n}."
            )
        return _standardised_splits(
            info, x_train_u8, y_train_all, x_test_u8, y_test, n_val, split_seed
        )

    return load


def _standardised_splits(
    info: DatasetInfo,
    x_train_u8: np.ndarray,
    y_train_all: np.ndarray,
    x_test_u8: np.ndarray,
    y_test: np.ndarray,
    n_val: int,
    split_seed: int,
) -> Splits:
    """Carves ``n_val`` validation images from the training file(s) by a permutation seeded
    with ``split_seed``, and standardises every split with the rest's pixel mean and std."""
    perm = np.random.default_rng(split_seed).permutation(len(y_train_all))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    train_u8 = x_train_u8[train_idx]
    lut, mean, std = _standardise_lut(train_u8)
    c, h, w = info.input_shape

    def to_x(u8: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(lut[u8].reshape(len(u8), c, h, w))  # (n, c, h, w)

    return Splits.of(
        info,
        x_train=to_x(train_u8),
        y_train=torch.from_numpy(y_train_all[train_idx]),
        x_val=to_x(x_train_u8[val_idx]),
        y_val=torch.from_numpy(y_train_all[val_idx]),
        x_test=to_x(x_test_u8),
        y_test=torch.from_numpy(y_test),
        mean=mean,
        std=std,
    )


def _mnist_hint() -> str:
    return (
        f"To get it: run `prunetune data download mnist` (downloads into "
        f"{default_cache_dir() / 'mnist'}), or pass --data-dir (data_dir=...) pointing at a "
        f"directory with the files, or set $PRUNETUNE_DATA to a directory holding them (or a "
        f"'mnist' sub-directory)."
    )


def _fashion_hint() -> str:
    return (
        f"To get it: install the Debian package dataset-fashion-mnist (files go to "
        f"{FASHION_MNIST_SYSTEM_DIR}), or pass --data-dir (data_dir=...) pointing at a directory "
        f"with the files, or set $PRUNETUNE_DATA to a directory holding them (or a "
        f"'fashion-mnist' sub-directory)."
    )


# --- CIFAR-10 ---------------------------------------------------------------------------------


def _cifar10_dirs(data_dir: Path | None) -> list[Path]:
    """``_search_dirs``'s directories, each followed by its ``cifar-10-batches-py``: the folder
    the archive unpacks to may be given, or the directory it was unpacked in."""
    defaults = (default_cache_dir() / "cifar10",)
    dirs = _search_dirs("cifar10", data_dir, defaults)
    return list(dict.fromkeys(p for d in dirs for p in (d, d / CIFAR10_FOLDER)))


_CIFAR10_EXPECTED = (
    "One directory must contain the batch files of CIFAR-10's python version "
    "(cifar-10-python.tar.gz; batches.meta is optional):\n"
    + "\n".join(f"  {name}" for name in CIFAR10_FILES)
)


def _load_cifar10(info: DatasetInfo, data_dir: Path | None, split_seed: int) -> Splits:
    hint = (
        f"To get it: run `prunetune data download cifar10` (downloads into "
        f"{default_cache_dir() / 'cifar10' / CIFAR10_FOLDER}), or pass --data-dir "
        f"(data_dir=...) pointing at a directory with the files (or at the directory the "
        f"archive was unpacked in), or set $PRUNETUNE_DATA to a directory holding them (or a "
        f"'cifar10' sub-directory)."
    )
    files = _locate(info.name, _cifar10_dirs(data_dir), cifar10_files_in, _CIFAR10_EXPECTED, hint)
    x_train_u8, y_train_all, x_test_u8, y_test = read_cifar10(files)
    n = len(y_train_all)
    n_val = n // _CIFAR_VAL_FRACTION_DENOM  # 5,000 for the standard 50,000
    if n_val < 1:
        raise ValueError(
            f"{info.name}: the training batches in {str(files[CIFAR10_FILES[0]].parent)!r} must "
            f"hold at least {_CIFAR_VAL_FRACTION_DENOM} images together to carve a validation "
            f"split, but got {n}."
        )
    return _standardised_splits(info, x_train_u8, y_train_all, x_test_u8, y_test, n_val, split_seed)


_DIGIT_CLASSES = tuple(str(d) for d in range(10))

_REGISTRY: MappingProxyType[str, _Entry] = MappingProxyType(
    {
        "cifar10": _Entry(
            DatasetInfo(
                name="cifar10",
                task="classification",
                input_shape=(3, 32, 32),
                num_outputs=10,
                classes=CIFAR10_CLASSES,
                description="Krizhevsky's 60,000 32x32 colour images in 10 classes (CIFAR-10)",
            ),
            _load_cifar10,
        ),
        "digits": _Entry(
            DatasetInfo(
                name="digits",
                task="classification",
                input_shape=(1, 8, 8),
                num_outputs=10,
                classes=_DIGIT_CLASSES,
                description="scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set)",
            ),
            _load_digits,
        ),
        "fashion-mnist": _Entry(
            DatasetInfo(
                name="fashion-mnist",
                task="classification",
                input_shape=(1, 28, 28),
                num_outputs=10,
                classes=(
                    "T-shirt/top",
                    "Trouser",
                    "Pullover",
                    "Dress",
                    "Coat",
                    "Sandal",
                    "Shirt",
                    "Sneaker",
                    "Bag",
                    "Ankle boot",
                ),
                description="Zalando's 70,000 28x28 grey-scale clothing images (Xiao et al., 2017)",
            ),
            _idx_loader(lambda: (FASHION_MNIST_SYSTEM_DIR,), _fashion_hint),
        ),
        "mnist": _Entry(
            DatasetInfo(
                name="mnist",
                task="classification",
                input_shape=(1, 28, 28),
                num_outputs=10,
                classes=_DIGIT_CLASSES,
                description="LeCun et al.'s 70,000 28x28 handwritten digits",
            ),
            _idx_loader(lambda: (default_cache_dir() / "mnist",), _mnist_hint),
        ),
        "pathways-toy": _Entry(
            DatasetInfo(
                name="pathways-toy",
                task="regression",
                input_shape=(4,),
                num_outputs=2,
                classes=(),
                description="synthetic y1 = 3 sin((x1 - x2)^2), y2 = (x3 + x4)^3, x ~ U(-1, 1)^4 "
                "(Zhang, Tao & Zhang 2023)",
            ),
            load_pathways_toy,
        ),
    }
)

#: Names accepted by :func:`load_dataset` and :func:`dataset_info`.
DATASETS: tuple[str, ...] = tuple(_REGISTRY)


def _entry(func: str, name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"The 'name' parameter of {func} must be one of {DATASETS}, but got {name!r}."
        ) from None


def dataset_info(name: str) -> DatasetInfo:
    """Describes a registered dataset without loading (or even locating) its data.

    Args:
        name: One of :data:`DATASETS`.

    Returns:
        The dataset's :class:`DatasetInfo`.

    Raises:
        ValueError: If ``name`` is not registered.

    Example:
        >>> info = dataset_info("fashion-mnist")
        >>> info.input_shape, info.num_outputs, info.task
        ((1, 28, 28), 10, 'classification')
    """
    return _entry("dataset_info", name).info


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    split_seed: int = 0,
) -> Splits:
    """Loads a registered dataset into memory as train/validation/test tensors.

    * ``cifar10``: the python version's five 10,000-image training batches and its test batch
      (``cifar-10-batches-py``); 5,000 validation images are carved from train by a
      permutation seeded with ``split_seed`` (45,000 / 5,000 / 10,000). Images are
      ``(3, 32, 32)``, RGB; pixels are scaled and standardised as for ``mnist`` below (one
      scalar mean and std over all three channels). The test split keeps file order.
    * ``digits``: scikit-learn's bundled 8x8 digits, pixels divided by 16. Stratified split
      with ``random_state=split_seed``: 20% test, then 10% of the rest validation
      (1,293 / 144 / 360 samples).
    * ``mnist``, ``fashion-mnist``: the standard 60,000 / 10,000 train/test IDX files; 5,000
      validation images are carved from train by a permutation seeded with ``split_seed``
      (55,000 / 5,000 / 10,000). Pixels are scaled to ``[0, 1]`` and standardised with the
      scalar mean and std of the (post-carve) training split, recorded in ``Splits.mean`` and
      ``Splits.std``. The test split keeps file order.
    * ``pathways-toy``: regression with ``x₁..x₄ ~ U(−1, 1)``, ``y₁ = 3·sin((x₁ − x₂)²)``,
      ``y₂ = (x₃ + x₄)³`` (Zhang, Tao & Zhang 2023), generated by
      ``numpy.random.default_rng(split_seed)``: 1,000 training samples of which the last 200
      are the validation split, and 1,000 test samples (800 / 200 / 1,000). Not standardised.

    IDX files (``*.gz`` or raw) are looked up in, in order: ``data_dir`` and
    ``data_dir/<name>``; ``$PRUNETUNE_DATA/<name>`` and ``$PRUNETUNE_DATA``; then
    ``/usr/share/datasets/fashion-mnist`` for fashion-mnist, or the download cache
    (``$PRUNETUNE_CACHE/mnist``, default ``~/.cache/prunetune/mnist``) for mnist. The first
    directory holding all four files wins. CIFAR-10's batch files are looked up in the same
    directories (with ``<name>`` = ``cifar10`` and the download cache
    ``$PRUNETUNE_CACHE/cifar10``), each followed by its ``cifar-10-batches-py`` sub-directory;
    the first directory holding ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` wins.
    They are Python pickles, read by an unpickler that refuses every global but numpy's
    array reconstruction (a tampered file is a ``ValueError``, never code execution).

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Directory to search first; ignored by ``digits`` and ``pathways-toy``.
        device: Where to put the tensors.
        split_seed: Seed of the train/validation(/test) split, an int in ``[0, 2**32 - 1]``.
            The same seed always gives the same split.

    Returns:
        The dataset's :class:`Splits`, on ``device``.

    Raises:
        ValueError: If an argument is invalid or a data file is corrupt.
        FileNotFoundError: If no searched directory holds the files; the message lists every
            directory searched, the expected file names, and how to get the data.

    Example:
        >>> splits = load_dataset("digits", split_seed=0)
        >>> splits.sizes, splits.input_shape
        ({'train': 1293, 'val': 144, 'test': 360}, (1, 8, 8))
    """
    entry = _entry("load_dataset", name)
    if (
        isinstance(split_seed, bool)
        or not isinstance(split_seed, int)
        or not 0 <= split_seed <= _MAX_SEED
    ):
        raise ValueError(
            f"The 'split_seed' parameter of load_dataset must be an int in [0, {_MAX_SEED}], "
            f"but got {split_seed!r}."
        )
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"The 'device' parameter of load_dataset must name a torch device, but got {device!r}."
        ) from exc
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    return entry.load(entry.info, directory, split_seed).to(target)
