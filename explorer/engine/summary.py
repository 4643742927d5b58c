"""What the headline metrics of a pruned model are, as plain data: the quality of an evaluation
(complete, or a preview on its first chunks), the footprint (compacted model, bytes on disk),
and the latency verdict. The prune page only formats these into tiles; the CLI's report takes
its footprint from the same place (``Workbench.footprint``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from explorer.engine.cost import SizeReport
from explorer.engine.evaluation import IncrementalResult
from explorer.engine.latency import (
    Latency,
    SpeedComparison,
    compare_speed,
    measure_latency,
    same_architecture,
)
from explorer.engine.plan import PruningPlan

if TYPE_CHECKING:  # the workbench builds on this module
    from explorer.engine.workbench import Workbench

#: The batch size of the latency tile: where a smaller model's speed-up shows, unlike batch 1.
VERDICT_BATCH = 32


def flipped_estimate(changed: int, covered: int, total: int) -> int:
    """Predictions that differ from the dense model's on all ``total`` samples, estimated from
    ``changed`` among the ``covered`` ones: a preview's chunks stride through the whole split,
    so its share of flips scales up. Exact once ``covered == total``."""
    if not 0 < covered <= total:
        raise ValueError(f"need 0 < covered <= total, got {covered} of {total}")
    return round(changed * total / covered)


@dataclass(frozen=True)
class Quality:
    """Accuracy, loss and flipped predictions of a pruned model against the dense one, both on
    the same ``covered`` of the ``total`` eval samples.

    Attributes:
        changed: covered samples whose predicted class differs from the dense model's.
        interval: where the accuracy on all ``total`` samples lies (95%); a point once complete.
        finite: False when the pruned model produced NaN or infinite outputs.
    """

    accuracy: float
    dense_accuracy: float
    loss: float
    dense_loss: float
    changed: int
    covered: int
    total: int
    interval: tuple[float, float]
    finite: bool

    @classmethod
    def of(cls, outcome: IncrementalResult) -> Quality:
        """The quality of one step of an incremental evaluation (any step, the last too)."""
        result, dense = outcome.result, outcome.dense
        return cls(
            accuracy=result.accuracy,
            dense_accuracy=dense.accuracy,
            loss=result.loss,
            dense_loss=dense.loss,
            changed=len(result.changed_vs(dense)),
            covered=outcome.covered,
            total=outcome.total,
            interval=outcome.accuracy_interval(),
            finite=result.finite,
        )

    @property
    def complete(self) -> bool:
        """Whether every eval sample is covered (else this is a preview)."""
        return self.covered == self.total

    @property
    def flipped(self) -> int:
        """Changed predictions on all eval samples (estimated while a preview)."""
        return flipped_estimate(self.changed, self.covered, self.total)


def progressive(
    steps: Iterable[IncrementalResult],
    started: float,
    preview_after_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[IncrementalResult]:
    """The steps of an incremental evaluation worth showing: partial ones only once
    ``preview_after_s`` seconds have passed since ``started`` (``clock``'s time), so a fast pass
    draws its numbers once; the complete step always, last.

    Each step a caller draws is also where an interactive app can abandon a stale pass, so a
    slow pass yields every chunk after the first preview.
    """
    for outcome in steps:
        if outcome.complete:
            yield outcome
            return
        if clock() - started >= preview_after_s:
            yield outcome


def runs_dense_kernels(compacted: nn.Module | None, dense: nn.Module) -> bool:
    """Whether the deployable form of a plan runs the dense model's very kernels: a masked
    model (nothing compacted) multiplies its zeros through them; so does a compacted one that
    lost no unit. Such a model is the same speed by construction, whatever a timing says."""
    return compacted is None or same_architecture(compacted, dense)


@dataclass(frozen=True)
class Footprint:
    """What a plan costs once it leaves the tool.

    Attributes:
        compacted: the physically smaller model of a structured plan, else None.
        sizes: bytes of ``torch.save`` for the dense, sparse-encoded and compacted forms.
        same_kernels: the deployable form runs the dense kernels (``runs_dense_kernels``).
        not_compacted: why a structured plan has no compacted model (its forward fixes a
            width the plan changes), else None.
    """

    compacted: nn.Module | None
    sizes: SizeReport
    same_kernels: bool
    not_compacted: str | None = None

    @property
    def deployed_bytes(self) -> int:
        """Bytes of the smallest form one would ship: compacted if there is one, else the
        sparse encoding."""
        return self.sizes.compacted if self.sizes.compacted is not None else self.sizes.sparse


@dataclass(frozen=True)
class LatencyVerdict:
    """The latency tile: the fastest deployable form against dense, timed in the same rounds.

    Attributes:
        form: ``"compacted"`` when the plan has a compacted model, else ``"masked"``.
        dense, timed: the dense model's and that form's timing at the verdict's batch size.
        speed: ``timed`` against ``dense``; equal by construction when ``same_kernels``.
    """

    form: str
    dense: Latency
    timed: Latency
    speed: SpeedComparison
    same_kernels: bool


def timings_from_rows(rows: Iterable[object]) -> list[Latency]:
    """Latency rows as an experiment stores them (``asdict`` of each ``Latency``, plus
    ``spread_ms``) back as ``Latency``; anything that is not such a row is skipped."""
    names = {f.name for f in dataclasses.fields(Latency)}
    timings = []
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        try:
            values: dict[str, Any] = {k: v for k, v in row.items() if k in names}
            for key in ("samples_ms", "notes"):
                values[key] = tuple(values.get(key) or ())
            timings.append(Latency(**values))
        except TypeError:  # a field missing: a row edited by hand
            continue
    return timings


def latency_verdict(
    timings: Sequence[Latency], same_kernels: bool, batch: int = VERDICT_BATCH
) -> LatencyVerdict:
    """The verdict at ``batch`` from one measurement of dense, masked and (structured plans)
    compacted models (``Workbench.latency``)."""
    by_key = {(t.model, t.batch): t for t in timings}
    if ("dense", batch) not in by_key:
        raise ValueError(f"no dense timing at batch {batch} to compare with")
    form = "compacted" if ("compacted", batch) in by_key else "masked"
    dense, timed = by_key[("dense", batch)], by_key[(form, batch)]
    speed = compare_speed(dense, timed, same_kernels=same_kernels)
    return LatencyVerdict(form, dense, timed, speed, same_kernels)


def against_dense(
    timings: Sequence[Latency], same_kernels: bool
) -> list[tuple[Latency, SpeedComparison | None]]:
    """Every timing with its comparison to dense at the same batch size (None for dense itself).

    ``same_kernels`` says whether the compacted model (if any) runs the dense kernels; the
    masked model always does (its zeros sit inside dense tensors), so it is never claimed
    faster or slower than dense, whatever the timer said.
    """
    dense = {t.batch: t for t in timings if t.model == "dense"}
    return [
        (
            t,
            None
            if t.model == "dense"
            else compare_speed(dense[t.batch], t, same_kernels or t.model == "masked"),
        )
        for t in timings
    ]


@dataclass(frozen=True)
class SideBySide:
    """Dense and several plans timed in the same rounds (``time_side_by_side``).

    Attributes:
        dense: the dense model's timing.
        timed: key -> the deployable form's timing (compacted, else masked).
        speed: key -> that timing against ``dense`` (same kernels: equal by construction).
    """

    dense: Latency
    timed: dict[str, Latency]
    speed: dict[str, SpeedComparison]


def time_side_by_side(
    bench: Workbench,
    plans: Mapping[str, PruningPlan],
    batch: int = VERDICT_BATCH,
    repeats: int = 20,
    budget_s: float | None = None,
) -> SideBySide:
    """Time the deployable form of every plan (compacted if it has one, else masked) and the
    dense model in the same rounds of one measurement, so that every ratio and every median
    shares the machine's mood of that moment. ``plans``: key -> plan (a key is not "dense")."""
    if "dense" in plans:
        raise ValueError('"dense" names the dense model: key the plans otherwise')
    models: dict[str, nn.Module] = {"dense": bench.model}
    same: dict[str, bool] = {}
    for key, plan in plans.items():
        state = bench.resolve(plan)
        compacted, _ = bench.compacted(state)
        models[key] = compacted if compacted is not None else bench.pruner.pruned_model(state)
        same[key] = runs_dense_kernels(compacted, bench.model)
    timings = measure_latency(
        models, bench.eval_set.input_shape, (batch,), repeats=repeats, budget_s=budget_s
    )
    by_name = {t.model: t for t in timings}
    dense = by_name["dense"]
    timed = {key: by_name[key] for key in plans}
    speed = {key: compare_speed(dense, t, same[key]) for key, t in timed.items()}
    return SideBySide(dense, timed, speed)


def human_bytes(n: float) -> str:
    """A size for people: 812 B, 25 KB, 353.1 KB, 27.7 MB, 1.4 GB. Decimal units (1 MB = 10⁶
    bytes) with at most one decimal: the digits a table's ``format="bytes"`` column shows, so
    a size reads the same in a tile, a caption and a table."""
    value, unit = float(n), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if round(value, 1) < 1000:
            break
        value, unit = value / 1000, bigger
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def three_digits(x: float) -> str:
    """A measured value to 3 significant digits, trailing zeros kept (7.00, 12.3, 143): "7"
    would claim less precision than 7.04 and look unlike its neighbours."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def short_count(n: int) -> str:
    """A count short enough for a metric tile: 9,999 / 121.5k / 12.35M."""
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e3:.1f}k" if n < 1_000_000 else f"{n / 1e6:.2f}M"


def short_flops(n: int) -> str:
    """FLOPs for a metric tile: 833.0 k / 20.16 M / 1.82 G."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if n < 100 * scale else f"{n / scale:.1f} {unit}"
    return f"{n:,}"
