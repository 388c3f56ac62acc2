"""Numerical gradients by centered differences, and the relative error used
to compare them with analytic gradients.

All functions work on numpy and cupy arrays. ``x`` is perturbed in place and
restored, so ``f`` may ignore its argument and read the same array from
elsewhere (as the notebooks do with ``lambda _: model.loss(X, y)[0]``).
"""
from random import randrange

import numpy as np

from xdl.backends import get_array_module


def rel_error(x, y):
    """
    Returns the largest elementwise relative error |x - y| / max(1e-8, |x| + |y|)
    as a Python float.
    """
    xp = get_array_module(x, y)
    x = xp.asarray(x, dtype=np.float64)
    y = xp.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("rel_error needs arrays of the same shape, got %s and %s"
                         % (x.shape, y.shape))
    return float(xp.max(xp.abs(x - y) / xp.maximum(1e-8, xp.abs(x) + xp.abs(y))))


def _indices(shape):
    return np.ndindex(*shape)


def _perturbed(f, x, ix, h):
    """Return (f(x + h e_ix), f(x - h e_ix)), restoring x[ix] afterwards."""
    oldval = x[ix].copy()
    try:
        x[ix] = oldval + h
        plus = f(x)
        plus = plus.copy() if hasattr(plus, "copy") else plus
        x[ix] = oldval - h
        minus = f(x)
        minus = minus.copy() if hasattr(minus, "copy") else minus
    finally:
        x[ix] = oldval
    return plus, minus


def eval_numerical_gradient(f, x, verbose=True, h=0.00001):
    """
    A naive implementation of numerical gradient of f at x.

    Inputs:
    - f: a function that takes a single argument and returns a scalar
    - x: the point (array) to evaluate the gradient at; perturbed in place
    - verbose: print each index and its gradient
    - h: the step of the centered difference

    Returns:
    - grad: array of the same shape and module as x
    """
    xp = get_array_module(x)
    grad = xp.zeros(x.shape, dtype=np.float64)
    for ix in _indices(x.shape):
        fxph, fxmh = _perturbed(f, x, ix, h)
        grad[ix] = (float(fxph) - float(fxmh)) / (2 * h)
        if verbose:
            print(ix, float(grad[ix]))
    return grad.astype(x.dtype, copy=False)


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """
    Evaluate a numeric gradient for a function that accepts an array and
    returns an array: the gradient of sum(f(x) * df) with respect to x.

    Inputs:
    - f: function of x returning an array
    - x: input array, perturbed in place and restored
    - df: upstream gradient, of the shape of f(x)
    - h: step of the centered difference

    Returns:
    - grad: array of the same shape and module as x
    """
    xp = get_array_module(x, df)
    grad = xp.zeros(x.shape, dtype=np.float64)
    for ix in _indices(x.shape):
        pos, neg = _perturbed(f, x, ix, h)
        grad[ix] = float(((pos - neg) * df).sum()) / (2 * h)
    return grad.astype(x.dtype, copy=False)


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """
    Sample a few random elements and only return numerical gradients in these
    dimensions, printing one line per check:

        numerical: 3.374718 analytic: 3.374718, relative error: 6.853180e-09

    Inputs:
    - f: function of x returning a scalar
    - x: the point to check at (perturbed in place and restored)
    - analytic_grad: the gradient to check, shape of x
    - num_checks: how many random elements to check
    - h: step of the centered difference

    Returns a list of the relative errors, one per check.
    """
    if analytic_grad.shape != x.shape:
        raise ValueError("analytic_grad has shape %s but x has shape %s"
                         % (analytic_grad.shape, x.shape))
    errors = []
    for _ in range(num_checks):
        ix = tuple(randrange(m) for m in x.shape)
        fxph, fxmh = _perturbed(f, x, ix, h)
        grad_numerical = (float(fxph) - float(fxmh)) / (2 * h)
        grad_analytic = float(analytic_grad[ix])
        denom = abs(grad_numerical) + abs(grad_analytic)
        rel = abs(grad_numerical - grad_analytic) / denom if denom > 0 else 0.0
        print("numerical: %f analytic: %f, relative error: %e"
              % (grad_numerical, grad_analytic, rel))
        errors.append(rel)
    return errors
