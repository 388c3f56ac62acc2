"""Convenience "sandwich" layers: common chains of layers as one
forward/backward pair. Each forward returns (out, cache) and each backward
returns the gradients of the chain's inputs, in argument order.
"""

from xdl.backends import kernels_for
from xdl._checks import (
    check_float_array,
    check_param_shape,
    check_same_device,
    conv_geometry,
    pool_geometry_of_shape,
)
from xdl.layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward_alt,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    relu_backward,
    relu_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from xdl.fast_layers import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)


def affine_relu_forward(x, w, b):
    """
    Convenience layer that performs an affine transform followed by a ReLU.

    Inputs:
    - x: Input to the affine layer
    - w, b: Weights for the affine layer

    Returns a tuple of:
    - out: Output from the ReLU
    - cache: Object to give to the backward pass
    """
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache, reg=0.0, compute_dx=True, w_squares=None):
    """
    Backward pass for the affine-relu convenience layer.

    Inputs:
    - dout, cache: upstream derivative and affine_relu_forward's cache
    - reg, compute_dx, w_squares: as for affine_backward (dw += reg * w
      inside the product; dx None when compute_dx is False; sum(w**2)
      appended to the list w_squares)

    Returns a tuple of (dx, dw, db).
    """
    fc_cache, relu_cache = cache
    da = relu_backward(dout, relu_cache)
    return affine_backward(da, fc_cache, reg, compute_dx, w_squares)


_NORMS = {
    "batchnorm": (batchnorm_forward, batchnorm_backward_alt),
    "layernorm": (layernorm_forward, layernorm_backward),
}


def affine_norm_relu_forward(x, w, b, gamma, beta, norm_param, normalization,
                             dropout_param=None):
    """
    affine - [batchnorm | layernorm | nothing] - relu - [dropout], the hidden
    block of FullyConnectedNet.

    Inputs:
    - x, w, b: input and weights of the affine layer
    - gamma, beta, norm_param: scale, shift and parameter dict of the
      normalization (ignored when normalization is None)
    - normalization: None, 'batchnorm' or 'layernorm'
    - dropout_param: dropout settings, or None for no dropout

    Returns a tuple of (out, cache).
    """
    out, fc_cache = affine_forward(x, w, b)
    norm_cache = None
    if normalization is not None:
        out, norm_cache = _NORMS[normalization][0](out, gamma, beta, norm_param)
    out, relu_cache = relu_forward(out)
    drop_cache = None
    if dropout_param is not None:
        out, drop_cache = dropout_forward(out, dropout_param)
    return out, (fc_cache, normalization, norm_cache, relu_cache, drop_cache)


def affine_norm_relu_backward(dout, cache, reg=0.0, compute_dx=True, w_squares=None):
    """
    Backward pass for affine_norm_relu_forward; reg, compute_dx and
    w_squares as for affine_backward.

    Returns a tuple of (dx, dw, db, dgamma, dbeta); dgamma and dbeta are None
    without normalization.
    """
    fc_cache, normalization, norm_cache, relu_cache, drop_cache = cache
    if drop_cache is not None:
        dout = dropout_backward(dout, drop_cache)
    dout = relu_backward(dout, relu_cache)
    dgamma = dbeta = None
    if normalization is not None:
        dout, dgamma, dbeta = _NORMS[normalization][1](dout, norm_cache)
    dx, dw, db = affine_backward(dout, fc_cache, reg, compute_dx, w_squares)
    return dx, dw, db, dgamma, dbeta


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """affine - batchnorm - relu. Returns (out, cache)."""
    return affine_norm_relu_forward(x, w, b, gamma, beta, bn_param, "batchnorm")


def affine_bn_relu_backward(dout, cache):
    """Backward pass for affine_bn_relu_forward. Returns (dx, dw, db, dgamma, dbeta)."""
    return affine_norm_relu_backward(dout, cache)


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    """affine - layernorm - relu. Returns (out, cache)."""
    return affine_norm_relu_forward(x, w, b, gamma, beta, ln_param, "layernorm")


def affine_ln_relu_backward(dout, cache):
    """Backward pass for affine_ln_relu_forward. Returns (dx, dw, db, dgamma, dbeta)."""
    return affine_norm_relu_backward(dout, cache)


