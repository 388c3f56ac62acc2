"""Visualization helpers: tile images or filters into one grid image."""
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
