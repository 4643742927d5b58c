"""A dataset from a ``DataSpec``: read, checked, split into fit / eval, resized and normalised.

Every problem with the user's data is a ``LoadError`` with one line that names it; nothing is
unpickled except CIFAR batches, through an unpickler that only builds numpy arrays.

**Formats** (``FORMATS``: the first whose detector accepts the path reads it):

- ``mnist``: the bundled MNIST and its fixed split (``explorer.zoo.mnist``), exactly as
  ``load_mnist`` gives it unless the spec sets size, channels, mean or std.
- ``.npz``: arrays ``images`` and ``labels`` (N,) of integers, optional ``classes`` (K,) of
  names; read with ``allow_pickle=False``. ``images`` is N×H×W (grey), N×H×W×C when the last
  axis is 1 or 3 and the second is not, else N×C×H×W when the second axis is 1 or 3; C must
  be 1 or 3. Pixels: uint8 are divided by 255; floats must already be pixels in [0, 1] (finite,
  not normalised); anything else is refused.
- ``.zip``: extracted safely (``explorer.loading.archives``) into a temporary folder, which is
  then read as one of the folder formats below.
- CIFAR-10 (python) folder: ``data_batch_1..5``, ``test_batch``, ``batches.meta`` (possibly
  inside ``cifar-10-batches-py/``). The batches are pickles: read with ``CifarUnpickler``.
- MNIST IDX folder: ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-…`` (FashionMNIST and KMNIST use the same names). Classes are numbered.
- ImageFolder tree: a folder whose sub-folders are the classes (sorted names → labels 0..K-1,
  like ``torchvision.datasets.ImageFolder``; files found recursively and sorted) holding png,
  jpg, jpeg, bmp, gif, webp, tif(f), ppm or pgm images, decoded by Pillow (grey modes stay one
  channel, everything else becomes RGB). Hidden files, ``__MACOSX``, ``Thumbs.db`` and
  ``desktop.ini`` are skipped (and counted in the notes); any other file is an error. A tree
  whose top folders are ``train/`` and ``test/`` (or ``val/``, ``valid/``, ``validation/``)
  has an official split. A folder holding only one sub-folder (a zip's top folder,
  ``cifar-10-batches-py/``, ``MNIST/raw/``) is looked into.

**Split.** A source with an official train / test split uses train as *fit* and test as *eval*.
Otherwise it is split once, stratified by class: for each class c (ascending) with n_c images,
``round_half_up(eval_fraction * n_c)`` of them, at least 1 and at most n_c - 1 when n_c >= 2
(none when n_c == 1), drawn by one ``numpy.random.default_rng(seed)`` permutation per class, go
to *eval*, the rest to *fit*. The split depends only on the labels, the fraction and the seed.

**Limits.** Each part is then capped (``FIT_CAP``, ``EVAL_CAP``; both together at most
``max_images`` and ``MAX_TENSOR_BYTES`` of float32 tensors) by a stratified, seeded subsample
(largest-remainder quotas per class); the notes say so.

**Preprocessing**, in this order: pixels to float in [0, 1]; channels to 1 (mean over R, G, B)
or 3 (grey repeated); resize to (H, W) with bilinear interpolation (antialiased when
shrinking); normalise per channel. Each setting comes from the spec, else the model's declared
preprocessing, else the data itself (its own size, which must then be one for all images; its
own channels; the fit part's per-channel mean and std). A 3-value mean or std implies 3
channels.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from explorer.engine.subject import DataSpec
from explorer.loading.archives import MAX_TOTAL_BYTES, check_members, extract_zip
from explorer.loading.errors import LoadError, check_file
from explorer.loading.options import option
from explorer.loading.store import default_store
from explorer.zoo.mnist import ImageDataset, load_mnist, mnist_pixels, read_idx

#: Most images in the fit part (calibration, fine-tuning); more are subsampled.
FIT_CAP = 20_000
#: Most images in the eval part; more are subsampled.
EVAL_CAP = 10_000
#: Most bytes the float32 image tensors of both parts may take (224×224 RGB: ~3,500 images).
MAX_TENSOR_BYTES = 2 * 2**30
#: Most classes a dataset without class names may number (labels 0..MAX_CLASSES-1).
MAX_CLASSES = 10_000
#: Largest image (height × width) decoded; a bigger one is refused before decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: Files and folders that operating systems leave behind (besides dot-files): skipped.
JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
#: Names of the held-out part of a train / test ImageFolder tree, in order of preference.
EVAL_FOLDERS = ("test", "val", "valid", "validation")
#: Pillow modes read as one grey channel; every other mode is converted to RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N"})

_CHUNK = 1024  # images converted at a time (bounds the float copies of the source)
_SINGLE, _FIT, _EVAL = "all", "fit", "eval"


@dataclass(frozen=True, eq=False)
class LoadedData:
    """A dataset ready for a workbench.

    Attributes:
        fit: split ``"fit"``, for calibration and fine-tuning only.
        eval: split ``"eval"``, held out: every reported number; never overlaps ``fit``.
        spec: what was loaded.
        fit_indices, eval_indices: positions in the source's sample order (sorted), or None
            for a source with an official split.
        notes: what was understood and done, one sentence each, for the user.
    """

    fit: ImageDataset
    eval: ImageDataset
    spec: DataSpec
    fit_indices: tuple[int, ...] | None
    eval_indices: tuple[int, ...] | None
    notes: tuple[str, ...]


# --- sources: labels up front, images read lazily ------------------------------------------


class Pool:
    """Samples of one part of a source; images are only read for the indices asked for.

    Attributes:
        labels: int64, shape (N,).
    """

    labels: np.ndarray

    def shapes(self, indices: np.ndarray) -> dict[tuple[int, int, int], str]:
        """The distinct (C, H, W) of the images at ``indices``, each with an example's name."""
        raise NotImplementedError

    def read(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        """The images at ``indices``, in order, as chunks (n, C, H, W) of uint8 (0..255) or
        float32 pixels in [0, 1]."""
        raise NotImplementedError


class ArrayPool(Pool):
    """Images already in memory, (N, C, H, W) uint8 or float32 in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def shapes(self, indices: np.ndarray) -> dict[tuple[int, int, int], str]:
        return {tuple(self.images.shape[1:]): "image 0"}  # type: ignore[dict-item]

    def read(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(indices), _CHUNK):
            yield np.ascontiguousarray(self.images[indices[start : start + _CHUNK]])


class FilePool(Pool):
    """Image files, decoded with Pillow when read; ``shapes`` only reads their headers."""

    def __init__(self, files: list[Path], labels: np.ndarray, root: Path) -> None:
        self.files, self.labels, self.root = files, labels, root
        self._headers: dict[int, tuple[int, int, int]] = {}

    def _name(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()

    def _header(self, index: int) -> tuple[int, int, int]:
        if index not in self._headers:
            try:
                with Image.open(self.files[index]) as image:
                    mode, (width, height) = image.mode, image.size
            except Exception as err:  # Pillow raises many types for a file it cannot identify
                raise LoadError(f"{self._name(index)} is not a readable image: {err}") from None
            if mode in ("I", "F"):  # 32-bit int or float pixels: no range to read them in
                raise LoadError(
                    f"{self._name(index)} has 32-bit pixels (mode {mode}); save 8- or 16-bit images"
                )
            if width * height > MAX_IMAGE_PIXELS:
                raise LoadError(
                    f"{self._name(index)} is {width}×{height} pixels, more than the limit of "
                    f"{MAX_IMAGE_PIXELS:,}"
                )
            self._headers[index] = (1 if mode in GREY_MODES else 3, height, width)
        return self._headers[index]

    def shapes(self, indices: np.ndarray) -> dict[tuple[int, int, int], str]:
        found: dict[tuple[int, int, int], str] = {}
        for index in indices.tolist():
            found.setdefault(self._header(index), self._name(index))
        return found

    def read(self, indices: np.ndarray) -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        for index in indices.tolist():
            image = self._decode(index)
            # same-shape neighbours go together: one resize call per batch, not per image
            if batch and (image.shape != batch[0].shape or len(batch) == 256):
                yield np.stack(batch)
                batch = []
            batch.append(image)
        if batch:
            yield np.stack(batch)

    def _decode(self, index: int) -> np.ndarray:
        """One image as (C, H, W) uint8, or float32 in [0, 1] for 16-bit grey."""
        channels = self._header(index)[0]
        try:
            with Image.open(self.files[index]) as image:
                if image.mode.startswith("I;16"):  # 16-bit grey: convert("L") would clip
                    pixels = np.asarray(image, np.uint16).astype(np.float32) / 65535
                else:
                    pixels = np.array(image.convert("L" if channels == 1 else "RGB"))
        except Exception as err:  # truncated data, bad chunks: many exception types
            raise LoadError(f"{self._name(index)} is a corrupt image: {err}") from None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@dataclass
class Source:
    """What a format reader found.

    Attributes:
        pools: ``{"all": pool}`` for a source to split, or ``{"fit": …, "eval": …}`` for one
            with an official split.
        classes: class names (index = label), or None to number them from the labels.
        notes: what the reader understood.
    """

    pools: dict[str, Pool]
    classes: tuple[str, ...] | None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Context:
    max_bytes: int | None
    stack: contextlib.ExitStack  # owns temporary folders until the images are read
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataFormat:
    """A format reader: ``detect(path)`` says whether ``read(path, context)`` applies."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, _Context], Source]


# --- helpers --------------------------------------------------------------------------------


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _is_junk(p.name))


