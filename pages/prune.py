"""Prune: method, criterion, scope, a global slider and one per layer; live, honest numbers."""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from explorer.app import ui
from explorer.engine.cost import ModelCost, model_cost
from explorer.engine.importance import CRITERIA, criteria_for
from explorer.engine.latency import HONEST_NOTE, PRACTICAL_DIFFERENCE
from explorer.engine.limits import MAX_PLAN_UPLOAD_MB
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import METHODS, Method, Unit, plan_label
from explorer.engine.summary import (
    VERDICT_BATCH,
    Footprint,
    LatencyVerdict,
    Quality,
    against_dense,
    human_bytes,
    latency_verdict,
    progressive,
    short_count,
    short_flops,
    three_digits,
)
from explorer.engine.sweeps import SWEEP_AMOUNTS, Sweeps, can_sweep, sweep_key
from explorer.keep.experiments import (
    MAX_NAME_LENGTH,
    MAX_NOTE_LENGTH,
    Experiment,
    ExperimentExists,
    ExperimentsError,
    check_name,
    default_experiments,
    from_report,
)
from explorer.keep.export import (
    FORMATS,
    ExportError,
    export,
    export_file_name,
    formats_for,
    model_stem,
)
from explorer.plots import curve_figure, layer_sparsity_figure

# --- callbacks: widgets write the plan, the plan is the only truth ------------------------------


def _replace(**fields: object) -> PruningPlan:
    """The current plan with ``fields`` of its plain-data form replaced."""
    return PruningPlan.from_dict(ui.current_plan().to_dict() | fields)


def _on_method() -> None:
    bench = ui.current_workbench()
    new, dropped = bench.pruner.adapt(_replace(method=st.session_state["ctl_method"]))
    method = METHODS[new.method]
    usable = criteria_for(method.unit_kind)
    if new.criterion not in usable:
        new = PruningPlan.from_dict(new.to_dict() | {"criterion": usable[0]})
    if method.amount_is_switch and new.amount > 0:
        new = new.with_amount(_pattern_sparsity(new))
    if dropped:
        ui.notify(
            f"Per-layer settings of {', '.join(dropped)} do not apply to "
            f"{method.title} and were cleared.",
            "info",
        )
    ui.set_plan(new)


def _on_field(field: str, key: str) -> None:
    ui.set_plan(_replace(**{field: st.session_state[key]}))


def _pattern_sparsity(plan: PruningPlan) -> float:
    """The sparsity an N:M pattern gives, stored as the amount of a switched-on layer."""
    return 1 - plan.n / plan.m


def _on_pattern() -> None:
    n, m = st.session_state["ctl_pattern"]
    plan = _replace(nm=[n, m])
    on = plan.amount > 0
    plan = plan.with_amount(_pattern_sparsity(plan) if on else 0.0)
    for name, amount in plan.unit_amounts:
        plan = plan.with_unit(name, _pattern_sparsity(plan) if amount > 0 else 0.0)
    ui.set_plan(plan)


def _on_pattern_everywhere() -> None:
    plan = ui.current_plan()
    on = st.session_state["ctl_pattern_on"]
    ui.set_plan(plan.with_amount(_pattern_sparsity(plan) if on else 0.0))


def _on_layer(unit: str, key: str) -> None:
    if not ui.user_changed("amount", unit, key):
        return
    value = st.session_state[key] / 100
    ui.set_plan(ui.current_plan().with_unit(unit, value), source=("amount", unit))


def _on_layer_switch(unit: str, key: str) -> None:
    """An N:M layer switched on (its pattern) or off (dense)."""
    if not ui.user_changed("switch", unit, key):
        return
    plan = ui.current_plan()
    if st.session_state[key]:
        plan = plan.with_dense(unit, False)
        if plan.amount_for(unit) == 0:
            plan = plan.with_unit(unit, _pattern_sparsity(plan))
    else:
        plan = plan.without_unit(unit).with_dense(unit, True)
    ui.set_plan(plan, source=("switch", unit))


def _on_dense(unit: str, key: str) -> None:
    if not ui.user_changed("dense", unit, key):
        return
    ui.set_plan(ui.current_plan().with_dense(unit, st.session_state[key]), source=("dense", unit))


def _reset_layer(unit: str) -> None:
    ui.set_plan(ui.current_plan().without_unit(unit).with_dense(unit, False))


def _reset_all() -> None:
    plan = ui.current_plan()
    ui.set_plan(
        PruningPlan.from_dict(
            {key: plan.to_dict()[key] for key in ("method", "criterion", "scope", "nm", "seed")}
        )
    )


def _global_everywhere() -> None:
    ui.set_plan(ui.current_plan().with_global_everywhere())


# --- the workbench --------------------------------------------------------------------------------

#: N:M patterns offered in the page (any other comes from a link, the CLI or a plan file).
PATTERNS = ((1, 2), (2, 4), (1, 4), (4, 8), (2, 8))


