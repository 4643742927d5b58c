"""Prune: method, criterion, scope, a global slider and one per layer; live, honest numbers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pandas as pd
import streamlit as st

from explorer import ui
from explorer.compaction import can_compact, compact
from explorer.cost import ModelCost, model_cost, size_report
from explorer.evaluation import IncrementalResult
from explorer.importance import CRITERIA, criteria_for
from explorer.latency import HONEST_NOTE
from explorer.plan import PruningPlan
from explorer.plots import curve_figure, layer_sparsity_figure
from explorer.pruning import METHODS

CURVE_AMOUNTS = tuple(a / 20 for a in range(20))  # 0%, 5%, ... 95%


# --- callbacks: widgets write the plan, the plan is the only truth ------------------------------


def _layer_key(kind: str, unit: str, plan: PruningPlan) -> str:
    """Key of a per-layer widget, versioned by the plan.

    A per-layer slider shows a *derived* value (the layer's actual sparsity, which the global
    ranking moves). Writing such values into session state races with fast interactions: an
    interrupted rerun leaves the browser showing stale values, which it sends back as if the
    user had set them. A fresh key per plan gives fresh widgets that start at their ``value=``.
    """
    return f"{kind}::{ui.current_model()}::{plan.method}::{unit}::{hash(plan) & 0xFFFFFFFF:08x}"


def _on_controls() -> None:
    plan = ui.current_plan()
    data = plan.to_dict() | {
        "method": st.session_state["ctl_method"],
        "criterion": st.session_state["ctl_criterion"],
        "scope": st.session_state["ctl_scope"],
    }
    bench = ui.current_workbench()
    new, dropped = bench.pruner.adapt(PruningPlan.from_dict(data))
    if new.method != plan.method:
        usable = criteria_for(METHODS[new.method].unit_kind)
        if new.criterion not in usable:
            new = PruningPlan.from_dict(new.to_dict() | {"criterion": "magnitude"})
    if dropped:
        ui.notify(
            f"Per-layer settings of {', '.join(dropped)} do not apply to "
            f"{METHODS[new.method].title} and were cleared.",
            "info",
        )
    ui.set_plan(new)


RENDERED_KEY = "prune_rendered_layer_values"


def _rendered(key: str, value: object) -> object:
    """Remember the value the server drew a per-layer widget with; returns it."""
    st.session_state.setdefault(RENDERED_KEY, {})[key] = value
    return value


def _user_changed(kind: str, unit: str, key: str) -> bool:
    """Whether a per-layer event is a user's change rather than the browser echoing a value.

    Widgets registered in a rerun that a newer event interrupted have no committed state, so
    the browser sending their values back looks like a change. An echo carries exactly the
    value the server drew the widget with, for the current plan or an earlier one (a plan can
    come back, e.g. the global slider moved right then left); a user's drag never does.
    """
    drawn = st.session_state.get(RENDERED_KEY, {})
    return key == _layer_key(kind, unit, ui.current_plan()) and (
        key in drawn and st.session_state[key] != drawn[key]
    )


def _on_layer(unit: str, key: str) -> None:
    if not _user_changed("amount", unit, key):
        return
    value = st.session_state[key] / 100
    ui.set_plan(ui.current_plan().with_layer(unit, value))


def _on_dense(unit: str, key: str) -> None:
    if not _user_changed("dense", unit, key):
        return
    dense = st.session_state[key]
    ui.set_plan(ui.current_plan().with_dense(unit, dense))


def _reset_layer(unit: str) -> None:
    ui.set_plan(ui.current_plan().without_layer(unit).with_dense(unit, False))


def _reset_all() -> None:
    plan = ui.current_plan()
    ui.set_plan(PruningPlan(method=plan.method, criterion=plan.criterion, scope=plan.scope))


def _global_everywhere() -> None:
    ui.set_plan(ui.current_plan().with_global_everywhere())


# --- the workbench --------------------------------------------------------------------------------


def controls_ui(bench: ui.Workbench, plan: PruningPlan) -> None:
    methods = ui.usable_methods(bench)
    method = METHODS[plan.method]
    criteria = criteria_for(method.unit_kind)
    ui.sync_widget("ctl_method", plan.method)
    ui.sync_widget("ctl_criterion", plan.criterion)
    ui.sync_widget("ctl_scope", plan.scope if method.supports_global else "layer")
    cols = st.columns([3, 3, 2, 4])
    cols[0].selectbox(
        "Method",
        methods,
        key="ctl_method",
        on_change=_on_controls,
        format_func=lambda m: METHODS[m].title,
        help=ui.HELP["method"] + " " + method.help,
    )
    cols[1].selectbox(
        "Criterion",
        criteria,
        key="ctl_criterion",
        on_change=_on_controls,
        format_func=lambda c: CRITERIA[c].title,
        help=ui.HELP["criterion"] + " " + CRITERIA[plan.criterion].help,
    )
    cols[2].radio(
        "Scope",
        ["global", "layer"],
        key="ctl_scope",
        on_change=_on_controls,
        horizontal=True,
        disabled=not method.supports_global,
        format_func=lambda s: "Global" if s == "global" else "Layer-wise",
        help=ui.HELP["scope"],
    )
    with cols[3]:
        ui.global_amount_ui("ctl_amount")


def layer_sliders_ui(plan: PruningPlan, state: ui.PrunedState) -> None:
    sparsity = state.unit_sparsity()
    units = state.units
    st.session_state[RENDERED_KEY] = {}  # only widgets of this render can count as changed
    st.markdown(
        "**Per channel group**"
        if plan.method in ("filters", "channels")
        else "**Per attention module**"
        if plan.method == "heads"
        else "**Per layer**"
    )
    buttons = st.columns(2)
    buttons[0].button(
        "Global everywhere",
        on_click=_global_everywhere,
        width="stretch",
        icon=":material/public:",
        help="Drop every per-layer setting: all layers follow the global slider.",
    )
    buttons[1].button(
        "Reset all",
        on_click=_reset_all,
        width="stretch",
        icon=":material/restart_alt:",
        help="Back to the dense model (method, criterion and scope are kept).",
    )
    with st.container(height=min(86 * len(units) + 10, 520), border=False):
        for unit in units:
            own = unit.name in plan.overrides
            dense = unit.name in plan.dense_layers
            amount_key = _layer_key("amount", unit.name, plan)
            dense_key = _layer_key("dense", unit.name, plan)
            tag = (
                "dense"
                if dense
                else (
                    "own setting"
                    if own
                    else ("global ranking" if plan.scope == "global" else "global amount")
                )
            )
            cols = st.columns([8, 2, 1], vertical_alignment="bottom")
            coupled = (
                f" Coupled, pruned together: {', '.join(unit.layers)}."
                if len(unit.layers) > 1
                else ""
            )
            cols[0].slider(
                f"{unit.name} · {unit.size:,} {unit.kind} · {tag}",
                0,
                100,
                value=_rendered(amount_key, round(sparsity[unit.name] * 100)),
                step=1,
                key=amount_key,
                on_change=_on_layer,
                args=(unit.name, amount_key),
                disabled=dense,
                format="%d%%",
                help="Drag to give this layer its own amount; it then leaves the "
                "global ranking." + coupled,
            )
            cols[1].checkbox(
                ":material/lock:",
                value=_rendered(dense_key, dense),
                key=dense_key,
                on_change=_on_dense,
                args=(unit.name, dense_key),
                help="Lock this layer dense: never pruned.",
            )
            cols[2].button(
                "",
                icon=":material/restart_alt:",
                key=f"reset::{ui.current_model()}::{plan.method}::{unit.name}",
                on_click=_reset_layer,
                args=(unit.name,),
                disabled=not (own or dense),
                help="Reset: follow the global setting again.",
            )


# A pass still running after this many seconds shows its first chunk's numbers meanwhile.
PREVIEW_AFTER_S = float(os.environ.get("PRUNING_EXPLORER_PREVIEW_AFTER_S", "0.12"))


class MetricsRow:
    """The headline metrics: quality ones (redrawn as evaluation refines), cost ones, latency."""

    def __init__(self, bench: ui.Workbench, state: ui.PrunedState, cost: ModelCost) -> None:
        self.bench, self.state, self.cost = bench, state, cost
        row = st.columns(8)
        self.quality = [cell.empty() for cell in row[:3]]
        for cell, label in zip(self.quality, ("Accuracy", "Loss", "Flipped"), strict=True):
            cell.metric(label, "…", help="Being evaluated.")  # holds the layout meanwhile
        self.compacted = compact(bench.pruner, state) if can_compact(state.plan.method) else None
        self._cost_metrics(row[3:7])
        self.latency = row[7].empty()
        self.latency.metric("Latency", "…", help="Timed once the numbers are on screen.")
        self.status = st.empty()
        self.alerts = st.container()

    def show_quality(self, outcome: IncrementalResult) -> None:
        """Accuracy, loss and flips; marked ≈ while they cover only the first chunks."""
        result, dense = outcome.result, outcome.dense
        # a preview carries one digit less: its sampling error is about +-0.3 points
        approx, digits = ("", 2) if outcome.complete else ("≈", 1)
        on = (
            f"the {outcome.total:,} held-out eval images"
            if outcome.complete
            else f"a preview: {outcome.covered:,} of the {outcome.total:,} eval images, "
            "spread over the split; the dense model on the same ones"
        )
        self.quality[0].metric(
            "Accuracy",
            f"{approx}{result.accuracy * 100:.{digits}f}%",
            f"{(result.accuracy - dense.accuracy) * 100:+.2f} pts",
            help=f"Top-1 on {on} (dense {dense.accuracy:.2%}).",
        )
        self.quality[1].metric(
            "Loss",
            f"{approx}{result.loss:.{digits + 2}f}",
            f"{result.loss - dense.loss:+.4f}",
            delta_color="inverse",
            help=f"Mean cross-entropy on {on}.",
        )
        changed = len(result.changed_vs(dense))
        estimate = round(changed * outcome.total / outcome.covered)
        self.quality[2].metric(
            "Flipped",
            f"{approx}{estimate:,}",
            help="Eval predictions changed: images whose predicted class differs from the "
            "dense model's; browse them on the Activations and Saliency pages."
            + ("" if outcome.complete else f" Estimated from {changed:,} in the preview."),
        )

    def _cost_metrics(self, row: list) -> None:
        cost, state = self.cost, self.state
        sizes = size_report(self.bench.model, state, self.compacted)
        row[0].metric(
            "Sparsity",
            f"{cost.prunable_sparsity:.1%}",
            help=f"Zero weights in prunable layers; {cost.sparsity:.1%} of all "
            "parameters (biases and norms included).",
        )
        row[1].metric(
            "Nonzero",
            _count(cost.params_nonzero),
            f"of {_count(cost.params_total)}",
            delta_color="off",
            delta_arrow="off",
            help=f"Parameters that are not zero: {cost.params_nonzero:,} of {cost.params_total:,}.",
        )
        row[2].metric(
            "FLOPs",
            f"{cost.flops_effective / 1e6:.2f} M",
            f"{cost.flops_effective / cost.flops_dense:.0%} of dense",
            delta_color="off",
            delta_arrow="off",
            help="Effective FLOPs per image: multiply-adds with a nonzero weight (dense "
            f"{cost.flops_dense / 1e6:.2f} M). Dense kernels still do all of them.",
        )
        row[3].metric(
            "Size",
            f"{(sizes.compacted or sizes.sparse) / 1024:,.0f} KiB",
            f"of {sizes.dense / 1024:,.0f} KiB dense",
            delta_color="off",
            delta_arrow="off",
            help="Bytes of torch.save: "
            + (
                f"the compacted model ({sizes.compacted / 1024:,.0f} KiB); "
                if self.compacted
                else ""
            )
            + f"sparse-encoded, zeros as a bitmap + values ({sizes.sparse / 1024:,.0f} KiB); "
            f"dense ({sizes.dense / 1024:,.0f} KiB).",
        )

    def evaluate(self, started: float, meanwhile: Callable[[], None]) -> IncrementalResult:
        """Run the evaluation chunk by chunk. A slow one shows its first chunk's numbers
        (marked ≈) and its progress; every update is also where a newer slider value
        interrupts this run, so dragging never waits for a stale pass to finish.

        ``meanwhile`` draws what does not depend on the evaluation: called once, right after
        the preview (the browser lays it out while the rest is evaluated), else at the end.
        """
        bench = self.bench
        total = len(bench.eval_set)
        previewed = False
        for outcome in bench.evaluator.steps_for_state(self.state):
            if outcome.complete:
                break
            if time.perf_counter() - started < PREVIEW_AFTER_S:
                continue
            if not previewed:
                self.show_quality(outcome)
                previewed = True
                meanwhile()
            self.status.caption(f"Refining on all eval images… {outcome.covered:,} of {total:,}")
        self.show_quality(outcome)
        if not previewed:
            meanwhile()
        self.status.caption(
            f"Re-evaluated in {time.perf_counter() - started:.2f} s"
            + (
                f" (resumed at stage {outcome.resumed_from} of {outcome.stages})"
                if outcome.resumed_from
                else " (full pass)"
            )
            + f" on {total:,} eval images."
        )
        if not outcome.result.finite:
            self.alerts.error(
                "The pruned model produces NaN or infinite outputs: its loss is undefined and "
                "its predictions are arbitrary. Prune less, or lock a layer dense."
            )
        for warning in self.state.warnings:
            self.alerts.warning(warning)
        return outcome


def _count(n: int) -> str:
    """A count short enough for a metric tile: 9,999 / 121.5k / 12.35M."""
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e3:.1f}k" if n < 1_000_000 else f"{n / 1e6:.2f}M"


def latency_metric(cell: object, timings: list, compacted: bool, cached: bool) -> None:
    by_key = {(t.model, t.batch): t for t in timings}
    dense32 = by_key[("dense", 32)]
    fastest = by_key.get(("compacted", 32), by_key[("masked", 32)])
    cell.metric(
        "Latency",
        f"{fastest.median_ms:.3g} ms",
        f"{dense32.median_ms / fastest.median_ms:.2f}x dense",
        delta_color="off",
        delta_arrow="off",
        help=f"Batch of 32, {'compacted' if compacted else 'masked'} model, median ms "
        f"(dense {dense32.median_ms:.2f} ms)"
        + (", timed earlier for this same architecture" if cached else "")
        + ". "
        + ui.HELP["latency"],
    )


def details_ui(metrics: MetricsRow) -> None:
    bench, state, compacted = metrics.bench, metrics.state, metrics.compacted
    layer_table_ui(state, metrics.cost)
    timings, cached = bench.latency_by_architecture(
        state,
        compacted,
        batch_sizes=(1, 32),
        repeats=12,
        budget_s=0.12,
        between=_interruptible(metrics.latency),
    )
    latency_metric(metrics.latency, timings, compacted is not None, cached)
    with st.expander("Latency details", expanded=False):
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "model": t.model,
                        "batch": t.batch,
                        "median ms": round(t.median_ms, 3),
                        "IQR ms": round(t.spread_ms, 3),
                        "runs": t.repeats,
                        "threads": t.threads,
                    }
                    for t in timings
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        st.caption(
            HONEST_NOTE
            + (
                " Timings are reused while the timed architecture (layer shapes) is unchanged."
                if cached
                else ""
            )
            + (
                " This plan is structured, so the compacted model is physically smaller."
                if compacted is not None
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
                "FLOPs effective": layer.flops_effective,
            }
            for layer in cost.layers
        ]
    )
    own = set(state.plan.overrides)
    tabs = st.tabs(["Per-layer table", "Sparsity by layer"])
    with tabs[0]:
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            column_config={
                "sparsity": st.column_config.ProgressColumn(
                    format="percent", min_value=0.0, max_value=1.0
                )
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


def curve_ui(bench: ui.Workbench, plan: PruningPlan, here: tuple[float, float]) -> None:
    """The accuracy-vs-sparsity sweep; ``here`` = (sparsity, accuracy) of the current plan."""
    st.markdown("#### Accuracy vs sparsity")
    show = st.toggle(
        "Show the curve for this method, criterion and scope",
        key="show_curve",
        help=f"Sweeps the global slider from 0 to 95% ({len(CURVE_AMOUNTS)} full evaluations, "
        "computed once per plan shape and kept) and marks where this plan stands.",
    )
    if not show:
        return
    key = (
        ui.current_model(),
        PruningPlan.from_dict(plan.to_dict() | {"amount": 0}).to_json(indent=None),
    )
    # Points are kept one by one, so a run interrupted by another change resumes where it was.
    points = st.session_state.setdefault("curve_points", {}).setdefault(key, {})
    missing = [amount for amount in CURVE_AMOUNTS if amount not in points]
    if missing:
        bar = st.progress(0.0, text="Evaluating…")
        for done, amount in enumerate(missing, start=1):
            points[amount] = bench.curve(plan, [amount])[0]
            bar.progress(done / len(missing), text=f"Evaluating… {done}/{len(missing)}")
        bar.empty()
    curve = [points[amount] for amount in CURVE_AMOUNTS]
    label = f"{METHODS[plan.method].title}, {plan.criterion}, {plan.scope}"
    st.plotly_chart(
        curve_figure(
            [p[0] for p in curve], [p[1] for p in curve], here, bench.dense.accuracy, label
        ),
        config={"displayModeBar": False},
    )


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
    left, right = st.columns([2, 3], gap="large")

    def sliders() -> None:
        with left:
            layer_sliders_ui(plan, state)

    outcome = metrics.evaluate(started, sliders)
    with right:
        details_ui(metrics)
    curve_ui(bench, plan, (cost.prunable_sparsity, outcome.result.accuracy))


def plan_file_ui() -> None:
    """Download the plan as JSON; upload one (a bad file gives an error, the plan stays)."""
    st.markdown("#### Plan file")
    cols = st.columns(2)
    cols[0].download_button(
        "Download plan (JSON)",
        ui.current_plan().to_json(),
        file_name=f"plan-{ui.current_model()}.json",
        mime="application/json",
    )
    upload = cols[1].file_uploader("Upload a plan (JSON)", type=["json"], key="plan_upload")
    if upload is not None and st.session_state.get("plan_upload_seen") != upload.file_id:
        st.session_state["plan_upload_seen"] = upload.file_id
        try:
            plan = PruningPlan.from_json(upload.getvalue())
        except ValueError as err:
            st.error(f"{upload.name} is not a usable plan: {err}")
            return
        if ui.set_plan(plan):
            st.success(f"Loaded {upload.name}.")
            st.rerun()
        ui.show_notices()


def main() -> None:
    st.title("Prune")
    workbench_fragment()
    plan_file_ui()


ui.run_page(main)
