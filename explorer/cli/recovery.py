"""``pruning-explorer finetune``: prune, fine-tune with the masks held, write the weights.

    pruning-explorer finetune resnet_mini --method filters --scope layer --amount 0.3 \\
        --epochs 1 --out recovered.pt
    pruning-explorer finetune lenet5 --plan plan.json --steps 200 --distill --alpha 0.5 \\
        --out lenet5-ft.pt --name "lenet5 70% + 200 steps"
    pruning-explorer eval lenet5 --weights lenet5-ft.pt          # the fine-tuned model

MODEL, ``--weights``, the data flags and the plan flags are those of ``eval`` (the helpers of
``explorer.cli.main``). The command prints the eval-split accuracy of the dense model, the pruned
one and the pruned + fine-tuned one; ``--out`` gets a state_dict whose pruned weights are exactly
zero (``--weights`` reads it back), ``--name`` also keeps it as a variant of the subject
(``explorer.recovery.variants``). Training sees only the fit split. Progress goes to stderr.

Errors follow ``explorer.cli.main``'s convention: a user mistake is one line ``error: ...`` and exit
code 2, checked (output path, variant name, plan) before any training runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from explorer.cli.common import (
    IGNORED_WHEN,
    CliError,
    IgnoredWhen,
    Parser,
    add_plan_options,
    add_subject_options,
    check_output,
    open_subject,
    pct,
    plan_from_args,
    run,
    run_command,
    table,
    write_output,
)
from explorer.engine.evaluation import EvalResult, IncrementalEvaluator
from explorer.engine.pruning import plan_label
from explorer.loading.arguments import fraction, parse_float, shown, whole_number
from explorer.recovery.jobs import masks_held
from explorer.recovery.training import (
    BN_MODES,
    OPTIMIZERS,
    SCHEDULES,
    TrainingProgress,
    default_recipe,
    fine_tune,
)
from explorer.recovery.variants import (
    WEIGHT_SUFFIXES,
    check_name,
    name_taken,
    save_variant,
    weights_bytes,
)

#: Recipe fields a flag can set, as (recipe field, argparse dest).
RECIPE_FLAGS = (
    ("epochs", "epochs"),
    ("steps", "steps"),
    ("batch_size", "batch_size"),
    ("optimizer", "optimizer"),
    ("lr", "lr"),
    ("weight_decay", "weight_decay"),
    ("schedule", "schedule"),
    ("warmup", "warmup"),
    ("bn", "bn"),
    ("seed", "train_seed"),
    ("temperature", "temperature"),
    ("alpha", "alpha"),
)
#: Seconds between progress lines on stderr.
PROGRESS_EVERY_S = 2.0

IGNORED_WHEN.append(
    IgnoredWhen(
        "--epochs",
        ("finetune",),
        lambda args: "--steps sets the length" if args.steps is not None else None,
    )
)


def _number(flag: str, test: Callable[[float], bool], want: str) -> Callable[[str], float]:
    """An argparse type: a finite number passing ``test``, or an error that names ``flag``."""

    def parse(text: str) -> float:
        value = parse_float(text)
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{flag} must be {want}, got {shown(text)}")
        return value

    return parse


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to ``subparsers`` (the CLI's); returns its parser."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pruned model with its masks held; write the weights",
        description="Prune MODEL by the plan, fine-tune it on the fit split with the pruned "
        "weights held at zero, and report eval accuracy of dense, pruned and fine-tuned.",
    )
    add_subject_options(p)
    add_plan_options(p)
    group = p.add_argument_group(
        "fine-tuning (unset flags take the model's default recipe, see explorer.recovery.training)"
    )
    group.add_argument(
        "--epochs", type=whole_number("--epochs", 1), help="passes over the fit split"
    )
    group.add_argument(
        "--steps", type=whole_number("--steps", 1), help="optimizer steps (overrides --epochs)"
    )
    group.add_argument("--batch-size", type=whole_number("--batch-size", 1), help="images per step")
    group.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="sgd: momentum 0.9")
    group.add_argument("--lr", type=_number("--lr", lambda v: v > 0, "a number > 0"))
    group.add_argument(
        "--weight-decay", type=_number("--weight-decay", lambda v: v >= 0, "a number >= 0")
    )
    group.add_argument("--schedule", choices=sorted(SCHEDULES), help="learning-rate schedule")
    group.add_argument(
        "--warmup",
        type=_number("--warmup", lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
        help="fraction of the steps with a linearly rising lr",
    )
    group.add_argument(
        "--bn",
        choices=sorted(BN_MODES),
        help="BatchNorm: train (re-estimate its statistics, default) or freeze",
    )
    group.add_argument(
        "--train-seed",
        dest="train_seed",
        type=whole_number("--train-seed"),
        help="seed of the batch order (default 0)",
    )
    group.add_argument(
        "--distill", action="store_true", help="learn from the dense model's outputs too"
    )
    group.add_argument(
        "--temperature",
        type=_number("--temperature", lambda v: v > 0, "a number > 0"),
        help="distillation temperature (default 4)",
    )
    group.add_argument(
        "--alpha", type=fraction("--alpha"), help="weight of the distillation term (0.5)"
    )
    group = p.add_argument_group("output")
    group.add_argument(
        "--out",
        metavar="FILE",
        help=f"write the fine-tuned state_dict ({', '.join(WEIGHT_SUFFIXES)}); "
        "read it back with --weights FILE",
    )
    group.add_argument(
        "--name", metavar="NAME", help="also keep the weights as a variant of the model, NAME"
    )
    group.add_argument("--quiet", action="store_true", help="no progress on stderr")
    group.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields the flags set (None = not given)."""
    if not args.distill:
        for flag, value in (("--alpha", args.alpha), ("--temperature", args.temperature)):
            if value is not None:
                raise CliError(f"{flag} only applies with --distill")
    overrides = {
        field: getattr(args, dest)
        for field, dest in RECIPE_FLAGS
        if getattr(args, dest, None) is not None
    }
    if args.distill:
        overrides["distill"] = True
    if "steps" not in overrides and "epochs" in overrides:
        overrides["steps"] = None
    return overrides


