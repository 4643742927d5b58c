"""Weights page figures: the heatmap shows the masked weights, grey exactly where the plan
pruned, pooled honestly and small enough to send; the score histogram splits at the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer.engine.plan import PruningPlan
from explorer.engine.pruning import Pruner
from explorer.inside.weight_views import (
    MAX_SIDE,
    score_histogram,
    unit_of_layer,
    weight_grid,
    why_no_unit,
)
from explorer.plots.weights import (
    ranked_scores_figure,
    score_histogram_figure,
    weight_heatmap_figure,
)
from explorer.zoo.models import lenet5, lenet_300_100, resnet_mini, vit_tiny
from tests.unit.conftest import INPUT_SHAPE, distinct_weights, seeded


def trace(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def masked(pruner: Pruner, state, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked weight, mask) of ``layer`` in ``state``."""
    param = f"{layer}.weight"
    dense = pruner.structure.parameters[param].detach()
    return state.parameters.get(param, dense), state.masks.get(param, torch.ones_like(dense))


@pytest.fixture(scope="module")
def mlp_pruner() -> Pruner:
    return Pruner(distinct_weights(seeded(lenet_300_100), seed=2), INPUT_SHAPE)


@pytest.fixture(scope="module")
def cnn_pruner() -> Pruner:
    return Pruner(distinct_weights(seeded(lenet5), seed=3), INPUT_SHAPE)


def test_biggest_layer_figure_stays_under_a_megabyte(mlp_pruner):
    state = mlp_pruner.resolve(PruningPlan(amount=0.6))
    weight, mask = masked(mlp_pruner, state, "fc1")
    assert weight.shape == (300, 784)
    grid = weight_grid(weight, mask)
    fig = weight_heatmap_figure(grid)
    assert len(fig.to_json()) < 1_000_000
    assert max(grid.values.shape) <= MAX_SIDE and grid.pooled


def test_unpooled_linear_pruned_trace_is_exactly_the_masked_zeros(cnn_pruner):
    state = cnn_pruner.resolve(PruningPlan(amount=0.5))
    weight, mask = masked(cnn_pruner, state, "fc2")
    fig = weight_heatmap_figure(weight_grid(weight, mask))
    pruned = np.isfinite(np.asarray(trace(fig, "pruned").z))
    shown = np.asarray(trace(fig, "weights").z)
    assert pruned.shape == tuple(weight.shape)
    assert 0 < pruned.sum() < pruned.size
    np.testing.assert_array_equal(pruned, (mask == 0).numpy())
    np.testing.assert_array_equal(pruned, (weight == 0).numpy())  # distinct weights: no others
    np.testing.assert_array_equal(np.isnan(shown), pruned)  # each cell in exactly one trace
    np.testing.assert_allclose(shown[~pruned], weight.numpy()[~pruned])


def test_conv_kernels_are_tiled_filter_by_input_channel(cnn_pruner):
    state = cnn_pruner.resolve(PruningPlan(amount=0.5))
    weight, mask = masked(cnn_pruner, state, "conv2")  # (16, 6, 5, 5)
    grid = weight_grid(weight, mask)
    assert grid.layout == "kernels" and not grid.pooled
    fig = weight_heatmap_figure(grid)
    values, pruned = np.asarray(trace(fig, "weights").z), np.asarray(trace(fig, "pruned").z)
    assert values.shape == (16 * 6 - 1, 6 * 6 - 1)
    expected_values = np.full(values.shape, np.nan)
    expected_pruned = np.zeros(values.shape, dtype=bool)
    for o, i, r, c in np.ndindex(*weight.shape):  # the oracle: a 1-px gap between kernels
        expected_values[o * 6 + r, i * 6 + c] = weight[o, i, r, c]
        expected_pruned[o * 6 + r, i * 6 + c] = mask[o, i, r, c] == 0
    np.testing.assert_array_equal(np.isfinite(pruned), expected_pruned)
    kept = ~expected_pruned & ~np.isnan(expected_values)
    np.testing.assert_allclose(values[kept], expected_values[kept])
    assert np.isnan(values[~kept]).all()
    assert (grid.owner[5 * 6 + 2, 3 * 6 + 4] == [5, 3]).all()


