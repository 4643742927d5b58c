"""What every command shares: the one error convention (a user mistake is one line and exit
code 2, an internal error exit 1), the subject, plan and data options, argument types,
tables and output files."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from explorer.engine.importance import CRITERIA, get_criterion
from explorer.engine.methods import unused_settings
from explorer.engine.plan import SCOPES, PruningPlan
from explorer.engine.pruning import METHODS, get_method
from explorer.engine.subject import ModelSource, Subject, how_sources_are_written
from explorer.engine.summary import human_bytes
from explorer.engine.workbench import Workbench, open_workbench
from explorer.keep.export import first_line as _one_line
from explorer.keep.export import (
    get_format,
)
from explorer.loading.arguments import (
    add_data_options,
    data_spec_from_args,
    fraction,
    parse_float,
    shown,
    whole_number,
)
from explorer.loading.errors import check_file
from explorer.loading.store import default_store
from explorer.zoo.models import ZOO

#: Short names people type, as (method, criterion).
METHOD_ALIASES = {
    "l1": ("unstructured", "magnitude"),
    "random": ("unstructured", "random"),
    "2:4": ("nm", None),
}


#: Set to 1 to see the traceback of an internal error instead of its one-line summary.
DEBUG_ENV = "PRUNING_EXPLORER_DEBUG"


#: A plan is a few hundred bytes of JSON; anything far larger is the wrong file, and reading
#: it whole (a disk image, /dev/zero's cousins) would only waste time before the same error.
PLAN_FILE_LIMIT = 1 << 20


class CliError(Exception):
    """A user mistake (or a limit the user can work around): one line on stderr, exit code 2."""


def reason(err: BaseException) -> str:
    """Why an OS call failed, without the ``[Errno N]`` noise and the repeated path."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return _one_line(err)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is the same one line as every other error."""

    def error(self, message: str) -> NoReturn:
        # argparse prefixes "argument --flag: "; our own types already start with the flag.
        match = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match.group(2).startswith(match.group(1)):
            message = match.group(2)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_norm(text: str) -> float:
    value = parse_float(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(
            f"--norm must be a positive number (1 = L1, 2 = L2), got {shown(text)}"
        )
    return value


def unit_amount(text: str) -> tuple[str, float]:
    name, sep, amount = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"--unit expects NAME=AMOUNT (e.g. fc1=0.9), got {shown(text)}"
        )
    value = parse_float(amount)
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"--unit {shown(text)}: the amount must be a number between 0 and 1 (0.5 = 50%)"
        )
    return name, value


def nm_pattern(text: str) -> tuple[int, int]:
    # ASCII digits only: str.isdigit() accepts "²", which int() then rejects.
    match = re.fullmatch(r"\s*([0-9]+)\s*:\s*([0-9]+)\s*", text)
    n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 0 < n < m:
        raise argparse.ArgumentTypeError(
            f"--nm must be N:M with whole numbers 0 < N < M (e.g. 2:4), got {shown(text)}"
        )
    return n, m


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[cell(v) for v in row] for row in rows]
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


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def pct(value: float) -> str:
    return f"{value:.2%}"


def size_text(value: int | None) -> str:
    return "-" if value is None else human_bytes(value)  # the app's units: the same number


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
        raise CliError(f"cannot read plan file {path}: {reason(err)}") from None
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
    if args.unit:
        data["units"] = {**data["units"], **dict(args.unit)}
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


def add_plan_options(parser: argparse.ArgumentParser) -> None:
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
        "--unit",
        "--layer",  # its name before plans said "units"; scripts written then still run
        dest="unit",
        type=unit_amount,
        action="append",
        metavar="NAME=AMOUNT",
        help="per-unit amount, repeatable (e.g. --unit fc1=0.9; a unit is a layer, or a "
        "coupled channel group or block for structured methods; --layer is the same)",
    )
    group.add_argument(
        "--dense", action="append", metavar="NAME", help="leave this layer dense, repeatable"
    )
    group.add_argument(
        "--nm", type=nm_pattern, metavar="N:M", help="pattern for --method nm (default 2:4)"
    )
    group.add_argument("--norm", type=positive_norm, help="p of the Ln norm for structured scores")
    group.add_argument("--seed", type=whole_number("--seed"), help="seed of the random criterion")


