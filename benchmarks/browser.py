"""Slider release -> metrics updated, in a real browser, per sample model.

    python benchmarks/browser.py [--models lenet5 resnet_mini] [--moves 7]

Starts `streamlit run app.py` on a loopback port, opens the Prune page in Debian's headless
chromium, moves the global sparsity slider one step (1%) at a time with the keyboard and times,
from the key press:

- first: every metric shows the new plan (Sparsity changed and Accuracy no longer "…"); for a
  slow model Accuracy, Loss and Flipped are then the preview on the first 1,000 eval images,
  marked "≈";
- exact: Accuracy, Loss and Flipped are exact, on all 5,000 eval images.

Also prints the server-side time (the page's own "Re-evaluated in X s"), and for the Weights
page slider -> its last figure redrawn. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.zoo.models import ZOO, load_card, weights_path
from tests.e2e.harness import (
    ROOT,
    browser_page,
    metric_value,
    running_app,
    server_seconds,
    set_slider_by_keys,
    wait_for_metric,
    wait_until_idle,
    wait_until_settled,
)

# What the Prune page shows: [new plan on screen, quality numbers exact].
SHOWN = """(sparsityBefore) => {
    const values = {};
    for (const m of document.querySelectorAll('[data-testid=stMetric]')) {
        const l = m.querySelector('[data-testid=stMetricLabel]');
        const v = m.querySelector('[data-testid=stMetricValue]');
        if (l && v) values[l.innerText.trim()] = v.innerText.trim();
    }
    const accuracy = values['Accuracy'] || '…';
    const fresh = values['Sparsity'] !== sparsityBefore && accuracy !== '…';
    return [fresh, fresh && !accuracy.startsWith('≈')];
}"""


def time_prune_moves(
    page: object, url: str, query: str, moves: int
) -> tuple[list[float], list[float], list[float], int]:
    """Seconds from key press to first numbers and to exact numbers, the server's seconds,
    per move, and how many moves showed a preview (``query``: the page's, e.g. a model)."""
    page.goto(f"{url}/prune?{query}")
    wait_for_metric(page, "Sparsity", 300_000)
    wait_until_settled(page, 300_000)
    first, exact, server, previews = [], [], [], 0
    for i in range(moves + 1):
        before = metric_value(page, "Sparsity")
        started = time.perf_counter()
        set_slider_by_keys(page, "Weights pruned", 1 if i % 2 == 0 else -1)
        # polled inside the page (a round trip per check would load the cores it measures)
        shown = page.wait_for_function(
            f"(b) => ({SHOWN})(b)[0] && ({SHOWN})(b)", arg=before, timeout=120_000, polling=10
        )
        seen_first = time.perf_counter() - started
        previewed = not shown.json_value()[1]
        page.wait_for_function(f"(b) => ({SHOWN})(b)[1]", arg=before, timeout=120_000, polling=10)
        seen_exact = time.perf_counter() - started
        wait_until_settled(page)
        if i > 0:  # the first move warms caches (score tables, compiled kernels)
            first.append(seen_first)
            exact.append(seen_exact)
            server.append(server_seconds(page) or float("nan"))
            previews += previewed
    return first, exact, server, previews


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
        set_slider_by_keys(page, "Weights pruned", 1 if i % 2 == 0 else -1)
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


MAP_HEADING = """() => {
    const h = [...document.querySelectorAll('h4')].find(e => e.innerText.includes(' output · '));
    return h ? h.innerText : null;
}"""
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))"
STATS_DRAWN = """() => document.body.innerText.includes('Cached per plan')
    && document.querySelectorAll('[data-testid=stPlotlyChart]').length >= 4"""


def time_activations(page: object, url: str, model: str, moves: int) -> tuple[float, list[float]]:
    """Seconds to open the Activations page on a plan not seen before (per-unit statistics
    over the eval split computed, every figure drawn), and per 'next sample' click until the
    activation map shows the new sample."""
    started = time.perf_counter()
    page.goto(f"{url}/activations?model={model}&amount=0.55")
    page.wait_for_function(STATS_DRAWN, timeout=300_000, polling=10)
    page.evaluate(PAINTED)
    opened = time.perf_counter() - started
    wait_until_idle(page)
    times = []
    for i in range(moves + 1):
        before = page.evaluate(MAP_HEADING)
        started = time.perf_counter()
        page.locator("[data-testid=stNumberInputStepUp]").first.click()
        page.wait_for_function(
            f"(before) => ({MAP_HEADING})() !== before", arg=before, timeout=120_000, polling=10
        )
        page.evaluate(PAINTED)
        elapsed = time.perf_counter() - started
        wait_until_idle(page)
        page.wait_for_timeout(300)  # Streamlit shows its status widget late: let runs end
        if i > 0:
            times.append(elapsed)
    return opened, times


NUMBERS = """(before) => {
    // [first numbers of a new subject, exact]: the Nonzero tile (value and "of N") differs
    // from ``before`` and Accuracy shows a number; exact once it is not the "≈" preview.
    const tile = (label) => [...document.querySelectorAll('[data-testid=stMetric]')].find(
        m => (m.querySelector('[data-testid=stMetricLabel]') || {}).innerText?.trim() === label);
    const nonzero = tile('Nonzero'), accuracy = tile('Accuracy');
    if (!nonzero || !accuracy) return [false, false];
    const value = accuracy.querySelector('[data-testid=stMetricValue]').innerText.trim();
    const fresh = nonzero.innerText !== before && value !== '…';
    return [fresh, fresh && !value.startsWith('≈')];
}"""
NONZERO = """() => ([...document.querySelectorAll('[data-testid=stMetric]')].find(
    m => (m.querySelector('[data-testid=stMetricLabel]') || {}).innerText?.trim() === 'Nonzero'
) || {}).innerText || ''"""