def _file(path: Path, what: str, context: _Context) -> Path:
    return check_file(path, what, context.max_bytes)


def _sample(values: list[str], limit: int = 5) -> str:
    return ", ".join(values[:limit]) + (f" … ({len(values)} in all)" if len(values) > limit else "")


# --- .npz -----------------------------------------------------------------------------------


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One array of an .npz, after checking that its header fits the member's size (so a
    header claiming terabytes is refused before numpy allocates them)."""
    name = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            header_end = handle.tell()
        if dtype.hasobject:
            raise LoadError(
                f"{path.name}: array {name!r} holds Python objects (it would need unpickling); "
                "save plain numeric or string arrays"
            )
        needed = math.prod(shape) * dtype.itemsize
        if info.file_size - header_end < needed:
            raise LoadError(
                f"{path.name}: array {name!r} is truncated (its header says {shape} {dtype}, "
                f"{needed:,} bytes; the file holds {info.file_size - header_end:,})"
            )
        with archive.open(info) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    except LoadError:
        raise
    except Exception as err:  # zipfile, zlib and numpy's format parser raise many types
        raise LoadError(f"{path.name}: array {name!r} is corrupt: {err}") from None


def _channels_first(images: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """(N, C, H, W) view of N×H×W, N×H×W×C or N×C×H×W images (see the module docstring)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            return images.transpose(0, 3, 1, 2)
        if images.shape[1] in (1, 3):
            if images.shape[-1] in (1, 3):  # e.g. N×3×3×3: either axis could be channels
                notes.append(f"Images of shape {images.shape} read as N×C×H×W (PyTorch's order).")
            return images
        raise LoadError(
            f"{path.name}: images of shape {images.shape} have neither 1 nor 3 channels "
            "(expected N×H×W, N×H×W×C or N×C×H×W with C = 1 or 3)"
        )
    raise LoadError(
        f"{path.name}: images have shape {images.shape}; expected N×H×W, N×H×W×C or N×C×H×W"
    )


