"""Fast convolution and max-pooling layers: same API and caches as the naive
layers in ``xdl.layers``.

The work is done by the kernels of the arrays' device (``xdl.backends``):
the Cython im2col/col2im/pooling kernels on the CPU, CUDA RawKernels on the
GPU. The convolution cache is ``(x, w, b, conv_param)``, exactly the naive
layer's; im2col is recomputed in the backward pass instead of keeping a huge
column buffer alive between the passes. The pooling cache is
``(x, pool_param, argmax)``; the backward pass also accepts the naive
layer's ``(x, pool_param)`` and then recomputes the argmax.
"""
from xdl.backends import kernels_for
from xdl._checks import (
    check_float_array,
    check_param_shape,
    check_same_device,
    conv_geometry,
    pool_geometry,
)


def _same_dtype(name, *arrays):
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError("%s needs arrays of one dtype, got %s"
                        % (name, ", ".join(sorted(str(d) for d in dtypes))))


def conv_forward_fast(x, w, b, conv_param):
    """
    Fast convolution forward pass (im2col + one GEMM per chunk of images).

    Inputs / returns: as conv_forward_naive. x, w and b must share one
    floating dtype (float32 or float64); the output keeps it.
    """
    check_same_device(x=x, w=w, b=b)
    check_float_array(x, "x")
    _same_dtype("conv_forward_fast", x, w, b)
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    check_param_shape(b, (w.shape[0],), "b", "one bias per filter of w %s" % (w.shape,))
    out = kernels_for(x).conv_forward(x, w, b, stride, pad, out_h, out_w)
    return out, (x, w, b, conv_param)


def conv_backward_fast(dout, cache, compute_dx=True):
    """
    Fast convolution backward pass.

    Inputs:
    - dout: Upstream derivatives, of shape (N, F, H', W')
    - cache: (x, w, b, conv_param) from conv_forward_fast or conv_forward_naive
    - compute_dx: False skips the gradient with respect to x (returned as
      None): a network's first layer does not need it.

    Returns a tuple of (dx, dw, db).
    """
    x, w, b, conv_param = cache
    check_same_device(dout=dout, x=x, w=w)
    stride, pad, out_h, out_w = conv_geometry(x, w, conv_param)
    expected = (x.shape[0], w.shape[0], out_h, out_w)
    if dout.shape != expected:
        raise ValueError("dout must have shape %s, got %s" % (expected, dout.shape))
    _same_dtype("conv_backward_fast", dout, x, w)
    return kernels_for(x).conv_backward(dout, x, w, stride, pad, out_h, out_w,
                                        compute_dx=compute_dx)


def max_pool_forward_fast(x, pool_param):
    """
    Fast max-pooling forward pass (any window and stride that tile x). The
    compiled CPU kernel special-cases 2x2 windows with stride 2; the NumPy
    fallback reshapes non-overlapping windows instead of striding.

    Inputs / returns: as max_pool_forward_naive; the cache is
    (x, pool_param, argmax).
    """
    check_float_array(x, "x")
    ph, pw, stride, out_h, out_w = pool_geometry(x, pool_param)
    out, argmax = kernels_for(x).maxpool_forward(x, ph, pw, stride, out_h, out_w)
    return out, (x, pool_param, argmax)


def max_pool_backward_fast(dout, cache):
    """
    Fast max-pooling backward pass: each window's gradient goes to its first
    maximum in row-major order, as in max_pool_backward_naive.

    Inputs:
    - dout: Upstream derivatives, of shape (N, C, H', W')
    - cache: (x, pool_param, argmax) from max_pool_forward_fast, or
      (x, pool_param) from max_pool_forward_naive

    Returns:
    - dx: Gradient with respect to x
    """
    if len(cache) == 2:
        x, pool_param = cache
        argmax = None
    else:
        x, pool_param, argmax = cache
    check_same_device(dout=dout, x=x)
    ph, pw, stride, out_h, out_w = pool_geometry(x, pool_param)
    expected = (x.shape[0], x.shape[1], out_h, out_w)
    if dout.shape != expected:
        raise ValueError("dout must have shape %s, got %s" % (expected, dout.shape))
    kernels = kernels_for(x)
    if argmax is None:
        _, argmax = kernels.maxpool_forward(x, ph, pw, stride, out_h, out_w)
    if dout.dtype != x.dtype:
        dout = dout.astype(x.dtype)
    return kernels.maxpool_backward(dout, argmax, x.shape, ph, pw, stride, out_h, out_w)
