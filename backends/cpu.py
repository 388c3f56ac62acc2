"""CPU kernels: the compiled Cython extension ``_cpu_kernels`` when it was
built by ``pip install``, else the NumPy reference kernels (warned once).
The extension calls BLAS through ``scipy.linalg.cython_blas``; a missing
scipy at run time also selects the fallback.

Both expose the same functions (see ``numpy_kernels`` for the layouts):
im2col, col2im, conv_forward, conv_backward, maxpool_forward,
maxpool_backward.

The extension also has fused elementwise kernels (the update rules sgd,
sgd_momentum, rmsprop and adam, sum_of_squares, axpy) with no counterpart
here: ``fused_kernels(...)`` returns it when they apply, else None, and the
caller runs its NumPy formula. ``matmul(a, b)`` is ``a @ b``, through the
extension's thread team for large float products.
"""
import warnings

import numpy as np

from xdl.backends import numpy_kernels


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


def kernels():
    """Return the module implementing the CPU kernels (compiled if available)."""
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
    None otherwise (cupy arrays, other dtypes, strided arrays, or the
    extension not built), and the caller uses its NumPy formula.

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


def matmul(a, b):
    """
    a @ b for numpy arrays. Products of two 2-D float32/float64 arrays of one
    dtype with at least MATMUL_MIN_WORK multiply-adds run on the compiled
    kernels' thread team (``_cpu_kernels.matmul``): numpy's BLAS would start
    its own threads, which spin after the call and take a core from the
    kernels that follow. Everything else (and everything when the extension
    is missing) uses numpy's @.

    Inputs:
    - a: (M, K); b: (K, N)

    Returns:
    - (M, N) array
    """
    if (compiled is not None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and a.shape[1] == b.shape[0]
            and a.shape[0] * a.shape[1] * b.shape[1] >= compiled.MATMUL_MIN_WORK):
        return compiled.matmul(a, b)
    return a @ b
