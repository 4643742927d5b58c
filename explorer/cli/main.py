"""``pruning-explorer``: list, inspect, prune and evaluate the bundled models from a terminal.

    pruning-explorer models
    pruning-explorer info lenet5
    pruning-explorer prune lenet5 --amount 0.7 --method l1 --scope global --out pruned.pt
    pruning-explorer prune resnet_mini --method filters --amount 0.5 --compact-out small.pt2
    pruning-explorer eval resnet_mini --method filters --amount 0.5 --layer stem.conv=0.25
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
import contextlib
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import torch

from explorer.engine.compaction import CompactionError, can_compact, compact
from explorer.engine.importance import CRITERIA, get_criterion
from explorer.engine.inspection import prunable_layers
from explorer.engine.latency import compare_speed
from explorer.engine.limits import max_upload_mb
from explorer.engine.methods import unused_settings
from explorer.engine.plan import SCOPES, PruningPlan
from explorer.engine.pruning import METHODS, get_method, plan_label
from explorer.engine.subject import FROM_IMAGES, DataSpec, ModelSource, Subject
from explorer.engine.summary import human_bytes, runs_dense_kernels, three_digits
from explorer.engine.workbench import Report, Workbench, open_workbench
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
from explorer.keep.export import first_line as _one_line
from explorer.keep.quantize import Int8Report, int8_report  # also registers the int8 export format
from explorer.loading.errors import check_file
from explorer.loading.store import default_store
from explorer.zoo.models import ZOO, get_spec, list_models, load_card, load_model

#: Short names people type, as (method, criterion).
METHOD_ALIASES = {
    "l1": ("unstructured", "magnitude"),
    "random": ("unstructured", "random"),
    "2:4": ("nm", None),
}
EXPORT_STYLES = ("zeros", "torch_prune")
#: Set to 1 to see the traceback of an internal error instead of its one-line summary.
DEBUG_ENV = "PRUNING_EXPLORER_DEBUG"
#: A plan is a few hundred bytes of JSON; anything far larger is the wrong file, and reading
#: it whole (a disk image, /dev/zero's cousins) would only waste time before the same error.
PLAN_FILE_LIMIT = 1 << 20
#: How to load what --compact-out writes (PATH stands for the file).
LOAD_COMPACTED = "torch.export.load(PATH).module()"


class CliError(Exception):
    """A user mistake (or a limit the user can work around): one line on stderr, exit code 2."""


def _reason(err: BaseException) -> str:
    """Why an OS call failed, without the ``[Errno N]`` noise and the repeated path."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return _one_line(err)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is the same one line as every other error."""

    def error(self, message: str) -> NoReturn:
        # argparse prefixes "argument --flag: "; our own types already start with the flag.
        match = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match.group(2).startswith(match.group(1)):
            message = match.group(2)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# --- argument types (argparse names the flag in its error) ----------------------------------------


def _shown(text: str) -> str:
    return text if text.strip() else repr(text)


