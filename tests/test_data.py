from __future__ import annotations

import gzip

import pytest
import torch

from autocompress.config import DataConfig
from autocompress.data import load_data, read_idx
from autocompress.errors import DataError


def test_fashion_mnist_split_is_seeded_and_disjoint(fmnist_root):
    cfg = DataConfig(root=fmnist_root, val_fraction=0.2, seed=1, train_subset=100, val_subset=50)
    a, b = load_data(cfg), load_data(cfg)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert len(a.train) == 100 and len(a.val) == 50 and len(a.train_full) == 1200
    assert a.val.indices == b.val.indices
    val_idx = {a.val.dataset.indices[i] for i in a.val.indices}
    assert val_idx.isdisjoint(set(a.train_full.indices))
    c = load_data(cfg.model_copy(update={"seed": 2}))
    assert c.val.indices != a.val.indices


def test_env_var_root(fmnist_root, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_DATA", str(fmnist_root))
    assert len(load_data(DataConfig()).test) == 400


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(root=tmp_path))


def test_corrupt_idx(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + b"\x00" * 20)
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(p)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(p)


def user_data(n: int = 50):
    x = torch.randn(n, 1, 8, 8)
    y = torch.arange(n) % 3
    ds = torch.utils.data.TensorDataset(x, y)
    return ds, ds


def test_user_callable_data():
    bundle = load_data(
        DataConfig(dataset="test_data:user_data", kwargs={"n": 40}, val_fraction=0.25)
    )
    assert bundle.num_classes == 3 and bundle.input_shape == (1, 8, 8)
    assert len(bundle.val) == 10 and len(bundle.train) == 30
