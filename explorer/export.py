"""What leaves the tool: the pruned model's weights in the forms people load them, and the
compacted model as a ``torch.export`` program.

``zeros`` loads into the original class; ``torch_prune`` carries ``*_orig`` / ``*_mask`` pairs as
``torch.nn.utils.prune`` writes them; a program needs neither the class nor unpickling.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from explorer.inspection import example_input
from explorer.plan import PruningPlan
from explorer.pruning import Pruner
from explorer.structure import source_names


class ExportError(ValueError):
    """``torch.export`` cannot capture a model; the message is one line for the user."""


def masked_state_dict(
    pruner: Pruner, plan: PruningPlan, style: str = "zeros"
) -> dict[str, torch.Tensor]:
    """The pruned model's state_dict: ``"zeros"`` (loads into the plain architecture) or
    ``"torch_prune"`` (``*_orig`` / ``*_mask`` pairs as ``torch.nn.utils.prune`` writes them)."""
    exporters: Mapping[str, object] = {
        "zeros": pruner.pruned_model,
        "torch_prune": pruner.torch_pruned_model,
    }
    if style not in exporters:
        raise ValueError(f"unknown export style {style!r}; choose one of {sorted(exporters)}")
    state = exporters[style](plan).state_dict()
    # Keys the loader renamed (an unpacked nn.MultiheadAttention) go back to the user's names;
    # torch.nn.utils.prune's pairs follow their parameter (``in_proj.weight_orig`` ->
    # ``in_proj_weight_orig``).
    renamed = source_names(pruner.model)
    return {_source_key(key, renamed): value for key, value in state.items()}


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
