"""Whole blocks against channels at matched FLOPs: what each buys in measured CPU latency.

Per model and scenario:

1. ``blocks``: a whole-block plan (magnitude), compacted: the removed blocks become their skips;
2. ``channels``: a ``filters`` plan (magnitude, global) whose compacted model loses as many
   FLOPs as (1) (bisection on its global amount; the FLOPs actually reached are printed);
3. both timed next to the dense model in one ``measure_latency`` call (interleaved rounds,
   BatchNorm folded, channels_last), at batch 1 and 32.

Printed per model / batch: FLOPs removed, the median speed-up over dense with its per-round
quartiles, the latency removed, and ``lat/FLOPs`` = latency removed / FLOPs removed (1.0: the
wall clock falls in proportion to the FLOPs; more: faster than the FLOPs say). Benchmarks print
figures; they never assert. The models: the zoo's trained ``resnet_mini`` (1x28x28) and
torchvision's ``resnet18`` (10 classes, random weights: latency does not depend on their
values) at 3x64x64.

    .venv/bin/python benchmarks/blocks.py [--models resnet_mini resnet18] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from explorer.engine.compaction import compact
from explorer.engine.inspection import model_flops
from explorer.engine.latency import Latency, compare_speed, measure_latency
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.zoo.models import load_model, resnet_mini, weights_path

BISECTION_STEPS = 12
BATCHES = (1, 32)


@dataclass(frozen=True)
class Subject:
    """A model to benchmark and the block plans to try on it."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    plans: tuple[PruningPlan, ...]
    weights: str


def _resnet_mini() -> nn.Module:
    if weights_path("resnet_mini").exists():
        return load_model("resnet_mini")
    torch.manual_seed(0)
    return resnet_mini().eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


SUBJECTS = {
    "resnet_mini": Subject(
        _resnet_mini,
        (1, 28, 28),
        (
            PruningPlan(method="blocks", amount=1 / 3),
            PruningPlan(method="blocks", amount=2 / 3),
        ),
        "trained (zoo)",
    ),
    "resnet18": Subject(
        _resnet18,
        (3, 64, 64),
        (
            PruningPlan(method="blocks", amount=1 / 8),
            PruningPlan(method="blocks", amount=2 / 8),
            PruningPlan(method="blocks", scope="layer", amount=0.5),
        ),
        "random init",
    ),
}


def removed_names(pruner: Pruner, plan: PruningPlan) -> list[str]:
    """The blocks a plan removes."""
    state = pruner.resolve(plan)
    names = []
    for unit in state.units:
        keep = state.keeps.get(unit.name)
        if keep is not None:
            pairs = zip(unit.detail.blocks, keep.tolist(), strict=True)
            names += [block.name for block, kept in pairs if not kept]
    return names


def matched_channels(pruner: Pruner, target: float) -> tuple[PruningPlan, nn.Module, float]:
    """The global filters plan whose compacted model removes closest to ``target`` of the FLOPs
    (bisection on the amount), the compacted model and the fraction it removes."""
    dense = model_flops(pruner.model, pruner.structure.input_shape)
    low, high = 0.0, 1.0
    best: tuple[float, PruningPlan, nn.Module, float] | None = None
    for _ in range(BISECTION_STEPS):
        amount = (low + high) / 2
        plan = PruningPlan(method="filters", amount=amount)
        small = compact(pruner, plan)
        removed = 1 - model_flops(small, pruner.structure.input_shape) / dense
        if best is None or abs(removed - target) < best[0]:
            best = (abs(removed - target), plan, small, removed)
        low, high = (amount, high) if removed < target else (low, amount)
    assert best is not None
    return best[1], best[2], best[3]


def row(label: str, flops_removed: float, dense: Latency, other: Latency) -> str:
    speed = compare_speed(dense, other)
    latency_removed = 1 - 1 / speed.ratio
    per_flop = latency_removed / flops_removed if flops_removed else float("nan")
    return (
        f"  {label:<38} {flops_removed:>8.1%} {other.batch:>6} {other.median_ms:>9.3f} "
        f"{speed.ratio:>7.2f}x ({speed.low:.2f}-{speed.high:.2f}) {latency_removed:>9.1%} "
        f"{per_flop:>9.2f}"
    )


def bench(name: str, subject: Subject, args: argparse.Namespace) -> None:
    model = subject.build()
    shape = subject.input_shape
    pruner = Pruner(model, shape)
    dense_flops = model_flops(model, shape)
    print(
        f"\n{name} ({subject.weights}), input {'x'.join(map(str, shape))}, "
        f"{dense_flops / 1e6:.1f} MFLOPs, {len(pruner.units('blocks'))} stage(s) of blocks"
    )
    header = (
        f"  {'plan':<38} {'FLOPs -':>8} {'batch':>6} {'ms':>9} {'speed-up (IQR)':>19} "
        f"{'latency -':>9} {'lat/FLOPs':>9}"
    )
    for plan in subject.plans:
        blocks = compact(pruner, plan)
        blocks_removed = 1 - model_flops(blocks, shape) / dense_flops
        channel_plan, channels, channels_removed = matched_channels(pruner, blocks_removed)
        gone = removed_names(pruner, plan)
        print(f"\n  removed blocks: {', '.join(gone)}")
        print(header)
        timings = measure_latency(
            {"dense": model, "blocks": blocks, "channels": channels},
            shape,
            batch_sizes=BATCHES,
            repeats=args.repeats,
            threads=args.threads,
            budget_s=args.budget,
        )
        for batch in BATCHES:
            at = {t.model: t for t in timings if t.batch == batch}
            print(f"  {'dense':<38} {0:>8.1%} {batch:>6} {at['dense'].median_ms:>9.3f}")
            label = f"blocks: {len(gone)} removed ({plan.scope})"
            print(row(label, blocks_removed, at["dense"], at["blocks"]))
            label = f"channels: filters {channel_plan.amount:.1%} global"
            print(row(label, channels_removed, at["dense"], at["channels"]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds at most (200)")
    parser.add_argument(
        "--budget", type=float, default=6.0, help="seconds per batch size before stopping (6)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.2f} at the start"
    )
    for name in args.models:
        bench(name, SUBJECTS[name], args)
    print(
        f"\nload average {os.getloadavg()[0]:.2f} at the end; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
