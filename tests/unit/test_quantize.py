"""int8 variant of a pruned model: weight-only int8 with per-channel scales, measured honestly.

Tolerances, measured on the bundled models (5,000 eval images, unstructured 50% / filters 20%):
int8 vs pruned fp32 accuracy moved by at most 0.12 points (lenet300, lenet5, resnet_mini) and
0.22 points (vit_tiny, unstructured 70%); the largest logit difference was 0.8% of the largest
logit for the lenet/resnet models (3% for vit_tiny, whose logits are small), and at most 3.5%
of a sample's own largest logit.
"""

from __future__ import annotations

import warnings
from functools import cache

import pytest
import torch
from torch import nn

from explorer.engine.evaluation import predict
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import Workbench, open_workbench
from explorer.keep.export import FORMATS, export, load_export
from explorer.keep.quantize import (
    QMAX,
    Int8Conv2d,
    Int8Linear,
    cpu_state_dict,
    dequantize_weight,
    int8_report,
    load_int8,
    pruned_fp32,
    quantize_int8,
    quantize_weight,
    save_int8,
    saved_bytes,
)
from tests.unit.conftest import assert_unchanged, require_trained, snapshot

#: int8 accuracy on the eval split is within this of the pruned fp32 model's (half a point).
ACCURACY_TOLERANCE = 0.005
#: ... and at most this share of the eval predictions flips.
FLIP_TOLERANCE = 0.005
#: Largest |int8 logit - fp32 logit| over the eval images, as a share of the largest |logit|.
LOGIT_TOLERANCE = 0.02
#: Bytes of torch.save bookkeeping per quantized layer (one more tensor: qweight and scale
#: replace weight; measured 236 to 287 bytes).
ENTRY_OVERHEAD = 512

UNSTRUCTURED = PruningPlan(method="unstructured", amount=0.5)
FILTERS = PruningPlan(method="filters", amount=0.2)


@cache
def bench(name: str) -> Workbench:
    require_trained(name)
    return open_workbench(name, torch.device("cpu"))


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


# --- the int8 codes -----------------------------------------------------------------------------


def test_quantize_weight_by_hand():
    weight = torch.tensor([[0.0, 1.27, -0.635, 0.004], [0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 0]])
    codes, scale = quantize_weight(weight)
    assert codes.dtype == torch.int8
    # Row 0: max |w| = 1.27 -> scale 0.01; row 1 is all zero -> scale 1, codes 0.
    torch.testing.assert_close(scale, torch.tensor([0.01, 1.0, 2.0 / QMAX]))
    assert codes[0].tolist() == [0, 127, -64, 0]  # -63.5 rounds to even (-64); 0.4 -> 0
    assert codes[1].tolist() == [0, 0, 0, 0]
    assert codes[2].tolist() == [127, -64, 32, 0]  # -63.5 -> -64, 31.75 -> 32
    restored = dequantize_weight(codes, scale)
    assert (restored[weight == 0] == 0).all()
    assert ((restored - weight).abs() <= scale[:, None] / 2 + 1e-7).all()


def test_int8_layers_compute_what_the_dequantized_fp32_layers_compute():
    torch.manual_seed(0)
    linear, conv = nn.Linear(20, 7), nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    x, images = torch.randn(4, 20), torch.randn(2, 3, 9, 9)
    q_linear, q_conv = Int8Linear(linear), Int8Conv2d(conv)
    with torch.no_grad():
        linear.weight.copy_(q_linear.weight)
        conv.weight.copy_(q_conv.weight)
        torch.testing.assert_close(q_linear(x), linear(x))
        torch.testing.assert_close(q_conv(images), conv(images))
        channels_last = images.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(q_conv(channels_last), conv(images))
    assert q_linear.qweight.dtype == q_conv.qweight.dtype == torch.int8