#: The plan flags and the plan setting each gives; which settings a plan's method and criterion
#: leave unused comes from the methods registry (``explorer.engine.methods.unused_settings``).
PLAN_FLAGS = {
    "--criterion": "criterion",
    "--scope": "scope",
    "--amount": "amount",
    "--unit": "units",
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


def _flag_name(action: argparse.Action) -> str:
    """The name a flag goes by in messages: its first long form (``--unit``, not its old alias
    ``--layer``, nor a short ``-o``)."""
    long_forms = [s for s in action.option_strings if s.startswith("--")]
    return long_forms[0] if long_forms else action.option_strings[0]


def given_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The flags of ``args.command`` the command line set to other than their default."""
    command = _command_parser(parser, args.command)
    return [
        _flag_name(action)
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
        print_error(args.ignored)
        args.ignored = ""


MODEL_HELP = (
    "a model source: a bundled name ("
    + ", ".join(ZOO)
    + "), torchvision:ARCH, timm:NAME (pip install -e '.[timm]'), path/to/model.py:ClassName "
    "(runs that file), a .pt2 / .onnx / .ts file, torchscript:FILE, or pickle:FILE (with "
    "--trust-pickle)"
)


def add_subject_options(parser: argparse.ArgumentParser) -> None:
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
            + f"; bundled models: {', '.join(ZOO)}; or give "
            + how_sources_are_written(bundled=False)
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
        raise CliError(f"{flag}: could not write {path}: {reason(err)}") from None
    try:
        with file:
            write(file)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if path.is_file():  # a truncated, half-written file; never a device such as /dev/null
            with contextlib.suppress(OSError):
                path.unlink()
        raise CliError(f"{flag}: could not write {path}: {reason(err)}") from None


def print_error(line: str) -> None:
    with contextlib.suppress(OSError):  # stderr itself is gone: nobody is left to tell
        print(line, file=sys.stderr)


def silence_stdout() -> None:
    """After a BrokenPipeError, as Python's docs advise (signal module, "Note on SIGPIPE"):
    point stdout at devnull, so that the flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. stdout captured by a test)
        pass


def _run_parsed(
    build_parser: Callable[[], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    commands: Mapping[str, Callable[[argparse.Namespace], Any]],
) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed (2)
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    try:
        note_ignored(parser, args)  # a bad plan file fails here, before any work
    except (CliError, ValueError, OSError) as err:
        print_error(f"error: {_one_line(err)}")
        return 2
    return run_command(commands[args.command], args)


def run_command(command: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run one parsed command and print what it returns (``--json``: as JSON). The exit code:
    0 done; 2 a user mistake, told in one line on stderr; 1 an internal error, in one line
    (``PRUNING_EXPLORER_DEBUG=1`` raises it, with its traceback)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        output = command(args)
        text = json.dumps(output, indent=2) if getattr(args, "json", False) else str(output)
    except CliError as err:
        print_error(f"error: {err}")
        return 2
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except (ValueError, OSError) as err:
        # The library's ValueErrors are checks of user input (plans, unit names); OSErrors
        # are files. Both are the user's to fix.
        if debug:
            raise
        print_error(f"error: {_one_line(err)}")
        return 2
    except Exception as err:
        if debug:
            raise
        print_error(
            f"internal error: {type(err).__name__}: {_one_line(err)} "
            f"(run with {DEBUG_ENV}=1 for the traceback)"
        )
        return 1
    warn_ignored(args)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()  # here, inside the guard: a closed pipe must fail now, not at exit
    return 0


def run(
    build_parser: Callable[[], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    commands: Mapping[str, Callable[[argparse.Namespace], Any]],
) -> int:
    """Parse ``argv`` and run its command under the one convention (``run_command``); a Ctrl-C
    exits 130 without a message, and a reader that stops early (``| head``) is no error."""
    try:
        return _run_parsed(build_parser, argv, commands)
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C; the user needs no message
    except BrokenPipeError:
        silence_stdout()
        return 0