def _float_pixels(images: np.ndarray, where: str) -> np.ndarray:
    """Float images as float32, after checking they are finite pixels in [0, 1]."""
    low, high = math.inf, -math.inf
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK]
        if not np.isfinite(chunk).all():
            raise LoadError(f"{where}: images contain NaN or infinite values")
        if chunk.size:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if low < 0 or high > 1:
        raise LoadError(
            f"{where}: float images range from {low:.3g} to {high:.3g}; give uint8 pixels "
            "(0..255) or floats in [0, 1], not normalised ones (the loader normalises them)"
        )
    return images.astype(np.float32, copy=False)


def _labels(values: Any, where: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not (labels.dtype.kind in "iu" or labels.size == 0):
        raise LoadError(
            f"{where}: labels must be one integer per image, got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    return labels.astype(np.int64)


def _read_npz(path: Path, context: _Context) -> Source:
    _file(path, "dataset", context)
    try:
        archive = zipfile.ZipFile(path)
    except Exception as err:  # BadZipFile, OSError, EOFError, ValueError …
        raise LoadError(
            f"{path.name} is not a valid .npz file (a zip of .npy arrays): {err}"
        ) from None
    with archive:
        members = {
            i.filename.removesuffix(".npy"): i
            for i in check_members(archive)
            if i.filename.endswith(".npy")
        }
        missing = [name for name in ("images", "labels") if name not in members]
        if missing:
            raise LoadError(
                f"{path.name} has no array {' or '.join(map(repr, missing))} (it has "
                f"{', '.join(sorted(members)) or 'none'}); save it with "
                "np.savez(path, images=..., labels=..., classes=...)"
            )
        arrays = {
            name: _npz_member(archive, members[name], path)
            for name in ("images", "labels", "classes")
            if name in members
        }
    images, labels = arrays["images"], _labels(arrays["labels"], path.name)
    if images.dtype.kind == "f":
        images = _float_pixels(images, path.name)
    elif images.dtype != np.uint8:
        raise LoadError(
            f"{path.name}: images are {images.dtype}; give uint8 pixels (0..255) or floats "
            "in [0, 1]"
        )
    images = _channels_first(images, path, context.notes)
    if len(images) != len(labels):
        raise LoadError(f"{path.name} has {len(images):,} images but {len(labels):,} labels")
    classes = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "USiu":
            raise LoadError(f"{path.name}: 'classes' must be a 1-D array of names")
        classes = tuple(
            n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names
        )
    layout = "×".join(map(str, arrays["images"].shape))
    context.notes.append(
        f".npz: {len(labels):,} images ({layout}, {arrays['images'].dtype}"
        f"{', scaled by 1/255' if images.dtype == np.uint8 else ', taken as [0, 1] pixels'}), "
        f"classes {'from its classes array' if classes else 'numbered from the labels'}."
    )
    return Source({_SINGLE: ArrayPool(images, labels)}, classes)


# --- .zip -----------------------------------------------------------------------------------


def _read_zip(path: Path, context: _Context) -> Source:
    _file(path, "dataset archive", context)
    target = Path(context.stack.enter_context(tempfile.TemporaryDirectory(prefix="explorer-")))
    written = extract_zip(path, target)
    if not written:
        raise LoadError(f"{path.name} holds no files")
    context.notes.append(f"Extracted {len(written):,} files from {path.name}.")
    return _read_folder(target, context, path.name)


# --- CIFAR-10 (python) --------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it, for the latin-1 codec only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


# The stand-ins below replace numpy's own reconstruction functions. numpy's dtype and ndarray
# ``__setstate__`` trust their input, and a crafted state crashes the interpreter (a fuzzed
# batch segfaulted it), so a pickle never reaches them: these check every argument in Python
# and build arrays only with ``np.frombuffer`` on bytes of the exact size.

_PLAIN_DTYPE = re.compile(r"^[biuf][1248]$")
_MAX_DIMS = 8


class _NdarrayName:
    """What ``numpy.ndarray`` stands for in a pickle: a name only, never callable."""


class _DtypeStandIn:
    """``numpy.dtype(name, align, copy)`` for plain numeric types, then its ``__setstate__``."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(name, str) or not _PLAIN_DTYPE.match(name):
            raise pickle.UnpicklingError(f"refusing the dtype {name!r}")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, ...): a plain number has only an order
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("malformed dtype state")
        if any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("refusing a structured dtype")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _checked_array(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if isinstance(raw, str):  # a Python 2 str, decoded as latin-1 by the unpickler
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray) or not isinstance(dtype, _DtypeStandIn):
        raise pickle.UnpicklingError("malformed array data")
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise pickle.UnpicklingError(f"malformed array shape {shape!r}")
    if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
        raise pickle.UnpicklingError("array data does not match its shape")
    return np.frombuffer(bytes(raw), dtype=dtype.dtype).reshape(shape, order=order)


class _ArrayStandIn:
    """``_reconstruct(ndarray, shape, typecode)`` then ``__setstate__``: holds the array the
    state describes (``CifarUnpickler.load`` swaps it in)."""

    def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b"b") -> None:
        if cls is not _NdarrayName:
            raise pickle.UnpicklingError("_reconstruct of something else than numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed array state")
        shape, dtype, fortran, raw = state[-4:]  # (version,) shape, dtype, is_fortran, data
        self.array = _checked_array(raw, dtype, shape, "F" if fortran is True else "C")


def _frombuffer_stand_in(raw: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """numpy 2's ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5 pickles)."""
    return _checked_array(raw, dtype, shape, "F" if order == "F" else "C")


def _materialise(value: Any) -> Any:
    """``value`` with array stand-ins swapped for their arrays, at the top and in a top-level
    dict (a batch is a flat dict; not recursing keeps a crafted, self-referencing or
    exponentially shared structure cheap)."""

    def array_of(item: Any) -> Any:
        if isinstance(item, _ArrayStandIn):
            if item.array is None:
                raise pickle.UnpicklingError("an array without its data")
            return item.array
        return item

    if isinstance(value, dict):
        return {k: array_of(v) for k, v in value.items()}
    return array_of(value)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _DtypeStandIn,
    ("_codecs", "encode"): _latin1_encode,
    # CIFAR's own batches (Python 2, numpy 1) name numpy.core; numpy 2 writes numpy._core
    **{
        (f"{core}.multiarray", "_reconstruct"): _ArrayStandIn
        for core in ("numpy.core", "numpy._core")
    },
    **{
        (f"{core}.numeric", "_frombuffer"): _frombuffer_stand_in
        for core in ("numpy.core", "numpy._core")
    },
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for something a dataset never needs."""


class CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and plain numeric numpy arrays; refuses every
    other global (``os.system``, ``builtins.eval``, …), so a malicious batch cannot run code.
    Arrays are rebuilt by stand-ins that check their input (see above), never by numpy's own
    ``__setstate__``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")

    def load(self) -> Any:
        return _materialise(super().load())


_CIFAR_TRAIN = re.compile(r"^data_batch_(\d+)$")


def _unpickle(path: Path, context: _Context) -> dict[str, Any]:
    _file(path, "CIFAR batch", context)
    try:
        with open(path, "rb") as handle:
            value = CifarUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as err:
        raise LoadError(
            f"{path.name} asks for {err}, which a CIFAR batch never needs: refusing to unpickle it"
        ) from None
    except pickle.UnpicklingError as err:  # including what the stand-ins refuse
        raise LoadError(f"{path.name} is not a valid CIFAR batch: {err}") from None
    except Exception as err:  # a corrupt pickle raises almost anything
        raise LoadError(f"{path.name} is not a valid CIFAR batch: {type(err).__name__}") from None
    if not isinstance(value, dict):
        raise LoadError(f"{path.name} is not a CIFAR batch (a dict), got {type(value).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in value.items()}


def _cifar_batch(path: Path, context: _Context) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,)) of one batch file."""
    batch = _unpickle(path, context)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise LoadError(f"{path.name}: 'data' is not a uint8 array of rows of 3072 pixels")
    if data.shape[1] != 3 * 32 * 32:
        raise LoadError(f"{path.name}: rows have {data.shape[1]} values, not 3072 (3×32×32)")
    if not isinstance(labels, list | np.ndarray) or not all(
        isinstance(v, int | np.integer) for v in labels
    ):
        raise LoadError(f"{path.name}: 'labels' is not a list of integers")
    try:
        labels = _labels(np.asarray(labels, dtype=np.int64), path.name)
    except (OverflowError, ValueError, TypeError):
        raise LoadError(f"{path.name}: 'labels' are not integers in range") from None
    if len(labels) != len(data):
        raise LoadError(f"{path.name} has {len(data):,} images but {len(labels):,} labels")
    return data.reshape(-1, 3, 32, 32), labels  # rows are the R, G then B planes


def _is_cifar(folder: Path) -> bool:
    return folder.is_dir() and (
        (folder / "test_batch").is_file()
        or any(_CIFAR_TRAIN.match(p.name) for p in folder.iterdir() if p.is_file())
    )


def _read_cifar(folder: Path, context: _Context) -> Source:
    train = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_file() and (m := _CIFAR_TRAIN.match(p.name))
    )
    pools: dict[str, Pool] = {}
    if train:
        parts = [_cifar_batch(p, context) for _, p in train]
        pools[_FIT] = ArrayPool(
            np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        )
    if (folder / "test_batch").is_file():
        pools[_EVAL] = ArrayPool(*_cifar_batch(folder / "test_batch", context))
    if len(pools) == 1:
        pools = {_SINGLE: next(iter(pools.values()))}
    classes = None
    if (folder / "batches.meta").is_file():
        names = _unpickle(folder / "batches.meta", context).get("label_names")
        if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
            raise LoadError("batches.meta: 'label_names' is not a list of names")
        classes = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    context.notes.append(
        f"CIFAR-10 (python) layout: {len(train)} training batch(es)"
        f"{' and test_batch' if (folder / 'test_batch').is_file() else ''}, classes "
        f"{'from batches.meta' if classes else 'numbered (no batches.meta)'}."
    )
    return Source(pools, classes)


# --- MNIST IDX ------------------------------------------------------------------------------

_IDX = re.compile(r"^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$")


def _is_idx(folder: Path) -> bool:
    return folder.is_dir() and any(_IDX.match(p.name) for p in folder.iterdir() if p.is_file())


def _idx_array(path: Path, context: _Context, ndim: int) -> np.ndarray:
    _file(path, "IDX file", context)
    try:
        array = read_idx(path, max_bytes=MAX_TOTAL_BYTES)
    except (ValueError, OSError) as err:
        raise LoadError(str(err)) from None
    if array.ndim != ndim:
        kind = "images (magic 2051)" if ndim == 3 else "labels (magic 2049)"
        raise LoadError(f"{path.name} does not hold {kind}")
    return array


def _read_idx(folder: Path, context: _Context) -> Source:
    found: dict[tuple[str, str], Path] = {}
    # a raw file wins over its .gz twin (torchvision's MNIST/raw holds both)
    for path in sorted(folder.iterdir(), key=lambda p: (not p.name.endswith(".gz"), p.name)):
        if path.is_file() and (m := _IDX.match(path.name)):
            found[(m.group(1), m.group(2))] = path
    pools: dict[str, Pool] = {}
    for prefix, part in (("train", _FIT), ("t10k", _EVAL)):
        images, labels = found.get((prefix, "images")), found.get((prefix, "labels"))
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            have, lack = (images or labels), ("labels" if labels is None else "images")
            raise LoadError(f"found {have.name} (in {folder.name}) but no {prefix} {lack} file")
        x, y = _idx_array(images, context, 3), _idx_array(labels, context, 1)
        if len(x) != len(y):
            raise LoadError(f"{images.name} has {len(x):,} images but {labels.name} {len(y):,}")
        pools[part] = ArrayPool(x[:, None], y.astype(np.int64))
    if len(pools) == 1:
        pools = {_SINGLE: next(iter(pools.values()))}
    context.notes.append(
        f"MNIST IDX layout ({', '.join(sorted(p.name for p in found.values()))}); "
        "classes numbered from the labels."
    )
    return Source(pools, None)


# --- ImageFolder ------------------------------------------------------------------------------


@dataclass
class _Listing:
    """What else than images an ImageFolder tree holds."""

    skipped: int = 0
    not_images: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)


