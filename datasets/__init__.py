"""Datasets as in-memory train/validation/test tensors, fast mini-batches over them, and
train-time augmentation of those batches.

The registry (:data:`DATASETS`) knows ``digits`` (bundled with scikit-learn), ``mnist`` and
``fashion-mnist`` (IDX files on disk; see :func:`load_dataset` for where they are looked up,
and :func:`download_mnist` to fetch MNIST with checksum verification), ``cifar10`` (the
python version's batch files, read with a restricted unpickler; :func:`download_cifar10`
fetches and verifies them), and the synthetic regression task ``pathways-toy`` (generated
from ``split_seed``). :func:`augment_batches` adds random crops and flips to image batches
on their device.

A user's own data comes from a factory (:func:`load_factory_data`; :func:`load_data` takes a
built-in name or a factory): a mapping of tensors becomes in-memory :class:`Splits`, three
``torch.utils.data.Dataset`` objects become :class:`DatasetSplits`, read through a ``DataLoader``.
Both give the training loop the same interface (``train_batches``, ``eval_batches``,
``sample``, ``example``).

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

from prunetune.datasets._augment import AUGMENTATIONS, augment_batches
from prunetune.datasets._batches import batches, num_batches
from prunetune.datasets._cifar import CIFAR10_SHA256, CIFAR10_URL, download_cifar10
from prunetune.datasets._download import (
    IDX_FILE_STEMS,
    MNIST_BASE_URL,
    MNIST_SHA256,
    DownloadError,
    default_cache_dir,
    download_mnist,
    file_sha256,
)
from prunetune.datasets._factory import load_data, load_factory_data
from prunetune.datasets._idx import read_idx, write_idx
from prunetune.datasets._loader import DatasetSplits
from prunetune.datasets._registry import DATASETS, DatasetInfo, dataset_info, load_dataset
from prunetune.datasets._splits import TASKS, Splits, Task
from prunetune.datasets._toy import PATHWAYS_TOY_SIZES, pathways_toy_targets

__all__ = [
    "AUGMENTATIONS",
    "CIFAR10_SHA256",
    "CIFAR10_URL",
    "DATASETS",
    "IDX_FILE_STEMS",
    "MNIST_BASE_URL",
    "MNIST_SHA256",
    "PATHWAYS_TOY_SIZES",
    "TASKS",
    "DatasetInfo",
    "DatasetSplits",
    "DownloadError",
    "Splits",
    "Task",
    "augment_batches",
    "batches",
    "dataset_info",
    "default_cache_dir",
    "download_cifar10",
    "download_mnist",
    "file_sha256",
    "load_data",
    "load_dataset",
    "load_factory_data",
    "num_batches",
    "pathways_toy_targets",
    "read_idx",
    "write_idx",
]
