"""Engine benchmarks: how fast a plan change becomes fresh metrics, and what compaction buys.

Per sample model, on the eval split (5,000 MNIST images), on the CPU:

1. floor: the bare dense forward pass over the eval split (``predict``);
2. FULL: a plan change on the first prunable layer, ``resolve`` + ``evaluate_state`` (metrics
   included): the evaluator has to restart at the first stage with parameters;
3. INCREMENTAL: a change of the last prunable layer's amount only (layer-wise scope), with an
   amount the pruner has never seen ("new") and with one it has ("revisited");
4. a naive ``copy.deepcopy`` + ``torch.nn.utils.prune.global_unstructured`` + full evaluation,
   next to our global magnitude plan change with the same amount;
5. latency of compacted ``filters`` models next to their FLOP reduction.

Scenarios are interleaved round by round (order rotated each round) so that load from other
processes hits them alike; figures are medians over the rounds and ratios are ratios of those
medians (the ratio of the best rounds is printed next to it: on a loaded machine it is the
better estimate of the intrinsic cost). Benchmarks print figures; they never assert.

    .venv/bin/python benchmarks/engine.py [--models resnet_mini lenet5] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from explorer.engine.compaction import compact
from explorer.engine.evaluation import (
    EvalResult,
    IncrementalEvaluator,
    IncrementalResult,
    evaluate,
    predict,
)
from explorer.engine.inspection import model_flops
from explorer.engine.latency import measure_latency
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState, Pruner
from explorer.engine.workbench import Workbench, open_workbench
from explorer.zoo.mnist import ImageDataset
from explorer.zoo.models import ZOO, weights_path

GOAL_FULL = 1.2  # FULL plan change -> metrics, at most this many floors
GOAL_INCREMENTAL = 0.3  # INCREMENTAL plan change -> metrics, at most this many floors
GOAL_EFFICIENCY = 0.8  # compacted speed-up / FLOP ratio, resnet_mini at batch 32
BASE_AMOUNT = 0.5  # layer-wise amount of every layer in the FULL / INCREMENTAL base plan
REVISITED = (0.6, 0.8)  # amounts the "revisited" scenario alternates between
GLOBAL_START = 0.5  # figure 4: the global amount starts here ...
GLOBAL_STEP = 0.01  # ... and moves one point per call, like a slider
FILTER_AMOUNTS = (0.25, 0.5, 0.75)
LATENCY_BUDGET_S = 4.0  # per amount and batch size: measure_latency stops repeating after this


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Series:
    """One timed scenario: a callable taking the call number, and what it measured."""

    label: str
    run: Callable[[int], IncrementalResult | EvalResult | torch.Tensor]
    times_ms: list[float] = field(default_factory=list)
    resumed: list[tuple[int, int]] = field(default_factory=list)
    last: IncrementalResult | EvalResult | torch.Tensor | None = None
    calls: int = 0

    def call(self, record: bool) -> None:
        """Run the scenario once (fresh garbage, timed); keep the time if ``record``."""
        gc.collect()
        began = time.perf_counter()
        outcome = self.run(self.calls)
        elapsed = (time.perf_counter() - began) * 1000
        self.calls += 1
        self.last = outcome
        if not record:
            return
        self.times_ms.append(elapsed)
        if isinstance(outcome, IncrementalResult):
            self.resumed.append((outcome.resumed_from, outcome.stages))

    @property
    def median_ms(self) -> float:
        """Median of the recorded times."""
        return statistics.median(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range of the recorded times (0 for fewer than two)."""
        if len(self.times_ms) < 2:
            return 0.0
        quartiles = statistics.quantiles(self.times_ms, n=4)
        return quartiles[2] - quartiles[0]

    def resumed_text(self) -> str:
        """Stages the evaluator resumed at, ``k/stages`` or ``lo..hi/stages`` (``-`` if none)."""
        if not self.resumed:
            return "-"
        starts = [start for start, _ in self.resumed]
        low, high, stages = min(starts), max(starts), self.resumed[0][1]
        return f"{low}/{stages}" if low == high else f"{low}..{high}/{stages}"


def ratio(numerator: Series, denominator: Series) -> float:
    """Median time of ``numerator`` over median time of ``denominator`` (measured side by side)."""
    return numerator.median_ms / denominator.median_ms


def best_ratio(numerator: Series, denominator: Series) -> float:
    """Best (fastest) time of ``numerator`` over best time of ``denominator``."""
    return min(numerator.times_ms) / min(denominator.times_ms)


def run_interleaved(series: Sequence[Series], warmup: int, repeats: int) -> None:
    """Run every scenario once per round, rotating the order; the first rounds are warm-up."""
    for round_index in range(warmup + repeats):
        shift = round_index % len(series)
        for one in [*series[shift:], *series[:shift]]:
            one.call(record=round_index >= warmup)


def fresh_amounts(
    size: int, needed: int, reserved: set[int], low: float = 0.1, high: float = 0.45
) -> list[float]:
    """``needed`` amounts for a unit of ``size`` elements, each a distinct unseen pruned count."""
    pool = [k for k in range(1, size) if k not in reserved]
    inside = [k for k in pool if low * size <= k <= high * size]
    source = inside if len(inside) >= needed else pool
    if len(source) < needed:
        raise ValueError(f"a unit of {size} elements has fewer than {needed} fresh amounts")
    step = len(source) / needed
    return [source[int(i * step)] / size for i in range(needed)]


