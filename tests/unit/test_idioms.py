"""Models written the ways users write them (``tests/idiom_models.py``), trained for a few
seconds on the bundled MNIST, loaded as Python sources and run through every step of
``explorer.engine.compat.check_model``: each applicable step must be ``ok``, and explorer's dense
accuracy must equal a plain-torch oracle's and be well above chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explorer.engine.compat import CompatRow, check_model, eval_indices
from explorer.engine.subject import ModelSource, Subject
from explorer.loading.store import Store
from explorer.zoo.mnist import load_dataset
from tests import idiom_models
from tests.idiom_models import IDIOMS, training_logits

MODELS_FILE = Path(idiom_models.__file__).resolve()
EVAL_IMAGES = 128
TRAIN_IMAGES = 4000
#: Idioms whose filters plan may be refused with a reason (channels shared between two uses).
FILTERS_MAY_BE_REFUSED = {"SharedConv", "SharedLinear"}


def train(name: str, fit) -> torch.nn.Module:
    """One epoch of Adam over ``TRAIN_IMAGES`` random fit images (the split is sorted by class),
    seed 0."""
    torch.manual_seed(0)
    model = getattr(idiom_models, name)()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(fit), generator=generator)[:TRAIN_IMAGES]
    model.train()
    for batch in order.split(50):
        loss = F.cross_entropy(training_logits(model(fit.images[batch])), fit.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """name -> (trained model, its compat row), each trained and checked once."""
    store = Store(tmp_path_factory.mktemp("idiom-store"))
    fit = load_dataset("mnist", "fit")
    done: dict[str, tuple[torch.nn.Module, CompatRow]] = {}

    def get(name: str) -> tuple[torch.nn.Module, CompatRow]:
        if name not in done:
            model = train(name, fit)
            weights = store.root / f"{name}.pt"
            torch.save(model.state_dict(), weights)
            subject = Subject(
                ModelSource("python", f"{MODELS_FILE}:{name}"), weights=store.register(weights)
            )
            row = check_model(subject, eval_images=EVAL_IMAGES, resolve=store.path)
            done[name] = (model, row)
        return done[name]

    return get


@pytest.mark.parametrize("name", list(IDIOMS))
def test_every_step_works_on_the_idiom(name, checked):
    _, row = checked(name)
    failed = {
        step: cell.text
        for step, cell in row.cells.items()
        if cell.status not in ("ok", "n/a")
        and not (step == "filters" and name in FILTERS_MAY_BE_REFUSED and cell.status == "refused")
    }
    assert not failed, f"{name} ({IDIOMS[name]}): {failed}"


@pytest.mark.parametrize("name", list(IDIOMS))
def test_dense_accuracy_equals_the_plain_torch_oracle(name, checked):
    model, row = checked(name)
    eval_set = load_dataset("mnist", "eval")
    index = torch.as_tensor(list(eval_indices(len(eval_set), EVAL_IMAGES)))
    with torch.no_grad():
        logits = training_logits(model(eval_set.images[index]))
    oracle = float((logits.argmax(1) == eval_set.labels[index]).float().mean())
    assert oracle > 0.8, f"{name} trained to only {oracle:.0%}"
    assert "dense_accuracy" in row.figures, f"{name}: no dense eval ({row.cells['eval'].text})"
    assert row.figures["dense_accuracy"] == pytest.approx(oracle, abs=1e-9)


def test_a_hard_coded_flatten_width_keeps_its_layer_and_the_rest_compact():
    # ClassicLeNet flattens with x.view(-1, 16 * 4 * 4): conv2 cannot lose filters (a smaller
    # model would not run), conv1 and fc1 can, and the compacted model equals the masked one.
    from explorer.engine.compaction import compact
    from explorer.engine.plan import PruningPlan
    from explorer.engine.pruning import Pruner

    torch.manual_seed(0)
    model = idiom_models.ClassicLeNet().eval()
    pruner = Pruner(model, (1, 28, 28))
    assert "fixes the width" in pruner.structure.unsupported_channel_layers["conv2"]
    assert {group.name for group in pruner.structure.channel_groups} == {"conv1", "fc1"}
    state = pruner.resolve(PruningPlan(method="filters", amount=0.5))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(compact(pruner, state)(x), pruner.pruned_model(state)(x))
