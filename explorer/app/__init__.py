"""Streamlit glue: the only package of ``explorer`` that imports streamlit."""
