"""Grids of images and the Solver-history plot: labels on every axis, a
smoothed loss over the raw one, integer epoch ticks, titles."""
import types

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from matplotlib.ticker import MaxNLocator  # noqa: E402

from xdl.vis_utils import (  # noqa: E402
    moving_average,
    plot_grid,
    plot_solver_history,
    visualize_grid,
)


def test_visualize_grid_tiles_and_scales_each_image():
    Xs = np.arange(5 * 2 * 3 * 1, dtype=np.float64).reshape(5, 2, 3, 1)
    grid = visualize_grid(Xs, padding=1)
    assert grid.shape == (3 * 2 + 2, 3 * 3 + 2, 1)
    np.testing.assert_allclose(grid[0:2, 0:3, 0], 255 * np.arange(6).reshape(2, 3) / 5)
    assert np.all(grid[2, :, 0] == 0)  # padding row
    with pytest.raises(ValueError, match=r"Xs must have shape \(N, H, W, C\)"):
        visualize_grid(np.ones((2, 3, 3)))


def test_moving_average_is_centered_and_skips_nonfinite():
    x, y = moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3)
    np.testing.assert_allclose(y, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(x, [1.0, 2.0, 3.0])
    x, y = moving_average([1.0, float("nan"), 3.0, 5.0], 2)
    np.testing.assert_allclose(y, [2.0, 4.0])
    np.testing.assert_allclose(x, [1.0, 2.5])
    assert moving_average([1.0], 3)[1].size == 0
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        moving_average([1.0], 0)


def fake_solver(iterations=500, epochs=5):
    rng = np.random.RandomState(0)
    loss = list(2.3 * np.exp(-np.arange(iterations) / 200) + 0.3 * rng.rand(iterations))
    return types.SimpleNamespace(loss_history=loss,
                                 train_acc_history=list(np.linspace(0.1, 0.6, epochs + 1)),
                                 val_acc_history=list(np.linspace(0.1, 0.5, epochs + 1)))


def test_history_plot_has_labels_smoothing_and_integer_epochs():
    solver = fake_solver()
    fig = plot_solver_history(solver, "TwoLayerNet")
    loss_ax, acc_ax = fig.axes
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title().startswith("TwoLayerNet")
    raw, smooth = loss_ax.get_lines()
    assert raw.get_linestyle() == "None" and len(raw.get_xdata()) == 500
    assert smooth.get_linestyle() == "-" and len(smooth.get_xdata()) == 500 - 10 + 1
    assert "moving average over 10 iterations" in smooth.get_label()
    # the smoothed curve is far less noisy than the raw losses
    assert np.std(np.diff(smooth.get_ydata())) < 0.2 * np.std(np.diff(raw.get_ydata()))
    assert isinstance(acc_ax.xaxis.get_major_locator(), MaxNLocator)
    ticks = [t for t in acc_ax.get_xticks() if 0 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["train", "val"]


def test_grid_plot_has_a_title():
    fig = plot_grid(np.random.RandomState(0).randn(4, 5, 5, 3), "first-layer filters")
    (ax,) = fig.axes
    assert ax.get_title() == "first-layer filters"
    assert ax.get_images()[0].get_array().shape == (11, 11, 3)
