"""Visualization helpers: tile images or filters into one grid image, and
plot a Solver's history (matplotlib is imported only by the plotting
functions)."""
from math import ceil, sqrt

import numpy as np

from xdl.backends import asnumpy


def visualize_grid(Xs, ubound=255.0, padding=1):
    """
    Reshape a 4D tensor of image data to a grid for easy visualization.

    Inputs:
    - Xs: Data of shape (N, H, W, C) (numpy or cupy)
    - ubound: Output grid will have values scaled to the range [0, ubound]
    - padding: The number of blank pixels between elements of the grid

    Returns:
    - grid: host array of shape (grid_size*(H+padding)-padding,
      grid_size*(W+padding)-padding, C); each image is scaled to [0, ubound]
      by its own minimum and maximum.
    """
    Xs = asnumpy(Xs)
    if Xs.ndim != 4:
        raise ValueError("Xs must have shape (N, H, W, C), got %s" % (Xs.shape,))
    (N, H, W, C) = Xs.shape
    grid_size = int(ceil(sqrt(N)))
    grid_height = H * grid_size + padding * (grid_size - 1)
    grid_width = W * grid_size + padding * (grid_size - 1)
    grid = np.zeros((grid_height, grid_width, C))
    next_idx = 0
    y0, y1 = 0, H
    for _ in range(grid_size):
        x0, x1 = 0, W
        for _ in range(grid_size):
            if next_idx < N:
                img = Xs[next_idx]
                low, high = np.min(img), np.max(img)
                span = high - low
                grid[y0:y1, x0:x1] = ubound * (img - low) / span if span > 0 else 0
                next_idx += 1
            x0 += W + padding
            x1 += W + padding
        y0 += H + padding
        y1 += H + padding
    return grid


def vis_grid(Xs):
    """
    Visualize a grid of images without per-image scaling.

    Inputs:
    - Xs: (N, H, W, C) images
    Returns the grid (host array), one pixel of padding, globally rescaled to [0, 1].
    """
    Xs = asnumpy(Xs)
    (N, H, W, C) = Xs.shape
    A = int(ceil(sqrt(N)))
    G = np.ones((A * H + A, A * W + A, C), Xs.dtype)
    G *= np.min(Xs)
    n = 0
    for y in range(A):
        for x in range(A):
            if n < N:
                G[y * H + y:(y + 1) * H + y, x * W + x:(x + 1) * W + x, :] = Xs[n, :, :, :]
                n += 1
    maxg, ming = G.max(), G.min()
    return (G - ming) / (maxg - ming) if maxg > ming else G - ming


def moving_average(values, window):
    """
    Smooth a curve with a centered moving average, skipping non-finite values.

    Inputs:
    - values: sequence of numbers (a loss history)
    - window: number of consecutive values averaged (>= 1)

    Returns a tuple of:
    - x: positions (indices into values) of the averages, window centers
    - y: the averages
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError("window must be an integer >= 1, got %r" % (window,))
    values = np.asarray(values, dtype=np.float64)
    index = np.flatnonzero(np.isfinite(values))
    if index.size < window:
        return np.zeros(0), np.zeros(0)
    kernel = np.ones(window) / window
    y = np.convolve(values[index], kernel, mode="valid")
    x = np.convolve(index.astype(np.float64), kernel, mode="valid")
    return x, y


def plot_solver_history(solver, title):
    """
    The loss of every iteration (dots) with its moving average (a line), and
    the train and validation accuracy at each epoch, in one figure.

    Inputs:
    - solver: a Solver after train() (anything with loss_history,
      train_acc_history and val_acc_history)
    - title: the model's name, used in the panel titles

    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    losses = solver.loss_history
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    ax1.plot(np.arange(1, len(losses) + 1), losses, "o", markersize=2, alpha=0.35,
             label="loss of each iteration")
    window = max(1, len(losses) // 50)
    x, y = moving_average(losses, window)
    ax1.plot(x + 1, y, "-", linewidth=2, label="moving average over %d iterations" % window)
    ax1.set_title("%s: training loss" % title)
    ax1.set_xlabel("Iteration")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    epochs = np.arange(len(solver.train_acc_history))
    ax2.plot(epochs, solver.train_acc_history, "-o", label="train")
    ax2.plot(epochs, solver.val_acc_history, "-o", label="val")
    ax2.set_title("%s: accuracy" % title)
    ax2.set_xlabel("Epoch (0: after the first iteration)")
    ax2.set_ylabel("Accuracy")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_grid(Xs, title, padding=1):
    """
    Tile images or filters (N, H, W, C) into one grid (visualize_grid) and
    show it with a title.

    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    grid = visualize_grid(Xs, padding=padding)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(grid.astype("uint8").squeeze(), cmap="gray" if grid.shape[2] == 1 else None)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig
