"""``pruning-explorer``: list, inspect, prune and evaluate the bundled models from a terminal.

    pruning-explorer models
    pruning-explorer info lenet5
    pruning-explorer prune lenet5 --amount 0.7 --method l1 --scope global --out pruned.pt
    pruning-explorer eval resnet_mini --method filters --amount 0.5 --layer stem.conv=0.25
    pruning-explorer eval lenet5 --plan plan.json --json

Every command takes ``--json`` for machines. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from explorer.compaction import can_compact, compact
from explorer.importance import CRITERIA
from explorer.inspection import prunable_layers
from explorer.models import ZOO, get_spec, list_models, load_card, load_model
from explorer.plan import SCOPES, PruningPlan
from explorer.pruning import METHODS, masked_state_dict
from explorer.workbench import Report, open_workbench

#: Short names people type, as (method, criterion).
METHOD_ALIASES = {
    "l1": ("unstructured", "magnitude"),
    "random": ("unstructured", "random"),
    "2:4": ("nm", None),
}
EXPORT_STYLES = ("zeros", "torch_prune")


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2."""


# --- output -------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(header))
    ]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


# --- plans from arguments -----------------------------------------------------------------------


def _layer_amount(text: str) -> tuple[str, float]:
    name, sep, amount = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (e.g. fc1=0.9), got {text!r}")
    try:
        return name, float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"amount of {name!r} must be a number, got {amount!r}"
        ) from None


