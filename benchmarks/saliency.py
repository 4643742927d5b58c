"""Inside the decision: time per attribution method, decision path and attention view.

For one eval image, per bundled model, the median wall time of:

1. each attribution method that applies (``explain`` of one image, one model), for the dense
   model and a 70%-unstructured pruned copy;
2. every view in ``TIMERS`` (the place to add one): the decision-path view,
   ``compare_paths`` (both models' paths, what the plan cut) plus building its figure
   (``path_graph_figure``), under the same plan; for a vision transformer, the attention
   view, ``compare_attention`` (both models' heads and rollouts) under a 50% heads plan;
3. over many images: the class x unit map of the last hidden layer (1,000 images) and the
   dynamic-pruning curve (2,000 images, 8 keep shares) and its static line, once each.

The issue's goals on 2 cores, for LeNet-5: Saliency and Grad-CAM <= 30 ms, Integrated
Gradients with 32 steps <= 150 ms, the decision-path view <= 300 ms (PASS / MISS printed).
Benchmarks print figures; they never assert.

    .venv/bin/python benchmarks/saliency.py [--models lenet5 ...] [--repeats 21] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import PrunedState
from explorer.engine.workbench import Workbench, open_workbench
from explorer.inside.decision_paths import class_unit_map, compare_paths, path_layers
from explorer.inside.dynamic import dynamic_curve, gate_points, static_plan, static_point
from explorer.inside.saliency import attributions_for, get_attribution
from explorer.inside.saliency.attention import compare_attention, removed_heads
from explorer.plots.paths import path_graph_figure
from explorer.recovery.jobs import balanced_indices

MODELS = ("lenet5", "lenet300", "resnet_mini", "vit_tiny")
#: The issue's goals for LeNet-5, in ms (method or view -> goal).
GOALS = {"gradient": 30.0, "gradcam": 30.0, "integrated": 150.0, "path view": 300.0}
#: Settings each method is timed with (the defaults, spelled out where the goal names them).
SETTINGS: dict[str, dict[str, object]] = {"integrated": {"steps": 32}}


@dataclass(frozen=True)
class Case:
    """What every timer of one model gets: the workbench, one eval image and its label, and
    the 70%-unstructured plan's state and pruned model."""

    bench: Workbench
    x: torch.Tensor
    label: int
    state: PrunedState
    pruned: nn.Module


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def verdict(model: str, name: str, ms: float) -> str:
    goal = GOALS.get(name) if model == "lenet5" else None
    return "" if goal is None else f"  goal <= {goal:.0f} ms: {'PASS' if ms <= goal else 'MISS'}"


# --- views beyond the attribution maps ------------------------------------------------------
# HERE: a view to time is one entry of TIMERS: name -> (Case -> the call to time, or None when
# the view does not apply to this model). Each is printed as one row after the methods, with
# its goal from GOALS (for LeNet-5) when it has one.


def path_view(case: Case) -> Callable[[], object]:
    """The decision-path view: ``compare_paths`` (both models' paths, what the plan cut) plus
    building its figure."""
    structure = case.bench.pruner.structure

    def run() -> None:
        comparison = compare_paths(
            case.bench.model, case.pruned, case.state, case.x, case.label, structure
        )
        path_graph_figure(comparison, case.bench.eval_set.classes)

    return run


def attention_view(case: Case) -> Callable[[], object] | None:
    """A vision transformer's attention view: ``compare_attention`` under a 50% heads plan."""
    if not case.bench.pruner.structure.heads:
        return None
    heads_state = case.bench.resolve(PruningPlan(method="heads", amount=0.5))
    heads_model = case.bench.pruner.pruned_model(heads_state)
    removed = removed_heads(heads_state.keeps, case.bench.model)
    return partial(compare_attention, case.bench.model, heads_model, case.x, removed)


TIMERS: dict[str, Callable[[Case], Callable[[], object] | None]] = {
    "path view": path_view,
    "attention view": attention_view,
}


def benchmark_model(name: str, repeats: int) -> None:
    """Print every figure of one bundled model."""
    bench = open_workbench(name, torch.device("cpu"))
    data = bench.eval_set
    x, label = data.images[:1], int(data.labels[0])
    state = bench.resolve(PruningPlan(amount=0.7))
    case = Case(bench, x, label, state, bench.pruner.pruned_model(state))
    print(f"\n{name}: one eval image, median of {repeats} (ms)")
    print(f"  {'method':<24}{'dense':>9}{'pruned 70%':>12}")
    for method in attributions_for(bench.model, data.input_shape):
        explainer = get_attribution(method)
        settings = SETTINGS.get(method, {})
        dense_ms = median_ms(partial(explainer.explain, bench.model, x, label, **settings), repeats)
        pruned_ms = median_ms(
            partial(explainer.explain, case.pruned, x, label, **settings), repeats
        )
        shown = method + "".join(f" {k}={v}" for k, v in settings.items())
        print(
            f"  {shown:<24}{dense_ms:>9.1f}{pruned_ms:>12.1f}"
            + verdict(name, method, max(dense_ms, pruned_ms))
        )
    for view, timer in TIMERS.items():
        run = timer(case)
        if run is not None:
            ms = median_ms(run, repeats)
            print(f"  {view:<24}{ms:>21.1f}" + verdict(name, view, ms))
    many_images(case)


def many_images(case: Case) -> None:
    """The class x unit map of the last hidden layer (1,000 images), the dynamic-pruning
    curve (2,000 images, 8 keep shares) and its static line, timed once each."""
    bench, data = case.bench, case.bench.eval_set
    structure = bench.pruner.structure
    layers = path_layers(structure)
    # the Decisions page's default gated layers: attention projections left out
    attention = {layer for heads in structure.heads for layer in (heads.qkv, heads.proj)}
    gated = [layer for layer in layers if layer not in attention]
    chosen = balanced_indices(data.labels, 1000)
    start = time.perf_counter()
    class_unit_map(bench.model, data.images[chosen], data.labels[chosen], layers[-1], 10)
    print(f"  class x unit map, {layers[-1]}, 1,000 images: {time.perf_counter() - start:.2f} s")
    chosen = balanced_indices(data.labels, 2000)
    keeps = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)
    start = time.perf_counter()
    points = dynamic_curve(
        bench.model,
        data.images[chosen],
        data.labels[chosen],
        keeps,
        gated,
        10,
        points=gate_points(bench.model, gated, data.input_shape),
    )
    shares = ", ".join(
        f"{p.keep:.0%}: {p.accuracy:.2%}" for p in points if p.keep in (1.0, 0.5, 0.25, 0.1)
    )
    print(
        f"  dynamic curve, 2,000 images x 8 shares: {time.perf_counter() - start:.2f} s ({shares})"
    )
    # its static counterpart, as the page draws it: one plan resolved and run per share
    start = time.perf_counter()
    static = []
    for keep in keeps:
        state = bench.resolve(static_plan(gated, keep, structure))
        static.append(
            static_point(
                bench.model,
                data.images[chosen],
                data.labels[chosen],
                state.parameters,
                state.masks,
                keep,
                gated,
            )
        )
    shares = ", ".join(
        f"{p.units_computed:.0%} kept: {p.accuracy:.2%}"
        for p in static
        if p.keep in (1.0, 0.5, 0.25, 0.1)
    )
    print(f"  static line, 8 shares: {time.perf_counter() - start:.2f} s ({shares})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    for name in args.models:
        benchmark_model(name, args.repeats)
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