def _until_numbers(page: object, before: str, started: float) -> tuple[float, float]:
    page.wait_for_function(f"(b) => ({NUMBERS})(b)[0]", arg=before, timeout=300_000, polling=10)
    first = time.perf_counter() - started
    page.wait_for_function(f"(b) => ({NUMBERS})(b)[1]", arg=before, timeout=300_000, polling=10)
    return first, time.perf_counter() - started


def time_shared_links(page: object, url: str, model: str, rounds: int) -> list[tuple]:
    """(first, exact) seconds from opening a shared link to the Prune page of ``model`` in a
    fresh browser context (no cached page, no session: what a student's first click costs) on
    a server that has served the model before."""
    browser, times = page.context.browser, []
    for i in range(rounds + 1):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        fresh = context.new_page()
        started = time.perf_counter()
        fresh.goto(f"{url}/prune?model={model}&method=filters&amount=0.{30 + i}")
        times.append(_until_numbers(fresh, "", started))
        wait_until_settled(fresh, 300_000)
        context.close()
    return times[1:]  # the first warms the server's caches for this plan family


def time_model_switches(page: object, url: str, models: list[str], rounds: int) -> list[tuple]:
    """(first, exact) seconds from choosing another model in the sidebar's picker on the
    Prune page to its numbers, switching round the bundled models."""
    page.goto(f"{url}/prune?model={models[0]}&amount=0.5")
    wait_for_metric(page, "Nonzero", 300_000)
    wait_until_settled(page, 300_000)
    times = []
    for i in range(rounds * len(models)):
        target = models[(i + 1) % len(models)]
        before = page.evaluate(NONZERO)
        picker = page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]").first
        picker.click()
        option = page.get_by_role("option", name=_title(target), exact=True)
        started = time.perf_counter()
        option.click()
        times.append(_until_numbers(page, before, started))
        wait_until_settled(page, 300_000)
    return times[len(models) :]  # the first round opens each model once


def _title(model: str) -> str:
    return load_card(model).get("title", model).split(" (")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--moves", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="shared links / model switches")
    parser.add_argument("--skip-links", action="store_true", help="only the slider timings")
    parser.add_argument("--only-links", action="store_true", help="only links and switches")
    args = parser.parse_args(argv)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    rows, links, switches = [], {}, []
    with running_app() as url, browser_page() as page:
        models = [m for m in args.models if weights_path(m).exists()]
        if not args.skip_links:
            print("timing shared links and model switches...", flush=True)
            for model in models:
                links[model] = time_shared_links(page, url, model, args.rounds)
            if len(models) > 1:
                switches = time_model_switches(page, url, models, args.rounds)
        for model in args.models:
            if not weights_path(model).exists():
                print(f"{model}: no trained weights, skipped")
                continue
            if args.only_links:
                break
            print(f"timing {model}...", flush=True)
            first, exact, server, previews = time_prune_moves(
                page, url, f"model={model}&amount=0.5", args.moves
            )
            figures = time_weights_moves(page, url, model, args.moves)
            opened, samples = time_activations(page, url, model, args.moves)
            rows.append((model, first, exact, server, previews, figures, opened, samples))
    if links:
        print("\nshared link -> Prune page numbers, fresh browser context, median (max) s")
        print(f"{'model':<12} {'first numbers':>14} {'exact numbers':>14}")
        for model, times in links.items():
            print(
                f"{model:<12} {_cell([t[0] for t in times]):>14} {_cell([t[1] for t in times]):>14}"
            )
    if switches:
        print(
            f"model switch in the sidebar -> numbers: first {_cell([t[0] for t in switches])}, "
            f"exact {_cell([t[1] for t in switches])} ({len(switches)} switches)"
        )
    if not rows:
        return
    print(
        f"\nslider -> metrics in chromium, {args.moves} one-step moves, median (max) seconds "
        "(goal: <= 0.5 s; weights page <= 1 s)"
    )
    print(
        f"{'model':<12} {'first numbers':>14} {'previews':>9} {'exact numbers':>14} "
        f"{'server (exact)':>15} {'server %':>9}"
    )
    for model, first, exact, server, previews, *_ in rows:
        print(
            f"{model:<12} {_cell(first):>14} {f'{previews}/{len(first)}':>9} "
            f"{_cell(exact):>14} {statistics.median(server):>15.2f} "
            f"{statistics.median(server) / statistics.median(exact):>9.0%}"
        )
    print("\nfigures, median (max) seconds (goal: <= 1 s)")
    print(
        f"{'model':<12} {'weights: slider':>16} {'activations: next sample':>25} "
        f"{'open, new plan':>15}"
    )
    for model, *_, figures, opened, samples in rows:
        print(f"{model:<12} {_cell(figures):>16} {_cell(samples):>25} {opened:>15.2f}")
    print(
        "first numbers: sparsity, FLOPs, size exact; accuracy, loss and flips exact or, on a "
        "slow pass, the preview on 1,000 eval images (marked ≈; 'previews' counts those moves)"
    )


def _cell(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} ({max(seconds):.2f})"


if __name__ == "__main__":
    main()