def controls_ui(bench: ui.Workbench, plan: PruningPlan) -> None:
    """Method, criterion (and its seed), scope or N:M pattern, and the global amount."""
    method = METHODS[plan.method]
    criterion = CRITERIA[plan.criterion]
    ui.sync_widget("ctl_method", plan.method)
    ui.sync_widget("ctl_criterion", plan.criterion)
    cols = st.columns([3, 3, 2], vertical_alignment="bottom")
    cols[0].selectbox(
        "Method",
        ui.usable_methods(bench),
        key="ctl_method",
        on_change=_on_method,
        format_func=lambda m: METHODS[m].title,
        help=ui.HELP["method"] + " " + method.help,
    )
    with cols[1]:
        inner = st.columns([3, 1]) if criterion.seeded else [st.container()]
        inner[0].selectbox(
            "Criterion",
            criteria_for(method.unit_kind),
            key="ctl_criterion",
            on_change=_on_field,
            args=("criterion", "ctl_criterion"),
            format_func=lambda c: CRITERIA[c].title,
            help=ui.HELP["criterion"] + " " + criterion.help,
        )
        if criterion.seeded:
            ui.sync_widget("ctl_seed", plan.seed)
            inner[1].number_input(
                "Seed",
                min_value=0,
                step=1,
                key="ctl_seed",
                on_change=_on_field,
                args=("seed", "ctl_seed"),
                help="Seed of the random scores: another seed, another random plan. A random "
                "baseline is honest only over several seeds.",
            )
    if method.amount_is_switch:
        pattern_ui(cols[2], plan)
        return
    ui.sync_widget("ctl_scope", plan.scope)
    cols[2].radio(
        "Scope",
        ["global", "layer"],
        key="ctl_scope",
        on_change=_on_field,
        args=("scope", "ctl_scope"),
        horizontal=True,
        format_func=lambda s: "Global" if s == "global" else "Layer-wise",
        help=ui.HELP["scope"],
    )
    ui.global_amount_ui("ctl_amount")


def pattern_ui(cell: object, plan: PruningPlan) -> None:
    """N:M: the pattern and whether it applies to every layer (it has no amount)."""
    patterns = list(PATTERNS) + ([(plan.n, plan.m)] if (plan.n, plan.m) not in PATTERNS else [])
    ui.sync_widget("ctl_pattern", (plan.n, plan.m))
    cell.selectbox(
        "Pattern (N:M)",
        patterns,
        key="ctl_pattern",
        on_change=_on_pattern,
        format_func=lambda p: f"{p[0]}:{p[1]} · {1 - p[0] / p[1]:.0%} sparse",
        help="Keep N of every M consecutive input weights of each output: the pattern fixes "
        "the sparsity (1 − N/M). 2:4 is what sparse tensor cores accelerate.",
    )
    ui.sync_widget("ctl_pattern_on", plan.amount > 0)
    st.toggle(
        f"Apply {plan.n}:{plan.m} to every layer",
        key="ctl_pattern_on",
        on_change=_on_pattern_everywhere,
        help="Switch the pattern on for every layer that can take it; switch single layers "
        "on or off below. A layer whose inputs per output do not divide by M stays dense.",
    )


def _unit_tag(plan: PruningPlan, unit: Unit, method: Method, pruned: int) -> str:
    """What decides a unit's amount, in a few words."""
    if unit.name in plan.dense_units:
        return "locked dense"
    left_dense = method.reason_left_dense(unit, plan)
    if left_dense and plan.amount_for(unit.name) > 0:
        return "dense: " + left_dense
    if method.amount_is_switch:
        return f"{plan.n}:{plan.m}" if pruned else "dense"
    if unit.name in plan.overrides:
        return "own setting"
    return "global ranking" if plan.scope == "global" else "layer-wise"


def _unit_members(unit: Unit, state: ui.PrunedState) -> str:
    """What one row's slider acts on together, for its help text."""
    if unit.kind == "blocks":
        names = [block.name for block in unit.detail.blocks]
        keep = state.keeps.get(unit.name)
        removed = (
            [n for n, kept in zip(names, keep.tolist(), strict=True) if not kept]
            if keep is not None
            else []
        )
        gone = ", ".join(removed) or "none"
        return f" Blocks: {', '.join(names)}; removed now (each is its skip): {gone}."
    if len(unit.layers) > 1:
        return f" Coupled, pruned together: {', '.join(unit.layers)}."
    return ""


def layer_controls_ui(plan: PruningPlan, state: ui.PrunedState) -> None:
    """One row per unit: name and what decides it, its amount, lock, reset."""
    method = METHODS[plan.method]
    sparsity = state.unit_sparsity()
    ui.forget_drawn_values()  # only widgets of this render can count as changed
    head = st.columns([3, 1, 1], vertical_alignment="bottom")
    head[0].markdown(f"**{method.unit_heading}**")
    head[1].button(
        "All global",
        on_click=_global_everywhere,
        width="stretch",
        icon=":material/public:",
        disabled=method.amount_is_switch or not plan.overrides,
        help="Drop every per-layer amount: all layers follow the global slider.",
    )
    head[2].button(
        "Reset all",
        on_click=_reset_all,
        width="stretch",
        icon=":material/restart_alt:",
        help="Back to the dense model (method, criterion, scope and pattern are kept).",
    )
    for unit in state.units:
        own = unit.name in plan.overrides
        dense = unit.name in plan.dense_units
        pruned = state.pruned[unit.name]
        tag = _unit_tag(plan, unit, method, pruned)
        coupled = _unit_members(unit, state)
        row = st.columns([3.4, 4.6, 1.2, 1.2], vertical_alignment="center")
        row[0].markdown(  # a short count keeps the caption and its help on one line
            f"**{unit.name}**  \n:gray[{short_count(unit.size)} {unit.kind} · {tag}]",
            help=f"{pruned:,} of {unit.size:,} {unit.kind} pruned "
            f"({sparsity[unit.name]:.1%}).{coupled}",
        )
        if method.amount_is_switch:
            key = ui.derived_widget_key("switch", unit.name)
            row[1].checkbox(
                f"{plan.n}:{plan.m} on {unit.name}",
                value=ui.drawn_value(key, pruned > 0),
                key=key,
                on_change=_on_layer_switch,
                args=(unit.name, key),
                disabled=bool(method.reason_left_dense(unit, plan)),
                help="Prune this layer with the pattern, or leave it dense.",
            )
        else:
            key = ui.derived_widget_key("amount", unit.name)
            shown = plan.overrides[unit.name] if own else sparsity[unit.name]
            row[1].slider(
                method.amount_label(unit.name),
                0,
                100,
                value=ui.drawn_value(key, round(shown * 100)),
                step=1,
                key=key,
                on_change=_on_layer,
                args=(unit.name, key),
                disabled=dense,
                format="%d%%",
                label_visibility="collapsed",
                help="Drag to give this layer its own amount; it then leaves the "
                "global ranking." + coupled,
            )
        lock_key = ui.derived_widget_key("dense", unit.name)
        row[2].checkbox(
            "Lock",
            value=ui.drawn_value(lock_key, dense),
            key=lock_key,
            on_change=_on_dense,
            args=(unit.name, lock_key),
            help=f"Lock {unit.name} dense: never pruned.",
        )
        row[3].button(
            "Reset",
            key=f"reset::{ui.subject_tag()}::{plan.method}::{unit.name}",
            on_click=_reset_layer,
            args=(unit.name,),
            disabled=not (own or dense),
            width="stretch",
            help=f"Reset {unit.name}: follow the global setting again.",
        )


