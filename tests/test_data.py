"""MNIST from the original idx files, the synthetic set and the on-device loader."""

from __future__ import annotations

import gzip

import pytest
import torch

from gencnn_plugin.data import DataNotFoundError, DeviceLoader, find_mnist, load_idx, load_mnist, normalizer, synthetic


def test_mnist_from_the_original_files(data_dir):
    train, test = load_mnist(data_dir, train=True), load_mnist(data_dir, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_missing_mnist_names_files_and_places(tmp_path, monkeypatch):
    monkeypatch.delenv("GENCNN_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte\.gz.*--data-dir"):
        find_mnist(tmp_path)


def test_truncated_idx_file(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)


def test_device_loader_covers_every_example_once_per_epoch():
    data = synthetic(n=50, num_classes=3, img_size=8)
    loader = DeviceLoader(data, 16, normalizer((0.5,), (0.5,), "cpu"), shuffle=True, seed=1)
    assert len(loader) == 4
    seen = torch.cat([y for _, y in loader])
    assert torch.equal(seen.sort().values, data.labels.sort().values)
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    first = [y for _, y in loader]
    loader.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, [y for _, y in loader]))
    loader.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in loader]))


def test_fashion_mnist_from_its_idx_files(data_dir):
    if not (data_dir / "fashion-mnist").is_dir():
        pytest.skip("no Fashion-MNIST under the data folder")
    train, test = load_idx("fashion-mnist", data_dir, train=True), load_idx("fashion-mnist", data_dir, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # balanced test set
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    pixels = train.images.float() / 255  # the statistics recorded as its default normalisation
    assert abs(pixels.mean() - 0.2860) < 1e-3 and abs(pixels.std() - 0.3530) < 1e-3


def test_an_explicit_data_dir_is_the_only_place_looked(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("GENCNN_DATA", str(data_dir))  # MNIST is there, but the user named another folder
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        find_mnist(tmp_path)
    assert find_mnist(None).is_dir()
