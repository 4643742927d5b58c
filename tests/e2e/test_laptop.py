"""The workbench at laptop size (1280×800 and the other common widths), in real chromium:
every headline value whole, every control labelled and reachable, keyboard stepping works."""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    clipped_tables,
    cut_off_text,
    exceptions,
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
            arg=f"layers=fc1:{(start + 8) / 100:g}",
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


@pytest.mark.parametrize(("width", "height"), SIZES[:1] + SIZES[-1:])
def test_every_page_shows_its_values_labels_and_choices_whole(app_url, width, height):
    with browser_page(width, height) as page:
        for path in PAGES:
            page.goto(f"{app_url}/{path}")
            page.get_by_text("Model & data").first.wait_for(timeout=120_000)
            wait_until_idle(page, 240_000)
            page.wait_for_timeout(500)  # the last fragment's elements
            wait_until_idle(page, 240_000)
            name = path.split("?")[0]
            page.screenshot(path=SHOTS / f"{name}-{width}x{height}.png")
            for part in ("stMetric", "stSelectbox", "stButton", "stSidebar", "stRadio"):
                assert cut_off_text(page, f"[data-testid={part}]") == [], (path, part)
            assert clipped_tables(page) == [], path
            assert not exceptions(page), path
