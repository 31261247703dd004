"""Fashion-MNIST loading (skipped where the dataset is not installed) and the IDX parser (always)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from accel import data


def _write_idx(path, arr: np.ndarray):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        data.read_idx(tmp_path / "bad")


def test_model_space_padding_and_range():
    x = data.to_model_space(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert x.shape == (2, 3, 32, 32)
    assert x[:, :, 2:30, 2:30].eq(1).all() and x[:, :, :2].eq(-1).all() and x[:, :, :, 30:].eq(-1).all()


def test_missing_dataset_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_DATA", str(tmp_path))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(data.DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        data.data_dir()


def test_accel_data_takes_precedence(tmp_path, monkeypatch):
    for imgs, labs in data.FILES.values():
        _write_idx(tmp_path / imgs, np.zeros((20, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / labs, np.arange(20) % 10)
    monkeypatch.setenv("ACCEL_DATA", str(tmp_path))
    x, y = data.load_arrays("test")
    assert x.shape == (20, 3, 32, 32) and y.tolist() == (np.arange(20) % 10).tolist()


def test_split_is_fixed_and_disjoint():
    a, b = data.split_indices(), data.split_indices()
    assert torch.equal(a["train"], b["train"]) and torch.equal(a["val"], b["val"])
    assert len(a["val"]) == data.VAL_SIZE
    assert torch.equal(torch.cat([a["train"], a["val"]]).sort().values, torch.arange(60000))


@pytest.mark.skipif(not data.available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_test_split():
    x, y = data.load_arrays("test")
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y.bincount(), torch.full((10,), 1000))
    assert x.min() == -1 and x.max() == 1
    assert x[:, :, :2].eq(-1).all()  # padding is background