def _list_tree(folder: Path, root: Path, listing: _Listing) -> dict[str, list[Path]]:
    """Image files of each class folder under ``folder`` (recursive, sorted, junk skipped)."""
    classes: dict[str, list[Path]] = {}
    for entry in _visible(folder):
        if not entry.is_dir():
            listing.loose.append(entry.relative_to(root).as_posix())
            continue
        files = classes.setdefault(entry.name, [])
        for here, dirs, names in os.walk(entry, followlinks=False):
            listing.skipped += sum(_is_junk(d) for d in dirs) + sum(_is_junk(n) for n in names)
            dirs[:] = sorted(d for d in dirs if not _is_junk(d))
            for name in sorted(n for n in names if not _is_junk(n)):
                path = Path(here) / name
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
                else:
                    listing.not_images.append(path.relative_to(root).as_posix())
    return classes


def _read_image_folder(folder: Path, context: _Context) -> Source:
    top = {p.name.lower(): p for p in _visible(folder) if p.is_dir()}
    held_out = next((top[n] for n in EVAL_FOLDERS if n in top), None)
    split = "train" in top and held_out is not None and set(top) <= {"train", *EVAL_FOLDERS}
    listing = _Listing(skipped=sum(_is_junk(p.name) for p in folder.iterdir()))
    parts = {_FIT: top["train"], _EVAL: held_out} if split else {_SINGLE: folder}
    if split:  # files beside train/ and test/ belong to no part
        listing.loose += [p.name for p in _visible(folder) if not p.is_dir()]
    found = {part: _list_tree(path, folder, listing) for part, path in parts.items()}  # type: ignore[arg-type]
    if listing.not_images:
        raise LoadError(
            f"{listing.not_images[0]} is not an image (png, jpg, jpeg, bmp, gif, webp, tif, ppm, "
            f"pgm); {len(listing.not_images)} such file(s) in all: remove them from the dataset"
        )
    if listing.loose:
        raise LoadError(
            f"{listing.loose[0]} lies outside any class folder ({len(listing.loose)} such "
            "file(s)): put each class's images in a sub-folder named after the class"
        )
    classes = sorted({name for tree in found.values() for name in tree})
    for tree in found.values():
        for name, files in tree.items():
            if not files:
                raise LoadError(f"the class folder {name!r} holds no images")
    label = {name: i for i, name in enumerate(classes)}
    pools: dict[str, Pool] = {}
    for part, tree in found.items():
        files = [f for name in sorted(tree) for f in tree[name]]
        labels = np.array([label[name] for name in sorted(tree) for _ in tree[name]], np.int64)
        pools[part] = FilePool(files, labels, folder)
    total = sum(len(p.labels) for p in pools.values())
    note = (
        f"ImageFolder: {len(classes)} classes from folder names ({_sample(classes)}), "
        f"{total:,} images"
    )
    if split:
        note += f", official split train/ → fit, {held_out.name}/ → eval"  # type: ignore[union-attr]
    if listing.skipped:
        note += f"; skipped {listing.skipped} hidden or system file(s)"
    context.notes.append(note + ".")
    if all(c.isdigit() for c in classes):
        odd = next((i for i, c in enumerate(classes) if int(c) != i), None)
        if odd is not None:
            context.notes.append(
                "Class folders are numbers; labels follow their sorted names as torchvision's "
                f"ImageFolder does (folder {classes[odd]!r} is label {odd}), not the numbers."
            )
    return Source(pools, tuple(classes))


