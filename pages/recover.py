"""Recover: win back the accuracy a plan cost by fine-tuning with its masks held, then keep the
result as new weights of the same model."""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from explorer.app import ui
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import METHODS
from explorer.plots.recovery import Trajectory, training_figure, trajectory_figure
from explorer.recovery.jobs import FineTuneOutcome, finetune_job, finetune_outcome
from explorer.recovery.schedules import (
    DEFAULT_SCHEDULE,
    SPARSITY_SCHEDULES,
    GradualResult,
    ProgressJob,
    ScheduleComparison,
    gradual_prune,
    one_shot_vs_gradual,
)
from explorer.recovery.tickets import TicketResult, iterative_ticket, snip
from explorer.recovery.training import BN_MODES, OPTIMIZERS, SCHEDULES, Recipe, default_recipe
from explorer.recovery.variants import name_taken, save_variant

JOB_KEY = "recover_job"  # kind -> the id of this session's latest run of that kind
OUTCOME_KEY = "recover_outcomes"  # job id -> FineTuneOutcome (plain data)
SAVED_KEY = "recover_saved"  # job id -> (the variant's subject, the name it was kept as)
POLL_S = 1.0

OPTIMIZER_TITLES = {"sgd": "SGD (momentum 0.9, Nesterov)", "adam": "Adam", "adamw": "AdamW"}


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# --- settings ---------------------------------------------------------------------------------


def recipe_ui(defaults: Recipe, fit_samples: int) -> Recipe | None:
    """The fine-tuning recipe, starting from the model's defaults; None (with a message) when a
    setting cannot be used."""
    prefix = "rc_"
    cols = st.columns([1, 3, 3], vertical_alignment="bottom")
    epochs = cols[0].number_input(
        "Epochs",
        min_value=1,
        max_value=100,
        value=defaults.epochs,
        step=1,
        key=prefix + "epochs",
        help=f"Passes over the {fit_samples:,} fit images. The eval images are never trained on.",
    )
    distill = cols[1].toggle(
        "Distill from the dense model",
        value=defaults.distill,
        key=prefix + "distill",
        help="Knowledge distillation: the dense model is the teacher. Loss = (1 − α)·CE(labels) "
        "+ α·T²·KL(teacher ‖ student) on logits softened by temperature T.",
    )
    with st.expander("Training settings", expanded=False):
        a, b, c = st.columns(3)
        optimizer = a.selectbox(
            "Optimizer",
            list(OPTIMIZERS),
            index=list(OPTIMIZERS).index(defaults.optimizer),
            format_func=OPTIMIZER_TITLES.get,
            key=prefix + "optimizer",
        )
        lr = b.number_input(
            "Learning rate",
            min_value=1e-6,
            max_value=1.0,
            value=defaults.lr,
            format="%.5f",
            step=defaults.lr / 2,
            key=prefix + "lr",
            help="Peak learning rate (after warm-up). The default suits this kind of model.",
        )
        schedule = c.selectbox(
            "Schedule",
            list(SCHEDULES),
            index=list(SCHEDULES).index(defaults.schedule),
            key=prefix + "schedule",
            help="constant; cosine (down to 0 at the end); step (×0.1 at 50% and 75%).",
        )
        a, b, c = st.columns(3)
        batch = a.selectbox(
            "Batch size",
            [32, 64, 128, 256],
            index=[32, 64, 128, 256].index(defaults.batch_size)
            if defaults.batch_size in (32, 64, 128, 256)
            else 2,
            key=prefix + "batch",
        )
        decay = b.number_input(
            "Weight decay",
            min_value=0.0,
            max_value=1.0,
            value=defaults.weight_decay,
            format="%.4f",
            step=1e-4,
            key=prefix + "decay",
        )
        bn = c.selectbox(
            "BatchNorm",
            list(BN_MODES),
            index=list(BN_MODES).index(defaults.bn),
            format_func=lambda m: {"train": "re-estimate", "freeze": "frozen"}[m],
            key=prefix + "bn",
            help="Re-estimate: batch statistics while training, running statistics re-measured "
            "over the fit data (pruning makes the old ones stale). Frozen: the dense "
            "model's statistics stay.",
        )
        a, b, c = st.columns(3)
        temperature = a.slider(
            "Temperature T",
            1.0,
            10.0,
            value=defaults.temperature,
            step=0.5,
            key=prefix + "temperature",
            disabled=not distill,
        )
        alpha = b.slider(
            "Distillation weight α",
            0.0,
            1.0,
            value=defaults.alpha,
            step=0.05,
            key=prefix + "alpha",
            disabled=not distill,
            help="0 = plain fine-tuning on the labels; 1 = only the teacher's soft targets.",
        )
        seed = c.number_input("Seed", min_value=0, value=defaults.seed, step=1, key=prefix + "seed")
    try:
        return dataclasses.replace(
            defaults,
            epochs=int(epochs),
            steps=None,
            optimizer=optimizer,
            lr=float(lr),
            schedule=schedule,
            batch_size=int(batch),
            weight_decay=float(decay),
            bn=bn,
            distill=bool(distill),
            temperature=float(temperature),
            alpha=float(alpha),
            seed=int(seed),
        )
    except ValueError as err:
        st.error(f"These settings cannot be used: {err}.")
        return None


