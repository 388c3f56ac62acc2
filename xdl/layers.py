"""Layers as pairs of functions: ``*_forward`` returns ``(out, cache)`` and
``*_backward`` takes ``(dout, cache)`` and returns the gradients.

Every function works on numpy and cupy arrays (the arrays decide, see
``xdl.backends``) and keeps the input dtype. Caches are never modified, so a
backward pass can be run twice with the same result. The ``*_naive``
convolution and pooling functions are plain loops, the reference the fast
layers in ``xdl.fast_layers`` are tested against; they run on the host only.
"""
import numpy as np

from xdl import _rng
from xdl.backends import get_array_module, is_cupy_array, kernels_for
from xdl._checks import (
    check_float_array,
    check_labels,
    check_mode,
    check_ndim,
    check_param_shape,
    check_reg,
    check_same_device,
    conv_geometry,
    pool_geometry,
)

# ---------------------------------------------------------------------------
# Affine and ReLU
# ---------------------------------------------------------------------------


def _matmul(a, b):
    """a @ b on the arrays' device (on the CPU, large products run on the kernels' threads)."""
    return kernels_for(a, b).matmul(a, b)


def affine_forward(x, w, b):
    """
    Computes the forward pass for an affine (fully connected) layer.

    The input x has shape (N, d_1, ..., d_k) and contains a minibatch of N
    examples, where each example x[i] has shape (d_1, ..., d_k). We reshape
    each input into a vector of dimension D = d_1 * ... * d_k.

    Inputs:
    - x: A numpy/cupy array containing input data, of shape (N, d_1, ..., d_k)
    - w: An array of weights, of shape (D, M)
    - b: An array of biases, of shape (M,)

    Returns a tuple of:
    - out: output, of shape (N, M)
    - cache: (x, w, b)
    """
    check_same_device(x=x, w=w, b=b)
    check_ndim(w, 2, "w", "(D, M)")
    N = x.shape[0]
    D = int(np.prod(x.shape[1:]))
    if D != w.shape[0]:
        raise ValueError("x has %d features per example (shape %s) but w has %d rows (shape %s)"
                         % (D, x.shape, w.shape[0], w.shape))
    check_param_shape(b, (w.shape[1],), "b", "one bias per output of w %s" % (w.shape,))
    out = _matmul(x.reshape(N, D), w)
    out += b
    return out, (x, w, b)


def affine_backward(dout, cache, reg=0.0, compute_dx=True, w_squares=None):
    """
    Computes the backward pass for an affine layer.

    Inputs:
    - dout: Upstream derivative, of shape (N, M)
    - cache: Tuple of:
      - x: Input data, of shape (N, d_1, ... d_k)
      - w: Weights, of shape (D, M)
      - b: Biases, of shape (M,)
    - reg: optional L2 strength: dw then includes reg * w, the gradient of
      0.5 * reg * sum(w**2), added inside the product (no pass of its own
      over dw; the models regularize their large weights this way)
    - compute_dx: False skips dx (returned as None), for a network's first
      layer, whose input needs no gradient
    - w_squares: optional list; sum(w**2) is appended to it, taken in the
      same pass over w as dw (the models' L2 loss needs no pass of its own)

    Returns a tuple of:
    - dx: Gradient with respect to x, of shape (N, d1, ..., d_k)
    - dw: Gradient with respect to w, of shape (D, M)
    - db: Gradient with respect to b, of shape (M,)
    """
    x, w, b = cache
    N = x.shape[0]
    if dout.shape != (N, w.shape[1]):
        raise ValueError("dout must have shape %s, got %s" % ((N, w.shape[1]), dout.shape))
    reg = check_reg(reg)
    x2 = x.reshape(N, -1)
    if w_squares is not None and not isinstance(w_squares, list):
        raise TypeError("w_squares must be a list (sum(w**2) is appended to it) or None, got %s"
                        % type(w_squares).__name__)
    dx, dw, *sumsq = kernels_for(x2, w, dout).affine_backward(x2, w, dout, reg, compute_dx,
                                                               w_squares is not None)
    if w_squares is not None:
        w_squares.append(sumsq[0])
    if dx is not None:
        dx = dx.reshape(x.shape)
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x):
    """
    Computes the forward pass for a layer of rectified linear units (ReLUs).

    Input:
    - x: Inputs, of any shape

    Returns a tuple of:
    - out: Output, of the same shape as x
    - cache: x
    """
    xp = get_array_module(x)
    return xp.maximum(x, 0), x


