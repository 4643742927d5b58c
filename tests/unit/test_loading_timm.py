"""timm models as a model source (``timm:NAME``): built with ``pretrained=False``, the class
count read from a weights file, the weights applied exactly (the original model is the oracle),
every way to fetch weights refused, and a timm subject through a workbench on MNIST."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from explorer.engine.subject import DataSpec, ModelSource, Subject
from explorer.loading.errors import LoadError
from explorer.loading.models import load_model
from tests.unit.conftest import seeded

timm = pytest.importorskip("timm")

#: Sources name plain paths in these tests.
LOCAL = Path
#: A small ViT: its classifier is ``head`` (not ``fc``), its input size follows ``img_size``.
VIT_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def source(text: str, **args) -> ModelSource:
    return ModelSource.parse(text, args or None)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Any download or connection fails the test; the caches are empty folders to check."""
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download or connect")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    home = tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def resnet18_10() -> torch.nn.Module:
    """The oracle: timm's ResNet-18 with 10 classes and a fixed random init."""
    return seeded(lambda: timm.create_model("resnet18", num_classes=10), seed=2)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory, resnet18_10) -> Path:
    path = tmp_path_factory.mktemp("timm") / "resnet18_10.pt"
    torch.save(resnet18_10.state_dict(), path)
    return path


def test_a_timm_source_parses_prints_back_and_takes_arguments():
    parsed = ModelSource.parse("timm:resnet18", {"num_classes": 10})
    assert (parsed.kind, parsed.ref, parsed.constructor_args) == (
        "timm",
        "resnet18",
        {"num_classes": 10},
    )
    assert str(parsed) == "timm:resnet18"
    assert ModelSource.parse(str(parsed), parsed.args) == parsed
    assert not parsed.runs_user_code and parsed.file is None
    subject = Subject(parsed)
    assert Subject.from_dict(subject.to_dict()) == subject


def test_a_timm_model_without_weights_is_random_and_says_so(no_network):
    loaded = load_model(source("timm:resnet18", num_classes=10), resolve=LOCAL)
    assert outputs(loaded.model, torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert loaded.num_classes == 10 and loaded.input_shape == (3, 224, 224)
    assert loaded.preprocessing == {
        "size": (224, 224),
        "channels": 3,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    assert any(
        "Random initialisation" in note and "timm:resnet18, 10 classes" in note
        for note in loaded.notes
    )
    assert list(no_network.iterdir()) == []  # nothing cached, nothing downloaded


def test_a_weights_file_gives_the_class_count_and_the_original_logits(
    resnet18_10, resnet18_weights, no_network
):
    loaded = load_model(source("timm:resnet18"), resnet18_weights, resolve=LOCAL)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(outputs(loaded.model, x), outputs(resnet18_10, x))
    assert loaded.num_classes == 10 and loaded.notes == ()
    assert loaded.weights is not None and loaded.weights.startswith("sha256:")
    with pytest.raises(LoadError, match=r"num_classes=5 but fc.weight .* has 10 rows"):
        load_model(source("timm:resnet18", num_classes=5), resnet18_weights, resolve=LOCAL)


def test_a_vits_head_gives_the_class_count_and_img_size_the_input(tmp_path, no_network):
    original = seeded(lambda: timm.create_model("vit_tiny_patch16_224", num_classes=3, **VIT_ARGS))
    weights = tmp_path / "vit.pt"
    torch.save(original.state_dict(), weights)
    loaded = load_model(source("timm:vit_tiny_patch16_224", **VIT_ARGS), weights, resolve=LOCAL)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(outputs(loaded.model, x), outputs(original, x), atol=1e-5, rtol=0)
    assert loaded.num_classes == 3 and loaded.input_shape == (3, 32, 32)
    assert loaded.preprocessing["size"] == (32, 32)
    assert loaded.preprocessing["mean"] == (0.5, 0.5, 0.5)  # the ViT's own config, not ImageNet's


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ({"pretrained": True}, "timm weights are never downloaded here: give a weights file"),
        ({"pretrained_cfg_overlay": {"file": "/tmp/x.pth"}}, "names file: timm weights are never"),
        ({"pretrained_cfg_overlay": {"url": "https://x/y.pth"}}, "names url: timm weights are"),
        ({"pretrained_cfg": {"hf_hub_id": "timm/resnet18"}}, "names hf_hub_id"),
        ({"checkpoint_path": "/tmp/x.pth"}, "checkpoint_path.*--weights"),
        ({"not_an_argument": 1}, "does not take the arguments"),
    ],
)
def test_arguments_that_fetch_weights_or_do_not_fit_are_refused(args, says, no_network):
    with pytest.raises(LoadError, match=says):
        load_model(source("timm:resnet18", **args), resolve=LOCAL)
    assert list(no_network.iterdir()) == []


