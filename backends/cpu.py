"""The device interface (``xdl.backends.OPERATIONS``) for numpy arrays.

Each operation picks, per call, the compiled Cython kernels
(``_cpu_kernels``, built by ``pip install``) where they apply and the NumPy
formulas (``numpy_kernels``) otherwise; both give the same results to
rounding (xdl/DESIGN.md, "One device interface"):

- im2col, col2im, convolution, max pooling and the fused convolution +
  ReLU + max pooling: compiled whenever the extension is built (it copies
  strided inputs); without it, the NumPy kernels, announced by one
  ``SlowFallbackWarning``.
- update rules, sum_of_squares, axpy: compiled for C-contiguous
  float32/float64 numpy arrays of one dtype (``fused_kernels``; an update
  rule's ``out`` too), the formulas otherwise (other float types, strided
  arrays, subclasses).
- matmul: the compiled, tiled product for large float products (see
  ``matmul``), numpy's ``@`` otherwise.
- affine_backward: the compiled sweep over the rows of w for large
  layers (see ``affine_backward``; in float32 on CPUs with AVX2 and FMA on
  the extension's own kernels, else OpenBLAS), two ``matmul`` calls
  otherwise.
- softmax_loss: the NumPy formula.

The compiled kernels' large outputs come from reused memory (no page
faults each step); ``free_pooled_memory()`` frees what is kept.

The extension calls BLAS through ``scipy.linalg.cython_blas``; a missing
scipy at run time also selects the fallback.
"""
import warnings

import numpy as np

from xdl.backends import _boundary, numpy_kernels


class SlowFallbackWarning(UserWarning):
    """The compiled CPU kernels are missing; the NumPy fallback is used."""


try:
    from xdl.backends import _cpu_kernels as compiled
except ImportError as exc:  # not built (no compiler at install time)
    compiled = None
    _import_error = exc
else:
    _import_error = None

_warned = False


def free_pooled_memory():
    """
    Free the memory the compiled kernels keep for reuse: large outputs
    (1 MiB and more) that are no longer used, at most 256 MiB of them
    (``_cpu_memory.pxi``). Arrays in use keep theirs. Returns the bytes freed.
    """
    if compiled is None:
        return 0
    idle = compiled.pooled_idle_bytes()
    compiled.free_pooled()
    return idle


def kernels():
    """
    The module that runs the convolution and pooling kernels: the compiled
    extension when it is built, else numpy_kernels (warned once).
    """
    global _warned
    if compiled is not None:
        return compiled
    if not _warned:
        _warned = True
        warnings.warn(
            "xdl's compiled CPU kernels (xdl.backends._cpu_kernels) are not available "
            "(%s); using the slower NumPy fallback. Reinstall with a C compiler, "
            "Cython and scipy available: pip install --force-reinstall --no-deps xdl"
            % _import_error,
            SlowFallbackWarning, stacklevel=3)
    return numpy_kernels


def fused_kernels(*arrays):
    """
    The compiled module, for its fused elementwise kernels, when every array
    is a C-contiguous numpy float32/float64 array of the first one's dtype;
    None otherwise (other dtypes, strided arrays, subclasses, or the
    extension not built).

    Inputs:
    - arrays: the arrays the kernel would read or update in place

    Returns the module or None.
    """
    if compiled is None or not arrays:
        return None
    dtype = getattr(arrays[0], "dtype", None)
    if dtype not in (np.float32, np.float64):
        return None
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
            return None
    return compiled


def _elementwise(*arrays):
    """The fused kernels when they take these arrays, else the NumPy formulas."""
    return fused_kernels(*arrays) or numpy_kernels


# ------------------------------------------------- convolution and pooling

def im2col(x, KH, KW, stride, pad, OH, OW):
    """numpy_kernels.im2col, compiled when the extension is built."""
    return kernels().im2col(x, KH, KW, stride, pad, OH, OW)


def col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    """numpy_kernels.col2im, compiled when the extension is built."""
    return kernels().col2im(cols, x_shape, KH, KW, stride, pad, OH, OW)


def conv_forward(x, w, b, stride, pad, OH, OW):
    """numpy_kernels.conv_forward, compiled when the extension is built."""
    return kernels().conv_forward(x, w, b, stride, pad, OH, OW)


def conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=True):
    """numpy_kernels.conv_backward, compiled when the extension is built."""
    return kernels().conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=compute_dx)


def maxpool_forward(x, ph, pw, stride, OH, OW):
    """numpy_kernels.maxpool_forward, compiled when the extension is built."""
    return kernels().maxpool_forward(x, ph, pw, stride, OH, OW)


def maxpool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW):
    """numpy_kernels.maxpool_backward, compiled when the extension is built."""
    return kernels().maxpool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW)


def conv_relu_pool_forward(x, w, b, stride, pad, OH, OW, ph, pw, pool_stride, POH, POW):
    """numpy_kernels.conv_relu_pool_forward, fused per image when the extension is built."""
    return kernels().conv_relu_pool_forward(x, w, b, stride, pad, OH, OW,
                                            ph, pw, pool_stride, POH, POW)


def conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW, ph, pw, pool_stride,
                            POH, POW, compute_dx=True):
    """numpy_kernels.conv_relu_pool_backward, fused per image when the extension is built."""
    return kernels().conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW,
                                             ph, pw, pool_stride, POH, POW,
                                             compute_dx=compute_dx)