# A pass still running after this many seconds shows its first chunk's numbers meanwhile.
PREVIEW_AFTER_S = float(os.environ.get("PRUNING_EXPLORER_PREVIEW_AFTER_S", "0.12"))


class MetricsRow:
    """The headline metrics in two rows of four, so that every value is whole on a laptop:
    quality (redrawn as evaluation refines) then cost, latency last (timed last)."""

    def __init__(self, bench: ui.Workbench, state: ui.PrunedState, cost: ModelCost) -> None:
        self.bench, self.state, self.cost = bench, state, cost
        first, second = st.columns(4), st.columns(4)
        self.quality = [cell.empty() for cell in first[:3]]
        for cell, label in zip(self.quality, ("Accuracy", "Loss", "Flipped"), strict=True):
            cell.metric(label, "…", help="Being evaluated.")  # holds the layout meanwhile
        # Compaction and the serialised size take a second on a big model: they follow the
        # first accuracy numbers (``finish_costs``) instead of delaying them.
        self.footprint: Footprint | None = None
        self._cost_metrics([first[3], *second[:2]])
        self.size = second[2].empty()
        self.size.metric("Size", "…", help="Measured once the accuracy is on screen.")
        self.latency = second[3].empty()
        self.latency.metric("Latency", "…", help="Timed once the numbers are on screen.")
        self.status = st.empty()
        self.alerts = st.container()

    def show_quality(self, quality: Quality) -> None:
        """Accuracy, loss and flips; marked ≈ while they cover only the first chunks."""
        # a preview carries one digit less: its sampling error is about +-0.3 points
        approx, digits = ("", 2) if quality.complete else ("≈", 1)
        on = (
            f"the {quality.total:,} held-out eval images"
            if quality.complete
            else f"a preview: {quality.covered:,} of the {quality.total:,} eval images, "
            "spread over the split; the dense model on the same ones"
        )
        low, high = quality.interval
        interval = "" if quality.complete else f" 95% interval for all: {low:.1%} to {high:.1%}."
        self.quality[0].metric(
            "Accuracy",
            f"{approx}{quality.accuracy * 100:.{digits}f}%",
            **ui.metric_change((quality.accuracy - quality.dense_accuracy) * 100, ".2f", " pts"),
            help=f"Top-1 on {on} (dense {quality.dense_accuracy:.2%}).{interval}",
        )
        self.quality[1].metric(
            "Loss",
            f"{approx}{quality.loss:.{digits + 2}f}",
            **ui.metric_change(quality.loss - quality.dense_loss, ".4f", color="inverse"),
            help=f"Mean cross-entropy on {on} (dense {quality.dense_loss:.4f}).",
        )
        self.quality[2].metric(
            "Flipped",
            f"{approx}{quality.flipped:,}",
            f"of {quality.total:,}",
            delta_color="off",
            delta_arrow="off",
            help="Eval predictions changed: images whose predicted class differs from the "
            "dense model's; browse them on the Activations and Saliency pages."
            + ("" if quality.complete else f" Estimated from {quality.changed:,} in the preview."),
        )

    def _cost_metrics(self, cells: list) -> None:
        cost = self.cost
        cells[0].metric(
            "Sparsity",
            f"{cost.prunable_sparsity:.1%}",
            f"{cost.sparsity:.1%} of all",
            delta_color="off",
            delta_arrow="off",
            help=f"Zero weights in prunable layers; {cost.sparsity:.1%} of all "
            "parameters (biases and norms included).",
        )
        cells[1].metric(
            "Nonzero",
            short_count(cost.params_nonzero),
            f"of {short_count(cost.params_total)}",
            delta_color="off",
            delta_arrow="off",
            help=f"Parameters that are not zero: {cost.params_nonzero:,} of {cost.params_total:,}.",
        )
        cells[2].metric(
            "FLOPs",
            short_flops(cost.flops_effective),
            f"{cost.flops_effective / cost.flops_dense:.0%} of dense",
            delta_color="off",
            delta_arrow="off",
            help="Effective FLOPs per image: multiply-adds with a nonzero weight, 2 FLOPs each "
            f"(dense {cost.flops_dense:,}; this plan {cost.flops_effective:,}). Dense kernels "
            "still do all of them.",
        )

    def finish_costs(self) -> None:
        """The compacted model (structured plans) and the bytes on disk."""
        self.footprint = footprint = self.bench.footprint(self.state)
        sizes = footprint.sizes
        self.size.metric(
            "Size",
            human_bytes(footprint.deployed_bytes),
            f"of {human_bytes(sizes.dense)}",
            delta_color="off",
            delta_arrow="off",
            help="Bytes of torch.save: "
            + (
                f"the compacted model ({human_bytes(sizes.compacted)}); "
                if sizes.compacted is not None
                else ""
            )
            + f"sparse-encoded, zeros as a bitmap + values ({human_bytes(sizes.sparse)}); "
            f"dense ({human_bytes(sizes.dense)}). KB and MB are 10³ and 10⁶ bytes.",
        )

    def evaluate(self, started: float, meanwhile: Callable[[], None]) -> Quality:
        """Run the evaluation chunk by chunk. A slow one shows its first chunk's numbers
        (marked ≈) and its progress; every update is also where a newer slider value
        interrupts this run, so dragging never waits for a stale pass to finish.

        ``meanwhile`` draws what does not depend on the evaluation: called once, right after
        the preview (the browser lays it out while the rest is evaluated), else at the end.
        """
        steps = self.bench.evaluator.steps_for_state(self.state)
        first = True
        for outcome in progressive(steps, started, PREVIEW_AFTER_S):
            quality = Quality.of(outcome)
            self.show_quality(quality)
            if first:
                first = False
                meanwhile()
                self.finish_costs()
            if not quality.complete:
                low, high = quality.interval
                self.status.caption(
                    f"Refining on all eval images… {quality.covered:,} of {quality.total:,}; "
                    f"from these, the accuracy on all of them lies between {low:.1%} and "
                    f"{high:.1%} (95%)."
                )
        self.status.caption(
            f"Re-evaluated in {time.perf_counter() - started:.2f} s"
            + (
                f" (resumed at stage {outcome.resumed_from} of {outcome.stages})"
                if outcome.resumed_from
                else " (full pass)"
            )
            + f" on {quality.total:,} eval images."
        )
        if not quality.finite:
            self.alerts.error(
                "The pruned model produces NaN or infinite outputs: its loss is undefined and "
                "its predictions are arbitrary. Prune less, or lock a layer dense."
            )
        for warning in self.state.warnings:
            self.alerts.warning(warning)
        return quality


