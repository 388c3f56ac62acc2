"""Fully-connected networks: TwoLayerNet and FullyConnectedNet."""
import numpy as np

from xdl.classifiers.base import Model, register
from xdl.layers import _softmax_loss, affine_backward, affine_forward
from xdl.layer_utils import (
    affine_norm_relu_backward,
    affine_norm_relu_forward,
    affine_relu_backward,
    affine_relu_forward,
)
from xdl._checks import check_positive_int

NORMALIZATIONS = (None, "batchnorm", "layernorm")


@register
class TwoLayerNet(Model):
    """
    A two-layer fully-connected neural network with ReLU nonlinearity and
    softmax loss that uses a modular layer design. We assume an input dimension
    of D, a hidden dimension of H, and perform classification over C classes.

    The architecture should be affine - relu - affine - softmax.

    The learnable parameters of the model are stored in the dictionary
    self.params that maps parameter names to arrays.
    """

    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10,
                 weight_scale=1e-3, reg=0.0, dtype=np.float32):
        """
        Initialize a new network.

        Inputs:
        - input_dim: An integer giving the size of the input
        - hidden_dim: An integer giving the size of the hidden layer
        - num_classes: An integer giving the number of classes to classify
        - weight_scale: Scalar giving the standard deviation for random
          initialization of the weights.
        - reg: Scalar giving L2 regularization strength.
        - dtype: float32 (fast training) or float64 (gradient checks).
        """
        super().__init__(dict(input_dim=input_dim, hidden_dim=hidden_dim,
                              num_classes=num_classes, weight_scale=weight_scale, reg=reg))
        D = check_positive_int(input_dim, "input_dim")
        H = check_positive_int(hidden_dim, "hidden_dim")
        C = check_positive_int(num_classes, "num_classes")
        self.reg = reg
        self.input_dim, self.num_classes = D, C
        self._set_initial_params({
            "W1": weight_scale * np.random.randn(D, H),
            "b1": np.zeros(H),
            "W2": weight_scale * np.random.randn(H, C),
            "b2": np.zeros(C),
        }, dtype)

    def loss(self, X, y=None):
        """
        Compute loss and gradient for a minibatch of data.

        Inputs:
        - X: Array of input data of shape (N, d_1, ..., d_k), numpy or cupy
        - y: Array of labels, of shape (N,). y[i] gives the label for X[i].

        Returns:
        If y is None, then run a test-time forward pass of the model and return:
        - scores: Array of shape (N, C) giving classification scores, where
          scores[i, c] is the classification score for X[i] and class c.

        If y is not None, then run a training-time forward and backward pass and
        return a tuple of:
        - loss: Scalar value giving the loss
        - grads: Dictionary with the same keys as self.params, mapping parameter
          names to gradients of the loss with respect to those parameters.
        """
        p = self.params
        X = self._input(X, (self.input_dim,))
        hidden, hidden_cache = affine_relu_forward(X, p["W1"], p["b1"])
        scores, scores_cache = affine_forward(hidden, p["W2"], p["b2"])
        if y is None:
            return scores
        y = self._labels(y, X.shape[0], self.num_classes)
        loss, dscores = _softmax_loss(scores, y)
        grads = {}
        # The L2 gradients reg * W are added inside the dw products, and the
        # sums of squares of the L2 loss taken in the same passes; the input
        # needs no gradient.
        squares = self._squares_lists(("W1", "W2"))
        dhidden, grads["W2"], grads["b2"] = affine_backward(dscores, scores_cache, self.reg,
                                                            w_squares=squares["W2"])
        _, grads["W1"], grads["b1"] = affine_relu_backward(
            dhidden, hidden_cache, self.reg, compute_dx=False, w_squares=squares["W1"])
        loss = loss + self._l2(("W1", "W2"), squares)
        return loss, grads


