"""The Decisions page in Debian's headless chromium: a flipped image selected in the table
opens with both saliency maps and both decision paths, at laptop and desktop sizes."""

from __future__ import annotations

import time

from explorer.engine.plan import PruningPlan
from explorer.engine.workbench import open_workbench
from explorer.inside.flips import flips_for_plan, sort_flips
from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    clipped_tables,
    exceptions,
    running_app,
    wait_until_idle,
)

pytestmark = browser_test_marks()
CHARTS = "[data-testid=stPlotlyChart]"
#: The grid is a canvas: its header and its rows are this many pixels high.
ROW = 35


def chart_text_with(page, expected: str, timeout_s: float = 60) -> str:
    """The text of every chart once one holds ``expected`` (charts are redrawn after the
    page settles); whitespace removed, since a title's line break leaves no space."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = "".join("".join(page.locator(CHARTS).all_inner_texts()).split())
        if expected in text or time.monotonic() > deadline:
            return text
        page.wait_for_timeout(250)


def test_a_flipped_image_opens_with_both_maps_and_both_paths():
    SHOTS.mkdir(exist_ok=True)
    flips = sort_flips(flips_for_plan(open_workbench("lenet5"), PruningPlan(amount=0.8)).flips)
    second = flips[1]
    with running_app() as url:
        for width, height in ((1280, 800), (1920, 1080)):
            with browser_page(width, height) as page:
                try:
                    page.goto(f"{url}/decisions?model=lenet5&amount=0.8")
                    table = page.locator("[data-testid=stDataFrame]")
                    table.wait_for(timeout=120_000)
                    page.get_by_text(f"Eval image #{flips[0].index}").wait_for(timeout=60_000)
                    wait_until_idle(page)
                    # select the second row: its selection box, below the header
                    box = table.bounding_box()
                    page.mouse.click(box["x"] + 16, box["y"] + ROW + ROW + ROW // 2)
                    page.get_by_text(f"Eval image #{second.index}").wait_for(timeout=60_000)
                    wait_until_idle(page)
                    charts = chart_text_with(page, f"Densemodel→class{second.dense_prediction}")
                    # both saliency maps, titled with each model's prediction
                    assert f"Densepredicts{second.dense_prediction}" in charts
                    assert f"Prunedpredicts{second.pruned_prediction}" in charts
                    # both decision paths
                    assert f"Densemodel→class{second.dense_prediction}" in charts
                    assert "Prunedmodel:" in charts
                    assert "Dense path units kept" in page.inner_text("body")
                    assert clipped_tables(page) == []
                    page.set_viewport_size({"width": width, "height": 2600})
                    wait_until_idle(page)
                    page.screenshot(
                        path=str(SHOTS / f"decisions-{width}x{height}.png"), full_page=True
                    )
                    assert not exceptions(page)
                except Exception:
                    page.screenshot(path=str(SHOTS / f"decisions-failure-{width}.png"))
                    raise