def latency_metric(cell: object, verdict: LatencyVerdict, cached: bool) -> None:
    """Latency at batch 32 of the fastest deployable form, against dense timed beside it."""
    name, speed, timed, dense = verdict.form, verdict.speed, verdict.timed, verdict.dense
    cell.metric(
        "Latency",
        f"{three_digits(timed.median_ms)} ms",
        speed.summary(),
        delta_color="off" if speed.same_speed else "normal",
        delta_arrow="off" if speed.same_speed else ("up" if speed.ratio > 1 else "down"),
        help=f"Batch of {timed.batch}, the {name} model: median {timed.median_ms:.3f} ms; dense, "
        f"timed in the same rounds: {dense.median_ms:.3f} ms. Per-round dense/{name} ratio "
        f"{speed.ratio:.2f} (quartiles {speed.low:.2f}-{speed.high:.2f}); "
        + (
            "the same kernels as dense, so the same speed by construction"
            if verdict.same_kernels
            else "a difference is claimed only when those quartiles stay clear of "
            f"1 ± {PRACTICAL_DIFFERENCE:.0%}"
        )
        + (". Timed earlier for this same architecture" if cached else "")
        + ". "
        + ui.HELP["latency"],
    )


def details_ui(metrics: MetricsRow) -> None:
    """Per-layer table and chart, then latency: timed last, interruptible by a newer move.
    Runs after ``metrics.evaluate``, which measured the footprint."""
    bench, state, footprint = metrics.bench, metrics.state, metrics.footprint
    layer_table_ui(state, metrics.cost)
    timings, cached = bench.latency_by_architecture(
        state,
        footprint.compacted,
        batch_sizes=(1, VERDICT_BATCH),
        repeats=12,
        budget_s=0.12,
        between=_interruptible(metrics.latency),
    )
    latency_metric(metrics.latency, latency_verdict(timings, footprint.same_kernels), cached)
    with st.expander("Latency details", expanded=False):
        rows = [
            {
                "model": t.model,
                "batch": t.batch,
                "median ms": t.median_ms,
                "IQR ms": t.spread_ms,
                "vs dense": "-" if speed is None else speed.summary(),
                "runs": t.repeats,
            }
            for t, speed in against_dense(timings, footprint.same_kernels)
        ]
        st.dataframe(
            pd.DataFrame(rows),
            hide_index=True,
            width="stretch",
            column_config={
                "median ms": st.column_config.NumberColumn(format="%.3f"),
                "IQR ms": st.column_config.NumberColumn(format="%.3f"),
            },
        )
        st.caption(
            HONEST_NOTE
            + f" Models are timed in alternating order within each round, {timings[0].threads} "
            "thread(s); 'vs dense' compares runs of the same rounds."
            + (
                " Timings are reused while the timed architecture (layer shapes) is unchanged."
                if cached
                else ""
            )
            + (
                " This plan is structured, so the compacted model is physically smaller."
                if footprint.compacted is not None
                else " This plan is not structured: nothing can be removed."
            )
        )


def _interruptible(cell: object, every_s: float = 0.15) -> Callable[[], None]:
    """A callback for long measurements: now and then it touches ``cell`` (a Streamlit call),
    which is where a newer slider value can interrupt this run."""
    last = [0.0]

    def touch() -> None:
        if time.perf_counter() - last[0] > every_s:
            last[0] = time.perf_counter()
            cell.metric("Latency", "timing…", help="Being timed now.")

    return touch


def layer_table_ui(state: ui.PrunedState, cost: ModelCost) -> None:
    frame = pd.DataFrame(
        [
            {
                "layer": layer.name,
                "weights": layer.weights,
                "nonzero": layer.nonzero,
                "sparsity": layer.sparsity,
                "FLOPs dense": layer.flops_dense,
                "FLOPs now": layer.flops_effective,
            }
            for layer in cost.layers
        ]
    )
    own = set(state.plan.overrides)
    count = st.column_config.NumberColumn(format="localized")
    tabs = st.tabs(["Per-layer table", "Sparsity by layer"])
    with tabs[0]:
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            height="content",
            column_config={
                "weights": count,
                "nonzero": count,
                "sparsity": st.column_config.ProgressColumn(
                    format="percent", min_value=0.0, max_value=1.0, width="small"
                ),
                "FLOPs dense": count,
                "FLOPs now": st.column_config.NumberColumn(
                    format="localized",
                    help="FLOPs per image that multiply a nonzero weight (dense kernels "
                    "still do all of them).",
                ),
            },
        )
    with tabs[1]:
        st.plotly_chart(
            layer_sparsity_figure(
                list(frame["layer"]),
                list(frame["sparsity"]),
                [name in own for name in frame["layer"]],
            ),
            config={"displayModeBar": False},
        )


