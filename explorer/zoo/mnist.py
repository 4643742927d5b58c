"""Datasets: the bundled MNIST copy with its fixed fit / eval split, behind a small interface.

The split is fixed and documented (README, sample_models/data/README.md):

- **fit** (10,000 images): the 5,000 shipped training images plus the test images at *even*
  indices. Training, fine-tuning and calibration (Taylor, activation criteria) only see this.
- **eval** (5,000 images): the test images at *odd* indices. Nothing ever trains on them.

Interleaving (rather than first/second half) keeps both halves of the official test set, whose
two halves come from different writer populations, in both splits.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DATA_DIR = Path(__file__).resolve().parents[2] / "sample_models" / "data"

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# SHA-256 of the uncompressed IDX files, as published with the shared copy.
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    "train-5k-images-idx3-ubyte": (
        "a4a9358b9ba319305e7cd69b2c7410e463401e152d7e9e60189b94a3f159d012"
    ),
    "train-5k-labels-idx1-ubyte": (
        "704256e87519240fd1d7ecdf681fe209864691e252c6642aeadc21f3c4d44b41"
    ),
}

SPLITS = ("fit", "eval")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels as tensors, ready for a model.

    Attributes:
        name: dataset name, e.g. ``"mnist"``.
        split: ``"fit"`` or ``"eval"``.
        images: float32, shape (N, C, H, W), normalised with ``mean`` / ``std``.
        labels: int64, shape (N,), values in ``range(len(classes))``.
        classes: human-readable class names, index = label.
        mean, std: the normalisation ``images`` carry, to turn them back into pixels for
            display: one number for every channel, or a tuple with one per channel (C,).
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        for what, value in (("mean", self.mean), ("std", self.std)):
            if isinstance(value, tuple) and len(value) not in (1, channels):
                raise ValueError(f"{what} has {len(value)} values for {channels} channel(s)")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, (C, H, W)."""
        return tuple(self.images.shape[1:])

    def pixels(self, index: int) -> np.ndarray:
        """Sample ``index`` as display pixels in [0, 1], shape (H, W) or (H, W, C)."""
        # (C, 1, 1) broadcasts a per-channel tuple and a single number alike
        std = torch.as_tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
        img = (self.images[index] * std + mean).clamp(0, 1).numpy()
        return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)

    def subset(self, indices: torch.Tensor | list[int] | range) -> ImageDataset:
        """A new dataset holding only ``indices`` (same split, classes and normalisation)."""
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices)
        return ImageDataset(
            self.name,
            self.split,
            self.images[idx],
            self.labels[idx],
            self.classes,
            self.mean,
            self.std,
        )


def read_idx(
    path: Path, expected_sha256: str | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Read a (gzipped) IDX file into a uint8 array, (N, H, W) images or (N,) labels.

    Checks its SHA-256 when given, and that the header's counts match the file's length; a
    ``.gz`` that would expand past ``max_bytes`` is refused before it is all in memory.
    Every problem is a ``ValueError`` naming the file.
    """
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                raw = handle.read(-1 if max_bytes is None else max_bytes + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path.name} is not a valid gzip file: {err}") from None
    else:
        raw = path.read_bytes()
    if max_bytes is not None and len(raw) > max_bytes:
        raise ValueError(f"{path.name} is larger than {max_bytes:,} bytes uncompressed")
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ValueError(f"{path.name} is corrupt: its SHA-256 does not match the published one")
    if len(raw) < 8:
        raise ValueError(f"{path.name} is too short for an IDX header ({len(raw)} bytes)")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 2051:
        if len(raw) < 16:
            raise ValueError(f"{path.name} is too short for an IDX image header")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape, offset = (count, rows, cols), 16
    elif magic == 2049:
        shape, offset = (count,), 8
    else:
        raise ValueError(f"{path.name}: unknown IDX magic number {magic}")
    expected = math.prod(shape)
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path.name} is truncated or corrupt: its header says {'x'.join(map(str, shape))} "
            f"({expected:,} bytes) but it holds {len(raw) - offset:,}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _mnist_file(stem: str) -> np.ndarray:
    return read_idx(DATA_DIR / f"{stem}.gz", MNIST_SHA256[stem])


def mnist_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The bundled MNIST ``split`` (``"fit"`` or ``"eval"``) as raw uint8 pixels (N, 28, 28)
    and labels (N,), before any normalisation."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    test_x, test_y = _mnist_file("t10k-images-idx3-ubyte"), _mnist_file("t10k-labels-idx1-ubyte")
    if split == "eval":
        return test_x[1::2], test_y[1::2]
    train_x = _mnist_file("train-5k-images-idx3-ubyte")
    train_y = _mnist_file("train-5k-labels-idx1-ubyte")
    return np.concatenate([train_x, test_x[0::2]]), np.concatenate([train_y, test_y[0::2]])


@lru_cache(maxsize=2)
def _mnist_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_pixels(split)
    images = (torch.from_numpy(x.copy()).float().div_(255) - MNIST_MEAN) / MNIST_STD
    return images.unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def load_mnist(split: str = "eval") -> ImageDataset:
    """The bundled MNIST, ``split`` in ``("fit", "eval")``; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    images, labels = _mnist_split(split)
    return ImageDataset(
        "mnist", split, images, labels, tuple(str(d) for d in range(10)), MNIST_MEAN, MNIST_STD
    )


DATASETS: dict[str, Callable[[str], ImageDataset]] = {"mnist": load_mnist}


def load_dataset(name: str, split: str = "eval") -> ImageDataset:
    """A registered dataset by name; ``split`` in ``("fit", "eval")``."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None
    return loader(split)


def calibration_batch(dataset: ImageDataset, size: int = 256, seed: int = 0) -> ImageDataset:
    """A fixed, class-mixed random batch of ``size`` samples (for Taylor / activation scores)."""
    if dataset.split != "fit":
        raise ValueError("calibration must use the fit split, never the held-out eval split")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[: min(size, len(dataset))]
    return dataset.subset(order)
