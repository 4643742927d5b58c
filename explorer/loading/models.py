"""A model from a ``ModelSource``: built, given its weights, checked, on the CPU in eval mode.

One loader per kind of source (``LOADERS``, kind -> function); ``load_model`` resolves the
files, runs the loader, applies a weights file when one is given, and checks the result (it has
parameters or buffers, every float tensor is finite). Every problem is a ``LoadError`` with one
line naming the file and what was expected.

What can run code from a file, and what guards it:

- weights (``.pt``/``.pth``/``.ckpt``/``.bin``): ``torch.load(weights_only=True)`` only; a file
  that pickles anything but tensors is refused. ``.safetensors``: no code at all.
- ``python`` (``model.py:Net``): importing the file runs it: only with ``trust_code``.
- ``pickle``: unpickling a whole module runs code: only with ``trust_pickle``.
- ``export`` (``.pt2``): ``torch.export.load`` is NOT safe on untrusted files. Reading its source
  (torch 2.14, ``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``):
  weights or constants flagged ``use_pickle`` go through ``torch.load(weights_only=False)``,
  "opaque" constants through ``pickle.loads``, example inputs fall back to
  ``weights_only=False`` when the safe load fails, symbolic shapes are parsed with
  ``sympy.sympify`` (which ``eval``\\ s the string: a test writes a marker file that way), and an
  AOTInductor entry loads a compiled shared library. So a ``.pt2`` needs ``trust_code``.
- ``torchscript``: a TorchScript archive is a program (PyTorch's SECURITY.md: treat it as
  executable code from its provider): only with ``trust_code``.
- ``onnx``: parsed by protobuf and converted by onnx2torch into a ``torch.fx`` module, whose
  Python source fx generates and ``exec``\\ s. onnx2torch writes each ONNX node's *name* into that
  source unescaped (``getattr(self, "<name>")``), so a crafted name runs code on the first
  forward pass; node names are therefore rewritten to plain identifiers before converting (they
  carry no meaning). External-data files must sit next to the model under a plain file name.
- ``zoo``, ``torchvision`` and ``timm``: our own code and our dependencies'; nothing is ever
  downloaded (torchvision ``weights=None``, timm ``pretrained=False``; timm arguments that name
  a checkpoint, a URL or a hub repository are refused). timm is an optional extra.

The CLI passes ``trust_code=True`` (a user's own local files); an app serving uploads opts in
with ``--trust-code`` / ``PRUNING_EXPLORER_TRUST_CODE=1`` and ``--trust-pickle``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import pickle
import re
import sys
import threading
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.engine.inspection import attention_heads
from explorer.engine.structure import unpack_multihead_attention
from explorer.engine.subject import STORE_PREFIX, ModelSource, cached_file_digest, file_digest
from explorer.loading.archives import MAX_TOTAL_BYTES, check_members
from explorer.loading.errors import LoadError, check_file
from explorer.loading.options import allow, option, reader
from explorer.loading.store import default_store


def trust_code_hint() -> str:
    """How the app is let import or deserialise code-carrying model files (the operator's
    choice; the command line trusts its user's own files)."""
    if reader() == "app":
        return f"{allow('trust_code')} (or PRUNING_EXPLORER_TRUST_CODE=1) to accept it"
    return (
        "the command line allows this for your own local files; an app that serves uploads "
        "must be started with --trust-code (or PRUNING_EXPLORER_TRUST_CODE=1)"
    )


def _num_classes_hint() -> str:
    return f"""set {option("model_args")} to e.g. '{{"num_classes": 10}}'"""


def pickle_advice() -> str:
    """The advice for a file that pickles a whole model, worded for its reader."""
    return (
        "unpickling runs arbitrary code from the file, so it is allowed only for files you "
        f"trust: {allow('trust_pickle')}; or save a state_dict instead: "
        "torch.save(model.state_dict(), 'weights.pt') and load it with "
        f"{option('weights')}"
    )


#: Keys under which checkpoints commonly wrap their state_dict.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
#: Prefixes that wrappers add to every key (DataParallel, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: The ONNX opset models are lowered to when onnx2torch lacks a converter for a newer one.
ONNX_FALLBACK_OPSET = 17
#: State-dict prefix of the training-only auxiliary classifiers (GoogLeNet, Inception v3).
AUX_PREFIX = "aux"
#: How many names an error message lists before "and N more".
LISTED = 5


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for a workbench, and what its source says about it.

    Attributes:
        model: on the CPU, in eval mode; ``requires_grad`` left as loaded.
        source: where it came from.
        weights: ``"sha256:<hex>"`` of the weights file applied; None = the source's own.
        input_shape: one sample's (C, H, W) when the source fixes it (a bundled card, a
            torchvision architecture's crop size, a timm model's input size, an ONNX / export
            graph input), else None.
        num_classes: outputs of the final layer (or the graph's output) when known.
        preprocessing: ``{"size": (h, w), "mean": (...), "std": (...)}`` when the model
            declares it (torchvision: its default weights' transforms; timm: its pretrained
            config), else None.
        supports_hooks: False when per-layer Python hooks never fire (TorchScript, a
            torch.export graph); pages that need them say so.
        notes: what the user should know, one sentence each.
    """

    model: nn.Module
    source: ModelSource
    weights: str | None
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    preprocessing: dict[str, Any] | None
    supports_hooks: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Request:
    """What a loader gets: the source, the resolved weights file and the operator's settings."""

    source: ModelSource
    weights: Path | None
    trust_code: bool
    trust_pickle: bool
    resolve: Callable[[str], Path]
    max_bytes: int | None

    def file(self, ref: str, what: str) -> Path:
        """The checked local file behind ``ref`` (a path or a ``store:`` reference)."""
        try:
            path = self.resolve(ref)
        except (OSError, ValueError) as err:
            raise LoadError(f"{what} {ref}: {_first_line(err)}") from None
        return check_file(path, what, self.max_bytes)


@dataclass
class _Built:
    """What a loader returns; ``load_model`` checks it and turns it into a ``LoadedModel``."""

    model: nn.Module
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    preprocessing: dict[str, Any] | None = None
    supports_hooks: bool = True
    notes: list[str] = field(default_factory=list)
    #: the loader applied the request's weights itself (zoo, torchvision, timm)
    weights_applied: bool = False


class TracedModule(nn.Module):
    """A traced graph (a torch.export program, a converted ONNX graph) as an ordinary module.

    ``ExportedProgram.module()`` refuses ``.train()`` / ``.eval()`` (torch raises: the graph was
    fixed when it was exported, so a mode switch could not change it), and a graph traced with
    a fixed batch size refuses any other. This thin wrapper, which ``copy.deepcopy`` keeps
    intact (instance patches would be lost), makes both work: ``train(mode)`` only sets the
    ``training`` flags, and with ``batch`` set the input is run in chunks of that size (the
    last one padded by repeating its final sample) and the outputs are joined.

    Attributes:
        program: the graph module; its state_dict keys are the original ones, under
            ``program.``.
        batch: the batch size the graph was traced for, or None when any batch works.
    """

    def __init__(self, program: nn.Module, batch: int | None = None) -> None:
        super().__init__()
        self.program = program
        self.batch = batch

    def train(self, mode: bool = True) -> TracedModule:
        for module in self.modules():  # not program.train(): torch's patch raises
            module.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        batch = self.batch
        if batch is None or kwargs or len(args) != 1 or len(args[0]) == batch:
            return self.program(*args, **kwargs)
        x = args[0]
        outputs = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            short = batch - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            outputs.append(self.program(chunk)[: batch - short])
        return torch.cat(outputs)


# --- public API ---------------------------------------------------------------------------------


def load_model(
    source: ModelSource,
    weights: str | Path | None = None,
    *,
    trust_code: bool = False,
    trust_pickle: bool = False,
    resolve: Callable[[str], Path] | None = None,
    max_bytes: int | None = None,
) -> LoadedModel:
    """Build the model ``source`` names, with ``weights`` if given; see the module docstring.

    Args:
        source: where the architecture (and maybe its weights) comes from.
        weights: a state_dict file (``.pt``/``.pth``/``.safetensors``) to apply instead of the
            source's own weights: a Path, or a string ``resolve`` maps to one
            (``store:<hex>.pt``, ``sha256:<hex>``, a path). None = the source's own.
        trust_code: allow importing a ``.py`` source and loading ``.pt2`` / TorchScript files.
        trust_pickle: allow unpickling a whole pickled module (``pickle:FILE``).
        resolve: file reference -> local path; default ``default_store().path``.
        max_bytes: size limit of each file (default: the upload limit).
    """
    if resolve is None:
        resolve = default_store().path
    weights_path: Path | None = None
    digest: str | None = None
    if weights is not None:
        if isinstance(weights, Path):
            weights_path = weights
        else:
            try:
                weights_path = resolve(weights)
            except (OSError, ValueError) as err:
                raise LoadError(f"weights file {weights}: {_first_line(err)}") from None
        weights_path = check_file(weights_path, "weights file", max_bytes)
        digest = file_digest(weights_path)
    local = source.local_file
    changed = (
        source.digest is not None
        and local is not None
        and Path(local).is_file()
        and cached_file_digest(local) != source.digest
    )
    if changed:
        raise LoadError(
            f"{Path(local).name} has changed since this model was opened (its content differs "
            "from the version the figures were computed on): open it again to use the new version"
        )
    request = _Request(source, weights_path, trust_code, trust_pickle, resolve, max_bytes)
    built = LOADERS[source.kind](request)
    if weights_path is not None and not built.weights_applied:
        state = load_weights(weights_path, max_bytes)
        apply_weights(built.model, state, f"weights file {weights_path.name}")
    model = _checked(built.model, str(source))
    notes = list(built.notes)
    unpacked = [h.name for h in attention_heads(model) if h.kind == "multihead"]
    if unpacked:
        # nn.MultiheadAttention keeps q, k, v in one packed parameter that no module call
        # reads: weight pruning, hooks and per-layer FLOPs could not reach them. An equal
        # module with Linear projections takes its place; exports give the original names.
        model = unpack_multihead_attention(model)
        notes.append(
            f"{len(unpacked)} nn.MultiheadAttention module(s) run as equal modules with "
            "Linear projections (in_proj, out_proj), so that weight pruning reaches their "
            "q, k, v weights; exported weights carry the original names (in_proj_weight)."
        )
    num_classes = built.num_classes
    if num_classes is None:
        num_classes = _final_linear_outputs(model)
    return LoadedModel(
        model=model,
        source=source,
        weights=digest,
        input_shape=built.input_shape,
        num_classes=num_classes,
        preprocessing=built.preprocessing,
        supports_hooks=built.supports_hooks,
        notes=tuple(notes),
    )


def load_weights(path: str | Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """The state_dict in a weights file, on the CPU; never runs code from the file.

    ``.pt``/``.pth``/``.ckpt``/``.bin``: ``torch.load(weights_only=True)``; a bare state_dict or
    one wrapped under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``; a ``module.``
    (DataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key is removed.
    ``.safetensors``: ``safetensors.torch.load_file``. Anything else is a ``LoadError``.

    Args:
        path: the file.
        max_bytes: its size limit (default: the upload limit).
    """
    path = check_file(path, "weights file", max_bytes)
    reader = WEIGHT_READERS.get(path.suffix.lower())
    if reader is None:
        raise LoadError(
            f"weights file {path.name}: expected a state_dict saved as "
            f"{', '.join(sorted(WEIGHT_READERS))}, got {path.suffix or 'a file with no suffix'}"
        )
    return _as_state_dict(reader(path), path.name)


def apply_weights(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` strictly, or a ``LoadError`` saying why it does not fit.

    The message names up to five missing and unexpected keys and shape mismatches
    (``"fc.weight: file 10x512, model 1000x512"``); NaN or infinite values name the tensors.

    Args:
        model: the architecture; changed in place.
        state: parameter / buffer name -> tensor.
        what: the file, for messages, e.g. ``"weights file w.pt"``.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: file {_shape_text(state[key])}, model {_shape_text(value)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"shapes differ: {_few(mismatched)}")
    if problems:
        raise LoadError(f"{what} does not fit the model: {'; '.join(problems)}")
    _check_finite(state.items(), what)
    # Modules read versions from the state_dict's _metadata (torchvision's MNASNet refuses a
    # state without one): the file's own, else this architecture's (as torch.save would write).
    ordered = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    ordered._metadata = metadata if metadata is not None else expected._metadata  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            model.load_state_dict(ordered, strict=True)
    except Exception as err:  # e.g. a dtype that cannot be copied into the parameter
        raise LoadError(f"{what} could not be loaded into the model: {_first_line(err)}") from None


# --- weights files ------------------------------------------------------------------------------


def _read_torch_weights(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no code runs)."""
    _check_zip(path, "weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise LoadError(
                f"weights file {path.name} holds a pickled model or other Python objects "
                f"({found.group(1)}), not a state_dict: {pickle_advice()}"
            ) from None
        raise LoadError(
            f"weights file {path.name} is not a valid PyTorch weights file: "
            "the unpickler refused it"
        ) from None
    except Exception as err:  # truncated archives, random bytes: torch raises many types
        raise LoadError(
            f"weights file {path.name} is not a valid PyTorch weights file: {_first_line(err)}"
        ) from None


def _read_safetensors(path: Path) -> Any:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as err:  # SafetensorError, or OSError on a short header
        raise LoadError(
            f"weights file {path.name} is not a valid safetensors file: {_first_line(err)}"
        ) from None


#: Weights file readers by suffix.
WEIGHT_READERS: dict[str, Callable[[Path], Any]] = {
    ".pt": _read_torch_weights,
    ".pth": _read_torch_weights,
    ".ckpt": _read_torch_weights,
    ".bin": _read_torch_weights,
    ".safetensors": _read_safetensors,
}


def _as_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """A flat ``str -> Tensor`` dict out of what a weights file held."""
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise LoadError(
            f"weights file {name} holds a {type(obj).__name__}, not a state_dict "
            "(a mapping of parameter names to tensors)"
        )
    if not obj:
        raise LoadError(f"weights file {name} holds an empty state_dict")
    odd = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if odd or not all(isinstance(key, str) for key in obj):
        raise LoadError(
            f"weights file {name} is not a state_dict: {_few(odd or list(map(str, obj)))} "
            "are not named tensors"
        )
    state = OrderedDict(obj)
    metadata = getattr(obj, "_metadata", None)
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = OrderedDict((key[len(prefix) :], value) for key, value in state.items())
            if metadata is not None:
                metadata = {
                    key[len(prefix) :] if key.startswith(prefix) else "": value
                    for key, value in metadata.items()
                    if key.startswith(prefix) or key == prefix.rstrip(".")
                }
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    return state


# --- loaders, one per kind ----------------------------------------------------------------------


def _load_zoo(request: _Request) -> _Built:
    """A bundled architecture with its committed weights, or the request's."""
    from explorer.zoo.models import get_spec, load_card, weights_path

    name = request.source.ref
    try:
        spec = get_spec(name)
    except ValueError as err:
        raise LoadError(str(err)) from None
    model = spec.build()
    if request.weights is not None:
        state = load_weights(request.weights, request.max_bytes)
        apply_weights(model, state, f"weights file {request.weights.name}")
    else:
        committed = weights_path(name)
        if not committed.is_file():
            raise LoadError(
                f"no committed weights for {name} at {committed}: train them with "
                "`python sample_models/train.py` or give a weights file"
            )
        apply_weights(model, load_weights(committed), f"committed weights of {name}")
    shape = load_card(name).get("input_shape")
    return _Built(
        model, input_shape=tuple(int(s) for s in shape) if shape else None, weights_applied=True
    )


def _classes_from_weights(
    args: dict[str, Any], state: Mapping[str, torch.Tensor], head: str | None, file: str
) -> dict[str, Any]:
    """``args`` with ``num_classes`` = the rows of the classifier ``head``'s weight in the
    file; a LoadError when the arguments say another count."""
    rows = state.get(f"{head}.weight") if head else None
    if rows is None or rows.ndim < 1:
        return args
    given = args.get("num_classes")
    if given is not None and given != rows.shape[0]:
        raise LoadError(
            f"{option('model_args')} say num_classes={given} but {head}.weight in {file} has "
            f"{rows.shape[0]} rows"
        )
    return {**args, "num_classes": int(rows.shape[0])}


def _load_torchvision(request: _Request) -> _Built:
    """A torchvision classification architecture, never downloading anything.

    The class count comes from the weights file (the rows of the final layer's weight), so a
    fine-tuned ``resnet18`` with 10 classes loads without ``--model-args``.
    """
    import torchvision

    arch = request.source.ref
    _check_torchvision_arch(arch)
    args = request.source.constructor_args
    if {"weights", "weights_backbone"} & set(args):
        raise LoadError(
            "torchvision weights are never downloaded here: give a weights file with "
            + option("weights")
        )
    notes = []
    state = None
    if request.weights is not None:
        state = load_weights(request.weights, request.max_bytes)
        skeleton = _build_torchvision(arch, args, meta=True)
        aux = [key for key in skeleton.state_dict() if key.lower().startswith(AUX_PREFIX)]
        has_aux = any(key.lower().startswith(AUX_PREFIX) for key in state)
        if aux and "aux_logits" not in args and not has_aux:
            # GoogLeNet / Inception v3 saved without their training-only aux heads.
            args = {**args, "aux_logits": False}
            notes.append(
                "The weights have no auxiliary heads: built with aux_logits=False "
                '(model arguments {"aux_logits": false}).'
            )
            skeleton = _build_torchvision(arch, args, meta=True)
        head = _classifier_name(skeleton)
        args = _classes_from_weights(args, state, head, request.weights.name)
    model = _build_torchvision(arch, args)
    if state is not None:
        apply_weights(model, state, f"weights file {request.weights.name}")
    else:
        classes = args.get("num_classes")
        count = (
            f"{classes} classes"
            if classes is not None
            else f"1000 classes (the default; {_num_classes_hint()})"
        )
        notes.append(f"Random initialisation: no weights given for torchvision:{arch}, {count}.")
    preprocessing = _torchvision_preprocessing(torchvision, arch)
    size = args.get("image_size")
    if isinstance(size, int):
        input_shape: tuple[int, ...] = (3, size, size)
    elif preprocessing:
        input_shape = (3, *preprocessing["size"])
    else:
        input_shape = (3, 224, 224)
    return _Built(
        model,
        input_shape=input_shape,
        num_classes=_final_linear_outputs(model),
        preprocessing=preprocessing,
        notes=notes,
        weights_applied=True,
    )


def _load_timm(request: _Request) -> _Built:
    """A timm model (``timm.create_model(name, pretrained=False, **args)``), never downloading.

    As for torchvision, the class count comes from the weights file (the rows of the weight of
    ``model.get_classifier()``), the input size and normalisation from the model's pretrained
    config (its numbers only: nothing is fetched), ``img_size`` in the arguments winning.
    """
    timm = _import_timm()
    name = request.source.ref
    args = request.source.constructor_args
    _check_timm_args(args)
    _check_timm_name(timm, name)
    notes = []
    state = None
    if request.weights is not None:
        state = load_weights(request.weights, request.max_bytes)
        head = _timm_classifier_name(_build_timm(timm, name, args, meta=True))
        args = _classes_from_weights(args, state, head, request.weights.name)
    model = _build_timm(timm, name, args)
    if state is not None:
        apply_weights(model, state, f"weights file {request.weights.name}")
    else:
        classes = args.get("num_classes")
        count = (
            f"{classes} classes"
            if classes is not None
            else f"{getattr(model, 'num_classes', 1000)} classes (the default; "
            f"{_num_classes_hint()})"
        )
        notes.append(f"Random initialisation: no weights given for timm:{name}, {count}.")
    preprocessing = _timm_preprocessing(model, args)
    classes = getattr(model, "num_classes", None)
    return _Built(
        model,
        input_shape=(preprocessing["channels"], *preprocessing["size"]),
        num_classes=classes if isinstance(classes, int) and classes > 0 else None,
        preprocessing=preprocessing,
        notes=notes,
        weights_applied=True,
    )


def _load_python(request: _Request) -> _Built:
    """``path/to/model.py:ClassName``: import the file (trusted only) and build the class."""
    file_ref, _, class_name = request.source.ref.rpartition(":")
    if not request.trust_code:
        raise LoadError(
            f"{file_ref} is Python code: loading it imports the file, which runs its code; "
            + trust_code_hint()
        )
    path = request.file(file_ref, "Python model file")
    module = _import_user_file(path, siblings=not file_ref.startswith(STORE_PREFIX))
    factory = getattr(module, class_name, None)
    if not callable(factory):
        defined = [
            name
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, nn.Module)
            and value.__module__ == module.__name__
        ]
        found = f"it defines {', '.join(defined)}" if defined else "it defines no nn.Module class"
        raise LoadError(f"{path.name} has no class {class_name}: {found}")
    args = request.source.constructor_args
    call = f"{class_name}(**{args})" if args else f"{class_name}()"
    try:
        model = factory(**args)
    except TypeError as err:
        raise LoadError(
            f"{call} failed: {_first_line(err)}; give the constructor's arguments as JSON: "
            + _num_classes_hint()
        ) from None
    except Exception as err:  # the user's constructor may raise anything
        raise LoadError(f"{call} raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"{call} returned a {type(model).__name__}, not an nn.Module")
    notes = []
    if request.weights is None:
        notes.append(f"Random initialisation: no weights given for {class_name}.")
    return _Built(model, notes=notes)


def _load_export(request: _Request) -> _Built:
    """A ``torch.export`` program (``.pt2``), trusted only (see the module docstring)."""
    if not request.trust_code:
        raise LoadError(
            f"{request.source.ref} is a torch.export program: torch.export.load can run code "
            "stored in the file (it unpickles objects and evaluates shape expressions); "
            + trust_code_hint()
        )
    path = request.file(request.source.ref, "torch.export program")
    _check_zip(path, "torch.export program")
    # torch.export.load logs a traceback as a warning before its own error on a bad archive;
    # our message replaces both
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(path)
        module = program.module()
    except Exception as err:
        raise LoadError(
            f"{path.name} is not a valid torch.export program (.pt2): {_first_line(err)}"
        ) from None
    finally:
        logger.setLevel(level)
    inputs = [_placeholder_shape(program, name) for name in program.graph_signature.user_inputs]
    input_shape = None
    notes = [
        "A torch.export program: one graph of operations, fixed when it was exported (train and "
        "eval behave alike, and per-layer hooks never fire)."
    ]
    fixed_batch = None
    if len(inputs) == 1 and inputs[0] is not None and len(inputs[0]) >= 2:
        batch, *sample = inputs[0]
        if all(isinstance(dim, int) for dim in sample):
            input_shape = tuple(sample)
        if isinstance(batch, int):
            fixed_batch = batch
            notes.append(
                f"Exported for a fixed batch of {batch}: inputs run {batch} at a time "
                "(export with a dynamic batch dimension to run faster)."
            )
    num_classes = None
    shape = _output_shape(program)
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
        num_classes = shape[1]
    if request.weights is not None:
        # the unlifted module has the exported model's own parameter names
        state = load_weights(request.weights, request.max_bytes)
        apply_weights(module, state, f"weights file {request.weights.name}")
    return _Built(
        TracedModule(module, fixed_batch),
        input_shape=input_shape,
        num_classes=num_classes,
        supports_hooks=False,
        notes=notes,
        weights_applied=True,
    )


def _load_onnx(request: _Request) -> _Built:
    """An ONNX model, checked and converted with onnx2torch into an fx ``GraphModule``."""
    import onnx

    path = request.file(request.source.ref, "ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # DecodeError and friends
        raise LoadError(f"{path.name} is not a valid ONNX file: {_first_line(err)}") from None
    _load_onnx_external_data(proto, path, request.max_bytes)
    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # ValidationError
        raise LoadError(f"{path.name} is not a valid ONNX model: {_first_line(err)}") from None
    _rename_onnx_nodes(proto.graph, path.name)
    notes = ["Converted from ONNX with onnx2torch."]
    proto = _convertible_onnx(proto, path.name, notes)
    from onnx2torch import convert

    try:
        module = convert(proto)
    except Exception as err:  # NotImplementedError for unsupported attributes, and more
        raise LoadError(f"{path.name}: onnx2torch cannot convert it: {_first_line(err)}") from None
    input_shape = None
    num_classes = None
    initializers = {tensor.name for tensor in proto.graph.initializer}
    graph_inputs = [value for value in proto.graph.input if value.name not in initializers]
    if graph_inputs:
        dims = _onnx_dims(graph_inputs[0])
        if dims is not None and len(dims) >= 2 and all(d is not None for d in dims[1:]):
            input_shape = tuple(dims[1:])
            if dims[0] is not None and not _accepts_batch(module, dims[0] + 1, input_shape):
                module = TracedModule(module, dims[0])
                notes.append(
                    f"Exported for a fixed batch of {dims[0]}: inputs run {dims[0]} at a time."
                )
    if proto.graph.output:
        dims = _onnx_dims(proto.graph.output[0])
        if dims is not None and len(dims) == 2 and dims[1] is not None:
            num_classes = dims[1]
    return _Built(module, input_shape=input_shape, num_classes=num_classes, notes=notes)


def _load_torchscript(request: _Request) -> _Built:
    """A TorchScript archive, trusted only (it is a program)."""
    if not request.trust_code:
        raise LoadError(
            f"{request.source.ref} is a TorchScript program, code that runs when the model "
            "does; " + trust_code_hint()
        )
    path = request.file(request.source.ref, "TorchScript model")
    _check_zip(path, "TorchScript model")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise LoadError(
            f"{path.name} is not a valid TorchScript file: {_first_line(err)}"
        ) from None
    return _Built(
        module,
        supports_hooks=False,
        notes=[
            "A TorchScript model: it runs without Python hooks, so pages that need them "
            "(activations, saliency by layer) are not available for it."
        ],
    )


def _load_pickle(request: _Request) -> _Built:
    """A whole pickled ``nn.Module``, only with the operator's ``trust_pickle``."""
    if not request.trust_pickle:
        raise LoadError(f"{request.source.ref} is a pickled model: {pickle_advice()}")
    path = request.file(request.source.ref, "pickled model")
    _check_zip(path, "pickled model")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as err:
        raise LoadError(
            f"{path.name} pickles a model whose class cannot be imported here "
            f"({_first_line(err)}); save a state_dict instead and load it with its "
            f"architecture (model.py:ClassName) and {option('weights')}"
        ) from None
    except Exception as err:
        raise LoadError(
            f"{path.name} is not a valid pickled PyTorch model: {_first_line(err)}"
        ) from None
    if not isinstance(obj, nn.Module):
        hint = (
            f": it looks like a state_dict; give its architecture and this file as "
            f"{option('weights')}"
            if isinstance(obj, Mapping)
            else ""
        )
        raise LoadError(f"{path.name} holds a {type(obj).__name__}, not an nn.Module{hint}")
    return _Built(obj, notes=["Unpickled a whole model (allowed by --trust-pickle)."])


#: How each kind of model source is loaded.
LOADERS: dict[str, Callable[[_Request], _Built]] = {
    "zoo": _load_zoo,
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "python": _load_python,
    "export": _load_export,
    "onnx": _load_onnx,
    "torchscript": _load_torchscript,
    "pickle": _load_pickle,
}


# --- python files -------------------------------------------------------------------------------

#: Importing mutates process-wide state (sys.path, sys.modules): one import at a time.
_IMPORT_LOCK = threading.Lock()


def _import_user_file(path: Path, siblings: bool) -> types.ModuleType:
    """Import ``path`` as a module of its own.

    The module is named after the hash of its bytes and folder (``_explorer_user_<hex>``), so
    two files called ``model.py`` never collide and the same file is imported once; it stays
    in ``sys.modules`` under that name only (pickling and ``inspect`` need it there).

    Sibling imports (``from layers import Block``) work as when running the file as a script:
    with ``siblings`` (a local file), its folder is put first on ``sys.path`` during the import
    only, and the modules imported from that folder are then dropped from ``sys.modules`` again,
    so another user's ``layers.py`` is never mistaken for this one. An uploaded file (in the
    store) stands alone: the store folder is never put on ``sys.path``.
    """
    source = path.read_bytes()
    folder = path.resolve().parent
    digest = hashlib.sha256(str(folder).encode() + b"\0" + source).hexdigest()[:20]
    name = f"_explorer_user_{digest}"
    with _IMPORT_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        try:
            # compile first: a syntax error is reported before anything in the file has run
            code = compile(source, str(path), "exec", dont_inherit=True)
        except SyntaxError as err:
            raise LoadError(
                f"{path.name} line {err.lineno}: {err.msg} (a syntax error; nothing was run)"
            ) from None
        except ValueError as err:  # e.g. NUL bytes
            raise LoadError(f"{path.name} is not Python source: {_first_line(err)}") from None
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None  # a path with a .py suffix always gives a spec
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        sys.modules[name] = module
        if siblings:
            sys.path.insert(0, str(folder))
        try:
            exec(code, module.__dict__)
        except BaseException as err:
            sys.modules.pop(name, None)
            if isinstance(err, KeyboardInterrupt):
                raise
            what = "could not be imported" if isinstance(err, ImportError) else "failed to run"
            line = _user_line(err, path)
            raise LoadError(
                f"{path.name} {what}{line}: {type(err).__name__}: {_first_line(err)}"
            ) from None
        finally:
            if siblings:
                sys.path.remove(str(folder))
                for other in set(sys.modules) - before - {name}:
                    origin = getattr(sys.modules[other], "__file__", None) or ""
                    if origin and Path(origin).resolve().is_relative_to(folder):
                        del sys.modules[other]
        return module


def _user_line(err: BaseException, path: Path) -> str:
    """`` (line N)`` of the deepest frame in the user's file, if any."""
    line = ""
    for frame, lineno in _walk_tb(err.__traceback__):
        if frame == str(path):
            line = f" (line {lineno})"
    return line


def _walk_tb(tb: types.TracebackType | None):
    while tb is not None:
        yield tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next


# --- torchvision --------------------------------------------------------------------------------


def _check_torchvision_arch(arch: str) -> None:
    import torchvision

    classification = torchvision.models.list_models(module=torchvision.models)
    if arch in classification:
        return
    if arch in torchvision.models.list_models():
        raise LoadError(
            f"torchvision:{arch} is not a classification model; the classification models "
            "of torchvision.models.list_models(module=torchvision.models) are supported"
        )
    close = difflib.get_close_matches(arch, classification, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise LoadError(
        f"torchvision has no model {arch!r}.{hint} The classification models of "
        f"torchvision.models.list_models(module=torchvision.models) are supported "
        f"({len(classification)}, e.g. {', '.join(classification[:4])})."
    )


def _build_library_model(
    source: str, build: Callable[[], nn.Module], args: dict[str, Any], meta: bool
) -> nn.Module:
    """``build()`` (a torchvision / timm constructor, which never downloads here); on the meta
    device (no memory, no random init) when only the layer names and shapes are needed. Its
    failures are a LoadError naming ``source`` and ``args``."""
    try:
        # GoogLeNet / Inception warn that their default initialisation will change: noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            if meta:
                try:
                    with torch.device("meta"):
                        return build()
                except (NotImplementedError, RuntimeError):
                    pass  # an initialiser without a meta kernel: build for real
            return build()
    except TypeError as err:
        raise LoadError(
            f"{source} does not take the arguments {args}: {_first_line(err)}"
        ) from None
    except Exception as err:
        raise LoadError(
            f"{source} with {args} failed: {type(err).__name__}: {_first_line(err)}"
        ) from None


def _build_torchvision(arch: str, args: dict[str, Any], meta: bool = False) -> nn.Module:
    """``get_model(arch, weights=None, **args)`` (see ``_build_library_model``)."""
    import torchvision

    def build() -> nn.Module:
        return torchvision.models.get_model(arch, weights=None, **args)

    return _build_library_model(f"torchvision:{arch}", build, args, meta)


def _classifier_name(model: nn.Module) -> str | None:
    """The module name of the final classifier: the last ``nn.Linear`` in module order, else
    the last ``nn.Conv2d`` (SqueezeNet classifies with a 1x1 convolution)."""
    linear = conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = name
        elif isinstance(module, nn.Conv2d):
            conv = name
    return linear if linear is not None else conv


def _torchvision_preprocessing(torchvision: Any, arch: str) -> dict[str, Any] | None:
    """Size, mean and std from the architecture's default weights' transforms metadata.

    ``transforms()`` only builds an ``ImageClassification`` preset from the enum's stored
    numbers; nothing is downloaded (a test guards this with the network cut).
    """
    try:
        preset = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        crop = list(preset.crop_size)
        return {
            "size": (int(crop[0]), int(crop[-1])),
            "mean": tuple(float(v) for v in preset.mean),
            "std": tuple(float(v) for v in preset.std),
        }
    except Exception:  # an architecture without a weights enum: no declared preprocessing
        return None


# --- timm ---------------------------------------------------------------------------------------

#: ``timm.create_model`` arguments that would read a checkpoint or fetch weights.
TIMM_FETCHING_ARGS = ("pretrained", "checkpoint_path", "cache_dir")
#: Arguments that replace or amend the pretrained config (its numbers may be changed).
TIMM_CONFIG_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay")
#: Fields of a pretrained config that say where weights come from.
TIMM_SOURCE_FIELDS = ("file", "url", "hf_hub_id", "hf_hub_filename", "state_dict")
#: Names an unknown timm model's message offers as examples.
TIMM_EXAMPLES = ("resnet18", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224")


def timm_no_download() -> str:
    return f"timm weights are never downloaded here: give a weights file with {option('weights')}"


def _import_timm() -> Any:
    """The ``timm`` module, or a ``LoadError`` saying how to install the optional extra."""
    try:
        import timm
    except ImportError:
        raise LoadError("timm is an optional extra: pip install -e '.[timm]'") from None
    return timm


def _check_timm_args(args: Mapping[str, Any]) -> None:
    """Refuse arguments that load or download weights (or a config naming them)."""
    for key in TIMM_FETCHING_ARGS:
        if key in args and args[key] not in (False, None):
            raise LoadError(f"timm argument {key}={args[key]!r}: {timm_no_download()}")
    for key in TIMM_CONFIG_ARGS:
        config = args.get(key)
        if config is None or (key == "pretrained_cfg" and isinstance(config, str)):
            continue  # pretrained_cfg may name one of the model's own tags
        if not isinstance(config, Mapping):
            raise LoadError(f"timm argument {key} must be an object, got {config!r}")
        named = [field for field in TIMM_SOURCE_FIELDS if field in config]
        if named:
            raise LoadError(f"timm argument {key} names {', '.join(named)}: {timm_no_download()}")


def _check_timm_name(timm: Any, name: str) -> None:
    """A ``LoadError`` unless timm has a model ``name`` (``NAME`` or ``NAME.TAG``)."""
    if ":" in name or "/" in name:  # hf-hub:owner/repo, local-dir:path: a config from elsewhere
        raise LoadError(
            f"timm:{name} names a hub repository or a folder; only timm's own architectures "
            f"are built here (timm.list_models()). {timm_no_download()}"
        )
    architecture = name.partition(".")[0]
    if architecture and timm.is_model(architecture):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(architecture, names, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    examples = [n for n in TIMM_EXAMPLES if n in names] or names[:4]
    raise LoadError(
        f"timm has no model {name!r}.{hint} Any of timm.list_models() is supported "
        f"({len(names)}, e.g. {', '.join(examples)})."
    )


def _build_timm(timm: Any, name: str, args: dict[str, Any], meta: bool = False) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **args)`` (see ``_build_library_model``)."""
    args = {key: value for key, value in args.items() if key != "pretrained"}

    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, **args)

    return _build_library_model(f"timm:{name}", build, args, meta)


def _timm_classifier_name(model: nn.Module) -> str | None:
    """The module name of ``model.get_classifier()`` (the first head of a distilled model),
    else the last Linear (or Conv2d) as for torchvision."""
    try:
        head = model.get_classifier()
    except Exception:  # a model without timm's classifier interface
        head = None
    if isinstance(head, list | tuple):
        head = head[0] if head else None
    if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
        for module_name, module in model.named_modules():
            if module is head:
                return module_name
    return _classifier_name(model)


def _timm_preprocessing(model: nn.Module, args: Mapping[str, Any]) -> dict[str, Any]:
    """Size, channels, mean and std: ``args["img_size"]`` and ``in_chans`` if given, else the
    model's pretrained config (timm's defaults: 3×224×224, ImageNet mean and std)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    channels, *size = cfg.get("input_size") or (3, 224, 224)
    img_size = args.get("img_size")
    if isinstance(img_size, int):
        size = [img_size, img_size]
    elif isinstance(img_size, list | tuple) and len(img_size) == 2:
        size = list(img_size)
    in_chans = args.get("in_chans")
    channels = in_chans if isinstance(in_chans, int) else channels
    mean = tuple(float(v) for v in cfg.get("mean") or (0.485, 0.456, 0.406))
    std = tuple(float(v) for v in cfg.get("std") or (0.229, 0.224, 0.225))
    if len(mean) != channels:  # e.g. in_chans=1 on an RGB config: one value for all
        mean = (sum(mean) / len(mean),)
    if len(std) != channels:
        std = (sum(std) / len(std),)
    return {
        "size": (int(size[0]), int(size[-1])),
        "channels": int(channels),
        "mean": mean,
        "std": std,
    }


# --- torch.export -------------------------------------------------------------------------------


def _placeholder_shape(program: Any, name: str) -> tuple[int | Any, ...] | None:
    """The example value's shape of graph input ``name`` (ints; SymInts where dynamic)."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            value = node.meta.get("val")
            return tuple(value.shape) if isinstance(value, torch.Tensor) else None
    return None


def _output_shape(program: Any) -> tuple[int | Any, ...] | None:
    """The shape of the program's first output, when it is a tensor."""
    for node in program.graph.nodes:
        if node.op == "output":
            outputs = node.args[0]
            first = outputs[0] if isinstance(outputs, list | tuple) and outputs else outputs
            value = getattr(first, "meta", {}).get("val")
            return tuple(value.shape) if isinstance(value, torch.Tensor) else None
    return None


def _accepts_batch(module: nn.Module, batch: int, sample: tuple[int, ...]) -> bool:
    """Whether ``module`` runs on a zero batch of ``batch`` samples of shape ``sample``."""
    try:
        with torch.no_grad():
            module(torch.zeros(batch, *sample))
    except Exception:  # a reshape with the traced batch baked in, a guard
        return False
    return True


# --- ONNX ---------------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[^0-9A-Za-z_]")
_SAFE_DOMAIN = re.compile(r"[0-9A-Za-z_.]*")


def _load_onnx_external_data(proto: Any, path: Path, max_bytes: int | None) -> None:
    """Read tensors kept in separate files, only from plain file names next to the model."""
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        load_external_data_for_model,
        uses_external_data,
    )

    locations = {
        ExternalDataInfo(tensor).location
        for tensor in _get_all_tensors(proto)
        if uses_external_data(tensor)
    }
    if not locations:
        return
    for location in sorted(locations):
        sidecar = path.parent / location
        if Path(location).name != location or location.startswith(".") or not sidecar.is_file():
            raise LoadError(
                f"{path.name} keeps its weights in a separate file {location!r} that is not "
                "next to it: save it as one file, e.g. torch.onnx.export(..., "
                "external_data=False) or onnx.save(model, path, save_as_external_data=False)"
            )
        check_file(sidecar, "ONNX external data file", max_bytes)
    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as err:
        raise LoadError(
            f"{path.name}: its external data could not be read: {_first_line(err)}"
        ) from None


def _rename_onnx_nodes(graph: Any, name: str) -> None:
    """Give every node (subgraphs too) a plain identifier as its name.

    onnx2torch turns node names into module names that fx writes into generated Python
    source unescaped; a quote in a name would inject code (see the module docstring).
    """
    from onnx import AttributeProto

    for node in graph.node:
        if not _SAFE_DOMAIN.fullmatch(node.domain):
            raise LoadError(f"{name}: a node has an invalid operator domain {node.domain!r}")
        node.name = _SAFE_NAME.sub("_", node.name) or node.op_type
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                _rename_onnx_nodes(attribute.g, name)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _rename_onnx_nodes(subgraph, name)


def _unsupported_onnx_ops(proto: Any) -> list[str]:
    """``"Op (opset N)"`` for each operator onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    # "" and "ai.onnx" both name the default domain
    opsets = {_onnx_domain(o.domain): o.version for o in proto.opset_import}
    missing = []
    for node in proto.graph.node:
        domain = _onnx_domain(node.domain)
        version = opsets.get(domain, 1)
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:
            label = f"{node.op_type} (opset {version})"
            if label not in missing:
                missing.append(label)
    return missing


def _onnx_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _convertible_onnx(proto: Any, name: str, notes: list[str]) -> Any:
    """``proto``, or a copy lowered to ``ONNX_FALLBACK_OPSET`` when onnx2torch lacks
    converters for its opset; a ``LoadError`` naming the operators when neither converts.

    ``torch.onnx.export`` (dynamo) writes opset 18+ and ``Reshape(allowzero=1)``, which
    onnx2torch does not convert; ``allowzero`` only matters for zeros in the target shape, so
    it is dropped where the shape is a constant without zeros, before lowering.
    """
    missing = _unsupported_onnx_ops(proto)
    if not missing:
        return proto
    from onnx import ModelProto, version_converter

    current = max((o.version for o in proto.opset_import if not _onnx_domain(o.domain)), default=0)
    if current > ONNX_FALLBACK_OPSET:
        lowered = ModelProto()
        lowered.CopyFrom(proto)
        _drop_needless_allowzero(lowered.graph)
        try:
            lowered = version_converter.convert_version(lowered, ONNX_FALLBACK_OPSET)
        except Exception:  # no down-conversion for some operator: report the operators below
            lowered = None
        if lowered is not None and not _unsupported_onnx_ops(lowered):
            notes.append(
                f"Lowered from ONNX opset {current} to {ONNX_FALLBACK_OPSET} for onnx2torch."
            )
            return lowered
    raise LoadError(
        f"{name} uses operators onnx2torch cannot convert: {_few(missing)}; export it with "
        f"opset {ONNX_FALLBACK_OPSET} or older, or give the model as a .pt2 program or model.py"
    )


def _drop_needless_allowzero(graph: Any) -> None:
    """Remove ``allowzero=1`` from Reshape nodes whose target shape is a constant with no 0."""
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = attribute.t
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        if (numpy_helper.to_array(constants[node.input[1]]) == 0).any():
            continue
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)


def _onnx_dims(value: Any) -> list[int | None] | None:
    """The static dims of a graph input/output (None for a symbolic one), or None."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]


# --- checks -------------------------------------------------------------------------------------


def _check_zip(path: Path, what: str) -> None:
    """Header checks on a zip-based file (torch archives) before torch reads it: no zip
    bombs, no odd entries. torch stores records uncompressed, so a legitimate file expands to
    about its own size."""
    if not zipfile.is_zipfile(path):
        return  # not a zip (legacy pickle format, or garbage): the reader reports it
    try:
        with zipfile.ZipFile(path) as archive:
            limit = max(MAX_TOTAL_BYTES, 2 * path.stat().st_size)
            check_members(archive, max_total_bytes=limit)
    except LoadError as err:
        raise LoadError(f"{what} {path.name}: {err}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch's own reader gives the error about the damaged archive


def _check_finite(named: Any, what: str) -> None:
    """A ``LoadError`` naming the float tensors with NaN or infinite values."""
    bad = [
        name
        for name, value in named
        if (value.is_floating_point() or value.is_complex())
        and not bool(torch.isfinite(value.detach()).all())
    ]
    if bad:
        raise LoadError(f"{what} has NaN or infinite values in {_few(bad)}")


def _checked(model: Any, what: str) -> nn.Module:
    """``model`` on the CPU in eval mode, after checking it is something worth pruning."""
    if not isinstance(model, nn.Module):
        raise LoadError(f"{what} gave a {type(model).__name__}, not an nn.Module")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    if not tensors:
        raise LoadError(f"{what} has no parameters or buffers: there is nothing to prune")
    _check_finite(tensors, what)
    try:
        model = model.cpu()
        model.eval()
    except Exception as err:  # a user module's own train()/to() may raise
        raise LoadError(
            f"{what} could not be put on the CPU in eval mode: {_first_line(err)}"
        ) from None
    return model


def _final_linear_outputs(model: nn.Module) -> int | None:
    """Rows of the last Linear layer's weight (TorchScript ones too), if there is one."""
    outputs = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            outputs = module.out_features
        elif getattr(module, "original_name", None) == "Linear":  # a scripted nn.Linear
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim == 2:
                outputs = int(weight.shape[0])
    return outputs


# --- messages -----------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type's name)."""
    for line in str(err).splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # torch colours some messages
        if not line:
            continue
        if len(line) > 200:  # torch adds paragraphs of advice after the first sentence
            end = line.find(". ", 20)
            line = line[: end + 1] if 0 < end < 200 else line[:199] + "…"
        return line
    return type(err).__name__


def _few(items: list[str], limit: int = LISTED) -> str:
    """``"a, b, c"``, or ``"a, b, c, d, e and 7 more"``."""
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _shape_text(tensor: torch.Tensor) -> str:
    """``"10x512"``; ``"scalar"`` for a 0-d tensor."""
    return "x".join(map(str, tensor.shape)) or "scalar"
