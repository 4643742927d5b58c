"""A short Python file that rebuilds a plan's masks on the user's own model with
``torch.nn.utils.prune``: the code a student would write by hand, with the same result.

What torch's functions can say, they say: global magnitude pruning is one
``prune.global_unstructured`` call, layer-wise amounts are ``prune.l1_unstructured`` per layer,
a channel group ranked by one layer's Ln norms is ``prune.ln_structured`` plus the coupled
entries (bias, BatchNorm, the next layer's inputs) masked along. What they cannot say (other
criteria, N:M, attention heads, channel groups coupled across layers) falls back to the
explorer's own choice, saved next to the file (a channel group's kept channels, else whole
masks) and applied with ``prune.custom_from_mask``; the file says so at the top.

The file is checked before it is written: it is run on a copy of the dense model and its masks
must equal the explorer's exactly. A part that differs (two scores that tie, or that torch rounds
differently) falls back to the saved masks, so the file never silently prunes something else.
"""

from __future__ import annotations

import json
import runpy
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from explorer.engine.inspection import copy_model
from explorer.engine.methods import get_method, plan_label
from explorer.engine.pruning import PrunedState, Pruner, Unit
from explorer.engine.structure import ChannelGroup, ModelStructure, source_names
from explorer.engine.subject import STORE_PREFIX, Subject

MASKS_SUFFIX = ".masks.pt"
#: How many times a part that came out different is moved to the saved masks and checked again.
_CHECK_ROUNDS = 3

# A parameter name -> (module name, tensor name) as the file addresses it.
Reference = Callable[[str], tuple[str, str]]


class SnippetError(ValueError):
    """The snippet could not reproduce the plan's masks, even from saved masks."""


# --- what the file does, as data ----------------------------------------------------------------


@dataclass
class _GlobalStep:
    """``prune.global_unstructured`` over the weights of ``units``."""

    units: tuple[str, ...]
    amount: float

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(f"{u}.weight" for u in self.units)


@dataclass
class _LayerStep:
    """``prune.l1_unstructured`` on one layer's weight."""

    unit: str
    amount: float

    @property
    def units(self) -> tuple[str, ...]:
        return (self.unit,)

    @property
    def params(self) -> tuple[str, ...]:
        return (f"{self.unit}.weight",)


@dataclass
class _Coupled:
    """Entries of ``param`` along ``dim`` that go with the group's channels, ``repeat``
    consecutive entries per channel (a flatten: one channel is H x W inputs of a Linear)."""

    param: str
    dim: int
    repeat: int


@dataclass
class _ChannelStep:
    """``prune.ln_structured`` on the scored weight, then the coupled entries masked along."""

    unit: str
    param: str
    dim: int
    amount: float | int
    size: int
    norm: float
    what: str
    coupled: list[_Coupled] = field(default_factory=list)

    @property
    def units(self) -> tuple[str, ...]:
        return (self.unit,)

    @property
    def params(self) -> tuple[str, ...]:
        return (self.param, *(c.param for c in self.coupled))


@dataclass
class _SavedChannels:
    """A channel group torch cannot rank: its kept channels come from the saved file, and every
    entry of the group is masked along them (so the file shows the coupling, and stays small)."""

    unit: str
    coupled: list[_Coupled]

    @property
    def units(self) -> tuple[str, ...]:
        return (self.unit,)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(c.param for c in self.coupled)


_Step = _GlobalStep | _LayerStep | _ChannelStep | _SavedChannels


@dataclass(frozen=True)
class Snippet:
    """A rendered snippet.

    Attributes:
        code: the Python file's text.
        saved: what the file loads next to it, or None when torch's own functions express the
            whole plan: ``{"kept": {group: bool (channels,)}, "masks": {param: bool mask}}``
            (the user's parameter names).
        masks_name: the file name of ``saved``, next to the snippet.
        fallback: unit name -> why its choice is saved rather than made by torch.
        functions: the ``torch.nn.utils.prune`` functions the file calls.
    """

    code: str
    saved: dict[str, dict[str, torch.Tensor]] | None
    masks_name: str
    fallback: dict[str, str]
    functions: tuple[str, ...]