@register
class FullyConnectedNet(Model):
    """
    Class for a multi-layer fully connected neural network.

    Network contains an arbitrary number of hidden layers, ReLU nonlinearities,
    and a softmax loss function. This will also implement dropout and
    batch/layer normalization as options. For a network with L layers, the
    architecture will be

    {affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax

    where batch/layer normalization and dropout are optional and the {...}
    block is repeated L - 1 times.

    Learnable parameters are stored in the self.params dictionary: W1, b1, ...,
    WL, bL, and gamma1, beta1, ... for the normalized layers.
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10,
                 dropout_keep_ratio=1, normalization=None, reg=0.0,
                 weight_scale=1e-2, dtype=np.float32, seed=None):
        """
        Initialize a new FullyConnectedNet.

        Inputs:
        - hidden_dims: A list of integers giving the size of each hidden layer.
        - input_dim: An integer giving the size of the input.
        - num_classes: An integer giving the number of classes to classify.
        - dropout_keep_ratio: Scalar between 0 and 1 giving the probability of
          keeping a unit in dropout. If dropout_keep_ratio=1 then the network
          should not use dropout at all.
        - normalization: What type of normalization the network should use.
          Valid values are "batchnorm", "layernorm", or None for no
          normalization (the default).
        - reg: Scalar giving L2 regularization strength.
        - weight_scale: Scalar giving the standard deviation for random
          initialization of the weights.
        - dtype: A numpy datatype object; all computations will be performed
          using this datatype. float32 is faster but less accurate, so you
          should use float64 for numeric gradient checking.
        - seed: If not None, then pass this random seed to the dropout layers.
          This will make the dropout layers deterministic so we can gradient
          check the model.
        """
        hidden_dims = [check_positive_int(h, "hidden_dims[%d]" % i)
                       for i, h in enumerate(hidden_dims)]
        super().__init__(dict(hidden_dims=hidden_dims, input_dim=input_dim,
                              num_classes=num_classes, dropout_keep_ratio=dropout_keep_ratio,
                              normalization=normalization, reg=reg,
                              weight_scale=weight_scale, seed=seed))
        if normalization not in NORMALIZATIONS:
            raise ValueError("normalization must be None, 'batchnorm' or 'layernorm', got %r"
                             % (normalization,))
        if not (isinstance(dropout_keep_ratio, (int, float)) and 0 < dropout_keep_ratio <= 1):
            raise ValueError("dropout_keep_ratio is the probability of keeping a unit and "
                             "must be in (0, 1], got %r" % (dropout_keep_ratio,))
        self.normalization = normalization
        self.use_dropout = dropout_keep_ratio != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.num_classes = check_positive_int(num_classes, "num_classes")

        dims = [self.input_dim] + hidden_dims + [self.num_classes]
        host = {}
        for i in range(self.num_layers):
            host["W%d" % (i + 1)] = weight_scale * np.random.randn(dims[i], dims[i + 1])
            host["b%d" % (i + 1)] = np.zeros(dims[i + 1])
            if normalization is not None and i < self.num_layers - 1:
                host["gamma%d" % (i + 1)] = np.ones(dims[i + 1])
                host["beta%d" % (i + 1)] = np.zeros(dims[i + 1])
        self._set_initial_params(host, dtype)

        # When using dropout we need to pass a dropout_param dictionary to each
        # dropout layer so that the layer knows the dropout probability and the
        # mode (train / test). You can pass the same dropout_param to each
        # dropout layer.
        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout_keep_ratio}
            if seed is not None:
                self.dropout_param["seed"] = seed

        # With batch normalization we need to keep track of running means and
        # variances, so we need to pass a special bn_param object to each batch
        # normalization layer.
        self.bn_params = []
        if normalization == "batchnorm":
            self.bn_params = [{"mode": "train"} for _ in range(self.num_layers - 1)]
        elif normalization == "layernorm":
            self.bn_params = [{} for _ in range(self.num_layers - 1)]

    def _state_dicts(self):
        return self.bn_params if self.normalization == "batchnorm" else []

    def loss(self, X, y=None):
        """
        Compute loss and gradient for the fully connected net.

        Inputs:
        - X: Array of input data of shape (N, d_1, ..., d_k)
        - y: Array of labels, of shape (N,). y[i] gives the label for X[i].

        Returns:
        If y is None, then run a test-time forward pass of the model and return:
        - scores: Array of shape (N, C) giving classification scores, where
          scores[i, c] is the classification score for X[i] and class c.

        If y is not None, then run a training-time forward and backward pass and
        return a tuple of:
        - loss: Scalar value giving the loss
        - grads: Dictionary with the same keys as self.params, mapping parameter
          names to gradients of the loss with respect to those parameters.
        """
        p = self.params
        X = self._input(X, (self.input_dim,))
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode

        out = X.reshape(X.shape[0], -1)
        caches = []
        for i in range(1, self.num_layers):
            norm = self.normalization
            out, cache = affine_norm_relu_forward(
                out, p["W%d" % i], p["b%d" % i],
                p.get("gamma%d" % i), p.get("beta%d" % i),
                self.bn_params[i - 1] if norm else None, norm,
                self.dropout_param if self.use_dropout else None)
            caches.append(cache)
        L = self.num_layers
        scores, last_cache = affine_forward(out, p["W%d" % L], p["b%d" % L])
        if mode == "test":
            return scores

        y = self._labels(y, X.shape[0], self.num_classes)
        loss, dout = _softmax_loss(scores, y)
        weights = ["W%d" % i for i in range(1, L + 1)]

        grads = {}
        # The L2 gradients reg * W are added inside the dw products, and the
        # sums of squares of the L2 loss taken in the same passes; the input
        # needs no gradient (compute_dx=False for the first layer).
        squares = self._squares_lists(weights)
        dout, grads["W%d" % L], grads["b%d" % L] = affine_backward(
            dout, last_cache, self.reg, compute_dx=L > 1, w_squares=squares["W%d" % L])
        for i in range(L - 1, 0, -1):
            dout, dw, db, dgamma, dbeta = affine_norm_relu_backward(
                dout, caches[i - 1], self.reg, compute_dx=i > 1, w_squares=squares["W%d" % i])
            grads["W%d" % i], grads["b%d" % i] = dw, db
            if self.normalization is not None:
                grads["gamma%d" % i], grads["beta%d" % i] = dgamma, dbeta
        loss = loss + self._l2(weights, squares)
        return loss, grads