CURVES_KEY = "curves"
HIDDEN_CURVES_KEY = "curves_hidden"


def curve_ui(bench: ui.Workbench, plan: PruningPlan, here: tuple[float, float]) -> None:
    """Accuracy-vs-sparsity sweeps of this session, overlaid; ``here`` = (sparsity, accuracy)
    of the current plan."""
    st.markdown("#### Accuracy vs sparsity")
    if not can_sweep(plan):
        st.caption(
            f"{METHODS[plan.method].title} has one sparsity per pattern (1 − N/M), so there is "
            "no amount to sweep: compare patterns by switching them above."
        )
        return
    if "show_curve" not in st.session_state:  # a link with sweeps, or back from another page
        st.session_state["show_curve"] = bool(st.session_state.get(ui.SWEEPS_KEY))
    show = st.toggle(
        "Sweep the global amount for this plan",
        key="show_curve",
        help=f"Evaluates the plan at global amounts 0 to 95% ({len(SWEEP_AMOUNTS)} full "
        "evaluations, computed once per plan shape and kept) and marks where this plan "
        "stands. Each sweep of this session stays, so that methods, criteria and scopes can "
        "be compared on one chart. The sweeps shown are part of the page's link.",
    )
    if not show:
        _share_sweeps([])
        return
    # Sweeps belong to a subject; they stay in the session, the library fills and labels them.
    store = st.session_state.setdefault(CURVES_KEY, {}).setdefault(ui.current_model(), {})
    sweeps = Sweeps(store)
    linked = st.session_state.get(ui.SWEEPS_KEY, [])  # a shared link's sweeps are drawn too
    if sweeps.missing(plan) or any(sweeps.missing(each) for each in linked):
        bar = st.progress(0.0, text="Evaluating…")
        # Each point is kept as it comes: a run interrupted by another change resumes there.
        for done, todo in sweeps.fill(bench, plan, *linked):
            bar.progress(done / todo, text=f"Evaluating… {done}/{todo}")
        bar.empty()
    others = sweeps.others(plan)
    hidden = st.session_state.setdefault(HIDDEN_CURVES_KEY, set())
    shown = [sweep_key(plan)]
    if others:
        cols = st.columns([5, 1], vertical_alignment="bottom")
        picker = f"curve_pick::{hash(tuple(others)) & 0xFFFFFFFF:08x}"

        def picked() -> None:
            hidden.clear()
            hidden.update(set(others) - set(st.session_state[picker]))

        shown += cols[0].multiselect(
            "Compare with earlier sweeps",
            others,
            default=[key for key in others if key not in hidden],
            key=picker,
            on_change=picked,
            format_func=sweeps.label,
            help="Sweeps computed in this session for this model. Remove one to hide it.",
        )
        if cols[1].button("Forget them", help="Drop the earlier sweeps of this model."):
            sweeps.forget(others)
            hidden.clear()
            _share_sweeps([plan.with_amount(0.0)])
            st.rerun(scope="fragment")
    st.plotly_chart(
        curve_figure(sweeps.series(shown), here, bench.dense.accuracy),
        config={"displayModeBar": False},
    )
    _share_sweeps([PruningPlan.from_json(key) for key in shown])  # the keys: plans at 0


def _share_sweeps(plans: list[PruningPlan]) -> None:
    """Put the sweeps on the chart into the page's link (none when the chart is off)."""
    if st.session_state.get(ui.SWEEPS_KEY, []) != plans:
        st.session_state[ui.SWEEPS_KEY] = plans
        ui.write_url()


@st.fragment
def workbench_fragment() -> None:
    """Controls and results together: moving a slider reruns only this fragment."""
    ui.guarded(_workbench)


def _workbench() -> None:
    started = time.perf_counter()
    ui.show_notices()
    ui.plan_summary_ui()
    bench = ui.current_workbench()
    state = ui.resolve_current()
    plan = state.plan
    controls_ui(bench, plan)
    cost = model_cost(bench.pruner, state)
    metrics = MetricsRow(bench, state, cost)
    per_layer = st.container()

    def layer_controls() -> None:
        with per_layer:
            layer_controls_ui(plan, state)

    quality = metrics.evaluate(started, layer_controls)
    details_ui(metrics)
    curve_ui(bench, plan, (cost.prunable_sparsity, quality.accuracy))
    # Nested fragments: a slider move redraws them for the new plan (no stale figures or
    # files); their own buttons rerun only themselves.
    int8_fragment()
    save_fragment()
    export_fragment()
    plan_download_ui()


UPLOAD_SEEN_KEY = "plan_upload_seen"


def plan_download_ui() -> None:
    """Download the plan as JSON. Inside the fragment that the sliders rerun: outside it, the
    button would keep the plan of the last full page run."""
    st.markdown("#### Plan file")
    plan = ui.current_plan()
    st.download_button(
        "Download plan (JSON)",
        plan.to_json(),
        file_name=file_name_for(plan, "plan"),
        mime="application/json",
    )