# --- bundled models: accuracy, logits, zeros, sizes, nothing modified ---------------------------


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet_mini"])
@pytest.mark.parametrize("plan", [UNSTRUCTURED, FILTERS], ids=["unstructured", "filters"])
def test_int8_accuracy_and_logits_stay_close_to_fp32(name, plan):
    workbench = bench(name)
    dense_before = snapshot(workbench.model)
    report = int8_report(workbench, plan, latency=False)
    assert report.form == ("compacted" if plan.method == "filters" else "masked")
    assert abs(report.int8_accuracy - report.fp32_accuracy) <= ACCURACY_TOLERANCE
    assert report.changed <= FLIP_TOLERANCE * report.eval_samples
    assert report.eval_samples == len(workbench.eval_set)
    # The int8 file is strictly smaller than the pruned fp32 one, which is no bigger than dense.
    assert report.int8_bytes < report.fp32_bytes <= report.dense_bytes
    assert report.combined_reduction == report.dense_bytes / report.int8_bytes
    assert report.combined_reduction > 3.5
    if report.form == "masked":  # bitmap + values: unstructured zeros save bytes too
        assert report.int8_sparse_bytes < report.int8_bytes
        assert report.combined_sparse_reduction > report.combined_reduction
    else:
        assert report.int8_sparse_bytes is None and report.combined_reduction > 4.5
    assert report.layers_left_fp32 == []

    fp32, _ = pruned_fp32(workbench, plan)
    int8 = quantize_int8(fp32).model
    images = workbench.eval_set.images
    expected, got = predict(fp32, images), predict(int8, images)
    assert (got - expected).abs().max() <= LOGIT_TOLERANCE * expected.abs().max()
    assert_unchanged(workbench.model, dense_before)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_quantized_weights_are_about_4x_smaller_by_a_hand_computed_oracle(name):
    model = bench(name).model
    # Each Linear / Conv2d weight of W entries and C output channels: 4W bytes become W int8
    # bytes plus C fp32 scales; everything else is saved as it was.
    layers = weight_layers(model)
    weights = sum(m.weight.numel() for _, m in layers)
    channels = sum(m.weight.shape[0] for _, m in layers)
    quantized = quantize_int8(model)
    assert quantized.quantized_weights == weights
    fp32_bytes = saved_bytes(cpu_state_dict(model))
    int8_bytes = saved_bytes(cpu_state_dict(quantized.model))
    oracle = 3 * weights - 4 * channels
    assert abs((fp32_bytes - int8_bytes) - oracle) <= ENTRY_OVERHEAD * len(layers)
    assert 3.9 < (4 * weights) / (weights + 4 * channels) < 4.0
    assert fp32_bytes / int8_bytes > 3.6


def test_pruned_zeros_stay_zero_after_quantization():
    workbench = bench("lenet5")
    fp32, form = pruned_fp32(workbench, PruningPlan(method="unstructured", amount=0.8))
    assert form == "masked"
    quantized = quantize_int8(fp32)
    modules = dict(quantized.model.named_modules())
    for name, layer in weight_layers(fp32):
        pruned = layer.weight == 0
        assert pruned.float().mean() > 0.3, name  # the plan really zeroed weights here
        int8 = modules[name]
        assert (int8.qweight[pruned] == 0).all(), name
        assert (int8.weight[pruned] == 0).all(), name  # exactly 0.0 after dequantizing


def test_batchnorm_is_folded_and_pruned_zeros_survive_it():
    workbench = bench("resnet_mini")
    fp32, _ = pruned_fp32(workbench, PruningPlan(method="unstructured", amount=0.6))
    quantized = quantize_int8(fp32)
    norms = [n for n, m in fp32.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(quantized.folded) == sorted(norms) and len(norms) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in quantized.model.modules())
    assert quantized.left_fp32 == ()
    modules = dict(quantized.model.named_modules())
    for name, layer in weight_layers(fp32):
        assert isinstance(modules[name], Int8Conv2d | Int8Linear), name
        assert (modules[name].weight[layer.weight == 0] == 0).all(), name


