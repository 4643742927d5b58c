"""What leaves the tool: a pruned model in every form people load it, one registry of formats.

``export(bench, plan, fmt, path)`` writes one file (the snippet: two) and returns an
``ExportResult`` that says what is in it. The formats (``FORMATS``, name -> exporter):

- ``zeros``: the state_dict with the pruned weights as permanent zeros; it loads into the
  original class with ``torch.load(weights_only=True)``;
- ``torch-prune``: ``*_orig`` / ``*_mask`` pairs as ``torch.nn.utils.prune`` writes them;
- ``pt2``: a ``torch.export`` program of the deployable model, any batch size: the physically
  compacted model for a structured plan, the masked one (same shapes) otherwise;
- ``onnx``: the same model as ONNX, dynamic batch;
- ``torchscript``: the same model scripted (or traced), for runtimes that still take it;
- ``snippet``: a short Python file that rebuilds the masks with ``torch.nn.utils.prune`` on the
  user's own model (``explorer.keep.snippet``);
- ``tp-ratios``: the per-layer ratios Torch-Pruning's pruners take (structured plans);
- ``plan``: the plan's JSON.

Every file that holds (or rebuilds) the model says what it expects and returns: the input shape,
channels, size, mean and std of the preprocessing, the class names, and whether the output is
logits or log-probabilities (``preprocessing_of``). It is written as JSON beside the file
(``<file>.json``), inside it where the format has room (ONNX ``metadata_props``, a program's or
TorchScript's extra files: ``read_preprocessing``), and in a line of the note.

A program, ONNX and TorchScript need neither the model's class nor unpickling. Every bad request
(a format the plan cannot take, a path that cannot be written, torch failing) is an
``ExportError`` (a ValueError) with one line; a file is written to a temporary name in the same
folder and renamed, so a failed export leaves no partial file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from explorer.engine.compaction import CompactionError, can_compact, compact
from explorer.engine.cost import model_cost
from explorer.engine.inspection import copy_model, example_input
from explorer.engine.methods import get_method, plan_label
from explorer.engine.outputs import output_kind
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState, Pruner
from explorer.engine.structure import source_names
from explorer.engine.subject import STORE_PREFIX
from explorer.keep.snippet import MASKS_SUFFIX, make_snippet, run_snippet

if TYPE_CHECKING:
    from explorer.engine.subject import Subject
    from explorer.engine.workbench import Workbench
    from explorer.zoo.mnist import ImageDataset

#: The name of the preprocessing inside a file (ONNX metadata key, a program's extra file).
PREPROCESSING_KEY = "preprocessing.json"
#: What the JSON beside an exported file is called: ``<file name>`` + this.
SIDECAR_SUFFIX = ".json"


class ExportError(ValueError):
    """An export that cannot be done; the message is one line for the user."""


def masked_state_dict(
    pruner: Pruner, plan: PruningPlan | PrunedState, style: str = "zeros"
) -> dict[str, torch.Tensor]:
    """The pruned model's state_dict: ``"zeros"`` (loads into the plain architecture) or
    ``"torch_prune"`` (``*_orig`` / ``*_mask`` pairs as ``torch.nn.utils.prune`` writes them).

    Tensors are copies on the model's device; the dense model is only read.
    """
    builders: Mapping[str, Callable[[Pruner, PrunedState], dict[str, torch.Tensor]]] = {
        "zeros": _zeros_state,
        "torch_prune": _torch_prune_state,
    }
    if style not in builders:
        raise ValueError(f"unknown export style {style!r}; choose one of {sorted(builders)}")
    state = builders[style](pruner, pruner.state_for(plan))
    # Keys the loader renamed (an unpacked nn.MultiheadAttention) go back to the user's names;
    # torch.nn.utils.prune's pairs follow their parameter (``in_proj.weight_orig`` ->
    # ``in_proj_weight_orig``).
    renamed = source_names(pruner.model)
    return {_source_key(key, renamed): value for key, value in state.items()}


def _zeros_state(pruner: Pruner, state: PrunedState) -> dict[str, torch.Tensor]:
    """``pruner.pruned_model(state).state_dict()`` without copying the whole model: the dense
    entries, masked parameters replaced (by identity, so a tied alias is masked too)."""
    masked = {
        id(param): state.parameters[name]
        for name, param in pruner.structure.parameters.items()
        if name in state.parameters
    }
    return {
        key: masked.get(id(value), value).detach().clone()
        for key, value in pruner.model.state_dict(keep_vars=True).items()
    }


def _torch_prune_state(pruner: Pruner, state: PrunedState) -> dict[str, torch.Tensor]:
    """``pruner.torch_pruned_model(state).state_dict()``, built directly: the masks live on the
    CPU, and ``prune.custom_from_mask`` cannot multiply them with a CUDA model's weights."""
    pairs: dict[str, torch.Tensor] = {}
    for key, value in pruner.model.state_dict(keep_vars=True).items():
        value = value.detach().clone()
        if key in state.masks:
            pairs[f"{key}_orig"] = value
            pairs[f"{key}_mask"] = state.masks[key].to(value.device, value.dtype)
        else:
            pairs[key] = value
    return pairs


