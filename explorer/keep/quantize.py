"""An int8 variant of a pruned model, with honest numbers: accuracy, bytes on disk, latency.

**What is done.** Weight-only int8: every ``nn.Linear`` and ``nn.Conv2d`` weight is stored as
int8 with one fp32 scale per output channel (symmetric, zero point 0, range [-127, 127]); the
bias stays fp32; activations and arithmetic stay fp32 (the weight is dequantized on each call).
BatchNorm is folded into the convolution before it first (``torch.fx`` fuse, as latency's
``deployable`` does), so its per-channel scale lands in the int8 weight's scale. A zero weight
quantizes to exactly 0 (no zero point), so pruned zeros stay zero and a removed channel stays
removed. Every other layer with parameters stays fp32, by name, with the reason
(``QuantizedModel.left_fp32``).

**Why this, and not a library** (checked on this project's environment: torch 2.14.1, a CUDA
build run on a 2-core CPU-only machine; no torchao installed):

- ``torchao`` (the maintained path torch points to) is not installed in the project's
  environment. It is on the package index (torchao 0.18.0, a cp310-abi3 wheel); installed into
  a scratch folder, ``quantize_(model, Int8WeightOnlyConfig())`` and
  ``Int8DynamicActivationInt8WeightConfig()`` ran on the CPU with torch 2.14.1 (Linear only,
  Conv2d left alone) and gave the same accuracy as this module; in our (noisy) CPU timings of
  lenet300 and lenet5 it was not faster than fp32. Its saved weights are torchao tensor
  subclasses, which need torchao to load. Adding that dependency is the project's call, not
  this module's; adopting it would change the body of ``quantize_int8``, not the report.
- ``torch.ao.quantization.quantize_dynamic`` still runs in torch 2.14.1, but each use warns
  that ``torch.ao.quantization is deprecated and will be removed in 2.10`` (this is 2.14) and
  that quantized tensor dtypes (``torch.qint8``) are deprecated too. It covers Linear only
  (Conv2d stays fp32), and a model whose every layer it converts (lenet300) has no parameters
  left, so ``evaluate`` and ``measure_latency`` (``next(model.parameters())``) raise
  ``StopIteration`` on it. A new feature should not rest on an API announced as removed.
- torch's own int8 weight kernel ``torch._weight_int8pack_mm`` (private) was ~70x slower than
  fp32 at batch 256 here (48 ms vs 0.67 ms for a 784x300 layer).

So the int8 model is smaller on disk and in memory (about 4x for the quantized weights), not
faster on a CPU: the dequantization is extra work per call. Measured on this machine (2
threads, timed side by side): 1.3-2x slower than the pruned fp32 model at batch 1 and
1.2-1.5x slower at batch 32 (lenet300, lenet5, resnet_mini). ``int8_report`` times it side
by side with the dense and the pruned fp32 models and reports what it measured.

Everything here is plain data (no streamlit). ``quantize_int8`` and ``int8_report`` never modify
the model they are given, the pruner's model or the dense model.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.engine.cost import sparse_encoding
from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import copy_model, example_input
from explorer.engine.latency import Latency, compare_speed, measure_latency
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState
from explorer.engine.speed_tricks import PROBE_SAMPLES, checked_copy, fold_batchnorm
from explorer.keep.export import (
    ExportFormat,
    _Built,
    _Job,
    export_program,
    register_format,
)

if TYPE_CHECKING:
    from explorer.engine.workbench import Workbench

#: Largest int8 magnitude used: symmetric [-127, 127], so +x and -x get the same code.
QMAX = 127

INT8_NOTE = (
    "Weight-only int8: Linear and Conv2d weights stored as int8 with one fp32 scale per output "
    "channel, computed in fp32 (dequantized on each call). Smaller on disk and in memory; not "
    "faster on a CPU (the dequantization is extra work): see the measured latency."
)


# --- int8 weights -------------------------------------------------------------------------------


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, ...) as int8 codes and one fp32 scale per output channel.

    Symmetric: ``scale = max|w| / 127`` per channel, ``code = round(w / scale)``, so
    ``|w - code * scale| <= scale / 2`` and a zero weight is exactly code 0. An all-zero channel
    gets scale 1 and codes 0.
    """
    w = weight.detach().float()
    amax = w.abs().flatten(1).amax(1) if w.dim() > 1 else w.abs()
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.round(w / scale.view(shape)).clamp(-QMAX, QMAX).to(torch.int8)
    return codes, scale


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 weight from int8 ``codes`` and per-output-channel ``scale``."""
    # One kernel: int8 * fp32 promotes to fp32 (no separate int8 -> fp32 copy first).
    return codes * scale.view((-1,) + (1,) * (codes.dim() - 1))


class _Int8Weight(nn.Module):
    """Holds an int8 weight (buffer ``qweight``) and its per-channel ``scale``.

    ``scale`` and ``bias`` are frozen fp32 parameters, so the model keeps parameters (callers
    find its device with ``next(model.parameters())``). ``weight`` gives the dequantized fp32
    weight, so code that reads ``layer.weight`` still works.
    """

    qweight: torch.Tensor

    def _set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        codes, scale = quantize_weight(weight)
        self.register_buffer("qweight", codes.to(weight.device))
        self.scale = nn.Parameter(scale.to(weight.device), requires_grad=False)
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        )

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_weight(self.qweight, self.scale)


class Int8Linear(_Int8Weight):
    """``nn.Linear`` with an int8 weight (per-output-feature scale); computes in fp32."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._set_weight(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=int8 per-channel"
        )