# --- the run ----------------------------------------------------------------------------------


def _start(recipe: Recipe) -> None:
    """The Start button: a fine-tuning job of the current plan, in the background."""
    bench, state = ui.current_workbench(), ui.resolve_current()
    try:
        job, curve = finetune_job(bench, state, recipe)
        record = ui.start_job(
            "finetune",
            ui.current_model(),
            state.plan.to_json(indent=None),
            job,
            recipe=recipe.to_dict(),
            curve=curve,
            total_steps=recipe.total_steps(len(bench.fit_set)),
            plan=state.plan.to_dict(),
            before=bench.evaluator.evaluate_state(state).result.accuracy,
            dense=bench.dense.accuracy,
        )
    except (RuntimeError, ValueError) as err:
        ui.notify(f"Fine-tuning did not start: {err}.", "error")
        return
    st.session_state.setdefault(JOB_KEY, {})["finetune"] = record.id


def _current_record(kind: str = "finetune") -> ui.JobRecord | None:
    """This session's run of ``kind`` on this subject and plan, or the newest one any session
    started on them (a reloaded page finds its run again)."""
    plan_json = ui.current_plan().to_json(indent=None)
    record = ui.get_job(st.session_state.setdefault(JOB_KEY, {}).get(kind))
    if record is not None and (record.subject_json, record.plan_json) == (
        ui.current_model(),
        plan_json,
    ):
        return record
    return ui.latest_job(kind, ui.current_model(), plan_json)


def live_ui(record: ui.JobRecord) -> None:
    """Progress, Stop, and the curve of a run; polls while it runs."""
    job = record.job
    progress = job.progress
    if job.running:
        if progress is None:
            st.progress(0.0, text="Starting…")
        else:
            st.progress(
                progress.fraction,
                text=f"Step {progress.step:,} of {progress.total_steps:,} · epoch "
                f"{progress.epoch} · loss {progress.loss:.4f} · {_duration(progress.elapsed_s)} "
                f"so far, about {_duration(progress.eta_s)} left",
            )
        st.button(
            "Stop",
            key=f"stop::{record.id}",
            on_click=job.stop,
            icon=":material/stop_circle:",
            help="End the run after the current step; the weights so far are kept (and masked).",
        )
    total = progress.total_steps if progress is not None else record.info["total_steps"]
    st.plotly_chart(
        training_figure(
            job.history,
            record.info["curve"].points,
            total,
            reference=[
                ("dense", record.info["dense"]),
                ("before fine-tuning", record.info["before"]),
            ],
        ),
        config={"displayModeBar": False},
        key=f"curve::{record.id}",
    )
    st.caption(
        f"Eval accuracy on a class-balanced {len(record.info['curve'].probe):,} of the eval "
        "images, measured along the way (never trained on); the numbers below use all of them."
    )


@st.fragment(run_every=POLL_S)
def polling_fragment(job_id: str) -> None:
    """Redraws the run every second while it runs; a full rerun once it has ended."""
    record = ui.get_job(job_id)
    if record is None:
        return
    (live_ui if record.kind == "finetune" else steps_live_ui)(record)
    if record.job.done:
        st.rerun()


