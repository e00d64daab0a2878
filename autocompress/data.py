"""Data sets and splits: Fashion-MNIST (IDX files), an image folder, or a user's callable.

The training set is split (seeded) into a training part and a validation part: the search only
ever sees validation accuracy; the test split is for the baseline and final reports.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ._files import content_key
from .config import DataConfig
from .errors import DataError
from .models import load_callable
from .training import materialize

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class DataBundle:
    """The splits a search uses, with the subsets the config asks for already applied."""

    train: Dataset
    val: Dataset
    test: Dataset | None  # (None: a Python search given no test split; export asks for one)
    num_classes: int
    input_shape: tuple[int, ...]
    train_full: Dataset

    @classmethod
    def from_datasets(
        cls, train: Dataset, val: Dataset, test: Dataset | None = None, num_classes: int = 0
    ) -> DataBundle:
        """A user's own splits (any ``Dataset`` of ``(input, label)`` pairs), used as given."""
        for name, ds in (("train", train), ("val", val), ("test", test)):
            if ds is not None and len(ds) == 0:
                raise DataError(f"{name}: the data set is empty")
        n = num_classes or _num_classes(train)
        return cls(train, val, test, n, tuple(val[0][0].shape), train)

    def digest(self) -> str:
        """Content hash of the splits (tensors when they are in memory, else types and sizes):
        what caches keyed by the data use for a user's own data sets."""
        parts: list = []
        for ds in (self.train, self.val, self.test):
            tensors = None if ds is None else materialize(ds)
            if tensors is None:
                parts.append([type(ds).__name__, len(ds) if ds is not None else 0])
            else:
                parts.append([content_key(t.numpy().tobytes()) for t in tensors])
        return content_key(parts)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        x = self.val[0][0]
        return torch.zeros((batch_size, *x.shape), dtype=x.dtype)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; corrupt files raise DataError."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: corrupt IDX file: header says {shape} ({expected} bytes), "
            f"found {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _fashion_mnist_root(cfg: DataConfig) -> Path:
    if cfg.root is not None:
        return Path(cfg.root)
    env = os.environ.get("AUTOCOMPRESS_DATA")
    return Path(env) if env else DEFAULT_FASHION_MNIST_ROOT


def check_available(cfg: DataConfig) -> None:
    """Raise DataError (one line saying how to get the data) when the files are not there."""
    if cfg.dataset == "fashion_mnist":
        root = _fashion_mnist_root(cfg)
        if missing := [f for f in _FMNIST_FILES.values() if not (root / f).is_file()]:
            raise DataError(
                f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): "
                "run 'apt-get install dataset-fashion-mnist', or set data.root or "
                "$AUTOCOMPRESS_DATA to a folder with the four IDX .gz files"
            )
    elif cfg.dataset == "image_folder":
        if cfg.root is None:
            raise DataError("data.root must name a folder with train/ and test/ sub-folders")
        for split in ("train", "test"):
            if not (Path(cfg.root) / split).is_dir():
                raise DataError(
                    f"{Path(cfg.root) / split}: folder not found "
                    "(image_folder wants train/ and test/)"
                )


def _fashion_mnist(cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    check_available(cfg)
    root = _fashion_mnist_root(cfg)
    arrays = {k: read_idx(root / f) for k, f in _FMNIST_FILES.items()}

    def _make(images: np.ndarray, labels: np.ndarray, which: str) -> TensorDataset:
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{root}: {which} images {images.shape} and labels {labels.shape} differ"
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        x = (x - _FMNIST_MEAN) / _FMNIST_STD
        return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))

    train = _make(arrays["train_images"], arrays["train_labels"], "train")
    test = _make(arrays["test_images"], arrays["test_labels"], "test")
    return train, test, 10


def _image_folder(cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    from torchvision import datasets, transforms

    check_available(cfg)
    root = Path(cfg.root)
    size = cfg.kwargs.get("image_size", 28)
    gray = [transforms.Grayscale(1)] if cfg.kwargs.get("grayscale", True) else []
    tf = transforms.Compose([transforms.Resize((size, size)), *gray, transforms.ToTensor()])
    train = datasets.ImageFolder(str(root / "train"), transform=tf)
    test = datasets.ImageFolder(str(root / "test"), transform=tf)
    return train, test, len(train.classes)


def _user_data(cfg: DataConfig) -> tuple[Dataset, Dataset, int]:
    fn = load_callable(cfg.dataset, what="data.dataset")
    try:
        result = fn(**cfg.kwargs)
    except Exception as exc:  # noqa: BLE001 - user code: report, don't crash
        raise DataError(f"data.dataset {cfg.dataset}: raised {type(exc).__name__}: {exc}") from None
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        raise DataError(
            f"data.dataset {cfg.dataset}: must return (train, test) or (train, test, num_classes)"
        )
    train, test = result[0], result[1]
    num_classes = result[2] if len(result) == 3 else None
    return train, test, int(num_classes or _num_classes(train))


def _num_classes(ds: Dataset) -> int:
    """1 + the largest label among (up to) the first 2000 examples; 0 when the targets are
    not class labels (a task with its own metric)."""
    try:
        return max(int(ds[i][1]) for i in range(min(len(ds), 2000))) + 1
    except (TypeError, ValueError, RuntimeError):
        return 0


def _take(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured data set and split it.

    ``train`` has the config's ``train_subset`` applied (per-trial fine-tuning), ``train_full`` is
    the whole training part (baseline training); validation and test subsets are always applied.
    """
    source = {"fashion_mnist": _fashion_mnist, "image_folder": _image_folder}
    train_all, test, num_classes = source.get(cfg.dataset, _user_data)(cfg)
    n = len(train_all)
    if n < 2:
        raise DataError(f"data set {cfg.dataset} has only {n} training examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = max(1, int(round(cfg.val_fraction * n)))
    val = Subset(train_all, perm[:n_val])
    train_full = Subset(train_all, perm[n_val:])
    train = _take(train_full, cfg.train_subset, cfg.seed + 1)
    val = _take(val, cfg.val_subset, cfg.seed + 2)
    test = _take(test, cfg.test_subset, cfg.seed + 3)
    return DataBundle(train, val, test, num_classes, tuple(val[0][0].shape), train_full)
