"""Input checks shared by layers, models and the Solver.

Each check raises a ValueError/TypeError that names the argument and the
shapes or values involved, instead of letting a broadcasting error surface
deep inside numpy.
"""
import contextlib
import contextvars
import math

import numpy as np

from xdl.backends import _cupy_if_loaded, get_array_module, is_cupy_array
from xdl.backends._boundary import is_integral, is_real

# Set by labels_checked(): the caller validated every label once, on the host.
_labels_prechecked = contextvars.ContextVar("xdl_labels_prechecked", default=False)


@contextlib.contextmanager
def labels_checked():
    """
    Within this block check_labels still checks dtype and shape but not the
    label values: for callers that checked all their labels once, on the
    host, before a loop (the Solver, LinearClassifier.train), so that a
    training step on the GPU makes no device-to-host copy for the check.
    """
    token = _labels_prechecked.set(True)
    try:
        yield
    finally:
        _labels_prechecked.reset(token)


def check_same_device(**arrays):
    """
    Arrays given by name must all live on one device: numpy and cupy arrays
    never mix (nothing is copied across devices silently). Scalars and None
    are ignored.

    Raises TypeError naming a numpy and a cupy argument and their shapes.
    """
    if _cupy_if_loaded() is None:
        return  # no cupy array can exist before cupy is imported
    on_cpu = on_gpu = None
    for name, a in arrays.items():
        if is_cupy_array(a):
            on_gpu = on_gpu or name
        elif isinstance(a, np.ndarray):
            on_cpu = on_cpu or name
        if on_cpu and on_gpu:
            raise TypeError(
                "mixed numpy and cupy arrays: %s is a numpy array of shape %s and %s a cupy "
                "array of shape %s; move one side explicitly with xdl.asarray (to the "
                "configured backend) or xdl.asnumpy (to the host)"
                % (on_cpu, tuple(arrays[on_cpu].shape), on_gpu, tuple(arrays[on_gpu].shape)))


def check_ndim(a, ndim, name, what=None):
    if not hasattr(a, "ndim") or a.ndim != ndim:
        got = "shape %s" % (a.shape,) if hasattr(a, "shape") else type(a).__name__
        raise ValueError("%s must be a %d-D array%s, got %s"
                         % (name, ndim, " " + what if what else "", got))


def check_float_array(a, name):
    """Layers compute in floating point; integers would silently truncate."""
    if not hasattr(a, "dtype"):
        raise TypeError("%s must be an array, got %s" % (name, type(a).__name__))
    if a.dtype.kind != "f":
        raise TypeError("%s must be a floating-point array (float32 or float64), "
                        "got dtype %s" % (name, a.dtype))


def check_labels(y, num_samples, num_classes, name="y"):
    """
    Labels must be a 1-D integer array of length num_samples with every value
    in [0, num_classes). The values of cupy labels are checked on the GPU and
    their min and max copied back together (one synchronization), except
    inside ``labels_checked()``, where the caller has checked them already.
    """
    if not hasattr(y, "dtype"):
        raise TypeError("%s must be an integer array, got %s" % (name, type(y).__name__))
    if y.dtype.kind not in "iu":
        raise TypeError("%s must hold integer class labels, got dtype %s"
                        % (name, y.dtype))
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ValueError("%s must have shape (%d,) to match the %d samples, got %s"
                         % (name, num_samples, num_samples, y.shape))
    if num_samples == 0 or _labels_prechecked.get():
        return
    if isinstance(y, np.ndarray):
        lo, hi = int(y.min()), int(y.max())
    else:  # a cupy array: both extremes in one copy
        xp = get_array_module(y)
        lo, hi = (int(v) for v in xp.stack([y.min(), y.max()]).get())
    if lo < 0 or hi >= num_classes:
        raise ValueError("%s holds labels outside [0, %d): min %d, max %d"
                         % (name, num_classes, lo, hi))


