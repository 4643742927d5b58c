"""The bundled MNIST and its fixed fit / eval split."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from explorer.zoo.mnist import (
    DATA_DIR,
    MNIST_MEAN,
    MNIST_STD,
    ImageDataset,
    calibration_batch,
    load_dataset,
    load_mnist,
    read_idx,
)


def image_hashes(dataset: ImageDataset) -> list[str]:
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in dataset.images]


def raw_idx(stem: str) -> np.ndarray:
    """An IDX file parsed by hand (no checksum), as the oracle for the loader."""
    raw = gzip.decompress((DATA_DIR / f"{stem}.gz").read_bytes())
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 2051:
        return np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 28, 28)
    return np.frombuffer(raw[8:], dtype=np.uint8)


def test_split_sizes_and_shapes(fit_set, eval_set):
    assert len(fit_set) == 10_000 and len(eval_set) == 5_000
    for data, split in ((fit_set, "fit"), (eval_set, "eval")):
        assert data.split == split
        assert data.images.shape == (len(data), 1, 28, 28)
        assert data.images.dtype == torch.float32
        assert data.labels.dtype == torch.int64
        assert data.input_shape == (1, 28, 28)
        assert data.classes == tuple(str(d) for d in range(10))


def test_fit_and_eval_share_no_image(fit_set, eval_set):
    fit, held_out = image_hashes(fit_set), image_hashes(eval_set)
    assert len(set(held_out)) == len(held_out)
    assert not set(fit) & set(held_out)


def test_eval_is_the_odd_test_images_and_fit_the_rest(fit_set, eval_set):
    test_x, test_y = raw_idx("t10k-images-idx3-ubyte"), raw_idx("t10k-labels-idx1-ubyte")
    train_x, train_y = raw_idx("train-5k-images-idx3-ubyte"), raw_idx("train-5k-labels-idx1-ubyte")
    expected_eval = (torch.from_numpy(test_x[1::2].copy()).float() / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(eval_set.images[:, 0], expected_eval)
    assert eval_set.labels.tolist() == test_y[1::2].tolist()
    assert fit_set.labels.tolist() == train_y.tolist() + test_y[0::2].tolist()
    assert np.allclose(fit_set.pixels(0), train_x[0] / 255, atol=1e-6)
    assert np.allclose(fit_set.pixels(5000), test_x[0] / 255, atol=1e-6)


@pytest.mark.parametrize("split", ["fit", "eval"])
def test_labels_are_roughly_balanced(split):
    labels = load_mnist(split).labels
    share = torch.bincount(labels, minlength=10).float() / len(labels)
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert float(share.min()) > 0.07 and float(share.max()) < 0.13


def test_calibration_batch_refuses_the_eval_split(eval_set):
    with pytest.raises(ValueError, match="fit split, never the held-out eval split"):
        calibration_batch(eval_set)


def test_calibration_batch_is_a_fixed_class_mixed_sample_of_fit(fit_set):
    batch = calibration_batch(fit_set, 256, seed=0)
    assert len(batch) == 256 and batch.split == "fit"
    assert torch.equal(batch.images, calibration_batch(fit_set, 256, seed=0).images)
    assert not torch.equal(batch.images, calibration_batch(fit_set, 256, seed=1).images)
    assert len(batch.labels.unique()) == 10
    assert set(image_hashes(batch)) <= set(image_hashes(fit_set))
    assert len(calibration_batch(fit_set.subset(range(10)), 256)) == 10  # capped at the data


def test_unknown_split_and_dataset_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'fit', 'eval'"):
        load_mnist("test")
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*'mnist'"):
        load_dataset("cifar10")
    assert load_dataset("mnist", "eval").labels.tolist() == load_mnist("eval").labels.tolist()


def test_pixels_undo_the_normalisation(eval_set):
    raw = raw_idx("t10k-images-idx3-ubyte")[1]
    assert np.allclose(eval_set.pixels(0), raw / 255, atol=1e-6)
    assert eval_set.pixels(0).shape == (28, 28)


def test_subset_keeps_split_and_metadata(eval_set):
    part = eval_set.subset([3, 1, 4])
    assert len(part) == 3 and part.split == "eval"
    assert torch.equal(part.images[1], eval_set.images[1])
    assert part.labels.tolist() == [eval_set.labels[i].item() for i in (3, 1, 4)]
    assert part.mean == eval_set.mean and part.std == eval_set.std
    assert len(eval_set.subset(range(5, 9))) == 4


def test_dataset_rejects_inconsistent_tensors():
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        ImageDataset("x", "fit", torch.zeros(3, 28, 28), torch.zeros(3, dtype=torch.long), ("a",))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageDataset("x", "fit", torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), ("a",))


def test_read_idx_checks_the_checksum_and_the_magic(tmp_path):
    good = tmp_path / "labels-idx1-ubyte"
    good.write_bytes(struct.pack(">II", 2049, 3) + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="is corrupt"):
        read_idx(good, expected_sha256="0" * 64)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(struct.pack(">II", 1234, 0))
    with pytest.raises(ValueError, match="unknown IDX magic number 1234"):
        read_idx(bad)
