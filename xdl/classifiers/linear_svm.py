"""Multiclass SVM (hinge) loss for a linear classifier."""
from xdl.backends import get_array_module
from xdl.classifiers.softmax import check_linear_inputs, loss_value


def svm_loss_naive(W, X, y, reg):
    """
    Structured SVM loss function, naive implementation (with loops).

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
    dW = xp.zeros_like(W)
    loss = 0.0
    for i in range(N):
        scores = X[i] @ W
        yi = int(y[i])
        correct_class_score = float(scores[yi])
        for j in range(C):
            if j == yi:
                continue
            margin = float(scores[j]) - correct_class_score + 1  # note delta = 1
            if margin > 0:
                loss += margin
                dW[:, j] += X[i]
                dW[:, yi] -= X[i]
    loss = loss / N + reg * float((W * W).sum())
    dW = dW / N + 2 * reg * W
    return loss, dW


def svm_loss_vectorized(W, X, y, reg):
    """
    Structured SVM loss function, vectorized implementation.

    Inputs and outputs are the same as svm_loss_naive.
    """
    N, C, reg = check_linear_inputs(W, X, y, reg)
    xp = get_array_module(W)
    rows = xp.arange(N)
    scores = X @ W
    margins = xp.maximum(0, scores - scores[rows, y][:, None] + 1)
    margins[rows, y] = 0
    loss = margins.sum() / N + reg * (W * W).sum()
    dscores = (margins > 0).astype(W.dtype)
    dscores[rows, y] = -dscores.sum(axis=1)
    dW = X.T @ (dscores / N) + 2 * reg * W
    return loss_value(loss), dW
