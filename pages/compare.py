"""Compare: the saved experiments side by side, accuracy against a cost with its Pareto front;
load one back onto the sliders, delete one, or take them all away as CSV."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

import pandas as pd
import streamlit as st

from explorer.app import ui
from explorer.engine.latency import SpeedComparison
from explorer.engine.methods import short_plan_label
from explorer.engine.pruning import plan_label
from explorer.engine.summary import SideBySide, time_side_by_side
from explorer.keep.experiments import (
    Experiment,
    ExperimentsError,
    ExperimentStore,
    csv_text,
    default_experiments,
)
from explorer.keep.pareto import (
    AXES,
    LATENCY_BATCH,
    Point,
    deployed_bytes,
    latency_speed,
    pareto_figure,
    speed_up,
    stored_verdict,
)

ALL = ""  # the subject filter's "every subject"
SUBJECT_KEY = "cmp_subject"
AXIS_KEY = "cmp_axis"
RETIMED_KEY = "cmp_retimed"  # the last side-by-side timing: (experiment ids, rows)
#: Repeats of a side-by-side timing, and the seconds it may take per subject.
RETIME_REPEATS, RETIME_BUDGET_S = 20, 20.0


def _label(experiment: Experiment, short: bool = False) -> str:
    try:
        return (short_plan_label if short else plan_label)(experiment.plan)
    except ValueError:  # a method or criterion this installation does not know
        return f"{experiment.plan.method}, {experiment.plan.amount:.0%}"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _when(created: str) -> datetime | None:
    """The UTC time of an ISO 8601 text, without its zone (the column says UTC)."""
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:  # a file edited by hand: the row stays, without its time
        return None


def _int8_columns(int8: object) -> dict[str, float | None]:
    """The int8 variant's accuracy, size and combined reduction, when it was measured."""
    figures = int8 if isinstance(int8, dict) else {}
    accuracy = _number(figures.get("accuracy"))
    return {
        "int8 accuracy": None if accuracy is None else accuracy * 100,
        "int8 ×": _number(figures.get("combined_reduction")),
    }


def table_frame(experiments: list[Experiment]) -> pd.DataFrame:
    """One row per experiment: what the table shows (numbers stay numbers, to sort by)."""
    rows = []
    for e in experiments:
        m = e.metrics
        accuracy, dense = _number(m.get("accuracy")), _number(m.get("dense_accuracy"))
        sparsity, size = _number(m.get("prunable_sparsity")), deployed_bytes(m)
        rows.append(
            {
                "name": e.name,
                "saved": _when(e.created),
                "subject": e.subject.label,
                "plan": _label(e, short=True),
                "accuracy": None if accuracy is None else accuracy * 100,
                "Δ vs dense": None
                if accuracy is None or dense is None
                else (accuracy - dense) * 100,
                "sparsity": None if sparsity is None else sparsity * 100,
                "FLOPs": _number(m.get("flops_effective")),
                "size": size,
                "speed-up": speed_up(latency_speed(m)),
                **_int8_columns(m.get("int8")),
            }
        )
    return pd.DataFrame(rows)


