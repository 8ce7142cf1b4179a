"""load_dataset / dataset_info: split sizes, seeds, standardisation, and where files are found."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.datasets import DATASETS, Splits, dataset_info, load_dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGIT_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's digits


def _rows(x: torch.Tensor, y: torch.Tensor) -> Counter[tuple[bytes, int]]:
    """Multiset of (sample bytes, label), to compare splits without their indices."""
    flat = x.reshape(len(x), -1).numpy()
    return Counter((row.tobytes(), int(label)) for row, label in zip(flat, y.tolist(), strict=True))


def _assert_splits_equal(a: Splits, b: Splits) -> None:
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_and_info() -> None:
    assert DATASETS == ("cifar10", "digits", "fashion-mnist", "mnist", "pathways-toy")
    expected = {
        "cifar10": ((3, 32, 32), 10),
        "digits": ((1, 8, 8), 10),
        "fashion-mnist": ((1, 28, 28), 10),
        "mnist": ((1, 28, 28), 10),
    }
    for name in expected:  # the classification sets; pathways-toy has its own tests
        info = dataset_info(name)
        assert (info.input_shape, info.num_outputs, info.task) == (
            *expected[name],
            "classification",
        )
        assert len(info.classes) == info.num_outputs
    assert dataset_info("fashion-mnist").classes[9] == "Ankle boot"


@pytest.mark.parametrize("func", [dataset_info, load_dataset])
def test_unknown_name(func: Callable[..., object]) -> None:
    with pytest.raises(
        ValueError, match=r"'name' parameter.*one of \('cifar10'.*but got 'cifar100'"
    ):
        func("cifar100")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "0"])
def test_bad_split_seed(seed: object) -> None:
    with pytest.raises(ValueError, match=r"'split_seed' parameter.*\[0, 4294967295\]"):
        load_dataset("digits", split_seed=seed)  # type: ignore[arg-type]


def test_bad_device() -> None:
    with pytest.raises(ValueError, match=r"'device' parameter.*but got 'gpu0'"):
        load_dataset("digits", device="gpu0")


# --- digits -----------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_values() -> None:
    s = load_dataset("digits")
    assert s.sizes == {"train": 1293, "val": 144, "test": 360}
    assert sum(s.sizes.values()) == 1797
    assert s.x_train.shape == (1293, 1, 8, 8)
    assert (s.x_train.dtype, s.y_train.dtype) == (torch.float32, torch.int64)
    assert (s.mean, s.std) == (0.0, 1.0)  # pixel / 16, no standardisation
    assert float(s.x_train.min()) == 0.0 and float(s.x_train.max()) == 1.0
    sixteenths = s.x_train * 16
    assert torch.equal(sixteenths, sixteenths.round())


def test_the_example_batch_is_a_copy_that_does_not_hold_the_training_set() -> None:
    """A topology or a trace keeps its example batch; a view would keep the whole split."""
    s = load_dataset("digits")
    ex = s.example(2)
    assert torch.equal(ex, s.x_train[:2])
    assert ex.untyped_storage().nbytes() == 2 * 64 * 4
    assert ex.untyped_storage().data_ptr() != s.x_train.untyped_storage().data_ptr()


def test_digits_splits_partition_the_dataset() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = _rows(
        torch.from_numpy((bunch.data / 16).astype(np.float32)), torch.from_numpy(bunch.target)
    )
    assert len(full) == 1797  # every (image, label) in digits is unique
    s = load_dataset("digits", split_seed=3)
    parts = [_rows(s.x_train, s.y_train), _rows(s.x_val, s.y_val), _rows(s.x_test, s.y_test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] + parts[1] + parts[2] == full


def test_digits_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = (
        load_dataset("digits", split_seed=7),
        load_dataset("digits", split_seed=7),
        load_dataset("digits", split_seed=8),
    )
    _assert_splits_equal(a, b)
    assert c.sizes == a.sizes
    assert _rows(a.x_test, a.y_test) != _rows(c.x_test, c.y_test)
    assert _rows(a.x_val, a.y_val) != _rows(c.x_val, c.y_val)


@pytest.mark.parametrize("seed", [0, 1])
def test_digits_split_is_stratified(seed: int) -> None:
    s = load_dataset("digits", split_seed=seed)
    counts = {
        k: torch.bincount(getattr(s, f"y_{k}"), minlength=10).tolist()
        for k in ("train", "val", "test")
    }
    for c, total in enumerate(DIGIT_CLASS_COUNTS):
        assert counts["train"][c] + counts["val"][c] + counts["test"][c] == total
        assert abs(counts["test"][c] - 0.2 * total) <= 1, (c, counts["test"][c])
        assert abs(counts["val"][c] - 0.1 * 0.8 * total) <= 1, (c, counts["val"][c])


def _digits_cache_files(root: Path) -> list[Path]:
    return sorted((root / "digits").glob("*.npz"))


def test_digits_cache_hit_equals_the_sklearn_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path))
    cold = load_dataset("digits", split_seed=5)  # computed with scikit-learn, then cached
    (path,) = _digits_cache_files(tmp_path)
    assert "sklearn" in path.name and path.name.endswith("-split5.npz")
    _assert_splits_equal(load_dataset("digits", split_seed=5), cold)
    assert _digits_cache_files(tmp_path) == [path]
    load_dataset("digits", split_seed=6)  # another seed, another file
    assert len(_digits_cache_files(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["garbage", "overlapping-splits"])
def test_a_damaged_digits_cache_is_recomputed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, damage: str
) -> None:
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path))
    good = load_dataset("digits")
    (path,) = _digits_cache_files(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    else:
        with np.load(path) as f:
            arrays = dict(f)
        arrays["val"] = arrays["test"]  # no longer a partition of the samples
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    _assert_splits_equal(load_dataset("digits"), good)
    with np.load(path) as f:  # and the file was rewritten
        assert not set(f["val"].tolist()) & set(f["test"].tolist())


def test_a_cached_digits_load_does_not_import_sklearn(tmp_path: Path) -> None:
    """Every Ray worker of a study loads digits; the cache spares each the sklearn import."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from prunetune.datasets import load_dataset; "
        "load_dataset('digits'); print('sklearn' in sys.modules)"
    )
    env = {**os.environ, "PRUNETUNE_CACHE": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs == ["True", "False"]  # cold: computed with sklearn; warm: from the cache


# --- MNIST-style IDX datasets (tiny fakes) ------------------------------------------------------


def test_idx_dataset_sizes_labels_and_order(
    tmp_path: Path, make_idx_dataset: Callable[..., dict]
) -> None:
    raw = make_idx_dataset(tmp_path, n_train=120, n_test=24)
    s = load_dataset("mnist", data_dir=tmp_path)
    assert s.sizes == {"train": 110, "val": 10, "test": 24}  # val = 120 // 12
    assert s.x_train.shape == (110, 1, 28, 28) and s.x_test.shape == (24, 1, 28, 28)
    assert s.classes == tuple("0123456789")
    # The test split keeps file order.
    assert s.y_test.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()

    # Train + val is exactly the training file (as a multiset of de-standardised images).
    def raw_rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
        u8 = torch.round((x.double() * s.std + s.mean) * 255).to(torch.uint8)
        return _rows(u8, y)

    expected = _rows(
        torch.from_numpy(raw["train-images-idx3-ubyte"]),
        torch.from_numpy(raw["train-labels-idx1-ubyte"]),
    )
    train, val = raw_rows(s.x_train, s.y_train), raw_rows(s.x_val, s.y_val)
    assert not (train & val)
    assert train + val == expected


def test_idx_standardisation_uses_train_split_statistics(
    tmp_path: Path, make_idx_dataset: Callable[..., dict]
) -> None:
    raw = make_idx_dataset(tmp_path)
    s = load_dataset("mnist", data_dir=tmp_path, split_seed=5)
    x = s.x_train.double()
    assert abs(float(x.mean())) < 1e-6
    assert abs(float(x.std(unbiased=False)) - 1.0) < 1e-6
    # Test images are mapped with the *training* mean/std (independent float64 computation).
    expected = (raw["t10k-images-idx3-ubyte"].astype(np.float64) / 255 - s.mean) / s.std
    np.testing.assert_allclose(s.x_test[:, 0].numpy(), expected, rtol=0, atol=1e-6)
    # Uniform random bytes: mean ~ 127.5/255, std ~ 73.9/255 (sqrt((256**2 - 1) / 12)).
    assert abs(s.mean - 0.5) < 0.01 and abs(s.std - 0.2898) < 0.01


def test_idx_split_seed(tmp_path: Path, make_idx_dataset: Callable[..., dict]) -> None:
    make_idx_dataset(tmp_path)
    a, b = (
        load_dataset("mnist", data_dir=tmp_path, split_seed=1),
        load_dataset("mnist", data_dir=tmp_path, split_seed=1),
    )
    c = load_dataset("mnist", data_dir=tmp_path, split_seed=2)
    _assert_splits_equal(a, b)
    assert not torch.equal(a.y_val, c.y_val) or not torch.equal(a.x_val, c.x_val)
    assert (a.mean, a.std) != (c.mean, c.std)  # statistics follow the training split


def test_raw_uncompressed_files(tmp_path: Path, make_idx_dataset: Callable[..., dict]) -> None:
    raw = make_idx_dataset(tmp_path, gz=False)
    assert not list(tmp_path.glob("*.gz"))
    s = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert s.y_test.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()
    assert s.classes[0] == "T-shirt/top"


def test_prunetune_data_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_idx_dataset: Callable[..., dict]
) -> None:
    make_idx_dataset(tmp_path / "root" / "mnist", n_test=12)
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "root"))
    assert load_dataset("mnist").num_test == 12  # $PRUNETUNE_DATA/<name>
    make_idx_dataset(tmp_path / "flat", n_test=13)
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "flat"))
    assert load_dataset("mnist").num_test == 13  # $PRUNETUNE_DATA itself
    make_idx_dataset(tmp_path / "arg", n_test=14)
    assert load_dataset("mnist", data_dir=tmp_path / "arg").num_test == 14  # data_dir wins