def _progress_printer(quiet: bool) -> Callable[[TrainingProgress], None] | None:
    """A progress callback writing a line to stderr every ``PROGRESS_EVERY_S`` and at the end."""
    if quiet:
        return None
    last = [-float("inf")]

    def show(update: TrainingProgress) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and update.step != update.total_steps:
            return
        last[0] = now
        with contextlib.suppress(OSError):
            print(
                f"fine-tuning: step {update.step:,}/{update.total_steps:,} "
                f"(epoch {update.epoch}), loss {update.loss:.4f}, lr {update.lr:.3g}, "
                f"{update.elapsed_s:.0f} s, about {update.eta_s:.0f} s left",
                file=sys.stderr,
                flush=True,
            )

    return show


def _quality(result: EvalResult) -> dict[str, float]:
    return {"accuracy": result.accuracy, "loss": result.loss}


def finetune_output(args: argparse.Namespace) -> Any:
    """The ``finetune`` command: returns the text (or, with ``--json``, the data) to print; a
    user mistake raises ``CliError``, ValueError or OSError, with one line."""
    plan = plan_from_args(args)
    overrides = recipe_overrides(args)
    # Everything that can be checked without the model fails before any training.
    if args.out is None and args.name is None:
        raise CliError(
            "give --out FILE, --name NAME or both: the fine-tuned weights must go somewhere"
        )
    path = None
    if args.out is not None:
        path = check_output("--out", args.out)
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise CliError(
                f"--out {path} must end in {', '.join(WEIGHT_SUFFIXES)}, so that --weights "
                "can read it back"
            )
    name = None
    if args.name is not None:
        try:
            name = check_name(args.name)
        except ValueError as err:
            raise CliError(f"--name: {err}") from None
    bench = open_subject(args)
    subject = bench.subject
    if name is not None:
        taken = name_taken(subject, name)
        if taken is not None:
            raise CliError(
                f"--name: a variant named {name!r} exists already for this model and data "
                f"(weights {taken.digest[:12]}…); choose another name"
            )
    try:
        recipe = replace(default_recipe(subject, bench.model), **overrides)
    except ValueError as err:
        raise CliError(str(err)) from None
    state, pruned, _ = bench.evaluate(plan)
    fit = bench.fit_set

    result = fine_tune(
        bench.model, state.masks, fit, recipe, progress=_progress_printer(args.quiet)
    )
    tuned_model = result.load_into(bench.model)
    tuned = IncrementalEvaluator(tuned_model, bench.eval_set).dense.result
    held = masks_held(result.state_dict, state.masks) == 0
    metrics = {
        "dense_accuracy": bench.dense.accuracy,
        "dense_loss": bench.dense.loss,
        "pruned_accuracy": pruned.accuracy,
        "pruned_loss": pruned.loss,
        "finetuned_accuracy": tuned.accuracy,
        "finetuned_loss": tuned.loss,
        "eval_samples": len(bench.eval_set),
        "fit_samples": len(fit),
        "steps": result.steps,
        "seconds": result.seconds,
    }

    written: dict[str, str] = {}
    if path is not None:
        data = weights_bytes(result.state_dict, path.suffix, bench.model)
        write_output("--out", path, lambda file: file.write(data))
        written["weights"] = str(path)
    variant = None
    if name is not None:
        _, variant = save_variant(
            subject, result.state_dict, name, plan, recipe, metrics, model=bench.model
        )

    if args.json:
        return {
            "subject": subject.to_dict(),
            "plan": plan.to_dict(),
            "recipe": recipe.to_dict(),
            "dense": _quality(bench.dense),
            "pruned": _quality(pruned),
            "finetuned": _quality(tuned),
            "eval_samples": len(bench.eval_set),
            "fit_samples": len(fit),
            "steps": result.steps,
            "total_steps": result.total_steps,
            "seconds": result.seconds,
            "loss_history": result.history,
            "masks_held": held,
            "warnings": list(state.warnings),
            "written": written,
            "variant": variant.to_dict() if variant is not None else None,
        }
    rows = [
        ("dense", pct(bench.dense.accuracy), f"{bench.dense.loss:.4f}"),
        ("pruned", pct(pruned.accuracy), f"{pruned.loss:.4f}"),
        ("pruned + fine-tuned", pct(tuned.accuracy), f"{tuned.loss:.4f}"),
    ]
    how = f"{recipe.optimizer}, lr {recipe.lr:g}, {recipe.schedule}"
    if recipe.distills:
        how += f", distilled: T {recipe.temperature:g}, alpha {recipe.alpha:g}"
    lines = [
        table(rows, [f"eval split ({len(bench.eval_set):,} images)", "accuracy", "loss"]),
        "",
        f"plan: {plan_label(plan)}",
        f"fine-tuned {result.steps:,} steps of {recipe.batch_size} fit images ({how}) "
        f"in {result.seconds:.1f} s on {result.device}",
        f"pruned weights held at zero: {'yes' if held else 'NO'}",
    ]
    lines += [f"warning: {w}" for w in state.warnings]
    if "weights" in written:
        lines.append(
            f"wrote weights: {written['weights']} (evaluate: pruning-explorer eval "
            f"{subject.model} --weights {written['weights']})"
        )
    if variant is not None:
        lines.append(
            f"saved variant {variant.name!r}: weights {variant.weights} ({variant.store_ref})"
        )
    return "\n".join(lines)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run ``finetune`` on parsed arguments and print its output; the exit code follows the
    CLI's one convention (``explorer.cli.common.run_command``)."""
    return run_command(finetune_output, args)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the ``finetune`` command (for tests and ``python -m``)."""
    parser = Parser(prog="pruning-explorer", description="Fine-tune a pruned model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_finetune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune`` on its own: ``python -m explorer.cli.recovery finetune MODEL ...``."""
    return run(build_parser, argv, {"finetune": finetune_output})


if __name__ == "__main__":
    sys.exit(main())