def whole_number(flag: str, minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int (``>= minimum``), or an error that names ``flag``."""
    want = "a whole number" if minimum is None else f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {want}, got {_shown(text)}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be {want}, got {_shown(text)}")
        return value

    return parse


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def fraction(flag: str) -> Callable[[str], float]:
    """An argparse type: a number in [0, 1] (nan and inf are not), or an error naming ``flag``."""

    def parse(text: str) -> float:
        value = _float(text)
        if value is None or not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number between 0 and 1 (0.5 = 50%), got {_shown(text)}"
            )
        return value

    return parse


def _positive_norm(text: str) -> float:
    value = _float(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(
            f"--norm must be a positive number (1 = L1, 2 = L2), got {_shown(text)}"
        )
    return value


def _layer_amount(text: str) -> tuple[str, float]:
    name, sep, amount = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"--layer expects NAME=AMOUNT (e.g. fc1=0.9), got {_shown(text)}"
        )
    value = _float(amount)
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"--layer {_shown(text)}: the amount must be a number between 0 and 1 (0.5 = 50%)"
        )
    return name, value


def _nm_pattern(text: str) -> tuple[int, int]:
    # ASCII digits only: str.isdigit() accepts "²", which int() then rejects.
    match = re.fullmatch(r"\s*([0-9]+)\s*:\s*([0-9]+)\s*", text)
    n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 0 < n < m:
        raise argparse.ArgumentTypeError(
            f"--nm must be N:M with whole numbers 0 < N < M (e.g. 2:4), got {_shown(text)}"
        )
    return n, m


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
    return "-" if value is None else human_bytes(value)  # the app's units: the same number


# --- plans from arguments -----------------------------------------------------------------------


def read_plan_file(text: str) -> PruningPlan:
    """The plan in file ``text``; every complaint about it names the file."""
    path = Path(text)
    if path.is_dir():
        raise CliError(f"--plan {path} is a directory, not a plan file")
    if not path.exists():
        raise CliError(f"plan file {path} does not exist")
    if not path.is_file():
        raise CliError(f"plan file {path} is not a regular file")
    try:
        size = path.stat().st_size
        if size > PLAN_FILE_LIMIT:
            raise CliError(
                f"plan file {path} is {size:,} bytes, too large for a plan (a small JSON object)"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read plan file {path}: {_reason(err)}") from None
    try:
        # utf-8-sig: a byte-order mark, as some Windows editors write, is not a JSON error.
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CliError(
            f"plan file {path} is not JSON text: byte {err.start} is not UTF-8 (a binary file?)"
        ) from None
    try:
        plan = PruningPlan.from_json(decoded)
        # The plan only checks the shape of the data; names are checked against the registries
        # here, so that the message can say which file holds the unknown name.
        get_method(plan.method)
        get_criterion(plan.criterion)
    except ValueError as err:
        raise CliError(f"plan file {path}: {_one_line(err)}") from None
    return plan


def plan_from_args(args: argparse.Namespace) -> PruningPlan:
    """A plan from ``--plan FILE`` (then adjusted by any other plan flag) or from flags alone.

    Every flag is already checked by its argparse type, so only the file can be wrong here.
    """
    plan = read_plan_file(args.plan) if args.plan else PruningPlan()
    data = plan.to_dict()
    if args.method:
        method, criterion = METHOD_ALIASES.get(args.method, (args.method, None))
        data["method"] = method
        if criterion:
            data["criterion"] = criterion
    for key in ("criterion", "scope", "amount", "seed", "norm"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.method and args.amount is None and get_method(data["method"]).amount_is_switch:
        # `--method nm` alone means the pattern on every layer that takes it: its amount is
        # only a switch, and a default of 0 would silently prune nothing.
        data["amount"] = data["amount"] or 1.0
    if args.layer:
        data["layers"] = {**data["layers"], **dict(args.layer)}
    if args.dense:
        data["dense"] = sorted(set(data["dense"]) | set(args.dense))
    if args.nm:
        if data["method"] != "nm":
            # Otherwise the pattern would be ignored without a word.
            raise CliError(
                f"--nm only applies to --method nm; this plan's method is {data['method']!r}"
            )
        data["nm"] = list(args.nm)
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
    group.add_argument(
        "--amount", type=fraction("--amount"), help="fraction to prune, 0..1 (default 0)"
    )
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
    group.add_argument(
        "--nm", type=_nm_pattern, metavar="N:M", help="pattern for --method nm (default 2:4)"
    )
    group.add_argument("--norm", type=_positive_norm, help="p of the Ln norm for structured scores")
    group.add_argument("--seed", type=whole_number("--seed"), help="seed of the random criterion")


# --- flags given but ignored: one warning line -------------------------------------------------

#: The plan flags and the plan setting each gives; which settings a plan's method and criterion
#: leave unused comes from the methods registry (``explorer.engine.methods.unused_settings``).
PLAN_FLAGS = {
    "--criterion": "criterion",
    "--scope": "scope",
    "--amount": "amount",
    "--layer": "layers",
    "--dense": "dense",
    "--nm": "nm",
    "--norm": "norm",
    "--seed": "seed",
}


@dataclass(frozen=True)
class IgnoredWhen:
    """A flag of ``commands`` that some other choice makes pointless: ``why(args)`` says why
    (None: it is used)."""

    flag: str
    commands: tuple[str, ...]
    why: Callable[[argparse.Namespace], str | None]


def _without_model(args: argparse.Namespace) -> str | None:
    return None if args.model else "no MODEL is given, so the app opens on a bundled model"


def _not_a_pickle(args: argparse.Namespace) -> str | None:
    try:
        kind = ModelSource.parse(args.model, args.model_args).kind
    except ValueError:  # said by the command itself, as an error
        return None
    return None if kind == "pickle" else "the model is not a pickle:FILE"


def _bundled_split(args: argparse.Namespace) -> str | None:
    return "the bundled MNIST has its fixed split" if args.data == "mnist" else None


def _timeless_format(args: argparse.Namespace) -> str | None:
    fmt = args.format
    return None if get_format(fmt).carries_model else f"--format {fmt} writes no model to time"


def _untimed(args: argparse.Namespace) -> str | None:
    if args.no_latency:
        return "--no-latency: nothing is timed"
    return _timeless_format(args) if args.command == "export" else None


#: What ``app`` hands to the app only together with a MODEL.
APP_SUBJECT_FLAGS = (
    "--weights",
    "--model-args",
    "--data",
    "--size",
    "--channels",
    "--mean",
    "--std",
    "--eval-fraction",
    "--split-seed",
    "--from-images",
)
#: Commands that open a subject (MODEL and the data flags).
SUBJECT_COMMANDS = ("info", "check", "prune", "export", "eval", "finetune")
#: Every flag that another choice can make pointless (plan flags: ``PLAN_FLAGS``). A command
#: module adds its own (``explorer.cli.recovery``).
IGNORED_WHEN: list[IgnoredWhen] = [
    *(IgnoredWhen(flag, ("app",), _without_model) for flag in APP_SUBJECT_FLAGS),
    *(IgnoredWhen(flag, ("eval", "export"), _untimed) for flag in ("--repeats", "--threads")),
    IgnoredWhen("--no-latency", ("export",), _timeless_format),
    IgnoredWhen(
        "--format",
        ("prune",),
        lambda args: None if args.out else "it is the layout of --out, which is not given",
    ),
    IgnoredWhen("--eval-fraction", (*SUBJECT_COMMANDS, "app"), _bundled_split),
    IgnoredWhen("--split-seed", (*SUBJECT_COMMANDS, "app"), _bundled_split),
    IgnoredWhen("--trust-pickle", SUBJECT_COMMANDS, _not_a_pickle),
]


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command`` (argparse keeps it in its subparsers action)."""
    for action in parser._actions:  # argparse has no public way to reach a sub-parser
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise CliError(f"unknown command {command!r}")


def given_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The flags of ``args.command`` the command line set to other than their default."""
    command = _command_parser(parser, args.command)
    return [
        max(action.option_strings, key=len)
        for action in command._actions
        if action.option_strings
        and action.dest != "help"
        and getattr(args, action.dest, action.default) != action.default
    ]


def ignored_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Every flag given that changes nothing here, as "--flag (why)"."""
    given = given_flags(parser, args)
    found: dict[str, str] = {}
    plan_given = [flag for flag in given if flag in PLAN_FLAGS]
    if plan_given:
        unused = unused_settings(plan_from_args(args))
        for flag in plan_given:
            if PLAN_FLAGS[flag] in unused:
                found[flag] = unused[PLAN_FLAGS[flag]]
    for rule in IGNORED_WHEN:
        if rule.flag in given and args.command in rule.commands and rule.flag not in found:
            why = rule.why(args)
            if why:
                found[rule.flag] = why
    return [f"{flag} ({why})" for flag, why in found.items()]


def note_ignored(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Keep in ``args.ignored`` the warning line naming every flag given that changes nothing
    here ("" for none); ``warn_ignored`` prints it."""
    ignored = ignored_flags(parser, args)
    args.ignored = "warning: ignored: " + "; ".join(ignored) if ignored else ""


def warn_ignored(args: argparse.Namespace) -> None:
    """Print the line ``note_ignored`` kept, once, on stderr: when the command has done its
    work (a command that fails says one line, its error) or is about to hand over (``app``)."""
    if getattr(args, "ignored", ""):
        _print_error(args.ignored)
        args.ignored = ""


# --- the subject: model source, weights, data ---------------------------------------------------

MODEL_HELP = (
    "a model source: a bundled name ("
    + ", ".join(ZOO)
    + "), torchvision:ARCH, timm:NAME (pip install -e '.[timm]'), path/to/model.py:ClassName "
    "(runs that file), a .pt2 / .onnx / .ts file, torchscript:FILE, or pickle:FILE (with "
    "--trust-pickle)"
)


def _numbers(flag: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: one number or one per channel, comma-separated."""

    def parse(text: str) -> tuple[float, ...]:
        values = tuple(_float(part) for part in text.split(","))
        if not values or any(v is None for v in values):
            raise argparse.ArgumentTypeError(
                f"{flag} must be a number or one per channel, e.g. 0.5 or 0.485,0.456,0.406; "
                f"got {_shown(text)}"
            )
        return values  # type: ignore[return-value]

    return parse


def _image_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*([0-9]+)\s*(?:[xX×,]\s*([0-9]+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"--size must be N or HxW, e.g. 224 or 32x32; got {text!r}"
        )
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise argparse.ArgumentTypeError(f"--size must be within 1..4096, got {text!r}")
    return height, width


def _add_subject_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    group = parser.add_argument_group("model and data (see README: Your own model)")
    group.add_argument(
        "--weights",
        metavar="FILE",
        help="a state_dict (.pt/.pth, read with weights_only=True) or .safetensors file",
    )
    group.add_argument(
        "--model-args",
        metavar="JSON",
        help="constructor arguments of a .py, torchvision or timm model, e.g. "
        "'{\"num_classes\": 10}'",
    )
    group.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickle:FILE, a whole pickled module (unpickling runs code from the file)",
    )
    add_data_options(group)


def _from_images(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FROM_IMAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"takes a comma-separated list of {', '.join(FROM_IMAGES)}, got {text!r}"
        )
    return names


def add_data_options(group: argparse._ActionsContainer) -> None:
    """--data and its preprocessing: the same flags for every command and for the app."""
    group.add_argument(
        "--data",
        metavar="SOURCE",
        default="mnist",
        help="mnist (bundled), an .npz (images, labels), an ImageFolder tree or .zip, or a "
        "CIFAR-10 / MNIST folder (default mnist)",
    )
    group.add_argument("--size", type=_image_size, help="resize images to N or HxW pixels")
    group.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3")
    group.add_argument("--mean", type=_numbers("--mean"), help="normalisation mean(s)")
    group.add_argument("--std", type=_numbers("--std"), help="normalisation std(s)")
    group.add_argument(
        "--from-images",
        type=_from_images,
        default=(),
        metavar="SETTINGS",
        help="take these from the images even where the model declares its own (e.g. a "
        f"torchvision model's 224×224, ImageNet mean and std): comma-separated, of "
        f"{', '.join(FROM_IMAGES)}",
    )
    group.add_argument(
        "--eval-fraction",
        type=fraction("--eval-fraction"),
        default=0.3,
        help="share of each class held out for evaluation (own data; default 0.3)",
    )
    group.add_argument(
        "--split-seed", type=whole_number("--split-seed", 0), default=0, help="seed of that split"
    )


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """The data the flags of ``add_data_options`` describe (ValueError when they disagree)."""
    return DataSpec(
        source=args.data,
        size=args.size,
        channels=args.channels,
        mean=args.mean,
        std=args.std,
        eval_fraction=args.eval_fraction,
        seed=args.split_seed,
        from_images=args.from_images,
    )


def subject_from_args(args: argparse.Namespace) -> Subject:
    """The subject the command works on; files are checked and hashed here."""
    try:
        source = ModelSource.parse(args.model, args.model_args)
    except ValueError as err:
        raise CliError(f"model {args.model!r}: {err}") from None
    if source.kind == "zoo" and source.ref not in ZOO:
        close = difflib.get_close_matches(source.ref, list(ZOO), n=1)
        raise CliError(
            f"unknown model {source.ref!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; bundled models: {', '.join(ZOO)}; or give torchvision:ARCH, timm:NAME, "
            "path/to/model.py:ClassName, or a .pt2 / .onnx / .ts file"
        )
    weights = None
    if args.weights:
        weights = default_store().register(check_file(args.weights, "weights file"))
    try:
        data = data_spec_from_args(args)
    except ValueError as err:
        raise CliError(f"--data: {err}") from None
    return Subject(source, weights, data)


def open_subject(args: argparse.Namespace, subject: Subject | None = None) -> Workbench:
    """The workbench of the command's subject (``subject``: as ``subject_from_args`` made it
    already). A .py model runs here: the CLI runs on the user's own files, so their code is
    theirs to run (a .py model is imported, a .pt2 or TorchScript file can run code as it
    loads); a pickled module needs --trust-pickle."""
    return open_workbench(
        subject or subject_from_args(args), trust_code=True, trust_pickle=args.trust_pickle
    )


# --- output files -------------------------------------------------------------------------------


def check_output(flag: str, text: str) -> Path:
    """``text`` as a path that ``flag`` can write, checked before any (slow) evaluation runs."""
    if not text.strip():
        raise CliError(f"{flag} needs a file name")
    if text.endswith(("/", os.sep)):
        raise CliError(f"{flag} {text} names a directory; give a file name")
    path = Path(text)
    parent = path.parent
    if not parent.exists():
        raise CliError(f"{flag} {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: {parent} is not a directory")
    if path.is_dir():
        raise CliError(f"{flag} {path} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise CliError(f"{flag} {path}: the file is not writable (permission denied)")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path}: cannot create a file in {parent} (permission denied)")
    return path


def check_outputs(flags: dict[str, str | None]) -> dict[str, Path]:
    """Every given output path of ``flags`` checked; two flags may not name one file."""
    paths = {flag: check_output(flag, text) for flag, text in flags.items() if text is not None}
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        key = path.resolve()
        if key in seen:
            raise CliError(f"{seen[key]} and {flag} both name {path}; give each its own file")
        seen[key] = flag
    return paths


def write_output(flag: str, path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write``; a failure is one line naming the flag, and leaves no half file."""
    try:
        file = path.open("wb")
    except OSError as err:  # nothing was touched yet: an existing file stays as it was
        raise CliError(f"{flag}: could not write {path}: {_reason(err)}") from None
    try:
        with file:
            write(file)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if path.is_file():  # a truncated, half-written file; never a device such as /dev/null
            with contextlib.suppress(OSError):
                path.unlink()
        raise CliError(f"{flag}: could not write {path}: {_reason(err)}") from None


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
    subject = subject_from_args(args)
    if subject.is_bundled and subject.weights is None:
        name = subject.model.ref
        card, spec = load_card(name), get_spec(name)
        layers = prunable_layers(load_model(name), tuple(card.get("input_shape", (1, 28, 28))))
        head = [f"{spec.title} ({spec.name})", spec.summary]
        if "eval_accuracy" in card:
            head.append(
                f"eval accuracy {_pct(card['eval_accuracy'])} on {card['eval_samples']:,} "
                f"held-out images; {card['params']:,} params; {card['flops']:,} FLOPs/img"
            )
    else:
        bench = open_subject(args)
        card, layers = bench.card, list(bench.pruner.structure.layers)
        card = {**card, "eval_accuracy": bench.dense.accuracy, "flops": bench.dense_flops}
        head = [
            f"{bench.subject.label}: {card.get('summary', '')}",
            f"eval accuracy {_pct(bench.dense.accuracy)} on {len(bench.eval_set):,} held-out "
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
        f"sparsity: {_pct(report.prunable_sparsity)} of prunable weights, "
        f"{_pct(report.sparsity)} of all parameters "
        f"({report.params_nonzero:,} of {report.params_total:,} nonzero)",
        f"accuracy: {_pct(report.accuracy)} (dense {_pct(report.dense_accuracy)}, "
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
    if int8 is not None:
        parts.append(_int8_text(int8))
    parts += [f"warning: {w}" for w in report.warnings]
    if saved is not None:
        parts.append(f"saved experiment {saved.name!r} (id {saved.id[:8]}) in {experiments.path}")
    return "\n\n".join(parts)


def _int8_text(int8: Int8Report) -> str:
    """The int8 variant next to the pruned fp32 model and dense: quality, bytes, latency."""
    sizes = [
        ("size on disk", _bytes(int8.dense_bytes), _bytes(int8.fp32_bytes), _bytes(int8.int8_bytes))
    ]
    if int8.int8_sparse_bytes is not None:
        sizes.append(
            (
                "size, zeros as a bitmap",
                "-",
                _bytes(int8.fp32_sparse_bytes),
                _bytes(int8.int8_sparse_bytes),
            )
        )
    quality = table(
        [
            (
                "accuracy",
                _pct(int8.dense_accuracy),
                _pct(int8.fp32_accuracy),
                _pct(int8.int8_accuracy),
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
    return _pct(value) if isinstance(value, int | float) else "-"


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


def cmd_finetune(args: argparse.Namespace) -> Any:
    """``finetune``: in ``explorer.cli.recovery`` (training is imported only when used)."""
    from explorer.cli.recovery import finetune_output

    return finetune_output(args)


COMMANDS["finetune"] = cmd_finetune


def _add_latency_options(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument(
        "--repeats",
        type=whole_number("--repeats", 1),
        default=repeats,
        help=f"timed runs per model and batch (default {repeats})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pruning-explorer", description="Prune the bundled models and read honest numbers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the bundled models with their model cards")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("info", help="a model's card and its prunable layers")
    _add_subject_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "check", help="run every step of the tool on a model: what works, what is refused, why"
    )
    _add_subject_options(p)
    p.add_argument(
        "--eval-images",
        type=whole_number("--eval-images", 1),
        default=64,
        help="eval images each step uses (default 64)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="write the pruned model: weights, pt2, ONNX, code…")
    _add_subject_options(p)
    _add_plan_options(p)
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
    _add_subject_options(p)
    _add_plan_options(p)
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
    _add_subject_options(p)
    _add_plan_options(p)
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

    from explorer.cli.recovery import add_finetune_parser  # here: it imports this module

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


def _print_error(line: str) -> None:
    with contextlib.suppress(OSError):  # stderr itself is gone: nobody is left to tell
        print(line, file=sys.stderr)


def _silence_stdout() -> None:
    """After a BrokenPipeError, as Python's docs advise (signal module, "Note on SIGPIPE"):
    point stdout at devnull, so that the flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. stdout captured by a test)
        pass


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed (2)
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        note_ignored(parser, args)  # a bad plan file fails here, before any work
        output = COMMANDS[args.command](args)
        text = json.dumps(output, indent=2) if args.json else str(output)
    except CliError as err:
        _print_error(f"error: {err}")
        return 2
    except BrokenPipeError:
        raise
    except (ValueError, OSError) as err:
        # The library's ValueErrors are checks of user input (plans, layer names); OSErrors
        # are files. Both are the user's to fix.
        if debug:
            raise
        _print_error(f"error: {_one_line(err)}")
        return 2
    except Exception as err:
        if debug:
            raise
        _print_error(
            f"internal error: {type(err).__name__}: {_one_line(err)} "
            f"(run with {DEBUG_ENV}=1 for the traceback)"
        )
        return 1
    warn_ignored(args)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()  # here, inside main: a closed pipe must fail now, not at exit
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit code follows the convention in the module docstring."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C; the user needs no message
    except BrokenPipeError:
        # The reader stopped early (``| head``): it has what it wanted, so this is no error.
        _silence_stdout()
        return 0


if __name__ == "__main__":
    # ``python -m explorer.cli.main`` runs this file as ``__main__``, a second copy of the module;
    # the commands in other modules raise the canonical module's CliError, so run that one.
    from explorer.cli.main import main as canonical_main

    sys.exit(canonical_main())
