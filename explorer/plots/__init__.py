"""Plotly figure builders: arrays and results in, ``go.Figure`` out; they never run a model."""

from explorer.plots.common import sample_grid_figure
from explorer.plots.flips import confusion_change_figure, flip_counts_figure
from explorer.plots.prune import CurveSeries, curve_figure, layer_sparsity_figure

__all__ = [
    "CurveSeries",
    "confusion_change_figure",
    "curve_figure",
    "flip_counts_figure",
    "layer_sparsity_figure",
    "sample_grid_figure",
]