def plan_file_ui() -> None:
    """Upload a plan as JSON (a bad file gives an error, the plan stays); its download is
    drawn inside the workbench fragment (``plan_download_ui``)."""
    cols = st.columns(2)
    upload = cols[0].file_uploader(
        "Upload a plan (JSON)",
        type=["json"],
        key="plan_upload",
        max_upload_size=MAX_PLAN_UPLOAD_MB,
    )
    if upload is None:
        return
    if st.session_state.get(UPLOAD_SEEN_KEY, (None,))[0] != upload.file_id:
        try:
            plan = PruningPlan.from_json(upload.getvalue())
        except ValueError as err:
            st.session_state[UPLOAD_SEEN_KEY] = (upload.file_id, f"error:{err}")
        else:
            adopted = ui.set_plan(plan)
            st.session_state[UPLOAD_SEEN_KEY] = (upload.file_id, "loaded" if adopted else "")
            if adopted:
                st.toast(f"Plan loaded from {upload.name}.", icon=":material/check_circle:")
                st.rerun()
            ui.show_notices()
    outcome = st.session_state[UPLOAD_SEEN_KEY][1]
    if outcome == "loaded":
        cols[0].success(f"Loaded {upload.name}: it is the current plan.")
    elif outcome.startswith("error:"):
        cols[0].error(f"{upload.name} is not a usable plan: {outcome[6:]}")


# --- prune + quantize ----------------------------------------------------------------------------

INT8_REQUEST_KEY = "int8_request"
INT8_MEASURED_KEY = "int8_measured"  # (subject, plan) pairs measured in this session


def _int8_key(plan: PruningPlan) -> tuple[str, str]:
    return ui.current_model(), plan.to_json(indent=None)


def _request_int8() -> None:
    st.session_state[INT8_REQUEST_KEY] = True


def int8_measured(plan: PruningPlan) -> ui.Int8Report | None:
    """The int8 figures of ``plan`` on the current subject if this session measured them."""
    key = _int8_key(plan)
    if key not in st.session_state.get(INT8_MEASURED_KEY, set()):
        return None
    return ui.int8_figures(*key)  # cached: no second measurement


def _int8_frame(report: ui.Int8Report) -> pd.DataFrame:
    """Dense fp32, pruned fp32 and pruned int8 as rows: accuracy, bytes, latency per batch."""
    forms = {
        "dense": "dense fp32",
        report.form: f"pruned fp32 ({report.form})",
        "int8": "pruned int8",
    }
    accuracy = {
        "dense": report.dense_accuracy,
        report.form: report.fp32_accuracy,
        "int8": report.int8_accuracy,
    }
    size = {"dense": report.dense_bytes, report.form: report.fp32_bytes, "int8": report.int8_bytes}
    rows = []
    for form, title in forms.items():
        row = {"model": title, "accuracy": accuracy[form] * 100, "size": size[form]}
        for timing in report.latency:
            if timing["model"] == form:
                row[f"ms, batch {timing['batch']}"] = timing["median_ms"]
        rows.append(row)
    return pd.DataFrame(rows)


def _int8_verdict(report: ui.Int8Report, batch: int = 1) -> str:
    row = next(
        (r for r in report.speed if r["batch"] == batch and r["against"] == report.form), None
    )
    return "not timed" if row is None else row["summary"]


@st.fragment
def int8_fragment() -> None:
    """Measuring the int8 variant reruns only this section."""
    ui.guarded(int8_ui)


def int8_ui() -> None:
    """The pruned model with int8 weights next to its fp32 self: accuracy, size, latency, and
    the combined reduction against dense fp32."""
    st.markdown("#### Prune + quantize (int8)")
    plan = ui.current_plan()
    if st.session_state.pop(INT8_REQUEST_KEY, False):
        with st.spinner("Quantizing, evaluating on every eval image and timing…"):
            ui.int8_figures(*_int8_key(plan))
        st.session_state.setdefault(INT8_MEASURED_KEY, set()).add(_int8_key(plan))
    report = int8_measured(plan)
    cols = st.columns([3, 1], vertical_alignment="bottom")
    cols[0].caption(
        "Weight-only int8: every Linear and Conv2d weight stored as int8 with one scale per "
        "output channel (BatchNorm folded in first), computed in fp32. Pruned zeros stay zero."
    )
    cols[1].button(
        "Quantize and measure" if report is None else "Measured",
        key="int8_button",
        on_click=_request_int8,
        disabled=report is not None,
        icon=":material/compress:",
        width="stretch",
        help="Quantize the current plan's deployable model (compacted if structured, else "
        "masked), evaluate it on every eval image and time it next to fp32 and dense.",
    )
    if report is None:
        return
    tiles = st.columns(4)
    tiles[0].metric(
        "int8 accuracy",
        f"{report.int8_accuracy:.2%}",
        **ui.metric_change(report.accuracy_delta * 100, ".2f", " pts vs fp32"),
        help=f"{report.changed:,} of {report.eval_samples:,} eval predictions differ from the "
        "pruned fp32 model's.",
    )
    tiles[1].metric(
        "int8 size",
        human_bytes(report.int8_bytes),
        f"{report.int8_reduction:.1f}× smaller than fp32",
        delta_color="off",
        delta_arrow="off",
        help="torch.save of the int8 state_dict (int8 codes, fp32 scales and biases).",
    )
    sparse = (
        f" With the zeros stored as a bitmap: {report.combined_sparse_reduction:.1f}×."
        if report.combined_sparse_reduction is not None
        else ""
    )
    tiles[2].metric(
        "Combined reduction",
        f"{report.combined_reduction:.1f}× smaller",
        help="Dense fp32 bytes / pruned int8 bytes: pruning and int8 together, the number "
        f"people quote.{sparse}",
    )
    tiles[3].metric(
        "int8 latency, batch 1",
        _int8_verdict(report),
        help="Against the pruned fp32 model, timed in the same rounds. Dequantizing each "
        "weight on every call is extra work on a CPU: int8 here buys size, not speed.",
    )
    st.dataframe(
        _int8_frame(report),
        hide_index=True,
        width="stretch",
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.2f%%"),
            "size": st.column_config.NumberColumn("size on disk", format="bytes"),
            **{f"ms, batch {b}": st.column_config.NumberColumn(format="%.3f") for b in (1, 32)},
        },
    )
    left = report.layers_left_fp32
    st.caption(
        "Layers left fp32: "
        + (", ".join(f"{row['name']} ({row['reason']})" for row in left) if left else "none")
        + ". Saving this experiment now keeps these figures too; the Export section writes "
        "the int8 program."
    )


