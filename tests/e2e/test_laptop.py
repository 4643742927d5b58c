"""The workbench at laptop size (1280×800 and the other common widths), in real chromium:
every headline value whole, every control labelled and reachable, keyboard stepping works."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from explorer.loading.store import HOME_ENV
from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    clipped_tables,
    cut_off_text,
    exceptions,
    missing_glyphs,
    running_app,
    scroll_parent_is_the_page,
    slider_thumb,
    wait_for_metric,
    wait_until_idle,
    wait_until_settled,
)

pytestmark = browser_test_marks()
SIZES = ((1280, 800), (1366, 768), (1440, 900), (1920, 1080))


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_prune_page_values_labels_and_tables_are_whole(app_url, width, height):
    # A structured plan on the residual net: the widest values (accuracy drop, FLOPs, size of
    # a compacted model, a latency verdict) and the longest method title.
    with browser_page(width, height) as page:
        page.goto(f"{app_url}/prune?model=resnet_mini&method=filters&amount=0.3")
        wait_for_metric(page, "Accuracy")
        wait_until_settled(page)
        page.screenshot(path=SHOTS / f"prune-{width}x{height}.png")
        assert cut_off_text(page, "[data-testid=stMetric]") == []
        assert cut_off_text(page, "[data-testid=stSelectbox]") == []
        assert cut_off_text(page, "[data-testid=stButton]") == []
        assert clipped_tables(page) == []
        assert not exceptions(page)


@pytest.mark.parametrize(("width", "height"), SIZES[:1] + SIZES[-1:])
def test_model_page_values_and_layer_table_are_whole(app_url, width, height):
    with browser_page(width, height) as page:
        page.goto(f"{app_url}/?model=vit_tiny")
        wait_for_metric(page, "Eval accuracy")
        wait_until_idle(page)
        page.screenshot(path=SHOTS / f"home-{width}x{height}.png")
        assert cut_off_text(page, "[data-testid=stMetric]") == []
        assert clipped_tables(page) == []
        # People use this app, they do not develop it: no Deploy button, no developer menu.
        assert page.get_by_role("button", name="Deploy").count() == 0
        # The call to action is above the fold.
        start = page.get_by_role("button", name=re.compile("Start pruning"))
        box = start.bounding_box()
        assert box is not None and box["y"] + box["height"] <= height
        assert not exceptions(page)


def test_every_layer_row_is_reachable_and_its_lock_is_labelled(app_url):
    with browser_page() as page:
        page.goto(f"{app_url}/prune?model=vit_tiny&amount=0.5")  # 14 prunable layers
        wait_for_metric(page, "Accuracy")
        wait_until_settled(page)
        last = 'input[type=range][aria-label^="head.fc · weights pruned"]'
        page.locator(last).wait_for(timeout=60_000)  # drawn once the numbers are in
        assert page.locator(last).count() == 1
        # No inner scroll box that hides the last rows: the page itself scrolls to them.
        assert scroll_parent_is_the_page(page, last)
        # Under load a rerun may still be redrawing the rows: wait for them as a user would.
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=stCheckbox]')]"
            ".filter(c => c.innerText.trim() === 'Lock').length === 14",
            timeout=60_000,
        )
        locks = page.locator("[data-testid=stCheckbox]", has_text=re.compile("^Lock$"))
        assert locks.count() == 14
        for i in range(locks.count()):
            lock = locks.nth(i)
            assert lock.inner_text().strip() == "Lock"
            label = lock.locator("label").bounding_box()
            assert label is not None and label["width"] > 20  # a visible label, not 0 px
        assert not page.locator("text=:material/lock:").count()
        names = page.evaluate(
            "() => [...document.querySelectorAll('button')].map(b => b.innerText.trim())"
        )
        assert page.get_by_role("button", name="Reset", exact=True).count() == 14  # per layer
        # No control is known to a screen reader by an icon's name ("restart_alt icon").
        assert not [n for n in names if re.fullmatch(r"[a-z_]+ icon", n)]


def test_keyboard_steps_a_layer_slider_one_press_at_a_time(app_url):
    with browser_page() as page:
        page.goto(f"{app_url}/prune?model=lenet5&amount=0.5&scope=layer")
        wait_for_metric(page, "Accuracy")
        wait_until_settled(page)
        thumb = slider_thumb(page, "fc1 · weights pruned")
        start = int(thumb.input_value())
        thumb.focus()
        for _ in range(8):
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(250)  # a press, then the page reruns while the user goes on
        page.wait_for_function(
            "(want) => decodeURIComponent(location.search).includes(want)",
            arg=f"units=fc1:{(start + 8) / 100:g}",
            timeout=60_000,
        )
        wait_until_settled(page)
        focused = page.evaluate("() => document.activeElement.getAttribute('aria-label')")
        assert focused.startswith("fc1 · weights pruned")
        assert int(slider_thumb(page, "fc1 · weights pruned").input_value()) == start + 8


#: Every other page in a state with its longest texts: a structured plan's titles, a ViT's
#: attention and heads, a flip list, the saved experiments of several subjects.
PAGES = (
    "recover?model=resnet_mini&method=filters&amount=0.3",
    "weights?model=resnet_mini&method=filters&amount=0.3",
    "activations?model=vit_tiny&method=heads&amount=0.5",
    "saliency?model=vit_tiny&method=heads&amount=0.5",
    "decisions?model=lenet5&amount=0.8",
    "compare?model=lenet5",
)


#: What every page draws once its numbers are in (a number, a table or a figure).
PAGE_CONTENT = ", ".join(
    f"[data-testid=stMain] [data-testid={part}]"
    for part in ("stMetric", "stDataFrame", "stPlotlyChart")
)


#: Saved experiments of two subjects, the longest rows Compare draws (CLI arguments).
SAVED = (
    ("lenet5", "--amount", "0.5", "--save", "lenet5 global fifty"),
    ("resnet_mini", "--method", "filters", "--amount", "0.3", "--save", "resnet mini filters"),
)


@pytest.fixture(scope="module")
def saved_app_url(tmp_path_factory):
    """An app whose home holds the ``SAVED`` experiments, saved through the CLI."""
    home = tmp_path_factory.mktemp("saved-home")
    for args in SAVED:
        subprocess.run(
            [sys.executable, "-m", "explorer.cli", "eval", *args],
            env={**os.environ, HOME_ENV: str(home)},
            check=True,
            capture_output=True,
            timeout=300,
        )
    with running_app(env={HOME_ENV: str(home)}) as url:
        yield url


@pytest.mark.parametrize(("width", "height"), SIZES[:1] + SIZES[-1:])
def test_every_page_shows_its_values_labels_and_choices_whole(saved_app_url, width, height):
    with browser_page(width, height) as page:
        for path in PAGES:
            page.goto(f"{saved_app_url}/{path}")
            page.get_by_text("Model & data").first.wait_for(timeout=120_000)
            wait_until_idle(page, 240_000)
            # the page's own content, drawn by a fragment after the first idle: checking
            # before it is there would pass on an empty page
            page.wait_for_function(
                "(sel) => [...document.querySelectorAll(sel)].some((e) => e.offsetHeight > 0)",
                arg=PAGE_CONTENT,
                timeout=120_000,
            )
            page.wait_for_timeout(500)  # the last fragment's elements
            wait_until_idle(page, 240_000)
            name = path.split("?")[0]
            page.screenshot(path=SHOTS / f"{name}-{width}x{height}.png")
            for part in ("stMetric", "stSelectbox", "stButton", "stSidebar", "stRadio"):
                assert cut_off_text(page, f"[data-testid={part}]") == [], (path, part)
            assert clipped_tables(page) == [], path
            assert not exceptions(page), path


#: String tokens: an f-string's text is its own token from Python 3.12 on
STRING_TOKENS = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def _symbols_the_app_writes() -> dict[str, str]:
    """Every non-ASCII character in a string of the app's code (labels, options, help texts,
    figure titles: also those a browser shows only on hover or in an open dropdown), with
    where it first appears."""
    root = Path(__file__).resolve().parents[2]
    symbols: dict[str, str] = {}
    for path in sorted([root / "app.py", *root.glob("pages/*.py"), *root.glob("explorer/**/*.py")]):
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for token in tokens:
            if token.type in STRING_TOKENS:
                for char in token.string:
                    if ord(char) > 127:
                        symbols.setdefault(char, f"{path.relative_to(root)}:{token.start[0]}")
    return symbols


def test_every_symbol_the_app_writes_has_a_glyph(app_url):
    # A symbol outside the text font and the usual fallbacks (a stopwatch, an emoji) shows as
    # an empty box: "Integrated Gradients ▯" read as a stray glyph at every size.
    symbols = _symbols_the_app_writes()
    assert "×" in symbols  # the scan sees the app's strings
    with browser_page() as page:
        page.goto(f"{app_url}/?model=lenet5")
        page.get_by_text("Model & data").first.wait_for(timeout=120_000)
        wait_until_idle(page)
        missing = missing_glyphs(page, sorted(symbols))
    assert {c: symbols[c] for c in missing} == {}
    # emoji are drawn from colour fonts that many servers' browsers lack
    assert {c: where for c, where in symbols.items() if ord(c) >= 0x1F000} == {}