def test_mnist_cache_dir_from_prunetune_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_idx_dataset: Callable[..., dict]
) -> None:
    make_idx_dataset(tmp_path / "cache" / "mnist", n_test=15)
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    assert load_dataset("mnist").num_test == 15


def test_missing_files_lists_every_searched_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_idx_dataset: Callable[..., dict]
) -> None:
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    partial = tmp_path / "partial"
    make_idx_dataset(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=partial)
    message = str(info.value)
    searched = [
        partial,
        partial / "mnist",
        tmp_path / "env" / "mnist",
        tmp_path / "env",
        tmp_path / "cache" / "mnist",
    ]
    positions = [message.index(f"  - {p}  (") for p in searched]
    assert positions == sorted(positions)  # listed in search order
    assert f"{partial}  (missing: t10k-labels-idx1-ubyte)" in message
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert f"{stem}.gz  (or {stem})" in message
    assert "prunetune data download mnist" in message
    assert "--data-dir" in message


def test_missing_fashion_mnist_mentions_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prunetune.datasets._registry as registry

    monkeypatch.setattr(registry, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)nowhere  \(no such directory\).*dataset-fashion-mnist"
    ):
        load_dataset("fashion-mnist")


def test_corrupt_file_in_dataset_names_it(
    tmp_path: Path, make_idx_dataset: Callable[..., dict]
) -> None:
    make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte.*need 120 payload bytes, found 115"
    ):
        load_dataset("mnist", data_dir=tmp_path)


