"""What holding the masks costs: one fine-tuning epoch with masks next to the same epoch without.

Per bundled model, one epoch over the 10,000 fit images (``len(fit) // batch`` steps of the
model's default recipe, ``explorer.recovery.training.default_recipe``) is timed twice:

- **masked**: ``fine_tune(model, masks, fit, recipe)`` with the masks of a global 70% unstructured
  magnitude plan (gradients masked after ``backward``, parameters re-masked after every step);
- **plain**: the same call with no masks (the plain training loop: the same function).

The two run alternately (plain first in odd rounds, masked first in even ones), after one short
untimed warm-up run each, and each figure is the minimum over ``--repeats`` rounds (the time of
the loop, ``TrainingResult.seconds``; the model copy before it is not counted). ``ratio`` =
masked / plain; the goal is <= 1.2x.

Two figures less sensitive to other processes follow: the median step time of each epoch (from
the progress callback's ``elapsed_s``; the minimum over rounds) and their ratio, and ``mask ops
ms``: the two masking multiplies alone (``HeldMasks.hold_gradients`` + ``hold_parameters``),
timed on a copy of the model, i.e. what holding the masks adds to every step.

The optimizers are fused (``explorer.recovery.training.make_optimizer``). With torch's default
for-loop Adam / AdamW the masked epoch of lenet300 took about 1.3-1.6x the plain one: its ``sqrt``
of the second moment is about 9x slower on exact zeros (the pruned weights') on x86 CPUs.

Benchmarks print figures; they never assert. Run on a quiet machine (the load average is printed
at the start and the end).

    .venv/bin/python benchmarks/training.py [--models lenet5 resnet_mini] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.recovery.training import HeldMasks, default_recipe, fine_tune, steps_per_epoch
from explorer.zoo.mnist import load_mnist
from explorer.zoo.models import ZOO, weights_path

PLAN = PruningPlan(amount=0.7)
GOAL = 1.2


def load_text() -> str:
    """The 1-minute load average of this machine, to judge how noisy the figures are."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def _step_ms(elapsed: list[float]) -> float:
    """The median step time, ms, from the ``elapsed_s`` of every step's progress."""
    steps = [b - a for a, b in zip([0.0, *elapsed[:-1]], elapsed, strict=True)]
    return statistics.median(steps) * 1000


def _mask_ops_ms(
    model: torch.nn.Module, masks: dict[str, torch.Tensor], rounds: int = 200
) -> float:
    """What holding the masks costs alone, ms per step: both multiplies on a model copy."""
    copy_ = copy.deepcopy(model)
    held = HeldMasks(copy_, masks)
    for param in copy_.parameters():
        param.grad = torch.randn_like(param)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            held.hold_gradients()
            held.hold_parameters()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1000


def bench_model(name: str, repeats: int) -> tuple[str, ...] | None:
    """One row of the table (see ``HEADER``)."""
    if not weights_path(name).exists():
        print(f"{name}: skipped, no trained weights at {weights_path(name)}")
        return None
    bench = open_workbench(name, torch.device("cpu"))
    masks = bench.resolve(PLAN).masks
    fit = load_mnist("fit")
    recipe = replace(default_recipe(name, bench.model), steps=None, epochs=1)
    steps = steps_per_epoch(len(fit), recipe.batch_size)
    for warm in ({}, masks):  # untimed: first-call allocations, oneDNN primitive caches
        fine_tune(bench.model, warm, fit, replace(recipe, steps=5), device="cpu")
    epoch: dict[str, list[float]] = {"plain": [], "masked": []}
    step: dict[str, list[float]] = {"plain": [], "masked": []}
    for round_ in range(repeats):
        order = ("plain", "masked") if round_ % 2 == 0 else ("masked", "plain")
        for kind in order:
            elapsed: list[float] = []
            result = fine_tune(
                bench.model,
                masks if kind == "masked" else {},
                fit,
                recipe,
                progress=lambda update, seen=elapsed: seen.append(update.elapsed_s),
                device="cpu",
            )
            assert result.steps == steps  # a benchmark of a whole epoch, not of a part
            epoch[kind].append(result.seconds)
            step[kind].append(_step_ms(elapsed))
    plain, masked = min(epoch["plain"]), min(epoch["masked"])
    plain_step, masked_step = min(step["plain"]), min(step["masked"])
    ratio = masked / plain
    return (
        name,
        f"{steps}",
        f"{recipe.batch_size}",
        recipe.optimizer,
        f"{plain:.2f}",
        f"{masked:.2f}",
        f"{ratio:.3f}x",
        f"{plain_step:.2f}",
        f"{masked_step:.2f}",
        f"{masked_step / plain_step:.3f}x",
        f"{_mask_ops_ms(bench.model, masks):.3f}",
        f"<= {GOAL:g}x {'met' if ratio <= GOAL else 'NOT met'}",
    )


HEADER = (
    "model",
    "steps",
    "batch",
    "optimizer",
    "plain s",
    "masked s",
    "ratio",
    "plain ms/step",
    "masked ms/step",
    "ratio",
    "mask ops ms",
    "goal (epoch ratio)",
)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(ZOO), default=list(ZOO))
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    began = time.perf_counter()
    print(
        f"Fine-tuning with masks held vs plain: torch {torch.__version__}, CPU, "
        f"{torch.get_num_threads()} threads, plan {PLAN.method} {PLAN.criterion} "
        f"{PLAN.amount:.0%} global, min of {args.repeats} alternating rounds, "
        f"load average {load_text()}"
    )
    rows = [row for name in args.models if (row := bench_model(name, args.repeats))]
    print(table(rows, HEADER))
    print(f"\ntotal {time.perf_counter() - began:.0f} s, load average {load_text()}")


if __name__ == "__main__":
    main()