# --- planning the steps -------------------------------------------------------------------------


def _method_reason(state: PrunedState) -> str | None:
    """Why no unit of this plan can be expressed with torch's functions, or None."""
    plan = state.plan
    method = get_method(plan.method)
    if plan.method == "nm":
        return f"N:M patterns ({plan.n}:{plan.m}) have no torch.nn.utils.prune function"
    if method.unit_kind == "heads":
        return "attention heads have no torch.nn.utils.prune function"
    if method.unit_kind == "blocks":
        return "whole blocks have no torch.nn.utils.prune function"
    if plan.criterion == "random":
        return "torch's random pruning draws other numbers than the plan's seed"
    if plan.criterion != "magnitude":
        return (
            f"the {plan.criterion!r} criterion is not a weight norm, and torch.nn.utils.prune "
            "ranks by weight norms only"
        )
    return None


def _in_global_ranking(state: PrunedState, unit: Unit) -> bool:
    """Whether ``unit`` takes part in the plan's global ranking (as ``Pruner.pruned_counts``)."""
    plan = state.plan
    return (
        plan.scope == "global"
        and get_method(plan.method).supports_global
        and unit.name not in plan.dense_units
        and unit.name not in plan.overrides
    )


def _repeat(channel_of: torch.Tensor, size: int) -> int | None:
    """k when ``channel_of`` is 0..size-1 each repeated k times in a row, else None."""
    if len(channel_of) == 0 or len(channel_of) % size:
        return None
    k = len(channel_of) // size
    return k if torch.equal(channel_of, torch.arange(size).repeat_interleave(k)) else None


def _coupled(group: ChannelGroup, skip: object = None) -> list[_Coupled] | str:
    """Every slice of ``group`` but ``skip`` as masked-along entries, or why one cannot be."""
    coupled = []
    for piece in group.slices:
        if piece is skip:
            continue
        repeat = _repeat(piece.channel_of, group.size)
        if repeat is None:
            return f"{piece.param} holds its channels in an order torch cannot follow"
        coupled.append(_Coupled(piece.param, piece.dim, repeat))
    return coupled


def _channel_step(structure: ModelStructure, state: PrunedState, unit: Unit) -> _ChannelStep | str:
    """The ``ln_structured`` step of a channel group, or why it has none."""
    method = get_method(state.plan.method)
    group: ChannelGroup = unit.detail
    role = getattr(method, "score_role", "producer")
    scored = [s for s in group.slices if s.role == role and s.param.endswith(".weight")]
    if len(scored) != 1:
        return (
            "channel group coupled across layers: its score adds up the norms of "
            f"{len(scored)} weights, and ln_structured ranks one"
        )
    piece = scored[0]
    if _repeat(piece.channel_of, group.size) != 1:
        return "its channels are not one row or column each of the ranked weight"
    coupled = _coupled(group, skip=piece)
    if isinstance(coupled, str):
        return coupled
    plan = state.plan
    # The global ranking's choice is a count per group; a layer-wise amount is the plan's own.
    amount: float | int = (
        state.pruned[unit.name] if _in_global_ranking(state, unit) else plan.amount_for(unit.name)
    )
    module = structure.modules.get(piece.param.rpartition(".")[0])
    what = (
        "input channels" if piece.dim else "neurons" if isinstance(module, nn.Linear) else "filters"
    )
    return _ChannelStep(
        unit.name, piece.param, piece.dim, amount, group.size, plan.norm, what, coupled
    )