def relu_backward(dout, cache):
    """
    Computes the backward pass for a layer of rectified linear units (ReLUs).

    Input:
    - dout: Upstream derivatives, of any shape
    - cache: Input x, of same shape as dout

    Returns:
    - dx: Gradient with respect to x
    """
    x = cache
    if dout.shape != x.shape:
        raise ValueError("dout shape %s does not match x shape %s" % (dout.shape, x.shape))
    return kernels_for(dout, x).relu_backward(dout, x)


# ---------------------------------------------------------------------------
# Loss layers
# ---------------------------------------------------------------------------


def _check_scores(x, y):
    check_ndim(x, 2, "x", "of class scores (N, C)")
    check_float_array(x, "x")
    check_labels(y, x.shape[0], x.shape[1], "y")


def log_softmax(x):
    """Row-wise log-softmax computed stably (shift by the row max)."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax_loss(x, y):
    """
    Computes the loss and gradient for softmax classification.

    The log-likelihood is computed with the log-sum-exp trick, so huge scores
    give a finite loss and gradient (never inf, never a divide-by-zero warning).

    Inputs:
    - x: Input data, of shape (N, C) where x[i, j] is the score for the jth
      class for the ith input.
    - y: Vector of labels, of shape (N,) where y[i] is the label for x[i] and
      0 <= y[i] < C

    Returns a tuple of:
    - loss: Scalar giving the loss
    - dx: Gradient of the loss with respect to x
    """
    check_same_device(x=x, y=y)
    _check_scores(x, y)
    return _softmax_loss(x, y)


def _softmax_loss(x, y):
    """
    softmax_loss without the label checks, for models that checked y on the
    host: the device's softmax loss (one fused kernel on the GPU, the
    log-softmax formula on the CPU).
    """
    return kernels_for(x, y).softmax_loss(x, y)


def svm_loss(x, y):
    """
    Computes the loss and gradient for multiclass SVM classification.

    Inputs:
    - x: Input data, of shape (N, C) where x[i, j] is the score for the jth
      class for the ith input.
    - y: Vector of labels, of shape (N,) where y[i] is the label for x[i] and
      0 <= y[i] < C

    Returns a tuple of:
    - loss: Scalar giving the loss
    - dx: Gradient of the loss with respect to x
    """
    xp = get_array_module(x, y)
    _check_scores(x, y)
    N = x.shape[0]
    rows = xp.arange(N)
    margins = xp.maximum(0, x - x[rows, y][:, None] + 1)
    margins[rows, y] = 0
    loss = margins.sum() / N
    positive = (margins > 0).astype(x.dtype)
    dx = positive
    dx[rows, y] -= positive.sum(axis=1)
    dx /= N
    return loss, dx


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def _dropout_settings(dropout_param):
    if not isinstance(dropout_param, dict):
        raise TypeError("dropout_param must be a dict with 'p' and 'mode'")
    if "p" not in dropout_param:
        raise ValueError("dropout_param['p'] (the keep probability) is required")
    p = dropout_param["p"]
    if not (isinstance(p, (int, float, np.floating)) and 0 < p <= 1):
        raise ValueError("dropout_param['p'] is the probability of keeping a unit and "
                         "must be in (0, 1], got %r" % (p,))
    return float(p), check_mode(dropout_param, "dropout_param")


def _dropout_uniform(xp, shape, seed):
    """
    Uniform numbers in [0, 1) for a dropout mask, made where x lives.

    - numpy: NumPy's global generator, or np.random.RandomState(seed); the
      notebooks' reference values (the train-time means, the initial losses
      of the seeded FullyConnectedNet) depend on exactly these draws.
    - cupy: the counter-based generator of xdl._rng run on the device, from
      seed or from a seed drawn from NumPy's global generator: no host array
      is copied to the GPU per step.
    """
    if xp is np:
        rng = np.random if seed is None else np.random.RandomState(seed)
        return rng.rand(*shape)
    return _rng.uniform(xp, shape, _rng.new_seed() if seed is None else seed)


def dropout_forward(x, dropout_param):
    """
    Performs the forward pass for (inverted) dropout.

    Inputs:
    - x: Input data, of any shape
    - dropout_param: A dictionary with the following keys:
      - p: Dropout parameter. We keep each neuron output with probability p.
      - mode: 'test' or 'train'. If the mode is train, then perform dropout;
        if the mode is test, then just return the input.
      - seed: Seed for the random number generator. Passing seed makes this
        function deterministic, which is needed for gradient checking.

    The mask comes from _dropout_uniform: NumPy's generators on the host (as
    in the notebooks), a counter-based generator on the GPU. A seed, or
    np.random.seed, makes masks reproducible on each backend; the masks of
    the two backends differ.

    Outputs:
    - out: Array of the same shape as x.
    - cache: tuple (dropout_param, mask). In training mode, mask is the dropout
      mask (kept units hold 1/p, dropped units 0) used to multiply the input;
      in test mode, mask is None.
    """
    xp = get_array_module(x)
    p, mode = _dropout_settings(dropout_param)
    mask = None
    if mode == "train":
        keep = _dropout_uniform(xp, x.shape, dropout_param.get("seed")) < p
        # 1/p where kept, 0 where dropped, in x's dtype: the same bits as
        # where(keep, 1/p, 0), whose scalar operands take NumPy's slow
        # generic loop (21.6 against 6.8 us for (200, 100) float32 masks,
        # 6.5 against 0.27 ms for (50, 32, 32, 32)).
        mask = keep.astype(x.dtype) * x.dtype.type(1 / p)
        out = x * mask
    else:
        out = x
    return out, (dropout_param, mask)


def dropout_backward(dout, cache):
    """
    Perform the backward pass for (inverted) dropout.

    Inputs:
    - dout: Upstream derivatives, of any shape
    - cache: (dropout_param, mask) from dropout_forward.

    Returns:
    - dx: Gradient with respect to x
    """
    dropout_param, mask = cache
    if dropout_param.get("mode", "train") == "train":
        return dout * mask
    return dout


# ---------------------------------------------------------------------------
# Normalization: batch, layer, spatial batch and spatial group norm share one
# forward helper (statistics over `axes`) and one closed-form backward.
# ---------------------------------------------------------------------------


def _normalize(x, axes, eps):
    """Return (xhat, mean, var, inv_std) with statistics over `axes` (keepdims)."""
    xp = get_array_module(x)
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    inv_std = 1 / xp.sqrt(var + eps)
    return xc * inv_std, mean, var, inv_std


def _normalize_backward(dxhat, xhat, inv_std, axes):
    """
    Gradient through xhat = (x - mean) / sqrt(var + eps), statistics over axes:
    dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    """
    m1 = dxhat.mean(axis=axes, keepdims=True)
    m2 = (dxhat * xhat).mean(axis=axes, keepdims=True)
    return inv_std * (dxhat - m1 - xhat * m2)


def _bn_settings(bn_param, name):
    if not isinstance(bn_param, dict):
        raise TypeError("%s must be a dict (use {'mode': 'train'})" % name)
    mode = check_mode(bn_param, name)
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    if not eps > 0:
        raise ValueError("%s['eps'] must be > 0, got %r" % (name, eps))
    if not 0 <= momentum <= 1:
        raise ValueError("%s['momentum'] must be in [0, 1], got %r" % (name, momentum))
    return mode, eps, momentum


def _batchnorm_forward(x, gamma, beta, bn_param, axes, name):
    """Shared by batchnorm (axes (0,)) and spatial batchnorm (axes (0, 2, 3))."""
    xp = get_array_module(x, gamma, beta)
    check_float_array(x, "x")
    C = x.shape[1]
    check_param_shape(gamma, (C,), "gamma", "one scale per feature of x %s" % (x.shape,))
    check_param_shape(beta, (C,), "beta", "one shift per feature of x %s" % (x.shape,))
    mode, eps, momentum = _bn_settings(bn_param, name)
    bshape = (1, C) + (1,) * (x.ndim - 2)  # broadcast (C,) against x
    g, bt = gamma.reshape(bshape), beta.reshape(bshape)
    running_mean = bn_param.get("running_mean")
    running_var = bn_param.get("running_var")
    if running_mean is None:
        running_mean = xp.zeros(C, dtype=x.dtype)
    if running_var is None:
        running_var = xp.zeros(C, dtype=x.dtype)
    if mode == "train":
        xhat, mean, var, inv_std = _normalize(x, axes, eps)
        out = g * xhat + bt
        bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mean.reshape(C)
        bn_param["running_var"] = momentum * running_var + (1 - momentum) * var.reshape(C)
        cache = (x, xhat, mean, var, inv_std, gamma, beta, eps, axes)
    else:
        inv_std = 1 / xp.sqrt(running_var.reshape(bshape) + eps)
        xhat = (x - running_mean.reshape(bshape)) * inv_std
        out = g * xhat + bt
        bn_param["running_mean"] = running_mean
        bn_param["running_var"] = running_var
        cache = None
    return out, cache


def _check_train_cache(cache, name):
    if cache is None:
        raise ValueError("%s needs the cache of a forward pass in 'train' mode; "
                         "test mode does not keep one" % name)


def batchnorm_forward(x, gamma, beta, bn_param):
    """
    Forward pass for batch normalization.

    During training the sample mean and (uncorrected) sample variance are
    computed from minibatch statistics and used to normalize the incoming data.
    During training we also keep an exponentially decaying running mean of the
    mean and variance of each feature, and these averages are used to normalize
    data at test-time:

    running_mean = momentum * running_mean + (1 - momentum) * sample_mean
    running_var = momentum * running_var + (1 - momentum) * sample_var

    Input:
    - x: Data of shape (N, D)
    - gamma: Scale parameter of shape (D,)
    - beta: Shift paremeter of shape (D,)
    - bn_param: Dictionary with the following keys:
      - mode: 'train' or 'test'; required
      - eps: Constant for numeric stability (default 1e-5)
      - momentum: Constant for running mean / variance (default 0.9)
      - running_mean: Array of shape (D,) giving running mean of features
      - running_var Array of shape (D,) giving running variance of features

    Returns a tuple of:
    - out: of shape (N, D)
    - cache: A tuple of values needed in the backward pass (None in test mode)
    """
    check_ndim(x, 2, "x", "(N, D)")
    return _batchnorm_forward(x, gamma, beta, bn_param, (0,), "bn_param")


def batchnorm_backward(dout, cache):
    """
    Backward pass for batch normalization, through the computation graph
    (mean -> centered -> variance -> std -> normalized -> scaled/shifted).

    Inputs:
    - dout: Upstream derivatives, of shape (N, D)
    - cache: Variable of intermediates from batchnorm_forward.

    Returns a tuple of:
    - dx: Gradient with respect to inputs x, of shape (N, D)
    - dgamma: Gradient with respect to scale parameter gamma, of shape (D,)
    - dbeta: Gradient with respect to shift parameter beta, of shape (D,)
    """
    _check_train_cache(cache, "batchnorm_backward")
    x, xhat, mean, var, inv_std, gamma, beta, eps, axes = cache
    xp = get_array_module(dout, x)
    N = x.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma                          # out = gamma * xhat + beta
    xc = x - mean                                 # xhat = xc * inv_std
    dinv_std = (dxhat * xc).sum(axis=0, keepdims=True)
    dxc = dxhat * inv_std
    std = xp.sqrt(var + eps)                      # inv_std = 1 / std
    dstd = -dinv_std / (std * std)
    dvar = dstd / (2 * std)                       # std = sqrt(var + eps)
    dxc = dxc + (2.0 / N) * xc * dvar             # var = mean(xc**2)
    dmean = -dxc.sum(axis=0, keepdims=True)       # xc = x - mean
    dx = dxc + dmean / N                          # mean = mean(x)
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    """
    Alternative backward pass for batch normalization, from the gradient
    simplified on paper:

        dx = gamma / std * (dout - mean(dout) - xhat * mean(dout * xhat))

    Inputs / outputs: Same as batchnorm_backward
    """
    _check_train_cache(cache, "batchnorm_backward_alt")
    x, xhat, mean, var, inv_std, gamma, beta, eps, axes = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std) * (dout - dbeta / x.shape[0] - xhat * (dgamma / x.shape[0]))
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """
    Forward pass for layer normalization: each example (row of x) is
    normalized by its own mean and variance over its D features, then scaled
    and shifted per feature. Train and test time behave the same, so no
    running averages are kept.

    Input:
    - x: Data of shape (N, D)
    - gamma: Scale parameter of shape (D,)
    - beta: Shift paremeter of shape (D,)
    - ln_param: Dictionary with the following keys:
        - eps: Constant for numeric stability (default 1e-5)

    Returns a tuple of:
    - out: of shape (N, D)
    - cache: A tuple of values needed in the backward pass
    """
    check_same_device(x=x, gamma=gamma, beta=beta)
    check_ndim(x, 2, "x", "(N, D)")
    check_float_array(x, "x")
    D = x.shape[1]
    check_param_shape(gamma, (D,), "gamma", "one scale per feature of x %s" % (x.shape,))
    check_param_shape(beta, (D,), "beta", "one shift per feature of x %s" % (x.shape,))
    if not isinstance(ln_param, dict):
        raise TypeError("ln_param must be a dict")
    eps = ln_param.get("eps", 1e-5)
    xhat, mean, var, inv_std = _normalize(x, (1,), eps)
    return gamma * xhat + beta, (xhat, inv_std, gamma)


def layernorm_backward(dout, cache):
    """
    Backward pass for layer normalization.

    Inputs:
    - dout: Upstream derivatives, of shape (N, D)
    - cache: Variable of intermediates from layernorm_forward.

    Returns a tuple of:
    - dx: Gradient with respect to inputs x, of shape (N, D)
    - dgamma: Gradient with respect to scale parameter gamma, of shape (D,)
    - dbeta: Gradient with respect to shift parameter beta, of shape (D,)
    """
    xhat, inv_std, gamma = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = _normalize_backward(dout * gamma, xhat, inv_std, (1,))
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """
    Computes the forward pass for spatial batch normalization: batch
    normalization of each channel over the minibatch and both spatial axes.

    Inputs:
    - x: Input data of shape (N, C, H, W)
    - gamma: Scale parameter, of shape (C,)
    - beta: Shift parameter, of shape (C,)
    - bn_param: Dictionary with the following keys:
      - mode: 'train' or 'test'; required
      - eps: Constant for numeric stability
      - momentum: Constant for running mean / variance. momentum=0 means that
        old information is discarded completely at every time step, while
        momentum=1 means that new information is never incorporated. The
        default of momentum=0.9 should work well in most situations.
      - running_mean: Array of shape (C,) giving running mean of features
      - running_var Array of shape (C,) giving running variance of features

    Returns a tuple of:
    - out: Output data, of shape (N, C, H, W)
    - cache: Values needed for the backward pass
    """
    check_ndim(x, 4, "x", "(N, C, H, W)")
    return _batchnorm_forward(x, gamma, beta, bn_param, (0, 2, 3), "bn_param")


def spatial_batchnorm_backward(dout, cache):
    """
    Computes the backward pass for spatial batch normalization.

    Inputs:
    - dout: Upstream derivatives, of shape (N, C, H, W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient with respect to inputs, of shape (N, C, H, W)
    - dgamma: Gradient with respect to scale parameter, of shape (C,)
    - dbeta: Gradient with respect to shift parameter, of shape (C,)
    """
    _check_train_cache(cache, "spatial_batchnorm_backward")
    x, xhat, mean, var, inv_std, gamma, beta, eps, axes = cache
    C = x.shape[1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dx = _normalize_backward(dout * gamma.reshape(1, C, 1, 1), xhat, inv_std, axes)
    return dx, dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """
    Computes the forward pass for spatial group normalization: the C channels
    of each example are split into G groups of C // G consecutive channels,
    and each group is normalized over its channels and both spatial axes.

    Inputs:
    - x: Input data of shape (N, C, H, W)
    - gamma: Scale parameter, of shape (1, C, 1, 1)
    - beta: Shift parameter, of shape (1, C, 1, 1)
    - G: Integer number of groups to split into, should be a divisor of C
    - gn_param: Dictionary with the following keys:
      - eps: Constant for numeric stability

    Returns a tuple of:
    - out: Output data, of shape (N, C, H, W)
    - cache: Values needed for the backward pass
    """
    check_same_device(x=x, gamma=gamma, beta=beta)
    check_ndim(x, 4, "x", "(N, C, H, W)")
    check_float_array(x, "x")
    N, C, H, W = x.shape
    if not isinstance(G, (int, np.integer)) or G <= 0 or C % G != 0:
        raise ValueError("G must be a positive divisor of the number of channels C=%d, got %r"
                         % (C, G))
    check_param_shape(gamma, (1, C, 1, 1), "gamma", "one scale per channel of x %s" % (x.shape,))
    check_param_shape(beta, (1, C, 1, 1), "beta", "one shift per channel of x %s" % (x.shape,))
    if not isinstance(gn_param, dict):
        raise TypeError("gn_param must be a dict")
    eps = gn_param.get("eps", 1e-5)
    xg = x.reshape(N, G, -1)
    xhat, mean, var, inv_std = _normalize(xg, (2,), eps)
    xhat = xhat.reshape(N, C, H, W)
    return gamma * xhat + beta, (xhat, inv_std, gamma, G)


def spatial_groupnorm_backward(dout, cache):
    """
    Computes the backward pass for spatial group normalization.

    Inputs:
    - dout: Upstream derivatives, of shape (N, C, H, W)
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient with respect to inputs, of shape (N, C, H, W)
    - dgamma: Gradient with respect to scale parameter, of shape (1, C, 1, 1)
    - dbeta: Gradient with respect to shift parameter, of shape (1, C, 1, 1)
    """
    xhat, inv_std, gamma, G = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dxhat = (dout * gamma).reshape(N, G, -1)
    dx = _normalize_backward(dxhat, xhat.reshape(N, G, -1), inv_std, (2,))
    return dx.reshape(dout.shape), dgamma, dbeta


# ---------------------------------------------------------------------------
# Naive convolution and max pooling: loops, the reference for the fast layers.
# ---------------------------------------------------------------------------


def _host_only(name, *arrays):
    if any(is_cupy_array(a) for a in arrays):
        raise TypeError("%s is a host-only reference implementation (plain loops) and does "
                        "not take cupy arrays; use the xdl.fast_layers version on the GPU "
                        "or move the arrays with xdl.asnumpy" % name)


def conv_forward_naive(x, w, b, conv_param):
    """
    A naive implementation of the forward pass for a convolutional layer.

    The input consists of N data points, each with C channels, height H and
    width W. We convolve each input with F different filters, where each filter
    spans all C channels and has height HH and width WW.

    Input:
    - x: Input data of shape (N, C, H, W)
    - w: Filter weights of shape (F, C, HH, WW)
    - b: Biases, of shape (F,)
    - conv_param: A dictionary with the following keys:
      - 'stride': The number of pixels between adjacent receptive fields in the
        horizontal and vertical directions.
      - 'pad': The number of pixels that will be used to zero-pad the input.

    Returns a tuple of:
    - out: Output data, of shape (N, F, H', W') where H' and W' are given by
      H' = 1 + (H + 2 * pad - HH) / stride
      W' = 1 + (W + 2 * pad - WW) / stride
    - cache: (x, w, b, conv_param)
    """
    _host_only("conv_forward_naive", x, w, b)
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    F, _, HH, WW = w.shape
    check_param_shape(b, (F,), "b", "one bias per filter of w %s" % (w.shape,))
    N = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty((N, F, out_h, out_w), dtype=np.result_type(x, w))
    for n in range(N):
        for f in range(F):
            for i in range(out_h):
                for j in range(out_w):
                    window = xp[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    """
    A naive implementation of the backward pass for a convolutional layer.

    Inputs:
    - dout: Upstream derivatives.
    - cache: A tuple of (x, w, b, conv_param) as in conv_forward_naive

    Returns a tuple of:
    - dx: Gradient with respect to x
    - dw: Gradient with respect to w
    - db: Gradient with respect to b
    """
    x, w, b, conv_param = cache
    _host_only("conv_backward_naive", dout, x)
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    N, F = x.shape[0], w.shape[0]
    HH, WW = w.shape[2:]
    if dout.shape != (N, F, out_h, out_w):
        raise ValueError("dout must have shape %s, got %s" % ((N, F, out_h, out_w), dout.shape))
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for n in range(N):
        for f in range(F):
            for i in range(out_h):
                for j in range(out_w):
                    hs, ws = i * stride, j * stride
                    g = dout[n, f, i, j]
                    dw[f] += g * xp[n, :, hs:hs + HH, ws:ws + WW]
                    dxp[n, :, hs:hs + HH, ws:ws + WW] += g * w[f]
    dx = dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]].copy()
    return dx, dw, db


def max_pool_forward_naive(x, pool_param):
    """
    A naive implementation of the forward pass for a max-pooling layer.

    Inputs:
    - x: Input data, of shape (N, C, H, W)
    - pool_param: dictionary with the following keys:
      - 'pool_height': The height of each pooling region
      - 'pool_width': The width of each pooling region
      - 'stride': The distance between adjacent pooling regions

    No padding is necessary here. Output size is given by
      H' = 1 + (H - pool_height) / stride
      W' = 1 + (W - pool_width) / stride

    Returns a tuple of:
    - out: Output data, of shape (N, C, H', W')
    - cache: (x, pool_param)
    """
    _host_only("max_pool_forward_naive", x)
    ph, pw, stride, out_h, out_w = pool_geometry(x, pool_param)
    N, C = x.shape[:2]
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw]
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache):
    """
    A naive implementation of the backward pass for a max-pooling layer.

    The whole gradient of a window goes to its first maximum in row-major
    window order (the element np.argmax picks), on every backend.

    Inputs:
    - dout: Upstream derivatives
    - cache: A tuple of (x, pool_param) as in the forward pass.

    Returns:
    - dx: Gradient with respect to x
    """
    x, pool_param = cache
    _host_only("max_pool_backward_naive", dout, x)
    ph, pw, stride, out_h, out_w = pool_geometry(x, pool_param)
    N, C = x.shape[:2]
    if dout.shape != (N, C, out_h, out_w):
        raise ValueError("dout must have shape %s, got %s" % ((N, C, out_h, out_w), dout.shape))
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    hs, ws = i * stride, j * stride
                    k = np.argmax(x[n, c, hs:hs + ph, ws:ws + pw])
                    dx[n, c, hs + k // pw, ws + k % pw] += dout[n, c, i, j]
    return dx
