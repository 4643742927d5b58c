"""Start the real app and drive it with Debian's chromium through Playwright (no downloads)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from explorer.loading.store import HOME_ENV

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
METRIC = "[data-testid=stMetric]"


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(
    timeout: float = 120, app_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """``streamlit run app.py`` headless on a loopback port; yields its base URL.

    ``app_args`` go to the app after ``--`` (e.g. ``--model``, ``--data``); ``env`` is added
    to this process's environment. The app keeps its experiments and uploads in a fresh
    temporary home unless ``env`` names one: a test never reads or writes the user's own."""
    env = dict(env or {})
    if HOME_ENV not in env:
        scratch = tempfile.TemporaryDirectory(prefix="pruning-explorer-home-")
        env[HOME_ENV] = scratch.name
    else:
        scratch = None
    port = free_port()
    (ROOT / "artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "artifacts" / f"streamlit-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            *(["--", *app_args] if app_args else []),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        if scratch is not None:
            scratch.cleanup()


@contextmanager
def browser_page(width: int = 1280, height: int = 800) -> Iterator[object]:
    """A Playwright page in Debian's headless chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def metric_value(page: object, label: str) -> str:
    """The displayed value of the st.metric whose label starts with ``label``."""
    return page.evaluate(
        """(label) => {
            for (const m of document.querySelectorAll('[data-testid=stMetric]')) {
                const l = m.querySelector('[data-testid=stMetricLabel]');
                if (l && l.innerText.trim().startsWith(label)) {
                    return m.querySelector('[data-testid=stMetricValue]').innerText.trim();
                }
            }
            return null;
        }""",
        label,
    )


def wait_for_metric(page: object, label: str, timeout_ms: float = 120_000) -> str:
    page.wait_for_function(
        """(label) => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => {
            const l = m.querySelector('[data-testid=stMetricLabel]');
            return l && l.innerText.trim().startsWith(label);
        })""",
        arg=label,
        timeout=timeout_ms,
    )
    return metric_value(page, label)


def wait_until_idle(page: object, timeout_ms: float = 120_000) -> None:
    """Until the app is not running a script (no 'running' status widget)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout_ms
    )


PRUNE_SETTLED = """() => {
    if (document.querySelector('[data-testid=stStatusWidget]')) return false;
    if (document.body.innerText.includes('Refining on all eval images')) return false;
    const values = {};
    for (const m of document.querySelectorAll('[data-testid=stMetric]')) {
        const l = m.querySelector('[data-testid=stMetricLabel]');
        const v = m.querySelector('[data-testid=stMetricValue]');
        if (l && v) values[l.innerText.trim()] = v.innerText.trim();
    }
    const exact = (v) => v !== undefined && !v.startsWith('≈') && !v.startsWith('…');
    return exact(values['Accuracy']) && (values['Latency'] || '').endsWith('ms');
}"""


def wait_until_settled(page: object, timeout_ms: float = 120_000) -> None:
    """Until the Prune page shows exact numbers on all eval images and its measured latency.

    The status widget alone is not enough: Streamlit shows it only after a script has run
    for a while, so a fast check can see "idle" before a slow evaluation is done.
    """
    page.wait_for_function(PRUNE_SETTLED, timeout=timeout_ms, polling=20)


def slider_thumb(page: object, label: str) -> object:
    """The keyboard-focusable range input of the slider whose label starts with ``label``."""
    return page.locator(f'input[type=range][aria-label^="{label}"]').first


def set_slider_by_keys(page: object, label: str, presses: int) -> None:
    """Move a slider by ``presses`` steps with the keyboard (negative = left)."""
    thumb = slider_thumb(page, label)
    thumb.focus()
    key = "ArrowRight" if presses > 0 else "ArrowLeft"
    for _ in range(abs(presses)):
        page.keyboard.press(key)


def server_seconds(page: object) -> float | None:
    """The server-side re-evaluation time the Prune page reports ('Re-evaluated in X s')."""
    text = page.evaluate("() => document.body.innerText")
    match = re.search(r"Re-evaluated in ([0-9.]+) s", text)
    return float(match.group(1)) if match else None


