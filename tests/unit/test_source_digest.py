"""A local model file is keyed by its content, not its path: the same path with other bytes is
another subject, so nothing cached for the old content is reused; a subject recorded for the
old content says the file changed instead of silently loading the new one."""

from __future__ import annotations

import os

import pytest

from explorer.engine.subject import (
    ModelSource,
    Subject,
    file_digest,
    subject_from_query,
    subject_to_query,
)
from explorer.loading.errors import LoadError
from explorer.loading.models import load_model

NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, {width})
        self.out = nn.Linear({width}, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.flatten(x, 1))))
"""


def write(path, width: int) -> None:
    path.write_text(NET.format(width=width))
    os.utime(path, ns=(width * 10**9, width * 10**9))  # a new modification time for each version


@pytest.mark.parametrize("suffix", [".py:Net", ".onnx"])
def test_a_changed_file_at_the_same_path_is_another_subject(tmp_path, suffix):
    path = tmp_path / ("net.py" if suffix.startswith(".py") else "net.onnx")
    text = str(path) + (":Net" if suffix.startswith(".py") else "")
    write(path, 8)
    before = Subject(ModelSource.parse(text))
    assert before.model.digest == file_digest(path)
    write(path, 16)
    after = Subject(ModelSource.parse(text))
    assert after.model.digest == file_digest(path) != before.model.digest
    assert after != before and after.key != before.key and after.to_json() != before.to_json()
    # the JSON form (caches, saved experiments) keeps the content it was made for
    assert Subject.from_json(before.to_json()) == before
    # the URL names the file only: a shared link opens the file as it is now
    assert subject_from_query(subject_to_query(before)) == after


def test_a_subject_made_for_the_old_content_refuses_the_new_one(tmp_path):
    path = tmp_path / "net.py"
    write(path, 8)
    old = ModelSource.parse(f"{path}:Net")
    assert load_model(old, trust_code=True).model.fc.out_features == 8
    write(path, 16)
    with pytest.raises(LoadError, match=r"net\.py has changed since this model was opened"):
        load_model(old, trust_code=True)
    fresh = ModelSource.parse(f"{path}:Net")
    assert load_model(fresh, trust_code=True).model.fc.out_features == 16


def test_bundled_and_library_sources_have_no_file_digest():
    for text in ("lenet5", "torchvision:resnet18", "timm:resnet18"):
        source = ModelSource.parse(text)
        assert source.digest is None
        assert "model_digest" not in Subject(source).to_dict()  # older keys unchanged
    with pytest.raises(ValueError, match="sha256"):
        ModelSource("python", "net.py:Net", digest="md5:abc")
