"""Loading a dataset from a DataSpec: formats, the split, preprocessing and every bad input.

Everything is built in tmp_path from small synthetic images; the oracles are numpy / PIL /
torch computations written out here, never the loader itself.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import pickle
import stat
import struct
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from explorer.engine.subject import DataSpec, ModelSource
from explorer.loading import data as loader
from explorer.loading.archives import check_members, extract_zip
from explorer.loading.data import FORMATS, LoadedData, load_data, stratified_split
from explorer.loading.errors import LoadError
from explorer.zoo.mnist import ImageDataset, load_mnist, mnist_pixels

FUZZ = settings(max_examples=40, deadline=None)


# --- builders -------------------------------------------------------------------------------


def load(path: Path | str, preprocessing: dict | None = None, **spec) -> LoadedData:
    return load_data(DataSpec(str(path), **spec), resolve=Path, preprocessing=preprocessing)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def indexed_images(n: int, shape: tuple[int, ...] = (4, 5)) -> np.ndarray:
    """uint8 images whose first pixel is their index (so an image tells where it came from)."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n)
    return images


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def image_folder(root: Path, tree: dict[str, list[np.ndarray]]) -> Path:
    for name, images in tree.items():
        for i, pixels in enumerate(images):
            save_image(root / name / f"{i:03d}.png", pixels)
    return root


def zip_tree(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">II", 2051 if array.ndim == 3 else 2049, len(array))
    if array.ndim == 3:
        header += struct.pack(">II", *array.shape[1:])
    return header + array.astype(np.uint8).tobytes()


def cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch as torchvision's CIFAR-10 python files hold it (a pickled dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {"batch_label": "test", "data": images.reshape(len(images), -1), "labels": labels}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def hand_normalised(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(N, C, H, W) uint8 -> the expected float tensor, written out per channel."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


# --- formats --------------------------------------------------------------------------------


def test_npz_grey_pixel_is_the_hand_computed_value(tmp_path):
    images = np.zeros((20, 6, 7), np.uint8)
    images[:, 2, 3] = 51
    labels = np.repeat([0, 1], 10)
    data = load(write_npz(tmp_path / "d.npz", images=images, labels=labels), mean=0.5, std=0.25)
    assert data.fit.images.shape == (14, 1, 6, 7) and data.eval.images.shape == (6, 1, 6, 7)
    assert data.fit.classes == ("0", "1") and data.fit.split == "fit"
    assert data.fit.labels.dtype == torch.int64 and data.fit.images.dtype == torch.float32
    assert torch.allclose(data.fit.images[:, 0, 2, 3], torch.tensor(-1.2))  # (0.2 - 0.5) / 0.25
    assert torch.allclose(data.eval.images[:, 0, 0, 0], torch.tensor(-2.0))  # (0 - 0.5) / 0.25
    assert data.fit.labels.tolist() == labels[list(data.fit_indices)].tolist()
    assert data.fit.mean == (0.5,) and data.fit.std == (0.25,)


def test_npz_channels_last_and_first_give_the_same_hand_computed_tensor(tmp_path):
    first = indexed_images(30, (3, 5, 4))  # N×C×H×W
    labels = np.arange(30) % 3
    names = np.array(["cat", "dog", "fox"])
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    a = load(
        write_npz(
            tmp_path / "a.npz", images=first.transpose(0, 2, 3, 1), labels=labels, classes=names
        ),
        mean=mean,
        std=std,
    )
    b = load(
        write_npz(tmp_path / "b.npz", images=first, labels=labels, classes=names),
        mean=mean,
        std=std,
    )
    expected = hand_normalised(first[list(a.fit_indices)], mean, std)
    assert a.fit.images.shape == (len(a.fit), 3, 5, 4)
    assert torch.allclose(a.fit.images, expected, atol=1e-6)
    assert torch.equal(a.fit.images, b.fit.images) and torch.equal(a.eval.images, b.eval.images)
    assert a.fit.classes == ("cat", "dog", "fox")
    # pixels() undoes the per-channel normalisation
    i = a.fit_indices[0]
    assert np.allclose(a.fit.pixels(0), first[i].transpose(1, 2, 0) / 255, atol=1e-6)


def test_npz_float_pixels_are_taken_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((12, 4, 4)).astype(np.float32)
    data = load(
        write_npz(tmp_path / "f.npz", images=images, labels=np.arange(12) % 2), mean=0.0, std=1.0
    )
    assert torch.equal(data.fit.images[:, 0], torch.from_numpy(images[list(data.fit_indices)]))


