"""Datasets: MNIST and Fashion-MNIST from their idx files, ImageFolder trees, and a tiny synthetic set for tests.

Small datasets live on the training device as uint8 tensors and are batched by indexing (no DataLoader round
trips); normalisation to the model's input space happens per batch on the device. Nothing is downloaded: files are
read where the user points (``--data-dir`` or ``$GENCNN_DATA``), and a bad file is one :class:`DataError` line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["TensorData", "IdxDataset", "IDX_DATASETS", "DATASETS", "load_idx", "find_idx", "load_mnist",
           "find_mnist", "synthetic", "DeviceLoader", "normalizer", "load_dataset", "MNIST_MEAN_STD",
           "DataNotFoundError", "DataError", "dataset_mean_std", "DataSpec", "describe", "make_loader",
           "folder_loader", "folder_classes"]


@dataclass(frozen=True)
class IdxDataset:
    """A dataset shipped as the four idx files of MNIST's format: where to look, its classes and statistics."""

    name: str
    folders: tuple[str, ...]  # sub-folders of a data root that may hold the files
    class_names: tuple[str, ...]
    mean_std: tuple[tuple[float, ...], tuple[float, ...]]  # of the training pixels in [0, 1]


IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_FILES = IDX_FILES
IDX_DATASETS = {
    "mnist": IdxDataset("mnist", ("mnist", "MNIST/raw"), tuple(str(i) for i in range(10)),
                        ((0.1307,), (0.3081,))),
    "fashion-mnist": IdxDataset("fashion-mnist", ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
                                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot"), ((0.2860,), (0.3530,))),
}
DATASETS = (*IDX_DATASETS, "imagefolder", "synthetic")  # the values of TrainConfig.dataset
MNIST_MEAN_STD = IDX_DATASETS["mnist"].mean_std


class DataNotFoundError(FileNotFoundError):
    """A dataset whose files are not where we looked."""


class DataError(ValueError):
    """A data file that cannot be used: truncated, not in the expected format, or inconsistent with its pair."""


@dataclass
class TensorData:
    """Images (N, C, H, W) uint8 and labels (N,) int64, with class names; small enough to live on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.images.to(device), self.labels.to(device), self.class_names)


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip or raw): magic (0, 0, dtype, ndim), big-endian int32 dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a cut-off or corrupt .gz (BadGzipFile is an OSError)
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged: fetch it again") \
            from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header is cut short")
    dims = [int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4)]
    if any(d < 0 for d in dims):
        raise DataError(f"{path} has a negative dimension in its header: {dims}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise DataError(f"{path} is truncated: {arr.size} bytes of data for shape {tuple(dims)}")
    return arr.reshape(tuple(dims))


def _dataset(name: str) -> IdxDataset:
    if name not in IDX_DATASETS:
        raise ValueError(f"unknown idx dataset {name!r}: use one of {', '.join(IDX_DATASETS)}")
    return IDX_DATASETS[name]


def find_idx(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding a dataset's four idx files: ``data_dir`` if given, else ``$GENCNN_DATA``, each as is or
    with the dataset's sub-folders (``mnist``, ``MNIST/raw``; ``fashion-mnist``, ``FashionMNIST/raw``)."""
    spec = _dataset(name)
    root = data_dir if data_dir is not None and str(data_dir) else os.environ.get("GENCNN_DATA")
    roots = [Path(root)] if root else []
    tried = []
    for root in roots:
        for cand in (root, *(root / sub for sub in spec.folders)):
            tried.append(cand)
            if all(_idx_file(cand, f) for f in IDX_FILES[True] + IDX_FILES[False]):
                return cand
    raise DataNotFoundError(_missing_message(spec, tried))


def find_mnist(data_dir: str | Path | None = None) -> Path:
    """The folder holding the MNIST idx files (see :func:`find_idx`)."""
    return find_idx("mnist", data_dir)


def _idx_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / f"{name}.gz", folder / name):
        if cand.is_file():
            return cand
    return None