def _source_key(key: str, renamed: Mapping[str, str]) -> str:
    for suffix in ("", "_orig", "_mask"):
        base = key.removesuffix(suffix) if suffix else key
        if (not suffix or key.endswith(suffix)) and base in renamed:
            return renamed[base] + suffix
    return key


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run to dozens of lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def export_program(model: nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """``model`` as a ``torch.export`` program on the CPU that takes any batch size.

    A program is plain data (graph + tensors): loading it needs neither the model's class nor
    unpickling, unlike ``torch.save(model)``. Raises ``ExportError`` when neither tracing mode
    can capture the model.
    """
    model = model.cpu().eval()
    # A batch of 2: with 1, export specialises the batch size and the program takes no other.
    example = (example_input(input_shape, batch=2),)
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    # Non-strict tracing (tried first, torch's default) turns ``len(x)`` into a constant, as in
    # vit_tiny's [CLS] token expand; TorchDynamo (strict) keeps it symbolic.
    failure: Exception | None = None
    for strict in (False, True):
        try:
            return torch.export.export(model, example, dynamic_shapes=dynamic, strict=strict)
        except Exception as err:  # torch raises many kinds; the user gets one line for all
            failure = err
    assert failure is not None
    raise ExportError(
        f"torch.export cannot capture the compacted model "
        f"({type(failure).__name__}: {first_line(failure)})"
    )


# --- what an export wrote -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, as plain data.

    Attributes:
        format: the format's name (a key of ``FORMATS``).
        path: the file written.
        bytes: bytes on disk of every file written (``files``).
        params_nonzero, params_total: parameters of the model the file holds or rebuilds
            (for ``plan`` and ``tp-ratios``: of the model they lead to).
        compacted: the file holds the physically smaller model (removed channels / heads gone).
        masked: the file holds (or rebuilds) the dense shapes with the pruned weights zero.
        note: one line for the user: what the file is, how to load it, what it expects.
        files: every file of the model, ``path`` first (the snippet's masks come second);
            the preprocessing JSON is ``sidecar``, apart.
        preprocessing: what the model expects and returns (``preprocessing_of``), for the
            formats that hold or rebuild it; None for the plan and Torch-Pruning's ratios.
        sidecar: the JSON of ``preprocessing`` written beside ``path`` ("" when None).
    """

    format: str
    path: str
    bytes: int
    params_nonzero: int
    params_total: int
    compacted: bool
    masked: bool
    note: str
    files: tuple[str, ...] = ()
    preprocessing: dict[str, Any] | None = field(default=None, hash=False)
    sidecar: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reload(self, model: nn.Module | None = None) -> Any:
        """What the file loads as (see ``load_export``); ``model``: the dense original
        architecture, for the formats that load into it (zeros, torch-prune, snippet)."""
        return load_export(self.format, self.path, model)


# --- one export in the making -------------------------------------------------------------------


@dataclass
class _Job:
    """A plan resolved on a pruner, with the models every format builds on (each made once)."""

    pruner: Pruner
    state: PrunedState
    subject: Subject | None
    target: Path
    data: ImageDataset | None = None  # what the model was measured on (its preprocessing)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pruner.structure.input_shape)

    @cached_property
    def preprocessing(self) -> dict[str, Any]:
        # The dense model returns what every pruned form of it returns (logits or
        # log-probabilities), and needs no copy or compaction to ask.
        return preprocessing_of(self.pruner.model, self.input_shape, self.data)

    @cached_property
    def preprocessing_json(self) -> str:
        return json.dumps(self.preprocessing, indent=2) + "\n"

    @property
    def structured(self) -> bool:
        return can_compact(self.state.plan.method)

    @cached_property
    def deployable(self) -> nn.Module:
        """The compacted model for a structured plan, else the masked one; on the CPU."""
        if self.structured:
            try:
                return compact(self.pruner, self.state).cpu().eval()
            except CompactionError as err:
                raise ExportError(str(err)) from None
        return self.pruner.pruned_model(self.state).cpu().eval()

    @cached_property
    def masked_counts(self) -> tuple[int, int]:
        cost = model_cost(self.pruner, self.state)
        return cost.params_nonzero, cost.params_total

    @cached_property
    def deployable_counts(self) -> tuple[int, int]:
        if not self.structured:
            return self.masked_counts
        params = list(self.deployable.parameters())
        return (
            sum(int(torch.count_nonzero(p)) for p in params),
            sum(p.numel() for p in params),
        )

    def what_runs(self) -> str:
        """A few words on the model a program / ONNX / TorchScript file holds."""
        total = self.deployable_counts[1]
        if self.structured:
            dense = self.masked_counts[1]
            return f"the compacted model ({total:,} of {dense:,} parameters left)"
        return (
            f"{get_method(self.state.plan.method).title.lower()} plan: the masked model "
            "(same shapes as dense; zeros are not faster)"
        )


@dataclass
class _Built:
    """An export ready to write: target path -> function writing that file's bytes to a path."""

    writers: dict[Path, Callable[[Path], None]]
    counts: tuple[int, int]
    compacted: bool
    masked: bool
    note: str


# --- the formats --------------------------------------------------------------------------------


class ExportFormat(ABC):
    """One way out of the tool: checks a plan, builds the file, loads it back."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    title: ClassVar[str]
    help: ClassVar[str]
    #: The file holds or rebuilds the pruned model: its latency can be measured, and its
    #: preprocessing is written beside it (not so for a plan or Torch-Pruning's ratios).
    carries_model: ClassVar[bool] = True

    def unavailable_because(self, method: str) -> str | None:
        """Why plans of ``method`` cannot take this format, or None."""
        return None

    @abstractmethod
    def build(self, job: _Job) -> _Built:
        """Everything computed before any file is touched."""

    @abstractmethod
    def load(self, path: Path, model: nn.Module | None) -> Any:
        """The file loaded back (``model``: the dense original architecture, if needed)."""


FORMATS: dict[str, ExportFormat] = {}


def register_format(cls: type[ExportFormat]) -> type[ExportFormat]:
    """Class decorator: make a format available by its ``name``."""
    FORMATS[cls.name] = cls()
    return cls


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ExportError(
            f"unknown export format {name!r}; choose one of {list(FORMATS)}"
        ) from None


def formats_for(method: str) -> list[str]:
    """The formats plans of ``method`` can be exported in."""
    return [name for name, fmt in FORMATS.items() if fmt.unavailable_because(method) is None]


def _needs_model(model: nn.Module | None, fmt: str) -> nn.Module:
    if model is None:
        raise ExportError(f"reloading a {fmt} file needs the original (dense) model to load into")
    return copy_model(model).cpu().eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's deprecation and tracer warnings are for developers of torch, not for someone
    exporting a model: the notes say what matters (TorchScript's deprecation included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _save_with_torch(value: object) -> Callable[[Path], None]:
    return lambda path: torch.save(value, path)


def _write_text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


@register_format
class Zeros(ExportFormat):
    name = "zeros"
    suffix = ".pt"
    title = "weights, pruned = zero"
    help = "state_dict with permanent zeros; loads into your class with weights_only=True"

    def build(self, job: _Job) -> _Built:
        state = {k: v.detach().cpu() for k, v in masked_state_dict(job.pruner, job.state).items()}
        return _Built(
            {job.target: _save_with_torch(state)},
            job.masked_counts,
            compacted=False,
            masked=True,
            note="state_dict with the pruned weights as zeros (dense shapes): "
            "model.load_state_dict(torch.load(PATH, weights_only=True))",
        )

    def load(self, path: Path, model: nn.Module | None) -> nn.Module:
        model = _needs_model(model, self.name)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model


@register_format
class TorchPrune(ExportFormat):
    name = "torch-prune"
    suffix = ".pt"
    title = "weights + masks (torch.nn.utils.prune)"
    help = "weight_orig / weight_mask pairs as torch.nn.utils.prune writes them"

    def build(self, job: _Job) -> _Built:
        state = masked_state_dict(job.pruner, job.state, "torch_prune")
        state = {k: v.detach().cpu() for k, v in state.items()}
        return _Built(
            {job.target: _save_with_torch(state)},
            job.masked_counts,
            compacted=False,
            masked=True,
            note="state_dict of weight_orig / weight_mask pairs: load each *_orig as the "
            "weight, then prune.custom_from_mask(module, name, mask) per *_mask",
        )

    def load(self, path: Path, model: nn.Module | None) -> nn.Module:
        model = _needs_model(model, self.name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        masks = {k.removesuffix("_mask"): v for k, v in state.items() if k.endswith("_mask")}
        plain = {
            (k.removesuffix("_orig") if k.removesuffix("_orig") in masks else k): v
            for k, v in state.items()
            if not k.endswith("_mask")
        }
        model.load_state_dict(plain)
        # The weights first, then the masks: custom_from_mask computes weight = orig * mask
        # right away. (prune.identity + load_state_dict leaves that product stale until the
        # module's own forward runs, and nn.MultiheadAttention never runs its out_proj's.)
        for name, mask in masks.items():
            module, _, tensor = name.rpartition(".")
            torch_prune.custom_from_mask(model.get_submodule(module), tensor, mask)
        return model


@register_format
class Program(ExportFormat):
    name = "pt2"
    suffix = ".pt2"
    title = "torch.export program"
    help = "the compacted (structured) or masked model as a torch.export program, any batch"

    def build(self, job: _Job) -> _Built:
        program = export_program(job.deployable, job.input_shape)
        extra = {PREPROCESSING_KEY: job.preprocessing_json}
        return _Built(
            {job.target: lambda path: torch.export.save(program, path, extra_files=extra)},
            job.deployable_counts,
            compacted=job.structured,
            masked=not job.structured,
            note=f"{job.what_runs()}; any batch size; torch.export.load(PATH).module()",
        )

    def load(self, path: Path, model: nn.Module | None) -> nn.Module:
        return torch.export.load(path).module()


class OnnxRunner:
    """An ONNX file run by onnxruntime on the CPU, called like a model: tensor in, tensor out."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(
                "running an ONNX file needs onnxruntime: pip install onnxruntime"
            ) from None
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: inputs.detach().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


@register_format
class Onnx(ExportFormat):
    name = "onnx"
    suffix = ".onnx"
    title = "ONNX"
    help = "the compacted (structured) or masked model as ONNX with a dynamic batch"

    def build(self, job: _Job) -> _Built:
        # Through the same program as pt2: one capture, one set of error messages, and the
        # program's symbolic batch becomes ONNX's dynamic batch.
        program = export_program(job.deployable, job.input_shape)

        def write(path: Path) -> None:
            with _quiet():
                # One self-contained file (external data would name the temporary file), and
                # verbose=False: no progress lines on the user's terminal.
                torch.onnx.export(
                    program,
                    f=str(path),
                    input_names=["input"],
                    output_names=["output"],
                    external_data=False,
                    verbose=False,
                )
            _add_onnx_metadata(path, {PREPROCESSING_KEY: job.preprocessing_json})

        return _Built(
            {job.target: write},
            job.deployable_counts,
            compacted=job.structured,
            masked=not job.structured,
            note=f"{job.what_runs()}; dynamic batch; onnxruntime.InferenceSession(PATH)",
        )

    def load(self, path: Path, model: nn.Module | None) -> OnnxRunner:
        return OnnxRunner(path)


@register_format
class TorchScript(ExportFormat):
    name = "torchscript"
    suffix = ".ts"
    title = "TorchScript"
    help = "the compacted (structured) or masked model as TorchScript (deprecated by torch)"

    def build(self, job: _Job) -> _Built:
        module = _script_or_trace(job.deployable, job.input_shape)

        def write(path: Path) -> None:
            with _quiet():
                extra = {PREPROCESSING_KEY: job.preprocessing_json}
                torch.jit.save(module, str(path), _extra_files=extra)

        return _Built(
            {job.target: write},
            job.deployable_counts,
            compacted=job.structured,
            masked=not job.structured,
            note=f"{job.what_runs()}; torch.jit.load(PATH). TorchScript is deprecated in "
            "torch (its warnings are silenced here): prefer pt2",
        )

    def load(self, path: Path, model: nn.Module | None) -> torch.jit.ScriptModule:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")


def _script_or_trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (any batch, control flow kept); else a trace, checked on another
    batch size, since a trace freezes every Python number it sees (``len(x)`` included)."""
    with _quiet():
        try:
            return torch.jit.script(model)
        except Exception as err:  # scripting rejects much ordinary Python
            scripting = first_line(err)
        generator = torch.Generator().manual_seed(0)
        try:
            traced = torch.jit.trace(model, torch.randn(2, *input_shape, generator=generator))
        except Exception as err:
            raise ExportError(
                f"TorchScript can neither script ({scripting}) nor trace this model "
                f"({type(err).__name__}: {first_line(err)}); use pt2"
            ) from None
        check = torch.randn(3, *input_shape, generator=generator)
        try:
            with torch.no_grad():
                same = torch.allclose(traced(check), model(check), rtol=1e-4, atol=1e-5)
        except Exception:  # e.g. a batch size the trace froze into a reshape
            same = False
    if not same:
        raise ExportError(
            f"TorchScript cannot script this model ({scripting}), and its trace works only for "
            "the batch size it was traced with; use pt2"
        )
    return traced


@register_format
class SnippetFormat(ExportFormat):
    name = "snippet"
    suffix = ".py"
    title = "Python (torch.nn.utils.prune)"
    help = "a short Python file that rebuilds the masks with torch.nn.utils.prune on your model"

    def build(self, job: _Job) -> _Built:
        masks_path = job.target.with_name(job.target.stem + MASKS_SUFFIX)
        snippet = make_snippet(job.pruner, job.state, job.subject, masks_path.name)
        writers: dict[Path, Callable[[Path], None]] = {job.target: _write_text(snippet.code)}
        calls = ", ".join(f"prune.{f}" for f in snippet.functions) or "nothing to prune"
        note = f"prune_model(model) rebuilds the masks with {calls}"
        if snippet.saved is not None:
            writers[masks_path] = _save_with_torch(snippet.saved)
            units = len(snippet.fallback)
            note += f"; {units} unit(s) chosen as saved in {masks_path.name} (keep it beside)"
        return _Built(writers, job.masked_counts, compacted=False, masked=True, note=note)

    def load(self, path: Path, model: nn.Module | None) -> nn.Module:
        return run_snippet(path, _needs_model(model, self.name))


def _tp_ratio(pruned: int, size: int) -> float:
    """``pruned / size``, nudged by the last bits so that Torch-Pruning's own rounding
    (``size - int(size * (1 - ratio))``) gives exactly ``pruned``."""
    ratio = pruned / size
    for _ in range(64):
        got = size - int(size * (1 - ratio))
        if got == pruned:
            break
        ratio = math.nextafter(ratio, 1.0 if got < pruned else 0.0)
    return ratio


@register_format
class TorchPruningRatios(ExportFormat):
    name = "tp-ratios"
    suffix = ".json"
    title = "Torch-Pruning ratios"
    help = "per-layer pruning_ratio_dict for Torch-Pruning's pruners (channel plans)"
    carries_model = False

    def unavailable_because(self, method: str) -> str | None:
        kind = get_method(method).unit_kind
        if kind == "channels":
            return None
        if kind == "weights":
            return (
                f"{method!r} plans zero single weights and remove no channel, and "
                "Torch-Pruning's ratios are fractions of channels: there is nothing to hand it "
                "(export zeros, torch-prune or snippet instead)"
            )
        return (
            f"Torch-Pruning's pruning_ratio_dict is about channels, not {kind} "
            "(export pt2 for the smaller model, or snippet)"
        )

    def build(self, job: _Job) -> _Built:
        state = job.state
        ratios: dict[str, float] = {}
        groups: dict[str, dict[str, Any]] = {}
        for unit in state.units:
            pruned = state.pruned[unit.name]
            # Every producer of the group gets the ratio: whichever Torch-Pruning takes as the
            # group's root finds it.
            for layer in unit.detail.producers:
                ratios[layer] = _tp_ratio(pruned, unit.size)
            groups[unit.name] = {
                "layers": list(unit.layers),
                "channels": unit.size,
                "pruned": pruned,
                "fraction": pruned / unit.size,
            }
        ignored = [layer.name for layer in job.pruner.structure.layers if layer.name not in ratios]
        data = {
            "format": "Torch-Pruning pruning_ratio_dict (layer name -> fraction of its group's "
            "output channels to remove)",
            "plan": state.plan.to_dict(),
            "plan_label": plan_label(state.plan),
            "pruning_ratio_dict": ratios,
            "ignored_layers": ignored,
            "groups": groups,
            "usage": (
                "ratios = {model.get_submodule(k): v for k, v in data['pruning_ratio_dict']"
                ".items()}; tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance."
                f"MagnitudeImportance(p={state.plan.norm:g}), pruning_ratio=0.0, "
                "pruning_ratio_dict=ratios, ignored_layers=[model.get_submodule(k) for k in "
                "data['ignored_layers']]).step()"
            ),
            "note": (
                "Torch-Pruning removes the same number of channels per group; which channels "
                "depends on its own importance (export pt2 for exactly this plan's channels)"
            ),
        }
        compacted_nonzero, compacted_total = job.deployable_counts
        return _Built(
            {job.target: _write_text(json.dumps(data, indent=2) + "\n")},
            (compacted_nonzero, compacted_total),
            compacted=False,
            masked=False,
            note=f"Torch-Pruning ratios of {len(groups)} channel group(s) (counts as the plan; "
            "which channels: Torch-Pruning's importance)",
        )

    def load(self, path: Path, model: nn.Module | None) -> dict[str, Any]:
        return json.loads(Path(path).read_text(encoding="utf-8"))


@register_format
class PlanFormat(ExportFormat):
    name = "plan"
    suffix = ".json"
    title = "plan (JSON)"
    help = "the plan itself; the explorer (app or CLI) applies it to the same model again"
    carries_model = False

    def build(self, job: _Job) -> _Built:
        return _Built(
            {job.target: _write_text(job.state.plan.to_json() + "\n")},
            job.masked_counts,
            compacted=False,
            masked=False,
            note="the plan only (no weights): apply it to the same model and weights with "
            "`pruning-explorer prune --plan PATH` or the app",
        )

    def load(self, path: Path, model: nn.Module | None) -> PruningPlan:
        return PruningPlan.from_json(Path(path).read_text(encoding="utf-8"))


def load_export(fmt: str, path: str | Path, model: nn.Module | None = None) -> Any:
    """An exported file loaded back: a module for zeros / torch-prune / snippet (loaded into a
    copy of ``model``, the dense original) and pt2 / torchscript, an ``OnnxRunner`` for onnx, a
    dict for tp-ratios, a ``PruningPlan`` for plan."""
    return get_format(fmt).load(Path(path), model)


# --- what the exported model expects and returns ------------------------------------------------


def _numbers(values: float | tuple[float, ...], channels: int) -> list[float]:
    """One float per channel (a dataset may keep one number for all)."""
    values = tuple(values) if isinstance(values, tuple | list) else (values,)
    return [float(v) for v in (values * channels if len(values) == 1 else values)]


def _output(model: nn.Module, probe: torch.Tensor) -> tuple[str, int | None]:
    """What ``model`` returns for ``probe``: ``"logits"`` or ``"log-probabilities"``, and the
    number of classes (None when the output is not one row of scores per input)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        scores = model(probe.to(device))
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        return "logits", None
    return output_kind(scores), int(scores.shape[1])


def preprocessing_of(
    model: nn.Module, input_shape: tuple[int, ...], data: ImageDataset | None = None
) -> dict[str, Any]:
    """What ``model`` (or any pruned form of it) expects and returns, as plain data.

    Args:
        model: the model, in eval mode.
        input_shape: one input, (C, H, W).
        data: the dataset the explorer measured it on: its mean, std and classes are the
            preprocessing the model needs (None: a bare model, with no known preprocessing).

    Returns:
        ``input``: shape (batch first), layout, dtype, channels, size, mean, std (one per
        channel) and the steps from an 8-bit image; ``classes``; ``output``: its kind
        (``"logits"`` or ``"log-probabilities"``; a model whose own forward returned
        probabilities is exported as their log), shape and meaning; ``summary``: one line.
    """
    channels, *size = input_shape
    probe = data.images[:8].float() if data is not None else example_input(input_shape, batch=2)
    kind, classes = _output(model, probe)
    from_probabilities = bool(getattr(model, "_explorer_log_of_probabilities", False))
    meaning = {
        "logits": "unnormalised class scores: softmax gives probabilities, argmax the class",
        "log-probabilities": "log of each class's probability: exp gives probabilities, "
        "argmax the class",
    }[kind]
    if from_probabilities:
        meaning += " (the model's own forward returned probabilities; exported as their log)"
    steps = [
        f"an image as {'RGB' if channels == 3 else 'grey'} values 0..255, divided by 255",
        f"resized to {'×'.join(map(str, size))} (bilinear, antialiased when shrinking)",
        "grey repeated to 3 channels / RGB averaged to 1 where the image has the other count",
    ]
    mean = std = None
    if data is not None:
        mean, std = _numbers(data.mean, channels), _numbers(data.std, channels)
        steps.append("minus mean, divided by std, per channel")
        formula = f"(pixels / 255 - {_listed(mean)}) / {_listed(std)}"
    else:
        formula = "pixels with the preprocessing the model was trained with (not known here)"
    summary = (
        f"input (batch, {', '.join(map(str, input_shape))}) float32 = {formula}; output: "
        f"{kind}"
        + (f" over {classes} classes" if classes else "")
        + (" (the model returned probabilities)" if from_probabilities else "")
    )
    return {
        "input": {
            "name": "input",
            "shape": ["batch", *input_shape],
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "colour": "RGB" if channels == 3 else "grey",
            "size": list(size),
            "mean": mean,
            "std": std,
            "formula": formula,
            "steps": steps,
        },
        "classes": list(data.classes) if data is not None else None,
        "output": {
            "name": "output",
            "kind": kind,
            "shape": ["batch", classes],
            "meaning": meaning,
            "from_probabilities": from_probabilities,
        },
        "summary": summary,
    }


def _listed(values: list[float]) -> str:
    shown = [f"{v:.4g}" for v in values]
    return shown[0] if len(set(shown)) == 1 else "(" + ", ".join(shown) + ")"


def _add_onnx_metadata(path: Path, entries: Mapping[str, str]) -> None:
    """Write ``entries`` into the ONNX file's ``metadata_props`` (what onnxruntime's
    ``get_modelmeta().custom_metadata_map`` reads back)."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


def read_preprocessing(path: str | Path) -> dict[str, Any]:
    """The preprocessing an exported file carries: from inside an ONNX, torch.export or
    TorchScript file, else from the JSON beside the file. Raises ``ExportError`` if none."""
    path = Path(path)
    inside: str | None = None
    with contextlib.suppress(Exception):  # not that format, or nothing stored inside
        if path.suffix == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            inside = props.get(PREPROCESSING_KEY)
        elif path.suffix == ".pt2":
            extra = {PREPROCESSING_KEY: ""}
            torch.export.load(path, extra_files=extra)
            inside = extra[PREPROCESSING_KEY] or None
        elif path.suffix == ".ts":
            extra = {PREPROCESSING_KEY: ""}
            with _quiet():
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            inside = extra[PREPROCESSING_KEY] or None
    if inside is None:
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        if not sidecar.is_file():
            raise ExportError(f"{path.name} carries no preprocessing and has no {sidecar.name}")
        inside = sidecar.read_text(encoding="utf-8")
    return json.loads(inside)


# --- file names ---------------------------------------------------------------------------------


def _file_safe(text: str) -> str:
    """``text`` with only letters, digits, ``-`` and ``_`` (a name in any file system)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "model"


def model_stem(subject: Subject | None, names: Mapping[str, str] | None = None) -> str:
    """The model's part of an exported file's name: "lenet5", "resnet18", "Net" (a .py class),
    "mymodel" (from mymodel.onnx: an upload by the name in ``names``, a ``store:`` reference
    -> the name it was uploaded as; unknown: "onnx-3fa2c1")."""
    if subject is None:
        return "model"
    source = subject.model
    if source.kind == "python":
        return _file_safe(source.ref.rpartition(":")[2])
    if source.kind in ("zoo", "torchvision", "timm"):
        return _file_safe(source.ref)
    ref = source.ref
    if ref.startswith(STORE_PREFIX):
        known = (names or {}).get(ref)
        return _file_safe(
            Path(known).stem if known else f"{source.kind}-{ref[len(STORE_PREFIX) :][:6]}"
        )
    return _file_safe(Path(ref).stem)


def plan_tag(plan: PruningPlan) -> str:
    """The plan's part of a file name: method and amount ("filters30", "unstructured12.5"),
    the N:M pattern ("nm2of4"), and the criterion unless it is the default."""
    if get_method(plan.method).amount_is_switch:
        tag = f"{plan.method}{plan.n}of{plan.m}"
    else:
        tag = f"{plan.method}{plan.amount * 100:.4g}"
    if plan.criterion != PruningPlan().criterion:
        tag += f"-{plan.criterion}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag)


def export_file_name(stem: str, plan: PruningPlan, fmt: str) -> str:
    """``<model>_<plan>[_<format>]<suffix>``: ``resnet18_filters30.onnx``,
    ``lenet5_unstructured50_zeros.pt``; the format is named where the suffix is not its name."""
    exporter = get_format(fmt)
    named = "" if exporter.suffix == f".{fmt}" else f"_{fmt.replace('-', '_')}"
    return f"{stem}_{plan_tag(plan)}{named}{exporter.suffix}"


# --- writing ------------------------------------------------------------------------------------


def _check_target(path: str | Path) -> Path:
    """``path`` as a file that can be written, or an ExportError saying why not."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give a file name in it")
    folder = target.parent
    if not folder.is_dir():
        raise ExportError(f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write in folder {folder}")
    return target


def _write_all(writers: Mapping[Path, Callable[[Path], None]], fmt: str) -> None:
    """Write every file to a temporary name beside it, then rename them all: an export that
    fails leaves no partial file (and an older file of the same name as it was)."""
    temporary: dict[Path, Path] = {}
    try:
        for target, write in writers.items():
            # The same suffix: torch.export.save warns about names that do not end in .pt2.
            handle, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=f".partial{target.suffix}", dir=target.parent
            )
            os.close(handle)
            temporary[target] = Path(name)
            write(Path(name))
        for target, name in temporary.items():
            os.replace(name, target)
    except ExportError:
        raise
    except OSError as err:
        raise ExportError(f"cannot write {fmt}: {err.strerror or first_line(err)}") from None
    except Exception as err:  # torch raises many kinds; the user gets one line for all
        raise ExportError(
            f"{fmt} export failed ({type(err).__name__}: {first_line(err)})"
        ) from None
    finally:
        for name in temporary.values():
            with contextlib.suppress(OSError):
                name.unlink()


def export(
    source: Workbench | Pruner,
    plan: PruningPlan | PrunedState,
    fmt: str,
    path: str | Path,
) -> ExportResult:
    """Write ``plan`` applied to ``source``'s model as format ``fmt`` to ``path``.

    ``source`` is a ``Workbench`` (its subject names the model in the snippet) or a bare
    ``Pruner``. Raises ``ExportError`` (a ValueError, one line) for an unknown format, a plan
    the model cannot take, a format the plan cannot take, a path that cannot be written or an
    export that fails in torch. Nothing is written then.
    """
    exporter = get_format(fmt)
    pruner: Pruner = getattr(source, "pruner", source)
    subject = getattr(source, "subject", None)
    data = getattr(source, "eval_set", None)
    target = _check_target(path)
    try:
        state = pruner.state_for(plan)
    except ValueError as err:  # a plan this model cannot take: one error type for callers
        raise ExportError(first_line(err)) from None
    reason = exporter.unavailable_because(state.plan.method)
    if reason:
        raise ExportError(f"{fmt}: {reason}")
    job = _Job(pruner, state, subject, target, data)
    try:
        with _quiet():
            built = exporter.build(job)
            preprocessing = job.preprocessing if exporter.carries_model else None
    except ExportError:
        raise
    except Exception as err:  # torch raises many kinds; the user gets one line for all
        raise ExportError(
            f"{fmt} export failed ({type(err).__name__}: {first_line(err)})"
        ) from None
    note, files = built.note, tuple(str(p) for p in built.writers)
    sidecar = ""
    if preprocessing is not None:
        beside = target.with_name(target.name + SIDECAR_SUFFIX)
        built.writers[beside] = _write_text(job.preprocessing_json)
        note += f"; {preprocessing['summary']} (all of it in {beside.name})"
        sidecar = str(beside)
    _write_all(built.writers, fmt)
    return ExportResult(
        format=fmt,
        path=str(target),
        bytes=sum(os.path.getsize(p) for p in files),
        params_nonzero=built.counts[0],
        params_total=built.counts[1],
        compacted=built.compacted,
        masked=built.masked,
        note=note,
        files=files,
        preprocessing=preprocessing,
        sidecar=sidecar,
    )


__all__ = [
    "FORMATS",
    "ExportError",
    "ExportFormat",
    "ExportResult",
    "OnnxRunner",
    "export",
    "export_file_name",
    "export_program",
    "first_line",
    "formats_for",
    "get_format",
    "load_export",
    "masked_state_dict",
    "model_stem",
    "plan_tag",
    "preprocessing_of",
    "read_preprocessing",
]
