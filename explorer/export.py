"""What leaves the tool: the pruned model's weights in the forms people load them.

``zeros`` loads into the original class; ``torch_prune`` carries ``*_orig`` / ``*_mask`` pairs as
``torch.nn.utils.prune`` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from explorer.plan import PruningPlan
from explorer.pruning import Pruner


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
    return exporters[style](plan).state_dict()