def test_image_folder_labels_from_sorted_names_and_junk_skipped(tmp_path):
    rng = np.random.default_rng(1)
    tree = {
        name: [rng.integers(0, 256, (5, 6), dtype=np.uint8) for _ in range(4)]
        for name in ("zebra", "ant", "moose")
    }
    root = image_folder(tmp_path / "animals", tree)
    save_image(root / "ant" / "nested" / "extra.png", tree["ant"][0])
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "moose" / "Thumbs.db").write_bytes(b"junk")
    (root / "moose" / "._000.png").write_bytes(b"AppleDouble")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "x.txt").write_text("junk")

    data = load(root, mean=0.0, std=1.0)
    assert data.fit.classes == ("ant", "moose", "zebra")
    # source order: classes sorted, then files sorted (recursively), as torchvision does
    order = [(0, p) for p in tree["ant"]] + [(0, tree["ant"][0])]
    order += [(1, p) for p in tree["moose"]] + [(2, p) for p in tree["zebra"]]
    for part, indices in ((data.fit, data.fit_indices), (data.eval, data.eval_indices)):
        assert part.labels.tolist() == [order[i][0] for i in indices]
        expected = torch.stack([torch.from_numpy(order[i][1] / 255.0).float() for i in indices])
        assert torch.allclose(part.images[:, 0], expected, atol=1e-6)
    assert any("3 classes" in n and "13 images" in n and "skipped 4" in n for n in data.notes)


def test_image_folder_mixed_grey_and_colour_become_rgb(tmp_path):
    rng = np.random.default_rng(2)
    grey = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(3)]
    colour = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    data = load(image_folder(tmp_path / "m", {"g": grey, "c": colour}), mean=0.0, std=1.0)
    assert data.fit.classes == ("c", "g") and data.fit.images.shape[1:] == (3, 4, 4)
    source = colour + grey  # class "c" (label 0) first
    for part, indices in ((data.fit, data.fit_indices), (data.eval, data.eval_indices)):
        for image, i in zip(part.images, indices, strict=True):
            pixels = source[i] if source[i].ndim == 3 else np.repeat(source[i][..., None], 3, -1)
            expected = torch.from_numpy(pixels.transpose(2, 0, 1) / 255.0).float()
            assert torch.allclose(image, expected, atol=1e-6)
    assert any("Grey images repeated to 3 channels" in n for n in data.notes)


def test_image_modes_16_bit_grey_and_rgba(tmp_path):
    deep = np.array([[0, 65535], [256, 30000]], np.uint16)
    rgba = np.random.default_rng(9).integers(0, 256, (2, 2, 4), dtype=np.uint8)
    for name, pixels in (("deep", deep), ("alpha", rgba)):
        for path in ("a/0.png", "a/1.png", "b/0.png", "b/1.png"):
            save_image(tmp_path / name / path, pixels)
    assert Image.open(tmp_path / "deep" / "a" / "0.png").mode.startswith("I;16")
    expected = torch.from_numpy(deep / 65535.0).float()  # convert("L") would clip to 255
    for _, image in both_parts(load(tmp_path / "deep", mean=0.0, std=1.0)):
        assert torch.allclose(image[0], expected)
    expected = torch.from_numpy(rgba[..., :3].transpose(2, 0, 1) / 255.0).float()
    for _, image in both_parts(load(tmp_path / "alpha", mean=0.0, std=1.0)):
        assert torch.allclose(image, expected)  # alpha dropped, colours kept
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "alpha" / "b" / "2.tif")
    with pytest.raises(LoadError, match=r"b/2\.tif has 32-bit pixels"):
        load(tmp_path / "alpha")


def both_parts(data: LoadedData) -> list[tuple[int, torch.Tensor]]:
    """(label, image) of every image of both parts."""
    return [
        (int(y), x)
        for part in (data.fit, data.eval)
        for x, y in zip(part.images, part.labels, strict=True)
    ]


@pytest.mark.parametrize("prefix", ["", "dataset/"])
def test_zip_equals_the_folder_it_holds(tmp_path, prefix):
    rng = np.random.default_rng(3)
    tree = {c: [rng.integers(0, 256, (3, 3), dtype=np.uint8) for _ in range(5)] for c in "ab"}
    root = image_folder(tmp_path / "tree", tree)
    (root / "a" / ".hidden.png").write_bytes(b"junk")
    archive = zip_tree(root, tmp_path / "tree.zip", prefix)
    from_zip, from_folder = load(archive), load(root)
    assert from_zip.fit_indices == from_folder.fit_indices
    assert torch.equal(from_zip.fit.images, from_folder.fit.images)
    assert torch.equal(from_zip.eval.images, from_folder.eval.images)
    assert from_zip.fit.classes == ("a", "b")


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_train_test_tree_is_an_official_split(tmp_path, held_out):
    rng = np.random.default_rng(4)
    train = {c: [rng.integers(0, 256, (3, 3), dtype=np.uint8) for _ in range(4)] for c in "ab"}
    test = {c: [rng.integers(0, 256, (3, 3), dtype=np.uint8) for _ in range(2)] for c in "bc"}
    image_folder(tmp_path / "ds" / "train", train)
    image_folder(tmp_path / "ds" / held_out, test)
    data = load(zip_tree(tmp_path / "ds", tmp_path / "ds.zip", "top/"), mean=0.0, std=1.0)
    assert data.fit_indices is None and data.eval_indices is None
    assert data.fit.classes == ("a", "b", "c")
    assert data.fit.labels.tolist() == [0] * 4 + [1] * 4
    assert data.eval.labels.tolist() == [1] * 2 + [2] * 2
    expected = np.stack(train["a"] + train["b"]) / 255.0
    assert torch.allclose(data.fit.images[:, 0], torch.from_numpy(expected).float(), atol=1e-6)
    assert any("without eval images: a" in n for n in data.notes)