def naive_prune_evaluate(model: nn.Module, dataset: ImageDataset, amount: float) -> EvalResult:
    """Deep copy, torch's global L1 unstructured pruning of all Linear/Conv2d weights, evaluate."""
    pruned = copy.deepcopy(model)
    params = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return evaluate(pruned.eval(), dataset)


def accuracy_of(outcome: object) -> float:
    """Accuracy of an ``EvalResult`` or ``IncrementalResult`` (nan for anything else)."""
    if isinstance(outcome, IncrementalResult):
        return outcome.result.accuracy
    return outcome.accuracy if isinstance(outcome, EvalResult) else float("nan")


def kept_widths(state: PrunedState) -> str:
    """Group widths before -> after, e.g. ``32->24 64->48`` (distinct pairs, smallest first)."""
    pairs = sorted(
        {
            (
                unit.size,
                int(state.keeps[unit.name].sum()) if unit.name in state.keeps else unit.size,
            )
            for unit in state.units
        }
    )
    return " ".join(f"{before}->{after}" for before, after in pairs)


def plan_change(
    pruner: Pruner, evaluator: IncrementalEvaluator, plans: Callable[[int], PruningPlan]
) -> Callable[[int], IncrementalResult]:
    """A scenario: resolve the call's plan and evaluate it incrementally (metrics included)."""

    def run(call: int) -> IncrementalResult:
        state = pruner.resolve(plans(call))
        return evaluator.evaluate_state(state)

    return run


# --- output ------------------------------------------------------------------------------------


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    cells = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def verdict(value: float, goal: float, at_most: bool) -> str:
    """``goal`` as text with whether ``value`` meets it."""
    met = value <= goal if at_most else value >= goal
    return f"{'<=' if at_most else '>='} {goal:g}x {'met' if met else 'NOT met'}"


