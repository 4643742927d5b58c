"""Compatibility matrix: every model through the whole pipeline, one cell per step.

Models: every torchvision classification architecture (random weights, 10 classes, the smallest
input each takes; googlenet and inception_v3 also without their aux heads), about fifty timm
architectures across families (``timm:NAME``; built here with ``timm.create_model`` while explorer
has no timm source), and the user-style idiom models of ``tests/idiom_models.py`` (untrained).
Each runs ``explorer.engine.compat.check_model`` in its own process, with a wall-clock limit and a
memory cap, so that one model cannot end the run: a killed process is a ``BUG`` in the step it
was in. Models whose parameters alone would not fit (counted on the meta device) are skipped.

Prints one row per model (``ok``, ``refused``, ``BUG``, ``n/a``, ``skip`` per step), the reason
of every refused / BUG cell, and counts per step. Benchmarks print figures; they never assert.

    .venv/bin/python benchmarks/compat.py [--family torchvision|timm|idioms|all] [--quick]
        [--models a,b] [--timeout 300] [--memory-gb 8] [--jobs 1] [--markdown FILE] [--json FILE]
    .venv/bin/python benchmarks/compat.py --one torchvision:resnet18 --json   # one model
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.engine.compat import STEPS, Cell, CompatRow, check_model, liven  # noqa: E402
from explorer.engine.limits import MAX_UPLOAD_ENV  # noqa: E402

IDIOMS_FILE = ROOT / "tests" / "idiom_models.py"
BYTES_PER_PARAM = 80  # a check holds ~10 fp32 copies of the weights plus score tables
CELL_PREFIX, STEP_PREFIX, RESULT_PREFIX = "CELL ", "STEP ", "RESULT "

# --- the models ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One model of the matrix: ``label`` (``family:name`` and a variant tag), its source and
    constructor arguments, and the input size (3 channels; idioms 1x28x28)."""

    label: str
    family: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    size: int | None = None


#: torchvision architectures that do not take 32 px (inception_v3: 75+; maxvit_t: 224, its
#: windows of 7 at every stage; vit_h_14: patches of 14).
TORCHVISION_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}
NO_AUX = {"aux_logits": False, "init_weights": True}

#: timm name -> (size, takes img_size): the smallest variant per family, smallest valid input.
TIMM_MODELS: dict[str, tuple[int, bool]] = {
    "resnet10t": (32, False),
    "resnetv2_50": (32, False),
    "efficientnet_b0": (32, False),
    "mobilenetv3_small_050": (32, False),
    "tf_mobilenetv3_small_minimal_100": (32, False),
    "mobilenetv4_conv_small": (32, False),
    "convnext_atto": (32, False),
    "regnetx_002": (32, False),
    "regnety_002": (32, False),
    "vit_tiny_patch16_224": (32, True),
    "deit_tiny_patch16_224": (32, True),
    "eva02_tiny_patch14_224": (32, True),
    "swin_tiny_patch4_window7_224": (32, True),
    "levit_128s": (32, True),
    "mixer_s16_224": (32, True),
    "resmlp_12_224": (32, True),
    "repvgg_a0": (32, False),
    "mobileone_s0": (32, False),
    "ghostnet_100": (32, False),
    "densenet121": (32, False),
    "dla34": (32, False),
    "hrnet_w18_small": (32, False),
    "cspresnet50": (32, False),
    "rexnet_100": (32, False),
    "tinynet_e": (32, False),
    "lcnet_050": (32, False),
    "efficientvit_b0": (32, False),
    "fastvit_t8": (32, False),
    "poolformer_s12": (32, False),
    "coat_lite_tiny": (32, True),
    "pit_ti_224": (32, True),
    "cait_xxs24_224": (32, True),
    "xcit_nano_12_p16_224": (32, True),
    "convit_tiny": (32, True),
    "edgenext_xx_small": (32, False),
    "mobilevit_xxs": (32, True),
    "tiny_vit_5m_224": (32, False),
    "efficientformer_l1": (224, True),
    "gcvit_xxtiny": (32, True),
    "maxvit_nano_rw_256": (32, True),
    "dpn68": (32, False),
    "selecsls42b": (32, False),
    "res2net50_14w_8s": (32, False),
    "resnest14d": (32, False),
    "sebotnet33ts_256": (32, True),
    "nfnet_l0": (32, False),
    "convmixer_768_32": (32, False),
    "ese_vovnet19b_dw": (32, False),
    "hgnetv2_b0": (32, False),
    "starnet_s1": (32, False),
}

