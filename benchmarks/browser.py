"""Slider release -> metrics updated, in a real browser, per sample model.

    python benchmarks/browser.py [--models lenet5 resnet_mini] [--moves 7]

Starts `streamlit run app.py` on a loopback port, opens the Prune page in Debian's headless
chromium, moves the global sparsity slider one step (1%) at a time with the keyboard and times
how long until the Sparsity metric shows the new value. Also prints the server-side share (the
page's own "Re-evaluated in X s") and the same for the Weights page (slider -> app idle).
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.models import ZOO, weights_path
from tests.e2e.harness import (
    ROOT,
    browser_page,
    metric_value,
    running_app,
    server_seconds,
    set_slider_by_keys,
    wait_for_metric,
    wait_until_idle,
)

WAIT_CHANGED = """([label, before]) => {
    for (const m of document.querySelectorAll('[data-testid=stMetric]')) {
        const l = m.querySelector('[data-testid=stMetricLabel]');
        if (l && l.innerText.trim().startsWith(label)) {
            return m.querySelector('[data-testid=stMetricValue]').innerText.trim() !== before;
        }
    }
    return false;
}"""


def time_prune_moves(page: object, url: str, model: str, moves: int) -> tuple[list, list]:
    """Seconds from key press to the Sparsity metric changing, and server seconds, per move."""
    page.goto(f"{url}/prune?model={model}&amount=0.5")
    wait_for_metric(page, "Sparsity", 300_000)
    wait_until_idle(page, 300_000)
    totals, server = [], []
    for i in range(moves + 1):
        before = metric_value(page, "Sparsity")
        direction = 1 if i % 2 == 0 else -1
        started = time.perf_counter()
        set_slider_by_keys(page, "Global sparsity", direction)
        page.wait_for_function(WAIT_CHANGED, arg=["Sparsity", before], timeout=120_000, polling=10)
        elapsed = time.perf_counter() - started
        wait_until_idle(page)
        if i > 0:  # the first move warms caches (score tables, compiled kernels)
            totals.append(elapsed)
            server.append(server_seconds(page) or float("nan"))
    return totals, server


OVERVIEW_HEADING = """() => {
    const h = [...document.querySelectorAll('h4')].find(e => e.innerText.includes('overall'));
    return h ? h.innerText : null;
}"""


def time_weights_moves(page: object, url: str, model: str, moves: int) -> list[float]:
    """Seconds from key press on the Weights page's global slider until its last figure (the
    sparsity overview, drawn after the heatmap and the score histogram) shows the new plan."""
    page.goto(f"{url}/weights?model={model}&amount=0.5")
    page.wait_for_function(OVERVIEW_HEADING, timeout=300_000)
    wait_until_idle(page, 300_000)
    times = []
    for i in range(moves + 1):
        before = page.evaluate(OVERVIEW_HEADING)
        started = time.perf_counter()
        set_slider_by_keys(page, "Global sparsity", 1 if i % 2 == 0 else -1)
        page.wait_for_function(
            f"(before) => ({OVERVIEW_HEADING})() !== before",
            arg=before,
            timeout=120_000,
            polling=10,
        )
        elapsed = time.perf_counter() - started
        wait_until_idle(page)
        if i > 0:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--moves", type=int, default=7)
    args = parser.parse_args(argv)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    rows = []
    with running_app() as url, browser_page() as page:
        for model in args.models:
            if not weights_path(model).exists():
                print(f"{model}: no trained weights, skipped")
                continue
            print(f"timing {model}...", flush=True)
            totals, server = time_prune_moves(page, url, model, args.moves)
            figures = time_weights_moves(page, url, model, args.moves)
            rows.append(
                (
                    model,
                    statistics.median(totals),
                    max(totals),
                    statistics.median(server),
                    statistics.median(figures),
                )
            )
    print(
        f"\nslider -> metrics in chromium, median of {args.moves} one-step moves "
        "(goal: <= 0.5 s; weights page <= 1 s)"
    )
    print(
        f"{'model':<12} {'median s':>9} {'max s':>7} {'server s':>9} {'server %':>9} "
        f"{'weights page s':>15}"
    )
    for model, median, worst, server, figures in rows:
        print(
            f"{model:<12} {median:>9.3f} {worst:>7.3f} {server:>9.3f} "
            f"{server / median:>8.0%} {figures:>15.3f}"
        )


if __name__ == "__main__":
    main()
