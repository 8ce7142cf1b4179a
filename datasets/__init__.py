"""Datasets as in-memory train/validation/test tensors, and fast mini-batches over them.

The registry (:data:`DATASETS`) knows ``digits`` (bundled with scikit-learn), ``mnist`` and
``fashion-mnist`` (IDX files on disk; see :func:`load_dataset` for where they are looked up,
and :func:`download_mnist` to fetch MNIST with checksum verification), and the synthetic
regression task ``pathways-toy`` (generated from ``split_seed``).

Example:
    >>> import torch
    >>> from prunetune.datasets import batches, load_dataset
    >>> splits = load_dataset("digits", split_seed=0)
    >>> splits.x_train.shape, splits.y_train.dtype
    (torch.Size([1293, 1, 8, 8]), torch.int64)
    >>> g = torch.Generator().manual_seed(0)
    >>> sum(len(yb) for _, yb in batches(splits.x_train, splits.y_train, 128, generator=g))
    1293
"""

from prunetune.datasets._batches import batches, num_batches
from prunetune.datasets._download import (
    IDX_FILE_STEMS,
    MNIST_BASE_URL,
    MNIST_SHA256,
    DownloadError,
    default_cache_dir,
    download_mnist,
    file_sha256,
)
from prunetune.datasets._idx import read_idx, write_idx
from prunetune.datasets._registry import DATASETS, DatasetInfo, dataset_info, load_dataset
from prunetune.datasets._splits import TASKS, Splits, Task
from prunetune.datasets._toy import PATHWAYS_TOY_SIZES, pathways_toy_targets

__all__ = [
    "DATASETS",
    "IDX_FILE_STEMS",
    "MNIST_BASE_URL",
    "MNIST_SHA256",
    "PATHWAYS_TOY_SIZES",
    "TASKS",
    "DatasetInfo",
    "DownloadError",
    "Splits",
    "Task",
    "batches",
    "dataset_info",
    "default_cache_dir",
    "download_mnist",
    "file_sha256",
    "load_dataset",
    "num_batches",
    "pathways_toy_targets",
    "read_idx",
    "write_idx",
]