def outcome_ui(record: ui.JobRecord) -> None:
    """Before / after on all eval images, and keeping the weights as a variant."""
    job = record.job
    if job.error is not None:
        st.error(f"Fine-tuning failed: {job.error}. The model and plan are unchanged.")
        return
    outcomes = st.session_state.setdefault(OUTCOME_KEY, {})
    outcome: FineTuneOutcome | None = outcomes.get(record.id)
    bench = ui.current_workbench()
    if outcome is None:
        with st.spinner("Measuring the fine-tuned model on every eval image…"):
            outcome = finetune_outcome(bench, ui.current_plan(), job.result)
        outcomes[record.id] = outcome
    if outcome.stopped:
        st.info(f"Stopped after {outcome.steps:,} of {outcome.total_steps:,} steps.")
    cols = dense_and_pruned_tiles(
        outcome.dense_accuracy,
        outcome.pruned_accuracy,
        "The plan applied to the dense weights, before fine-tuning.",
    )
    cols[2].metric(
        "Pruned + fine-tuned",
        f"{outcome.finetuned_accuracy:.2%}",
        **ui.metric_change(
            (outcome.finetuned_accuracy - outcome.dense_accuracy) * 100, ".2f", " pts vs dense"
        ),
        help="After fine-tuning with the masks held, on every eval image.",
    )
    cols[3].metric(
        "Recovered",
        f"{min(max(outcome.recovered, -9.99), 9.99):.0%}",
        help="Share of the accuracy pruning lost that fine-tuning won back.",
    )
    held = (
        "every pruned weight is still exactly zero"
        if outcome.revived == 0
        else f"{outcome.revived:,} pruned weights are no longer zero (a bug: please report it)"
    )
    st.caption(
        f"{outcome.steps:,} steps in {_duration(outcome.seconds)} on "
        f"{outcome.fit_samples:,} distinct fit images; {held}."
    )
    keep_ui(record, outcome)


def _short_plan(plan: PruningPlan) -> str:
    """A variant's default name: the method and amount, e.g. ``filters 30%``."""
    own = f" +{len(plan.overrides)} layer(s)" if plan.overrides else ""
    return f"{plan.method} {plan.amount:.0%}{own}"


def keep_ui(record: ui.JobRecord, outcome: FineTuneOutcome) -> None:
    """Keep the fine-tuned weights as a named variant of this model, and open it."""
    recipe = Recipe.from_dict(record.info["recipe"])
    default = f"{_short_plan(ui.current_plan())} · {recipe.epochs} ep" + (
        " · distilled" if recipe.distills else ""
    )
    keep_weights_ui(
        record, record.job.result.state_dict, ui.current_plan(), recipe, outcome.metrics(), default
    )


def keep_weights_ui(
    record: ui.JobRecord,
    state_dict: dict,
    plan: PruningPlan,
    recipe: Recipe,
    metrics: dict[str, Any],
    default: str,
) -> None:
    """Keep trained weights as a named variant of this model, and open them on the Prune page
    with ``plan``."""
    saved = st.session_state.setdefault(SAVED_KEY, {})
    subject = ui.current_subject()
    if record.id in saved:
        variant_subject, kept_name = saved[record.id]
        # the name the user typed, not the subject's label ("lenet5 · weights 8bf5e7")
        st.success(
            f"Kept as '{ui.plain(kept_name)}', new weights of {ui.plain(subject.label)}: the "
            "model picker lists it under that name."
        )
        opened = st.button(
            "Prune it further on the Prune page",
            key=f"open::{record.id}",
            icon=":material/content_cut:",
            type="primary",
        )
        if opened and ui.load_state(variant_subject, plan):
            st.switch_page("pages/prune.py")
        return
    cols = st.columns([3, 1], vertical_alignment="bottom")
    name = cols[0].text_input(
        "Keep these weights as",
        value=default,
        max_chars=120,
        key=f"variant_name::{record.id}",
        help="A variant of this model: new weights with a name, a parent and the recipe that "
        "made them. Every page can open it, and it can be pruned further.",
    )
    if cols[1].button("Keep", key=f"keep::{record.id}", icon=":material/save:", width="stretch"):
        try:
            taken = name_taken(subject, name)
            if taken is not None:
                raise ValueError(f"a variant named {taken.name!r} exists already; choose another")
            bench = ui.current_workbench()
            variant_subject, variant = save_variant(
                subject, state_dict, name, plan, recipe, metrics, model=bench.model
            )
        except (ValueError, OSError) as err:
            st.error(f"Not kept: {err}.")
            return
        saved[record.id] = (variant_subject, variant.name)
        st.rerun()


