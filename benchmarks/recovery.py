"""How much fine-tuning recovers, and lottery tickets: the README figures of issue 10.

Part 1, ``recovery``: for each model (``lenet300``, ``lenet5``), a global unstructured magnitude
plan at each sparsity (of the prunable layers' weights; biases stay dense), its eval-split
accuracy right after pruning (``pruned``), after fine-tuning with the masks held (``+ft``:
``explorer.recovery.training.fine_tune``, ``default_recipe(model)`` for ``--epochs`` epochs over the
10,000 fit images) and, with ``--gradual N`` (default 3), after AGP gradual pruning to the same
sparsity in N steps with the same total optimizer steps (``AGP``:
``explorer.recovery.schedules.gradual_prune``). Then the highest sparsity whose accuracy stays
within 0.5 points of dense, and the parameters kept (biases included), next to Han et al. 2015
(iterative pruning + retraining, 12x on both LeNets, with 60,000 training images; here 10,000).

Part 2, ``tickets``: iterative magnitude pruning with rewinding on ``lenet300``
(``explorer.recovery.tickets.iterative_ticket``) with Frankle & Carbin's LeNet recipe (Adam 1.2e-3,
batch 60, constant rate; ``--ticket-epochs`` per run): round 0 trains the dense network from the
bundled ``init.pt``, each round prunes ``--per-round`` of the surviving weights (global
magnitude of the retrained weights), rewinds the survivors to ``init.pt`` and retrains; the
random re-init baseline trains the same mask from a fresh init (seed 1). Printed per round:
weights remaining, accuracy at the end, after the first epoch, and the best measured with the
step it came at (eval every ``--eval-every`` steps, for reporting only). Frankle & Carbin 2019:
tickets down to ~21% of the weights learn faster and reach a higher accuracy than the dense
network; random re-inits do not.

Benchmarks print figures; they never assert. Accuracy is on the 5,000 held-out eval images
(one image = 0.02 points). CPU only.

    .venv/bin/python benchmarks/recovery.py            # both parts: 2.5 min on 2 quiet cores
    .venv/bin/python benchmarks/recovery.py --quick    # 12 s: 3 sparsities, 1 epoch, 3 rounds

Timings: 150 s for the default run on a quiet 2-core machine; torch's threads slow down badly
when other processes compete for the cores (the same work took 11 minutes next to a test run).
    .venv/bin/python benchmarks/recovery.py --part tickets --rounds 8 --ticket-epochs 3

Options: ``--part {all,recovery,tickets}``, ``--models``, ``--sparsities`` (fractions),
``--epochs`` (9), ``--gradual`` (3; 0 = off), ``--rounds`` (12), ``--per-round`` (0.2),
``--ticket-epochs`` (5), ``--eval-every`` (42 steps = a quarter epoch at batch 60),
``--threads`` (2).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from explorer.engine.evaluation import evaluate
from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.recovery.schedules import gradual_prune, with_weights
from explorer.recovery.tickets import iterative_ticket
from explorer.recovery.training import Recipe, default_recipe, fine_tune

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.92, 0.95, 0.97)
QUICK_SPARSITIES = (0.5, 0.9, 0.95)
WITHIN = 0.005  # "no loss": within 0.5 points of dense
#: Frankle & Carbin 2019's LeNet-300-100 recipe: Adam 1.2e-3, batch 60, constant rate.
TICKET_RECIPE = Recipe(optimizer="adam", lr=1.2e-3, batch_size=60, schedule="constant")

#: Han et al. 2015, "Learning both weights and connections", table 1: (params, kept, errors).
HAN = {
    "lenet300": ("LeNet-300-100", "267K -> 22K (12x), error 1.64% -> 1.59%"),
    "lenet5": (
        "LeNet-5 (Caffe: 20/50 conv filters, 500 hidden; ours is 6/16, 120-84)",
        "431K -> 36K (12x), error 0.80% -> 0.77%",
    ),
}


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}"


def _summary(label: str, best: tuple[float, int] | None, params: int) -> str:
    if best is None:
        return f"  {label}: no sparsity stays within {100 * WITHIN:.1f} points of dense"
    sparsity, kept = best
    return (
        f"  {label}: highest sparsity within {100 * WITHIN:.1f} points of dense: "
        f"{100 * sparsity:.0f}%, {params / 1000:.0f}K -> {kept / 1000:.1f}K parameters "
        f"({params / kept:.1f}x)"
    )


def recovery(
    name: str, sparsities: Sequence[float], epochs: int, gradual: int, device: torch.device
) -> None:
    """Part 1 for one model: prints one row per sparsity and the summary lines."""
    start = time.perf_counter()
    bench = open_workbench(name, device)
    fit = bench.fit_set
    recipe = replace(default_recipe(name), epochs=epochs)
    total_steps = recipe.total_steps(len(fit))
    per_step = replace(recipe, steps=max(1, round(total_steps / gradual))) if gradual else None
    dense = bench.dense.accuracy
    params = sum(p.numel() for p in bench.model.parameters())
    prunable = sum(layer.weight_numel for layer in bench.pruner.structure.layers)
    print(
        f"\n{name}: dense eval accuracy {100 * dense:.2f}%, {params:,} parameters "
        f"({prunable:,} prunable weights, biases stay dense); fine-tuning: {recipe.optimizer} "
        f"lr {recipe.lr:g} {recipe.schedule}, batch {recipe.batch_size}, {epochs} epoch(s) = "
        f"{total_steps} steps on {len(fit):,} fit images"
        + (f"; AGP: {gradual} steps x {per_step.steps} steps" if per_step else "")
    )
    head = f"{'sparsity':>8} {'params kept':>11} {'x':>5} {'pruned':>7} {'+ft':>7}"
    print(head + (f" {'AGP':>7}" if gradual else "") + f" {'ft s':>6}")
    best: dict[str, tuple[float, int] | None] = {"one-shot + fine-tuning": None, "AGP": None}
    for sparsity in sparsities:
        plan = PruningPlan(amount=sparsity)
        state, before, _ = bench.evaluate(plan)
        tick = time.perf_counter()
        result = fine_tune(bench.model, state.masks, fit, recipe, device=device)
        after = evaluate(with_weights(bench.model, result.state_dict), bench.eval_set).accuracy
        seconds = time.perf_counter() - tick
        kept = params - sum(state.pruned.values())
        row = (
            f"{100 * sparsity:7.0f}% {kept:11,} {params / kept:5.1f} {_pct(before.accuracy)} "
            f"{_pct(after)}"
        )
        if after >= dense - WITHIN:
            best["one-shot + fine-tuning"] = (sparsity, kept)
        if per_step is not None:
            run = gradual_prune(bench, plan, steps=gradual, recipe_per_step=per_step, fit=fit)
            row += f" {_pct(run.final.accuracy)}"
            if run.final.accuracy >= dense - WITHIN:
                best["AGP"] = (sparsity, kept)
        print(row + f" {seconds:6.1f}", flush=True)
    print(_summary("one-shot + fine-tuning", best["one-shot + fine-tuning"], params))
    if per_step is not None:
        print(_summary(f"AGP in {gradual} steps, same budget", best["AGP"], params))
    title, han = HAN[name]
    print(
        f"  Han et al. 2015, {title}: {han}; they pruned and retrained iteratively on 60,000 "
        f"training images, here {epochs} epoch(s) on 10,000"
    )
    print(f"  {name}: {time.perf_counter() - start:.0f} s")


def tickets(
    rounds: int, per_round: float, epochs: int, eval_every: int, device: torch.device
) -> None:
    """Part 2: the lottery-ticket curve on lenet300, with Frankle & Carbin's LeNet recipe."""
    start = time.perf_counter()
    bench = open_workbench("lenet300", device)
    recipe = replace(TICKET_RECIPE, epochs=epochs)
    steps = recipe.total_steps(len(bench.fit_set))
    print(
        f"\nlottery tickets, lenet300: {rounds} rounds pruning {100 * per_round:.0f}% of the "
        f"survivors (global magnitude), rewound to init.pt; every run: {recipe.optimizer} lr "
        f"{recipe.lr:g} {recipe.schedule}, batch {recipe.batch_size}, {epochs} epoch(s) = "
        f"{steps} steps on {len(bench.fit_set):,} fit images; eval every {eval_every} steps"
    )
    result = iterative_ticket(
        bench, rounds, per_round, recipe, eval_every=eval_every, device=device
    )
    print(f"  init: {result.init}; random re-init: reset_parameters, seed 1")
    print(
        f"{'round':>5} {'weights':>9} {'left':>6} | {'ticket':>7} {'1st ep':>7} {'best':>7} "
        f"{'@step':>6} | {'random':>7} {'1st ep':>7} {'best':>7} {'@step':>6}"
    )
    for r in result.rounds:
        cells = []
        for curve in (r.ticket, r.random):
            if curve is None:
                cells.append("")
                continue
            best = curve.best
            cells.append(
                f"{_pct(curve.accuracy)}  {_pct(curve.first_epoch_accuracy)}  "
                f"{_pct(best[1] if best else None)} {best[0] if best else '-':>6}"
            )
        print(
            f"{r.round:5d} {r.weights_remaining:9,} {100 * r.remaining:5.1f}% | "
            + " | ".join(cells)
        )
    print(
        "  round 0 = the dense network trained from init.pt with the same recipe; columns: "
        "accuracy at the end, after the first epoch, best measured and the step it came at"
    )
    print(f"  tickets: {time.perf_counter() - start:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "recovery", "tickets"), default="all")
    parser.add_argument("--quick", action="store_true", help="a short run (~1-2 min)")
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--sparsities", nargs="+", type=float, help="fractions, e.g. 0.9 0.95")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs per sparsity (9)")
    parser.add_argument("--gradual", type=int, help="AGP in N steps, same budget (3; 0 = off)")
    parser.add_argument("--rounds", type=int, help="lottery-ticket rounds (12)")
    parser.add_argument("--per-round", type=float, default=0.2, help="pruned per round (0.2)")
    parser.add_argument("--ticket-epochs", type=int, help="epochs per ticket run (5)")
    parser.add_argument("--eval-every", type=int, default=42, help="steps between evals (42)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sparsities = args.sparsities or (QUICK_SPARSITIES if args.quick else SPARSITIES)
    epochs = args.epochs or (1 if args.quick else 9)
    gradual = args.gradual if args.gradual is not None else (0 if args.quick else 3)
    rounds = args.rounds or (3 if args.quick else 12)
    ticket_epochs = args.ticket_epochs or (1 if args.quick else 5)
    device = torch.device("cpu")
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {_load()} at the start")
    if args.part in ("all", "recovery"):
        for name in args.models:
            recovery(name, sparsities, epochs, gradual, device)
    if args.part in ("all", "tickets"):
        tickets(rounds, args.per_round, ticket_epochs, args.eval_every, device)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average {_load()} at the end")


if __name__ == "__main__":
    main()