def plan_from_args(args: argparse.Namespace) -> PruningPlan:
    """A plan from ``--plan FILE`` (then adjusted by any other plan flag) or from flags alone."""
    plan = PruningPlan()
    if args.plan:
        path = Path(args.plan)
        if not path.is_file():
            raise CliError(f"plan file {path} does not exist")
        plan = PruningPlan.from_json(path.read_text())
    data = plan.to_dict()
    if args.method:
        method, criterion = METHOD_ALIASES.get(args.method, (args.method, None))
        data["method"] = method
        if criterion:
            data["criterion"] = criterion
    for key in ("criterion", "scope", "amount", "seed", "norm"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.layer:
        data["layers"] = {**data["layers"], **dict(args.layer)}
    if args.dense:
        data["dense"] = sorted(set(data["dense"]) | set(args.dense))
    if args.nm:
        n, _, m = args.nm.partition(":")
        if not (n.isdigit() and m.isdigit()):
            raise CliError(f"--nm must look like 2:4, got {args.nm!r}")
        data["nm"] = [int(n), int(m)]
    return PruningPlan.from_dict(data)


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plan (flags override values read from --plan)")
    group.add_argument("--plan", metavar="FILE", help="a plan as JSON (see `prune --save-plan`)")
    group.add_argument(
        "--method",
        choices=sorted(METHODS) + sorted(METHOD_ALIASES),
        help="granularity; l1 = unstructured magnitude, random = unstructured "
        "random (default unstructured)",
    )
    group.add_argument(
        "--criterion", choices=sorted(CRITERIA), help="importance score (default magnitude)"
    )
    group.add_argument(
        "--scope",
        choices=SCOPES,
        help="global: rank all layers together; layer: each layer by its amount",
    )
    group.add_argument("--amount", type=float, help="fraction to prune, 0..1 (default 0)")
    group.add_argument(
        "--layer",
        type=_layer_amount,
        action="append",
        metavar="NAME=AMOUNT",
        help="per-layer amount, repeatable (e.g. --layer fc1=0.9)",
    )
    group.add_argument(
        "--dense", action="append", metavar="NAME", help="leave this layer dense, repeatable"
    )
    group.add_argument("--nm", metavar="N:M", help="pattern for --method nm (default 2:4)")
    group.add_argument("--norm", type=float, help="p of the Ln norm for structured scores")
    group.add_argument("--seed", type=int, help="seed of the random criterion")


# --- commands -----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> Any:
    cards = list_models()
    if args.json:
        return cards
    rows = [
        (
            c["name"],
            c["title"],
            c.get("params", "?"),
            c.get("flops", "?"),
            _pct(c["eval_accuracy"]) if "eval_accuracy" in c else "untrained",
        )
        for c in cards
    ]
    return table(rows, ["model", "title", "params", "FLOPs/img", "eval acc."])


def cmd_info(args: argparse.Namespace) -> Any:
    card = load_card(args.model)
    spec = get_spec(args.model)
    model = load_model(args.model)
    layers = prunable_layers(model, tuple(card.get("input_shape", (1, 28, 28))))
    total_flops = card.get("flops") or sum(layer.flops for layer in layers)
    if args.json:
        return {
            "card": card,
            "layers": [
                {
                    "name": la.name,
                    "type": la.kind,
                    "shape": list(la.weight_shape),
                    "params": la.params,
                    "flops": la.flops,
                    "flops_share": la.flops / total_flops,
                }
                for la in layers
            ],
        }
    head = [f"{spec.title} ({spec.name})", spec.summary]
    if "eval_accuracy" in card:
        head.append(
            f"eval accuracy {_pct(card['eval_accuracy'])} on {card['eval_samples']:,} "
            f"held-out images; {card['params']:,} params; {card['flops']:,} FLOPs/img"
        )
    rows = [
        (
            la.name,
            la.kind,
            "x".join(map(str, la.weight_shape)),
            la.params,
            la.flops,
            _pct(la.flops / total_flops),
        )
        for la in layers
    ]
    return (
        "\n".join(head)
        + "\n\n"
        + table(rows, ["layer", "type", "weight shape", "params", "FLOPs/img", "FLOP share"])
    )


def _units_table(report: Report) -> str:
    rows = [
        (
            u["name"],
            u["kind"],
            u["size"],
            u["pruned"],
            _pct(u["pruned"] / u["size"] if u["size"] else 0.0),
        )
        for u in report.units
    ]
    return table(rows, ["unit", "kind", "size", "pruned", "sparsity"])


def cmd_prune(args: argparse.Namespace) -> Any:
    plan = plan_from_args(args)
    bench = open_workbench(args.model)
    report = bench.report(plan)
    written = {}
    if args.out:
        torch.save(masked_state_dict(bench.pruner, plan, args.format), args.out)
        written["weights"] = args.out
    if args.compact_out:
        if not can_compact(plan.method):
            raise CliError(
                f"--compact-out needs a structured plan; {plan.method!r} leaves "
                "scattered zeros that cannot be removed"
            )
        torch.save(compact(bench.pruner, plan), args.compact_out)
        written["compacted_model"] = args.compact_out
    if args.save_plan:
        Path(args.save_plan).write_text(plan.to_json() + "\n")
        written["plan"] = args.save_plan
    if args.json:
        return {**report.to_dict(), "written": written}
    lines = [
        _units_table(report),
        "",
        f"sparsity: {_pct(report.prunable_sparsity)} of prunable weights, "
        f"{_pct(report.sparsity)} of all parameters "
        f"({report.params_nonzero:,} of {report.params_total:,} nonzero)",
        f"accuracy: {_pct(report.accuracy)} (dense {_pct(report.dense_accuracy)}, "
        f"{report.accuracy_delta * 100:+.2f} pts)",
    ]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"wrote {what}: {path}" for what, path in written.items()]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> Any:
    plan = plan_from_args(args)
    bench = open_workbench(args.model)
    report = bench.report(
        plan, latency=not args.no_latency, latency_repeats=args.repeats, threads=args.threads
    )
    if args.json:
        return report.to_dict()
    quality = table(
        [
            (
                "accuracy",
                _pct(report.dense_accuracy),
                _pct(report.accuracy),
                f"{report.accuracy_delta * 100:+.2f} pts",
            ),
            (
                "loss",
                f"{report.dense_loss:.4f}",
                f"{report.loss:.4f}",
                f"{report.loss - report.dense_loss:+.4f}",
            ),
            ("changed predictions", "-", f"{report.changed:,} of {report.eval_samples:,}", ""),
        ],
        ["quality (eval split)", "dense", "pruned", "change"],
    )
    cost = table(
        [
            (
                "parameters",
                f"{report.params_total:,}",
                f"{report.params_nonzero:,} nonzero",
                "-" if report.params_compacted is None else f"{report.params_compacted:,}",
            ),
            (
                "FLOPs / image",
                f"{report.flops_dense:,}",
                f"{report.flops_effective:,} effective",
                "-" if report.flops_compacted is None else f"{report.flops_compacted:,}",
            ),
            (
                "size on disk",
                _bytes(report.size_dense),
                _bytes(report.size_sparse) + " sparse",
                _bytes(report.size_compacted),
            ),
        ],
        ["cost", "dense", "pruned (masked)", "compacted"],
    )
    layers = table(
        [
            (
                la["name"],
                la["weights"],
                la["nonzero"],
                _pct(la["sparsity"]),
                la["flops_dense"],
                la["flops_effective"],
            )
            for la in report.layers
        ],
        ["layer", "weights", "nonzero", "sparsity", "FLOPs dense", "FLOPs effective"],
    )
    classes = table(
        [
            (str(c), _pct(d), _pct(p), f"{(p - d) * 100:+.2f}")
            for c, (d, p) in enumerate(
                zip(report.dense_per_class_accuracy, report.per_class_accuracy, strict=True)
            )
        ],
        ["class", "dense", "pruned", "change (pts)"],
    )
    parts = [quality, cost, layers, classes]
    if report.latency:
        parts.append(
            table(
                [
                    (
                        t["model"],
                        t["batch"],
                        f"{t['median_ms']:.3f}",
                        f"{t['spread_ms']:.3f}",
                        t["repeats"],
                        t["threads"],
                    )
                    for t in report.latency
                ],
                ["latency", "batch", "median ms", "IQR ms", "repeats", "threads"],
            )
            + "\n"
            + report.latency_note
        )
    parts += [f"warning: {w}" for w in report.warnings]
    return "\n\n".join(parts)


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "models": cmd_models,
    "info": cmd_info,
    "prune": cmd_prune,
    "eval": cmd_eval,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pruning-explorer", description="Prune the bundled models and read honest numbers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"a bundled model: {', '.join(ZOO)}"

    p = sub.add_parser("models", help="list the bundled models with their model cards")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("info", help="a model's card and its prunable layers")
    p.add_argument("model", help=model_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("prune", help="apply a plan and write the pruned weights")
    p.add_argument("model", help=model_help)
    _add_plan_options(p)
    p.add_argument("--out", metavar="FILE", help="write the pruned state_dict (torch.save)")
    p.add_argument(
        "--format",
        choices=EXPORT_STYLES,
        default="zeros",
        help="zeros: pruned weights as zeros; torch_prune: weight_orig + weight_mask "
        "as torch.nn.utils.prune stores them",
    )
    p.add_argument(
        "--compact-out",
        metavar="FILE",
        help="structured plans: write the physically smaller model (torch.save)",
    )
    p.add_argument("--save-plan", metavar="FILE", help="write the plan as JSON")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("eval", help="accuracy, FLOPs, size and latency of a (pruned) model")
    p.add_argument("model", help=model_help)
    _add_plan_options(p)
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads while timing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "model", None) is not None and args.model not in ZOO:
        print(f"error: unknown model {args.model!r}; choose one of {sorted(ZOO)}", file=sys.stderr)
        return 2
    try:
        output = COMMANDS[args.command](args)
    except (CliError, ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(output, indent=2) if args.json else output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