#: One model per family at the smallest size: the CI slice.
QUICK = (
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
    "torchvision:vit_b_32",
    "timm:resnet10t",
    "idioms:ClassicLeNet",
)


def torchvision_entries() -> list[Entry]:
    import torchvision

    entries = []
    for arch in torchvision.models.list_models(module=torchvision.models):
        size = TORCHVISION_SIZES.get(arch, 32)
        args: dict[str, Any] = {"num_classes": 10}
        if arch.startswith("vit_"):
            args["image_size"] = size
        entries.append(Entry(f"torchvision:{arch}", "torchvision", arch, args, size))
        if arch in ("googlenet", "inception_v3"):
            label = f"torchvision:{arch}-noaux"
            entries.append(Entry(label, "torchvision", arch, {**args, **NO_AUX}, size))
    return entries


def timm_entries() -> list[Entry]:
    entries = []
    for name, (size, img_size) in TIMM_MODELS.items():
        args: dict[str, Any] = {"num_classes": 10}
        if img_size:
            args["img_size"] = size
        entries.append(Entry(f"timm:{name}", "timm", name, args, size))
    return entries


def idiom_entries() -> list[Entry]:
    sys.path.insert(0, str(ROOT))
    from tests.idiom_models import IDIOMS

    return [Entry(f"idioms:{name}", "idioms", name) for name in IDIOMS]


FAMILIES: dict[str, Callable[[], list[Entry]]] = {
    "torchvision": torchvision_entries,
    "timm": timm_entries,
    "idioms": idiom_entries,
}


def all_entries() -> dict[str, Entry]:
    return {e.label: e for build in FAMILIES.values() for e in build()}


# --- one model, in this process ------------------------------------------------------------------


def timm_source_available() -> bool:
    from explorer.engine.subject import MODEL_KINDS

    return "timm" in MODEL_KINDS


def build_model(entry: Entry) -> Any:
    """``entry``'s model with random weights (torchvision or timm), made live (``liven``)."""
    if entry.family == "timm":
        import timm

        return liven(timm.create_model(entry.name, pretrained=False, **entry.args))
    import torchvision

    return liven(torchvision.models.get_model(entry.name, weights=None, **entry.args))


def subject_of(entry: Entry, workdir: Path) -> tuple[Any, Callable[[], Any] | None, Any]:
    """The entry's subject, a builder when explorer has no loader for it (timm before its
    source exists), and the resolver of its weights: random weights, made live, saved to a
    file in ``workdir`` (an idiom model is loaded with its own random initialisation)."""
    import torch

    from explorer.engine.subject import DataSpec, ModelSource, Subject
    from explorer.loading.store import Store

    if entry.family == "idioms":
        return Subject(ModelSource("python", f"{IDIOMS_FILE}:{entry.name}")), None, None
    data = DataSpec("mnist", size=(entry.size, entry.size), channels=3)
    if entry.family == "timm" and not timm_source_available():
        subject = Subject(ModelSource("zoo", entry.label), None, data)
        return subject, lambda: build_model(entry), None
    store = Store(workdir)
    path = workdir / "weights.pt"
    torch.save(build_model(entry).state_dict(), path)
    source = ModelSource(entry.family, entry.name, json.dumps(entry.args))
    return Subject(source, store.register(path), data), None, store.path


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered while this is open lives on the meta device (for builders
    that compute shapes with data-dependent tensor ops, which the meta device refuses)."""
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: Any) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def parameter_count(entry: Entry) -> int | None:
    """Parameters of ``entry``'s model, counted without allocating them; None if unknown."""
    import torch

    if entry.family == "idioms":
        return None

    def build() -> Any:
        if entry.family == "timm":
            import timm

            return timm.create_model(entry.name, pretrained=False, **entry.args)
        import torchvision

        return torchvision.models.get_model(entry.name, weights=None, **entry.args)

    for context in (lambda: torch.device("meta"), _parameters_on_meta):
        try:
            with context():
                model = build()
            return sum(p.numel() for p in model.parameters())
        except Exception:  # a builder the meta device cannot run: try the other way
            continue
    return None


def skipped_row(label: str, reason: str) -> CompatRow:
    row = CompatRow(label)
    for name in STEPS:
        row.cells[name] = Cell("skipped", reason)
    return row


