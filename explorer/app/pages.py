"""The app's pages, once: ``app.py`` makes its navigation from this list and the tests walk it.

Plain data (no streamlit here), so that a test can read it without running the app. Adding a
page is a file in ``pages/`` and a line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PageSpec:
    """One page: its script (relative to the app's folder), title and icon in the sidebar."""

    script: str
    title: str
    icon: str
    default: bool = False

    @property
    def name(self) -> str:
        """The page's short name ("prune"), also the last part of its URL."""
        return Path(self.script).stem


PAGES: tuple[PageSpec, ...] = (
    PageSpec("pages/home.py", "Model & data", ":material/model_training:", default=True),
    PageSpec("pages/prune.py", "Prune", ":material/content_cut:"),
    PageSpec("pages/recover.py", "Recover", ":material/healing:"),
    PageSpec("pages/weights.py", "Weights", ":material/grid_on:"),
    PageSpec("pages/activations.py", "Activations", ":material/bolt:"),
    PageSpec("pages/saliency.py", "Saliency", ":material/visibility:"),
    PageSpec("pages/decisions.py", "Decisions", ":material/alt_route:"),
    PageSpec("pages/compare.py", "Compare", ":material/compare_arrows:"),
)
