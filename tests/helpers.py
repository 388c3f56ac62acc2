"""Helpers shared by the tests: tolerances by dtype, host copies, data."""
import numpy as np

import xdl
from xdl.gradient_check import rel_error

# One tolerance table keyed by dtype: float32 GEMM paths agree to ~1e-4
# relative, float64 to ~1e-7 (xdl/DESIGN.md, "Tests").
TOL = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-7, atol=1e-10),
}


def tol(dtype):
    return TOL[np.dtype(dtype)]


def host(a):
    """A numpy copy of a numpy/cupy array (or scalar)."""
    return xdl.asnumpy(a)


def assert_close(actual, expected, dtype=None, **override):
    actual, expected = host(actual), host(expected)
    dtype = dtype if dtype is not None else actual.dtype
    kw = dict(tol(dtype))
    kw.update(override)
    np.testing.assert_allclose(actual, expected, **kw)


def compiled_kernels():
    """The Cython CPU kernel module; a missing build is a test failure, not a skip."""
    import pytest
    from xdl.backends import cpu
    if cpu.compiled is None:
        pytest.fail("the compiled CPU kernels are not built (%s); "
                    "run `pip install -e . --no-deps`" % cpu._import_error)
    return cpu.compiled


def to(xp, a, dtype=None):
    """Move a host array to module xp (numpy or cupy) with dtype."""
    a = np.asarray(a, dtype=dtype)
    return xp.asarray(a)


__all__ = ["TOL", "tol", "host", "assert_close", "compiled_kernels", "to", "rel_error"]
