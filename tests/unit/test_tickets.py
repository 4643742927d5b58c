"""SNIP and lottery tickets: autograd as the oracle for SNIP, bit-for-bit rewinding, the same
mask for the random baseline, 1 - (1 - p)^k sparsity, fit-only training, untouched models."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.engine.subject import Subject
from explorer.engine.workbench import open_workbench
from explorer.recovery import tickets
from explorer.recovery.tickets import (
    capture_checkpoint,
    fresh_initialization,
    global_top_masks,
    initial_weights,
    iterative_ticket,
    lottery_ticket,
    rewind,
    snip,
    snip_scores,
)
from explorer.recovery.training import Recipe
from explorer.zoo.mnist import ImageDataset, calibration_batch
from explorer.zoo.models import load_model, vit_tiny
from tests.unit.conftest import INPUT_SHAPE, assert_unchanged, require_trained, snapshot

TINY = Recipe(steps=2, batch_size=32, optimizer="adam", lr=1e-3)
LAYERS = ("fc1.weight", "fc2.weight", "fc3.weight")


@pytest.fixture(scope="module")
def lenet300() -> torch.nn.Module:
    require_trained("lenet300")
    return load_model("lenet300")


@pytest.fixture(scope="module")
def init300() -> tickets.InitialWeights:
    return initial_weights("lenet300")


@pytest.fixture(scope="module")
def fit_small(fit_set: ImageDataset) -> ImageDataset:
    return fit_set.subset(range(256))


@pytest.fixture(scope="module")
def eval_small(eval_set: ImageDataset) -> ImageDataset:
    return eval_set.subset(range(200))


@pytest.fixture
def training_calls(monkeypatch) -> list[dict]:
    """Every fine_tune call of explorer.recovery.tickets: its start weights, masks and data."""
    calls = []
    real = tickets.fine_tune

    def spy(model, masks, fit, recipe=None, **options):
        result = real(model, masks, fit, recipe, **options)
        calls.append(
            {
                "start": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "masks": dict(masks),
                "fit": fit,
                "result": result,
            }
        )
        return result

    monkeypatch.setattr(tickets, "fine_tune", spy)
    return calls


# --- initial weights ------------------------------------------------------------------------------


def test_a_bundled_model_starts_from_its_committed_init(lenet300, init300):
    assert init300.origin == "init.pt" and init300.seed is None
    committed = load_model("lenet300", "init").state_dict()
    assert all(torch.equal(init300.state_dict[k], v) for k, v in committed.items())
    assert not torch.equal(init300.state_dict["fc1.weight"], lenet300.fc1.weight)
    assert "committed" in init300.description


def test_other_subjects_get_a_seeded_fresh_init_and_nothing_else_changes(lenet300):
    before, rng = snapshot(lenet300), torch.get_rng_state()
    variant = Subject.bundled("lenet300").with_weights("sha256:" + "ab" * 32)
    first = initial_weights(variant, lenet300, seed=3)
    again = fresh_initialization(lenet300, seed=3)
    other = fresh_initialization(lenet300, seed=4)
    assert first.origin == "reset_parameters" and first.seed == 3 and first.not_reset == ()
    for name, value in first.state_dict.items():
        assert torch.equal(value, again.state_dict[name])
    assert not torch.equal(first.state_dict["fc1.weight"], other.state_dict["fc1.weight"])
    assert not torch.equal(first.state_dict["fc1.weight"], lenet300.fc1.weight)
    assert_unchanged(lenet300, before)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone


def test_parameters_without_reset_parameters_are_named():
    init = fresh_initialization(vit_tiny(), seed=0)
    assert set(init.not_reset) == {"embed.cls_token", "embed.pos_embed"}
    assert "embed.pos_embed" in init.description
    assert all(not torch.isnan(v).any() for v in init.state_dict.values())


# --- rewinding ------------------------------------------------------------------------------------


def test_rewinding_restores_survivors_bit_for_bit_and_zeroes_the_rest(lenet300, init300):
    before = snapshot(lenet300)
    masks = Pruner(lenet300, INPUT_SHAPE).resolve(PruningPlan(amount=0.8)).masks
    rewound = rewind(lenet300, masks, init300.state_dict).state_dict()
    for name, value in init300.state_dict.items():
        mask = masks.get(name)
        if mask is None:  # biases: rewound whole
            assert torch.equal(rewound[name], value), name
            continue
        keep = mask != 0
        assert torch.equal(rewound[name][keep], value[keep]), name
        pruned = rewound[name][~keep]
        assert bool((pruned == 0).all()) and not bool(torch.signbit(pruned).any())
    assert_unchanged(lenet300, before)


def test_one_shot_ticket_and_random_reinit_share_the_mask_not_the_values(
    lenet300, init300, fit_small, eval_small, training_calls
):
    before = snapshot(lenet300)
    pruner = Pruner(lenet300, INPUT_SHAPE)
    result = lottery_ticket(
        pruner, PruningPlan(amount=0.7), TINY, fit=fit_small, init=init300, eval_set=eval_small
    )
    ticket, random = training_calls
    masks = pruner.resolve(PruningPlan(amount=0.7)).masks
    for name in LAYERS:
        assert torch.equal(ticket["masks"][name], masks[name])
        assert torch.equal(random["masks"][name], masks[name])
        keep = masks[name] != 0
        assert torch.equal(ticket["start"][name][keep], init300.state_dict[name][keep])
        assert not torch.equal(random["start"][name][keep], init300.state_dict[name][keep])
        assert bool((random["start"][name][~keep] == 0).all())
    (only,) = result.rounds
    assert only.pruned == round(0.7 * 266_200) and only.remaining == pytest.approx(0.3, abs=1e-5)
    assert only.ticket.label == "ticket" and only.random.label == "random re-init"
    assert only.ticket.steps == only.random.steps == 2
    assert result.rewind_to == "init"
    assert_unchanged(lenet300, before)


def test_a_reinit_seed_that_reproduces_the_init_is_refused(lenet300, init300, fit_small):
    # init.pt was drawn by seeding 0 and building the model: reset_parameters(seed 0) redraws it
    with pytest.raises(ValueError, match="reinit_seed"):
        lottery_ticket(
            Pruner(lenet300, INPUT_SHAPE),
            PruningPlan(amount=0.5),
            TINY,
            fit=fit_small,
            init=init300,
            reinit_seed=0,
        )


def test_rewinding_to_an_early_checkpoint(lenet300, init300, fit_small, training_calls):
    checkpoint = capture_checkpoint(lenet300, init300, fit_small, 3, TINY)
    (dense,) = training_calls
    assert dense["masks"] == {} and dense["result"].steps == 3
    assert dense["result"].recipe.schedule == "constant"
    assert not torch.equal(checkpoint["fc1.weight"], init300.state_dict["fc1.weight"])
    result = lottery_ticket(
        Pruner(lenet300, INPUT_SHAPE),
        PruningPlan(amount=0.5),
        TINY,
        fit=fit_small,
        init=init300,
        rewind_to=checkpoint,
        random_baseline=False,
    )
    ticket = training_calls[1]
    keep = ticket["masks"]["fc1.weight"] != 0
    assert torch.equal(ticket["start"]["fc1.weight"][keep], checkpoint["fc1.weight"][keep])
    assert result.rewind_to == "checkpoint" and result.rounds[0].random is None
    with pytest.raises(ValueError, match="rewind_to"):
        lottery_ticket(
            Pruner(lenet300, INPUT_SHAPE), {}, TINY, fit=fit_small, init=init300, rewind_to="late"
        )


# --- iterative magnitude pruning ------------------------------------------------------------------


def test_iterative_ticket_prunes_p_of_the_survivors_each_round(
    lenet300, init300, fit_small, eval_small, training_calls
):
    before = snapshot(lenet300)
    p, rounds = 0.3, 2
    result = iterative_ticket(
        Pruner(lenet300, INPUT_SHAPE),
        rounds,
        p,
        TINY,
        fit=fit_small,
        init=init300,
        eval_set=eval_small,
        eval_every=1,
    )
    assert [r.round for r in result.rounds] == [0, 1, 2]
    total = 266_200
    for r in result.rounds:
        expected = (1 - (1 - p) ** r.round) * total
        assert abs(r.pruned - expected) <= 1, r.round  # as rounding allows
        assert r.total == total
    # round 0 trains the dense network from init; rounds 1.. a ticket, then its random baseline
    assert [c["masks"] == {} for c in training_calls] == [True] + [False] * (2 * rounds)
    assert [len(c["start"]) for c in training_calls] == [6] * (1 + 2 * rounds)
    # masks only grow, and every ticket starts from the init values of its survivors
    tickets_only = training_calls[1::2]
    for earlier, later in itertools.pairwise(tickets_only):
        for name in LAYERS:
            assert bool((later["masks"][name] <= earlier["masks"][name]).all())
    for call in tickets_only:
        for name in LAYERS:
            keep = call["masks"][name] != 0
            assert torch.equal(call["start"][name][keep], init300.state_dict[name][keep])
    # the masks come from the weights retrained in the round before
    retrained = training_calls[0]["result"].state_dict
    first = tickets_only[0]["masks"]
    oracle = Pruner(tickets.with_weights(lenet300, retrained), INPUT_SHAPE).resolve(
        PruningPlan(amount=p)
    )
    assert all(torch.equal(first[n], oracle.masks[n]) for n in LAYERS)
    # the curves: every eval step, for a chart
    rows, curves = result.rows(), result.curves()
    assert rows[2]["weights_remaining"] == result.rounds[2].weights_remaining
    assert {c["run"] for c in curves} == {"dense", "ticket", "random re-init"}
    assert [step for step, _ in result.rounds[1].ticket.eval_history] == [1, 2]
    history = result.rounds[1].ticket.eval_history
    assert result.rounds[1].ticket.best[1] == max(a for _, a in history)
    assert result.rounds[1].ticket.accuracy == history[-1][1]
    assert_unchanged(lenet300, before)


def test_training_never_sees_the_eval_split(
    lenet300, init300, fit_small, eval_small, training_calls
):
    iterative_ticket(
        Pruner(lenet300, INPUT_SHAPE),
        1,
        0.2,
        TINY,
        fit=fit_small,
        init=init300,
        eval_set=eval_small,
    )
    snip(
        Pruner(lenet300, INPUT_SHAPE),
        0.5,
        TINY,
        fit=fit_small,
        init=init300,
        eval_set=eval_small,
    )
    assert len(training_calls) == 4
    for call in training_calls:
        assert call["fit"] is fit_small and call["fit"].split == "fit"
        seen = call["result"].seen_indices
        assert len(seen) > 0 and int(seen.max()) < len(fit_small)
    with pytest.raises(ValueError, match="fit split"):
        snip(Pruner(lenet300, INPUT_SHAPE), 0.5, TINY, fit=eval_small, init=init300)


# --- SNIP -----------------------------------------------------------------------------------------


def test_snip_scores_are_connection_sensitivity_by_autograd(lenet300, init300, fit_small):
    at_init = tickets.with_weights(lenet300, init300.state_dict)
    before = snapshot(at_init)
    scores = snip_scores(at_init, fit_small, batch_size=64, seed=5)
    assert_unchanged(at_init, before)  # no gradient left on the model either
    # the oracle: autograd on a copy, the same 64 fit images
    oracle = tickets.with_weights(lenet300, init300.state_dict)
    batch = calibration_batch(fit_small, 64, seed=5)
    loss = F.cross_entropy(oracle(batch.images), batch.labels)
    weights = [getattr(oracle, n.split(".")[0]).weight for n in LAYERS]
    grads = torch.autograd.grad(loss, weights)
    assert list(scores) == list(LAYERS)
    for name, weight, grad in zip(LAYERS, weights, grads, strict=True):
        torch.testing.assert_close(scores[name], (grad * weight).abs().detach())


def test_snip_masks_keep_exactly_the_top_k(lenet300, init300, fit_small):
    at_init = tickets.with_weights(lenet300, init300.state_dict)
    scores = snip_scores(at_init, fit_small, batch_size=64)
    masks = global_top_masks(scores, 0.9)
    flat_scores = torch.cat([scores[n].flatten() for n in LAYERS])
    flat_masks = torch.cat([masks[n].flatten() for n in LAYERS])
    k = 266_200 - round(0.9 * 266_200)
    assert int(flat_masks.sum()) == k
    top = torch.zeros_like(flat_masks)
    top[torch.topk(flat_scores, k).indices] = 1
    assert torch.equal(flat_masks, top)


def test_snip_trains_the_sparse_network_from_init(
    lenet300, init300, fit_small, eval_small, training_calls
):
    before = snapshot(lenet300)
    result = snip(
        Pruner(lenet300, INPUT_SHAPE),
        0.8,
        TINY,
        fit=fit_small,
        init=init300,
        eval_set=eval_small,
        batch_size=64,
    )
    (call,) = training_calls
    assert result.sparsity == round(0.8 * 266_200) / 266_200
    for name in LAYERS:
        keep = result.masks[name] != 0
        assert torch.equal(call["masks"][name], result.masks[name])
        assert torch.equal(call["start"][name][keep], init300.state_dict[name][keep])
        assert bool((result.state_dict[name][~keep] == 0).all())
    assert 0.0 <= result.curve.accuracy <= 1.0 and result.curve.steps == 2
    assert_unchanged(lenet300, before)


def test_a_workbench_is_a_source_too(fit_small):
    require_trained("lenet300")
    bench = open_workbench("lenet300", torch.device("cpu"))
    before = snapshot(bench.model)
    result = snip(bench, 0.5, TINY, fit=fit_small, eval_every=1)
    assert result.init.startswith("the bundled model's committed initial weights")
    assert len(result.curve.eval_history) == 2  # on the workbench's eval split
    assert_unchanged(bench.model, before)
