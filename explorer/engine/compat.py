"""A compatibility check: one model through the whole pipeline, one verdict per step.

Each step of ``STEPS`` (load, eval, unstructured, filters, heads, onnx, pt2, saliency, path,
finetune) runs the library's public pieces on the model and compares what they give with a
plain-torch oracle where one exists. Each step ends as a ``Cell``:

- ``ok``: it ran and agreed with its oracle;
- ``refused``: the library declined with a message meant for the user (a ``LoadError``, an
  ``UnsupportedCriterion``, an ``ExportError``, or a ``ValueError`` that explorer raised itself,
  e.g. "this model has nothing that 'Filters' can prune");
- ``BUG``: any other exception, or an oracle mismatch;
- ``n/a``: the step does not apply (a heads plan on a model without attention heads);
- ``skipped``: a step it depends on did not succeed.

``check_model(subject)`` gives a ``CompatRow``; ``benchmarks/compat.py`` runs it on every
torchvision and many timm architectures, each in its own process.
"""

from __future__ import annotations

import math
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.engine.inspection import copy_model
from explorer.engine.summary import human_bytes

#: Cell statuses, in the order a summary lists them.
STATUSES = ("ok", "refused", "BUG", "n/a", "skipped")
SHORT = {"ok": "ok", "refused": "refused", "BUG": "BUG", "n/a": "n/a", "skipped": "skip"}
EXPLORER_DIR = Path(__file__).resolve().parents[1]
RTOL = 1e-4


class NotApplicable(Exception):
    """The step does not apply to this model (its message says why)."""


class Skipped(Exception):
    """A step this one needs did not succeed."""


class OracleMismatch(AssertionError):
    """The library's answer differs from the plain-torch oracle's."""


