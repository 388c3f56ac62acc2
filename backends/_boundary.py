"""Checks at the kernel boundary, shared by every implementation of the
device interface (the compiled CPU kernels, the NumPy kernels, the CUDA
kernels).

A kernel trusts its shapes: a column buffer or an argmax of the wrong shape
would be read out of bounds (or silently misread) by compiled code. So each
public kernel checks the shapes it is given against the geometry first and
raises a ValueError that names the argument and both shapes. The layers in
xdl check their inputs too, with messages in the user's terms; these checks
guard the kernels themselves, whoever calls them.
"""
import math
import numbers

from xdl.backends import get_array_module


def is_real(v):
    """
    isinstance(v, numbers.Real) (bools included), without the abstract base
    class's machinery for Python's own int and float: the checks run on
    every layer call and update step.
    """
    return isinstance(v, (float, int)) or isinstance(v, numbers.Real)


def is_integral(v):
    """isinstance(v, numbers.Integral) (bools included), fast for Python's int."""
    return isinstance(v, int) or isinstance(v, numbers.Integral)


def _shape(a):
    return tuple(a.shape)


def _check_ndim(a, ndim, name, layout):
    if len(a.shape) != ndim:
        raise ValueError("%s must be a %d-D array %s, got shape %s"
                         % (name, ndim, layout, _shape(a)))


def output_size(size, window, stride, pad, out, dim):
    """
    Check that `out` windows of `window` pixels every `stride` pixels fit the
    input of `size` pixels padded by `pad` on each side:
    out == (size + 2*pad - window) // stride + 1, and out >= 1.
    """
    if window < 1 or stride < 1 or pad < 0:
        raise ValueError("%s: window %d, stride %d and pad %d must be >= 1, >= 1 and >= 0"
                         % (dim, window, stride, pad))
    span = size + 2 * pad - window
    expected = span // stride + 1 if span >= 0 else 0
    if expected < 1 or out != expected:
        raise ValueError("%s: output size %d does not fit input size %d with window %d, "
                         "stride %d, pad %d (it has %d output positions)"
                         % (dim, out, size, window, stride, pad, max(expected, 0)))


def check_windows(x_shape, KH, KW, stride, pad, OH, OW):
    """Check a (N, C, H, W) shape against the window geometry."""
    if len(x_shape) != 4:
        raise ValueError("x_shape must be (N, C, H, W), got %s" % (tuple(x_shape),))
    output_size(x_shape[2], KH, stride, pad, OH, "height")
    output_size(x_shape[3], KW, stride, pad, OW, "width")


def check_im2col(x, KH, KW, stride, pad, OH, OW):
    _check_ndim(x, 4, "x", "(N, C, H, W)")
    check_windows(x.shape, KH, KW, stride, pad, OH, OW)


def check_col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    check_windows(tuple(x_shape), KH, KW, stride, pad, OH, OW)
    N, C = x_shape[:2]
    expected = (C * KH * KW, N * OH * OW)
    if _shape(cols) != expected:
        raise ValueError("cols must have shape %s (C*KH*KW, N*OH*OW) for x_shape %s, got %s"
                         % (expected, tuple(x_shape), _shape(cols)))


def check_conv(x, w, stride, pad, OH, OW):
    """x (N, C, H, W) and w (F, C, KH, KW) against the output size."""
    _check_ndim(x, 4, "x", "(N, C, H, W)")
    _check_ndim(w, 4, "w", "(F, C, KH, KW)")
    if x.shape[1] != w.shape[1]:
        raise ValueError("x has %d channels but w expects %d: x %s, w %s"
                         % (x.shape[1], w.shape[1], _shape(x), _shape(w)))
    check_windows(x.shape, w.shape[2], w.shape[3], stride, pad, OH, OW)


def check_conv_forward(x, w, b, stride, pad, OH, OW):
    check_conv(x, w, stride, pad, OH, OW)
    if _shape(b) != (w.shape[0],):
        raise ValueError("b must have shape %s (one bias per filter of w %s), got %s"
                         % ((w.shape[0],), _shape(w), _shape(b)))


def check_conv_backward(dout, x, w, stride, pad, OH, OW):
    check_conv(x, w, stride, pad, OH, OW)
    expected = (x.shape[0], w.shape[0], OH, OW)
    if _shape(dout) != expected:
        raise ValueError("dout must have shape %s (N, F, OH, OW), got %s"
                         % (expected, _shape(dout)))


def check_pool_forward(x, ph, pw, stride, OH, OW):
    _check_ndim(x, 4, "x", "(N, C, H, W)")
    check_windows(x.shape, ph, pw, stride, 0, OH, OW)


def check_pool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW):
    check_windows(tuple(x_shape), ph, pw, stride, 0, OH, OW)
    expected = tuple(x_shape[:2]) + (OH, OW)
    if _shape(dout) != expected or _shape(argmax) != expected:
        raise ValueError("dout and argmax must have shape %s (N, C, OH, OW) for x_shape %s, "
                         "got %s and %s"
                         % (expected, tuple(x_shape), _shape(dout), _shape(argmax)))


def check_conv_relu_pool_forward(x, w, b, stride, pad, OH, OW, ph, pw, pool_stride, POH, POW):
    """The convolution's arguments, then the pooling of its (N, F, OH, OW) output."""
    check_conv_forward(x, w, b, stride, pad, OH, OW)
    check_windows((x.shape[0], w.shape[0], OH, OW), ph, pw, pool_stride, 0, POH, POW)