def _steps(
    structure: ModelStructure, state: PrunedState, forced: Mapping[str, str]
) -> tuple[list[_Step], dict[str, str]]:
    """The steps of the plan, and unit -> why torch does not choose its pruned elements."""
    pruned_units = [u for u in state.units if u.name in state.keeps]
    reason = _method_reason(state)
    method = get_method(state.plan.method)
    steps: list[_Step] = []
    fallback: dict[str, str] = {}
    if method.unit_kind == "channels":
        for unit in pruned_units:
            why = reason or forced.get(unit.name)
            step = _channel_step(structure, state, unit) if why is None else why
            if not isinstance(step, str):
                steps.append(step)
                continue
            fallback[unit.name] = step
            coupled = _coupled(unit.detail)
            if not isinstance(coupled, str):
                steps.append(_SavedChannels(unit.name, coupled))
        return steps, fallback
    if reason:
        return [], {u.name: reason for u in pruned_units}
    fallback = {u.name: forced[u.name] for u in pruned_units if u.name in forced}
    if method.unit_kind == "weights":
        members = [u for u in state.units if _in_global_ranking(state, u)]
        if any(u.name in state.keeps for u in members):
            if any(u.name in forced for u in members):
                # One global call or none: its amount is over all of its layers together.
                why = next(forced[u.name] for u in members if u.name in forced)
                fallback.update({u.name: why for u in members if u.name in state.keeps})
            else:
                steps.append(_GlobalStep(tuple(u.name for u in members), state.plan.amount))
        for unit in pruned_units:
            if unit.name not in fallback and not _in_global_ranking(state, unit):
                steps.append(_LayerStep(unit.name, state.plan.amount_for(unit.name)))
    return steps, fallback


def _saved(
    pruner: Pruner, state: PrunedState, steps: list[_Step], fallback: Mapping[str, str]
) -> dict[str, dict[str, torch.Tensor]] | None:
    """What the snippet loads: kept channels of the saved channel groups, and whole masks
    (multiplied per parameter, as bool) of the other fallback units; None when nothing."""
    if not fallback:
        return None
    kept = {
        s.unit: state.keeps[s.unit].detach().cpu().clone()
        for s in steps
        if isinstance(s, _SavedChannels)
    }
    method = get_method(state.plan.method)
    masks: dict[str, torch.Tensor] = {}
    for unit in state.units:
        if unit.name not in fallback or unit.name in kept:
            continue
        for param, mask in method.masks(pruner.structure, unit, state.keeps[unit.name]).items():
            mask = mask.detach().cpu().bool()
            masks[param] = masks[param] & mask if param in masks else mask
    return {"kept": kept, "masks": masks}


# --- rendering ----------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A Python string literal (double quotes, as a person would write it)."""
    return json.dumps(text)


def _number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else repr(float(value))


def _layer(ref: Reference, param: str) -> tuple[str, str]:
    module, tensor = ref(param)
    return f"layer[{_q(module)}]", _q(tensor)


