"""Pruning Explorer: streamlit run app.py"""

from __future__ import annotations

import os

# Must be set before torch loads OpenMP. Idle OpenMP threads otherwise spin on the cores the
# browser needs to draw the results; on 2 cores that slowed every slider move by 1.3-3x
# (benchmarks/browser.py, README). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from explorer.app import ui
from explorer.app.pages import PAGES as APP_PAGES

PAGES = [
    st.Page(page.script, title=page.title, icon=page.icon, default=page.default)
    for page in APP_PAGES
]


def main() -> None:
    st.set_page_config(page_title="Pruning Explorer", page_icon=":scissors:", layout="wide")
    page = st.navigation(PAGES)
    ui.init_session()
    ui.write_url()  # a page switch drops the query string: put the model and plan back
    with st.sidebar:
        ui.model_picker_ui()
        st.caption(
            "The address bar always holds the model and plan: copy it to share this exact state."
        )
    ui.show_notices()
    with ui.app_shell():
        ui.guarded(page.run)


main()