def run_one(label: str, eval_images: int, max_params: int, emit: bool) -> CompatRow:
    """Check one model here; with ``emit``, print STEP / CELL / RESULT lines for a parent."""
    import warnings

    warnings.filterwarnings("ignore")
    entry = all_entries().get(label)
    if entry is None:
        return skipped_row(label, "unknown model label")
    params = parameter_count(entry)
    if params is not None and params > max_params:
        return skipped_row(label, f"{params / 1e6:.0f} M params, too large for this machine")

    def progress(step: str) -> None:
        if emit:
            print(STEP_PREFIX + step, flush=True)

    def done(step: str, cell: Cell) -> None:
        if emit:
            payload = {"step": step, "cell": cell.__dict__}
            print(CELL_PREFIX + json.dumps(payload), flush=True)

    with tempfile.TemporaryDirectory(prefix="compat-weights-") as workdir:
        subject, build, resolve = subject_of(entry, Path(workdir))
        return check_model(
            subject,
            eval_images=eval_images,
            build=build,
            resolve=resolve,
            label=label,
            progress=progress,
            done=done,
        )


# --- one model, in a child process ---------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(label: str, args: argparse.Namespace) -> CompatRow:
    """``label`` checked in its own process, killed past ``args.timeout`` or ``args.memory_gb``."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        label,
        "--json",
        "--eval-images",
        str(args.eval_images),
        "--memory-gb",
        str(args.memory_gb),
        "--threads",
        str(args.threads),
    ]
    # The benchmark is the operator with local files: its weights files may be as large as the
    # memory it gives each model (VGG-16 at 10 classes is 512 MB), not only as an upload.
    env = {**os.environ}
    env.setdefault(MAX_UPLOAD_ENV, str(int(args.memory_gb * 1024)))
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
    )
    cells: dict[str, Cell] = {}
    state = {"step": "load", "result": None}

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(STEP_PREFIX):
                state["step"] = line[len(STEP_PREFIX) :].strip()
            elif line.startswith(CELL_PREFIX):
                data = json.loads(line[len(CELL_PREFIX) :])
                cells[data["step"]] = Cell(**data["cell"])
            elif line.startswith(RESULT_PREFIX):
                state["result"] = CompatRow.from_dict(json.loads(line[len(RESULT_PREFIX) :]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start, cap, killed = time.monotonic(), args.memory_gb * 2**30, None
    peak = 0
    while child.poll() is None:
        elapsed = time.monotonic() - start
        rss = _rss_bytes(child.pid)
        peak = max(peak, rss)
        if elapsed > args.timeout:
            killed = f"killed: timeout after {args.timeout:.0f} s in step {state['step']}"
        elif rss > cap:
            killed = f"out of memory in step {state['step']} (RSS over {args.memory_gb:g} GB)"
        if killed:
            child.kill()
            child.wait()
            break
        time.sleep(0.5)
    reader.join(timeout=5)
    result = state["result"]
    if isinstance(result, CompatRow) and not killed:
        result.figures["peak_rss_gb"] = peak / 2**30
        return result
    row = CompatRow(label, dict(cells))
    reason = killed or f"the process ended with code {child.returncode} in step {state['step']}"
    for name in STEPS:
        if name not in row.cells:
            row.cells[name] = (
                Cell("BUG", reason) if name == state["step"] else Cell("skipped", "process ended")
            )
    row.cells = {name: row.cells[name] for name in STEPS}
    return row


# --- the table ----------------------------------------------------------------------------------


def versions() -> str:
    import torch
    import torchvision

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = "absent"
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm_version}"


def summary_lines(rows: list[CompatRow]) -> list[str]:
    lines = []
    for step in STEPS:
        counts = {s: 0 for s in ("ok", "refused", "BUG", "n/a", "skipped")}
        for row in rows:
            cell = row.cells.get(step)
            if cell is not None:
                counts[cell.status] = counts.get(cell.status, 0) + 1
        parts = [f"{counts['ok']} ok", f"{counts['refused']} refused", f"{counts['BUG']} BUG"]
        parts += [f"{counts[s]} {s}" for s in ("n/a", "skipped") if counts[s]]
        lines.append(f"{step}: {', '.join(parts)}")
    return lines


def details(rows: list[CompatRow]) -> list[str]:
    return [
        f"{row.model} / {step}: {cell.text}"
        for row in rows
        for step, cell in row.cells.items()
        if cell.status in ("refused", "BUG")
        or (step == "load" and cell.status == "skipped" and "too large" in cell.detail)
    ]


def text_table(rows: list[CompatRow]) -> str:
    width = max([len("model")] + [len(r.model) for r in rows])
    widths = [max(len(s), 7) for s in STEPS]
    head = (
        "model".ljust(width)
        + "  "
        + "  ".join(s.ljust(w) for s, w in zip(STEPS, widths, strict=True))
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = [
            row.cells.get(s, Cell("skipped")).short.ljust(w)
            for s, w in zip(STEPS, widths, strict=True)
        ]
        lines.append(row.model.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def markdown(rows: list[CompatRow], stamp: str) -> str:
    lines = ["| model | " + " | ".join(STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
    for row in rows:
        cells = [row.cells.get(s, Cell("skipped")).short for s in STEPS]
        lines.append(f"| {row.model} | " + " | ".join(cells) + " |")
    lines += ["", "Refused and BUG cells:", ""]
    lines += [f"- {line}" for line in details(rows)]
    lines += ["", *(f"- {line}" for line in summary_lines(rows)), "", stamp, ""]
    return "\n".join(lines)


def chosen(args: argparse.Namespace) -> list[str]:
    entries = all_entries()
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        labels = []
        for name in names:
            matches = [label for label in entries if label == name or label.split(":")[1] == name]
            labels += matches or [name]
        return labels
    if args.quick:
        return [label for label in QUICK if label in entries]
    families = list(FAMILIES) if args.family == "all" else [args.family]
    return [label for label, e in entries.items() if e.family in families]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument(
        "--models", help="comma-separated labels or names, e.g. resnet18,timm:dla34"
    )
    parser.add_argument("--quick", action="store_true", help="one model per family (the CI slice)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="RSS cap per model")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per model")
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", nargs="?", const="-", help="rows as JSON (to FILE, or stdout)")
    parser.add_argument("--one", help="check one model in this process (what a child runs)")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="with --rows: print the table of the rows there, running nothing (the others are "
        "listed as not run yet)",
    )
    parser.add_argument(
        "--rows",
        type=Path,
        help="JSON lines of finished rows: models already there are not run again, new rows "
        "are added as they finish (a long run can stop and go on)",
    )
    args = parser.parse_args()
    max_params = int(args.memory_gb * 2**30 / BYTES_PER_PARAM)

    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        row = run_one(args.one, args.eval_images, max_params, emit=args.json == "-")
        if args.json == "-":
            print(RESULT_PREFIX + json.dumps(row.to_dict()), flush=True)
        else:
            print(text_table([row]))
            print("\n".join(f"{s}: {c.text}" for s, c in row.cells.items()))
        return

    labels = chosen(args)
    print(
        f"{len(labels)} models, {args.jobs} at a time, {args.timeout:.0f} s and "
        f"{args.memory_gb:g} GB each",
        flush=True,
    )
    rows: dict[str, CompatRow] = {}
    if args.rows is not None and args.rows.exists():
        for line in args.rows.read_text().splitlines():
            if line.strip():
                row = CompatRow.from_dict(json.loads(line))
                if row.model in labels:
                    rows[row.model] = row
    written = threading.Lock()

    def check(label: str) -> CompatRow:
        if label in rows:
            return rows[label]
        if args.table_only:
            return CompatRow(label, {step: Cell("skipped", "not run yet") for step in STEPS})
        start = time.monotonic()
        row = run_child(label, args)
        if args.rows is not None:
            with written, args.rows.open("a") as handle:
                handle.write(json.dumps(row.to_dict()) + "\n")
        bugs = len(row.bugs)
        print(
            f"  {label}: {time.monotonic() - start:.0f} s" + (f", {bugs} BUG" if bugs else ""),
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for label, row in zip(labels, pool.map(check, labels), strict=True):
            rows[label] = row
    ordered = [rows[label] for label in labels]
    stamp = f"{datetime.date.today().isoformat()}, {versions()}, {os.cpu_count()} cores"
    waiting = [
        row.model for row in ordered if row.cells.get("load", Cell("ok")).detail == "not run yet"
    ]
    if waiting:  # --table-only: the table shows what ran and names what did not
        ordered = [row for row in ordered if row.model not in waiting]
        stamp += f"; {len(ordered)} of {len(labels)} models run, not yet: {', '.join(waiting)}"
    print()
    print(text_table(ordered))
    print("\nRefused and BUG cells:")
    for line in details(ordered):
        print(f"  {line}")
    print()
    for line in summary_lines(ordered):
        print(line)
    print(stamp)
    if args.markdown:
        args.markdown.write_text(markdown(ordered, stamp))
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps([r.to_dict() for r in ordered], indent=1))


if __name__ == "__main__":
    main()
