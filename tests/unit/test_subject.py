"""Subjects: plain, hashable data that names a model source, weights and data."""

from __future__ import annotations

import hashlib

import pytest

from explorer.engine.subject import DataSpec, ModelSource, Subject, file_digest
from explorer.loading.store import Store


@pytest.mark.parametrize(
    ("text", "kind", "ref"),
    [
        ("lenet5", "zoo", "lenet5"),
        ("torchvision:resnet18", "torchvision", "resnet18"),
        ("models/net.py:SmallNet", "python", "models/net.py:SmallNet"),
        ("exported.pt2", "export", "exported.pt2"),
        ("model.ONNX", "onnx", "model.ONNX"),
        ("scripted.ts", "torchscript", "scripted.ts"),
        ("torchscript:scripted.pt", "torchscript", "scripted.pt"),
        ("pickle:whole.pt", "pickle", "whole.pt"),
        ("store:" + "a" * 64 + ".onnx", "onnx", "store:" + "a" * 64 + ".onnx"),
    ],
)
def test_model_sources_parse_and_print_back(text, kind, ref):
    source = ModelSource.parse(text)
    assert (source.kind, source.ref) == (kind, ref)
    assert ModelSource.parse(str(source)) == source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weights.pt", "--weights weights.pt"),
        ("dir/thing.xyz", "not a model source"),
        ("net.py:not-a-name", "path/to/model.py:ClassName"),
        ("  ", "needs a name"),
    ],
)
def test_unusable_model_sources_say_what_to_give(text, message):
    with pytest.raises(ValueError, match=message):
        ModelSource.parse(text)


def test_model_arguments_are_canonical_and_only_where_they_apply():
    a = ModelSource.parse("torchvision:resnet18", {"num_classes": 10, "dropout": 0.1})
    b = ModelSource.parse("torchvision:resnet18", '{"dropout": 0.1, "num_classes": 10}')
    assert a == b and a.constructor_args == {"num_classes": 10, "dropout": 0.1}
    with pytest.raises(ValueError, match="takes no constructor arguments"):
        ModelSource.parse("lenet5", {"num_classes": 10})
    with pytest.raises(ValueError, match="must be JSON"):
        ModelSource.parse("net.py:Net", "{num_classes: 10}")


def test_a_subject_round_trips_and_its_key_follows_every_part():
    base = Subject(ModelSource.parse("net.py:Net", {"width": 8}), None, DataSpec("data.zip"))
    assert Subject.from_dict(base.to_dict()) == base
    assert hash(base) == hash(Subject.from_dict(base.to_dict()))
    variants = [
        base.with_weights("sha256:" + "0" * 64),
        Subject(ModelSource.parse("net.py:Net", {"width": 9}), None, DataSpec("data.zip")),
        Subject(base.model, None, DataSpec("data.zip", size=(32, 32))),
        Subject(base.model, None, DataSpec("data.zip", seed=1)),
    ]
    keys = {base.key, *(v.key for v in variants)}
    assert len(keys) == 5  # fine-tuned weights, other args, other preprocessing: other subjects


def test_the_bundled_models_are_subjects_too():
    subject = Subject.of("lenet5")
    assert subject == Subject.bundled("lenet5") and subject.is_bundled
    assert subject.with_weights("sha256:" + "1" * 64).key != subject.key
    assert not Subject(subject.model, None, DataSpec(size=(32, 32))).is_bundled


@pytest.mark.parametrize(
    "fields",
    [
        {"size": (0, 5)},
        {"channels": 2},
        {"std": (0.5, 0.0, 0.5)},
        {"mean": "abc"},
        {"eval_fraction": 1.0},
        {"source": ""},
    ],
)
def test_bad_data_specs_are_refused(fields):
    with pytest.raises(ValueError):
        DataSpec(**fields)


def test_weights_are_named_by_a_full_hash():
    with pytest.raises(ValueError, match="sha256"):
        Subject.bundled("lenet5").with_weights("md5:abc")


def test_the_store_keeps_bytes_by_their_hash_and_registers_local_files(tmp_path):
    store = Store(tmp_path / "store", quota_bytes=1000)
    data = b"weights" * 10
    ref = store.put(data, ".pt")
    assert ref == f"store:{hashlib.sha256(data).hexdigest()}.pt"
    assert store.path(ref).read_bytes() == data
    assert store.put(data, ".pt") == ref  # the same bytes once
    assert store.digest(ref) == "sha256:" + hashlib.sha256(data).hexdigest()
    local = tmp_path / "mine.pt"
    local.write_bytes(b"other")
    digest = store.register(local)
    assert digest == file_digest(local) and store.path(digest) == local.resolve()
    with pytest.raises(ValueError, match="not a store reference"):
        store.path("store:../../etc/passwd")
    with pytest.raises(FileNotFoundError, match="upload the file again"):
        store.path("store:" + "f" * 64 + ".pt")


def test_the_store_quota_evicts_the_oldest_files(tmp_path):
    store = Store(tmp_path / "store", quota_bytes=250)
    first = store.put(b"a" * 100, ".bin")
    second = store.put(b"b" * 100, ".bin")
    third = store.put(b"c" * 100, ".bin")  # over 250: the oldest goes
    with pytest.raises(FileNotFoundError):
        store.path(first)
    assert store.path(second).exists() and store.path(third).exists()
    with pytest.raises(ValueError, match="quota"):
        store.put(b"d" * 300, ".bin")


def test_uploaded_sources_keep_their_kind_and_read_short():
    digest = "a" * 64
    python = ModelSource.parse(f"store:{digest}.py:Net")
    assert python.kind == "python" and python.file == f"store:{digest}.py"  # not a pickle
    onnx = Subject(
        ModelSource.parse(f"store:{digest}.onnx"), None, DataSpec(f"store:{'b' * 64}.npz")
    )
    assert onnx.label == "uploaded .onnx aaaaaa · data upload .npz bbbbbb"
    local = Subject(
        ModelSource.parse("models/net.py:Net"), "sha256:" + "c" * 64, DataSpec("x/y.zip")
    )
    assert local.label == "net.py:Net · weights cccccc · data y.zip"


def test_every_source_kind_has_its_loader_and_its_way_of_being_written():
    # One registry of source kinds (explorer.engine.subject.SOURCE_KINDS): the loaders, the
    # parser's prefixes and the messages all follow it, so a new kind is one entry there and
    # its loader.
    from explorer.engine.subject import SOURCE_KINDS, how_sources_are_written
    from explorer.loading.models import LOADERS

    assert set(LOADERS) == set(SOURCE_KINDS)
    text = how_sources_are_written()
    for kind in SOURCE_KINDS.values():
        assert kind.written in text
        if kind.prefixed:
            assert ModelSource.parse(f"{kind.name}:x.bin").kind == kind.name
        for suffix in kind.suffixes:
            assert ModelSource.parse(f"model{suffix}").kind == kind.name
    with pytest.raises(ValueError, match=r"torchvision:ARCH, timm:NAME, path/to/model\.py"):
        ModelSource.parse("dir/thing.xyz")