INT8_COLUMNS = ("int8 accuracy", "int8 ×")
INT8_MISSING = (
    f" {ui.MISSING}: not measured (saved without its int8 variant: tick the int8 comparison "
    "on the Prune page before saving)."
)
#: Widths that keep every column on a laptop's page (1280 px, sidebar open) with all subjects
#: and the int8 columns shown: long texts wrap onto the rows' lines instead.
COLUMNS = {
    "name": st.column_config.TextColumn(width=86, help="The name it was saved under."),
    "saved": st.column_config.DatetimeColumn(
        "saved (UTC)", format="MM-DD HH:mm", width=85, help="When it was saved, UTC."
    ),
    "subject": st.column_config.TextColumn(
        width=96, help="The model, weights and data it was measured on."
    ),
    "plan": st.column_config.TextColumn(
        width=124,
        help="The amount and what it counts (weights, filters / neurons, heads, blocks), "
        "the criterion and the scope; select the row for the plan in full.",
    ),
    "accuracy": st.column_config.NumberColumn(
        "accuracy", format="%.2f%%", width=70, help="Top-1 on every held-out eval image."
    ),
    "Δ vs dense": st.column_config.NumberColumn(
        "Δ pts",
        format="%+.2f",
        width=50,
        help="Accuracy minus the dense model's, in percentage points.",
    ),
    "sparsity": st.column_config.NumberColumn(
        format="%.1f%%", width=62, help="Zero weights among the prunable layers' weights."
    ),
    "FLOPs": st.column_config.NumberColumn(
        format="compact",
        width=50,
        help="Effective FLOPs per image: multiply-adds with a nonzero weight.",
    ),
    "size": st.column_config.NumberColumn(
        format="bytes",
        width=58,
        help="torch.save of the compacted model (structured plans), else the sparse "
        "encoding; KB and MB are 10³ and 10⁶ bytes.",
    ),
    "speed-up": st.column_config.NumberColumn(
        "speed-up",
        format="%.2f×",
        width=64,
        help=f"Dense ms / this plan's ms per batch of {LATENCY_BATCH} (deployable model: "
        "compacted if structured, else masked), both timed in the same rounds when it was "
        "saved: 1.29× = 1.29 times faster. Each row's pair was measured at a different time, "
        "so compare rows by this ratio, not by milliseconds (they are beside the selected row, "
        "and Re-time side by side times all rows at once). 1.00× for a masked plan: it runs "
        f"the dense kernels. {ui.MISSING}: no latency, or no dense timing, was stored.",
    ),
    "int8 accuracy": st.column_config.NumberColumn(
        "int8 acc.",
        format="%.2f%%",
        width=66,
        help="Accuracy of the pruned model with int8 weights." + INT8_MISSING,
    ),
    "int8 ×": st.column_config.NumberColumn(
        "int8 ×",
        format="%.1f×",
        width=52,
        help="Combined reduction: dense fp32 bytes / pruned int8 bytes (how many times "
        "smaller the pruned int8 model is than the dense fp32 one)." + INT8_MISSING,
    ),
}
#: Rows this tall let a long plan label wrap onto a second line instead of being cut.
ROW_HEIGHT = 66


def csv_file_name(subject_label: str) -> str:
    """``experiments.csv``, or with the one subject shown: ``experiments-lenet5.csv``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", subject_label).strip("-.")[:40]
    return f"experiments-{slug}.csv" if slug else "experiments.csv"


def open_store() -> ExperimentStore | None:
    """The experiments database, or None after showing why it cannot be used."""
    try:
        return default_experiments()
    except ExperimentsError as err:
        st.error(f"The saved experiments cannot be read: {err}.")
        return None


def subject_filter_ui(experiments: list[Experiment]) -> str:
    """Every subject, or one: its key (``ALL`` for every one)."""
    labels: dict[str, str] = {}
    for e in experiments:
        labels.setdefault(e.subject.key, e.subject.label)
    counts = {key: sum(e.subject.key == key for e in experiments) for key in labels}
    options = [ALL, *labels] if len(labels) > 1 else list(labels)
    if st.session_state.get(SUBJECT_KEY) not in options:  # its experiments were deleted
        st.session_state[SUBJECT_KEY] = ALL
    return st.selectbox(
        "Subject",
        options,
        key=SUBJECT_KEY,
        format_func=lambda k: (
            f"all subjects ({len(experiments)})" if k == ALL else f"{labels[k]} ({counts[k]})"
        ),
        help="Show the experiments of one model, weights and data only. Accuracies of "
        "different subjects do not compete: each has its own Pareto front.",
    )


def table_ui(shown: list[Experiment]) -> Experiment | None:
    """The experiments as a sortable table; returns the one selected, if any."""
    # A new key whenever the rows change (a delete, another filter): a selection is a row
    # position, and must never point at another experiment.
    digest = hashlib.sha256("".join(e.id for e in shown).encode()).hexdigest()[:12]
    frame = table_frame(shown)
    # A column that says the same on every row says it once, above the table.
    hidden = ["subject"] if frame["subject"].nunique() <= 1 else []
    hidden += ["speed-up"] if frame["speed-up"].isna().all() else []
    int8_hidden = [c for c in INT8_COLUMNS if frame[c].isna().all()]
    # With int8 figures the table would be wider than a laptop's page: the date gives way
    # (it is in the CSV and under the table for the experiment selected).
    hidden += int8_hidden + (["saved"] if len(int8_hidden) < len(INT8_COLUMNS) else [])
    selection = st.dataframe(
        frame,
        key=f"cmp_table::{digest}",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        row_height=ROW_HEIGHT,
        column_config=COLUMNS,
        placeholder=ui.MISSING,
        column_order=[c for c in frame.columns if c not in hidden],
    )
    rows = selection.selection.rows
    return shown[rows[0]] if rows and rows[0] < len(shown) else None


def scatter_ui(shown: list[Experiment]) -> None:
    """Accuracy against a chosen cost, one Pareto front per subject."""
    cols = st.columns([1, 3], vertical_alignment="bottom")
    axis_name = cols[0].selectbox(
        "Against",
        list(AXES),
        key=AXIS_KEY,
        help="What to set accuracy against: "
        + "; ".join(f"**{name}**: {axis.help}" for name, axis in AXES.items())
        + ".",
    )
    axis = AXES[axis_name]
    points = [
        Point(
            e.name,
            e.subject.label,
            axis.value(e.metrics),
            _number(e.metrics.get("accuracy")),
            f"{e.subject.label} · {_label(e)}",
        )
        for e in shown
    ]
    missing = [ui.plain(p.name) for p in points if p.x is None or p.accuracy is None]
    better = "more" if axis.maximize else "less"
    cols[1].caption(
        f"Diamonds joined by a dashed line: the Pareto front, the experiments that no other "
        f"one of the same subject beats on both accuracy and {axis_name} ({better} is better)."
    )
    if len(missing) == len(points):
        st.info(f"No shown experiment has a {axis_name} stored: choose another axis.")
        return
    dense = {
        e.subject.label: e.metrics["dense_accuracy"]
        for e in shown
        if _number(e.metrics.get("dense_accuracy")) is not None
    }
    st.plotly_chart(pareto_figure(points, axis, dense), config={"displayModeBar": False})
    if missing:
        st.caption(
            f"Not drawn, no {axis_name} stored: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + "."
        )


def latency_words(experiment: Experiment) -> str:
    """The latency saved with an experiment, in words: its milliseconds beside the dense
    model's from the same rounds, marked as measured at its own time."""
    verdict = stored_verdict(experiment.metrics)
    if verdict is None:
        return "No latency against dense was stored with it."
    spread = f"per-round ratios {verdict.speed.low:.2f}–{verdict.speed.high:.2f}×"
    return (
        f"Latency as saved, batch {LATENCY_BATCH}: {verdict.form} {verdict.timed.median_ms:.3g} "
        f"ms against dense {verdict.dense.median_ms:.3g} ms in the same rounds "
        f"({verdict.speed.summary()}; {spread}). Measured at a different time than the other "
        "experiments: their milliseconds do not compare, their speed-ups do."
    )


