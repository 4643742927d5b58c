"""What a workbench works on, as plain, hashable data: a *subject*.

A subject says where the architecture comes from (a **model source**), which weights (by the
SHA-256 of their bytes), and which data with which preprocessing (a **data spec**). Caches, the
URL, the CLI and saved experiments are keyed by it, never by a bare model name: a model that
comes from a file, or whose weights were fine-tuned, is a different subject, and nothing cached
for one is reused for another. The bundled models are subjects like any other.

Text forms, the same in the CLI, the URL and the app:

- model source: ``lenet5`` (bundled), ``torchvision:resnet18``, ``timm:resnet18``,
  ``path/to/model.py:ClassName``, ``model.pt2`` (torch.export), ``model.onnx``,
  ``torchscript:model.pt`` or ``model.ts``, ``pickle:model.pt`` (a whole pickled module: only
  with the operator's explicit opt-in);
  a file kept in the content-addressed store is written ``store:<sha256>.<suffix>``;
- weights: ``sha256:<hex>`` (None: the source's own, e.g. a bundled model's committed ones);
- data: ``mnist`` (bundled) or a path (``.npz``, an ImageFolder tree or ``.zip``, a CIFAR-10 or
  MNIST folder) with size, channels, mean and std.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceKind:
    """A kind of model source: where an architecture (and maybe its weights) comes from.

    Attributes:
        name: the kind, also the ``kind:`` prefix where ``prefixed``.
        written: how a user writes one, for help texts and messages.
        prefixed: whether ``kind:ref`` names it explicitly.
        suffixes: file suffixes that name it without a prefix.
        takes_args: built by calling a constructor, which takes keyword arguments.
        runs_code: loading it can run code that came with it (see ``runs_user_code``).
        reads_file: it reads a file (a path or a ``store:`` reference).
    """

    name: str
    written: str
    prefixed: bool = False
    suffixes: tuple[str, ...] = ()
    takes_args: bool = False
    runs_code: bool = False
    reads_file: bool = True


#: Every kind of model source, in the order help texts list them. The loaders
#: (``explorer.loading.models.LOADERS``) are keyed by the same names (a test holds them equal).
SOURCE_KINDS: dict[str, SourceKind] = {
    kind.name: kind
    for kind in (
        SourceKind("zoo", "a bundled name", reads_file=False),
        SourceKind("torchvision", "torchvision:ARCH", True, takes_args=True, reads_file=False),
        SourceKind("timm", "timm:NAME", True, takes_args=True, reads_file=False),
        SourceKind("python", "path/to/model.py:ClassName", takes_args=True, runs_code=True),
        SourceKind("export", "a .pt2 file", True, (".pt2",), runs_code=True),
        SourceKind("onnx", "a .onnx file", True, (".onnx",)),
        SourceKind(
            "torchscript",
            "torchscript:FILE (or a .ts file)",
            True,
            (".ts", ".torchscript"),
            runs_code=True,
        ),
        SourceKind("pickle", "pickle:FILE", True, runs_code=True),
    )
}
#: Suffixes that name a self-contained model file, and the kind each one is.
MODEL_FILE_KINDS = {suffix: k.name for k in SOURCE_KINDS.values() for suffix in k.suffixes}
#: Explicit prefixes ``kind:ref``.
MODEL_PREFIXES = tuple(name for name, kind in SOURCE_KINDS.items() if kind.prefixed)
MODEL_KINDS = tuple(SOURCE_KINDS)
#: Kinds built by calling a constructor, which takes keyword arguments.
ARGS_KINDS = tuple(name for name, kind in SOURCE_KINDS.items() if kind.takes_args)


def how_sources_are_written(bundled: bool = True) -> str:
    """The ways to name a model source, for messages ("a bundled name, torchvision:ARCH, …")."""
    ways = [k.written for k in SOURCE_KINDS.values() if bundled or k.name != "zoo"]
    return ", ".join(ways[:-1]) + " or " + ways[-1]


STORE_PREFIX = "store:"
HASH_PREFIX = "sha256:"


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ModelSource:
    """Where an architecture comes from.

    Attributes:
        kind: one of ``MODEL_KINDS``.
        ref: the bundled name, the torchvision or timm architecture, ``path.py:ClassName``, or
            a file.
        args: constructor keyword arguments as canonical JSON (``"{}"`` when none), for
            ``python``, ``torchvision`` and ``timm`` sources, e.g. ``{"num_classes": 10}``.
        digest: ``"sha256:<hex>"`` of a local file source's bytes (read when the source is
            made, if the file is there), so that a file changed at the same path is another
            source and nothing cached for the old content is reused; None for the bundled,
            torchvision and timm sources and ``store:`` files (their name is their hash).
    """

    kind: str
    ref: str
    args: str = "{}"
    digest: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {MODEL_KINDS}")
        if not self.ref.strip():
            raise ValueError("a model source needs a name or a path")
        try:
            args = json.loads(self.args)
        except json.JSONDecodeError as err:
            raise ValueError(
                f'model arguments must be JSON, e.g. {{"num_classes": 10}}: {err}'
            ) from None
        if not isinstance(args, dict):
            raise ValueError(f"model arguments must be a JSON object, got {self.args!r}")
        if args and self.kind not in ARGS_KINDS:
            raise ValueError(f"a {self.kind} model takes no constructor arguments")
        object.__setattr__(self, "args", _canonical_json(args))
        if self.digest is not None and not _is_digest(self.digest):
            raise ValueError(f"a file's content hash is sha256:<64 hex>; got {self.digest!r}")
        local = self.local_file
        if self.digest is None and local is not None and Path(local).is_file():
            object.__setattr__(self, "digest", cached_file_digest(local))
        if self.kind == "python":
            path, sep, name = self.ref.rpartition(":")
            if not sep or not path.endswith(".py") or not name.isidentifier():
                raise ValueError(
                    f"a Python model source is path/to/model.py:ClassName, got {self.ref!r}"
                )

    @classmethod
    def parse(
        cls, text: str, args: Mapping[str, Any] | str | None = None, digest: str | None = None
    ) -> ModelSource:
        """A source from its text form (see the module docstring); ``digest``: a local file's
        content hash as recorded before (None: read it from the file now)."""
        text = text.strip()
        payload = _canonical_json(dict(args)) if isinstance(args, Mapping) else (args or "{}")
        prefix, sep, rest = text.partition(":")
        if sep and prefix in MODEL_PREFIXES:
            return cls(prefix, rest, payload, digest)
        if ".py:" in text:  # before the store: an uploaded class is store:<hex>.py:Name
            return cls("python", text, payload, digest)
        if text.startswith(STORE_PREFIX):
            return cls(_kind_of_file(text), text, payload, digest)
        if Path(text).suffix.lower() in MODEL_FILE_KINDS:
            return cls(_kind_of_file(text), text, payload, digest)
        if Path(text).suffix.lower() in (".pt", ".pth", ".bin", ".safetensors"):
            raise ValueError(
                f"{text!r} may hold weights, a TorchScript or a pickled model: give the "
                f"architecture and --weights {text}, or torchscript:{text}, or pickle:{text}"
            )
        if "/" in text or "\\" in text or Path(text).suffix:
            raise ValueError(
                f"{text!r} is not a model source this tool knows: give " + how_sources_are_written()
            )
        return cls("zoo", text, payload, digest)

    def __str__(self) -> str:
        if self.kind in ("zoo", "python") or (
            self.kind != "pickle" and _kind_of_file(self.ref) == self.kind
        ):
            return self.ref
        return f"{self.kind}:{self.ref}"

    @property
    def constructor_args(self) -> dict[str, Any]:
        return json.loads(self.args)

    @property
    def runs_user_code(self) -> bool:
        """Whether loading it can run code that came with it: a .py file is imported, a pickle
        unpickled; a TorchScript file is a program, and torch.export.load evaluates parts of a
        .pt2 (shape expressions through sympy, pickled constants). ONNX and weights are data;
        torchvision and timm architectures are our dependencies' code."""
        return SOURCE_KINDS[self.kind].runs_code

    @property
    def file(self) -> str | None:
        """The file this source reads (a path or a ``store:`` reference), if any."""
        if not SOURCE_KINDS[self.kind].reads_file:
            return None
        return self.ref.rpartition(":")[0] if self.kind == "python" else self.ref

    @property
    def local_file(self) -> str | None:
        """The local path this source reads, if any (not a ``store:`` file)."""
        file = self.file
        return None if file is None or file.startswith(STORE_PREFIX) else file