def load_text() -> str:
    """The 1-minute load average of this machine, to judge how noisy the figures are."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


# --- the benchmarks ----------------------------------------------------------------------------


def bench_plan_changes(bench: Workbench, args: argparse.Namespace) -> None:
    """Figures 1-4: floor, FULL and INCREMENTAL plan changes, naive baseline vs ours."""
    model, dataset, pruner = bench.model, bench.eval_set, bench.pruner
    units = pruner.units("unstructured")
    first, last = units[0], units[-1]
    calls = args.warmup + args.repeats
    base = PruningPlan(method="unstructured", scope="layer", amount=BASE_AMOUNT)
    reserved = {round(BASE_AMOUNT * u.size) for u in (first, last)}
    reserved |= {round(a * last.size) for a in REVISITED}
    first_amounts = fresh_amounts(first.size, calls, reserved)
    last_amounts = fresh_amounts(last.size, calls, reserved)
    global_amounts = [GLOBAL_START + GLOBAL_STEP * i for i in range(calls)]
    for amount in REVISITED:  # seen before any timing: "revisited" is served from the caches
        pruner.resolve(base.with_unit(last.name, amount))

    full_evaluator = IncrementalEvaluator(model, dataset)
    incremental_evaluator = IncrementalEvaluator(model, dataset)
    global_evaluator = IncrementalEvaluator(model, dataset)
    dense = full_evaluator.dense.result
    floor = Series(
        "1  floor: dense predict() over the eval split", lambda _: predict(model, dataset.images)
    )
    full = Series(
        f"2  FULL: change {first.name} (first layer), resolve + evaluate",
        plan_change(pruner, full_evaluator, lambda i: base.with_unit(first.name, first_amounts[i])),
    )
    new = Series(
        f"3a INCREMENTAL: change {last.name} (last layer), new amount",
        plan_change(
            pruner, incremental_evaluator, lambda i: base.with_unit(last.name, last_amounts[i])
        ),
    )
    revisited = Series(
        f"3b INCREMENTAL: change {last.name} (last layer), revisited amount",
        plan_change(
            pruner,
            incremental_evaluator,
            lambda i: base.with_unit(last.name, REVISITED[i % len(REVISITED)]),
        ),
    )
    naive = Series(
        "4a naive: deepcopy + torch global_unstructured L1 + evaluate",
        lambda i: naive_prune_evaluate(model, dataset, global_amounts[i]),
    )
    ours = Series(
        "4b ours: global magnitude plan change, resolve + evaluate",
        plan_change(
            pruner,
            global_evaluator,
            lambda i: PruningPlan(method="unstructured", scope="global", amount=global_amounts[i]),
        ),
    )
    series = [floor, full, new, revisited, naive, ours]
    began = time.perf_counter()
    run_interleaved(series, args.warmup, args.repeats)
    seconds = time.perf_counter() - began

    goals = {
        full.label: verdict(ratio(full, floor), GOAL_FULL, at_most=True),
        new.label: verdict(ratio(new, floor), GOAL_INCREMENTAL, at_most=True),
        revisited.label: verdict(ratio(revisited, floor), GOAL_INCREMENTAL, at_most=True),
    }
    rows = []
    for one in series:
        rows.append(
            [
                one.label,
                f"{one.median_ms:.1f}",
                f"{one.iqr_ms:.1f}",
                f"{min(one.times_ms):.1f}",
                f"{ratio(one, floor):.3f}x",
                f"{best_ratio(one, floor):.3f}x",
                one.resumed_text(),
                goals.get(one.label, ""),
            ]
        )
    header = ["figure", "median ms", "IQR ms", "best ms", "x floor", "(best)", "resumed", "goal"]
    print(
        f"-- plan change -> fresh metrics ({len(dataset):,} eval images, dense accuracy "
        f"{dense.accuracy:.2%}; {args.repeats} rounds after {args.warmup} warm-up, "
        f"{seconds:.0f} s) --"
    )
    print(format_table(header, rows))
    speed_up, best_speed_up = ratio(naive, ours), best_ratio(naive, ours)
    print(
        f"4  speed-up of ours (4b) over naive (4a): {speed_up:.2f}x (best rounds "
        f"{best_speed_up:.2f}x); "
        f"at global amount {global_amounts[-1]:.3f} accuracy naive "
        f"{accuracy_of(naive.last):.2%} vs ours {accuracy_of(ours.last):.2%}"
    )
    print(
        f"   units: {len(units)} unstructured layers; first {first.name} ({first.size:,} "
        f"weights), last {last.name} ({last.size:,} weights); base plan layer-wise "
        f"{BASE_AMOUNT:g} everywhere; 4b moves the global amount {GLOBAL_STEP:g} per call from "
        f"{GLOBAL_START:g}; 'resumed' = stage(s) the evaluator restarted at / stages"
    )


def bench_compaction(bench: Workbench, args: argparse.Namespace) -> None:
    """Figure 5: compacted vs dense latency for the filters method next to the FLOP ratio."""
    model, shape = bench.model, bench.eval_set.input_shape
    dense_flops = model_flops(model, shape)
    rows = []
    for amount in FILTER_AMOUNTS:
        plan = PruningPlan(method="filters", scope="layer", amount=amount)
        try:
            compacted = compact(bench.pruner, plan)
        except ValueError as err:
            print(f"   filters {amount:g}: cannot compact: {err}")
            continue
        flop_ratio = dense_flops / model_flops(compacted, shape)
        widths = kept_widths(bench.pruner.resolve(plan))
        timings = measure_latency(
            {"dense": model, "compacted": compacted},
            shape,
            batch_sizes=(32, 1),
            repeats=args.latency_repeats,
            budget_s=LATENCY_BUDGET_S,
            threads=args.threads,
        )
        by_key = {(t.model, t.batch): t for t in timings}
        for batch in (32, 1):
            dense_t, small_t = by_key[("dense", batch)], by_key[("compacted", batch)]
            speed_up = dense_t.median_ms / small_t.median_ms
            efficiency = speed_up / flop_ratio
            goal = ""
            if bench.name == "resnet_mini" and batch == 32:
                goal = verdict(efficiency, GOAL_EFFICIENCY, at_most=False)
            rows.append(
                [
                    f"{amount:g}",
                    f"{1 - amount:.0%}",
                    widths,
                    str(batch),
                    f"{dense_t.median_ms:.3f}",
                    f"{dense_t.spread_ms:.3f}",
                    f"{small_t.median_ms:.3f}",
                    f"{small_t.spread_ms:.3f}",
                    f"{speed_up:.2f}x",
                    f"{flop_ratio:.2f}x",
                    f"{efficiency:.2f}",
                    goal,
                ]
            )
    header = [
        "amount",
        "kept",
        "channels",
        "batch",
        "dense ms",
        "IQR",
        "compacted ms",
        "IQR",
        "speed-up",
        "FLOP ratio",
        "speed-up/FLOPs",
        "goal",
    ]
    print(
        f"-- 5  compacted vs dense latency (median ms per forward pass): filters, layer-wise, "
        f"up to {args.latency_repeats} interleaved repeats, {args.threads} threads --"
    )
    print(format_table(header, rows, left=0))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(ZOO), default=list(ZOO))
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--latency-repeats", type=int, default=60, help="timed passes per latency (default 60)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.latency_repeats < 2 or args.threads < 1:
        parser.error("need --repeats >= 1, --warmup >= 0, --latency-repeats >= 2, --threads >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmarks for the selected models and print the tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    print(
        f"Pruning Explorer engine benchmarks: torch {torch.__version__}, CPU, "
        f"{torch.get_num_threads()} threads, seed {args.seed}, load average {load_text()}"
    )
    for name in args.models:
        print(f"\n=== {name} ===")
        if not weights_path(name).exists():
            print(f"skipped: no trained weights at {weights_path(name)}")
            continue
        bench = open_workbench(name, torch.device("cpu"))
        bench_plan_changes(bench, args)
        bench_compaction(bench, args)
    print(f"\ntotal {time.perf_counter() - began:.0f} s, load average {load_text()}")


if __name__ == "__main__":
    main()
