"""torchvision weights files as users save them load back to the very same model.

Oracle: the model the file was saved from. MNASNet reads its version from the state_dict's
``_metadata`` (torch.save keeps it, safetensors cannot); GoogLeNet and Inception v3 are often
saved without their training-only auxiliary heads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from explorer.engine.subject import ModelSource
from explorer.loading.errors import LoadError
from explorer.loading.models import load_model

LOCAL = Path  # file references are local paths here


def built(arch: str, **args) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None, num_classes=10, **args).eval()


def same_logits(loaded: torch.nn.Module, original: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_mnasnet_state_dict_loads_with_or_without_its_metadata(tmp_path, suffix):
    original = built("mnasnet0_5")
    path = tmp_path / f"mnasnet{suffix}"
    if suffix == ".pt":
        torch.save(original.state_dict(), path)
    else:
        save_file(original.state_dict(), path)
    loaded = load_model(ModelSource("torchvision", "mnasnet0_5"), path, resolve=LOCAL)
    same_logits(loaded.model, original, 32)


@pytest.mark.parametrize("arch, size", [("googlenet", 64), ("inception_v3", 80)])
def test_weights_saved_without_aux_heads_build_the_model_without_them(tmp_path, arch, size):
    original = built(arch, aux_logits=False, init_weights=True)
    path = tmp_path / "weights.pt"
    torch.save(original.state_dict(), path)
    loaded = load_model(ModelSource("torchvision", arch), path, resolve=LOCAL)
    assert any("aux_logits=False" in note for note in loaded.notes)
    same_logits(loaded.model, original, size)
    # With the heads in the file, they are loaded as they are.
    with_aux = built(arch, init_weights=True)
    torch.save(with_aux.state_dict(), path)
    loaded = load_model(ModelSource("torchvision", arch), path, resolve=LOCAL)
    assert not any("aux_logits" in note for note in loaded.notes)
    same_logits(loaded.model, with_aux, size)


def test_explicit_aux_heads_against_a_file_without_them_say_what_is_missing(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(built("googlenet", aux_logits=False, init_weights=True).state_dict(), path)
    source = ModelSource("torchvision", "googlenet", '{"aux_logits": true}')
    with pytest.raises(LoadError, match="missing aux1"):
        load_model(source, path, resolve=LOCAL)
