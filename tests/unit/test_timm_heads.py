"""Attention heads of a timm ViT come out physically: timm's Attention joins its heads into
``attn_dim``, which the compacted module must shrink with them. Oracle: the masked model."""

from __future__ import annotations

import pytest
import torch

from explorer.engine.compaction import compact
from explorer.engine.inspection import model_flops
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner

timm = pytest.importorskip("timm")


def test_timm_vit_heads_compact_to_the_masked_model():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2
    ).eval()
    with torch.no_grad():  # timm zero-initialises the head: give the logits something to say
        model.head.weight.normal_(std=0.02)
    shape = (3, 32, 32)
    pruner = Pruner(model, shape)
    state = pruner.resolve(PruningPlan(method="heads", amount=0.34))
    assert sum(state.pruned.values()) > 0
    small = compact(pruner, state)
    kept = {m.num_heads for m in small.modules() if hasattr(m, "attn_dim")}
    assert kept and max(kept) < 3  # vit_tiny has 3 heads a block
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = pruner.pruned_model(state)(x)
        torch.testing.assert_close(small(x), expected, atol=1e-5, rtol=1e-4)
    assert model_flops(small, shape) < model_flops(model, shape)