def exceptions(page: object) -> list[str]:
    """Tracebacks, and errors the pages' last line of defence caught, shown on the page."""
    shown = [e.inner_text() for e in page.query_selector_all("[data-testid=stException]")]
    alerts = [e.inner_text() for e in page.query_selector_all("[data-testid=stAlert]")]
    return shown + [a for a in alerts if a.startswith("Something went wrong")]


CUT_TEXT = """(selector) => {
    // Text cut off inside the elements matching selector: an element (or a descendant) whose
    // content is wider than its box and that hides the overflow (ellipsis or clipping).
    const cut = [];
    for (const root of document.querySelectorAll(selector)) {
        for (const el of [root, ...root.querySelectorAll('*')]) {
            const style = getComputedStyle(el);
            // (a 1-px box is text for screen readers only, clipped on purpose)
            if (style.overflowX === 'visible' || el.clientWidth <= 1) continue;
            // an icon is a ligature: its text ("restart_alt") is wider than the glyph it draws
            if (el.closest('[data-testid^=stIcon]')) continue;
            if (el.scrollWidth > el.clientWidth + 1) cut.push(el.innerText.trim() || el.tagName);
        }
    }
    return cut;
}"""


def cut_off_text(page: object, selector: str) -> list[str]:
    """Texts cut off (ellipsis or clipped) inside the elements matching ``selector``."""
    return page.evaluate(CUT_TEXT, selector)


MISSING_GLYPHS = """async (chars) => {
    // A character no font has is drawn as the font's "missing glyph" box: the same pixels as
    // a private-use character, which no font maps. Drawn in the family of the app's text.
    const text = document.querySelector('[data-testid=stMarkdownContainer]') || document.body;
    const family = getComputedStyle(text).fontFamily;
    await document.fonts.load('24px ' + family, chars.join(''));
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 40;
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    const pixels = (c) => {
        ctx.clearRect(0, 0, 40, 40);
        ctx.font = '24px ' + family;
        ctx.fillText(c, 4, 30);
        return ctx.getImageData(0, 0, 40, 40).data.join(',');
    };
    const box = pixels('\\uE000');
    return chars.filter((c) => pixels(c) === box);
}"""


def missing_glyphs(page: object, chars: Sequence[str]) -> list[str]:
    """The characters of ``chars`` that the page's text font (with its fallbacks) cannot draw."""
    return page.evaluate(MISSING_GLYPHS, list(chars))


def clipped_tables(page: object) -> list[int]:
    """Indices of the dataframes whose columns do not all fit (a horizontal scrollbar)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=stDataFrame]')].flatMap((t, i) => {
            const scroller = t.querySelector('.dvn-scroller');
            return scroller && scroller.scrollWidth > scroller.clientWidth + 1 ? [i] : [];
        })"""
    )


def scroll_parent_is_the_page(page: object, selector: str) -> bool:
    """Whether the element's nearest scrolling ancestor is the page's main area (not an inner
    scroll box that a user would not notice)."""
    return page.evaluate(
        """(selector) => {
            let el = document.querySelector(selector).parentElement;
            while (el) {
                const style = getComputedStyle(el);
                const scrolls = ['auto', 'scroll'].includes(style.overflowY);
                if (scrolls && el.scrollHeight > el.clientHeight + 1) {
                    return el.matches('[data-testid=stMain], [data-testid=stAppViewContainer], '
                        + 'section.stMain, html, body') || el.querySelector('h1') !== null;
                }
                el = el.parentElement;
            }
            return true;
        }""",
        selector,
    )


SHOTS = ROOT / "artifacts"


def browser_test_marks() -> list:
    """What every browser test module sets as ``pytestmark``: the e2e mark, and a skip (with
    the reason) where Debian's chromium is missing."""
    import pytest

    return [
        pytest.mark.e2e,
        pytest.mark.skipif(
            not chromium_available(), reason="needs Debian's chromium: apt-get install -y chromium"
        ),
    ]
