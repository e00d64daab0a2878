"""Shared fixtures: a small synthetic data set in Fashion-MNIST's IDX format, and a tiny
experiment (TinyCNN, a few trials) writing into a temporary folder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each class lights a different 7x7 block and has its own brightness (learnable in a few
    steps, also after global pooling) plus noise."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.int32)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i] += 12 * int(c)
        images[i, r * 7 : r * 7 + 7, q * 7 : q * 7 + 7] += 100
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1500), ("t10k", 400)):
        images, labels = _synthetic(n, rng)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_config(tmp: Path, fmnist_root: Path, **overrides) -> Path:
    """Write a tiny experiment YAML into ``tmp`` and return its path."""
    cfg = {
        "name": "tiny",
        "model": {"name": "tiny_cnn", "num_classes": 10},
        "data": {
            "dataset": "fashion_mnist",
            "root": str(fmnist_root),
            "val_fraction": 0.2,
            "batch_size": 64,
            "train_subset": 400,
            "val_subset": 200,
        },
        "baseline": {"epochs": 2, "lr": 0.05},
        "search": {
            "n_trials": 3,
            "sampler": "nsga2",
            "seed": 0,
            "screen_trials": 8,
            "screen_images": 100,
        },
        "finetune": {"steps": 5, "lr": 0.01},
        "search_space": str(REPO / "search_spaces" / "tiny_cnn.yaml"),
        "output_dir": str(tmp / "out"),
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