class Int8Conv2d(_Int8Weight):
    """``nn.Conv2d`` (zero padding) with an int8 weight (per-output-channel scale); fp32 math."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self._set_weight(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # Deployed conv nets run channels_last (oneDNN's preference): the weight follows.
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, weight=int8 per-channel"
        )


# --- a model in int8 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedLayer:
    """One layer whose weight is int8 now.

    Attributes:
        name: module name in the quantized model (the same as in the model given).
        kind: the original module type (``Linear``, ``Conv2d``).
        weights: weight entries (now 1 byte each instead of 4).
        channels: output channels (one fp32 scale each).
        max_error: largest ``|w - dequantized w|`` over the layer's weight.
    """

    name: str
    kind: str
    weights: int
    channels: int
    max_error: float


@dataclass(frozen=True)
class Fp32Layer:
    """A layer that keeps fp32 parameters, and why.

    Attributes:
        name: module name.
        kind: module type.
        params: its own parameter entries (not those of its children).
        reason: one line for the user.
    """

    name: str
    kind: str
    params: int
    reason: str


@dataclass(frozen=True, eq=False)
class QuantizedModel:
    """The int8 model (eval mode, a new object) and what happened to each layer.

    Attributes:
        model: the int8 model.
        quantized: layers whose weight is int8 now.
        left_fp32: layers that still hold fp32 parameters, with the reason.
        folded: BatchNorm layers folded into the convolution (or Linear) before them.
    """

    model: nn.Module
    quantized: tuple[QuantizedLayer, ...]
    left_fp32: tuple[Fp32Layer, ...]
    folded: tuple[str, ...] = ()

    @property
    def quantized_weights(self) -> int:
        return sum(layer.weights for layer in self.quantized)

    @property
    def fp32_params(self) -> int:
        """Parameter entries still in fp32 outside the int8 layers (their biases and scales not
        counted)."""
        return sum(layer.params for layer in self.left_fp32)


def _fold_batchnorm(
    model: nn.Module, input_shape: tuple[int, ...] | None = None
) -> tuple[nn.Module, tuple[str, ...]]:
    """An eval-mode copy of ``model`` with BatchNorm folded into the layer before it where
    ``torch.fx`` can trace the model, and the names of the BatchNorm layers folded. With
    ``input_shape``, the folded copy is kept only if a probe batch gives the model's outputs
    (``explorer.engine.speed_tricks``)."""
    norms = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }
    if input_shape is None:
        fused = fold_batchnorm(model)
    else:
        device = next(model.parameters()).device
        probe = example_input(input_shape, PROBE_SAMPLES).to(device)
        probe.normal_(generator=torch.Generator(device).manual_seed(0))
        fused, tricks = checked_copy(model, probe, channels_last=False)
        fused = fused if tricks.folded else None
    if fused is None:
        return copy_model(model).eval(), ()
    left = {name for name, _ in fused.named_modules()}
    return fused.eval(), tuple(sorted(norms - left))


def _children(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, child) for every module, a module reachable twice listed twice."""
    return [
        (parent, attribute, child)
        for _, parent in model.named_modules(remove_duplicate=False)
        for attribute, child in parent._modules.items()  # named_children skips repeats
        if child is not None
    ]