def test_cifar_folder_with_meta_is_an_official_split(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "download" / "cifar-10-batches-py"
    batches = [rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8) for _ in range(3)]
    cifar_batch(folder / "data_batch_1", batches[0], [0, 1, 2, 0])
    cifar_batch(folder / "data_batch_2", batches[1], [1, 2, 0, 1])
    cifar_batch(folder / "test_batch", batches[2], [2, 2, 1, 0])
    meta = {"label_names": ["plane", "car", "bird"], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    data = load(tmp_path / "download", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert data.fit.classes == ("plane", "car", "bird") and data.fit_indices is None
    assert data.fit.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert data.eval.labels.tolist() == [2, 2, 1, 0]
    assert torch.allclose(
        data.fit.images, hand_normalised(np.concatenate(batches[:2]), (0.5,) * 3, (0.5,) * 3)
    )
    assert torch.allclose(data.eval.images, hand_normalised(batches[2], (0.5,) * 3, (0.5,) * 3))


def py2_string(text: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle protocol 2 writes it (SHORT_BINSTRING / BINSTRING)."""
    size = bytes([len(text)]) if len(text) < 256 else struct.pack("<I", len(text))
    return (b"U" if len(text) < 256 else b"T") + size + text


PY2_DTYPE_STATE = b"K\x03" + py2_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"


def py2_cifar(
    rows: np.ndarray, labels: list[int], dtype: bytes = b"u1", dtype_state: bytes = PY2_DTYPE_STATE
) -> bytes:
    """A batch byte for byte as CIFAR-10's own files are: Python 2 cPickle, protocol 2, the
    pixels a ``str``, numpy named ``numpy.core`` (the real files cannot be downloaded here)."""
    out = b"\x80\x02}(" + py2_string(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
    out += py2_string(b"b") + b"\x87R(K\x01K" + bytes([len(rows)]) + b"M\x00\x0c\x86"
    out += b"cnumpy\ndtype\n" + py2_string(dtype) + b"K\x00K\x01\x87R(" + dtype_state + b"tb"
    out += b"\x89" + py2_string(rows.tobytes()) + b"tb" + py2_string(b"labels")
    return out + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."


def test_cifar_batches_as_python2_wrote_them(tmp_path):
    rows = np.random.default_rng(8).integers(0, 256, (4, 3072), dtype=np.uint8)
    # the hand-made batch is what a plain unpickler reads as CIFAR (the oracle for the format)
    reference = pickle.loads(py2_cifar(rows[:2], [1, 0]), encoding="latin1")
    assert np.array_equal(reference["data"], rows[:2]) and reference["labels"] == [1, 0]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(py2_cifar(rows[:2], [1, 0]))
    (folder / "test_batch").write_bytes(py2_cifar(rows[2:], [0, 1]))
    data = load(folder, mean=0.0, std=1.0)
    assert data.fit.labels.tolist() == [1, 0] and data.eval.labels.tolist() == [0, 1]
    assert data.fit.classes == ("0", "1")  # no batches.meta: numbered
    expected = torch.from_numpy(rows[2:].reshape(2, 3, 32, 32) / 255.0).float()
    assert torch.allclose(data.eval.images, expected)


@pytest.mark.parametrize(
    ("dtype", "state", "message"),
    [
        (b"O8", PY2_DTYPE_STATE, "refusing the dtype 'O8'"),
        (b"V8", PY2_DTYPE_STATE, "refusing the dtype 'V8'"),
        (b"u1", b"K\x03" + py2_string(b"?") + b"NNN", "malformed dtype state"),
    ],
)
def test_crafted_numpy_states_are_refused(tmp_path, dtype, state, message):
    (tmp_path / "data_batch_1").write_bytes(
        py2_cifar(np.zeros((2, 3072), np.uint8), [0, 1], dtype, state)
    )
    with pytest.raises(LoadError, match=rf"data_batch_1 is not a valid CIFAR batch: {message}"):
        load(tmp_path)


def test_a_dtype_state_that_crashes_numpy_never_reaches_it(tmp_path):
    """A one-byte edit of a valid batch, found by fuzzing, on which numpy's own
    ``dtype.__setstate__`` segfaults the interpreter (numpy 2.4): None -> BININT2 makes the
    dtype's subarray slot a number."""
    batch = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    at = batch.index(b"X\x01\x00\x00\x00|") + 8  # past the byte order '|' and its BINPUT
    assert batch[at : at + 1] == b"N"
    (tmp_path / "test_batch").write_bytes(batch[:at] + b"M" + batch[at + 1 :])
    with pytest.raises(LoadError, match="refusing a structured dtype"):
        load(tmp_path)


class Exploit:
    """Runs a shell command when unpickled by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_cifar_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar"
    cifar_batch(folder / "test_batch", np.zeros((2, 3, 32, 32), np.uint8), [0, 1])
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Exploit(marker)}, protocol=2))
    with pytest.raises(LoadError, match=r"data_batch_1 asks for (posix|os|nt)\.system.*refusing"):
        load(folder)
    assert not marker.exists()
    (folder / "data_batch_1").write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(LoadError, match=r"(builtins|__builtin__)\.eval"):
        load(folder)


@pytest.mark.parametrize("compressed", [True, False])
def test_idx_folder_is_an_official_split_with_numbered_classes(tmp_path, compressed):
    rng = np.random.default_rng(6)
    train_x, test_x = (rng.integers(0, 256, (n, 5, 5), dtype=np.uint8) for n in (9, 4))
    train_y, test_y = np.array([0, 1, 2] * 3), np.array([2, 1, 0, 1])
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for name, array in (
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ):
        raw = idx_bytes(array)
        if compressed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    data = load(tmp_path / "MNIST", mean=0.0, std=1.0)
    assert data.fit.classes == ("0", "1", "2") and data.eval_indices is None
    assert data.fit.labels.tolist() == train_y.tolist()
    assert data.eval.labels.tolist() == test_y.tolist()
    assert torch.allclose(data.eval.images[:, 0], torch.from_numpy(test_x / 255.0).float())


def test_mnist_is_exactly_the_bundled_split():
    data = load_data(DataSpec())
    assert data.fit_indices is None and data.eval_indices is None
    for part, split in ((data.fit, "fit"), (data.eval, "eval")):
        reference = load_mnist(split)
        assert torch.equal(part.images, reference.images)
        assert torch.equal(part.labels, reference.labels)
        assert (part.mean, part.std, part.classes) == (
            reference.mean,
            reference.std,
            reference.classes,
        )
    # the model's preprocessing does not change the bundled data unless the spec does
    again = load_data(DataSpec(), preprocessing={"size": (32, 32), "mean": (0.5,), "std": (0.5,)})
    assert torch.equal(again.eval.images, data.eval.images)


def test_mnist_with_a_spec_is_resized_and_repeated_to_rgb():
    data = load_data(DataSpec(size=(32, 32), channels=3, mean=(0.5,), std=(0.25,)))
    pixels, labels = mnist_pixels("eval")
    assert data.eval.images.shape == (5000, 3, 32, 32)
    assert data.eval.labels.tolist() == labels.tolist()
    x = torch.from_numpy(pixels[:3, None].astype(np.float32) / 255)
    expected = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.25
    assert torch.allclose(data.eval.images[:3], expected.expand(-1, 3, -1, -1), atol=1e-6)


# --- the split and the caps ---------------------------------------------------------------


def split_source(tmp_path: Path, counts: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    rng = np.random.default_rng(7)
    labels = rng.permutation(labels)
    images = np.zeros((len(labels), 2, 2), np.uint8)
    images[:, 0, 0] = np.arange(len(labels))  # each image carries its position
    return write_npz(tmp_path / "s.npz", images=images, labels=labels), labels


def test_stratified_split_counts_disjointness_and_seed(tmp_path):
    path, labels = split_source(tmp_path, (10, 7, 3, 1, 2))
    data = load(path, eval_fraction=0.3, seed=1, mean=0.0, std=1.0)
    fit, held = set(data.fit_indices), set(data.eval_indices)
    assert not fit & held and fit | held == set(range(len(labels)))
    per_class = np.bincount(labels[list(data.eval_indices)], minlength=5).tolist()
    assert per_class == [3, 2, 1, 0, 1]  # round half up of 0.3 * n, 1..n-1 when n >= 2
    # the images are the ones the indices name: no eval image is ever in fit
    assert (data.fit.images[:, 0, 0, 0] * 255).round().long().tolist() == list(data.fit_indices)
    assert (data.eval.images[:, 0, 0, 0] * 255).round().long().tolist() == list(data.eval_indices)
    assert load(path, eval_fraction=0.3, seed=1).eval_indices == data.eval_indices
    assert load(path, eval_fraction=0.3, seed=2).eval_indices != data.eval_indices


@FUZZ
@given(
    counts=st.lists(st.integers(1, 30), min_size=2, max_size=6),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_property(counts, fraction, seed):
    labels = np.random.default_rng(seed).permutation(
        np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    )
    fit, held = stratified_split(labels, fraction, seed)
    assert np.intersect1d(fit, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([fit, held])), np.arange(len(labels)))
    for c, n in enumerate(counts):
        expected = min(max(math.floor(fraction * n + 0.5), 1), n - 1) if n >= 2 else 0
        assert int((labels[held] == c).sum()) == expected
    again = stratified_split(labels, fraction, seed)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], held)


def test_caps_take_a_stratified_seeded_subsample(tmp_path, monkeypatch):
    path, labels = split_source(tmp_path, (40, 20))
    full = load(path)
    monkeypatch.setattr(loader, "FIT_CAP", 12)
    monkeypatch.setattr(loader, "EVAL_CAP", 6)
    data = load(path)
    assert (len(data.fit), len(data.eval)) == (12, 6)
    assert set(data.fit_indices) <= set(full.fit_indices)
    assert set(data.eval_indices) <= set(full.eval_indices)
    assert np.bincount(labels[list(data.fit_indices)]).tolist() == [8, 4]
    assert np.bincount(labels[list(data.eval_indices)]).tolist() == [4, 2]
    assert load(path).fit_indices == data.fit_indices
    assert any("fit part was subsampled to 12 of 42" in n for n in data.notes)
    small = load_data(DataSpec(str(path)), resolve=Path, max_images=9)
    assert len(small.fit) + len(small.eval) == 9
    monkeypatch.setattr(loader, "MAX_TENSOR_BYTES", 5 * 2 * 2 * 4)  # room for five 2×2 images
    tight = load(path)
    assert len(tight.fit) + len(tight.eval) == 5 and any("GiB" in n for n in tight.notes)


# --- preprocessing ------------------------------------------------------------------------


def test_resize_matches_torch_interpolate(tmp_path):
    images = indexed_images(10, (8, 8))
    path = write_npz(tmp_path / "r.npz", images=images, labels=np.arange(10) % 2)
    for size in ((4, 6), (12, 10)):
        data = load(path, size=size, mean=0.0, std=1.0)
        x = torch.from_numpy(images[list(data.fit_indices), None].astype(np.float32) / 255)
        shrink = size[0] < 8 or size[1] < 8
        expected = F.interpolate(x, size=size, mode="bilinear", antialias=shrink)
        assert data.fit.images.shape[-2:] == size
        assert torch.allclose(data.fit.images, expected, atol=1e-6)


def test_channel_conversion(tmp_path):
    rgb = indexed_images(8, (4, 4, 3))
    path = write_npz(tmp_path / "c.npz", images=rgb, labels=np.arange(8) % 2)
    grey = load(path, channels=1, mean=0.0, std=1.0)
    expected = torch.from_numpy(rgb[list(grey.fit_indices)].astype(np.float32) / 255).mean(-1)
    assert torch.allclose(grey.fit.images[:, 0], expected, atol=1e-6)
    path = write_npz(tmp_path / "g.npz", images=rgb[..., 0], labels=np.arange(8) % 2)
    colour = load(path, channels=3)
    assert colour.fit.images.shape[1] == 3
    assert torch.equal(colour.fit.images[:, 0], colour.fit.images[:, 2])


def test_normalisation_precedence_spec_then_model_then_fit_statistics(tmp_path):
    images = indexed_images(20, (4, 4, 3))
    path = write_npz(tmp_path / "p.npz", images=images, labels=np.arange(20) % 2)
    model = {"mean": (0.2, 0.3, 0.4), "std": (0.5, 0.5, 0.5), "size": (2, 2)}
    spec_wins = load(path, model, mean=0.1, std=(0.2, 0.3, 0.4))
    assert spec_wins.fit.mean == (0.1, 0.1, 0.1) and spec_wins.fit.std == (0.2, 0.3, 0.4)
    assert spec_wins.fit.images.shape[-2:] == (2, 2)  # size from the model
    model_wins = load(path, model)
    assert model_wins.fit.mean == (0.2, 0.3, 0.4)
    assert any("from the model's preprocessing" in n for n in model_wins.notes)
    own = load(path)
    fit_pixels = images[list(own.fit_indices)].astype(np.float64) / 255  # (N, H, W, C)
    assert np.allclose(own.fit.mean, fit_pixels.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(own.fit.std, fit_pixels.std(axis=(0, 1, 2)), atol=1e-6)
    assert own.eval.mean == own.fit.mean  # eval is normalised with the fit statistics
    # a 3-value mean implies RGB inputs: grey data is repeated to 3 channels
    grey = write_npz(tmp_path / "grey.npz", images=images[..., 0], labels=np.arange(20) % 2)
    assert load(grey, model).fit.images.shape[1] == 3


def test_image_dataset_accepts_per_channel_normalisation():
    images = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    data = ImageDataset("x", "fit", normalised, torch.tensor([0, 1]), ("a", "b"), mean, std)
    assert np.allclose(data.pixels(1), images[1].permute(1, 2, 0).numpy(), atol=1e-6)
    assert data.subset([1]).mean == mean
    with pytest.raises(ValueError, match="mean has 2 values for 3 channel"):
        ImageDataset("x", "fit", normalised, torch.tensor([0, 1]), ("a", "b"), (0.1, 0.2), 1.0)


# --- bad input ----------------------------------------------------------------------------


def npz_case(tmp_path: Path, **arrays) -> Path:
    return write_npz(tmp_path / f"{uuid.uuid4().hex}.npz", **arrays)


GOOD_X, GOOD_Y = np.zeros((6, 4, 4), np.uint8), np.array([0, 1] * 3)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": GOOD_X[:0], "labels": GOOD_Y[:0]}, "holds no images"),
        ({"images": GOOD_X, "labels": np.zeros(6, int)}, "single class"),
        ({"images": GOOD_X, "labels": np.array([0, 1, 2, 3, -1, 9])}, r"out of range: -1"),
        (
            {
                "images": GOOD_X,
                "labels": np.array([0, 1, 2, 5, 1, 0]),
                "classes": np.array(["a", "b", "c"]),
            },
            r"out of range: 5; labels must be 0\.\.2",
        ),
        ({"images": GOOD_X, "labels": GOOD_Y[:5]}, "6 images but 5 labels"),
        ({"images": GOOD_X, "labels": GOOD_Y.astype(float)}, "labels must be one integer"),
        ({"images": GOOD_X.astype(np.int64), "labels": GOOD_Y}, "images are int64"),
        ({"images": np.full((6, 4, 4), np.nan, np.float32), "labels": GOOD_Y}, "NaN or infinite"),
        ({"images": np.full((6, 4, 4), np.inf), "labels": GOOD_Y}, "NaN or infinite"),
        ({"images": np.full((6, 4, 4), 2.5), "labels": GOOD_Y}, r"range from 2\.5.*\[0, 1\]"),
        ({"images": np.zeros((6, 4, 4, 4), np.uint8), "labels": GOOD_Y}, "neither 1 nor 3"),
        ({"images": np.zeros((6, 2, 4, 4, 1), np.uint8), "labels": GOOD_Y}, "expected N×H×W"),
        ({"pixels": GOOD_X, "labels": GOOD_Y}, "no array 'images'"),
    ],
)
def test_bad_npz_is_a_load_error_naming_the_problem(tmp_path, arrays, message):
    with pytest.raises(LoadError, match=message):
        load(npz_case(tmp_path, **arrays))


def test_other_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load(tmp_path / "nowhere.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(LoadError, match=r"junk\.npz is not a valid \.npz"):
        load(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([GOOD_X], dtype=object), labels=GOOD_Y)
    with pytest.raises(LoadError, match="holds Python objects"):
        load(tmp_path / "obj.npz")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(LoadError, match=r"data\.csv is not a dataset file"):
        load(tmp_path / "data.csv")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("x")
    with pytest.raises(LoadError, match="flat holds no dataset"):
        load(tmp_path / "flat")
    three = write_npz(tmp_path / "rgb.npz", images=np.zeros((6, 2, 2, 3), np.uint8), labels=GOOD_Y)
    with pytest.raises(LoadError, match=r"mean has 2 values \(from --mean\).*3 channel"):
        load(three, mean=(0.1, 0.2), std=1.0)
    with pytest.raises(LoadError, match="all one colour"):
        load(three)

    def gone(ref: str) -> Path:
        raise FileNotFoundError("this server no longer holds abc…: upload the file again")

    with pytest.raises(LoadError, match="no longer holds"):
        load_data(DataSpec("store:abc.npz"), resolve=gone)


def test_bad_image_folders_name_the_file(tmp_path):
    ok = [np.zeros((3, 3), np.uint8)] * 2
    root = image_folder(tmp_path / "a", {"x": ok, "y": ok})
    (root / "x" / "notes.txt").write_text("hi")
    (root / "y" / "labels.csv").write_text("hi")
    with pytest.raises(LoadError, match=r"x/notes.txt is not an image.*2 such file"):
        load(root)

    root = image_folder(tmp_path / "b", {"x": ok, "y": ok})
    (root / "y" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(LoadError, match=r"y/broken\.png is not a readable image"):
        load(root)

    root = image_folder(tmp_path / "c", {"x": ok, "y": ok})
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(good, "PNG")
    (root / "y" / "cut.png").write_bytes(good.getvalue()[:200])  # header fine, data truncated
    with pytest.raises(LoadError, match=r"y/cut\.png is a corrupt image"):
        load(root, size=(3, 3))  # the sizes differ: only decoding can find the damage

    root = image_folder(tmp_path / "d", {"x": ok, "y": [np.zeros((5, 4), np.uint8)] * 2})
    with pytest.raises(LoadError, match=r"different sizes.*set --size"):
        load(root)
    assert load(root, size=(4, 4), mean=0.0, std=1.0).fit.images.shape[-2:] == (4, 4)

    root = image_folder(tmp_path / "e", {"only": ok * 3})
    with pytest.raises(LoadError, match="single class"):
        load(root)

    root = image_folder(tmp_path / "f", {"x": ok})
    (root / "empty").mkdir()
    with pytest.raises(LoadError, match="'empty' holds no images"):
        load(root)


def test_bad_idx_and_cifar_files(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    images, labels = np.zeros((4, 3, 3), np.uint8), np.array([0, 1, 0, 1])
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images)[:-5])
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(LoadError, match="train-images-idx3-ubyte is truncated"):
        load(folder)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images[:3]))
    with pytest.raises(LoadError, match="3 images but train-labels-idx1-ubyte 4"):
        load(folder)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(LoadError, match="no train labels file"):
        load(folder)

    folder = tmp_path / "cifar"
    cifar_batch(folder / "data_batch_1", np.zeros((2, 3, 32, 32), np.uint8), [0, 1])
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LoadError, match="data_batch_1 is not a valid CIFAR batch"):
        load(folder)
    cifar_batch(folder / "data_batch_1", np.zeros((2, 3, 16, 16), np.uint8), [0, 1])
    with pytest.raises(LoadError, match="not 3072"):
        load(folder)


# --- archives -----------------------------------------------------------------------------


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def evil_zip(path: Path, entry: str | zipfile.ZipInfo, payload: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", png_bytes())
        zf.writestr("b/1.png", png_bytes())
        zf.writestr(entry, payload or png_bytes())
    return path


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../{name}", "points outside the archive"),
        ("a/../../{name}", "points outside the archive"),
        ("..\\{name}", "points outside the archive"),
        ("/tmp/{name}", "absolute path"),
        ("C:/{name}", "absolute path"),
        (symlink_entry("a/{name}"), "symbolic link"),
    ],
)
def test_unsafe_zip_entries_are_refused_and_nothing_leaves_the_target(tmp_path, entry, message):
    name = f"evil-{uuid.uuid4().hex}.png"
    if isinstance(entry, str):
        entry = entry.format(name=name)
    else:
        entry.filename = entry.filename.format(name=name)
    archive = evil_zip(tmp_path / "evil.zip", entry, b"/etc/passwd" if "link" in message else b"")
    shown = entry if isinstance(entry, str) else entry.filename
    with pytest.raises(LoadError, match=message) as caught:
        load(archive)
    assert repr(shown) in str(caught.value)
    target = tmp_path / "out" / "target"
    target.mkdir(parents=True)
    with pytest.raises(LoadError, match=message):
        extract_zip(archive, target)
    written = {p.name for p in tmp_path.rglob("*")} | set(os.listdir(tempfile.gettempdir()))
    assert name not in written and not Path(f"/tmp/{name}").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["target"]


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", png_bytes())
        zf.writestr("b/zeros.png", bytes(4 * 2**20))  # 4 MiB of zeros: ~1000 times smaller
    with pytest.raises(LoadError, match=r"'b/zeros.png' expands .* zip bomb"):
        load(bomb)
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(LoadError, match="3 entries, more than the limit of 2"):
        extract_zip(evil_zip(tmp_path / "many.zip", "c/1.png"), target, max_entries=2)
    with pytest.raises(LoadError, match="expands to more than"):
        extract_zip(evil_zip(tmp_path / "big.zip", "c/1.png"), target, max_total_bytes=100)
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a/1.png", png_bytes())
        zf.writestr("a/1.png", png_bytes())
    with pytest.raises(LoadError, match=r"holds 'a/1\.png' twice"):
        extract_zip(dup, target)
    assert list(target.iterdir()) == []


def test_check_members_guards_npz_against_bombs(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((4096, 32, 32), np.uint8), labels=np.zeros(4096))
    with zipfile.ZipFile(path) as zf, pytest.raises(LoadError, match="zip bomb"):
        check_members(zf)
    with pytest.raises(LoadError, match=r"images\.npy' expands"):
        load(path)


# --- fuzzing: whatever the bytes, a LoadError and nothing else -------------------------


def random_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (3, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def valid_files() -> dict[str, bytes]:
    """A small valid file of each format, as bytes (each loads as it is)."""
    buffer = io.BytesIO()
    np.savez(buffer, images=indexed_images(6), labels=GOOD_Y)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for c in "ab":
            for i in range(3):
                zf.writestr(f"{c}/{i}.png", random_png(i + 3 * (c == "b")))
    images = idx_bytes(indexed_images(4, (3, 3)))
    cifar = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    return {
        ".npz": buffer.getvalue(),
        ".zip": archive.getvalue(),
        "idx": images,
        "idx.gz": gzip.compress(images),
        "cifar": pickle.dumps({"data": cifar, "labels": [0, 1, 0, 1]}, protocol=2),
    }


VALID = valid_files()


def load_bytes(kind: str, payload: bytes) -> LoadedData:
    """Write ``payload`` as a file of ``kind`` in a fresh folder and load it."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if kind in (".npz", ".zip"):
            path = root / f"data{kind}"
            path.write_bytes(payload)
        elif kind.startswith("idx"):
            path = root / "idx"
            path.mkdir()
            name = "train-images-idx3-ubyte" + (".gz" if kind.endswith(".gz") else "")
            (path / name).write_bytes(payload)
            (path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 0, 1])))
        else:
            path = root / "cifar"
            path.mkdir()
            (path / "data_batch_1").write_bytes(payload)
        return load(path)