def _missing_message(spec: IdxDataset, tried: list[Path]) -> str:
    files = ", ".join(f"{n}.gz" for n in IDX_FILES[True] + IDX_FILES[False])
    where = ", ".join(str(p) for p in tried) or "nowhere (no --data-dir and no $GENCNN_DATA)"
    return (f"{spec.name} not found. Looked in: {where}. Put the four files ({files}) in a folder and pass "
            f"--data-dir FOLDER or set GENCNN_DATA=FOLDER (for example GENCNN_DATA=../shared/data).")


def load_idx(name: str, data_dir: str | Path | None = None, train: bool = True) -> TensorData:
    """An idx dataset (``mnist``, ``fashion-mnist``) as uint8 (N, 1, 28, 28) images and int64 labels."""
    spec = _dataset(name)
    folder = find_idx(name, data_dir)
    img_name, lbl_name = IDX_FILES[train]
    img_path, lbl_path = _idx_file(folder, img_name), _idx_file(folder, lbl_name)
    images, labels = _read_idx(img_path), _read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{img_path} / {lbl_path}: expected images (N, H, W) and labels (N,), got shapes "
                        f"{images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels")
    k = len(spec.class_names)
    if labels.size and int(labels.max()) >= k:
        raise DataError(f"{lbl_path} has label {int(labels.max())}; {name} has {k} classes (0-{k - 1})")
    return TensorData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                      list(spec.class_names))


def load_mnist(data_dir: str | Path | None = None, train: bool = True) -> TensorData:
    """MNIST as uint8 (N, 1, 28, 28) tensors from its idx files (nothing is downloaded)."""
    return load_idx("mnist", data_dir, train)


def dataset_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a dataset's training pixels in [0, 1] (the default input normalisation)."""
    return IDX_DATASETS[name].mean_std if name in IDX_DATASETS else ((0.5,), (0.5,))


def synthetic(n: int = 512, num_classes: int = 4, in_chans: int = 1, img_size: int = 16, seed: int = 0,
              train: bool = True) -> TensorData:
    """A learnable toy set: each class is a fixed random prototype image plus noise. Train/test share prototypes."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, in_chans, img_size, img_size, generator=g)
    g.manual_seed(seed + (1 if train else 2))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = protos[labels] * 0.6 + torch.rand(n, in_chans, img_size, img_size, generator=g) * 0.4
    return TensorData((images * 255).round().to(torch.uint8), labels, [f"class{i}" for i in range(num_classes)])


def normalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str):
    """A function uint8 (or [0, 1] float) images -> the model's normalised input space."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    def normalize(images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - m) / s

    return normalize