# --- save this experiment ---------------------------------------------------------------------

SAVE_NAME_KEY = "save_name"
SAVE_NOTE_KEY = "save_note"
SAVE_REPLACE_KEY = "save_replace"  # one per name: a tick for one name never replaces another
SAVE_REQUEST_KEY = "save_request"
#: The page's latency tile: batch 1 and the verdict batch, timed once per architecture.
SAVE_LATENCY = {"batch_sizes": (1, VERDICT_BATCH), "repeats": 12, "budget_s": 0.12}


def _replace_key(name: str) -> str:
    return f"{SAVE_REPLACE_KEY}::{name.strip()}"


def _request_save() -> None:
    """The Save button: what the user typed, handled by the next draw (with a spinner)."""
    name = st.session_state.get(SAVE_NAME_KEY, "")
    st.session_state[SAVE_REQUEST_KEY] = (
        name,
        st.session_state.get(SAVE_NOTE_KEY, ""),
        bool(st.session_state.get(_replace_key(name), False)),
    )


def _experiment_metrics(bench: ui.Workbench, plan: PruningPlan) -> tuple[dict, str]:
    """The numbers to save for ``plan`` (``from_report``) with the latency the page timed
    (kept per architecture, so normally not timed again), and a few words on the latency."""
    int8 = int8_measured(plan)
    metrics = from_report(bench.report(plan), int8.metrics() if int8 is not None else None)
    try:
        timings, _ = bench.latency_by_architecture(bench.resolve(plan), **SAVE_LATENCY)
    except Exception as err:  # a timing failure must not cost the user the save
        return metrics, f"latency was not stored (it could not be timed: {err})"
    # The rows as Workbench.report writes them, so that the CLI and the CSV read them alike.
    metrics["latency"] = [{**asdict(t), "spread_ms": t.spread_ms} for t in timings]
    return metrics, f"latency as timed on this machine (batch 1 and {VERDICT_BATCH})"


def _save(name: str, note: str, replace: bool) -> tuple[str, str]:
    """Save the current subject and plan with their numbers: ("success" | "error" |
    "exists", message)."""
    try:
        name = check_name(name)
        experiments = default_experiments()
        bench, plan = ui.current_workbench(), ui.current_plan()
        with st.spinner("Measuring this plan for the record…"):
            metrics, latency = _experiment_metrics(bench, plan)
        saved = experiments.save(
            name, ui.current_subject(), plan, metrics, note.strip(), replace=replace
        )
    except ExperimentExists:
        return "exists", (
            f"Not saved: an experiment named '{ui.plain(name)}' exists already. Choose another "
            "name, or tick Replace to overwrite it."
        )
    except ExperimentsError as err:
        return "error", f"Not saved: {err}."
    delta = (saved.metrics["accuracy"] - saved.metrics["dense_accuracy"]) * 100
    return "success", (
        f"Saved '{ui.plain(saved.name)}'{' (replaced the old one)' if replace else ''}: "
        f"{plan_label(plan)}, accuracy {saved.metrics['accuracy']:.2%} ({delta:+.2f} pts vs "
        f"dense), {latency}."
    )


def _saved_named(name: str) -> Experiment | None:
    """The saved experiment called exactly ``name`` (not an id), if any."""
    return next((e for e in default_experiments().list() if e.name == name), None)


@st.fragment
def save_fragment() -> None:
    """Typing a name or saving reruns only this section."""
    ui.guarded(save_ui)


def save_ui() -> None:
    """Name (and note) the current plan on this model and keep it with its numbers; the
    Compare page lists what was saved."""
    st.markdown("#### Save this experiment")
    request = st.session_state.pop(SAVE_REQUEST_KEY, None)
    outcome = _save(*request) if request is not None else None
    if outcome is not None and outcome[0] == "success":
        # Saved: the fields are free for the next one (what they held is in the database).
        st.session_state[SAVE_NAME_KEY] = ""
        st.session_state[SAVE_NOTE_KEY] = ""
        st.toast("Experiment saved.", icon=":material/check_circle:")
    cols = st.columns([2, 3, 1], vertical_alignment="bottom")
    name = cols[0].text_input(
        "Name",
        key=SAVE_NAME_KEY,
        max_chars=MAX_NAME_LENGTH,
        placeholder="e.g. fc-heavy 80%",
        help="A unique name for this subject, plan and its numbers (accuracy, loss, FLOPs, "
        "sizes, latency); the Compare page lists every saved experiment.",
    )
    cols[1].text_input(
        "Note (optional)",
        key=SAVE_NOTE_KEY,
        max_chars=MAX_NOTE_LENGTH,
        help="Anything worth remembering about this experiment.",
    )
    cols[2].button(
        "Save",
        key="save_button",
        on_click=_request_save,
        icon=":material/bookmark_add:",
        width="stretch",
        help="Measure the current plan on all eval images and save it under this name.",
    )
    try:
        taken = _saved_named(name.strip()) if name.strip() else None
    except ExperimentsError as err:
        if outcome is None:  # a failed save says it already
            st.error(f"The saved experiments cannot be used: {err}.")
        taken = None
    if taken is not None:
        if outcome is None or outcome[0] != "exists":
            st.warning(
                f"An experiment named '{ui.plain(taken.name)}' exists already (saved "
                f"{taken.created[:16].replace('T', ' ')} UTC, {plan_label(taken.plan)}). "
                "Choose another name, or tick Replace to overwrite it."
            )
        st.checkbox(
            f"Replace the saved '{ui.plain(taken.name)}'",
            key=_replace_key(taken.name),
            help="Saving then deletes the old experiment of this name and keeps this one.",
        )
    if outcome is None:
        return
    kind, message = outcome
    if kind == "success":
        st.success(message)
        st.page_link("pages/compare.py", label="Compare saved experiments", icon=ICON_COMPARE)
    else:
        st.error(message)


