"""The Recover page through AppTest: a fine-tune runs in the background, its before / after
numbers are the library's, and the result is kept as a variant that the Prune page opens."""

from __future__ import annotations

import time

import pytest
import torch

from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.recovery.jobs import masks_held
from explorer.recovery.variants import list_variants
from tests.app.test_app_experiments import assert_clean, metric, start

DEADLINE_S = 180


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path))
    return tmp_path


def wait_for_outcome(at):
    """Rerun the page (as its polling would) until the run's numbers are shown."""
    deadline = time.monotonic() + DEADLINE_S
    while not any(m.label == "Pruned + fine-tuned" for m in at.metric):
        assert time.monotonic() < deadline, "the fine-tune did not finish"
        time.sleep(0.5)
        at.run()
        assert_clean(at)
    return at


def test_a_fine_tune_recovers_accuracy_and_is_kept_as_a_variant(home):
    at = start("recover", model="lenet300", amount="0.95")
    assert_clean(at)
    assert not any(m.label == "Pruned + fine-tuned" for m in at.metric)
    at.button(key="start_finetune").click().run()
    assert_clean(at)
    wait_for_outcome(at)
    bench = open_workbench("lenet300")
    pruned = bench.report(PruningPlan(amount=0.95))
    assert metric(at, "Pruned") == f"{pruned.accuracy:.2%}"
    assert metric(at, "Dense") == f"{pruned.dense_accuracy:.2%}"
    tuned = float(metric(at, "Pruned + fine-tuned").rstrip("%")) / 100
    assert tuned > pruned.accuracy + 0.02  # an epoch wins back a good part of what 95% lost
    assert any("every pruned weight is still exactly zero" in c.value for c in at.caption)

    # keep it: a variant of lenet300 whose weights hold the plan's zeros
    at.text_input(key=next(t.key for t in at.text_input if t.key.startswith("variant_name"))).input(
        "ft95"
    ).run()
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("keep::"))).click()
    at.run()
    assert_clean(at)
    (variant,) = list_variants("lenet300")
    assert variant.name == "ft95"
    # it opens on the Prune page as the current subject, with its own weights
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("open::"))).click()
    at.run()
    assert_clean(at)
    assert at.session_state["model"].weights == variant.weights
    tuned_bench = open_workbench(at.session_state["model"])
    state = bench.resolve(PruningPlan(amount=0.95))
    weights = {k: v for k, v in tuned_bench.model.state_dict().items()}
    assert masks_held(weights, state.masks) == 0
    assert tuned_bench.dense.accuracy == pytest.approx(tuned, abs=5e-5)
    assert not torch.equal(weights["fc1.weight"], bench.model.state_dict()["fc1.weight"])
    # a new session (a reload, another visitor) finds it in the model picker by its name
    fresh = start("weights", model="lenet300")
    assert_clean(fresh)
    (picker,) = [s for s in fresh.selectbox if s.key.startswith("model_picker::")]
    assert "LeNet-300-100 · ft95" in picker.options


def run_until_done(at, kind):
    """Click Start of ``kind`` and rerun until its run has ended."""
    at.button(key=f"start_{kind}").click().run()
    assert_clean(at)
    deadline = time.monotonic() + DEADLINE_S
    while any(b.key == f"stop::{rid}" for b in at.button for rid in [b.key[6:]] if b.key):
        assert time.monotonic() < deadline, f"the {kind} run did not finish"
        time.sleep(0.5)
        at.run()
    at.run()
    assert_clean(at)
    return at


def test_gradual_pruning_reaches_the_plans_amount_and_is_drawn_against_one_shot(home):
    at = start("recover", model="lenet300", amount="0.9")
    at.number_input(key="gradual_steps").set_value(3).run()
    run_until_done(at, "gradual")
    finals = {m.label: m for m in at.metric if m.label.endswith(", final")}
    assert set(finals) == {"one-shot, final", "gradual (agp), final"}
    for tile in finals.values():
        assert tile.delta == "90.0% weights pruned"  # AGP reaches its target exactly
    assert any("Both runs train for the same steps" in c.value for c in at.caption)


def test_snip_and_lottery_ticket_runs_show_their_numbers(home):
    at = start("recover", model="lenet300", amount="0.8")
    run_until_done(at, "snip")
    snip_tile = next(m for m in at.metric if m.label == "SNIP, trained from init")
    assert snip_tile.delta == "80.0% weights pruned" and float(snip_tile.value.rstrip("%")) > 50
    at.number_input(key="ticket_rounds").set_value(1).run()
    run_until_done(at, "ticket")
    (table,) = [d for d in at.dataframe if "ticket" in d.value]
    assert list(table.value["round"]) == [0, 1]
    assert table.value["left (%)"].iloc[1] == pytest.approx(80.0)
    assert table.value["random re-init"].notna().iloc[1]


def test_the_server_keeps_a_bounded_number_of_finished_runs_and_refuses_a_third_running():
    from explorer.app import ui

    class Run:  # the part of a job the registry uses
        def __init__(self, done: bool) -> None:
            self.done = done

        def start(self) -> None:
            pass

    ui._job_registry().clear()
    for n in range(ui.KEEP_FINISHED_JOBS + 5):
        ui.start_job("finetune", "s", f"p{n}", Run(done=True))
    kept = ui._job_registry().values()
    assert len(kept) == ui.KEEP_FINISHED_JOBS  # the newest finished ones
    assert ui.latest_job("finetune", "s").plan_json == f"p{ui.KEEP_FINISHED_JOBS + 4}"
    for _ in range(ui.MAX_RUNNING_JOBS):
        ui.start_job("finetune", "s", "busy", Run(done=False))
    with pytest.raises(RuntimeError, match="already trains"):
        ui.start_job("finetune", "s", "one too many", Run(done=False))
    ui._job_registry().clear()
