"""Variants: fine-tuned weights saved as new weights of the same subject, with a record."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.structure import unpack_multihead_attention
from explorer.engine.subject import DataSpec, ModelSource, Subject, file_digest
from explorer.engine.workbench import open_workbench
from explorer.loading.models import load_weights
from explorer.loading.store import HOME_ENV, default_store, home
from explorer.recovery.training import Recipe, fine_tune
from explorer.recovery.variants import (
    Variant,
    VariantNotFound,
    check_name,
    get_variant,
    list_variants,
    save_variant,
    variants_dir,
    weights_bytes,
)
from explorer.zoo.models import load_model
from tests.unit.conftest import INPUT_SHAPE, require_trained

PLAN = PruningPlan(amount=0.7)
RECIPE = Recipe(steps=3, batch_size=32)


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def tuned(request) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lenet5, the masks of a 70% plan, and weights fine-tuned under them (a few steps)."""
    require_trained("lenet5")
    from explorer.zoo.mnist import load_mnist

    model = load_model("lenet5")
    state = Pruner(model, INPUT_SHAPE).resolve(PLAN)
    result = fine_tune(model, state.masks, load_mnist("fit").subset(range(256)), RECIPE)
    return model, state.masks, result.state_dict


def perturbed(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Other weights of the same shapes (another "fine-tune")."""
    return {k: v * scale if v.is_floating_point() else v for k, v in state.items()}


def test_saved_weights_load_back_as_the_subjects_weights(tuned, eval_images):
    _, masks, state = tuned
    parent = Subject.bundled("lenet5")
    metrics = {"pruned_accuracy": 0.9, "finetuned_accuracy": 0.98}
    subject, variant = save_variant(parent, state, "lenet5 70% tuned", PLAN, RECIPE, metrics)
    assert subject == parent.with_weights(variant.weights) == variant.subject
    assert subject.model == parent.model and subject.data == parent.data
    assert variant.store_ref == f"store:{variant.digest}.pt"
    # the store file is the weights, byte for byte, and the loaders read it as --weights
    path = default_store().path(subject.weights)
    assert file_digest(path) == subject.weights
    loaded = load_weights(path)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # the subject opens through the ordinary path and gives identical outputs
    bench = open_workbench(subject, torch.device("cpu"))
    expected = load_model("lenet5")  # the zoo architecture, given the weights directly
    expected.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(bench.model(eval_images), expected.eval()(eval_images))
    # pruned weights are still exactly zero in what was saved
    for name, mask in masks.items():
        assert bool((loaded[name][mask == 0] == 0).all())
    # the record
    assert get_variant(subject.weights) == variant
    assert get_variant(variant.digest) == get_variant(variant.store_ref) == variant
    assert variant.pruning_plan == PLAN and variant.training_recipe == RECIPE
    assert variant.metrics == metrics and variant.available
    assert variant.parent_subject == parent


def test_list_variants_by_family(tuned):
    _, _, state = tuned
    lenet5 = Subject.bundled("lenet5")
    _, first = save_variant(lenet5, state, "first", PLAN, RECIPE, {})
    # a variant of the variant belongs to the same family
    _, second = save_variant(first.subject, perturbed(state, 0.5), "second", PLAN, RECIPE, {})
    own_data = Subject(ModelSource("zoo", "lenet5"), None, DataSpec(source="digits.npz"))
    _, other = save_variant(own_data, perturbed(state, 0.25), "first", PLAN, RECIPE, {})
    assert list_variants(lenet5) == [second, first]  # newest first
    assert list_variants(first.subject) == [second, first]
    assert list_variants("lenet5") == [second, first]
    assert list_variants(own_data) == [other]
    assert list_variants(Subject.bundled("lenet300")) == []
    assert {v.name for v in list_variants()} == {"first", "second"} and len(list_variants()) == 3


def test_names_are_unique_per_family(tuned):
    _, _, state = tuned
    save_variant("lenet5", state, "mine", PLAN, RECIPE, {})
    with pytest.raises(ValueError, match="a variant named 'mine' exists already"):
        save_variant("lenet5", perturbed(state, 0.5), "  mine ", PLAN, RECIPE, {})
    with pytest.raises(ValueError, match="saved already, as variant 'mine'"):
        save_variant("lenet5", state, "the same weights", PLAN, RECIPE, {})
    assert [v.name for v in list_variants("lenet5")] == ["mine"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "needs a name"), ("a\nb", "control characters"), ("x" * 101, "at most 100"), (3, "text")],
)
def test_bad_names_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        check_name(name)
    assert check_name("  ok  ") == "ok"


def test_a_corrupt_record_is_skipped_with_a_warning(tuned):
    _, _, state = tuned
    _, good = save_variant("lenet5", state, "good", PLAN, RECIPE, {})
    folder = variants_dir()
    (folder / ("a" * 64 + ".json")).write_text("{not json")
    (folder / ("b" * 64 + ".json")).write_bytes(b"\xff\xfe binary")
    misnamed = good.to_dict()
    (folder / ("c" * 64 + ".json")).write_text(json.dumps(misnamed))  # name != its weights
    (folder / ("d" * 64 + ".json")).write_text(json.dumps({**misnamed, "parent": 3}))
    with pytest.warns(UserWarning, match="skipped variant record") as caught:
        assert list_variants() == [good]
    assert len(caught) == 4
    with pytest.raises(ValueError, match="unreadable"):
        get_variant("a" * 64)


def test_records_are_written_whole(tuned):
    _, _, state = tuned
    _, variant = save_variant("lenet5", state, "whole", PLAN, RECIPE, {"accuracy": 0.5})
    files = sorted(p.name for p in variants_dir().iterdir())
    assert files == [f"{variant.digest}.json"]  # no temporary file left behind
    data = json.loads((variants_dir() / files[0]).read_text())
    assert Variant.from_dict(data) == variant
    assert variants_dir() == home() / "variants"


def test_get_variant_says_what_is_missing():
    with pytest.raises(VariantNotFound, match="no variant has the weights"):
        get_variant("sha256:" + "e" * 64)
    with pytest.raises(ValueError, match="named by their hash"):
        get_variant("sha256:xyz")


def test_an_evicted_weights_file_is_reported_unavailable(tuned):
    _, _, state = tuned
    _, variant = save_variant("lenet5", state, "gone", PLAN, RECIPE, {})
    default_store().path(variant.store_ref).unlink()
    assert not variant.available
    assert list_variants("lenet5") == [variant]  # the record stays readable


def test_weights_bytes_in_every_format_load_through_the_loaders(tmp_path, tuned):
    _, _, state = tuned
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        path.write_bytes(weights_bytes(state, suffix))
        loaded = load_weights(path)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="what --weights reads"):
        weights_bytes(state, ".txt")


def test_weights_bytes_gives_renamed_keys_their_original_names():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True))
    unpacked = unpack_multihead_attention(copy.deepcopy(original))  # in place otherwise
    assert "1.in_proj.weight" in unpacked.state_dict()
    state = torch.load(io.BytesIO(weights_bytes(unpacked.state_dict(), model=unpacked)))
    fresh = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True))
    fresh.load_state_dict(state)  # strict: every key has the user's own name
    assert torch.equal(fresh[1].in_proj_weight, original[1].in_proj_weight)
