"""Data from a user factory: ``dataset: {factory: "package.module:callable", params: {...}}``.

The callable returns either

* a mapping of tensors (or NumPy arrays) ``x_train, y_train, x_val, y_val, x_test, y_test`` —
  optionally ``num_classes``, ``classes``, and the ``mean``/``std`` its inputs were
  standardised with — kept in memory on the trial's device (the fast path); or
* a tuple ``(train, val, test)`` of ``torch.utils.data.Dataset``\\ s of ``(x, y)`` samples,
  read through a ``DataLoader`` (``train.num_workers``), for data that does not fit in memory.

Integer labels mean classification, floating targets regression. The number of classes is the
mapping's ``num_classes``, else the spec's ``dataset.num_classes``, else the largest label + 1
(for Datasets: their ``targets`` attribute, else one pass over the labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from prunetune._factory import FactoryError, resolve
from prunetune.datasets._loader import DatasetSplits
from prunetune.datasets._splits import Splits

__all__ = ["load_data", "load_factory_data"]

_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_SHAPE_HINT = (
    "expected a mapping of tensors x_train, y_train, x_val, y_val, x_test, y_test, or a tuple "
    "(train, val, test) of torch.utils.data.Dataset"
)


def _tensor(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise FactoryError(f"{where} is a {type(v).__name__}, not a tensor or NumPy array")


def _classes(
    num_classes: Any, names: Any, labels_max: int, where: str
) -> tuple[int, tuple[str, ...]]:
    if names is not None:
        names = tuple(str(c) for c in names)
        if num_classes is None:
            num_classes = len(names)
    if num_classes is None:
        num_classes = labels_max + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FactoryError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
    if labels_max >= num_classes:
        raise FactoryError(
            f"{where}: labels must lie in [0, {num_classes}) for {num_classes} classes, but the "
            f"largest is {labels_max}"
        )
    if names is not None and len(names) != num_classes:
        raise FactoryError(f"{where}: classes lists {len(names)} names for {num_classes} classes")
    return num_classes, names or tuple(str(i) for i in range(num_classes))


def _from_mapping(out: Mapping[str, Any], where: str, name: str, num_classes: Any) -> Splits:
    missing = [k for k in _KEYS if k not in out]
    if missing:
        raise FactoryError(
            f"{where} returned a mapping without {', '.join(missing)}; {_SHAPE_HINT}"
        )
    t = {k: _tensor(out[k], f"{where}: {k}") for k in _KEYS}
    for k in ("x_train", "x_val", "x_test"):
        if not t[k].is_floating_point():
            raise FactoryError(
                f"{where}: {k} must be floating point (scale the inputs, e.g. pixels / 255), "
                f"got {t[k].dtype}"
            )
        t[k] = t[k].float()
    ys = [t[k] for k in ("y_train", "y_val", "y_test")]
    if all(not y.is_floating_point() and y.dtype != torch.bool for y in ys):
        task = "classification"
        for k in ("y_train", "y_val", "y_test"):
            y = t[k]
            if y.dim() != 1:
                raise FactoryError(
                    f"{where}: {k} must hold one integer label per sample (1-D), got shape "
                    f"{tuple(y.shape)}"
                )
            if y.numel() and int(y.min()) < 0:
                raise FactoryError(f"{where}: {k} has a negative label {int(y.min())}")
            t[k] = y.long()
        top = max(int(y.max()) if y.numel() else 0 for y in ys)
        n, classes = _classes(out.get("num_classes", num_classes), out.get("classes"), top, where)
    elif all(y.is_floating_point() for y in ys):
        task = "regression"
        for k in ("y_train", "y_val", "y_test"):
            t[k] = t[k].float().reshape(len(t[k]), -1)  # (n, num_outputs)
        n, classes = int(t["y_train"].shape[1]), ()
    else:
        raise FactoryError(
            f"{where}: y_train, y_val and y_test must all be integer labels (classification) "
            f"or all floating targets (regression), got {[str(y.dtype) for y in ys]}"
        )
    try:
        return Splits(
            name=name,
            task=task,
            input_shape=tuple(t["x_train"].shape[1:]),
            num_outputs=n,
            classes=classes,
            mean=float(out.get("mean", 0.0)),
            std=float(out.get("std", 1.0)),
            **t,
        )
    except ValueError as e:
        raise FactoryError(f"{where}: {e}") from None


def _is_dataset(d: Any) -> bool:
    return hasattr(d, "__getitem__") and hasattr(d, "__len__")


def _label_max(ds: Any, where: str) -> int:
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    y = torch.as_tensor(labels)
    if y.numel() == 0:
        return 0
    if int(y.min()) < 0:
        raise FactoryError(f"{where}: a label is negative ({int(y.min())})")
    return int(y.max())


def _from_datasets(out: tuple[Any, ...], where: str, name: str, num_classes: Any) -> DatasetSplits:
    for split, ds in zip(("train", "val", "test"), out, strict=True):
        if not _is_dataset(ds):
            raise FactoryError(
                f"{where}: its {split} element is a {type(ds).__name__}, not a Dataset; "
                f"{_SHAPE_HINT}"
            )
        if len(ds) == 0:
            raise FactoryError(f"{where}: the {split} Dataset is empty")
    try:
        x0, y0 = out[0][0]
    except Exception as e:
        raise FactoryError(
            f"{where}: train[0] must be an (x, y) pair, but reading it failed: "
            f"{type(e).__name__}: {e}"
        ) from None
    x0 = _tensor(x0, f"{where}: train[0] x") if not isinstance(x0, float | int) else None
    if x0 is None or not x0.is_floating_point():
        raise FactoryError(f"{where}: train[0] x must be a floating-point tensor or array")
    y0 = torch.as_tensor(y0)
    if y0.is_floating_point():
        task, n, classes = "regression", int(y0.numel()), ()
    elif y0.dtype != torch.bool and y0.numel() == 1:
        task = "classification"
        top = 0
        if num_classes is None or getattr(out[0], "targets", None) is not None:
            top = max(
                _label_max(ds, f"{where}: {s}")
                for s, ds in zip(("train", "val", "test"), out, strict=True)
            )
        n, classes = _classes(num_classes, getattr(out[0], "classes", None), top, where)
    else:
        raise FactoryError(
            f"{where}: train[0] y must be an integer class label or floating targets, got "
            f"{y0.dtype} of shape {tuple(y0.shape)}"
        )
    return DatasetSplits(
        name=name,
        task=task,  # type: ignore[arg-type]
        input_shape=tuple(x0.shape),
        num_outputs=n,
        train=out[0],
        val=out[1],
        test=out[2],
        classes=classes,
    )


def load_factory_data(
    path: str,
    params: Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    field: str = "dataset.factory",
) -> Splits | DatasetSplits:
    """Call the data factory ``path`` with ``params``; in-memory :class:`Splits` (a mapping of
    tensors) or :class:`DatasetSplits` (three Datasets), on ``device``.

    Raises:
        FactoryError: the factory does not resolve, raises, or returns something else —
            naming ``field`` and ``path``.
    """
    fn = resolve(path, field)
    where = f"{field}: {path!r}"
    try:
        out = fn(**dict(params or {}))
    except Exception as e:
        raise FactoryError(
            f"{where} raised {type(e).__name__}: {e} (called with {dict(params or {})})"
        ) from None
    label = name or path
    if isinstance(out, Mapping):
        data: Splits | DatasetSplits = _from_mapping(out, where, label, num_classes)
    elif isinstance(out, tuple | list) and len(out) == 3 and not isinstance(out[0], Mapping):
        data = _from_datasets(tuple(out), where, label, num_classes).with_workers(num_workers)
    else:
        raise FactoryError(f"{where} returned a {type(out).__name__}; {_SHAPE_HINT}")
    return data.to(device)


def load_data(
    dataset: str | Mapping[str, Any],
    *,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    split_seed: int = 0,
) -> Splits | DatasetSplits:
    """A built-in data set by name (:func:`~prunetune.datasets.load_dataset`), or a factory's
    data (``{"factory": …, "params": {…}, "num_classes": …, "name": …}``)."""
    if isinstance(dataset, str):
        from prunetune.datasets._registry import load_dataset

        return load_dataset(dataset, data_dir=data_dir, device=device, split_seed=split_seed)
    return load_factory_data(
        dataset["factory"],
        dataset.get("params") or {},
        num_classes=dataset.get("num_classes"),
        name=dataset.get("name"),
        device=device,
        num_workers=num_workers,
    )
