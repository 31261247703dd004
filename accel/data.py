"""Fashion-MNIST, the data of accel's bundled zoo (DESIGN.md §2).

Read from the original IDX ``.gz`` files, looked up in ``$ACCEL_DATA`` first, then in
``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``). Nothing is downloaded.

Images are padded 28x28 -> 32x32 (2 pixels of background on each side), repeated to 3 channels and
scaled to [-1, 1]; labels are int64 in 0..9. The validation split is a fixed, seeded permutation of the
training set, so every run and every process sees the same split.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_CLASSES = 10
VAL_SIZE = 5000
SPLIT_SEED = 20241128  # fixed: the train/val split must never change between runs


class DatasetNotFound(FileNotFoundError):
    """Fashion-MNIST is not installed where accel looks for it."""


def data_dir() -> Path:
    """The folder holding the four IDX files: ``$ACCEL_DATA`` if set, else the Debian location."""
    candidates = []
    if os.environ.get("ACCEL_DATA"):
        candidates.append(Path(os.environ["ACCEL_DATA"]))
    candidates.append(SYSTEM_DIR)
    for d in candidates:
        if all((d / f).is_file() for pair in FILES.values() for f in pair):
            return d
    raise DatasetNotFound(
        "Fashion-MNIST not found (looked in " + ", ".join(str(c) for c in candidates) + "). Install it with "
        "`sudo apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist/), or set "
        "ACCEL_DATA to a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.")


def available() -> bool:
    try:
        data_dir()
        return True
    except DatasetNotFound:
        return False


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0x0000 + dtype code + ndim, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX dtype code {raw[2]:#x}")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {data.size}")
    return data.reshape(dims)


def to_model_space(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, 32, 32) float32 in [-1, 1], zero-intensity padding."""
    x = torch.as_tensor(np.array(images_u8, copy=True)).float().div(127.5).sub(1.0)  # (N, 28, 28)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)  # background is black (0 -> -1)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32)


def load_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [-1, 1] and labels (N,) for ``train``, ``val``, ``trainval`` or ``test``."""
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, val, trainval, test")
    d = data_dir()
    img_f, lab_f = FILES["test" if split == "test" else "train"]
    images, labels = read_idx(d / img_f), read_idx(d / lab_f)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{d}: {images.shape[0]} images but {labels.shape[0]} labels")
    x, y = to_model_space(images), torch.as_tensor(labels.astype(np.int64))
    if split in ("train", "val"):
        idx = split_indices(x.shape[0])[split]
        x, y = x[idx], y[idx]
    return x, y


def split_indices(n: int = 60000) -> dict[str, torch.Tensor]:
    """Sorted row indices of the official training file for ``train`` and ``val`` (fixed seed)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return {"train": perm[VAL_SIZE:].sort().values, "val": perm[:VAL_SIZE].sort().values}


def dataset(split: str) -> TensorDataset:
    """A ``TensorDataset`` of (image in [-1, 1], label) for the split (the whole set fits in memory)."""
    return TensorDataset(*load_arrays(split))
