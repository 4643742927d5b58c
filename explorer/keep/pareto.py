"""Comparing saved experiments: the Pareto front of accuracy against a cost, the costs one can
put on the x axis, and the scatter the Compare page draws.

An experiment is on the front when no other one is at least as accurate *and* at least as
cheap (or as sparse), and strictly better in one of the two. Everything here works on the
plain metrics ``explorer.keep.experiments.from_report`` saves; nothing runs a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import plotly.graph_objects as go

from explorer.engine.latency import SpeedComparison, compare_speed
from explorer.engine.summary import LatencyVerdict, latency_verdict, timings_from_rows
from explorer.plots.common import DENSE_COLOR, PRUNED_COLOR, SERIES_COLORS, compact_layout

#: The batch size whose latency the comparison shows (the Prune page's verdict batch).
LATENCY_BATCH = 32


def _finite(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def pareto_front(
    points: Sequence[tuple[float | None, float | None]], maximize_x: bool = False
) -> list[int]:
    """Indices of the points (x, y) that no other point dominates, by ascending x.

    ``y`` (accuracy) is better when higher; ``x`` is better when lower (a cost: FLOPs, bytes,
    milliseconds) or, with ``maximize_x``, when higher (sparsity). A point dominates another
    when it is at least as good in both and strictly better in one, so two identical points are
    both on the front. A point with a missing or non-finite coordinate is never on it.
    """
    sign = -1.0 if maximize_x else 1.0
    usable = [
        (sign * float(x), float(y), i)
        for i, (x, y) in enumerate(points)
        if _finite(x) and _finite(y)
    ]
    # Best first: cheapest, then most accurate. A point is dominated exactly when some earlier
    # point (other than its own duplicates) is at least as accurate.
    usable.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[int] = []
    best = -math.inf
    for (_, y), same in groupby(usable, key=lambda p: (p[0], p[1])):
        if y > best:
            front += [i for _, _, i in same]
            best = y
    return sorted(front, key=lambda i: (float(points[i][0]), i))  # type: ignore[arg-type]


# --- what goes on the x axis -------------------------------------------------------------------


def deployed_bytes(metrics: Mapping[str, Any]) -> float | None:
    """Bytes of the smallest form one would ship: the compacted model if the plan has one,
    else the sparse encoding (what the Prune page's Size shows)."""
    size = metrics.get("size_compacted")
    if not _finite(size):
        size = metrics.get("size_sparse")
    return float(size) if _finite(size) else None


def latency_ms(metrics: Mapping[str, Any], batch: int = LATENCY_BATCH) -> float | None:
    """Median ms per forward pass at ``batch`` of the deployable form (compacted, else masked),
    or None when no latency was stored at that batch size."""
    rows = [r for r in metrics.get("latency") or [] if isinstance(r, Mapping)]
    for form in ("compacted", "masked"):
        for row in rows:
            if row.get("model") == form and row.get("batch") == batch:
                value = row.get("median_ms")
                return float(value) if _finite(value) else None
    return None


def stored_verdict(metrics: Mapping[str, Any], batch: int = LATENCY_BATCH) -> LatencyVerdict | None:
    """The latency tile of the Prune page as it was when the experiment was saved: the
    deployable form against the dense model timed in the *same* rounds; None without both
    timings at ``batch``. A masked plan, or a compacted one that lost no unit, runs the dense
    kernels: the same speed by construction."""
    timings = timings_from_rows(metrics.get("latency") or [])
    try:
        verdict = latency_verdict(timings, same_kernels=False, batch=batch)
    except (ValueError, KeyError):  # no dense row, or no deployable form, at this batch
        return None
    compacted = metrics.get("params_compacted")
    same = verdict.form == "masked" or (
        compacted is not None and compacted == metrics.get("params_total")
    )
    speed = compare_speed(verdict.dense, verdict.timed, same_kernels=same)
    return dataclasses.replace(verdict, speed=speed, same_kernels=same)


def latency_speed(metrics: Mapping[str, Any], batch: int = LATENCY_BATCH) -> SpeedComparison | None:
    """``stored_verdict``'s speed against dense. Unlike ``latency_ms`` it compares across
    experiments: every ratio has its own dense baseline, so a slow spell of the machine during
    one save does not make that plan look slower than another's."""
    verdict = stored_verdict(metrics, batch)
    return None if verdict is None else verdict.speed


def speed_up(speed: SpeedComparison | None) -> float | None:
    """How many times faster than dense, as a table or an axis shows it: 1 for the same
    kernels (equal by construction, whatever the timer said), else the paired ratio."""
    if speed is None:
        return None
    return 1.0 if speed.same_kernels else speed.ratio


def _metric(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(metrics: Mapping[str, Any]) -> float | None:
        value = metrics.get(name)
        return float(value) if _finite(value) else None

    return read


@dataclass(frozen=True)
class Axis:
    """A quantity to set accuracy against.

    Attributes:
        title: the axis title; scale: factor from the stored value to the one drawn;
        maximize: more is better (sparsity), else less is (a cost);
        hover: the value's format in the tooltip (plotly d3 format, drawn units);
        tickformat: the ticks' d3 format ("" = plotly's choice);
        suffix: the unit written after every tick and hovered value ("B" after an SI prefix
        format: "27.7MB").
    """

    title: str
    value: Callable[[Mapping[str, Any]], float | None]
    maximize: bool = False
    scale: float = 1.0
    hover: str = ",.3g"
    help: str = ""
    tickformat: str = ""
    suffix: str = ""


AXES: dict[str, Axis] = {
    "sparsity": Axis(
        "sparsity of prunable weights (%)",
        _metric("prunable_sparsity"),
        maximize=True,
        scale=100.0,
        hover=".1f",
        help="zero weights among the prunable layers' weights; more is better",
    ),
    "FLOPs": Axis(
        "effective FLOPs per image",
        _metric("flops_effective"),
        hover=",.4s",
        help="multiply-adds with a nonzero weight, 2 FLOPs each; fewer is better",
    ),
    "speed-up": Axis(
        "speed-up over dense (timed in the same rounds)",
        lambda metrics: speed_up(latency_speed(metrics)),
        maximize=True,
        hover=".2f",
        suffix="×",
        help=f"dense ms / the deployable model's ms at batch {LATENCY_BATCH}, both timed in the "
        "same rounds when it was saved, so experiments saved at different times compare; "
        "more is better",
    ),
    "latency": Axis(
        f"latency at batch {LATENCY_BATCH} (ms)",
        latency_ms,
        hover=".3g",
        help=f"median ms per batch of {LATENCY_BATCH} of the deployable model (compacted if "
        "structured, else masked), measured when each was saved, each at a different time "
        "(the machine's load differs: prefer the speed-up); fewer is better",
    ),
    "size": Axis(
        "size on disk",
        deployed_bytes,
        hover=".3~s",
        tickformat="~s",
        suffix="B",
        help="bytes of torch.save of the compacted model, else the sparse encoding "
        "(KB, MB: 10³, 10⁶ bytes); fewer is better",
    ),
}


# --- the figure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One experiment on the scatter: its name, a group (the subject: fronts are per group,
    as accuracies of different models and data do not compete), and its two values."""

    name: str
    group: str
    x: float | None
    accuracy: float | None
    detail: str = ""


def pareto_figure(
    points: Sequence[Point], axis: Axis, dense: Mapping[str, float] | None = None
) -> go.Figure:
    """Accuracy (y) against ``axis`` (x): one colour per group, its Pareto front joined by a
    line and drawn as diamonds, the other experiments as circles. ``dense``: a group's dense
    accuracy, drawn as a dotted line when only one group is shown."""
    fig = go.Figure()
    groups = list(dict.fromkeys(p.group for p in points))
    for g, group in enumerate(groups):
        members = [p for p in points if p.group == group and _finite(p.x) and _finite(p.accuracy)]
        if not members:
            continue
        color = SERIES_COLORS[g % len(SERIES_COLORS)]
        front = pareto_front([(p.x, p.accuracy) for p in members], axis.maximize)
        on_front, indices = set(front), range(len(members))
        fig.add_trace(
            go.Scatter(
                x=[members[i].x * axis.scale for i in front],
                y=[members[i].accuracy * 100 for i in front],
                mode="lines",
                line={"color": color, "width": 1.5, "dash": "dash"},
                name=f"{group}: Pareto front",
                hoverinfo="skip",
                showlegend=len(groups) > 1,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[p.x * axis.scale for p in members],
                y=[p.accuracy * 100 for p in members],
                mode="markers",
                name=group,
                marker={
                    "color": [color if i in on_front else PRUNED_COLOR for i in indices],
                    "symbol": ["diamond" if i in on_front else "circle" for i in indices],
                    "size": [13 if i in on_front else 9 for i in indices],
                    "line": {"color": "white", "width": 1},
                },
                customdata=[
                    [p.name, p.detail, "on the Pareto front" if i in on_front else "dominated"]
                    for i, p in enumerate(members)
                ],
                hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]}<br>"
                f"{axis.title}: %{{x:{axis.hover}}}{axis.suffix}<br>accuracy %{{y:.2f}}%<br>"
                "%{customdata[2]}<extra></extra>",
            )
        )
    if dense and len(groups) == 1 and groups[0] in dense:
        fig.add_hline(
            y=dense[groups[0]] * 100,
            line_dash="dot",
            line_color=DENSE_COLOR,
            annotation_text="dense",
            annotation_position="bottom left",
        )
    fig.update_xaxes(title=axis.title, tickformat=axis.tickformat, ticksuffix=axis.suffix)
    fig.update_yaxes(title="eval accuracy (%)")
    fig.update_layout(
        legend={"orientation": "h", "y": -0.25, "yanchor": "top"},
        showlegend=len(groups) > 1,
    )
    fig = compact_layout(fig, 380 + (24 * len(groups) if len(groups) > 1 else 0))
    if len(groups) > 1:  # room for the legend below the plot
        fig.update_layout(margin={"b": 10 + 24 * len(groups)})
    return fig


__all__ = [
    "AXES",
    "LATENCY_BATCH",
    "Axis",
    "Point",
    "deployed_bytes",
    "latency_ms",
    "latency_speed",
    "pareto_figure",
    "pareto_front",
    "speed_up",
    "stored_verdict",
]