def retime_ui(shown: list[Experiment]) -> None:
    """Time every shown plan and its dense model in the same rounds, on request."""
    ids = tuple(e.id for e in shown)
    row = st.container(horizontal=True, vertical_alignment="center")
    if row.button(
        "Re-time side by side",
        key="cmp_retime",
        icon=":material/timer:",
        help=f"Time the deployable model of every experiment listed and its dense model now, "
        f"in the same rounds (batch {LATENCY_BATCH}, up to {RETIME_BUDGET_S:.0f} s per "
        "subject): milliseconds that compare across rows.",
    ):
        with st.spinner("Timing every listed plan and its dense model, side by side…"):
            st.session_state[RETIMED_KEY] = (ids, retimed_rows(shown))
    kept = st.session_state.get(RETIMED_KEY)
    if kept is None or kept[0] != ids:
        row.caption(
            "Each speed-up pairs a plan with its dense model timed in the same rounds, when it "
            "was saved. Re-time side by side to time every listed plan now, in one run."
        )
        return
    st.dataframe(
        pd.DataFrame(kept[1]),
        hide_index=True,
        placeholder=ui.MISSING,
        column_config={
            "ms": st.column_config.NumberColumn(
                f"ms / batch of {LATENCY_BATCH}",
                format="%.3g",
                help="Median over the rounds of this one measurement.",
            ),
            "speed-up": st.column_config.NumberColumn(
                format="%.2f×",
                help="Dense ms / this plan's ms, per round of the same measurement. "
                f"{ui.MISSING}: the dense model itself.",
            ),
            "verdict": st.column_config.TextColumn(
                help="As the Prune page says it: a difference inside ±5% is noise."
            ),
        },
    )
    st.caption("Timed just now, every plan of a subject in the same rounds as its dense model.")