class DeviceLoader:
    """Batches of an on-device :class:`TensorData`, normalised, reshuffled each epoch from (seed, epoch)."""

    def __init__(self, data: TensorData, batch_size: int, normalize, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.data, self.batch_size, self.normalize = data, batch_size, normalize
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size  # DDP: rank r takes every world_size-th example, equal shares
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.data), self.data.labels.device
        if self.shuffle:  # the same permutation on every rank (seed, epoch), then each rank's share of it
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g).to(device)
        else:
            order = torch.arange(n, device=device)
        if self.world_size > 1:
            order = order[self.rank::self.world_size][: n // self.world_size]
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.normalize(self.data.images[idx]), self.data.labels[idx]


def load_dataset(name: str, data_dir: str | Path | None, train: bool, in_chans: int = 1, img_size: int = 28,
                 num_classes: int | None = None, seed: int = 0) -> TensorData:
    """The in-memory datasets by name: ``mnist``, ``fashion-mnist`` or ``synthetic``. (``imagefolder`` streams; see
    ``folder_loader``.)"""
    if name in IDX_DATASETS:
        data = load_idx(name, data_dir, train=train)
        if in_chans != 1:
            data = TensorData(data.images.expand(-1, in_chans, -1, -1).contiguous(), data.labels, data.class_names)
        if img_size != 28:
            x = torch.nn.functional.interpolate(data.images.float(), size=(img_size, img_size), mode="bilinear")
            data = TensorData(x.round().clamp(0, 255).to(torch.uint8), data.labels, data.class_names)
        return data
    if name == "synthetic":
        return synthetic(n=512 if train else 256, num_classes=num_classes or 4, in_chans=in_chans,
                         img_size=img_size, seed=seed, train=train)
    raise ValueError(f"unknown in-memory dataset {name!r}: use {', '.join(DATASETS)}")


class _MappedImageFolder:
    """torchvision's ImageFolder with the class indices of the training split: a validation split that lacks a
    class keeps the others' indices; a class the training split does not have is an error. A file PIL cannot read
    is a one-line :class:`DataError` naming it."""

    @staticmethod
    def build(split: Path, transform, classes: list[str] | None):
        from torchvision.datasets import ImageFolder

        class Mapped(ImageFolder):
            def find_classes(self, directory):
                found = sorted(e.name for e in os.scandir(directory) if e.is_dir())
                if classes is None:
                    if not found:
                        raise DataError(f"{directory} has no class folders")
                    return found, {c: i for i, c in enumerate(found)}
                unknown = [c for c in found if c not in classes]
                if unknown:
                    raise DataError(f"{directory} has classes the training split does not have: "
                                    f"{', '.join(unknown[:5])}")
                return list(classes), {c: i for i, c in enumerate(classes)}

            def __getitem__(self, index):
                from PIL import Image

                try:
                    return super().__getitem__(index)
                except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
                    raise DataError(f"{self.samples[index][0]} is not a readable image ({type(e).__name__})") \
                        from None

        try:
            return Mapped(str(split), transform=transform, allow_empty=True)
        except FileNotFoundError as e:
            raise DataError(f"{split}: {e}") from None


def folder_classes(root: str | Path) -> list[str]:
    """The class names of an ImageFolder tree: the sub-folders of ``root/train``, sorted."""
    split = Path(root) / "train"
    if not split.is_dir():
        raise DataNotFoundError(f"ImageFolder split not found: {split} (expected {root}/train and {root}/val)")
    names = sorted(e.name for e in os.scandir(split) if e.is_dir())
    if not names:
        raise DataError(f"{split} has no class folders")
    return names


def folder_loader(root: str | Path, train: bool, img_size: int, mean, std, batch_size: int, workers: int,
                  seed: int = 0, rank: int = 0, world_size: int = 1, classes: list[str] | None = None):
    """An ImageFolder tree (``root/train/CLASS/*.jpg``, ``root/val/CLASS/*.jpg``) through a DataLoader; ``classes``
    (the training split's, by default) fix the label indices of both splits. Under DDP the training split goes
    through a DistributedSampler (equal shares, reshuffled by ``set_epoch``)."""
    import torchvision.transforms as T

    split = Path(root) / ("train" if train else "val")
    if not split.is_dir():
        raise DataNotFoundError(f"ImageFolder split not found: {split} (expected {root}/train and {root}/val)")
    classes = classes if classes is not None else folder_classes(root)
    if train:
        tf = T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    else:
        tf = T.Compose([T.Resize(int(img_size / 0.875)), T.CenterCrop(img_size), T.ToTensor(), T.Normalize(mean, std)])
    ds = _MappedImageFolder.build(split, T.Compose([T.Grayscale(1), tf]) if len(mean) == 1 else tf, classes)
    if len(ds) == 0:
        raise DataError(f"{split} holds no images")
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if train and world_size > 1:
        sampler = torch.utils.data.DistributedSampler(ds, world_size, rank, shuffle=True, seed=seed, drop_last=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None,
                                         sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
                                         drop_last=False, generator=g, persistent_workers=workers > 0)
    if sampler is not None:
        loader.set_epoch = sampler.set_epoch  # the trainer calls set_epoch on its loader each epoch
    return loader, ds.classes


@dataclass
class DataSpec:
    """What a dataset implies for a model before any model exists: class names, input channels and side, and the
    default normalisation (its pixel statistics)."""

    name: str
    class_names: list[str]
    in_chans: int
    img_size: int
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None


def describe(name: str, data_dir: str | Path | None, in_chans: int | None = None, img_size: int | None = None,
             num_classes: int | None = None) -> DataSpec:
    """Class names and input defaults of a dataset (reads only folder names and label files)."""
    if name == "imagefolder":
        if data_dir is None:
            raise DataNotFoundError("dataset 'imagefolder' needs data_dir (a folder with train/ and val/)")
        return DataSpec(name, folder_classes(data_dir), in_chans or 3, img_size or 224, None)
    if name == "synthetic":
        k = num_classes or 4
        return DataSpec(name, [f"class{i}" for i in range(k)], in_chans or 1, img_size or 16, ((0.5,), (0.5,)))
    spec = _dataset(name)
    return DataSpec(name, list(spec.class_names), in_chans or 1, img_size or 28, spec.mean_std)


HOLDOUT_SEED = 20_141_219  # one held-out set per dataset, the same for every run (arXiv:1412.6296's date)


def make_loader(name: str, data_dir: str | Path | None, split: str, input_size: tuple[int, int, int], mean, std,
                device: torch.device | str, batch_size: int, *, num_classes: int | None = None, seed: int = 0,
                subset: int | None = None, workers: int = 4, rank: int = 0, world_size: int = 1,
                classes: list[str] | None = None, holdout: int = 0):
    """The batches of one split (``train`` or ``test``) for a model with this input size and normalisation.

    In-memory datasets (MNIST, Fashion-MNIST, synthetic) live on ``device`` and are batched by indexing; the
    training split is shuffled from (seed, epoch) and, under DDP, sharded by rank. Image folders stream through a
    DataLoader (``workers`` processes).

    Args:
        name: ``mnist``, ``fashion-mnist``, ``synthetic`` or ``imagefolder``.
        data_dir: the dataset folder (None: ``$GENCNN_DATA``).
        split: ``train``, ``test`` (an image folder's ``val``) or ``holdout`` (``holdout`` training images chosen
            by a fixed seed, which the ``train`` split then leaves out).
        input_size, mean, std: the model's (C, H, W) and normalisation; images are resized and normalised to fit.
        device: where in-memory datasets and batches live.
        batch_size: examples per batch.
        num_classes: the model's outputs; labels outside [0, num_classes) are a DataError.
        seed: data order (and the synthetic set's content).
        subset: the first N training examples only.
        workers: DataLoader processes for image folders.
        rank, world_size: this process's share of the training split under DDP.
        classes: the training split's class names, which fix an image folder's label indices.
        holdout: the number of training images held out (the ``holdout`` split); 0: none.
    """
    if split not in ("train", "test", "holdout"):
        raise ValueError(f"split must be 'train', 'test' or 'holdout', got {split!r}")
    train = split != "test"
    c, h, _ = input_size
    if name == "imagefolder":
        if data_dir is None:
            raise DataNotFoundError("dataset 'imagefolder' needs data_dir (a folder with train/ and val/)")
        if holdout:
            raise DataError("a held-out split of an image folder is not supported: use auto_rule ess, or another mode")
        loader, _ = folder_loader(data_dir, train, h, mean, std, batch_size, workers, seed=seed,
                                  rank=rank if train else 0, world_size=world_size if train else 1, classes=classes)
        return loader
    data = load_dataset(name, data_dir, train=train, in_chans=c, img_size=h, num_classes=num_classes, seed=seed)
    if holdout and train:
        if holdout >= len(data):
            raise DataError(f"holdout={holdout} leaves nothing to train on ({len(data)} training images)")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        keep = order[holdout:] if split == "train" else order[:holdout]
        data = TensorData(data.images[keep.sort().values], data.labels[keep.sort().values], data.class_names)
    if subset and split == "train":
        data = TensorData(data.images[:subset], data.labels[:subset], data.class_names)
    k = num_classes or len(data.class_names)
    if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= k):
        raise DataError(f"{split} labels span [{int(data.labels.min())}, {int(data.labels.max())}] but the model has "
                        f"num_classes={k}")
    norm = normalizer(mean, std, device)
    if split == "train":
        return DeviceLoader(data.to(device), batch_size, norm, shuffle=True, seed=seed, rank=rank,
                            world_size=world_size)
    return DeviceLoader(data.to(device), batch_size, norm, shuffle=False)
