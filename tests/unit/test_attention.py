"""Attention maps against oracles: the module's own output, nn.MultiheadAttention's weights,
rollout by hand; and the side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.inside.saliency.attention import (
    AttentionMaps,
    attention_maps,
    attention_rollout,
    compare_attention,
    head_maps,
    removed_heads,
)
from explorer.plots.attention import attention_heads_figure
from tests.unit.conftest import assert_unchanged, hooks_of, require_trained, snapshot


@pytest.fixture(scope="module")
def vit():
    require_trained("vit_tiny")
    return open_workbench("vit_tiny", torch.device("cpu"))


def test_weights_reproduce_the_modules_output(vit, eval_set):
    x = eval_set.images[:1]
    before = snapshot(vit.model)
    maps = attention_maps(vit.model, x)
    assert maps.modules == ("block1.attn", "block2.attn", "block3.attn")
    # the oracle: the module's own output for the input it saw, hooked here by hand
    seen = {}
    attn = vit.model.get_submodule("block2.attn")
    handle = attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    try:
        with torch.no_grad():
            vit.model(x)
    finally:
        handle.remove()
    weights = torch.from_numpy(maps.weights["block2.attn"]).float()  # (heads, T, T)
    assert weights.shape == (4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 17), rtol=0, atol=1e-5)
    with torch.no_grad():
        qkv = attn.qkv(seen["inp"])[0].reshape(17, 3, attn.num_heads, attn.head_dim)
        v = qkv[:, 2].transpose(0, 1)  # (heads, T, d)
        mixed = (weights @ v).transpose(0, 1).reshape(17, -1)
        torch.testing.assert_close(attn.proj(mixed), seen["out"][0], rtol=1e-4, atol=1e-5)
    assert_unchanged(vit.model, before)
    assert hooks_of(vit.model) == []


def test_nn_multihead_attention_weights_match_its_own(eval_set):
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.embed(x.reshape(len(x), 4, 4))
            out, _ = self.mha(tokens, tokens, tokens)
            return self.head(out.mean(1))

    model = Tiny().eval()
    x = torch.randn(1, 1, 4, 4)
    maps = attention_maps(model, x)
    tokens = model.embed(x.reshape(1, 4, 4))
    _, expected = model.mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(maps.weights["mha"], expected[0].detach().double(), atol=1e-6)
    assert hooks_of(model) == []


def test_rollout_by_hand():
    eye = np.eye(3)[None].repeat(2, 0)
    identity = AttentionMaps(("a",), {"a": eye}, {"a": np.zeros(2, dtype=bool)})
    np.testing.assert_allclose(attention_rollout(identity), np.eye(3))
    rng = np.random.default_rng(0)
    raw = rng.random((2, 3, 3, 3))
    weights = raw / raw.sum(-1, keepdims=True)  # two modules, three heads, three tokens
    removed = {"a": np.array([False, True, False]), "b": np.array([True, True, True])}
    maps = AttentionMaps(("a", "b"), {"a": weights[0], "b": weights[1]}, removed)
    # by hand: module a averages heads 0 and 2, adds the residual, renormalises; module b
    # has no head left, so only its residual (the identity) remains
    a = (weights[0][[0, 2]].mean(0) + np.eye(3)) / 2
    np.testing.assert_allclose(attention_rollout(maps), a)
    np.testing.assert_allclose(attention_rollout(maps).sum(-1), np.ones(3))


def test_a_heads_plan_marks_exactly_its_removed_heads(vit, eval_set):
    state = vit.resolve(PruningPlan(method="heads", amount=0.5))
    pruned = vit.pruner.pruned_model(state)
    removed = removed_heads(state.keeps, vit.model)
    assert sum(int(r.sum()) for r in removed.values()) == 6
    for name, flags in removed.items():
        expected = ~state.keeps[name].bool().numpy() if name in state.keeps else np.zeros(4, bool)
        np.testing.assert_array_equal(flags, expected)
    comparison = compare_attention(vit.model, pruned, eval_set.images[:1], removed)
    assert comparison.dense.shape == comparison.pruned.shape == (4, 4)
    # like with like: each rollout map as a share of its own total, not of its own maximum
    shares = comparison.pruned / comparison.pruned.sum() - comparison.dense / comparison.dense.sum()
    np.testing.assert_allclose(comparison.difference, shares)
    assert comparison.difference.sum() == pytest.approx(0.0, abs=1e-12)
    # a removed head attends uniformly: its q and k rows are zero
    module = next(m for m, flags in removed.items() if flags.any())
    head = int(np.flatnonzero(removed[module])[0])
    np.testing.assert_allclose(comparison.pruned_maps.weights[module][head], 1 / 17)
    same = compare_attention(vit.model, vit.model, eval_set.images[:1], {})
    assert same.rank_correlation == pytest.approx(1.0)
    attention_heads_figure(
        head_maps(comparison.dense_maps, module, comparison.layout),
        head_maps(comparison.pruned_maps, module, comparison.layout),
        removed[module],
        module,
    )
    assert hooks_of(vit.model) == [] and hooks_of(pruned) == []


def test_a_model_without_attention_is_refused_with_a_reason():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="no attention module"):
        attention_maps(model, torch.zeros(1, 1, 4, 4))