def finetune_ui() -> None:
    bench = ui.current_workbench()
    try:
        fit = bench.fit_set
    except ValueError as err:
        st.error(f"Fine-tuning needs the fit part of the data: {err}.")
        return
    st.caption(
        "The pruned model trains on the fit part of the data with its masks held: pruned "
        "weights get no gradient and are zeroed again after every step, so they stay exactly "
        "zero. The dense model and its weights are never changed."
    )
    record = _current_record()
    running = record is not None and record.job.running
    recipe = recipe_ui(default_recipe(bench.subject, bench.model), len(fit))
    if not running:
        st.button(
            "Start fine-tuning",
            key="start_finetune",
            type="primary",
            icon=":material/play_arrow:",
            disabled=recipe is None,
            on_click=_start,
            args=(recipe,),
            help="Runs in the background: the page stays usable, and a reload finds the run.",
        )
    if record is None:
        starting_point_ui(bench)
        return
    if running:
        polling_fragment(record.id)
    else:
        live_ui(record)
        outcome_ui(record)


def dense_and_pruned_tiles(dense: float, pruned: float, pruned_help: str) -> list:
    """A row of four tiles, the first two the dense and the pruned accuracy (the others for
    the caller): the same before a run and after it."""
    cols = st.columns(4)
    cols[0].metric("Dense", f"{dense:.2%}", help="The dense model, eval split.")
    cols[1].metric(
        "Pruned",
        f"{pruned:.2%}",
        **ui.metric_change((pruned - dense) * 100, ".2f", " pts"),
        help=pruned_help,
    )
    return cols


def starting_point_ui(bench: ui.Workbench) -> None:
    """Before any run: the accuracy fine-tuning starts from (the plan on the dense weights)."""
    state = ui.resolve_current()
    with st.spinner("Evaluating the plan on every eval image…"):
        pruned = bench.evaluator.evaluate_state(state).result.accuracy
    cols = dense_and_pruned_tiles(
        bench.dense.accuracy,
        pruned,
        "The plan applied to the dense weights, before fine-tuning: where a run starts.",
    )
    cols[2].caption("Fine-tuning starts from the pruned accuracy; its result appears here.")


# --- multi-step experiments: gradual pruning, SNIP, lottery tickets ---------------------------


def _start_steps(kind: str, run: Any, **info: Any) -> None:
    """Start ``run(progress=…, stop=…)`` in the background as this session's ``kind`` run."""
    try:
        record = ui.start_job(
            kind,
            ui.current_model(),
            ui.current_plan().to_json(indent=None),
            ProgressJob(run, name=kind),
            **info,
        )
    except (RuntimeError, ValueError) as err:
        ui.notify(f"The run did not start: {err}.", "error")
        return
    st.session_state.setdefault(JOB_KEY, {})[kind] = record.id


def steps_live_ui(record: ui.JobRecord) -> None:
    """Progress of a multi-step run: what it does now, how far it is, and Stop."""
    job = record.job
    progress = job.progress
    if not job.running:
        return
    if progress is None:
        st.progress(0.0, text="Starting…")
    else:
        inner = progress.training
        left = f" About {_duration(inner.eta_s)} left in this run." if inner is not None else ""
        st.progress(
            progress.fraction,
            text=f"{progress.stage} of {progress.stages}: {progress.message}{left}",
        )
    st.button(
        "Stop",
        key=f"stop::{record.id}",
        on_click=job.stop,
        icon=":material/stop_circle:",
        help="End the run at its next training step; what it has so far is shown.",
    )
    runs = [(label, points) for label, points in getattr(progress, "runs", ()) if points]
    if runs:  # a gradual run's trajectory, drawn as it grows
        st.plotly_chart(
            trajectory_figure(
                [_gradual_series(points, label) for label, points in runs],
                "training steps so far",
                record.info.get("dense"),
            ),
            config={"displayModeBar": False},
            key=f"live_trajectory::{record.id}",
        )


