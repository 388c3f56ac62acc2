"""A three-layer convolutional network."""
import contextlib

import numpy as np

from xdl.classifiers.base import Model, register
from xdl.layers import _softmax_loss, affine_backward, affine_forward
from xdl.layer_utils import (
    affine_norm_relu_backward,
    affine_norm_relu_forward,
    conv_bn_relu_pool_backward,
    conv_bn_relu_pool_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)
from xdl._checks import check_positive_int


@register
class ThreeLayerConvNet(Model):
    """
    A three-layer convolutional network with the following architecture:

    conv - [spatial batchnorm] - relu - 2x2 max pool - affine - [batchnorm] -
    relu - affine - softmax

    The network operates on minibatches of data that have shape (N, C, H, W)
    consisting of N images, each with height H and width W and with C input
    channels. The convolution keeps the spatial size (stride 1, padding
    (filter_size - 1) // 2), so H and W must be even for the pooling.
    """

    def __init__(self, input_dim=(3, 32, 32), num_filters=32, filter_size=7,
                 hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0,
                 dtype=np.float32, normalization=None):
        """
        Initialize a new network.

        Inputs:
        - input_dim: Tuple (C, H, W) giving size of input data
        - num_filters: Number of filters to use in the convolutional layer
        - filter_size: Width/height of filters to use in the convolutional layer
          (odd, so that the padding keeps the spatial size)
        - hidden_dim: Number of units to use in the fully-connected hidden layer
        - num_classes: Number of scores to produce from the final affine layer.
        - weight_scale: Scalar giving standard deviation for random initialization
          of weights.
        - reg: Scalar giving L2 regularization strength
        - dtype: numpy datatype to use for computation.
        - normalization: None, or 'batchnorm' for spatial batch normalization
          after the convolution and batch normalization after the hidden affine
          layer (parameters gamma1, beta1, gamma2, beta2).
        """
        input_dim = tuple(int(d) for d in input_dim)
        super().__init__(dict(input_dim=list(input_dim), num_filters=num_filters,
                              filter_size=filter_size, hidden_dim=hidden_dim,
                              num_classes=num_classes, weight_scale=weight_scale, reg=reg,
                              normalization=normalization))
        if len(input_dim) != 3:
            raise ValueError("input_dim must be (C, H, W), got %r" % (input_dim,))
        C, H, W = (check_positive_int(d, "input_dim") for d in input_dim)
        F = check_positive_int(num_filters, "num_filters")
        fs = check_positive_int(filter_size, "filter_size")
        hidden = check_positive_int(hidden_dim, "hidden_dim")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        if fs % 2 == 0:
            raise ValueError("filter_size must be odd so the convolution keeps the size, got %d" % fs)
        if H % 2 or W % 2:
            raise ValueError("input height and width must be even for the 2x2 pool, got %dx%d"
                             % (H, W))
        if normalization not in (None, "batchnorm"):
            raise ValueError("normalization must be None or 'batchnorm', got %r" % (normalization,))
        self.input_dim = input_dim
        self.normalization = normalization
        self.reg = reg
        host = {
            "W1": weight_scale * np.random.randn(F, C, fs, fs),
            "b1": np.zeros(F),
            "W2": weight_scale * np.random.randn(F * (H // 2) * (W // 2), hidden),
            "b2": np.zeros(hidden),
            "W3": weight_scale * np.random.randn(hidden, self.num_classes),
            "b3": np.zeros(self.num_classes),
        }
        if normalization == "batchnorm":
            host.update(gamma1=np.ones(F), beta1=np.zeros(F),
                        gamma2=np.ones(hidden), beta2=np.zeros(hidden))
        self._set_initial_params(host, dtype)
        self.conv_param = {"stride": 1, "pad": (fs - 1) // 2}
        self.pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        self.bn_params = [{"mode": "train"}, {"mode": "train"}] if normalization else []

    def _state_dicts(self):
        return self.bn_params

    def _check_nchw(self, X):
        """
        Refuse 4-D input that is not (N, C, H, W), naming the transpose for
        (N, H, W, C) images (what load_CIFAR_batch returns).
        """
        shape = tuple(getattr(X, "shape", ()))
        if len(shape) != 4 or shape[1:] == self.input_dim:
            return  # flattened rows (N, C*H*W) are still accepted
        C, H, W = self.input_dim
        if shape[1:] == (H, W, C):
            raise ValueError("X has shape %s: (N, H, W, C) channels-last images, as "
                             "load_CIFAR_batch returns them; ThreeLayerConvNet needs (N, C, H, W) "
                             "= (N, %d, %d, %d): pass X.transpose(0, 3, 1, 2)"
                             % (shape, C, H, W))
        raise ValueError("X must have shape (N, %d, %d, %d), that is (N, C, H, W); got %s"
                         % (C, H, W, shape))

    # The Solver may hand loss() its adam/adamw step on W2 (in_place_steps).
    in_place_params = ("W2",)

    def loss(self, X, y=None, in_place_steps=None):
        """
        Evaluate loss and gradient for the three-layer convolutional network.

        Input / output: Same API as TwoLayerNet in fc_net.py, and:
        - in_place_steps: optional dict that may map "W2" to an
          xdl.optim.InPlaceStep (the Solver's); W2 then takes that step in
          place beside the convolution's backward pass, once dW2 is known
          (grads["W2"] is still returned).
        """
        p = self.params
        self._check_nchw(X)
        X = self._input(X, self.input_dim)
        X = X.reshape((X.shape[0],) + self.input_dim)
        mode = "test" if y is None else "train"
        for bn_param in self.bn_params:
            bn_param["mode"] = mode

        if self.normalization:
            pooled, conv_cache = conv_bn_relu_pool_forward(
                X, p["W1"], p["b1"], p["gamma1"], p["beta1"],
                self.conv_param, self.bn_params[0], self.pool_param)
            hidden, hidden_cache = affine_norm_relu_forward(
                pooled, p["W2"], p["b2"], p["gamma2"], p["beta2"], self.bn_params[1],
                "batchnorm")
        else:
            pooled, conv_cache = conv_relu_pool_forward(
                X, p["W1"], p["b1"], self.conv_param, self.pool_param)
            hidden, hidden_cache = affine_norm_relu_forward(
                pooled, p["W2"], p["b2"], None, None, None, None)
        scores, scores_cache = affine_forward(hidden, p["W3"], p["b3"])
        if y is None:
            return scores

        y = self._labels(y, X.shape[0], self.num_classes)
        loss, dscores = _softmax_loss(scores, y)

        grads = {}
        # reg * W3 and reg * W2 are added inside the dw products, and their
        # sums of squares for the L2 loss taken in the same pass (the
        # 8192 x hidden W2 would otherwise take passes of its own).
        squares = self._squares_lists(("W2", "W3"))
        dhidden, grads["W3"], grads["b3"] = affine_backward(dscores, scores_cache, self.reg,
                                                            w_squares=squares["W3"])
        dpooled, grads["W2"], grads["b2"], dgamma2, dbeta2 = affine_norm_relu_backward(
            dhidden, hidden_cache, self.reg, w_squares=squares["W2"])
        loss = loss + self._l2(("W1", "W2", "W3"), squares)
        # The input needs no gradient: skip dx of the first convolution.
        # W2's update step, when given, runs beside it (it reads and writes
        # only W2, dW2 and the moments).
        step = (in_place_steps or {}).get("W2")
        with step.take_alongside(grads["W2"]) if step is not None else contextlib.nullcontext():
            if self.normalization:
                _, grads["W1"], grads["b1"], dgamma1, dbeta1 = \
                    conv_bn_relu_pool_backward(dpooled, conv_cache, compute_dx=False)
                grads.update(gamma1=dgamma1, beta1=dbeta1, gamma2=dgamma2, beta2=dbeta2)
            else:
                _, grads["W1"], grads["b1"] = conv_relu_pool_backward(dpooled, conv_cache,
                                                                      compute_dx=False)
        self._add_l2_grads(grads, ("W1",))
        return loss, grads
