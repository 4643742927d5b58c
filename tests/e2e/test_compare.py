"""Saved experiments in the real app, in Debian's headless chromium: two plans saved from the
Prune page are listed and drawn on the Compare page, whole at laptop size."""

from __future__ import annotations

import pytest

from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    clipped_tables,
    cut_off_text,
    exceptions,
    running_app,
    wait_for_metric,
    wait_until_idle,
    wait_until_settled,
)

pytestmark = browser_test_marks()
SIZES = ((1280, 800), (1920, 1080))
PLANS = (("thirty", "0.3"), ("ninety", "0.9"))
POINTS = "[data-testid=stPlotlyChart] .scatterlayer .trace path.point"


def save_from_prune_page(page, url: str, name: str, amount: str) -> None:
    page.goto(f"{url}/prune?model=lenet5&amount={amount}")
    wait_for_metric(page, "Accuracy")
    wait_until_settled(page)
    field = page.get_by_role("textbox", name="Name")
    field.fill(name)
    field.press("Enter")  # commits the text (a rerun of the save section only)
    wait_until_idle(page)
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text(f"Saved '{name}'").wait_for(timeout=60_000)


@pytest.fixture(scope="module")
def compare_url(tmp_path_factory):
    """An app with its own experiments database, in which a user saved ``PLANS`` from the
    Prune page."""
    SHOTS.mkdir(exist_ok=True)
    home = tmp_path_factory.mktemp("home")
    with running_app(env={"PRUNING_EXPLORER_HOME": str(home)}) as url:
        with browser_page(*SIZES[0]) as page:
            for name, amount in PLANS:
                save_from_prune_page(page, url, name, amount)
            assert not exceptions(page)
        yield url


def test_two_saved_experiments_are_listed_and_drawn(compare_url):
    for width, height in SIZES:
        with browser_page(width, height) as page:
            page.goto(f"{compare_url}/compare")
            page.wait_for_selector(POINTS, timeout=60_000)
            wait_until_idle(page)
            table = page.locator("[data-testid=stDataFrame]")
            assert table.count() == 1
            # The grid draws on a canvas; its accessible copy holds the cells.
            cells = table.inner_text() + " ".join(
                table.locator("[role=gridcell]").all_text_contents()
            )
            for name, _ in PLANS:
                assert name in cells, cells[:500]
            assert page.locator(POINTS).count() == 2
            page.screenshot(path=SHOTS / f"compare-{width}x{height}.png", full_page=True)
            for widget in ("stSelectbox", "stButton", "stDownloadButton", "stMarkdown"):
                assert cut_off_text(page, f"[data-testid={widget}]") == [], widget
            assert clipped_tables(page) == []
            assert not exceptions(page)


def test_a_selected_row_is_loaded_onto_the_sliders(compare_url):
    # Newest first: "ninety" is the top row.
    with browser_page(*SIZES[0]) as page:
        page.goto(f"{compare_url}/compare")
        page.wait_for_selector(POINTS, timeout=60_000)
        wait_until_idle(page)
        # The grid is a canvas: click the selection box of the first row (below the header).
        box = page.locator("[data-testid=stDataFrame]").bounding_box()
        page.mouse.click(box["x"] + 16, box["y"] + 36 + 33)
        load = page.get_by_role("button", name="Load onto the sliders")
        load.wait_for(timeout=30_000)
        wait_until_idle(page)
        page.screenshot(path=SHOTS / "compare-selected-1280x800.png", full_page=True)
        assert cut_off_text(page, "[data-testid=stButton]") == []
        assert cut_off_text(page, "[data-testid=stCheckbox]") == []
        assert page.get_by_role("button", name="Delete", exact=True).is_disabled()  # unconfirmed
        load.click()
        page.wait_for_url("**/prune?**amount=0.9**", timeout=60_000)
        wait_for_metric(page, "Accuracy")
        wait_until_settled(page)
        assert "Loaded 'ninety'" in page.inner_text("body")
        assert not exceptions(page)