def retimed_rows(shown: list[Experiment]) -> list[dict[str, object]]:
    """One row per dense model and per experiment, timed subject by subject."""
    rows: list[dict[str, object]] = []
    by_subject: dict[str, list[Experiment]] = {}
    for e in shown:
        by_subject.setdefault(e.subject.to_json(), []).append(e)
    for subject_json, group in by_subject.items():
        label = group[0].subject.label
        try:
            bench = ui.get_workbench(subject_json)
            timing: SideBySide = time_side_by_side(
                bench,
                {e.id: e.plan for e in group},
                LATENCY_BATCH,
                RETIME_REPEATS,
                RETIME_BUDGET_S,
            )
        except (ValueError, OSError, RuntimeError) as err:
            rows.append({"subject": label, "name": "(not timed)", "verdict": str(err)})
            continue
        rows.append({"subject": label, "name": "dense", "ms": timing.dense.median_ms})
        for e in group:
            speed: SpeedComparison = timing.speed[e.id]
            rows.append(
                {
                    "subject": label,
                    "name": e.name,
                    "ms": timing.timed[e.id].median_ms,
                    "speed-up": speed_up(speed),
                    "verdict": speed.summary(),
                }
            )
    return rows


def selected_ui(store: ExperimentStore, chosen: Experiment | None) -> None:
    """Load the selected experiment onto the sliders, or delete it."""
    if chosen is None:
        st.caption(
            "Select a row (the box at its left) to load it onto the sliders or to delete it. "
            "Click a column's header to sort by it."
        )
        return
    saved = chosen.created[:16].replace("T", " ")
    st.markdown(
        f"**{ui.plain(chosen.name)}** · {ui.plain(chosen.subject.label)} · {_label(chosen)} · "
        f"saved {saved} UTC"
    )
    if chosen.note:
        st.caption(ui.plain(chosen.note))
    st.caption(latency_words(chosen))
    row = st.container(horizontal=True, vertical_alignment="center")
    if row.button(
        "Load onto the sliders",
        key="cmp_load",
        type="primary",
        icon=":material/content_cut:",
        help="Make this experiment's model and plan the current ones and open the Prune page.",
    ):
        if ui.load_state(chosen.subject, chosen.plan):
            ui.notify(
                f"Loaded '{ui.plain(chosen.name)}': its model and plan are the current ones.",
                "info",
            )
            st.switch_page("pages/prune.py")
        ui.show_notices()  # why not
    # The confirmation first in the code (the button's state depends on it), drawn after it.
    delete_slot, confirm_slot = row.empty(), row.empty()
    confirm = confirm_slot.checkbox(
        "Yes, delete it",
        key=f"cmp_confirm::{chosen.id}",
        help="Deleting cannot be undone: tick this first.",
    )
    if delete_slot.button(
        "Delete",
        key="cmp_delete",
        icon=":material/delete:",
        disabled=not confirm,
        help="Remove this experiment from the database (tick 'Yes, delete it' first).",
    ):
        try:
            store.delete(chosen.id)
        except ExperimentsError as err:
            st.error(f"Not deleted: {err}.")
            return
        ui.notify(f"Deleted '{ui.plain(chosen.name)}'.", "success")
        st.rerun()


def main() -> None:
    st.title("Compare")
    st.write(
        "Every saved experiment: which plan buys the most sparsity, speed or size for the "
        "accuracy it costs?"
    )
    ui.plan_summary_ui()
    store = open_store()
    if store is None:
        return
    try:
        experiments = store.list()
    except ExperimentsError as err:
        st.error(f"The saved experiments cannot be read: {err}.")
        return
    if not experiments:
        st.info(
            "No experiment saved yet. On the Prune page, set a plan, then give it a name "
            "under **Save this experiment** at the bottom and press Save: it appears here. "
            f"(Saved in {store.path}; the CLI's `eval … --save NAME` saves there too.)"
        )
        st.page_link("pages/prune.py", label="Open the Prune page", icon=":material/content_cut:")
        return
    top = st.columns([3, 1], vertical_alignment="bottom")
    with top[0]:
        subject = subject_filter_ui(experiments)
    shown = [e for e in experiments if subject == ALL or e.subject.key == subject]
    text, count = csv_text(store, subject or None)
    top[1].download_button(
        "Download CSV",
        text,
        file_name=csv_file_name(shown[0].subject.label if subject != ALL else ""),
        mime="text/csv",
        key="cmp_csv",
        on_click="ignore",
        icon=":material/download:",
        help=f"The {count} shown experiment{'s' if count != 1 else ''} with all their numbers, "
        "subject and plan as JSON (enough to measure them again).",
        width="stretch",
    )
    chosen = table_ui(shown)
    selected_ui(store, chosen)
    retime_ui(shown)
    st.markdown("#### Accuracy against cost")
    scatter_ui(shown)


ui.run_page(main)
