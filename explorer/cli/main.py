"""``pruning-explorer``: inspect, prune, evaluate, export and fine-tune any model from a terminal.

    pruning-explorer models
    pruning-explorer info lenet5
    pruning-explorer prune lenet5 --amount 0.7 --method l1 --scope global --out pruned.pt
    pruning-explorer prune resnet_mini --method filters --amount 0.5 --compact-out small.pt2
    pruning-explorer eval resnet_mini --method filters --amount 0.5 --unit stem.conv=0.25
    pruning-explorer eval lenet5 --plan plan.json --json
    pruning-explorer eval lenet5 --amount 0.7 --save lenet5-70 --note "first try"
    pruning-explorer experiments list
    pruning-explorer experiments export --out experiments.csv

Every command takes ``--json`` for machines. The error convention, never a traceback:

* a user mistake (bad flag, file, plan, path) is one line ``error: ...`` on stderr, exit code 2;
  output paths are checked before any evaluation runs;
* an unexpected internal failure is one line ``internal error: ...``, exit code 1
  (``PRUNING_EXPLORER_DEBUG=1`` shows its traceback instead);
* Ctrl-C exits with 130, silently;
* a reader that stops early (``| head``) ends the command quietly with exit code 0.

``--compact-out`` writes a ``torch.export`` program: ``torch.export.load(PATH).module()`` gives a
runnable module without the model's class and without unpickling anything.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from explorer.cli.common import (
    MODEL_HELP,
    CliError,
    Parser,
    add_plan_options,
    add_subject_options,
    check_output,
    check_outputs,
    open_subject,
    pct,
    plan_from_args,
    run,
    size_text,
    subject_from_args,
    table,
    warn_ignored,
    write_output,
)
from explorer.cli.recovery import add_finetune_parser, finetune_output
from explorer.engine.compaction import CompactionError, can_compact, compact
from explorer.engine.inspection import prunable_layers
from explorer.engine.latency import compare_speed
from explorer.engine.limits import max_upload_mb
from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import plan_label
from explorer.engine.summary import human_bytes, runs_dense_kernels, three_digits
from explorer.engine.workbench import Report, Workbench
from explorer.keep.experiments import (
    Experiment,
    ExperimentNotFound,
    ExperimentStore,
    check_name,
    csv_text,
    default_experiments,
    from_report,
)
from explorer.keep.export import (
    FORMATS,
    ExportError,
    export,
    export_file_name,
    export_program,
    get_format,
    masked_state_dict,
    model_stem,
)
from explorer.keep.quantize import Int8Report, int8_report  # also registers the int8 export format
from explorer.loading.arguments import (
    add_data_options,
    whole_number,
)
from explorer.zoo.models import get_spec, list_models, load_card, load_model

EXPORT_STYLES = ("zeros", "torch_prune")
#: How to load what --compact-out writes (PATH stands for the file).
LOAD_COMPACTED = "torch.export.load(PATH).module()"


# --- argument types (argparse names the flag in its error) ----------------------------------------


# --- output -------------------------------------------------------------------------------------


# --- plans from arguments -----------------------------------------------------------------------


# --- flags given but ignored: one warning line -------------------------------------------------


# --- the subject: model source, weights, data ---------------------------------------------------


# --- output files -------------------------------------------------------------------------------


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
            pct(c["eval_accuracy"]) if "eval_accuracy" in c else "untrained",
        )
        for c in cards
    ]
    return table(rows, ["model", "title", "params", "FLOPs/img", "eval acc."])


def cmd_info(args: argparse.Namespace) -> Any:
    subject = subject_from_args(args)
    if subject.is_bundled and subject.weights is None:
        name = subject.model.ref
        card, spec = load_card(name), get_spec(name)
        layers = prunable_layers(load_model(name), tuple(card.get("input_shape", (1, 28, 28))))
        head = [f"{spec.title} ({spec.name})", spec.summary]
        if "eval_accuracy" in card:
            head.append(
                f"eval accuracy {pct(card['eval_accuracy'])} on {card['eval_samples']:,} "
                f"held-out images; {card['params']:,} params; {card['flops']:,} FLOPs/img"
            )
    else:
        bench = open_subject(args)
        card, layers = bench.card, list(bench.pruner.structure.layers)
        card = {**card, "eval_accuracy": bench.dense.accuracy, "flops": bench.dense_flops}
        head = [
            f"{bench.subject.label}: {card.get('summary', '')}",
            f"eval accuracy {pct(bench.dense.accuracy)} on {len(bench.eval_set):,} held-out "
            f"images ({card.get('fit_samples', 0):,} for fit); {card.get('params', 0):,} "
            f"params; {bench.dense_flops:,} FLOPs/img; input {bench.eval_set.input_shape}",
            *bench.notes,
        ]
    total_flops = card.get("flops") or sum(layer.flops for layer in layers) or 1
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
    rows = [
        (
            la.name,
            la.kind,
            "x".join(map(str, la.weight_shape)),
            la.params,
            la.flops,
            pct(la.flops / total_flops),
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
            pct(u["pruned"] / u["size"] if u["size"] else 0.0),
        )
        for u in report.units
    ]
    return table(rows, ["unit", "kind", "size", "pruned", "sparsity"])


def cmd_export(args: argparse.Namespace) -> Any:
    """Write the pruned model in one format, say what the file holds and how fast it runs."""
    plan = plan_from_args(args)
    subject = subject_from_args(args)
    # The default name says model, plan and format, as the app's download does.
    default = export_file_name(model_stem(subject), plan, args.format)
    path = check_output("--out", default if args.out is None else args.out)
    reason = get_format(args.format).unavailable_because(plan.method)
    if reason:  # known without the model: said before anything loads
        raise CliError(f"--format {args.format}: {reason}")
    bench = open_subject(args, subject)
    try:
        result = export(bench, plan, args.format, path)
    except ExportError as err:
        raise CliError(f"--format {args.format}: {err}") from None
    speed = None
    if not args.no_latency and get_format(args.format).carries_model:
        speed = _export_speed(bench, plan, result.compacted, args.repeats)
    if args.json:
        return {**result.to_dict(), "latency": speed}
    holds = "the compacted model" if result.compacted else "the masked model"
    lines = [
        f"wrote {result.format}: {result.path} ({human_bytes(result.bytes)} on disk)",
        f"holds: {holds if result.compacted or result.masked else 'no weights'}; "
        f"{result.params_nonzero:,} nonzero of {result.params_total:,} parameters",
        f"note: {result.note}",
    ]
    if speed is not None:
        lines.append(
            f"latency, batch {speed['batch']}: {three_digits(speed['ms'])} ms against dense "
            f"{three_digits(speed['dense_ms'])} ms timed in the same rounds: {speed['verdict']}"
        )
    lines += [f"also wrote: {extra}" for extra in result.files[1:]]
    if result.sidecar:
        lines.append(f"wrote the preprocessing it expects: {result.sidecar}")
    return "\n".join(lines)


def _export_speed(
    bench: Workbench, plan: PruningPlan, compacted: bool, repeats: int
) -> dict[str, Any]:
    """The exported form's latency against dense, measured side by side (batch 32)."""
    state = bench.resolve(plan)
    footprint = bench.footprint(state)
    small = footprint.compacted if compacted else None
    timings = bench.latency(state, small, batch_sizes=(32,), repeats=repeats)
    form = "compacted" if small is not None else "masked"
    by_model = {t.model: t for t in timings}
    same = small is None or runs_dense_kernels(small, bench.model)
    comparison = compare_speed(by_model["dense"], by_model[form], same_kernels=same)
    return {
        "batch": 32,
        "form": form,
        "ms": by_model[form].median_ms,
        "dense_ms": by_model["dense"].median_ms,
        "ratio": comparison.ratio,
        "verdict": comparison.summary(),
    }


