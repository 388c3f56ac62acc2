"""CPU kernels: the compiled Cython extension ``_cpu_kernels`` when it was
built by ``pip install``, else the NumPy reference kernels (warned once).
The extension calls BLAS through ``scipy.linalg.cython_blas``; a missing
scipy at run time also selects the fallback.

Both expose the same functions (see ``numpy_kernels`` for the layouts):
im2col, col2im, conv_forward, conv_backward, maxpool_forward,
maxpool_backward.
"""
import warnings

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