def check_conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW,
                                  ph, pw, pool_stride, POH, POW):
    check_conv(x, w, stride, pad, OH, OW)
    check_pool_backward(dout, argmax, (x.shape[0], w.shape[0], OH, OW), ph, pw, pool_stride,
                        POH, POW)


def check_same_shape(*named):
    """(name, array) pairs of an elementwise kernel must share the first one's shape."""
    first, ref = named[0]
    for name, a in named[1:]:
        if _shape(a) != _shape(ref):
            raise ValueError("%s has shape %s but %s has shape %s"
                             % (name, _shape(a), first, _shape(ref)))


def check_matmul(a, b, c=None, beta=0.0):
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise ValueError("matmul needs a (M, K) and b (K, N), got %s and %s"
                         % (_shape(a), _shape(b)))
    if c is not None and _shape(c) != (a.shape[0], b.shape[1]):
        raise ValueError("matmul's c must have the shape (M, N) = %s of a @ b (a %s, b %s), "
                         "got %s" % ((a.shape[0], b.shape[1]), _shape(a), _shape(b), _shape(c)))
    if not is_real(beta) or not math.isfinite(beta):
        raise ValueError("matmul's beta must be a finite number, got %r" % (beta,))


def check_affine_backward(x, w, dout, reg):
    _check_ndim(x, 2, "x", "(N, D), the layer's input flattened")
    _check_ndim(w, 2, "w", "(D, M)")
    if w.shape[0] != x.shape[1]:
        raise ValueError("w must have shape (D, M) with D = %d, the width of x %s; got %s"
                         % (x.shape[1], _shape(x), _shape(w)))
    if _shape(dout) != (x.shape[0], w.shape[1]):
        raise ValueError("dout must have shape (N, M) = %s for x %s and w %s, got %s"
                         % ((x.shape[0], w.shape[1]), _shape(x), _shape(w), _shape(dout)))
    if not is_real(reg) or not math.isfinite(reg) or reg < 0:
        raise ValueError("reg must be a finite number >= 0, got %r" % (reg,))


def check_scores(x, y):
    _check_ndim(x, 2, "x", "of class scores (N, C)")
    if _shape(y) != (x.shape[0],):
        raise ValueError("y must have shape (%d,) to match the scores x %s, got %s"
                         % (x.shape[0], _shape(x), _shape(y)))


def check_floating(name, a):
    """Update rules and reductions compute in floating point: refuse integer arrays."""
    kind = getattr(getattr(a, "dtype", None), "kind", None)
    if kind != "f":
        raise TypeError("%s must be a floating-point array (float32 or float64 for the fused "
                        "kernels, other float types by the NumPy formula), got %s"
                        % (name, getattr(a, "dtype", type(a).__name__)))


# Type characters of float32 and float64 (dtype.char is cheap; dtype.name is
# computed in Python on every access).
FLOAT_CHARS = ("f", "d")


def float_dtype(named, where, array_type=None, type_name=None):
    """
    Check (name, array) pairs: arrays (of array_type, when given) with one
    float32/float64 dtype. Returns that dtype.

    Raises TypeError naming the argument: not an array of the device, another
    dtype, or mixed dtypes.
    """
    dtype = first = None
    for name, a in named:
        if array_type is not None and not isinstance(a, array_type):
            raise TypeError("%s must be a %s array for the %s, got %s"
                            % (name, type_name, where, type(a).__name__))
        if a.dtype.char not in FLOAT_CHARS:
            raise TypeError("%s must be float32 or float64 for the %s, got %s"
                            % (name, where, a.dtype))
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError("%s has dtype %s but %s has dtype %s; the %s need one dtype"
                            % (name, a.dtype, first, dtype, where))
    return dtype


def check_out(out, w, *others):
    """
    Check the ``out`` argument of an update rule: None (next_w is a new
    array), w itself (the update in place), or an array of w's type, shape
    and dtype that shares no memory with w or with the (name, array) pairs
    in others (a partial overlap would be read after it was written).
    Strided arrays are taken (the NumPy formula fills them); the fused
    kernels need C-contiguous ones and check that themselves.

    Raises TypeError (another array type or dtype) or ValueError (shape,
    read-only, overlap), naming out.
    """
    if out is None:
        return
    if not hasattr(out, "flags"):
        raise TypeError("out must be an array like w (or None), got %s" % type(out).__name__)
    if not getattr(out.flags, "writeable", True):  # cupy arrays are always writeable
        raise ValueError("out is read-only: next_w is written into it")
    if out is w:
        return
    if type(out) is not type(w):
        raise TypeError("out must be a %s like w, got %s"
                        % (type(w).__name__, type(out).__name__))
    if out.dtype != w.dtype:
        raise TypeError("out has dtype %s but w has dtype %s" % (out.dtype, w.dtype))
    if _shape(out) != _shape(w):
        raise ValueError("out has shape %s but w has shape %s" % (_shape(out), _shape(w)))
    may_share = get_array_module(out, w).may_share_memory
    for name, a in (("w", w),) + others:
        if may_share(out, a):
            raise ValueError("out shares memory with %s: out must be w itself or an array "
                             "of its own" % name)