def check_reg(reg, name="reg"):
    if not is_real(reg) or not math.isfinite(reg) or reg < 0:
        raise ValueError("%s must be a finite number >= 0, got %r" % (name, reg))
    return float(reg)


def check_positive_int(v, name):
    if not is_integral(v) or isinstance(v, bool) or v <= 0:
        raise ValueError("%s must be a positive integer, got %r" % (name, v))
    return int(v)


def check_nonneg_int(v, name):
    if not is_integral(v) or isinstance(v, bool) or v < 0:
        raise ValueError("%s must be an integer >= 0, got %r" % (name, v))
    return int(v)


def check_param_shape(a, shape, name, what):
    if not hasattr(a, "shape"):
        raise TypeError("%s must be an array of shape %s, got %s"
                        % (name, shape, type(a).__name__))
    if tuple(a.shape) != tuple(shape):
        raise ValueError("%s must have shape %s (%s), got %s"
                         % (name, tuple(shape), what, tuple(a.shape)))


def check_mode(param, name):
    mode = param.get("mode", "train")
    if mode not in ("train", "test"):
        raise ValueError("%s['mode'] must be 'train' or 'test', got %r" % (name, mode))
    return mode


def conv_output_size(size, kernel, stride, pad, dim):
    """
    Output length of a convolution/pooling window along one dimension:
    (size + 2*pad - kernel) // stride + 1. Raises ValueError naming the
    dimension when the windows do not tile the padded input exactly.
    """
    span = size + 2 * pad - kernel
    if span < 0:
        raise ValueError("%s: window %d is larger than the padded input %d (size %d, pad %d)"
                         % (dim, kernel, size + 2 * pad, size, pad))
    if span % stride != 0:
        raise ValueError("%s: windows do not tile the input: (size %d + 2*pad %d - window %d) "
                         "= %d is not a multiple of stride %d"
                         % (dim, size, pad, kernel, span, stride))
    return span // stride + 1


def conv_geometry(x, w, conv_param):
    """Validate a convolution's inputs; return (stride, pad, out_h, out_w)."""
    check_ndim(x, 4, "x", "(N, C, H, W)")
    check_ndim(w, 4, "w", "(F, C, HH, WW)")
    if x.shape[1] != w.shape[1]:
        raise ValueError("x has %d channels but w expects %d: x %s, w %s"
                         % (x.shape[1], w.shape[1], x.shape, w.shape))
    if not isinstance(conv_param, dict):
        raise TypeError("conv_param must be a dict with 'stride' and 'pad'")
    stride = check_positive_int(conv_param.get("stride", 1), "conv_param['stride']")
    pad = check_nonneg_int(conv_param.get("pad", 0), "conv_param['pad']")
    out_h = conv_output_size(x.shape[2], w.shape[2], stride, pad, "height")
    out_w = conv_output_size(x.shape[3], w.shape[3], stride, pad, "width")
    return stride, pad, out_h, out_w


def pool_geometry(x, pool_param):
    """Validate a max-pool's inputs; return (ph, pw, stride, out_h, out_w)."""
    check_ndim(x, 4, "x", "(N, C, H, W)")
    return pool_geometry_of_shape(x.shape, pool_param)


def pool_geometry_of_shape(shape, pool_param):
    """pool_geometry of an input of this (N, C, H, W) shape, which need not exist."""
    if not isinstance(pool_param, dict):
        raise TypeError("pool_param must be a dict with 'pool_height', 'pool_width', 'stride'")
    ph = check_positive_int(pool_param.get("pool_height", 2), "pool_param['pool_height']")
    pw = check_positive_int(pool_param.get("pool_width", 2), "pool_param['pool_width']")
    stride = check_positive_int(pool_param.get("stride", 2), "pool_param['stride']")
    out_h = conv_output_size(shape[2], ph, stride, 0, "height")
    out_w = conv_output_size(shape[3], pw, stride, 0, "width")
    return ph, pw, stride, out_h, out_w
