"""The sample-model zoo: architectures, committed weights and the accuracy their cards claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import explorer.zoo.models as models
from explorer.engine.evaluation import evaluate
from explorer.engine.inspection import model_flops
from explorer.zoo.models import (
    ZOO,
    Attention,
    get_spec,
    lenet5,
    lenet_300_100,
    list_models,
    load_card,
    load_model,
    resnet_mini,
    vit_tiny,
    weights_path,
)
from tests.unit.conftest import INPUT_SHAPE, require_trained, seeded

#: The issue's accuracy goals on the held-out eval split.
GOALS = {"lenet300": 0.97, "lenet5": 0.98, "resnet_mini": 0.985, "vit_tiny": 0.95}

#: Parameter counts by hand.
PARAMS = {
    "lenet300": (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10),
    "lenet5": (6 * 25 + 6)
    + (16 * 6 * 25 + 16)
    + (400 * 120 + 120)
    + (120 * 84 + 84)
    + (84 * 10 + 10),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_zoo_has_the_four_sample_models():
    assert list(ZOO) == ["lenet300", "lenet5", "resnet_mini", "vit_tiny"]
    assert [card["name"] for card in list_models()] == list(ZOO)


@pytest.mark.parametrize("name", list(ZOO))
def test_architectures_map_a_batch_of_images_to_ten_logits(name):
    model = seeded(get_spec(name).build)
    with torch.no_grad():
        out = model(torch.randn(3, *INPUT_SHAPE))
    assert out.shape == (3, 10)
    assert isinstance(model, nn.Sequential) and len(model) > 1  # resumable stages


def test_parameter_counts_by_hand():
    assert n_params(lenet_300_100()) == PARAMS["lenet300"] == 266_610
    assert n_params(lenet5()) == PARAMS["lenet5"]
    for name, expected in PARAMS.items():
        card = load_card(name)
        assert card["params"] == expected
        assert card["flops"] == model_flops(get_spec(name).build(), INPUT_SHAPE)


def test_resnet_and_vit_sizes():
    assert resnet_mini().fc.in_features == 64
    vit = vit_tiny()
    assert [vit.get_submodule(f"block{i}.attn").num_heads for i in (1, 2, 3)] == [4, 4, 4]
    assert vit.embed.pos_embed.shape == (1, 17, 64)  # 16 patches of 7x7 plus [CLS]


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    attn = Attention(64, 4).eval()
    reference = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attn.qkv.weight)
        reference.in_proj_bias.copy_(attn.qkv.bias)
        reference.out_proj.weight.copy_(attn.proj.weight)
        reference.out_proj.bias.copy_(attn.proj.bias)
        x = torch.randn(2, 17, 64)
        expected, _ = reference(x, x, x, need_weights=False)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)


def test_unknown_names_and_kinds_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'alexnet'.*'lenet300'.*'vit_tiny'"):
        get_spec("alexnet")
    with pytest.raises(ValueError, match=r"unknown model 'alexnet'"):
        load_model("alexnet")
    with pytest.raises(ValueError, match=r"unknown weights 'best'.*'trained', 'init'"):
        weights_path("lenet5", "best")


def test_missing_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ZOO_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sample_models/train\.py"):
        load_model("lenet5")
    card = load_card("lenet5")  # no card yet: the spec's title and summary
    assert card == {
        "name": "lenet5",
        "title": ZOO["lenet5"].title,
        "summary": ZOO["lenet5"].summary,
    }


@pytest.mark.parametrize("name", list(ZOO))
def test_init_weights_load_and_differ_from_the_trained_ones(name):
    require_trained(name)
    init, trained = load_model(name, "init"), load_model(name)
    assert not init.training and not trained.training
    first = next(p for p in init.state_dict() if p.endswith("weight"))
    assert not torch.equal(init.state_dict()[first], trained.state_dict()[first])


@pytest.mark.parametrize("name", list(ZOO))
def test_trained_weights_reproduce_the_card_and_meet_the_goal(name, eval_set):
    require_trained(name)
    card = load_card(name)
    result = evaluate(load_model(name), eval_set)
    assert card["eval_samples"] == len(eval_set)
    assert result.accuracy == pytest.approx(card["eval_accuracy"], abs=1e-4)
    assert result.accuracy >= GOALS[name]
    assert card["eval_accuracy"] >= GOALS[name]
