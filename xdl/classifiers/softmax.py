"""Softmax (multinomial logistic regression) loss for a linear classifier."""
import numpy as np

from xdl.backends import get_array_module
from xdl.layers import log_softmax
from xdl._checks import check_float_array, check_labels, check_ndim, check_reg, check_same_device


def check_linear_inputs(W, X, y, reg):
    """Shared checks of the linear classifiers' losses. Returns (N, C, reg)."""
    check_same_device(W=W, X=X, y=y)
    check_ndim(W, 2, "W", "(D, C)")
    check_ndim(X, 2, "X", "(N, D)")
    check_float_array(W, "W")
    if X.shape[1] != W.shape[0]:
        raise ValueError("X has %d features (shape %s) but W has %d rows (shape %s)"
                         % (X.shape[1], X.shape, W.shape[0], W.shape))
    check_labels(y, X.shape[0], W.shape[1], "y")
    return X.shape[0], W.shape[1], check_reg(reg)


def loss_value(loss):
    """
    The loss as the vectorized losses return it: a Python float for host
    arrays; a 0-d array on the GPU, left there so that a training loop makes
    no device-to-host copy per step (``float(loss)`` copies it).
    """
    return float(loss) if isinstance(loss, (np.ndarray, np.generic)) else loss


def softmax_loss_naive(W, X, y, reg):
    """
    Softmax loss function, naive implementation (with loops)

    Inputs have dimension D, there are C classes, and we operate on minibatches
    of N examples.

    Inputs:
    - W: An array of shape (D, C) containing weights.
    - X: An array of shape (N, D) containing a minibatch of data.
    - y: An array of shape (N,) containing training labels; y[i] = c means
      that X[i] has label c, where 0 <= c < C.
    - reg: (float) regularization strength

    Returns a tuple of:
    - loss as single float
    - gradient with respect to weights W; an array of same shape as W
    """
    N, C, reg = check_linear_inputs(W, X, y, reg)
    xp = get_array_module(W)
    loss = 0.0
    dW = xp.zeros_like(W)
    for i in range(N):
        scores = X[i] @ W
        scores = scores - scores.max()          # shift for numerical stability
        exp_scores = xp.exp(scores)
        total = float(exp_scores.sum())
        loss += float(xp.log(total) - scores[int(y[i])])
        for j in range(C):
            p = exp_scores[j] / total
            dW[:, j] += (p - (j == int(y[i]))) * X[i]
    loss = loss / N + reg * float((W * W).sum())
    dW = dW / N + 2 * reg * W
    return loss, dW


def softmax_loss_vectorized(W, X, y, reg):
    """
    Softmax loss function, vectorized version.

    Inputs and outputs are the same as softmax_loss_naive.
    """
    N, C, reg = check_linear_inputs(W, X, y, reg)
    xp = get_array_module(W)
    rows = xp.arange(N)
    log_probs = log_softmax(X @ W)
    loss = -log_probs[rows, y].sum() / N + reg * (W * W).sum()
    dscores = xp.exp(log_probs)
    dscores[rows, y] -= 1
    dW = X.T @ (dscores / N) + 2 * reg * W
    return loss_value(loss), dW