@dataclass(frozen=True)
class Cell:
    """One step's verdict: ``status`` in ``STATUSES``, a one-line ``detail``, its seconds."""

    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def short(self) -> str:
        return SHORT.get(self.status, self.status)

    @property
    def text(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status


@dataclass
class CompatRow:
    """One model's row: its label, a cell per step (in ``STEPS`` order) and notes."""

    model: str
    cells: dict[str, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: numbers the steps measured, e.g. ``dense_accuracy`` (explorer) and ``oracle_accuracy``
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def bugs(self) -> dict[str, Cell]:
        return {name: cell for name, cell in self.cells.items() if cell.status == "BUG"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cells": {name: asdict(cell) for name, cell in self.cells.items()},
            "notes": list(self.notes),
            "figures": dict(self.figures),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompatRow:
        cells = {name: Cell(**cell) for name, cell in data.get("cells", {}).items()}
        notes, figures = list(data.get("notes", [])), dict(data.get("figures", {}))
        return cls(str(data["model"]), cells, notes, figures)


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


def _raised_by_explorer(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is explorer's own code (not this
    module, not torch): a message explorer chose to give."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    path = Path(frames[-1].filename).resolve()
    return EXPLORER_DIR in path.parents and path.name != Path(__file__).name


def refusal_types() -> tuple[type[BaseException], ...]:
    """Exception types that are always a refusal: the library's user-facing errors."""
    from explorer.engine.compaction import CompactionError
    from explorer.engine.importance import UnsupportedCriterion
    from explorer.keep.export import ExportError
    from explorer.keep.snippet import SnippetError
    from explorer.loading.errors import LoadError

    return (LoadError, UnsupportedCriterion, ExportError, SnippetError, CompactionError)


def classify(err: BaseException) -> tuple[str, str]:
    """(status, detail) of a step that raised ``err``."""
    if isinstance(err, NotApplicable):
        return "n/a", first_line(err)
    if isinstance(err, Skipped):
        return "skipped", first_line(err)
    if isinstance(err, OracleMismatch):
        return "BUG", f"oracle mismatch: {first_line(err)}"
    if isinstance(err, refusal_types()):
        return "refused", first_line(err)
    if type(err) is ValueError and _raised_by_explorer(err):
        return "refused", first_line(err)
    return "BUG", f"{type(err).__name__}: {first_line(err)}"


# --- the context every step reads and extends ---------------------------------------------------


@dataclass
class Context:
    """What the steps share: the workbench, the oracle's model, images, resolved plans."""

    subject: Any
    trust_code: bool
    eval_images: int
    resolve: Callable[[str], Path] | None
    build: Callable[[], nn.Module] | None
    row: CompatRow
    workdir: Path
    workbench: Any = None
    reference: nn.Module | None = None  # the loaded model, for the plain-torch oracles
    images: torch.Tensor | None = None
    fit: Any = None
    states: dict[str, Any] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.workbench.eval_set.input_shape)

    def state(self, name: str, plan: Any) -> Any:
        """The plan resolved once (``name`` keys it); a later step is skipped if it failed."""
        if name in self.failed:
            raise Skipped(f"the {name} plan did not resolve")
        if name not in self.states:
            try:
                self.states[name] = self.workbench.resolve(plan)
            except Exception:
                self.failed.add(name)
                raise
        return self.states[name]


def _forward_logits(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise OracleMismatch(f"the model returned {type(out).__name__}, not a tensor")
    return out.detach().float().cpu()


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """Logits equal within ``rtol`` and an absolute tolerance scaled to their magnitude; the
    top class equal wherever the expected top-2 gap is larger than that tolerance."""
    if tuple(got.shape) != tuple(expected.shape):
        raise OracleMismatch(f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
    if not torch.isfinite(expected).all():
        raise OracleMismatch(f"{what}: the expected logits are not finite")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    atol = 1e-5 * max(scale, 1.0)
    diff = (got - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    if bad.any() or not torch.isfinite(got).all():
        raise OracleMismatch(
            f"{what}: max |diff| {float(diff.max()):.3g} (logit scale {scale:.3g}, "
            f"{int(bad.sum())} of {bad.numel()} entries off)"
        )
    if expected.ndim == 2 and expected.shape[1] > 1:
        top2 = expected.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * atol
        flips = (got.argmax(1) != expected.argmax(1)) & clear
        if flips.any():
            raise OracleMismatch(f"{what}: {int(flips.sum())} top-1 predictions differ")


def eval_indices(total: int, count: int) -> range:
    """The eval images a check uses: ``count`` of ``total``, a stride through them."""
    count = max(1, min(count, total))
    stride = max(1, total // count)
    return range(0, stride * count, stride)


#: Loader notes every subject of the bundled data gets (left out of a row's notes).
COMMON_NOTES = ("Official split", "Grey images", "Resized", "Normalised", "Bundled MNIST")


def _note_vacuous(ctx: Context, logits: torch.Tensor) -> None:
    if logits.numel() and float(logits.abs().max()) < 1e-6:
        ctx.row.notes.append("its logits are all ~0 (a zero-initialised head?): checks are vacuous")


def liven(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for every all-zero Linear / Conv2d weight (torchvision's ViT and many timm
    heads start at zero) and scale 1 for all-zero norm weights (zero-init residual branches):
    with a zero head every logit is 0 and each comparison of two models would be vacuous."""
    generator = torch.Generator().manual_seed(seed)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.is_meta or bool(weight.any()):
                continue
            if isinstance(module, nn.Linear | nn.Conv2d):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
            elif isinstance(module, norms):
                weight.fill_(1.0)
    return model


# --- the steps ----------------------------------------------------------------------------------


def step_load(ctx: Context) -> str:
    from explorer.engine.workbench import Workbench
    from explorer.loading.data import load_data
    from explorer.loading.subjects import load_subject
    from explorer.zoo.mnist import calibration_batch

    if ctx.build is None:
        loaded = load_subject(ctx.subject, trust_code=ctx.trust_code, resolve=ctx.resolve)
        model, data, card, notes = loaded.model, loaded.data, loaded.card, loaded.notes
    else:  # a model built by the caller (e.g. a timm model before explorer had a timm source)
        model = ctx.build().eval()
        data = load_data(ctx.subject.data, resolve=ctx.resolve)
        card, notes = None, ("built directly by the caller, not by an explorer loader",)
        with torch.no_grad():
            probe = model(data.eval.images[:2])
        if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != (2, len(data.eval.classes)):
            raise NotApplicable(f"not a {len(data.eval.classes)}-class classifier on this data")
    eval_set = data.eval.subset(eval_indices(len(data.eval), ctx.eval_images))
    ctx.fit = data.fit
    ctx.reference = copy_model(model).eval()
    ctx.workbench = Workbench(
        ctx.subject,
        model,
        eval_set,
        calibration_batch(data.fit, 32),
        card,
        notes,
        fit_source=data.fit,
    )
    ctx.images = eval_set.images
    ctx.row.notes.extend(n for n in notes if not n.startswith(COMMON_NOTES))
    params = sum(p.numel() for p in model.parameters())
    return f"{params:,} params, input {tuple(eval_set.input_shape)}"


def step_eval(ctx: Context) -> str:
    inc = ctx.workbench.evaluator.dense
    x = ctx.workbench.eval_set.images[inc.samples]
    expected = _forward_logits(ctx.reference, x)
    _note_vacuous(ctx, expected)
    assert_close(inc.logits.float().cpu(), expected, "dense eval vs model(x)")
    oracle_accuracy = float(
        (expected.argmax(1) == ctx.workbench.eval_set.labels[inc.samples]).float().mean()
    )
    if not math.isclose(inc.result.accuracy, oracle_accuracy, abs_tol=1.5 / len(x)):
        raise OracleMismatch(f"accuracy {inc.result.accuracy:.4f} != oracle {oracle_accuracy:.4f}")
    ctx.row.figures.update(dense_accuracy=inc.result.accuracy, oracle_accuracy=oracle_accuracy)
    return f"accuracy {inc.result.accuracy:.2%} on {len(x)} images"


def _called_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Linear / Conv2d modules a forward pass calls (the oracle's own census)."""
    called: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_pre_hook(lambda mod, _inp: called.append(names[id(mod)]))
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called))


def step_unstructured(ctx: Context) -> str:
    from torch.nn.utils import prune as torch_prune

    from explorer.engine.plan import PruningPlan

    plan = PruningPlan(method="unstructured", criterion="magnitude", scope="global", amount=0.5)
    state = ctx.state("unstructured", plan)
    oracle = copy_model(ctx.reference)
    x = ctx.images[:16]
    layers = _called_layers(oracle, x[:2])
    modules = dict(oracle.named_modules())
    explorer_layers = [layer.name for layer in ctx.workbench.pruner.structure.layers]
    if sorted(explorer_layers) != sorted(layers):
        missing = sorted(set(layers) - set(explorer_layers))[:3]
        extra = sorted(set(explorer_layers) - set(layers))[:3]
        raise OracleMismatch(f"prunable layers differ: not pruned {missing}, unexpected {extra}")
    extra_masks = sorted(set(state.masks) - {f"{n}.weight" for n in layers})
    if extra_masks:
        raise OracleMismatch(f"masks of parameters outside the layers: {extra_masks[:3]}")
    dense = {n: modules[n].weight.detach().clone() for n in layers}
    torch_prune.global_unstructured(
        [(modules[n], "weight") for n in layers], torch_prune.L1Unstructured, amount=0.5
    )
    magnitudes = torch.cat([w.abs().flatten() for w in dense.values()])
    cut = float(magnitudes.kthvalue(max(1, round(0.5 * len(magnitudes)))).values)
    for name in layers:
        expected = modules[name].weight_mask.detach().float()
        got = state.masks.get(f"{name}.weight")
        got = torch.ones_like(expected) if got is None else got.detach().float().cpu()
        differ = got != expected
        if differ.any() and not bool((dense[name].abs()[differ] == cut).all()):  # ties allowed
            raise OracleMismatch(
                f"mask of {name}.weight: {int(differ.sum())} of {differ.numel()} entries differ"
            )
        # Equal but for ties at the cut (random weights have many): torch's module then runs
        # explorer's choice among the tied entries, so the outputs below compare like with like.
        with torch.no_grad():
            modules[name].weight_mask.copy_(got.to(modules[name].weight_mask))
    expected = _forward_logits(oracle, x)
    assert_close(
        _forward_logits(ctx.workbench.pruner.pruned_model(state), x), expected, "masked model"
    )
    inc = ctx.workbench.evaluator.evaluate_state(state)
    full = _forward_logits(oracle, ctx.workbench.eval_set.images[inc.samples])
    assert_close(inc.logits.float().cpu(), full, "incremental eval of the masked state")
    return f"{len(layers)} layers, sparsity {1 - float((magnitudes > cut).float().mean()):.0%}"


def _masked_equals_compacted(ctx: Context, state: Any, what: str) -> str:
    from explorer.engine.compaction import compact
    from explorer.engine.inspection import model_flops

    pruner = ctx.workbench.pruner
    if not sum(state.pruned.values()):
        raise NotApplicable(f"the {what} plan prunes nothing on this model")
    x = ctx.images[:16]
    masked, small = pruner.pruned_model(state), compact(pruner, state)
    assert_close(
        _forward_logits(small, x), _forward_logits(masked, x), f"compacted vs masked ({what})"
    )
    dense_flops, small_flops = (model_flops(m, ctx.input_shape) for m in (pruner.model, small))
    if not small_flops < dense_flops:
        raise OracleMismatch(f"compacted FLOPs {small_flops:,} not below dense {dense_flops:,}")
    return f"FLOPs {small_flops / dense_flops:.0%} of dense"


def step_filters(ctx: Context) -> str:
    from explorer.engine.plan import PruningPlan

    state = ctx.state("filters", PruningPlan(method="filters", criterion="magnitude", amount=0.3))
    return _masked_equals_compacted(ctx, state, "filters")


def step_heads(ctx: Context) -> str:
    from explorer.engine.inspection import attention_heads
    from explorer.engine.plan import PruningPlan

    if not attention_heads(ctx.workbench.model):
        raise NotApplicable("no attention heads")
    state = ctx.state("heads", PruningPlan(method="heads", criterion="magnitude", amount=0.25))
    return _masked_equals_compacted(ctx, state, "heads")


def _unstructured_state(ctx: Context) -> Any:
    from explorer.engine.plan import PruningPlan

    plan = PruningPlan(method="unstructured", criterion="magnitude", scope="global", amount=0.5)
    return ctx.state("unstructured", plan)


def _export_round_trip(ctx: Context, fmt: str) -> str:
    from explorer.keep.export import export

    state = _unstructured_state(ctx)
    x = ctx.images[:8]
    result = export(ctx.workbench, state, fmt, ctx.workdir / f"model.{fmt}")
    runner = result.reload()
    expected = _forward_logits(ctx.workbench.pruner.pruned_model(state), x)
    assert_close(_forward_logits(runner, x), expected, f"{fmt} file vs the in-app masked model")
    return human_bytes(result.bytes)


def step_onnx(ctx: Context) -> str:
    return _export_round_trip(ctx, "onnx")


def step_pt2(ctx: Context) -> str:
    return _export_round_trip(ctx, "pt2")


def step_saliency(ctx: Context) -> str:
    from explorer.inside.saliency import get_attribution

    x = ctx.images[:1]
    model = ctx.workbench.model
    target = int(_forward_logits(ctx.reference, x).argmax(1))
    got = get_attribution("gradient").explain(model, x, target).values
    oracle = copy_model(ctx.reference).eval()
    for param in oracle.parameters():
        param.requires_grad_(False)
    image = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle(image)[0, target], image)
    expected = grad.abs().amax(dim=1)[0]
    got_t = torch.as_tensor(got)
    if tuple(got_t.shape) != tuple(expected.shape):
        raise OracleMismatch(f"gradient map {tuple(got_t.shape)} != {tuple(expected.shape)}")
    assert_close(got_t.float(), expected.float(), "gradient saliency vs autograd", rtol=1e-3)
    done = ["gradient"]
    for name in ("gradcam", "gradcam_tokens"):
        method = get_attribution(name)
        if not method.applies_to(model, ctx.input_shape):
            continue
        values = method.explain(model, x, target).values
        if values.shape != tuple(x.shape[-2:]) or not bool(
            torch.isfinite(torch.as_tensor(values)).all()
        ):
            raise OracleMismatch(f"{name} map of shape {values.shape} is not finite / not (H, W)")
        done.append(name)
    return ", ".join(done)


def step_path(ctx: Context) -> str:
    import numpy as np

    from explorer.inside.decision_paths import decision_path

    x = ctx.images[:1]
    target = int(_forward_logits(ctx.reference, x).argmax(1))
    path = decision_path(ctx.workbench.model, x, target)
    if not path.layers:
        raise OracleMismatch("the decision path has no layers")
    if not np.isfinite(path.logits).all():
        raise OracleMismatch("the decision path's logits are not finite")
    for layer in path.layers:
        if not np.isfinite(layer.contributions).all() or not len(layer.contributions):
            raise OracleMismatch(f"the contributions of {layer.name} are empty or not finite")
    return f"{len(path.layers)} columns"


def step_finetune(ctx: Context) -> str:
    from explorer.recovery.training import Recipe, fine_tune

    state = _unstructured_state(ctx)
    fit = ctx.fit.subset(eval_indices(len(ctx.fit), 16))  # a stride: the split may be sorted
    recipe = Recipe(steps=1, batch_size=len(fit), optimizer="sgd", lr=0.01, weight_decay=0.01)
    result = fine_tune(ctx.workbench.model, state.masks, fit, recipe, device="cpu")
    dense = ctx.workbench.model.state_dict()
    moved = False
    for name, mask in state.masks.items():
        trained = result.state_dict[name].float().cpu()
        mask = mask.float().cpu()
        revived = (trained[mask == 0] != 0).sum()
        if revived:
            raise OracleMismatch(f"{int(revived)} pruned entries of {name} are non-zero")
        moved = moved or not torch.equal(trained, dense[name].float().cpu() * mask)
    if not moved:
        moved = any(
            not torch.equal(result.state_dict[k].float().cpu(), v.float().cpu())
            for k, v in dense.items()
            if v.is_floating_point()
        )
    if not moved:
        raise OracleMismatch("no weight changed in a training step")
    return f"loss {result.history[-1]:.3f}"


@dataclass(frozen=True)
class Step:
    """A step: its function (returns a one-line detail) and the steps it needs."""

    run: Callable[[Context], str]
    needs: tuple[str, ...] = ("load",)


STEPS: dict[str, Step] = {
    "load": Step(step_load, ()),
    "eval": Step(step_eval),
    "unstructured": Step(step_unstructured),
    "filters": Step(step_filters),
    "heads": Step(step_heads),
    "onnx": Step(step_onnx),
    "pt2": Step(step_pt2),
    "saliency": Step(step_saliency),
    "path": Step(step_path),
    "finetune": Step(step_finetune),
}


def check_model(
    subject: Any,
    steps: Mapping[str, Step] | None = None,
    eval_images: int = 64,
    trust_code: bool = True,
    *,
    resolve: Callable[[str], Path] | None = None,
    build: Callable[[], nn.Module] | None = None,
    label: str | None = None,
    progress: Callable[[str], None] | None = None,
    done: Callable[[str, Cell], None] | None = None,
) -> CompatRow:
    """Run ``steps`` (default ``STEPS``, in order) on ``subject`` and give its row.

    Args:
        subject: a ``Subject`` or a model-source text.
        steps: name -> ``Step``; a step whose ``needs`` did not all end ``ok`` is skipped.
        eval_images: eval images the workbench evaluates (a stride through the eval split).
        trust_code: allow importing a ``.py`` model source.
        resolve: maps weights / store references to paths (default: the store's).
        build: builds the model instead of the subject's loader (its data is still loaded).
        label: the row's label (default: the subject's).
        progress: called with each step's name as it starts.
        done: called with each step's name and cell as it ends.
    """
    from explorer.engine.subject import Subject

    subject = Subject.of(subject)
    steps = STEPS if steps is None else steps
    row = CompatRow(label or subject.label)
    with tempfile.TemporaryDirectory(prefix="compat-") as workdir:
        ctx = Context(subject, trust_code, eval_images, resolve, build, row, Path(workdir))
        for name, step in steps.items():
            if progress is not None:
                progress(name)
            start = time.perf_counter()
            missing = [n for n in step.needs if n not in row.cells or row.cells[n].status != "ok"]
            if missing:
                row.cells[name] = Cell("skipped", f"needs {', '.join(missing)}")
                if done is not None:
                    done(name, row.cells[name])
                continue
            try:
                detail = step.run(ctx)
                cell = Cell("ok", detail or "", time.perf_counter() - start)
            except Exception as err:  # every failure becomes a cell; nothing escapes
                status, detail = classify(err)
                cell = Cell(status, detail, time.perf_counter() - start)
            row.cells[name] = cell
            if done is not None:
                done(name, cell)
    return row