def _render_steps(steps: list[_Step], ref: Reference) -> tuple[list[str], list[str]]:
    """Body lines of ``prune_model`` and the torch functions they call."""
    lines: list[str] = []
    functions: list[str] = []
    globals_ = [s for s in steps if isinstance(s, _GlobalStep)]
    layers = [s for s in steps if isinstance(s, _LayerStep)]
    channels = [s for s in steps if isinstance(s, _ChannelStep)]
    saved = [s for s in steps if isinstance(s, _SavedChannels)]
    for step in globals_:
        functions.append("global_unstructured")
        lines += [
            f"    # Global magnitude pruning: the {step.amount * 100:g}% smallest |w| of these",
            "    # layers' weights, ranked all together (one layer may lose more than another).",
            "    prune.global_unstructured(",
            "        [",
        ]
        for unit in step.units:
            module, tensor = _layer(ref, f"{unit}.weight")
            lines.append(f"            ({module}, {tensor}),")
        lines += [
            "        ],",
            "        pruning_method=prune.L1Unstructured,",
            f"        amount={_number(step.amount)},",
            "    )",
        ]
    if layers:
        functions.append("l1_unstructured")
        lines.append(
            "    # Layers with their own amount: each loses that fraction of its smallest |w|."
            if globals_
            else "    # Layer by layer: each layer loses this fraction of its smallest |w|."
        )
        for step in layers:
            module, tensor = _layer(ref, f"{step.unit}.weight")
            lines.append(
                f"    prune.l1_unstructured({module}, {tensor}, amount={_number(step.amount)})"
            )
    if channels or saved:
        lines.append("    kept = {}  # channel group -> which of its channels stay")
    if channels:
        functions.append("ln_structured")
        norm = _number(channels[0].norm)
        lines.append(
            f"    # 1. Which channels go: those whose weights have the smallest L{norm} norm."
        )
        if any(isinstance(s.amount, int) for s in channels):
            lines.append(
                "    #    An int amount is a count: what the plan's global ranking chose there."
            )
        for step in channels:
            module, tensor = _layer(ref, step.param)
            amount = step.amount
            if isinstance(amount, int):
                lines.append(f"    # {step.unit}: {amount} of its {step.size} {step.what}")
            lines += [
                f"    prune.ln_structured({module}, {tensor}, amount={amount!r}, "
                f"n={_number(step.norm)}, dim={step.dim})",
                f"    kept[{_q(step.unit)}] = kept_channels({module}, {tensor}, dim={step.dim})",
            ]
    if saved:
        lines += [
            "    # Groups torch cannot rank (see the note at the top): the explorer's choice.",
            '    kept.update(saved["kept"])',
        ]
    if any(s.coupled for s in [*channels, *saved]):
        lines += [
            "    # 2. What belongs to a removed channel goes with it: its bias and BatchNorm",
            "    #    entries, and the inputs of the next layers that read it.",
        ]
    for step in [*channels, *saved]:
        if not step.coupled:
            continue
        lines.append(f"    # channels of {step.unit}")
        for piece in step.coupled:
            module, tensor = _layer(ref, piece.param)
            kept = f"kept[{_q(step.unit)}]"
            if piece.repeat > 1:
                kept += f".repeat_interleave({piece.repeat})"
                lines.append(f"    # (flattened: each channel is {piece.repeat} inputs in a row)")
            lines.append(f"    drop_channels({module}, {tensor}, {kept}, dim={piece.dim})")
    return lines, functions


_HELPERS = '''

def kept_channels(module, name, dim):
    """Which channels along `dim` of module.<name> the structured pruning kept."""
    mask = getattr(module, name + "_mask").movedim(dim, 0).flatten(1)
    return mask.amax(dim=1) > 0


def drop_channels(module, name, kept, dim):
    """Mask the entries of module.<name> that belong to removed channels."""
    tensor = getattr(module, name)
    shape = [1] * tensor.dim()
    shape[dim] = -1
    prune.custom_from_mask(module, name, kept.reshape(shape).expand_as(tensor))
'''

_REPORT = """    for name, mask in model.named_buffers():
        if name.endswith("_mask"):
            print(f"{name.removesuffix('_mask')}: {1 - mask.mean().item():.1%} pruned")
"""


def _builder(subject: Subject | None) -> list[str]:
    """Lines of ``main()`` that build the dense model the plan was made on."""
    source = subject.model if subject is not None else None
    weights = subject.weights if subject is not None else None
    load_weights = [
        f"    # The weights you pruned ({weights}): the masks depend on them.",
        '    model.load_state_dict(torch.load("weights.pt", weights_only=True))',
    ]
    if weights is None:
        load_weights = [
            "    # If your class does not load its trained weights itself (the masks depend on",
            '    # them): model.load_state_dict(torch.load("weights.pt", weights_only=True))',
        ]
    if source is not None and source.kind == "zoo":
        lines = [
            "    from explorer.zoo.models import load_model  # a bundled model (pruning-explorer)",
            "",
            f"    model = load_model({_q(source.ref)})",
        ]
        return lines + (load_weights if weights else [])
    args = ""
    if source is not None and source.constructor_args:
        args = ", ".join(f"{k}={v!r}" for k, v in source.constructor_args.items())
    if source is not None and source.kind == "torchvision":
        lines = [
            "    import torchvision",
            "",
            f"    model = torchvision.models.{source.ref}({args})",
        ]
        return lines + (load_weights if weights else [])
    if source is not None and source.kind == "timm":
        extra = f", {args}" if args else ""
        lines = [
            "    import timm",
            "",
            f"    model = timm.create_model({_q(source.ref)}, pretrained=False{extra})",
        ]
        return lines + (load_weights if weights else [])
    if source is not None and source.kind == "python" and STORE_PREFIX not in source.ref:
        path, _, name = source.ref.rpartition(":")
        file = Path(path)
        if file.stem.isidentifier():
            lines = [
                "    import sys",
                "",
                f"    sys.path.insert(0, {_q(str(file.parent))})  # the folder of {file.name}",
                f"    from {file.stem} import {name}",
                "",
                f"    model = {name}({args})",
            ]
            return lines + load_weights
    return [  # an exported program, ONNX, TorchScript or pickle: prune needs the nn.Module
        "    # Build your model here (the nn.Module, with the weights you pruned):",
        "    # model = MyNet(); model.load_state_dict(torch.load(...)); prune_model(model)",
        "    raise SystemExit(",
        '        "edit main(): build your model, then call prune_model(model)"',
        "    )",
    ]