def _is_digest(text: str) -> bool:
    hexdigits = text[len(HASH_PREFIX) :]
    return (
        text.startswith(HASH_PREFIX)
        and len(hexdigits) == 64
        and all(c in "0123456789abcdef" for c in hexdigits)
    )


def _kind_of_file(text: str) -> str:
    return MODEL_FILE_KINDS.get(Path(text).suffix.lower(), "pickle")


def _floats(value: Any, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number or one per channel, got {value!r}") from None
    if not numbers or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{what} must be finite numbers, got {value!r}")
    return numbers


#: The preprocessing settings a spec can take from the images rather than from the model.
FROM_IMAGES = ("size", "channels", "normalisation")


@dataclass(frozen=True)
class DataSpec:
    """A dataset and how its images become model inputs.

    Attributes:
        source: ``"mnist"`` (bundled) or a path / ``store:`` reference to an ``.npz``, an
            ImageFolder tree or ``.zip``, or a folder in CIFAR-10 (python) or MNIST (IDX) layout.
        size: (height, width) images are resized to; None = as they are (or the model's).
        channels: 1 or 3 (grey images are repeated, colour ones averaged); None = as they are.
        mean, std: per-channel normalisation (one value for all channels allowed); None = the
            model's declared preprocessing, else the dataset's own statistics.
        eval_fraction: share of each class held out for evaluation (a user dataset is split
            once, stratified by class); the bundled MNIST has its fixed split.
        seed: seed of that split.
        from_images: the settings (of ``FROM_IMAGES``) taken from the images themselves even
            where the model declares its own: ``"size"`` keeps their size where the model
            says 224×224, ``"normalisation"`` uses their own mean and std, not ImageNet's.
            A setting given above wins over both.
    """

    source: str = "mnist"
    size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    eval_fraction: float = 0.3
    seed: int = 0
    from_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        own = tuple(self.from_images or ())
        unknown = sorted(set(own) - set(FROM_IMAGES))
        if unknown:
            raise ValueError(
                f"from_images takes {', '.join(FROM_IMAGES)}; unknown: {', '.join(unknown)}"
            )
        set_(self, "from_images", tuple(n for n in FROM_IMAGES if n in own))
        if not str(self.source).strip():
            raise ValueError("a data spec needs a source: 'mnist' or a path")
        if self.size is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= 4096 for s in size):
                raise ValueError(f"size must be one or two whole numbers in 1..4096, got {size!r}")
            set_(self, "size", size)
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        set_(self, "mean", _floats(self.mean, "mean"))
        std = _floats(self.std, "std")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        set_(self, "std", std)
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction!r}")

    @property
    def bundled(self) -> bool:
        return self.source == "mnist"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "size": list(self.size) if self.size else None,
            "channels": self.channels,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "eval_fraction": self.eval_fraction,
            "seed": self.seed,
            # only when set: the JSON (and every key made of it) of older specs stays the same
            **({"from_images": list(self.from_images)} if self.from_images else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        unknown = sorted(set(data) - {*cls().to_dict(), "from_images"})
        if unknown:
            raise ValueError(f"unknown data field(s) {unknown}")
        size = data.get("size")
        return cls(
            source=data.get("source", "mnist"),
            size=tuple(size) if isinstance(size, list) else size,
            channels=data.get("channels"),
            mean=data.get("mean"),
            std=data.get("std"),
            eval_fraction=data.get("eval_fraction", 0.3),
            seed=data.get("seed", 0),
            from_images=tuple(data.get("from_images") or ()),
        )


@dataclass(frozen=True)
class Subject:
    """A model source, its weights and its data: what every number is measured on.

    Attributes:
        model: where the architecture comes from.
        weights: ``"sha256:<hex>"`` of the weights file, or None for the source's own.
        data: the dataset and its preprocessing.
    """

    model: ModelSource
    weights: str | None = None
    data: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self) -> None:
        if self.weights is not None and not _is_digest(self.weights):
            raise ValueError(
                f"weights are named by their hash, sha256:<64 hex>; got {self.weights!r}"
            )

    @classmethod
    def bundled(cls, name: str) -> Subject:
        """A bundled model with its committed weights on the bundled MNIST."""
        return cls(ModelSource("zoo", name))

    @classmethod
    def of(cls, subject: Subject | str) -> Subject:
        """``subject`` itself, or the subject a model-source text names with its own weights."""
        return subject if isinstance(subject, Subject) else cls(ModelSource.parse(subject))

    @property
    def is_bundled(self) -> bool:
        """A bundled model on its bundled data (names alone reproduce it anywhere)."""
        return self.model.kind == "zoo" and self.data == DataSpec()

    def with_weights(self, digest: str | None) -> Subject:
        """The same architecture and data with other weights (a fine-tune, an upload)."""
        return Subject(self.model, digest, self.data)

    def to_dict(self) -> dict[str, Any]:
        plain = {
            "model": str(self.model),
            "model_args": json.loads(self.model.args),
            "weights": self.weights,
            "data": self.data.to_dict(),
        }
        if self.model.digest is not None:  # left out otherwise: older keys stay as they were
            plain["model_digest"] = self.model.digest
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subject:
        if not isinstance(data, Mapping) or "model" not in data:
            raise ValueError("a subject is an object with at least a 'model' field")
        return cls(
            ModelSource.parse(
                str(data["model"]), data.get("model_args") or None, data.get("model_digest")
            ),
            data.get("weights"),
            DataSpec.from_dict(data.get("data") or {}),
        )

    def to_json(self) -> str:
        return _canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Subject:
        return cls.from_dict(json.loads(text))

    @property
    def key(self) -> str:
        """A short, stable identifier: the hash of the canonical plain-data form."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode()).hexdigest()[:16]

    @property
    def model_label(self) -> str:
        """The model part of ``label``: a file's name, or "uploaded .onnx 3fa2c1"."""
        return _short(str(self.model), "uploaded", {})

    @property
    def label(self) -> str:
        """A few words for people, e.g. "lenet5", "net.py:Net · weights 3fa2c1 · data shapes.zip"
        or "uploaded .onnx 3fa2c1 · data upload 9b01de" (a store file has no name of its own)."""
        return self.label_with({})

    def label_with(self, names: Mapping[str, str]) -> str:
        """``label``, with the names files were uploaded as where ``names`` knows them
        (``store:`` reference or weights digest -> file name; display only, never a key)."""
        parts = [_short(str(self.model), "uploaded", names)]
        if self.weights:
            parts.append(
                f"weights {names.get(self.weights) or self.weights[len(HASH_PREFIX) :][:6]}"
            )
        if not self.data.bundled:
            parts.append("data " + _short(self.data.source, "upload", names))
        return " · ".join(parts)