def _why_fp32(
    name: str, module: nn.Module, parent: nn.Module | None, shared: dict[int, list[str]]
) -> str:
    """Why ``module`` (which holds parameters of its own) keeps them in fp32."""
    kind = type(module).__name__
    own = [p for _, p in module.named_parameters(recurse=False)]
    tied = sorted({other for p in own for other in shared.get(id(p), []) if other != name})
    if tied:
        return (
            f"its parameters are shared with {', '.join(tied)}: an int8 copy would add bytes, "
            "not save them"
        )
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return (
            "BatchNorm that could not be folded into a layer before it (torch.fx could not "
            "trace the model, or nothing foldable precedes it): a per-channel scale and shift, "
            "kept fp32"
        )
    if isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.modules.instancenorm._InstanceNorm):
        return "normalisation: a per-channel scale and shift, few parameters, kept fp32"
    if isinstance(module, nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention holds its projection weights itself and passes them to one "
            "fused function: weight-only int8 covers Linear and Conv2d modules only"
        )
    if isinstance(module, nn.Linear):
        if isinstance(parent, nn.MultiheadAttention):
            return f"{kind} inside nn.MultiheadAttention, which reads its weight directly"
        return f"{kind} is a subclass of Linear with its own code: only plain nn.Linear is handled"
    if isinstance(module, nn.Conv2d):
        if type(module) is nn.Conv2d:
            return (
                f"padding_mode={module.padding_mode!r}: only zero padding is handled "
                "(int8 Conv2d runs F.conv2d)"
            )
        return f"{kind} is a subclass of Conv2d with its own code: only plain nn.Conv2d is handled"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{kind}: weight-only int8 here covers Linear and Conv2d only"
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return f"{kind}: a table lookup; weight-only int8 here covers Linear and Conv2d only"
    names = ", ".join(n for n, _ in module.named_parameters(recurse=False))
    return (
        f"parameters used directly in {kind}.forward ({names}): only Linear and Conv2d "
        "layers have an int8 form here"
    )


def _quantizable(module: nn.Module) -> bool:
    kind = type(module)
    return kind is nn.Linear or (kind is nn.Conv2d and module.padding_mode == "zeros")


def quantize_int8(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> QuantizedModel:
    """An int8 copy of ``model`` (weight-only, per-channel; see the module docstring).

    BatchNorm is folded into the layer before it first (where ``torch.fx`` can trace the model);
    then every plain ``nn.Linear`` and zero-padded ``nn.Conv2d`` whose weight is not shared with
    another module gets an int8 weight. ``model`` itself is not modified.

    Args:
        model: the fp32 model, in eval mode.
        input_shape: one sample's shape; given, the folding is checked on a probe batch and
            left out where it would change the outputs.
    """
    folded_model, folded = _fold_batchnorm(model, input_shape)
    # Parameter -> the modules holding it (a module reachable under two names counts once).
    owners: dict[int, dict[int, str]] = {}
    for name, module in folded_model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), {}).setdefault(id(module), name)
    shared = {param: list(names.values()) for param, names in owners.items()}
    parents = {id(child): parent for parent, _, child in _children(folded_model)}

    replaced: dict[int, _Int8Weight] = {}
    quantized: list[QuantizedLayer] = []
    for name, module in folded_model.named_modules():
        if not _quantizable(module):
            continue
        if any(len(shared[id(p)]) > 1 for p in module.parameters(recurse=False)):
            continue  # tied weights: reported below as left fp32
        int8 = Int8Linear(module) if isinstance(module, nn.Linear) else Int8Conv2d(module)
        error = (module.weight.detach().float() - int8.weight).abs().max()
        replaced[id(module)] = int8
        quantized.append(
            QuantizedLayer(
                name,
                type(module).__name__,
                module.weight.numel(),
                module.weight.shape[0],
                float(error),
            )
        )
    for parent, attribute, child in _children(folded_model):
        if id(child) in replaced:
            setattr(parent, attribute, replaced[id(child)])
    result = replaced.get(id(folded_model), folded_model)  # the model is itself one layer

    left: list[Fp32Layer] = []
    for name, module in result.named_modules():
        if isinstance(module, _Int8Weight):
            continue
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        left.append(
            Fp32Layer(
                name,
                type(module).__name__,
                sum(p.numel() for p in own),
                _why_fp32(name, module, parents.get(id(module)), shared),
            )
        )
    return QuantizedModel(result.eval(), tuple(quantized), tuple(left), folded)


