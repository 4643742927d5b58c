"""A big user model stays interactive: torchvision ResNet-18 at 224 px, 1,000 eval images.

    python benchmarks/own_model.py [--arch resnet18] [--size 224] [--eval 1000] [--moves 5]

Builds the user's files in a temporary folder (nothing is downloaded): the architecture with
random weights of 10 classes saved as a state_dict, and an .npz of bundled MNIST digits (the
images are resized to --size and repeated to 3 channels by the loader, as a user's would be).
Then, as the app does for a user subject, prints:

- load: the subject opened (weights checked, data split and preprocessed, structure traced,
  stages cut) up to the dense model's first numbers with their 95% interval, which is what
  the Model & data page shows first — the goal is <= 15 s;
- dense exact: the rest of the progressive dense pass (the page refines it in place);
- first numbers: a global slider step -> the first chunk's accuracy with its 95% interval
  (library side; the browser adds about 0.1-0.2 s) — the goal is <= 1 s;
- exact: the whole eval part, for a global step (every layer changed: a full pass) and for a
  step of the last block's slider alone (resumed from the stored input of that block);
- peak memory of the process (ru_maxrss).

With --browser, the same files go through the app instead, in Debian's headless chromium
(`streamlit run app.py -- --model torchvision:ARCH --weights … --data … --size … --channels 3`):

- open: the Model & data page until the dense accuracy is on screen (the first numbers);
- a global slider step on the Prune page -> first numbers (every metric on the new plan,
  accuracy marked ≈ with its interval) — the goal is <= 1 s in the browser — and -> exact.

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torchvision

from explorer.engine.plan import PruningPlan
from explorer.engine.subject import DataSpec, ModelSource, Subject
from explorer.engine.workbench import open_workbench
from explorer.loading.store import default_store
from explorer.zoo.mnist import mnist_pixels


def user_files(folder: Path, arch: str, eval_images: int) -> tuple[Path, Path]:
    """A state_dict of ``arch`` with 10 classes and an .npz of MNIST digits (fit + eval)."""
    torch.manual_seed(0)
    weights = folder / f"{arch}.pt"
    torch.save(
        torchvision.models.get_model(arch, weights=None, num_classes=10).state_dict(), weights
    )
    images, labels = mnist_pixels("eval")
    count = round(eval_images / 0.3)  # the default split holds 30% out for eval
    buffer = io.BytesIO()
    np.savez(buffer, images=images[:count], labels=labels[:count])
    data = folder / "digits.npz"
    data.write_bytes(buffer.getvalue())
    return weights, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--eval", type=int, default=1000, help="eval images")
    parser.add_argument("--moves", type=int, default=5, help="global slider steps timed")
    parser.add_argument("--browser", action="store_true", help="time the app in chromium")
    args = parser.parse_args()
    if args.browser:
        with tempfile.TemporaryDirectory() as tmp:
            browser_figures(Path(tmp), args)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights, data = user_files(folder, args.arch, args.eval)
        os.environ["PRUNING_EXPLORER_HOME"] = str(folder)  # the store the workbench reads
        digest = default_store().register(weights)
        subject = Subject(
            ModelSource("torchvision", args.arch),
            digest,
            DataSpec(str(data), size=(args.size, args.size), channels=3),
        )
        start = time.perf_counter()
        bench = open_workbench(subject)
        evaluator = bench.evaluator
        dense_steps = evaluator.dense_steps()
        dense_first = next(dense_steps)
        load_s = time.perf_counter() - start
        for _ in dense_steps:
            pass
        dense_s = time.perf_counter() - start - load_s
        chunks = [len(c) for c in evaluator._chunk_samples]
        first, exact, widths = [], [], []
        for move in range(1, args.moves + 1):
            state = bench.resolve(PruningPlan(method="filters", amount=0.02 * move))
            began = time.perf_counter()
            for outcome in evaluator.steps_for_state(state):
                if not first or len(first) < move:
                    first.append(time.perf_counter() - began)
                    low, high = outcome.accuracy_interval()
                    widths.append((high - low) * 100)
            exact.append(time.perf_counter() - began)
        last = bench.pruner.structure.layers[-2].name  # the last block's last conv
        late = []
        for move in range(1, args.moves + 1):
            plan = PruningPlan(scope="layer", unit_amounts=((last, 0.1 * move),))
            state = bench.resolve(plan)
            began = time.perf_counter()
            outcome = evaluator.evaluate_state(state)
            late.append(time.perf_counter() - began)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.arch} at {args.size} px, {len(bench.eval_set):,} eval images, "
        f"{bench.dense_flops / 1e9:.2f} GFLOPs/img, {torch.get_num_threads()} threads"
    )
    print(f"chunks: {chunks}")
    low, high = dense_first.accuracy_interval()
    print(
        f"stages: {len(evaluator.stages)} (resume points under the activation budget); "
        f"{args.arch} {'resumes' if outcome.resumed_from else 'does not resume'} at "
        f"stage {outcome.resumed_from} for {last}"
    )
    print(
        f"load (files -> first dense numbers, {dense_first.covered} images, 95% "
        f"{low:.0%}-{high:.0%}): {load_s:.1f} s (goal <= 15 s); dense exact "
        f"{dense_s:.1f} s later"
    )
    print(
        f"global step -> first numbers: {statistics.median(first):.2f} s median, "
        f"{max(first):.2f} s max (goal <= 1 s); "
        f"95% interval {statistics.median(widths):.1f} pts wide"
    )
    print(f"global step -> exact numbers: {statistics.median(exact):.1f} s median")
    print(f"{last} step -> exact numbers: {statistics.median(late):.2f} s median (resumed)")
    print(f"peak memory: {peak_mb:,.0f} MB")


def browser_figures(folder: Path, args: argparse.Namespace) -> None:
    """Open the user's files in the app, in chromium, and time what a user waits for."""
    from benchmarks.browser import time_prune_moves
    from tests.e2e.harness import browser_page, running_app, wait_for_metric

    weights, data = user_files(folder, args.arch, args.eval)
    app_args = ["--model", f"torchvision:{args.arch}", "--weights", str(weights)]
    app_args += ["--data", str(data), "--size", str(args.size), "--channels", "3"]
    home = {"PRUNING_EXPLORER_HOME": str(folder / "home")}
    with running_app(300, app_args, home) as url, browser_page() as page:
        started = time.perf_counter()
        page.goto(url)
        shown = wait_for_metric(page, "Eval accuracy", 300_000)
        opened = time.perf_counter() - started
        first, exact, server, previews = time_prune_moves(page, url, "amount=0.5", args.moves)
    print(f"{args.arch} at {args.size} px, {args.eval:,} eval images, in chromium 1280x800")
    print(f"open (Model & data page -> dense accuracy {shown}): {opened:.1f} s (goal <= 15 s)")
    print(
        f"global step -> first numbers: {statistics.median(first):.2f} s median, "
        f"{max(first):.2f} s max (goal <= 1 s); {previews} of {len(first)} moves a preview"
    )
    print(
        f"global step -> exact numbers: {statistics.median(exact):.1f} s median "
        f"(server {statistics.median(server):.1f} s)"
    )


if __name__ == "__main__":
    main()
