"""Linear classifiers trained with minibatch SGD: Softmax and LinearSVM."""
import math
import numbers
import warnings

import numpy as np

from xdl import serialization
from xdl.backends import asarray, asarray_like, asnumpy, get_array_module, host_floats
from xdl.classifiers.linear_svm import svm_loss_vectorized
from xdl.classifiers.softmax import softmax_loss_vectorized
from xdl._checks import (check_labels, check_ndim, check_nonneg_int, check_positive_int,
                         check_reg, labels_checked)
from xdl.solver import TrainingStopped


class LinearClassifier:
    """
    A linear classifier scores = X @ W, trained with stochastic gradient
    descent on the loss of a subclass (``loss_function``).

    Attributes:
    - W: weights of shape (D, C) on the configured backend, or None before
      the first call to train (or load).
    """

    #: loss_function(W, X, y, reg) -> (loss, dW); set by subclasses.
    loss_function = None

    def __init__(self):
        self.W = None

    def train(self, X, y, learning_rate=1e-3, reg=1e-5, num_iters=100,
              batch_size=200, verbose=False):
        """
        Train this linear classifier using stochastic gradient descent.

        Inputs:
        - X: An array of shape (N, D) containing training data; there are N
          training samples each of dimension D.
        - y: An array of shape (N,) containing training labels; y[i] = c
          means that X[i] has label 0 <= c < C for C classes.
        - learning_rate: (float) learning rate for optimization.
        - reg: (float) regularization strength.
        - num_iters: (integer) number of steps to take when optimizing
        - batch_size: (integer) number of training examples to use at each step.
        - verbose: (boolean) If true, print progress during optimization.

        Minibatches are drawn with replacement from the host copy of X (with
        NumPy's global generator) and moved to W's device. Labels are checked
        once, here. Losses stay on W's device and come back to the host in
        batches (at each printed line and at the end), so a step on the GPU
        makes no device-to-host copy: when a loss is not finite, W keeps the
        value it had before that step (a device-side select), training stops
        there with a TrainingStopped warning and the history ends before it.

        Outputs:
        A list containing the value of the loss function at each training iteration.
        """
        check_ndim(X, 2, "X", "(N, D)")
        y = np.asarray(y) if isinstance(y, (list, tuple)) else y
        num_train, dim = X.shape
        check_labels(y, num_train, int(y.max()) + 1 if num_train else 1, "y")
        # Zero is a valid learning rate (it measures the initial loss), as in torch.optim.
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) \
                or not learning_rate >= 0 or not math.isfinite(learning_rate):
            raise ValueError("learning_rate must be a finite number >= 0, got %r"
                             % (learning_rate,))
        reg = check_reg(reg)
        num_iters = check_nonneg_int(num_iters, "num_iters")
        batch_size = check_positive_int(batch_size, "batch_size")
        num_classes = int(y.max()) + 1  # assume y takes values 0...K-1
        if self.W is None:
            dtype = X.dtype if X.dtype.kind == "f" else np.float64
            self.W = asarray((0.001 * np.random.randn(dim, num_classes)).astype(dtype))
        elif self.W.shape[0] != dim or self.W.shape[1] < num_classes:
            raise ValueError("W has shape %s but X has %d features and y has %d classes"
                             % (self.W.shape, dim, num_classes))

        xp = get_array_module(self.W)
        loss_history, pending = [], []
        finite = xp.asarray(True)  # on W's device: no loss so far was inf or nan
        for it in range(num_iters):
            idx = np.random.choice(num_train, batch_size, replace=True)
            X_batch = asarray_like(X[idx], self.W, dtype=self.W.dtype)
            y_batch = asarray_like(y[idx], self.W)
            with np.errstate(over="ignore", invalid="ignore"), labels_checked():
                loss, grad = self.loss(X_batch, y_batch, reg)
                pending.append(loss)
                finite = finite & xp.isfinite(loss)
                self.W = xp.where(finite, self.W - learning_rate * grad, self.W)
            printing = verbose and it % 100 == 0
            if printing or it == num_iters - 1:
                first = len(loss_history)
                loss_history.extend(host_floats(pending))
                pending = []
                bad = next((i for i in range(first, len(loss_history))
                            if not math.isfinite(loss_history[i])), None)
                if bad is not None:
                    warnings.warn("training stopped at iteration %d: the loss is %r (learning "
                                  "rate %g, reg %g too large?)"
                                  % (bad, loss_history[bad], learning_rate, reg),
                                  TrainingStopped, stacklevel=2)
                    del loss_history[bad:]
                    break
                if printing:
                    print("iteration %d / %d: loss %f" % (it, num_iters, loss_history[-1]))
        return loss_history

    def predict(self, X, batch_size=10000):
        """
        Use the trained weights of this linear classifier to predict labels for
        data points.

        Inputs:
        - X: An array of shape (N, D) containing data points.

        Returns:
        - y_pred: Predicted labels for the data in X, a host numpy array of
          shape (N,) holding integers.
        """
        if self.W is None:
            raise RuntimeError("predict needs trained weights: call train() or load() first")
        check_ndim(X, 2, "X", "(N, D)")
        if X.shape[1] != self.W.shape[0]:
            raise ValueError("X has %d features but W has shape %s" % (X.shape[1], self.W.shape))
        xp = get_array_module(self.W)
        preds = []
        for start in range(0, X.shape[0], batch_size):
            Xb = asarray_like(X[start:start + batch_size], self.W, dtype=self.W.dtype)
            preds.append(xp.argmax(Xb @ self.W, axis=1))
        if not preds:
            return np.zeros(0, dtype=np.int64)
        return asnumpy(xp.concatenate(preds))

    def loss(self, X_batch, y_batch, reg):
        """
        Compute the loss function and its derivative.

        Inputs:
        - X_batch: An array of shape (N, D) containing a minibatch of N
          data points; each point has dimension D.
        - y_batch: An array of shape (N,) containing labels for the minibatch.
        - reg: (float) regularization strength.

        Returns: A tuple containing:
        - loss as a single float
        - gradient with respect to self.W; an array of the same shape as W
        """
        if self.loss_function is None:
            raise NotImplementedError("use a subclass that sets loss_function: Softmax or LinearSVM")
        return type(self).loss_function(self.W, X_batch, y_batch, reg)

    def save(self, fname, verbose=True):
        """
        Save the weights to fname (atomically): an .npz archive with the array
        'W' (``numpy.load(fname)["W"]``); load them with load(fname).
        """
        if self.W is None:
            raise RuntimeError("nothing to save: the classifier has no weights yet")
        serialization.save_state(fname, {"W": self.W}, kind="linear_classifier",
                                 info={"class": type(self).__name__})
        if verbose:
            print(fname, "saved.")

    def load(self, fname, verbose=True):
        """Load weights saved by save(fname) onto the configured backend. Returns True."""
        saved = serialization.load_file(fname, kind="linear_classifier",
                                        loader="%s().load" % type(self).__name__)
        if saved.info.get("class") != type(self).__name__:
            raise ValueError("%s holds a %s, not a %s: load it with %s().load(%r)"
                             % (fname, saved.info.get("class"), type(self).__name__,
                                saved.info.get("class"), fname))
        self.W = asarray(saved.state["W"])
        if verbose:
            print(fname, "loaded.")
        return True


class LinearSVM(LinearClassifier):
    """A subclass that uses the Multiclass SVM loss function."""

    loss_function = staticmethod(svm_loss_vectorized)


class Softmax(LinearClassifier):
    """A subclass that uses the Softmax + Cross-entropy loss function."""

    loss_function = staticmethod(softmax_loss_vectorized)