# ------------------------------------------------------ affine and loss

def matmul(a, b, c=None, beta=0.0):
    """
    a @ b (+ beta * c) for numpy arrays. Products of two 2-D float32/float64
    arrays of one dtype (c too) with at least MATMUL_MIN_WORK multiply-adds
    run on the compiled kernels' thread team (``_cpu_kernels.matmul``, which
    adds beta * c tile by tile inside the product): numpy's BLAS would start
    its own threads, which spin after the call and take a core from the
    kernels that follow. Everything else (and everything when the extension
    is missing) uses numpy_kernels.matmul.

    Inputs:
    - a: (M, K); b: (K, N)
    - c: optional (M, N) array, not modified; beta: its factor

    Returns:
    - (M, N) array
    """
    if (compiled is not None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and a.shape[1] == b.shape[0]
            and (c is None or (type(c) is np.ndarray and c.dtype == a.dtype))
            and a.shape[0] * a.shape[1] * b.shape[1] >= compiled.MATMUL_MIN_WORK):
        return compiled.matmul(a, b, c, beta)
    return numpy_kernels.matmul(a, b, c, beta)


def affine_backward(x, w, dout, reg=0.0, compute_dx=True, w_sumsq=False):
    """
    numpy_kernels.affine_backward for numpy arrays. Large float32/float64
    layers run ``_cpu_kernels.affine_backward``: dx and dw (and w_sumsq's
    sum of squares) block by block over the rows of w, which is then read
    from memory once (the CNN's 8192 x 500 w is 16 MB); the rest take two
    products (``matmul``) and ``sum_of_squares``.
    """
    if (compiled is not None and type(x) is np.ndarray and type(w) is np.ndarray
            and type(dout) is np.ndarray and x.ndim == 2 and w.ndim == 2 and dout.ndim == 2
            and x.dtype == w.dtype == dout.dtype and x.dtype in (np.float32, np.float64)
            and x.shape[1] == w.shape[0] and dout.shape == (x.shape[0], w.shape[1])
            and x.shape[0] * x.shape[1] * w.shape[1] >= compiled.MATMUL_MIN_WORK
            and compiled._affine_rows(x.shape[0], x.shape[1], w.shape[1]) > 0):
        return compiled.affine_backward(x, w, dout, reg, compute_dx, w_sumsq)
    _boundary.check_affine_backward(x, w, dout, reg)
    return numpy_kernels.affine_backward_by_products(matmul, sum_of_squares, x, w, dout, reg,
                                                     compute_dx, w_sumsq)


def softmax_loss(x, y):
    """numpy_kernels.softmax_loss."""
    return numpy_kernels.softmax_loss(x, y)


# ------------------------------------------------------------ update rules

def _rule_kernels(out, *arrays):
    """
    The fused kernels when they take the arrays and out (when given), else
    the NumPy formulas. Either checks out (_boundary.check_out).
    """
    return _elementwise(*arrays) if out is None else _elementwise(*arrays, out)


def sgd(w, dw, lr, out=None):
    """numpy_kernels.sgd, fused when fused_kernels takes the arrays."""
    return _rule_kernels(out, w, dw).sgd(w, dw, lr, out)


def sgd_momentum(w, dw, v, lr, mu, out=None):
    """numpy_kernels.sgd_momentum, fused when fused_kernels takes the arrays."""
    return _rule_kernels(out, w, dw, v).sgd_momentum(w, dw, v, lr, mu, out)


def rmsprop(w, dw, cache, lr, decay, eps, out=None):
    """numpy_kernels.rmsprop, fused when fused_kernels takes the arrays."""
    return _rule_kernels(out, w, dw, cache).rmsprop(w, dw, cache, lr, decay, eps, out)


def adam(w, dw, m, v, beta1, beta2, step, eps_hat, out=None):
    """numpy_kernels.adam, fused when fused_kernels takes the arrays."""
    return _rule_kernels(out, w, dw, m, v).adam(w, dw, m, v, beta1, beta2, step, eps_hat, out)


def adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out=None):
    """numpy_kernels.adamw, fused when fused_kernels takes the arrays."""
    return _rule_kernels(out, w, dw, m, v).adamw(w, dw, m, v, beta1, beta2, step, eps_hat,
                                                 shrink, out)


def adamw_alongside(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out):
    """
    numpy_kernels.adamw_alongside; with the compiled kernels (where
    fused_kernels takes the arrays) the step runs beside the block's first
    kernel call on the team, else when the block ends.
    """
    return _rule_kernels(out, w, dw, m, v).adamw_alongside(w, dw, m, v, beta1, beta2, step,
                                                           eps_hat, shrink, out)


# ---------------------------------------------------- L2 regularization

def sum_of_squares(x):
    """numpy_kernels.sum_of_squares, fused when fused_kernels takes the arrays."""
    return _elementwise(x).sum_of_squares(x)


def axpy(alpha, x, y):
    """numpy_kernels.axpy, fused when fused_kernels takes the arrays."""
    return _elementwise(y, x).axpy(alpha, x, y)


def relu_backward(dout, x):
    """numpy_kernels.relu_backward, one compiled pass when fused_kernels takes the arrays."""
    return _elementwise(dout, x).relu_backward(dout, x)