def _run_section(kind: str, start_label: str, start: Any, disabled: bool = False) -> Any:
    """The Start button, the live view while ``kind`` runs, and its result once done."""
    record = _current_record(kind)
    running = record is not None and record.job.running
    if not running:
        st.button(
            start_label,
            key=f"start_{kind}",
            type="primary",
            icon=":material/play_arrow:",
            on_click=start,
            disabled=disabled,
            help="Runs in the background: the page stays usable, and a reload finds the run.",
        )
    if record is None:
        return None
    if running:
        polling_fragment(record.id)
        return None
    if record.job.error is not None:
        st.error(f"The run failed: {record.job.error}. The model and plan are unchanged.")
        return None
    return record


def _epochs_ui(kind: str, label: str = "Epochs per run", value: int = 1) -> int:
    return int(
        st.number_input(
            label,
            min_value=1,
            max_value=50,
            value=value,
            step=1,
            key=f"{kind}_epochs",
            help="Passes over the fit images per training run (the recipe of the Fine-tune "
            "tab's defaults for this model).",
        )
    )


def _gradual_series(result: GradualResult | Any, label: str) -> Trajectory:
    """A run's points (a ``GradualResult`` or the points so far) as a line of the chart."""
    points = [p for p in getattr(result, "points", result) if p.accuracy is not None]
    method = METHODS[ui.current_plan().method]
    return Trajectory(
        label,
        [p.train_steps for p in points],
        [p.accuracy for p in points],
        [
            f"step {p.step}: {method.amount_phrase(p.actual, 1)} (target {p.target:.1%})"
            for p in points
        ],
    )


def gradual_ui() -> None:
    """Prune to the plan's amount in steps with fine-tuning between, against one-shot."""
    bench, plan = ui.current_workbench(), ui.current_plan()
    method = METHODS[plan.method]
    st.caption(
        "Prune to the plan's amount in steps, fine-tuning with the masks held after each "
        "(Zhu & Gupta's cubic schedule prunes fast while there is slack, slowly near the "
        "target). Scores are computed on the fine-tuned weights of the step before; pruned "
        "weights stay pruned."
    )
    if method.amount_is_switch or plan.amount <= 0:
        st.info(
            "Set a plan with an amount above 0 (unstructured, structured or heads) on the "
            "Prune page: the gradual run goes to that amount."
        )
        return
    cols = st.columns([2, 2, 3, 2], vertical_alignment="bottom")
    steps = int(cols[0].number_input("Pruning steps", 2, 20, 5, key="gradual_steps"))
    with cols[1]:
        epochs = _epochs_ui("gradual", "Epochs per step")
    names = [n for n in SPARSITY_SCHEDULES if n != "one-shot"]
    schedule = cols[2].selectbox(
        "Schedule",
        names,
        index=names.index(DEFAULT_SCHEDULE),
        format_func=lambda n: SPARSITY_SCHEDULES[n].title,
        key="gradual_schedule",
        help=" ".join(
            f"{SPARSITY_SCHEDULES[n].title}: {SPARSITY_SCHEDULES[n].help}" for n in names
        ),
    )
    compare = cols[3].toggle(
        "Against one-shot",
        value=True,
        key="gradual_compare",
        help="Also prune to the target at once and fine-tune for the same number of steps and "
        "epochs: the same training budget, in one chart.",
    )
    recipe = dataclasses.replace(default_recipe(bench.subject, bench.model), epochs=epochs)

    def start() -> None:
        run = one_shot_vs_gradual if compare else gradual_prune
        _start_steps(
            "gradual",
            lambda progress, stop: run(
                bench, plan, None, steps, recipe, schedule=schedule, progress=progress, stop=stop
            ),
            recipe=recipe.to_dict(),
            dense=bench.dense.accuracy,
        )

    record = _run_section(
        "gradual", f"Prune to {method.amount_phrase(plan.amount)} in {steps} steps", start
    )
    if record is None:
        return
    result = record.job.result
    runs = (
        [(result.one_shot, "one-shot"), (result.gradual, f"gradual ({result.gradual.schedule})")]
        if isinstance(result, ScheduleComparison)
        else [(result, f"gradual ({result.schedule})")]
    )
    tiles = st.columns(len(runs) + 1)
    tiles[0].metric("Dense", f"{bench.dense.accuracy:.2%}")
    for tile, (run, label) in zip(tiles[1:], runs, strict=True):
        final = run.final
        tile.metric(
            f"{label}, final",
            ui.MISSING if final.accuracy is None else f"{final.accuracy:.2%}",
            method.amount_phrase(final.actual, 1),
            delta_color="off",
            delta_arrow="off",
            help="Eval accuracy after the last step's fine-tuning.",
        )
    st.plotly_chart(
        trajectory_figure(
            [_gradual_series(run, label) for run, label in runs],
            "training steps so far",
            bench.dense.accuracy,
        ),
        config={"displayModeBar": False},
        key=f"gradual_chart::{record.id}",
    )
    st.caption(
        "Each point: eval accuracy after a step's fine-tuning (hover for its sparsity). Both "
        "runs train for the same steps; only when the sparsity arrives differs."
    )
    final_run = runs[-1][0]
    keep_weights_ui(
        record,
        final_run.state_dict,
        final_run.plan,
        Recipe.from_dict(record.info["recipe"]),
        {"points": [dataclasses.asdict(p) for p in final_run.points]},
        f"{_short_plan(final_run.plan)} · gradual {steps} steps",
    )