# --- files --------------------------------------------------------------------------------------


def saved_bytes(obj: object) -> int:
    """Bytes ``torch.save`` writes for ``obj``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def sparse_saved_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``state`` saved with every tensor that is at least half zeros stored as a bitmap
    plus its nonzero values (the rule of ``explorer.engine.cost.size_report``'s sparse size)."""
    encoded: dict[str, object] = {}
    for name, value in state.items():
        sparse = value.numel() >= 64 and int(torch.count_nonzero(value)) * 2 <= value.numel()
        encoded[name] = sparse_encoding(value) if sparse else value
    return saved_bytes(encoded)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every tensor on the CPU (its version metadata kept, so the
    bytes compare with ``explorer.engine.cost.size_report``'s)."""
    state = model.state_dict()
    moved = type(state)((k, v.detach().cpu()) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        moved._metadata = metadata
    return moved


def int8_state_dict(quantized: QuantizedModel | nn.Module) -> dict[str, torch.Tensor]:
    """The int8 model's state_dict on the CPU (int8 ``qweight``, fp32 ``scale`` and the rest)."""
    return cpu_state_dict(quantized.model if isinstance(quantized, QuantizedModel) else quantized)


def save_int8(quantized: QuantizedModel | nn.Module, path: str | Path) -> int:
    """Write the int8 state_dict to ``path`` (``torch.save``); returns the bytes written.

    It loads with ``torch.load(weights_only=True)``: ``load_int8(path, model)`` rebuilds the
    int8 structure from the fp32 ``model`` it came from and loads the tensors into it. For a
    file that needs no model class at all, export format ``int8`` (a ``torch.export`` program).
    """
    path = Path(path)
    torch.save(int8_state_dict(quantized), path)
    return path.stat().st_size


def load_int8(path: str | Path, model: nn.Module) -> nn.Module:
    """The int8 model saved by ``save_int8``; ``model``: the fp32 model it was made from (the
    compacted one for a structured plan), or any model of that architecture."""
    int8 = quantize_int8(model).model.cpu()
    int8.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return int8.eval()


@register_format
class Int8Program(ExportFormat):
    """The deployable model (compacted, or masked) with int8 weights, as a torch.export
    program: plain data, loads without the model's class."""

    name = "int8"
    suffix = ".pt2"
    title = "int8 program (weight-only)"
    help = (
        "the compacted (structured) or masked model with int8 weights (per-channel scales) "
        "as a torch.export program, any batch"
    )

    def build(self, job: _Job) -> _Built:
        quantized = quantize_int8(job.deployable, job.input_shape)
        program = export_program(quantized.model, job.input_shape)
        left = ", ".join(layer.name for layer in quantized.left_fp32) or "none"
        return _Built(
            {job.target: lambda path: torch.export.save(program, path)},
            job.deployable_counts,
            compacted=job.structured,
            masked=not job.structured,
            note=f"{job.what_runs()}; int8 weights of {len(quantized.quantized)} Linear/Conv2d "
            f"layer(s), fp32 compute; layers left fp32: {left}; "
            "torch.export.load(PATH).module()",
        )

    def load(self, path: Path, model: nn.Module | None) -> nn.Module:
        return torch.export.load(path).module()


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Report:
    """The pruned model in fp32 and in int8, side by side. Sizes in bytes of ``torch.save``.

    Attributes:
        plan: the plan.
        form: the fp32 pruned model quantized and compared: ``"compacted"`` (structured plans:
            physically smaller) or ``"masked"`` (dense shapes, pruned weights zero).
        dense_accuracy, fp32_accuracy, int8_accuracy: eval-split accuracy of the dense model,
            the pruned fp32 model and its int8 variant.
        fp32_loss, int8_loss: their mean cross-entropy.
        changed: eval samples whose int8 prediction differs from the pruned fp32 one.
        eval_samples: size of the eval split.
        dense_bytes: the dense fp32 state_dict.
        fp32_bytes: the pruned fp32 state_dict (the form above).
        int8_bytes: the int8 state_dict (what ``save_int8`` writes).
        fp32_sparse_bytes, int8_sparse_bytes: masked plans only (else None): the same with each
            tensor that is at least half zeros stored as bitmap + values (as the explorer's
            sparse size); what unstructured sparsity saves on disk.
        quantized_layers: ``QuantizedLayer`` rows.
        layers_left_fp32: ``Fp32Layer`` rows (name, kind, params, reason).
        folded: BatchNorm layers folded into their convolution before quantizing.
        latency: ``Latency`` rows (plus ``spread_ms``) of ``dense``, the fp32 ``form`` and
            ``int8``, timed side by side in the same rounds; empty when not measured.
        speed: per batch, int8 against the pruned fp32 model and against dense
            (``compare_speed``: ratio > 1 means int8 is faster).
        note: what the int8 variant is and what it is not.
    """

    plan: dict[str, Any]
    form: str
    dense_accuracy: float
    fp32_accuracy: float
    int8_accuracy: float
    fp32_loss: float
    int8_loss: float
    changed: int
    eval_samples: int
    dense_bytes: int
    fp32_bytes: int
    int8_bytes: int
    fp32_sparse_bytes: int | None
    int8_sparse_bytes: int | None
    quantized_layers: list[dict[str, Any]]
    layers_left_fp32: list[dict[str, Any]]
    folded: list[str]
    latency: list[dict[str, Any]] = field(default_factory=list)
    speed: list[dict[str, Any]] = field(default_factory=list)
    note: str = INT8_NOTE

    @property
    def accuracy_delta(self) -> float:
        """int8 accuracy minus pruned fp32 accuracy (what quantizing cost)."""
        return self.int8_accuracy - self.fp32_accuracy

    @property
    def int8_reduction(self) -> float:
        """Pruned fp32 bytes / int8 bytes: what quantizing alone saved."""
        return self.fp32_bytes / self.int8_bytes

    @property
    def combined_reduction(self) -> float:
        """Dense fp32 bytes / int8 bytes of the pruned model: pruning and int8 together, as
        shipped in ``form`` (the number people quote)."""
        return self.dense_bytes / self.int8_bytes

    @property
    def combined_sparse_reduction(self) -> float | None:
        """Masked plans: dense fp32 bytes / sparse-encoded int8 bytes (zeros as a bitmap)."""
        if self.int8_sparse_bytes is None:
            return None
        return self.dense_bytes / self.int8_sparse_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "accuracy_delta": self.accuracy_delta,
            "int8_reduction": self.int8_reduction,
            "combined_reduction": self.combined_reduction,
            "combined_sparse_reduction": self.combined_sparse_reduction,
        }

    def metrics(self) -> dict[str, Any]:
        """The figures a saved experiment keeps (under ``"int8"``): scalars and the latency
        rows, not the per-layer tables."""
        return {
            "form": self.form,
            "accuracy": self.int8_accuracy,
            "loss": self.int8_loss,
            "fp32_accuracy": self.fp32_accuracy,
            "changed": self.changed,
            "bytes": self.int8_bytes,
            "sparse_bytes": self.int8_sparse_bytes,
            "fp32_bytes": self.fp32_bytes,
            "dense_bytes": self.dense_bytes,
            "combined_reduction": self.combined_reduction,
            "combined_sparse_reduction": self.combined_sparse_reduction,
            "layers_left_fp32": [row["name"] for row in self.layers_left_fp32],
            "latency": self.latency,
        }


def pruned_fp32(bench: Workbench, plan: PruningPlan | PrunedState) -> tuple[nn.Module, str]:
    """The deployable fp32 pruned model (a new object) and its form: compacted for structured
    plans, masked otherwise."""
    state = bench.pruner.state_for(plan)
    compacted, _ = bench.compacted(state)  # None where the model cannot be compacted
    if compacted is not None:
        return compacted.eval(), "compacted"
    return bench.pruner.pruned_model(state).eval(), "masked"


def _speed_rows(timings: list[Latency], form: str) -> list[dict[str, Any]]:
    by_key = {(t.model, t.batch): t for t in timings}
    rows = []
    for batch in sorted({t.batch for t in timings}):
        int8 = by_key[("int8", batch)]
        for against in (form, "dense"):
            speed = compare_speed(by_key[(against, batch)], int8)
            rows.append(
                {
                    "batch": batch,
                    "against": against,
                    "ratio": speed.ratio,
                    "low": speed.low,
                    "high": speed.high,
                    "same_speed": speed.same_speed,
                    "summary": speed.summary(),
                }
            )
    return rows


def int8_report(
    bench: Workbench,
    plan: PruningPlan | PrunedState,
    *,
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 30,
    threads: int | None = None,
    budget_s: float | None = None,
) -> Int8Report:
    """``plan``'s deployable fp32 model and its int8 variant, measured alike: accuracy on the
    eval split, bytes on disk, and (``latency``) forward time of dense, pruned fp32 and int8
    timed in the same interleaved rounds. Nothing of ``bench`` is modified."""
    state = bench.pruner.state_for(plan)
    fp32, form = pruned_fp32(bench, state)
    quantized = quantize_int8(fp32, bench.eval_set.input_shape)
    fp32_result = evaluate(fp32, bench.eval_set)
    int8_result = evaluate(quantized.model, bench.eval_set)
    fp32_state = cpu_state_dict(fp32)
    int8_state = int8_state_dict(quantized)
    masked = form == "masked"
    timings: list[Latency] = []
    if latency:
        timings = measure_latency(
            {"dense": bench.model, form: fp32, "int8": quantized.model},
            bench.eval_set.input_shape,
            batch_sizes,
            repeats=repeats,
            threads=threads,
            budget_s=budget_s,
        )
    return Int8Report(
        plan=state.plan.to_dict(),
        form=form,
        dense_accuracy=bench.dense.accuracy,
        fp32_accuracy=fp32_result.accuracy,
        int8_accuracy=int8_result.accuracy,
        fp32_loss=fp32_result.loss,
        int8_loss=int8_result.loss,
        changed=len(int8_result.changed_vs(fp32_result)),
        eval_samples=len(bench.eval_set),
        dense_bytes=saved_bytes(cpu_state_dict(bench.model)),
        fp32_bytes=saved_bytes(fp32_state),
        int8_bytes=saved_bytes(int8_state),
        fp32_sparse_bytes=sparse_saved_bytes(fp32_state) if masked else None,
        int8_sparse_bytes=sparse_saved_bytes(int8_state) if masked else None,
        quantized_layers=[asdict(layer) for layer in quantized.quantized],
        layers_left_fp32=[asdict(layer) for layer in quantized.left_fp32],
        folded=list(quantized.folded),
        latency=[{**asdict(t), "spread_ms": t.spread_ms} for t in timings],
        speed=_speed_rows(timings, form) if timings else [],
    )


__all__ = [
    "INT8_NOTE",
    "Fp32Layer",
    "Int8Conv2d",
    "Int8Linear",
    "Int8Program",
    "Int8Report",
    "QuantizedLayer",
    "QuantizedModel",
    "cpu_state_dict",
    "dequantize_weight",
    "int8_report",
    "int8_state_dict",
    "load_int8",
    "pruned_fp32",
    "quantize_int8",
    "quantize_weight",
    "save_int8",
    "saved_bytes",
    "sparse_saved_bytes",
]