def cmd_prune(args: argparse.Namespace) -> Any:
    plan = plan_from_args(args)
    # Every mistake that can be seen without the model is reported before the evaluation runs.
    paths = check_outputs(
        {"--out": args.out, "--compact-out": args.compact_out, "--save-plan": args.save_plan}
    )
    if "--compact-out" in paths and not can_compact(plan.method):
        raise CliError(
            f"--compact-out needs a structured plan; {plan.method!r} leaves "
            "scattered zeros that cannot be removed"
        )
    bench = open_subject(args)
    report = bench.report(plan)
    # Build everything first, then write: a failed export leaves no partial set of files.
    writers: dict[str, Callable[[IO[bytes]], None]] = {}
    if "--out" in paths:
        # On the CPU, so that the file loads on a machine without the GPU it was made on.
        state = {k: v.cpu() for k, v in masked_state_dict(bench.pruner, plan, args.format).items()}
        writers["--out"] = lambda file: torch.save(state, file)
    if "--compact-out" in paths:
        try:
            program = export_program(compact(bench.pruner, plan), bench.eval_set.input_shape)
        except (ExportError, CompactionError) as err:
            raise CliError(f"--compact-out: {err}; --out writes the masked weights") from None
        # A file object: torch.export.save warns about names that do not end in .pt2.
        writers["--compact-out"] = lambda file: torch.export.save(program, file)
    if "--save-plan" in paths:
        writers["--save-plan"] = lambda file: file.write((plan.to_json() + "\n").encode())
    names = {"--out": "weights", "--compact-out": "compacted_model", "--save-plan": "plan"}
    written = {}
    for flag, write in writers.items():
        write_output(flag, paths[flag], write)
        written[names[flag]] = str(paths[flag])
    if args.json:
        return {**report.to_dict(), "written": written}
    lines = [
        _units_table(report),
        "",
        f"sparsity: {pct(report.prunable_sparsity)} of prunable weights, "
        f"{pct(report.sparsity)} of all parameters "
        f"({report.params_nonzero:,} of {report.params_total:,} nonzero)",
        f"accuracy: {pct(report.accuracy)} (dense {pct(report.dense_accuracy)}, "
        f"{report.accuracy_delta * 100:+.2f} pts)",
    ]
    lines += [f"warning: {w}" for w in report.warnings]
    for what, path in written.items():
        how = ""
        if what == "compacted_model":
            how = f" (a torch.export program; load: {LOAD_COMPACTED.replace('PATH', repr(path))})"
        lines.append(f"wrote {what}: {path}{how}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> Any:
    plan = plan_from_args(args)
    experiments = experiments_for_save(args)  # before the evaluation: a taken name fails fast
    bench = open_subject(args)
    report = bench.report(
        plan, latency=not args.no_latency, latency_repeats=args.repeats, threads=args.threads
    )
    int8 = None
    if args.int8:
        int8 = int8_report(
            bench, plan, latency=not args.no_latency, repeats=args.repeats, threads=args.threads
        )
    saved = None
    if experiments is not None:
        saved = experiments.save(
            args.save,
            bench.subject,
            plan,
            from_report(report, int8.metrics() if int8 is not None else None),
            note=args.note or "",
            replace=args.replace,
        )
    if args.json:
        data = report.to_dict()
        if int8 is not None:
            data["int8"] = int8.to_dict()
        if saved is not None:
            data["saved"] = _saved_summary(saved, experiments)
        return data
    quality = table(
        [
            (
                "accuracy",
                pct(report.dense_accuracy),
                pct(report.accuracy),
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
                size_text(report.size_dense),
                size_text(report.size_sparse) + " sparse",
                size_text(report.size_compacted),
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
                pct(la["sparsity"]),
                la["flops_dense"],
                la["flops_effective"],
            )
            for la in report.layers
        ],
        ["layer", "weights", "nonzero", "sparsity", "FLOPs dense", "FLOPs effective"],
    )
    classes = table(
        [
            (str(c), pct(d), pct(p), f"{(p - d) * 100:+.2f}")
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
    if int8 is not None:
        parts.append(_int8_text(int8))
    parts += [f"warning: {w}" for w in report.warnings]
    if saved is not None:
        parts.append(f"saved experiment {saved.name!r} (id {saved.id[:8]}) in {experiments.path}")
    return "\n\n".join(parts)


def _int8_text(int8: Int8Report) -> str:
    """The int8 variant next to the pruned fp32 model and dense: quality, bytes, latency."""
    sizes = [
        (
            "size on disk",
            size_text(int8.dense_bytes),
            size_text(int8.fp32_bytes),
            size_text(int8.int8_bytes),
        )
    ]
    if int8.int8_sparse_bytes is not None:
        sizes.append(
            (
                "size, zeros as a bitmap",
                "-",
                size_text(int8.fp32_sparse_bytes),
                size_text(int8.int8_sparse_bytes),
            )
        )
    quality = table(
        [
            (
                "accuracy",
                pct(int8.dense_accuracy),
                pct(int8.fp32_accuracy),
                pct(int8.int8_accuracy),
            ),
            ("loss", "-", f"{int8.fp32_loss:.4f}", f"{int8.int8_loss:.4f}"),
            *sizes,
        ],
        ["int8 (eval split)", "dense fp32", f"pruned fp32 ({int8.form})", "pruned int8"],
    )
    lines = [
        quality,
        f"combined reduction (dense fp32 -> pruned int8): {int8.combined_reduction:.1f}x smaller"
        + (
            f", {int8.combined_sparse_reduction:.1f}x with zeros as a bitmap"
            if int8.combined_sparse_reduction is not None
            else ""
        )
        + f"; int8 alone: {int8.int8_reduction:.1f}x; accuracy "
        f"{int8.accuracy_delta * 100:+.2f} pts vs pruned fp32 "
        f"({int8.changed:,} of {int8.eval_samples:,} predictions changed)",
    ]
    for row in int8.speed:
        lines.append(f"latency, batch {row['batch']}, int8 vs {row['against']}: {row['summary']}")
    left = int8.layers_left_fp32
    lines.append(
        "layers left fp32: "
        + ("; ".join(f"{row['name']} ({row['reason']})" for row in left) if left else "none")
    )
    lines.append(f"note: {int8.note}")
    return "\n".join(lines)


# --- saved experiments --------------------------------------------------------------------------


def experiments_for_save(args: argparse.Namespace) -> ExperimentStore | None:
    """The database ``eval --save`` writes to, with the name checked; None without --save."""
    if args.save is None:
        for flag, value in (("--note", args.note), ("--replace", args.replace)):
            if value:
                raise CliError(f"{flag} only applies with --save NAME")
        return None
    try:
        name = check_name(args.save)
    except ValueError as err:
        raise CliError(f"--save: {err}") from None
    experiments = default_experiments()
    if not args.replace:
        try:
            old = experiments.get(name)
        except ExperimentNotFound:
            return experiments
        if old.name == name:  # get also finds ids: only a taken *name* is in the way
            raise CliError(
                f"--save: an experiment named {name!r} exists already (saved "
                f"{_when(old)}); add --replace to overwrite it, or choose another name"
            )
    return experiments


def _when(experiment: Experiment) -> str:
    return experiment.created[:19].replace("T", " ") + " UTC"


def _saved_summary(experiment: Experiment, experiments: ExperimentStore | None) -> dict[str, Any]:
    return {
        "id": experiment.id,
        "name": experiment.name,
        "database": str(experiments.path) if experiments else None,
    }


def _experiment_json(experiment: Experiment) -> dict[str, Any]:
    return {**experiment.to_dict(), "plan_label": _plan_label(experiment)}


def _plan_label(experiment: Experiment) -> str:
    try:
        return plan_label(experiment.plan)
    except ValueError:  # a method this installation does not know: the raw names then
        return f"{experiment.plan.method}, {experiment.plan.criterion}"


def _metric(experiment: Experiment, key: str) -> str:
    value = experiment.metrics.get(key)
    return pct(value) if isinstance(value, int | float) else "-"


def cmd_experiments(args: argparse.Namespace) -> Any:
    """``experiments list | show | delete | export``."""
    experiments = default_experiments()
    if args.action == "list":
        found = experiments.list(args.subject)
        if args.json:
            return [_experiment_json(e) for e in found]
        if not found:
            if args.subject:
                return f"no saved experiments for subject {args.subject} in {experiments.path}"
            return (
                f"no saved experiments yet in {experiments.path} "
                "(save one: pruning-explorer eval MODEL ... --save NAME)"
            )
        rows = [
            (
                e.name,
                _when(e),
                e.subject.label,
                e.subject.key,
                _plan_label(e),
                _metric(e, "accuracy"),
                _metric(e, "sparsity"),
                e.id[:8],
            )
            for e in found
        ]
        header = ["name", "saved", "subject", "subject key", "plan", "accuracy", "sparsity", "id"]
        return table(rows, header)
    if args.action == "show":
        experiment = experiments.get(args.name)
        if args.json:
            return _experiment_json(experiment)
        return _show(experiment)
    if args.action == "delete":
        experiment = experiments.delete(args.name)
        if args.json:
            return {"deleted": _saved_summary(experiment, experiments)}
        return f"deleted experiment {experiment.name!r} (id {experiment.id[:8]})"
    if args.action == "export":
        path = check_output("--out", args.out)  # before anything is read or written
        text, count = csv_text(experiments, args.subject)
        write_output("--out", path, lambda file: file.write(text.encode("utf-8")))
        if args.json:
            return {"written": str(path), "experiments": count}
        return f"wrote {count:,} experiment(s) to {path}"
    raise CliError(f"unknown experiments action {args.action!r}")  # argparse prevents it


def _show(experiment: Experiment) -> str:
    lines = [
        f"name:     {experiment.name}",
        f"id:       {experiment.id}",
        f"saved:    {_when(experiment)}",
        f"subject:  {experiment.subject.label} (key {experiment.subject.key})",
        f"plan:     {_plan_label(experiment)}",
    ]
    if experiment.note:
        lines.append("note:     " + experiment.note.replace("\n", "\n          "))
    scalars = [
        (key, value)
        for key, value in experiment.metrics.items()
        if not isinstance(value, list | dict)
    ]
    lines += ["", table([(k, "-" if v is None else v) for k, v in scalars], ["metric", "value"])]
    int8 = experiment.metrics.get("int8")
    if isinstance(int8, dict):  # the int8 variant's scalars, measured with eval --int8
        rows = [
            (k, "-" if v is None else v) for k, v in int8.items() if not isinstance(v, list | dict)
        ]
        lines += ["", table(rows, ["int8 variant", "value"])]
    timings = experiment.metrics.get("latency") or []
    if timings:
        lines += [
            "",
            table(
                [
                    (t.get("model"), t.get("batch"), f"{t.get('median_ms', math.nan):.3f}")
                    for t in timings
                ],
                ["latency", "batch", "median ms"],
            ),
        ]
    lines += ["", "plan as JSON:", experiment.plan.to_json()]
    return "\n".join(lines)


APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"


def app_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run app.py -- …`` command line that opens the app on the given files."""
    if not APP_SCRIPT.is_file():
        raise CliError(f"the app's script {APP_SCRIPT} is missing: run from a clone of the repo")
    extra = []
    if args.model:
        subject_from_args(args)  # the same checks as every other command, before starting
        extra += ["--model", args.model, *_data_flags(args)]
        if args.weights:
            extra += ["--weights", str(Path(args.weights).resolve())]
        if args.model_args:
            extra += ["--model-args", args.model_args]
    if args.trust_code:
        extra.append("--trust-code")
    if args.trust_pickle:
        extra.append("--trust-pickle")
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)]
    if args.port:
        command += ["--server.port", str(args.port)]
    # Streamlit's own limit follows ours, so that its uploaders say (and take) what the page says.
    command += ["--server.maxUploadSize", str(max_upload_mb())]
    return command + (["--", *extra] if extra else [])


def _data_flags(args: argparse.Namespace) -> list[str]:
    """The data flags of ``args`` again, as text for the app's own parser."""
    data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    flags = ["--data", data]
    if args.size:
        flags += ["--size", "x".join(map(str, args.size))]
    if args.channels:
        flags += ["--channels", str(args.channels)]
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values:
            flags += [flag, ",".join(map(repr, values))]
    if args.from_images:
        flags += ["--from-images", ",".join(args.from_images)]
    flags += ["--eval-fraction", repr(args.eval_fraction), "--split-seed", str(args.split_seed)]
    return flags


def cmd_app(args: argparse.Namespace) -> Any:
    """Start the app (replaces this process: the app's own output follows)."""
    command = app_command(args)
    warn_ignored(args)  # the app's own output follows
    sys.stdout.flush()
    os.execv(command[0], command)


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "models": cmd_models,
    "info": cmd_info,
    "prune": cmd_prune,
    "export": cmd_export,
    "eval": cmd_eval,
    "app": cmd_app,
    "experiments": cmd_experiments,
}


def cmd_check(args: argparse.Namespace) -> Any:
    """Every step of the tool on the user's model, each ok / refused (why) / BUG."""
    from explorer.engine.compat import check_model

    subject = subject_from_args(args)

    def started(step: str) -> None:
        if not args.json and sys.stderr.isatty():  # progress for a person, not for a pipe
            print(f"  {step}…", file=sys.stderr, flush=True)

    row = check_model(subject, eval_images=args.eval_images, progress=started)
    load = row.cells.get("load")
    if load is not None and load.status != "ok":  # nothing else ran: say why, as eval would
        raise CliError(load.detail or load.status)
    if args.json:
        return row.to_dict()
    lines = [
        f"{row.model}: every step of the tool on {args.eval_images} eval images",
        table(
            [(step, cell.status, cell.detail) for step, cell in row.cells.items()],
            ["step", "verdict", "why"],
        ),
        *row.notes,
    ]
    if row.bugs:
        lines.append("A BUG cell is ours, not your model's: please report it with the line above.")
    return "\n".join(lines)


COMMANDS["check"] = cmd_check


COMMANDS["finetune"] = finetune_output


def _add_latency_options(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument(
        "--repeats",
        type=whole_number("--repeats", 1),
        default=repeats,
        help=f"timed runs per model and batch (default {repeats})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pruning-explorer",
        description="Prune a model (bundled or your own) and read honest numbers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the bundled models with their model cards")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("info", help="a model's card and its prunable layers")
    add_subject_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "check", help="run every step of the tool on a model: what works, what is refused, why"
    )
    add_subject_options(p)
    p.add_argument(
        "--eval-images",
        type=whole_number("--eval-images", 1),
        default=64,
        help="eval images each step uses (default 64)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="write the pruned model: weights, pt2, ONNX, code…")
    add_subject_options(p)
    add_plan_options(p)
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{name}: {fmt.help}" for name, fmt in FORMATS.items()),
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the file to write (default: MODEL_PLAN[_FORMAT].SUFFIX here, e.g. "
        "resnet18_filters30.onnx; the preprocessing goes beside it as FILE.json)",
    )
    _add_latency_options(p, repeats=12)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("prune", help="apply a plan and write the pruned weights")
    add_subject_options(p)
    add_plan_options(p)
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the pruned state_dict (torch.save; load with torch.load(FILE, "
        "weights_only=True))",
    )
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
        help="structured plans: write the physically smaller model as a torch.export program "
        "(CPU, any batch size; .pt2 is the usual name). Load it with "
        f"{LOAD_COMPACTED.replace('PATH', 'FILE')}: no model class and no pickle needed; "
        "the module is already in inference mode (it refuses .eval())",
    )
    p.add_argument("--save-plan", metavar="FILE", help="write the plan as JSON")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("app", help="start the app, optionally on your own model and data")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help="a state_dict or .safetensors file")
    p.add_argument("--model-args", metavar="JSON", help="constructor arguments (JSON)")
    add_data_options(p.add_argument_group("data (as for eval)"))
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="accept visitors' uploads that run code as they load (.py, .pt2, TorchScript); "
        "your own --model file always may",
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled modules")
    p.add_argument("--port", type=whole_number("--port", 1), help="the server's port")
    p.set_defaults(json=False)

    p = sub.add_parser("eval", help="accuracy, FLOPs, size and latency of a (pruned) model")
    add_subject_options(p)
    add_plan_options(p)
    _add_latency_options(p, repeats=30)
    p.add_argument(
        "--threads",
        type=whole_number("--threads", 1),
        default=None,
        help="torch threads while timing (default: torch's setting)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also quantize the pruned model to int8 (weight-only, per channel) and report its "
        "accuracy, size and latency next to fp32; saved with --save",
    )
    group = p.add_argument_group("saving (see `experiments`)")
    group.add_argument(
        "--save", metavar="NAME", help="save this report as an experiment named NAME"
    )
    group.add_argument("--note", metavar="TEXT", help="a note kept with the saved experiment")
    group.add_argument(
        "--replace", action="store_true", help="with --save: overwrite an experiment of that name"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    add_finetune_parser(sub)

    p = sub.add_parser("experiments", help="saved experiments: list, show, delete, export")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="saved experiments, newest first")
    q.add_argument("--subject", metavar="KEY", help="only this subject's (its key, see list)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = actions.add_parser("show", help="one experiment: subject, plan, metrics, note")
    q.add_argument("name", metavar="NAME", help="its name (or id)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = actions.add_parser("delete", help="delete one experiment")
    q.add_argument("name", metavar="NAME", help="its name (or id)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = actions.add_parser("export", help="every experiment as CSV, one row each")
    q.add_argument("--out", metavar="FILE", required=True, help="the CSV file to write")
    q.add_argument("--subject", metavar="KEY", help="only this subject's experiments")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit code follows the convention in the module docstring."""
    return run(build_parser, argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