def snip_ui() -> None:
    """Prune at initialization with SNIP, then train the sparse network from scratch."""
    bench, plan = ui.current_workbench(), ui.current_plan()
    st.caption(
        "SNIP (Lee et al. 2019): score every connection at the initial weights by "
        "|∂L/∂w · w| on a batch of fit images, keep the global top, and train that sparse "
        "network from its initial weights with the mask held: pruning *before* training."
    )
    cols = st.columns(3, vertical_alignment="bottom")
    sparsity = cols[0].slider(
        "Sparsity (%)",
        0,
        99,
        min(99, round(plan.amount * 100)) if plan.method == "unstructured" else 90,
        key="snip_sparsity",
        help="Share of the prunable layers' weights pruned at initialization.",
    )
    with cols[1]:
        epochs = _epochs_ui("snip", "Epochs", value=3)
    recipe = dataclasses.replace(default_recipe(bench.subject, bench.model), epochs=epochs)
    every = max(1, recipe.total_steps(len(bench.fit_set)) // 12)

    def start() -> None:
        _start_steps(
            "snip",
            lambda progress, stop: snip(
                bench, sparsity / 100, recipe, eval_every=every, progress=progress, stop=stop
            ),
        )

    record = _run_section("snip", "Prune at init and train", start)
    if record is None:
        return
    result = record.job.result
    curve = result.curve
    tiles = st.columns(3)
    tiles[0].metric("Dense (trained normally)", f"{bench.dense.accuracy:.2%}")
    tiles[1].metric(
        "SNIP, trained from init",
        ui.MISSING if curve.accuracy is None else f"{curve.accuracy:.2%}",
        f"{result.sparsity:.1%} weights pruned",
        delta_color="off",
        delta_arrow="off",
    )
    tiles[2].metric("Training steps", f"{curve.steps:,}")
    st.plotly_chart(
        training_figure(
            curve.losses, curve.eval_history, max(curve.steps, 1), [("dense", bench.dense.accuracy)]
        ),
        config={"displayModeBar": False},
        key=f"snip_chart::{record.id}",
    )
    st.caption(f"Initial weights: {result.init}.")


def ticket_ui() -> None:
    """Iterative magnitude pruning with rewinding, against a random re-initialization."""
    bench = ui.current_workbench()
    st.caption(
        "Lottery tickets (Frankle & Carbin 2019): train, prune a share of the surviving weights "
        "by magnitude, **rewind** the survivors to their initial values and train again; "
        "repeat. The baseline trains the same masks from a fresh random initialization: if "
        "the ticket wins, the initial values mattered, not only the mask."
    )
    cols = st.columns(4, vertical_alignment="bottom")
    rounds = int(cols[0].number_input("Rounds", 1, 10, 3, key="ticket_rounds"))
    share = cols[1].slider(
        "Pruned per round (%)",
        5,
        60,
        20,
        5,
        key="ticket_share",
        help="Share of the weights still alive pruned in each round (20% in the paper).",
    )
    with cols[2]:
        epochs = _epochs_ui("ticket", value=3)
    baseline = cols[3].toggle("Random re-init baseline", value=True, key="ticket_baseline")
    left = (1 - share / 100) ** rounds
    st.caption(
        f"{rounds} round(s) leave {left:.1%} of the prunable weights; "
        f"{1 + rounds * (2 if baseline else 1)} training runs of {epochs} epoch(s) each."
    )
    recipe = dataclasses.replace(default_recipe(bench.subject, bench.model), epochs=epochs)

    def start() -> None:
        _start_steps(
            "ticket",
            lambda progress, stop: iterative_ticket(
                bench,
                rounds,
                share / 100,
                recipe,
                random_baseline=baseline,
                progress=progress,
                stop=stop,
            ),
        )

    record = _run_section("ticket", "Find the ticket", start)
    if record is None:
        return
    result: TicketResult = record.job.result
    rows = result.rows()
    series = [
        Trajectory(
            "ticket (rewound to init)",
            [r["remaining"] * 100 for r in rows if r.get("ticket_accuracy") is not None],
            [r["ticket_accuracy"] for r in rows if r.get("ticket_accuracy") is not None],
        )
    ]
    randoms = [r for r in rows if r.get("random_accuracy") is not None]
    if randoms:
        series.append(
            Trajectory(
                "random re-init, same mask",
                [r["remaining"] * 100 for r in randoms],
                [r["random_accuracy"] for r in randoms],
            )
        )
    st.plotly_chart(
        trajectory_figure(series, "weights remaining (%)", bench.dense.accuracy, log_x=True),
        config={"displayModeBar": False},
        key=f"ticket_chart::{record.id}",
    )
    why = (
        f" {ui.MISSING} in round 0: it trains the dense network, which has no mask to train "
        "from a random re-initialization."
    )
    st.dataframe(
        ticket_table(rows),
        hide_index=True,
        width="stretch",
        placeholder=ui.MISSING,
        column_config={
            "ticket": st.column_config.NumberColumn(
                format="%.2f%%", help="The ticket (rewound to init, trained), eval accuracy."
            ),
            "ticket, 1st epoch": st.column_config.NumberColumn(
                format="%.2f%%", help="The ticket after its first epoch: how fast it learns."
            ),
            "random re-init": st.column_config.NumberColumn(
                format="%.2f%%",
                help="The same mask trained from a fresh random initialization."
                + why
                + f" {ui.MISSING} in every round when the baseline is off.",
            ),
            "random, 1st epoch": st.column_config.NumberColumn(
                format="%.2f%%", help="The random re-init after its first epoch." + why
            ),
            "left (%)": st.column_config.NumberColumn(format="%.1f%%"),
            "weights left": st.column_config.NumberColumn(format="localized"),
        },
    )
    st.caption(
        f"Initial weights: {result.init}. Round 0 trains the dense network from them (the "
        "reference); accuracy on every eval image; the 1st-epoch columns show which learns "
        "faster."
    )


def ticket_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lottery rounds as the table shows them: accuracies in %, None where a round has no
    such run (the table draws ``ui.MISSING``)."""
    columns = {
        "ticket": "ticket_accuracy",
        "ticket, 1st epoch": "ticket_first_epoch_accuracy",
        "random re-init": "random_accuracy",
        "random, 1st epoch": "random_first_epoch_accuracy",
    }
    return [
        {
            "round": r["round"],
            "weights left": r["weights_remaining"],
            "left (%)": r["remaining"] * 100,
            **{
                title: None if r.get(key) is None else r[key] * 100
                for title, key in columns.items()
            },
        }
        for r in rows
    ]


TABS = {
    "Fine-tune (after training)": finetune_ui,
    "Gradual (during training)": gradual_ui,
    "SNIP (at initialization)": snip_ui,
    "Lottery ticket": ticket_ui,
}


def main() -> None:
    st.title("Recover")
    ui.plan_summary_ui()
    ui.show_notices()
    for tab, draw in zip(st.tabs(list(TABS)), TABS.values(), strict=True):
        with tab:
            draw()


ui.run_page(main)
