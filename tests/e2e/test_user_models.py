"""Models as users bring them, through the app in real chromium at 1280x800: a tutorial CNN
that flattens with ``x.view(x.size(0), -1)`` after a conv (it crashed the evaluator when conv
nets always ran channels_last) and a ``timm:`` architecture. Each is opened from the command
line, pruned with the global slider and exported to ONNX, with no error on any page."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from explorer.zoo.mnist import load_dataset
from tests import idiom_models
from tests.e2e.harness import (
    SHOTS,
    browser_page,
    browser_test_marks,
    exceptions,
    metric_value,
    running_app,
    set_slider_by_keys,
    wait_for_metric,
    wait_until_idle,
    wait_until_settled,
)

pytestmark = browser_test_marks()


def trained_view_model(folder) -> str:
    """ViewAfterConv trained for a few seconds on 3,000 fit images; its weights file."""
    torch.manual_seed(0)
    model = idiom_models.ViewAfterConv()
    fit = load_dataset("mnist", "fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(0))[:3000]
    for batch in order.split(50):
        loss = F.cross_entropy(model(fit.images[batch]), fit.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = folder / "view_net.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def prune_and_export(page, shot: str) -> None:
    """Open Prune, move the global slider, build an ONNX file; screenshots along the way."""
    page.get_by_role("link", name="Prune").click()
    page.wait_for_url("**/prune**", timeout=30_000)
    wait_for_metric(page, "Accuracy", 240_000)
    wait_until_idle(page, 240_000)
    set_slider_by_keys(page, "Weights pruned", 50)
    # each key press is a rerun: wait for the last one (50%), then for its numbers
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m =>
            m.innerText.startsWith('Sparsity') && m.innerText.includes('50.0%'))""",
        timeout=240_000,
    )
    wait_until_settled(page, 240_000)
    page.screenshot(path=SHOTS / f"{shot}-pruned.png", full_page=True)
    assert re.match(r"^\d+(\.\d+)?%$", metric_value(page, "Accuracy"))
    chooser = page.locator("[data-testid=stSelectbox]", has_text="Format").locator("input")
    chooser.scroll_into_view_if_needed()
    chooser.click()
    page.keyboard.type("ONNX")
    page.keyboard.press("Enter")
    wait_until_idle(page, 240_000)
    page.get_by_role("button", name="Build the file").click()
    page.get_by_role("button", name=re.compile(r"^Download .*\.onnx$")).wait_for(timeout=240_000)
    page.screenshot(path=SHOTS / f"{shot}-exported.png", full_page=True)
    assert not exceptions(page), exceptions(page)


def test_a_tutorial_view_model_is_evaluated_pruned_and_exported(tmp_path, monkeypatch):
    SHOTS.mkdir(exist_ok=True)
    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    weights = trained_view_model(tmp_path)
    source = f"{idiom_models.__file__}:ViewAfterConv"
    with (
        running_app(app_args=["--model", source, "--weights", weights]) as url,
        browser_page() as page,
    ):
        page.goto(url)
        wait_for_metric(page, "Eval accuracy", 240_000)
        accuracy = float(metric_value(page, "Eval accuracy").rstrip("%"))
        assert accuracy > 80  # trained for seconds: far above chance, so the numbers are real
        # the note says which speed trick the model runs without, and why
        page.get_by_text(re.compile("plain memory layout")).first.wait_for(
            state="attached", timeout=60_000
        )
        page.screenshot(path=SHOTS / "view-model-home.png", full_page=True)
        assert not exceptions(page), exceptions(page)
        prune_and_export(page, "view-model")


def test_a_timm_model_is_evaluated_pruned_and_exported(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    SHOTS.mkdir(exist_ok=True)
    monkeypatch.setenv("PRUNING_EXPLORER_HOME", str(tmp_path / "home"))
    args = ["--model", "timm:mobilenetv3_small_050", "--model-args", '{"num_classes": 10}']
    args += ["--channels", "3", "--size", "32"]
    with running_app(app_args=args) as url, browser_page() as page:
        page.goto(url)
        wait_for_metric(page, "Eval accuracy", 240_000)
        assert not exceptions(page), exceptions(page)
        prune_and_export(page, "timm-model")