ICON_COMPARE = ":material/compare_arrows:"


# --- export ------------------------------------------------------------------------------------

EXPORT_FORMAT_KEY = "export_format"
EXPORT_REQUEST_KEY = "export_request"
EXPORT_BUILT_KEY = "export_built"
MIME = {".json": "application/json", ".py": "text/x-python", ".zip": "application/zip"}


@dataclass(frozen=True)
class BuiltFile:
    """An exported file ready to download, and what it was built from."""

    subject: str
    plan: PruningPlan
    file_name: str
    data: bytes
    note: str
    disk_bytes: int
    files: tuple[str, ...]
    #: What the model expects and returns, as JSON (its own download); "" for no model.
    preprocessing_name: str = ""
    preprocessing: bytes = b""


def file_name_for(plan: PruningPlan, fmt: str) -> str:
    """Model, plan and format, as the CLI names them: ``resnet18_filters30.onnx`` (an upload
    by the name it was uploaded as)."""
    return export_file_name(model_stem(ui.current_subject(), ui.upload_names()), plan, fmt)


def build_export(bench: ui.Workbench, plan: PruningPlan, fmt: str) -> BuiltFile:
    """Export ``plan`` as ``fmt`` into a temporary folder and read it back; several files (a
    snippet and its masks) come as one zip, the preprocessing JSON apart. Raises
    ``ExportError``."""
    name = file_name_for(plan, fmt) if fmt in FORMATS else fmt
    with tempfile.TemporaryDirectory(prefix="pruning-explorer-export-") as folder:
        result = export(bench, plan, fmt, Path(folder) / name)
        paths = [Path(p) for p in result.files]
        sidecar = Path(result.sidecar) if result.sidecar else None
        try:
            if len(paths) == 1:
                data = paths[0].read_bytes()
            else:
                name = Path(name).stem + ".zip"
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                    for path in paths:
                        archive.write(path, path.name)
                data = buffer.getvalue()
            preprocessing = sidecar.read_bytes() if sidecar is not None else b""
        except OSError as err:
            raise ExportError(f"the exported file cannot be read back: {err}") from None
    return BuiltFile(
        ui.current_model(),
        plan,
        name,
        data,
        result.note,
        result.bytes,
        tuple(p.name for p in paths),
        sidecar.name if sidecar is not None else "",
        preprocessing,
    )


def _request_export() -> None:
    st.session_state[EXPORT_REQUEST_KEY] = st.session_state.get(EXPORT_FORMAT_KEY)


def _format_label(name: str) -> str:
    return f"{FORMATS[name].title} ({FORMATS[name].suffix})"


@st.fragment
def export_fragment() -> None:
    """Choosing a format or building a file reruns only this section."""
    ui.guarded(export_ui)


def export_ui() -> None:
    """The current plan on the current model as a file to download, in a chosen format."""
    st.markdown("#### Export")
    bench, plan = ui.current_workbench(), ui.current_plan()
    failed = ""
    request = st.session_state.pop(EXPORT_REQUEST_KEY, None)
    if request is not None:
        title = FORMATS[request].title if request in FORMATS else request
        try:
            with st.spinner(f"Building the {title} file…"):
                st.session_state[EXPORT_BUILT_KEY] = build_export(bench, plan, request)
        except ExportError as err:
            st.session_state.pop(EXPORT_BUILT_KEY, None)
            failed = str(err)
    names = formats_for(plan.method)
    if st.session_state.get(EXPORT_FORMAT_KEY) not in names:  # another method: other formats
        st.session_state[EXPORT_FORMAT_KEY] = names[0]
    cols = st.columns([3, 1], vertical_alignment="bottom")
    fmt = cols[0].selectbox(
        "Format",
        names,
        key=EXPORT_FORMAT_KEY,
        format_func=_format_label,
        help="The formats this plan's method can be written in:\n\n"
        + "\n".join(f"- **{FORMATS[n].title}**: {FORMATS[n].help}" for n in names),
    )
    cols[1].button(
        "Build the file",
        key="export_button",
        on_click=_request_export,
        icon=":material/build:",
        width="stretch",
        help="Write the current plan on this model in the chosen format, to download.",
    )
    st.caption(f"{FORMATS[fmt].title}: {FORMATS[fmt].help}.")
    if failed:
        st.error(f"Could not export: {failed}.")
    built: BuiltFile | None = st.session_state.get(EXPORT_BUILT_KEY)
    if built is None:
        return
    if built.subject != ui.current_model() or built.plan != plan:
        st.caption(
            f"{built.file_name} was built for another plan or model: build the file again "
            "for this one."
        )
        return
    zipped = (
        f" A zip of {' and '.join(built.files)}: keep them side by side."
        if len(built.files) > 1
        else ""
    )
    st.success(
        f"{built.file_name} is ready ({plan_label(built.plan)}), "
        f"{human_bytes(built.disk_bytes)} on disk: {built.note}.{zipped}"
    )
    st.download_button(
        f"Download {built.file_name}",
        built.data,
        file_name=built.file_name,
        mime=MIME.get(Path(built.file_name).suffix, "application/octet-stream"),
        key="export_download",
        on_click="ignore",
        type="primary",
        icon=":material/download:",
    )
    if built.preprocessing_name:
        st.download_button(
            f"Download {built.preprocessing_name}",
            built.preprocessing,
            file_name=built.preprocessing_name,
            mime="application/json",
            key="export_preprocessing",
            on_click="ignore",
            icon=":material/download:",
            help="What the model expects and returns: input shape, channels, size, mean, std, "
            "class names, logits or log-probabilities (ONNX, pt2 and TorchScript files also "
            "carry it inside).",
        )


def main() -> None:
    st.title("Prune")
    workbench_fragment()
    plan_file_ui()


ui.run_page(main)