def test_label_count_mismatch(tmp_path: Path, make_idx_dataset: Callable[..., dict]) -> None:
    from prunetune.datasets import write_idx

    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(23, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"one label per image.*\(24\), but got shape \(23,\)"):
        load_dataset("mnist", data_dir=tmp_path)


# --- the real Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed at {FASHION_DIR} (Debian package dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    start = time.perf_counter()
    s = load_dataset("fashion-mnist", data_dir=FASHION_DIR)
    elapsed = time.perf_counter() - start
    assert s.sizes == {"train": 55000, "val": 5000, "test": 10000}
    info = dataset_info("fashion-mnist")
    assert (s.input_shape, s.num_outputs, s.classes) == (
        info.input_shape,
        info.num_outputs,
        info.classes,
    )
    assert s.x_train.shape == (55000, 1, 28, 28) and s.x_train.dtype == torch.float32
    # Published statistics of the Fashion-MNIST training set are mean 0.2860, std 0.3530.
    assert abs(s.mean - 0.2860) < 0.001 and abs(s.std - 0.3530) < 0.001
    x = s.x_train.double()
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std(unbiased=False)) - 1) < 1e-6
    assert torch.bincount(s.y_test).tolist() == [1000] * 10
    assert (torch.bincount(s.y_train) + torch.bincount(s.y_val)).tolist() == [6000] * 10
    assert elapsed < 10.0, f"loading took {elapsed:.1f} s; expected ~1 s"