def test_quantizing_never_modifies_the_model_given():
    model = bench("resnet_mini").model  # BatchNorm folding works on a copy
    before = snapshot(model)
    quantize_int8(model)
    assert_unchanged(model, before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# --- layers left fp32, by name, with the reason -------------------------------------------------


def test_vit_layers_left_fp32_are_named_with_their_reason():
    quantized = quantize_int8(bench("vit_tiny").model)
    left = {layer.name: layer for layer in quantized.left_fp32}
    norms = [f"block{i}.norm{j}" for i in (1, 2, 3) for j in (1, 2)] + ["head.norm"]
    assert set(left) == {"embed", *norms}
    assert left["embed"].kind == "PatchEmbed"
    assert "cls_token, pos_embed" in left["embed"].reason
    assert left["embed"].params == 64 + 17 * 64
    assert all(left[n].kind == "LayerNorm" and "normalisation" in left[n].reason for n in norms)
    assert {q.name for q in quantized.quantized} >= {"embed.proj", "block1.attn.qkv", "head.fc"}


class Mixed(nn.Module):
    """Layers weight-only int8 does not cover, next to ones it does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.reflect = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.BatchNorm1d(8)  # after an attention: nothing to fold it into
        self.fc = nn.Linear(8, 8)
        self.tied = nn.Linear(8, 10, bias=False)
        self.tied.weight = self.embed.weight
        self.plain = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        x = self.attention(x, x, x, need_weights=False)[0]
        x = self.fc(self.norm(x.transpose(1, 2)).transpose(1, 2))
        image = self.reflect(x[:, None, :, :]).mean(1)
        return self.plain(image).mean(1) + self.tied(x).mean(1)[:, :3]


def test_layers_that_cannot_be_quantized_say_why():
    torch.manual_seed(0)
    model = Mixed().eval()
    tokens = torch.randint(0, 10, (2, 5))
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_int8(model)
    assert {q.name for q in quantized.quantized} == {"fc", "plain"}
    reasons = {layer.name: layer.reason for layer in quantized.left_fp32}
    left = {"embed", "conv1d", "reflect", "attention", "attention.out_proj", "norm", "tied"}
    assert set(reasons) == left
    assert "shared with tied" in reasons["embed"] and "shared with embed" in reasons["tied"]
    assert "Conv1d" in reasons["conv1d"]
    assert "padding_mode='reflect'" in reasons["reflect"]
    assert "fused function" in reasons["attention"]
    assert "reads its weight directly" in reasons["attention.out_proj"]
    assert "could not be folded" in reasons["norm"]
    with torch.no_grad():
        torch.testing.assert_close(quantized.model(tokens), model(tokens), atol=0.02, rtol=0.02)
    assert_unchanged(model, before)


# --- files --------------------------------------------------------------------------------------


def test_save_and_load_int8_round_trip(tmp_path):
    workbench = bench("lenet5")
    fp32, _ = pruned_fp32(workbench, FILTERS)
    quantized = quantize_int8(fp32)
    path = tmp_path / "lenet5-int8.pt"
    written = save_int8(quantized, path)
    assert written == path.stat().st_size
    # The reported size is torch.save's bytes in memory; a file's record names in the zip
    # archive carry its name (here 4 letters longer than torch's "archive"): a few bytes each.
    assert abs(written - saved_bytes(cpu_state_dict(quantized.model))) < 0.01 * written
    state = torch.load(path, weights_only=True)
    assert state["fc1.qweight"].dtype == torch.int8 and state["fc1.scale"].dtype == torch.float32
    images = workbench.eval_set.images[:64]
    torch.testing.assert_close(
        predict(load_int8(path, fp32), images), predict(quantized.model, images)
    )


def test_int8_export_format_writes_a_program_with_int8_weights(tmp_path):
    workbench = bench("lenet5")
    assert "int8" in FORMATS  # registered by explorer.keep.quantize
    result = export(workbench, FILTERS, "int8", tmp_path / "m.pt2")
    fp32_program = export(workbench, FILTERS, "pt2", tmp_path / "f.pt2")
    assert result.compacted and not result.masked
    assert "layers left fp32: none" in result.note
    assert result.bytes < fp32_program.bytes
    program = load_export("int8", result.path)
    images = workbench.eval_set.images[:64]
    fp32, _ = pruned_fp32(workbench, FILTERS)
    expected = predict(quantize_int8(fp32).model, images)
    with torch.no_grad():
        torch.testing.assert_close(program(images), expected)
        torch.testing.assert_close(program(images[:3]), expected[:3])  # any batch size


# --- latency: measured side by side, reported as measured ---------------------------------------


def test_latency_is_timed_side_by_side_with_dense_and_pruned_fp32():
    workbench = bench("lenet300")
    before = snapshot(workbench.model)
    report = int8_report(workbench, FILTERS, batch_sizes=(1, 8), repeats=5)
    rows = {(row["model"], row["batch"]): row for row in report.latency}
    assert set(rows) == {(m, b) for m in ("dense", "compacted", "int8") for b in (1, 8)}
    assert all(row["repeats"] == 5 and len(row["samples_ms"]) == 5 for row in rows.values())
    speed = {(row["against"], row["batch"]): row for row in report.speed}
    assert set(speed) == {(m, b) for m in ("dense", "compacted") for b in (1, 8)}
    assert all(row["summary"] for row in speed.values())
    data = report.to_dict()
    assert data["combined_reduction"] == report.combined_reduction
    assert [layer["name"] for layer in data["quantized_layers"]] == ["fc1", "fc2", "fc3"]
    assert_unchanged(workbench.model, before)


def test_a_layer_reachable_under_two_names_is_quantized_once():
    torch.manual_seed(0)
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    quantized = quantize_int8(model)
    assert [q.name for q in quantized.quantized] == ["0"] and quantized.left_fp32 == ()
    assert quantized.model[0] is quantized.model[2] and isinstance(quantized.model[2], Int8Linear)
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(quantized.model(x), model(x), atol=0.01, rtol=0.01)