def conv_relu_forward(x, w, b, conv_param):
    """
    A convenience layer that performs a convolution followed by a ReLU.

    Inputs:
    - x: Input to the convolutional layer
    - w, b, conv_param: Weights and parameters for the convolutional layer

    Returns a tuple of:
    - out: Output from the ReLU
    - cache: Object to give to the backward pass
    """
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout, cache, compute_dx=True):
    """
    Backward pass for the conv-relu convenience layer. Returns (dx, dw, db);
    dx is None when compute_dx is False (a network's first layer).
    """
    conv_cache, relu_cache = cache
    da = relu_backward(dout, relu_cache)
    return conv_backward_fast(da, conv_cache, compute_dx=compute_dx)


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """conv - spatial batchnorm - relu. Returns (out, cache)."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache, compute_dx=True):
    """
    Backward pass for conv_bn_relu_forward. Returns (dx, dw, db, dgamma,
    dbeta); dx is None when compute_dx is False.
    """
    conv_cache, bn_cache, relu_cache = cache
    dan = relu_backward(dout, relu_cache)
    da, dgamma, dbeta = spatial_batchnorm_backward(dan, bn_cache)
    dx, dw, db = conv_backward_fast(da, conv_cache, compute_dx=compute_dx)
    return dx, dw, db, dgamma, dbeta


def _relu_pool_forward(a, pool_param):
    """
    relu then max pool, computed as max pool then relu: the two commute
    (relu is monotone), and the ReLU then runs on the pooled array, a fraction
    of the size. The gradients are the same too: a window whose maximum is
    > 0 sends its gradient to the same (first) maximum either way, and one
    whose maximum is <= 0 sends none. Returns (out, cache).
    """
    pooled, pool_cache = max_pool_forward_fast(a, pool_param)
    out, relu_cache = relu_forward(pooled)
    return out, (pool_cache, relu_cache)


def _relu_pool_backward(dout, cache):
    pool_cache, relu_cache = cache
    return max_pool_backward_fast(relu_backward(dout, relu_cache), pool_cache)


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """
    Convenience layer that performs a convolution, a ReLU, and a pool.

    The three run as one operation of the arrays' device
    (``conv_relu_pool_forward`` of ``xdl.backends``): on the CPU, one pass
    per image that keeps the pre-pool activation in cache and never stores
    it; on the GPU (and in the NumPy fallback), the convolution and pooling
    kernels with the ReLU applied to the pooled values. Same results, to
    rounding, as conv_forward_fast, relu_forward and max_pool_forward_fast.

    Inputs:
    - x: Input to the convolutional layer
    - w, b, conv_param: Weights and parameters for the convolutional layer
    - pool_param: Parameters for the pooling layer

    Returns a tuple of:
    - out: Output from the pooling layer
    - cache: Object to give to the backward pass: (x, w, b, conv_param,
      pool_param, argmax), argmax being the window index of each pooled
      maximum, -1 where the ReLU passes no gradient
    """
    check_same_device(x=x, w=w, b=b)
    check_float_array(x, "x")
    if len({x.dtype, w.dtype, b.dtype}) != 1:
        raise TypeError("conv_relu_pool_forward needs x, w and b of one dtype, got %s, %s, %s"
                        % (x.dtype, w.dtype, b.dtype))
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    check_param_shape(b, (w.shape[0],), "b", "one bias per filter of w %s" % (w.shape,))
    pool = _pool_geometry_of(x.shape[0], w.shape[0], out_h, out_w, pool_param)
    out, argmax = kernels_for(x).conv_relu_pool_forward(x, w, b, stride, pad, out_h, out_w,
                                                        *pool)
    return out, (x, w, b, conv_param, pool_param, argmax)


def conv_relu_pool_backward(dout, cache, compute_dx=True):
    """
    Backward pass for the conv-relu-pool convenience layer. Returns (dx, dw,
    db); dx is None when compute_dx is False (a network's first layer).
    """
    x, w, b, conv_param, pool_param, argmax = cache
    check_same_device(dout=dout, x=x, w=w)
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    pool = _pool_geometry_of(x.shape[0], w.shape[0], out_h, out_w, pool_param)
    expected = (x.shape[0], w.shape[0], pool[3], pool[4])
    if dout.shape != expected:
        raise ValueError("dout must have shape %s, got %s" % (expected, dout.shape))
    if dout.dtype != x.dtype:
        dout = dout.astype(x.dtype)  # as max_pool_backward_fast does
    return kernels_for(x).conv_relu_pool_backward(dout, argmax, x, w, stride, pad, out_h, out_w,
                                                  *pool, compute_dx=compute_dx)


def _pool_geometry_of(N, F, out_h, out_w, pool_param):
    """pool_geometry of the (N, F, out_h, out_w) convolution output (which is never made)."""
    return pool_geometry_of_shape((N, F, out_h, out_w), pool_param)


def conv_bn_relu_pool_forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
    """conv - spatial batchnorm - relu - max pool. Returns (out, cache)."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_pool_cache = _relu_pool_forward(an, pool_param)
    return out, (conv_cache, bn_cache, relu_pool_cache)


def conv_bn_relu_pool_backward(dout, cache, compute_dx=True):
    """
    Backward pass for conv_bn_relu_pool_forward. Returns (dx, dw, db, dgamma,
    dbeta); dx is None when compute_dx is False.
    """
    conv_cache, bn_cache, relu_pool_cache = cache
    dan = _relu_pool_backward(dout, relu_pool_cache)
    da, dgamma, dbeta = spatial_batchnorm_backward(dan, bn_cache)
    dx, dw, db = conv_backward_fast(da, conv_cache, compute_dx=compute_dx)
    return dx, dw, db, dgamma, dbeta