def _render(
    steps: list[_Step],
    fallback: Mapping[str, str],
    saved: Mapping[str, Mapping[str, torch.Tensor]] | None,
    ref: Reference,
    state: PrunedState,
    subject: Subject | None,
    masks_name: str,
) -> tuple[str, list[str]]:
    plan = state.plan
    body, functions = _render_steps(steps, ref)
    structured = get_method(plan.method).structured
    head = [
        "# Rebuilds a pruning plan's masks on your own model with PyTorch's torch.nn.utils.prune.",
        "# Written by pruning-explorer.",
        "#",
        f"# Model: {subject.label if subject is not None else 'the model the plan was made on'}",
        f"# Plan:  {plan_label(plan)}",
        *(f"#        {line}" for line in textwrap.wrap(plan.to_json(indent=None), 88)),
        "#",
    ]
    if fallback:
        functions.append("custom_from_mask")
        head += [
            "# NOTE: torch.nn.utils.prune has no function that chooses what this plan chose for",
            f"# the parts below, so their choice is loaded from {masks_name} (saved next to",
            "# this file) and applied with prune.custom_from_mask:",
        ]
        reasons: dict[str, list[str]] = {}
        for unit, reason in fallback.items():
            reasons.setdefault(reason, []).append(unit)
        for reason, units in reasons.items():
            shown = ", ".join(units[:6]) + (f" and {len(units) - 6} more" if len(units) > 6 else "")
            head += textwrap.wrap(
                f"{shown}: {reason}", 92, initial_indent="#   - ", subsequent_indent="#     "
            )
        head.append("#")
    head += [
        "# prune_model(model) adds a <name>_mask buffer per pruned tensor and computes",
        "# <name> = <name>_orig * <name>_mask before every forward pass;",
        "# prune.remove(module, name) makes the zeros permanent. Shapes stay the same: zeros",
        "# alone are not faster.",
    ]
    if structured:
        head.append(
            "# Whole channels are zero: Torch-Pruning (or the explorer's pt2 export) removes them."
        )
    imports = ["", "from pathlib import Path", ""] if fallback else [""]
    imports += ["import torch", "from torch.nn.utils import prune", ""]
    if fallback:
        imports += [f"MASKS = Path(__file__).with_name({_q(masks_name)})", ""]
    code = head + imports
    if any(isinstance(s, _ChannelStep | _SavedChannels) for s in steps):
        helpers = _HELPERS.splitlines()[1:]
        if not any(isinstance(s, _ChannelStep) for s in steps):
            helpers = helpers[helpers.index("def drop_channels(module, name, kept, dim):") - 1 :]
        code += [*helpers, ""]
    code += [
        "",
        "def prune_model(model):",
        '    """Prune `model` (the dense, trained model) in place, as the plan does; return it."""',
        "    layer = dict(model.named_modules())",
    ]
    if fallback:
        code.append("    saved = torch.load(MASKS, weights_only=True)  # see the note at the top")
    if not steps and not fallback:
        code.append("    # The plan prunes nothing.")
    if body:
        code += ["", *body]
    if saved is not None and saved["masks"]:
        code += [
            "",
            "    # The parts torch has no function for (see the note at the top): saved masks.",
            '    for name, mask in saved["masks"].items():',
            '        module, _, tensor = name.rpartition(".")',
            "        prune.custom_from_mask(layer[module], tensor, mask)",
        ]
    code += ["    return model", "", "", "def main():"]
    code += _builder(subject)
    code += ["    prune_model(model)", *_REPORT.splitlines(), "", "", 'if __name__ == "__main__":']
    code += ["    main()", ""]
    return "\n".join(code), functions