def _is_image_folder(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in _visible(folder))


# --- the registry -------------------------------------------------------------------------

FORMATS: tuple[DataFormat, ...] = (
    DataFormat(
        "npz",
        ".npz with arrays images, labels (and classes)",
        lambda p: p.suffix.lower() == ".npz" and not p.is_dir(),
        _read_npz,
    ),
    DataFormat(
        "zip",
        ".zip of an ImageFolder tree (or a CIFAR-10 / MNIST IDX folder)",
        lambda p: p.suffix.lower() == ".zip" and not p.is_dir(),
        _read_zip,
    ),
    DataFormat(
        "cifar10", "CIFAR-10 python folder (data_batch_*, test_batch)", _is_cifar, _read_cifar
    ),
    DataFormat("idx", "MNIST IDX folder (train-images-idx3-ubyte …)", _is_idx, _read_idx),
    DataFormat(
        "imagefolder",
        "ImageFolder tree (one sub-folder per class)",
        _is_image_folder,
        _read_image_folder,
    ),
)
#: Folder formats recognised by their files rather than by having sub-folders.
_LAYOUTS = ("cifar10", "idx")


def _has_layout(folder: Path) -> bool:
    return any(f.detect(folder) for f in FORMATS if f.name in _LAYOUTS)


def _unwrap(folder: Path, context: _Context) -> Path:
    """Look into a folder whose only content is one sub-folder holding the dataset."""
    start = folder
    while not _has_layout(folder):
        entries = _visible(folder)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        child = entries[0]
        if not (_has_layout(child) or any(p.is_dir() for p in _visible(child))):
            break
        folder = child
    if folder != start:
        context.notes.append(f"Reading the folder {folder.relative_to(start).as_posix()}/.")
    return folder