def test_single_input_channel_conv_shows_its_filters_as_tiles(cnn_pruner):
    state = cnn_pruner.resolve(PruningPlan(method="filters", scope="layer", amount=0.5))
    weight, mask = masked(cnn_pruner, state, "conv1")  # (6, 1, 5, 5), 3 filters pruned
    grid = weight_grid(weight, mask)
    assert grid.layout == "filters"
    columns = 3  # ceil(sqrt(6))
    for k in range(6):
        top, left = (k // columns) * 6, (k % columns) * 6
        tile = grid.pruned[top : top + 5, left : left + 5]
        assert tile.all() == bool((mask[k] == 0).all()) and tile.any() == tile.all()
        np.testing.assert_allclose(grid.values[top : top + 5, left : left + 5], weight[k, 0])
        assert (grid.owner[top : top + 5, left : left + 5, 0] == k).all()
    assert grid.pruned.sum() == 3 * 25


def test_pooling_keeps_the_largest_weight_and_greys_only_fully_pruned_blocks(mlp_pruner):
    state = mlp_pruner.resolve(PruningPlan(amount=0.9))
    weight, mask = masked(mlp_pruner, state, "fc1")
    grid = weight_grid(weight, mask)
    assert grid.pool == (2, 6) and grid.values.shape == (150, 131)
    # Oracle: torch's max pooling (partial last blocks included through ceil_mode).
    largest = F.max_pool2d(weight.abs()[None, None], (2, 6), ceil_mode=True)[0, 0].numpy()
    any_kept = F.max_pool2d(mask[None, None], (2, 6), ceil_mode=True)[0, 0].numpy() > 0
    np.testing.assert_array_equal(grid.pruned, ~any_kept)
    np.testing.assert_allclose(np.abs(grid.values), largest)
    fig = weight_heatmap_figure(grid)
    np.testing.assert_array_equal(np.isfinite(np.asarray(trace(fig, "pruned").z)), ~any_kept)
    # Signs survive pooling: each cell holds a real entry of its block.
    r, c = np.unravel_index(np.argmax(np.abs(grid.values)), grid.values.shape)
    block = weight[r * 2 : r * 2 + 2, c * 6 : c * 6 + 6].numpy()
    assert grid.values[r, c] in block


def test_large_conv_collapses_each_kernel_to_one_cell():
    pruner = Pruner(seeded(resnet_mini), INPUT_SHAPE)
    state = pruner.resolve(PruningPlan(method="filters", scope="layer", amount=0.5))
    weight, mask = masked(pruner, state, "block2.conv1")  # (64, 32, 3, 3)
    grid = weight_grid(weight, mask)
    assert grid.layout == "kernel max" and grid.values.shape == (64, 32)
    np.testing.assert_array_equal(grid.pruned, (mask == 0).flatten(2).all(-1).numpy())
    np.testing.assert_allclose(np.abs(grid.values), weight.abs().flatten(2).max(-1).values)
    assert grid.pruned.any()


def test_one_by_one_conv_is_a_plain_matrix():
    pruner = Pruner(seeded(resnet_mini), INPUT_SHAPE)
    weight = pruner.structure.parameters["block2.shortcut.0.weight"].detach()
    grid = weight_grid(weight)
    assert grid.layout == "matrix" and grid.row_unit == "filter"
    np.testing.assert_allclose(grid.values, weight[:, :, 0, 0])
    assert not grid.pruned.any()


def test_histogram_splits_at_the_threshold(mlp_pruner):
    plan = PruningPlan(amount=0.7)
    state = mlp_pruner.resolve(plan)
    scores, threshold = mlp_pruner.unit_scores(plan, "fc2")
    keep = state.keeps["fc2"]
    hist = score_histogram(scores, keep, bins=40)
    assert hist.kept.sum() == keep.sum() and hist.pruned.sum() == (~keep).sum()
    assert scores[~keep].max() == threshold and (scores[keep] >= threshold).all()
    # Bins wholly above the threshold hold no pruned weight.
    assert hist.pruned[hist.edges[:-1] > threshold].sum() == 0
    fig = score_histogram_figure(hist, threshold)
    assert sum(trace(fig, "pruned weights").y) == (~keep).sum()
    log = score_histogram(scores, keep, log=True)
    assert log.kept.sum() + log.pruned.sum() + log.left_out == len(scores)
    assert log.left_out == int((scores <= 0).sum())


def test_ranked_scores_colour_each_pruned_channel(cnn_pruner):
    plan = PruningPlan(method="filters", scope="layer", amount=0.5)
    state = cnn_pruner.resolve(plan)
    scores, threshold = cnn_pruner.unit_scores(plan, "conv2")
    keep = state.keeps["conv2"].numpy()
    fig = ranked_scores_figure(scores.numpy(), keep, threshold)
    pruned = trace(fig, "pruned channels")
    assert sorted(pruned.customdata) == sorted(np.flatnonzero(~keep))
    np.testing.assert_allclose(pruned.y, scores.numpy()[np.asarray(pruned.customdata)])


def test_each_layer_finds_the_unit_that_prunes_it(cnn_pruner):
    assert unit_of_layer(cnn_pruner, "unstructured", "fc1").name == "fc1"
    assert unit_of_layer(cnn_pruner, "filters", "conv2").name == "conv2"
    # The classifier's outputs are never pruned, but its inputs go with fc2's outputs.
    assert unit_of_layer(cnn_pruner, "filters", "fc3").name == "fc2"
    assert unit_of_layer(cnn_pruner, "channels", "fc1").name == "fc1"
    vit = Pruner(seeded(vit_tiny), INPUT_SHAPE)
    assert unit_of_layer(vit, "heads", "block1.attn.qkv").name == "block1.attn"
    assert unit_of_layer(vit, "heads", "block1.fc1") is None
    assert "attention" in why_no_unit(vit, "heads", "block1.fc1")


def test_pruned_has_one_colour_on_the_page_and_it_is_not_a_weight_colour():
    # The heatmap draws weights red (positive) to blue (negative) through white; "pruned" must
    # not borrow one of those (it was red in the histogram, pale grey in the heatmap).
    from plotly.colors import sample_colorscale

    from explorer.plots.weights import WEIGHT_SCALE

    model = distinct_weights(seeded(lenet_300_100))
    pruner = Pruner(model, INPUT_SHAPE)
    plan = PruningPlan(amount=0.5)
    state = pruner.resolve(plan)
    param = "fc1.weight"
    heat = weight_heatmap_figure(weight_grid(state.parameters[param], state.masks[param]))
    (pruned_cells,) = [t for t in heat.data if t.name == "pruned"]
    cell_colour = pruned_cells.colorscale[0][1]
    scores, threshold = pruner.unit_scores(plan, "fc1")
    keep = state.keeps["fc1"]
    hist = score_histogram_figure(score_histogram(scores, keep), threshold, "weights")
    (pruned_bars,) = [t for t in hist.data if t.name.startswith("pruned")]
    assert pruned_bars.marker.color == cell_colour
    ranked = ranked_scores_figure(scores[:64].numpy(), keep[:64].numpy(), threshold, "weights")
    assert {t.marker.color for t in ranked.data if t.name.startswith("pruned")} == {cell_colour}
    red, white, blue = sample_colorscale(WEIGHT_SCALE, [1.0, 0.5, 0.0], colortype="tuple")
    r, g, b = (int(cell_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    assert abs(r - g) < 0.05 and abs(g - b) < 0.05, "a neutral grey, not a hue"
    assert r < 0.5, "dark: pale grey reads as a near-zero weight"
    assert (r, g, b) not in (red, white, blue)


def test_sample_grid_labels_sit_under_their_digits_not_on_them():
    from explorer.plots.common import sample_grid_figure
    from explorer.zoo.mnist import load_mnist

    data = load_mnist("eval")
    fig = sample_grid_figure(data, count=16, columns=8)
    height, width = data.input_shape[-2:]
    mosaic = np.asarray(fig.data[0].z)
    pitch_y, pitch_x = mosaic.shape[0] / 2, mosaic.shape[1] / 8  # 2 rows of 8
    labels = [a.text for a in fig.layout.annotations]
    assert labels == [data.classes[int(y)] for y in data.labels[:16]]
    for i, note in enumerate(fig.layout.annotations):
        row, column = divmod(i, 8)
        top = row * pitch_y
        # below its digit's last row and above the next row of digits, centred under it
        assert note.yanchor == "top" and top + height <= note.y < top + pitch_y
        assert note.x == pytest.approx(column * pitch_x + width / 2)
        assert note.font.size >= 12


def test_sample_grid_shows_colour_images_in_colour_and_scales_big_ones_down():
    from explorer.plots.common import GRID_TILE, sample_grid_figure
    from explorer.zoo.mnist import ImageDataset

    images = torch.zeros(4, 3, 224, 224)
    images[:, 0] = 1.0  # pure red photos
    images[1, :, :112] = 0.0  # the top half of image 1 black
    data = ImageDataset("own", "eval", images, torch.tensor([0, 1, 0, 1]), ("cat", "dog"))
    fig = sample_grid_figure(data, count=4, columns=4)
    mosaic = np.asarray(fig.data[0].z)
    assert mosaic.ndim == 3 and mosaic.shape[2] == 3  # an RGB image, not a grey heatmap
    assert mosaic.shape[0] < 2 * GRID_TILE  # one row of tiles of at most GRID_TILE pixels
    assert tuple(mosaic[GRID_TILE - 1, 1]) == (255, 0, 0)  # image 0 stays red
    pitch = mosaic.shape[1] // 4
    assert tuple(mosaic[2, pitch + 2]) == (0, 0, 0)  # image 1's black top half
    assert tuple(mosaic[GRID_TILE - 2, pitch + 2]) == (255, 0, 0)  # and its red bottom
    assert [a.text for a in fig.layout.annotations] == ["cat", "dog", "cat", "dog"]


def test_layer_sparsity_bars_are_horizontal_with_one_readable_row_per_layer():
    from explorer.plots.weights import sparsity_overview_figure

    layers = [f"layer{i // 2}.{i % 2}.conv1" for i in range(21)]
    sparsity = [i / 40 for i in range(21)]
    fig = sparsity_overview_figure(layers, sparsity, [i == 3 for i in range(21)], layers[5])
    bars = fig.data[0]
    assert bars.orientation == "h" and list(bars.y) == layers
    assert list(bars.x) == pytest.approx([s * 100 for s in sparsity])
    assert fig.layout.yaxis.autorange == "reversed"  # graph order from the top
    assert fig.layout.height >= 18 * len(layers)  # no name is skipped or overlaps another
    assert [w for w in bars.marker.line.width] == [3 if i == 5 else 0 for i in range(21)]