def _short(ref: str, word: str, names: Mapping[str, str]) -> str:
    """A path's file name; for a ``store:`` file the name it was uploaded as (``names``), else
    its suffix and the hash's first digits."""
    if STORE_PREFIX not in ref:
        path, colon, rest = ref.partition(".py:")
        return Path(path).name + colon + rest if colon else Path(ref).name
    head, _, tail = ref.partition(STORE_PREFIX)
    name, _, rest = tail.partition(":")  # a python source: store:<hex>.py:ClassName
    digest, _, suffix = name.partition(".")
    shown = names.get(STORE_PREFIX + name) or f"{word} .{suffix} {digest[:6]}"
    return f"{head}{shown}" + (f":{rest}" if rest else "")


@functools.lru_cache(maxsize=256)
def _digest_of_version(path: str, modified_ns: int, size: int) -> str:
    return file_digest(path)


def cached_file_digest(path: str | Path) -> str:
    """``file_digest``, read again only when the file's modification time or size changed."""
    stat = Path(path).stat()
    return _digest_of_version(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in chunks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return HASH_PREFIX + digest.hexdigest()


#: URL query parameters of a subject (beside the plan's); a bundled subject is just ``model``.
SUBJECT_FIELDS = (
    "model",
    "model_args",
    "weights",
    "data",
    "size",
    "channels",
    "mean",
    "std",
    "eval_fraction",
    "split_seed",
    "from_images",
)


def subject_to_query(subject: Subject) -> dict[str, str]:
    """The subject as short URL query parameters (defaults left out)."""
    query = {"model": str(subject.model)}
    if subject.model.constructor_args:
        query["model_args"] = subject.model.args
    if subject.weights:
        query["weights"] = subject.weights
    data, default = subject.data, DataSpec()
    if data.source != default.source:
        query["data"] = data.source
    if data.size:
        query["size"] = f"{data.size[0]}x{data.size[1]}"
    if data.channels:
        query["channels"] = str(data.channels)
    for name in ("mean", "std"):
        values = getattr(data, name)
        if values:
            query[name] = ",".join(f"{v:g}" for v in values)
    if data.eval_fraction != default.eval_fraction:
        query["eval_fraction"] = f"{data.eval_fraction:g}"
    if data.seed != default.seed:
        query["split_seed"] = str(data.seed)
    if data.from_images:
        query["from_images"] = ",".join(data.from_images)
    return query


def subject_from_query(query: Mapping[str, str]) -> Subject:
    """Inverse of ``subject_to_query``; a ValueError that names the bad parameter otherwise."""

    def number(name: str, kind: type = float) -> Any:
        try:
            return kind(query[name])
        except ValueError:
            raise ValueError(f"{name} must be a number, got {query[name]!r}") from None

    size = None
    if query.get("size"):
        height, _, width = query["size"].lower().partition("x")
        if not (height.isdigit() and (not width or width.isdigit())):
            raise ValueError(f"size must look like 32x32, got {query['size']!r}")
        size = (int(height), int(width or height))
    data = DataSpec(
        source=query.get("data", "mnist"),
        size=size,
        channels=number("channels", int) if query.get("channels") else None,
        mean=[float(v) for v in query["mean"].split(",")] if query.get("mean") else None,
        std=[float(v) for v in query["std"].split(",")] if query.get("std") else None,
        eval_fraction=number("eval_fraction") if query.get("eval_fraction") else 0.3,
        seed=number("split_seed", int) if query.get("split_seed") else 0,
        from_images=tuple(v for v in query.get("from_images", "").split(",") if v),
    )
    source = ModelSource.parse(query.get("model", ""), query.get("model_args") or None)
    return Subject(source, query.get("weights") or None, data)