@FUZZ
@given(kind=st.sampled_from(sorted(VALID)), payload=st.binary(max_size=512))
def test_random_bytes_are_a_load_error(kind, payload):
    with pytest.raises(LoadError):
        load_bytes(kind, payload)


@FUZZ
@given(kind=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_a_load_error(kind, cut):
    payload = VALID[kind]
    with pytest.raises(LoadError):
        load_bytes(kind, payload[: int(cut * len(payload))])


@FUZZ
@given(
    kind=st.sampled_from(sorted(VALID)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
)
def test_mutated_files_load_or_are_a_load_error(kind, edits):
    payload = bytearray(VALID[kind])
    for where, value in edits:
        payload[int(where * len(payload))] = value
    with contextlib.suppress(LoadError):  # a harmless edit may still load
        load_bytes(kind, bytes(payload))


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_fuzzed_files_load_when_whole(kind):
    data = load_bytes(kind, VALID[kind])
    assert len(data.fit) + len(data.eval) in (4, 6)


def test_formats_registry_names_are_unique():
    names = [f.name for f in FORMATS]
    assert len(names) == len(set(names)) and names[-1] == "imagefolder"


def test_from_images_keeps_their_size_and_statistics_where_the_model_declares_imagenet(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 7, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "d.npz", images=images, labels=np.repeat([0, 1], 10))
    imagenet = {"size": (224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    declared = load(path, imagenet)
    assert declared.fit.images.shape[-2:] == (224, 224)
    assert declared.fit.mean == pytest.approx(imagenet["mean"])
    own = load(path, imagenet, from_images=("size", "normalisation"))
    assert own.fit.images.shape[-2:] == (6, 7)
    # the oracle: the fit images' own per-channel statistics, computed here by hand
    pixels = images[list(own.fit_indices)].astype(np.float64) / 255
    assert own.fit.mean == pytest.approx(tuple(pixels.mean(axis=(0, 1, 2))), abs=1e-5)
    assert own.fit.std == pytest.approx(tuple(pixels.std(axis=(0, 1, 2))), abs=1e-5)
    assert any("not the model's declared size 224×224" in n for n in own.notes)
    # a size given by the user wins over both
    given = load(path, imagenet, size=(5, 5), from_images=("size",))
    assert given.fit.images.shape[-2:] == (5, 5) and given.fit.mean == pytest.approx(
        imagenet["mean"]
    )


def test_from_images_round_trips_through_json_and_the_url_and_refuses_unknown_names():
    from explorer.engine.subject import Subject, subject_from_query, subject_to_query

    spec = DataSpec("d.npz", from_images=("normalisation", "size"))
    assert spec.from_images == ("size", "normalisation")  # one order: one key
    assert DataSpec.from_dict(spec.to_dict()) == spec
    assert "from_images" not in DataSpec().to_dict()  # older specs keep their JSON
    subject = Subject(ModelSource.parse("resnet18"), None, spec)
    assert subject_from_query(subject_to_query(subject)) == subject
    with pytest.raises(ValueError, match="from_images takes size, channels, normalisation"):
        DataSpec("d.npz", from_images=("colour",))