def test_an_unknown_or_remote_timm_name_is_refused_with_close_matches():
    with pytest.raises(LoadError, match=r"no model 'resnet19'\. Did you mean .*resnet18"):
        load_model(source("timm:resnet19"), resolve=LOCAL)
    with pytest.raises(LoadError, match=r"timm has no model 'not_a_model'.*list_models"):
        load_model(source("timm:not_a_model"), resolve=LOCAL)
    with pytest.raises(LoadError, match="hub repository or a folder"):
        load_model(source("timm:hf-hub:timm/resnet18.a1_in1k"), resolve=LOCAL)


def test_weights_of_another_architecture_say_what_does_not_fit(tmp_path, no_network):
    weights = tmp_path / "vit.pt"
    torch.save(
        timm.create_model("vit_tiny_patch16_224", num_classes=3, **VIT_ARGS).state_dict(), weights
    )
    with pytest.raises(LoadError, match=r"vit.pt does not fit the model: missing conv1.weight"):
        load_model(source("timm:resnet18"), weights, resolve=LOCAL)


def test_without_timm_installed_the_loader_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(LoadError, match=r"timm is an optional extra: pip install -e '\.\[timm\]'"):
        load_model(source("timm:resnet18"), resolve=LOCAL)


def test_a_timm_subject_opens_as_a_workbench_on_mnist(tmp_path, monkeypatch):
    """Grey 28 px digits as 3×32×32 inputs; the dense accuracy is the original model's on the
    workbench's eval images (a small ViT: ResNet-18 on 5,000 images takes too long here)."""
    from explorer.engine.workbench import open_workbench
    from explorer.loading.store import default_store

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    original = seeded(lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT_ARGS))
    weights = tmp_path / "vit.pt"
    torch.save(original.state_dict(), weights)
    subject = Subject(
        ModelSource.parse("timm:vit_tiny_patch16_224", VIT_ARGS),
        default_store().register(weights),
        DataSpec("mnist", size=32, channels=3),
    )
    bench = open_workbench(subject, torch.device("cpu"))
    assert bench.eval_set.input_shape == (3, 32, 32) and len(bench.eval_set) == 5000
    accuracy = bench.dense.accuracy
    with torch.inference_mode():  # the oracle: the original model on the same eval images
        predicted = torch.cat([original(x).argmax(1) for x in bench.eval_set.images.split(1000)])
    assert accuracy == pytest.approx((predicted == bench.eval_set.labels).float().mean().item())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["timm:not_a_model"], "error: timm has no model 'not_a_model'"),
        (["timm:resnet18", "--model-args", '{"pretrained": true}'], "never downloaded"),
        (["timm:resnet18", "--weights", "{vit}"], "vit.pt does not fit the model: missing"),
    ],
)
def test_cli_mistakes_are_one_error_line_and_exit_code_2(
    capsys, tmp_path, monkeypatch, argv, message
):
    from explorer.cli.main import main

    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    vit = tmp_path / "vit.pt"
    torch.save(
        timm.create_model("vit_tiny_patch16_224", num_classes=10, **VIT_ARGS).state_dict(), vit
    )
    argv = [str(vit) if arg == "{vit}" else arg for arg in argv]
    code = main(["info", *argv, "--data", "mnist", "--channels", "3", "--size", "32"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