def _choices() -> str:
    return "give 'mnist' or one of: " + "; ".join(f.description for f in FORMATS)


def _read_folder(folder: Path, context: _Context, shown: str) -> Source:
    folder = _unwrap(folder, context)
    for fmt in FORMATS:
        if fmt.detect(folder):
            return fmt.read(folder, context)
    raise LoadError(f"{shown} holds no dataset this tool reads; {_choices()}")


def _read_source(path: Path, context: _Context) -> Source:
    """The ``Source`` behind ``path``: a file or folder in one of ``FORMATS``."""
    if not path.exists():
        raise LoadError(f"the dataset {path} does not exist")
    if path.is_dir():
        return _read_folder(path, context, path.name)
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt.read(path, context)
    raise LoadError(f"{path.name} is not a dataset file this tool reads; {_choices()}")


# --- labels, split, caps ------------------------------------------------------------------


def _check_labels(source: Source) -> tuple[str, ...]:
    """The class names, after checking every label is one of them (0..K-1)."""
    labels = np.concatenate([p.labels for p in source.pools.values()])
    if len(labels) == 0:
        raise LoadError("the dataset holds no images")
    known = len(source.classes) if source.classes is not None else MAX_CLASSES
    bad = np.unique(labels[(labels < 0) | (labels >= known)])
    if len(bad):
        rule = (
            f"0..{known - 1} for its {known} classes"
            if source.classes is not None
            else f"0..K-1 with K at most {MAX_CLASSES:,}"
        )
        raise LoadError(
            f"labels out of range: {_sample([str(v) for v in bad])}; labels must be {rule}"
        )
    present = np.unique(labels)
    if len(present) < 2:
        only = source.classes[present[0]] if source.classes else f"label {present[0]}"
        raise LoadError(f"the dataset has a single class ({only}): a classifier needs at least two")
    if source.classes is not None:
        return source.classes
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def stratified_split(
    labels: np.ndarray, eval_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (fit, eval) positions: per class, ``round_half_up(eval_fraction * n_c)`` held out
    (at least 1 in each part when n_c >= 2); see the module docstring.

    Args:
        labels: int, shape (N,).
        eval_fraction: share of each class held out, in (0, 1).
        seed: seed of the per-class permutations.
    """
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = min(max(_round_half_up(eval_fraction * n), 1), n - 1) if n >= 2 else 0
        order = rng.permutation(members)
        held.append(order[:k])
        fit.append(order[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def stratified_subsample(
    labels: np.ndarray, indices: np.ndarray, keep: int, rng: np.random.Generator
) -> np.ndarray:
    """``keep`` of ``indices`` (sorted), each class in proportion to its share (largest
    remainder quotas), drawn by ``rng``."""
    if keep >= len(indices):
        return indices
    chosen = labels[indices]
    values, counts = np.unique(chosen, return_counts=True)
    quota = counts * keep / len(indices)
    take = np.floor(quota).astype(np.int64)
    # ties go to the smaller label (stable sort), so the result is deterministic
    take[np.argsort(-(quota - take), kind="stable")[: keep - int(take.sum())]] += 1
    parts = [rng.permutation(indices[chosen == v])[:t] for v, t in zip(values, take, strict=True)]
    return np.sort(np.concatenate(parts))


@dataclass
class _Part:
    """The images of one part (fit or eval): positions in ``pool``."""

    name: str
    pool: Pool
    indices: np.ndarray


def _split(source: Source, spec: DataSpec, notes: list[str]) -> tuple[_Part, _Part]:
    """The fit and eval parts: the official split, or one stratified by class."""
    if _SINGLE in source.pools:
        pool = source.pools[_SINGLE]
        fit, held = stratified_split(pool.labels, spec.eval_fraction, spec.seed)
        if len(held) == 0:
            raise LoadError("every class has a single image, so none can be held out for eval")
        notes.append(
            f"Split once, stratified by class: {spec.eval_fraction:.0%} of each class held out "
            f"for eval (seed {spec.seed}): {len(fit):,} fit, {len(held):,} eval images."
        )
        return _Part("fit", pool, fit), _Part("eval", pool, held)
    parts = [
        _Part(n, source.pools[n], np.arange(len(source.pools[n].labels))) for n in (_FIT, _EVAL)
    ]
    for part in parts:
        if len(part.indices) == 0:
            raise LoadError(f"the {part.name} part (train / test) of the dataset is empty")
    notes.append(
        f"Official split: {len(parts[0].indices):,} fit, {len(parts[1].indices):,} eval "
        "(the source's own split; eval_fraction does not apply)."
    )
    return parts[0], parts[1]


def _cap(parts: tuple[_Part, _Part], total: int, seed: int, why: str, notes: list[str]) -> None:
    """Subsample the parts in place to the caps and ``total`` (stratified, seeded)."""
    keeps = _allocate(len(parts[0].indices), len(parts[1].indices), total)
    for salt, (part, keep) in enumerate(zip(parts, keeps, strict=True), start=1):
        if keep < len(part.indices):
            rng = np.random.default_rng([seed, salt])  # apart from the split's generator
            notes.append(
                f"The {part.name} part was subsampled to {keep:,} of {len(part.indices):,} "
                f"images (stratified by class, seed {seed}; {why})."
            )
            part.indices = stratified_subsample(part.pool.labels, part.indices, keep, rng)


def _allocate(n_fit: int, n_eval: int, total: int) -> tuple[int, int]:
    """How many fit and eval images to keep: the caps, then ``total`` shared in proportion."""
    fit, held = min(n_fit, FIT_CAP), min(n_eval, EVAL_CAP)
    if fit + held > total:
        held = max(1, min(held, round(total * held / (fit + held))))
        fit = max(1, total - held)
    return fit, held


# --- preprocessing --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    value: Any
    origin: str  # for the notes: the setting as the reader knows it, "the model's preprocessing" …


def _model_preprocessing(preprocessing: Mapping[str, Any] | None) -> DataSpec:
    """The model's declared preprocessing, validated like a spec (any field may be None)."""
    pre = dict(preprocessing or {})
    try:
        return DataSpec(
            source="model",
            size=pre.get("size"),
            channels=pre.get("channels"),
            mean=pre.get("mean"),
            std=pre.get("std"),
        )
    except (TypeError, ValueError) as err:
        raise LoadError(f"the model's declared preprocessing is unusable: {err}") from None


#: The model's declared settings each ``DataSpec.from_images`` name sets aside.
_MODEL_SETTINGS = {"size": ("size",), "channels": ("channels",), "normalisation": ("mean", "std")}


def _not_from_images(
    preprocessing: Mapping[str, Any] | None, spec: DataSpec, notes: list[str]
) -> dict[str, Any]:
    """The model's declared preprocessing without what the spec takes from the images; a note
    names what was set aside (a 224×224 ImageNet model shown 28×28 digits as they are)."""
    kept = dict(preprocessing or {})
    for name in spec.from_images:
        declared = [f for f in _MODEL_SETTINGS[name] if kept.get(f) is not None]
        if declared:
            shown = ", ".join(f"{f} {_shown(f, kept.pop(f))}" for f in declared)
            notes.append(f"The images' own {name}, not the model's declared {shown}.")
    return kept


def _shown(setting: str, value: Any) -> str:
    if setting == "size":
        height, width = (value, value) if isinstance(value, int) else value
        return f"{height}×{width}"
    if isinstance(value, tuple | list):
        return _fmt(tuple(float(v) for v in value))
    return str(value)


def _pick(spec_value: Any, model_value: Any, name: str) -> _Setting | None:
    """The user's setting ``name`` (an ``OPTIONS`` name), else the model's, else None."""
    if spec_value is not None:
        return _Setting(spec_value, option(name))
    if model_value is not None:
        return _Setting(model_value, "the model's preprocessing")
    return None


def _per_channel(setting: _Setting, channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in setting.value)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise LoadError(
            f"{what} has {len(values)} values (from {setting.origin}) but the images have "
            f"{channels} channel(s): give one value per channel, or set {option('channels')}"
        )
    return values


def _to_tensor(
    pool: Pool, indices: np.ndarray, channels: int, size: tuple[int, int]
) -> torch.Tensor:
    """Images at ``indices`` as float32 pixels in [0, 1], (n, channels, *size)."""
    out = torch.empty(len(indices), channels, *size)
    at = 0
    for chunk in pool.read(indices):
        x = torch.from_numpy(chunk)
        x = x.float().div_(255) if chunk.dtype == np.uint8 else x.float()
        if x.shape[1] != channels:  # 3 -> 1: mean over R, G, B; 1 -> 3: grey repeated
            x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != size:
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out[at : at + len(x)] = x
        at += len(x)
    return out


def _statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of (N, C, H, W) images, one channel at a time."""
    means, stds = [], []
    for c in range(images.shape[1]):
        std, mean = torch.std_mean(images[:, c], correction=0)
        means.append(float(mean))
        stds.append(float(std))
    return tuple(means), tuple(stds)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class _Target:
    """What the images become, and where each setting came from."""

    channels: int
    size: tuple[int, int]
    mean: _Setting | None
    std: _Setting | None


def _target(
    shapes: dict[tuple[int, int, int], str], spec: DataSpec, model: DataSpec, notes: list[str]
) -> _Target:
    """Channels and size from the spec, the model, else the images (which must agree)."""
    source_channels = {c for c, _, _ in shapes}
    bad = sorted(c for c in source_channels if c not in (1, 3))
    if bad:
        raise LoadError(f"images have {bad[0]} channels; only 1 (grey) or 3 (RGB) are supported")
    mean, std = _pick(spec.mean, model.mean, "mean"), _pick(spec.std, model.std, "std")
    channel = _pick(spec.channels, model.channels, "channels")
    wide = [(w, s) for w, s in (("mean", mean), ("std", std)) if s and len(s.value) == 3]
    if channel is None and wide:  # a 3-value mean or std is for RGB inputs
        channel = _Setting(3, f"the 3-value {wide[0][0]} from {wide[0][1].origin}")
    channels = channel.value if channel else max(source_channels)
    if source_channels != {channels}:
        how = "Colour images averaged to 1" if channels == 1 else "Grey images repeated to 3"
        notes.append(f"{how} channels ({channel.origin if channel else 'as some are colour'}).")
    sizes = {(h, w): example for (_, h, w), example in shapes.items()}
    resize = _pick(spec.size, model.size, "size")
    if resize is None:
        if len(sizes) > 1:
            (a, first), (b, second) = list(sizes.items())[:2]
            raise LoadError(
                f"images have different sizes ({a[0]}×{a[1]} in {first}, {b[0]}×{b[1]} in "
                f"{second}): set {option('size')} to resize them all"
            )
        return _Target(channels, next(iter(sizes)), mean, std)
    size = tuple(resize.value)
    resized = sorted(s for s in sizes if s != size)
    if resized:
        notes.append(
            f"Resized {', '.join(f'{h}×{w}' for h, w in resized[:3])} images to "
            f"{size[0]}×{size[1]} (bilinear, antialiased when shrinking; from {resize.origin})."
        )
    return _Target(channels, size, mean, std)  # type: ignore[arg-type]


def _normalisation(
    target: _Target, fit_images: torch.Tensor, notes: list[str]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std: the spec's, else the model's, else the fit images' own."""
    own_mean, own_std = _statistics(fit_images) if not (target.mean and target.std) else ((), ())
    if target.std is None and min(own_std) <= 0:
        raise LoadError(f"the fit images are all one colour (their std is 0): set {option('std')}")
    mean = _per_channel(target.mean, target.channels, "mean") if target.mean else own_mean
    std = _per_channel(target.std, target.channels, "std") if target.std else own_std
    notes.append(
        f"Normalised per channel with mean {_fmt(mean)} (from "
        f"{target.mean.origin if target.mean else 'the fit images'}) and std {_fmt(std)} "
        f"(from {target.std.origin if target.std else 'the fit images'})."
    )
    return mean, std


def _prepare(
    source: Source,
    spec: DataSpec,
    preprocessing: Mapping[str, Any] | None,
    max_images: int,
    name: str,
    notes: list[str],
) -> LoadedData:
    """Split, cap, convert and normalise ``source`` into a ``LoadedData``."""
    if max_images < 2:
        raise LoadError(
            f"max_images must be at least 2 (a fit and an eval image), not {max_images}"
        )
    classes = _check_labels(source)
    notes.extend(source.notes)
    model = _model_preprocessing(_not_from_images(preprocessing, spec, notes))
    parts = _split(source, spec, notes)
    limits = f"limits fit {FIT_CAP:,}, eval {EVAL_CAP:,}, both {max_images:,}"
    _cap(parts, max_images, spec.seed, limits, notes)
    shapes: dict[tuple[int, int, int], str] = {}
    for part in parts:
        shapes = {**part.pool.shapes(part.indices), **shapes}
    target = _target(shapes, spec, model, notes)
    # the memory budget depends on the output shape, so it comes once that is known
    budget = MAX_TENSOR_BYTES // (target.channels * target.size[0] * target.size[1] * 4)
    _cap(parts, max(2, budget), spec.seed, f"{MAX_TENSOR_BYTES / 2**30:g} GiB of tensors", notes)

    images = [_to_tensor(p.pool, p.indices, target.channels, target.size) for p in parts]
    mean, std = _normalisation(target, images[0], notes)
    for x in images:
        x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    labels = [torch.from_numpy(p.pool.labels[p.indices]) for p in parts]
    missing = sorted(set(range(len(classes))) - set(labels[1].tolist()))
    if missing:
        notes.append(f"Classes without eval images: {_sample([classes[i] for i in missing])}.")
    fit, held = (
        ImageDataset(name, p.name, x, y, classes, mean, std)
        for p, x, y in zip(parts, images, labels, strict=True)
    )
    single = _SINGLE in source.pools
    return LoadedData(
        fit,
        held,
        spec,
        tuple(parts[0].indices.tolist()) if single else None,
        tuple(parts[1].indices.tolist()) if single else None,
        tuple(notes),
    )


# --- entry point ----------------------------------------------------------------------------


def _bundled(
    spec: DataSpec, preprocessing: Mapping[str, Any] | None, max_images: int
) -> LoadedData:
    """The bundled MNIST: exactly ``load_mnist`` unless the spec changes its preprocessing."""
    if (spec.size, spec.channels, spec.mean, spec.std) == (None, None, None, None):
        note = "Bundled MNIST with its fixed split (fit 10,000, eval 5,000), normalised as always."
        return LoadedData(load_mnist("fit"), load_mnist("eval"), spec, None, None, (note,))
    pools: dict[str, Pool] = {}
    for part in (_FIT, _EVAL):
        x, y = mnist_pixels(part)
        pools[part] = ArrayPool(x[:, None], y.astype(np.int64))
    source = Source(
        pools, tuple(str(d) for d in range(10)), ["Bundled MNIST with its fixed split."]
    )
    return _prepare(source, spec, preprocessing, max_images, "mnist", [])


def load_data(
    spec: DataSpec,
    *,
    resolve: Callable[[str], Path] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    max_bytes: int | None = None,
    max_images: int = 60_000,
) -> LoadedData:
    """The fit and eval parts of the dataset ``spec`` names, preprocessed for a model.

    Args:
        spec: source, size, channels, mean, std, eval_fraction and seed.
        resolve: maps ``spec.source`` (a path or ``store:`` reference) to a local path;
            default ``default_store().path``.
        preprocessing: the model's declared preprocessing, ``{"size": (H, W), "mean": (C,),
            "std": (C,)}`` (optionally ``"channels"``), used where the spec says None.
        max_bytes: largest file read (an .npz, .zip, CIFAR batch or IDX file); default the
            upload limit.
        max_images: most images kept, fit and eval together (besides the caps).

    Returns:
        ``LoadedData`` with images float32 (N, C, H, W), labels int64 (N,).

    Raises:
        LoadError: for anything wrong with the data or the settings, with one line that says
        what (see the module docstring).
    """
    try:
        if spec.bundled:
            return _bundled(spec, preprocessing, max_images)
        try:
            path = Path((resolve or default_store().path)(spec.source))
        except (OSError, ValueError) as err:
            raise LoadError(str(err)) from None
        with contextlib.ExitStack() as stack:
            context = _Context(max_bytes, stack)
            source = _read_source(path, context)
            return _prepare(
                source, spec, preprocessing, max_images, Path(spec.source).name, context.notes
            )
    except LoadError as err:
        # one line, whatever a library put in the message we quote
        line = " ".join(str(err).split())
        if line == str(err):
            raise
        raise LoadError(line) from None
