"""The Fashion-MNIST loader: the IDX format, the order of places it looks, and the files'
digests."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from service import datasets
from service.datasets import FILES, load_from_directory, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_the_loaded_data_set_is_the_full_fashion_mnist(dataset):
    assert dataset.train_images.shape == (60_000, 28, 28)
    assert dataset.test_images.shape == (10_000, 28, 28)
    assert sorted(np.unique(dataset.train_labels)) == list(range(10))


def write_data_set(directory: Path, count: int, *, value: int = 0, gzipped: bool = False) -> None:
    """The four files of a data set of `count` images, each pixel and label `value`."""
    for key, stem in FILES.items():
        shape = (count, 28, 28) if key.endswith("images") else (count,)
        path = directory / stem
        write_idx(path, np.full(shape, value, np.uint8))
        if gzipped:
            path.with_name(f"{stem}.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def test_read_idx_reads_plain_and_gzipped_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "plain", array)
    (tmp_path / "zipped.gz").write_bytes(gzip.compress((tmp_path / "plain").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "plain"), array)
    assert np.array_equal(read_idx(tmp_path / "zipped.gz"), array)


def test_read_idx_refuses_a_truncated_file(tmp_path):
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="holds 5 values"):
        read_idx(tmp_path / "short")


def test_explicit_directory_comes_before_the_debian_package(tmp_path):
    write_data_set(tmp_path, 3, value=7)
    datasets.load_fashion_mnist.cache_clear()
    loaded = datasets.load_fashion_mnist(tmp_path)
    assert loaded.train_images.shape == (3, 28, 28) and loaded.test_labels.tolist() == [7, 7, 7]
    datasets.load_fashion_mnist.cache_clear()


def test_keras_cache_is_used_when_no_other_copy_exists(tmp_path, monkeypatch):
    cache = tmp_path / "keras-cache"
    cache.mkdir()
    write_data_set(cache, 5, gzipped=True)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(datasets, "KERAS_CACHE_DIR", cache)
    datasets.load_fashion_mnist.cache_clear()
    try:
        assert datasets.candidate_directories(None) == [tmp_path / "absent", cache]
        assert datasets.load_fashion_mnist().train_images.shape == (5, 28, 28)
    finally:
        datasets.load_fashion_mnist.cache_clear()


def test_missing_files_make_a_directory_unusable(tmp_path):
    write_idx(tmp_path / FILES["train_images"], np.zeros((1, 28, 28), np.uint8))
    assert load_from_directory(tmp_path) is None


def test_the_test_images_and_the_digests_come_from_the_files_the_data_set_was_read_from(
    tmp_path,
):
    write_data_set(tmp_path, 4, value=3, gzipped=True)
    loaded = load_from_directory(tmp_path)
    assert {path.name for path in loaded.files} == {f"{stem}.gz" for stem in FILES.values()}
    digests = datasets.data_digests(loaded)
    labels = tmp_path / f"{FILES['test_labels']}.gz"
    assert digests[labels.name] == hashlib.sha256(labels.read_bytes()).hexdigest()
    datasets.load_test_images.cache_clear()
    try:
        assert np.array_equal(datasets.load_test_images(tmp_path), loaded.test_images)
    finally:
        datasets.load_test_images.cache_clear()
