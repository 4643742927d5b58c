"""Fine-tuning in the real app, in Debian's headless chromium: a run starts in the background,
its curve grows while the page stays live, Stop ends it, and the weights it kept open on the
Prune page as a variant of the model."""

from __future__ import annotations

import time

from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    exceptions,
    running_app,
    wait_for_metric,
    wait_until_idle,
)

pytestmark = browser_test_marks()
#: Eval-accuracy markers of the training chart (one per probe measurement).
PROBES = "[data-testid=stPlotlyChart] .scatterlayer .trace path.point"


def probe_points(page) -> int:
    return page.locator(PROBES).count()


def test_a_fine_tune_is_watched_stopped_and_opened_on_the_prune_page(tmp_path):
    SHOTS.mkdir(exist_ok=True)
    env = {"PRUNING_EXPLORER_HOME": str(tmp_path)}
    with running_app(env=env) as url, browser_page(1280, 800) as page:
        try:
            page.goto(f"{url}/recover?model=resnet_mini&method=filters&amount=0.3")
            page.get_by_role("button", name="Start fine-tuning").wait_for(timeout=120_000)
            epochs = page.get_by_label("Epochs", exact=True).first
            epochs.fill("20")  # long enough to be stopped by hand
            epochs.press("Enter")
            wait_until_idle(page)
            page.get_by_role("button", name="Start fine-tuning").click()
            # the curve moves: probe points are added while the run goes on
            page.wait_for_function(
                f"document.querySelectorAll({PROBES!r}).length >= 1", timeout=180_000
            )
            first = probe_points(page)
            deadline = time.monotonic() + 180
            while probe_points(page) <= first:
                assert time.monotonic() < deadline, "the curve did not move"
                page.wait_for_timeout(500)
            assert page.get_by_text("left").count() >= 1  # the progress bar's time left
            page.screenshot(path=str(SHOTS / "recover-running.png"))
            page.get_by_role("button", name="Stop").click()
            page.get_by_text("Stopped after").wait_for(timeout=180_000)
            wait_for_metric(page, "Pruned + fine-tuned")
            page.get_by_role("button", name="Keep", exact=True).click()
            page.get_by_text("Kept as").wait_for(timeout=60_000)
            page.get_by_role("button", name="Prune it further on the Prune page").click()
            wait_for_metric(page, "Accuracy")
            wait_until_idle(page)
            assert "/prune" in page.url and "weights=sha256" in page.url
            sidebar = page.locator("[data-testid=stSidebar]")
            assert "30%" in sidebar.inner_text()  # the plan came along
            # the variant, by name (the picker is redrawn by the page's own rerun: wait for it)
            sidebar.get_by_text("filters 30% · 20 ep").first.wait_for(timeout=30_000)
            assert not exceptions(page)
        except Exception:
            page.screenshot(path=str(SHOTS / "recover-failure.png"))
            raise