# --- checking -----------------------------------------------------------------------------------


def torch_prune_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``<param>_mask`` buffers ``torch.nn.utils.prune`` left on ``model``, by parameter."""
    return {
        name.removesuffix("_mask"): buffer
        for name, buffer in model.named_buffers()
        if name.endswith("_mask")
    }


def mask_differences(
    got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """Parameters whose masks differ (a parameter absent from one side is dense there)."""
    differ = []
    for name in sorted(set(got) | set(expected)):
        a, b = got.get(name), expected.get(name)
        if a is None or b is None:
            present = a if a is not None else b
            if not bool((present.cpu() != 0).all()):
                differ.append(name)
        elif not torch.equal(a.detach().cpu().bool(), b.detach().cpu().bool()):
            differ.append(name)
    return differ


def run_snippet(path: str | Path, model: nn.Module) -> nn.Module:
    """Run the snippet file's ``prune_model`` on ``model`` (in place) and return it."""
    namespace = runpy.run_path(str(path), run_name="pruning_snippet")
    return namespace["prune_model"](model)


def _check(
    code: str,
    saved: Mapping[str, Mapping[str, torch.Tensor]] | None,
    masks_name: str,
    pruner: Pruner,
    state: PrunedState,
) -> list[str]:
    """Parameters whose masks differ when the snippet runs on a copy of the dense model."""
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "snippet.py"
        file.write_text(code, encoding="utf-8")
        if saved is not None:
            torch.save({k: dict(v) for k, v in saved.items()}, Path(folder) / masks_name)
        model = copy_model(pruner.model).cpu()
        run_snippet(file, model)
    return mask_differences(torch_prune_masks(model), state.masks)


# --- the public entry point ---------------------------------------------------------------------


def make_snippet(
    pruner: Pruner, state: PrunedState, subject: Subject | None, masks_name: str
) -> Snippet:
    """The snippet of ``state``'s plan, checked to reproduce its masks exactly.

    ``masks_name`` is the file name the masks get next to the snippet (used only when part of
    the plan falls back to saved masks).
    """
    renamed = source_names(pruner.model)

    def internal(param: str) -> tuple[str, str]:
        module, _, tensor = param.rpartition(".")
        return module, tensor

    def user(param: str) -> tuple[str, str]:
        # nn.MultiheadAttention's packed weights: in_proj.weight -> in_proj_weight on the module.
        return internal(renamed.get(param, param))

    forced: dict[str, str] = {}
    for _ in range(_CHECK_ROUNDS):
        steps, fallback = _steps(pruner.structure, state, forced)
        saved = _saved(pruner, state, steps, fallback)
        code, _ = _render(steps, fallback, saved, internal, state, subject, masks_name)
        differ = set(_check(code, saved, masks_name, pruner, state))
        if not differ:
            break
        # torch ranked some scores differently (a tie, or a rounding of a norm): those steps'
        # units take the explorer's saved choice, which is exact.
        for step in steps:
            if differ & set(step.params):
                for unit in step.units:
                    forced[unit] = "torch ranks their tied (or nearly tied) scores differently"
    else:
        raise SnippetError(
            f"the snippet does not reproduce the masks of {sorted(differ)[:3]}, "
            "even from saved masks"
        )
    code, functions = _render(steps, fallback, saved, user, state, subject, masks_name)
    if saved is not None:
        masks = {".".join(user(name)).lstrip("."): mask for name, mask in saved["masks"].items()}
        saved = {"kept": saved["kept"], "masks": masks}
    return Snippet(code, saved, masks_name, dict(fallback), tuple(functions))
