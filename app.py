"""Pruning Explorer: streamlit run app.py"""

from __future__ import annotations

import os

# Must be set before torch loads OpenMP. Idle OpenMP threads otherwise spin on the cores the
# browser needs to draw the results; on 2 cores that slowed every slider move by 1.3-3x
# (benchmarks/browser.py, README). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from explorer.app import ui

PAGES = [
    st.Page("pages/home.py", title="Model & data", icon=":material/model_training:", default=True),
    st.Page("pages/prune.py", title="Prune", icon=":material/content_cut:"),
    st.Page("pages/recover.py", title="Recover", icon=":material/healing:"),
    st.Page("pages/weights.py", title="Weights", icon=":material/grid_on:"),
    st.Page("pages/activations.py", title="Activations", icon=":material/bolt:"),
    st.Page("pages/saliency.py", title="Saliency", icon=":material/visibility:"),
    st.Page("pages/decisions.py", title="Decisions", icon=":material/alt_route:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
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
