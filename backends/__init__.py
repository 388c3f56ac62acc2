"""Backend selection, and the one door to the device-specific code.

Everything that differs per device lives in this package (installed as
``xdl.backends``; xdl/DESIGN.md, "One device interface", explains it):

- this module: the configured backend (``numpy`` or ``cuda``), array-module
  lookup, host/device moves, and ``kernels_for(*arrays)``, the only way xdl
  reaches a device's kernels;
- ``cpu`` and ``cuda``: the same operations (``OPERATIONS``) for numpy and
  for cupy arrays. ``cpu`` runs the compiled Cython kernels
  (``_cpu_kernels``, on the thread team of ``_cpu_team``) where they apply
  and the NumPy formulas otherwise; ``cuda`` runs the kernels of
  ``kernels.cu``;
- ``numpy_kernels``: the same operations as array formulas, the reference
  the others are tested against (``_boundary`` holds the shape and dtype
  checks every implementation makes at its boundary).

Rules:

- Inside an operation the arrays decide: ``get_array_module(x, w)`` returns
  numpy for numpy arrays and cupy for cupy arrays; a mix raises ``TypeError``.
- The configured backend (env ``XDL_BACKEND``, read once on first use;
  ``set_backend``; ``use_backend``) decides only where new arrays are made:
  model parameters, update-rule state, the Solver's minibatches.
- ``import xdl`` never imports cupy. It is imported when the cuda backend is
  asked for, or by ``gpu_available()``.
"""
import contextlib
import os
import sys

import numpy as np

BACKENDS = ("numpy", "cuda")
ENV_VAR = "XDL_BACKEND"

_configured = None  # name of the configured backend, None until first use

_INSTALL_HINT = (
    "Install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` "
    "(CUDA 12) or `pip install cupy-cuda13x` (CUDA 13), or "
    "`pip install 'xdl[cuda]'`; or use the CPU with XDL_BACKEND=numpy."
)


class BackendError(RuntimeError):
    """The requested backend cannot run on this machine."""


def _check_name(name, source):
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(
            "unknown backend %r (from %s); valid names are %s"
            % (name, source, ", ".join(repr(b) for b in BACKENDS))
        )
    return name.strip().lower()


def _import_cupy():
    """Import cupy and make sure a GPU is usable; raise BackendError if not."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            "the cuda backend needs CuPy, which is not installed (%s). %s"
            % (exc, _INSTALL_HINT)
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver, ...
        raise BackendError(
            "the cuda backend found CuPy but no usable CUDA GPU (%s: %s). "
            "Check the NVIDIA driver with `nvidia-smi`, or use the CPU with "
            "XDL_BACKEND=numpy." % (type(exc).__name__, exc)
        ) from None
    if count < 1:
        raise BackendError(
            "the cuda backend found CuPy but no CUDA GPU (device count 0). "
            "Use the CPU with XDL_BACKEND=numpy."
        )
    return cupy


def gpu_available():
    """Return True when CuPy is installed and sees at least one CUDA GPU."""
    try:
        _import_cupy()
    except BackendError:
        return False
    return True


def device_free_bytes():
    """Free memory of the current CUDA device, in bytes (CuPy's pool counts as free)."""
    cupy = _import_cupy()
    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return int(free + pool.free_bytes())


def set_backend(name):
    """
    Choose where new arrays are made.

    Inputs:
    - name: 'numpy' (CPU) or 'cuda' (NVIDIA GPU through CuPy)

    Raises ValueError for an unknown name and BackendError when 'cuda' is
    asked for on a machine without CuPy or without a GPU.
    """
    global _configured
    name = _check_name(name, "set_backend")
    if name == "cuda":
        _import_cupy()
    _configured = name


def get_backend():
    """Return the configured backend name, reading XDL_BACKEND on first use."""
    global _configured
    if _configured is None:
        name = _check_name(os.environ.get(ENV_VAR, "numpy") or "numpy",
                           "environment variable %s" % ENV_VAR)
        if name == "cuda":
            _import_cupy()
        _configured = name
    return _configured


@contextlib.contextmanager
def use_backend(name):
    """Context manager: ``with use_backend('cuda'): model = ...``."""
    global _configured
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _configured = previous


def backend_module():
    """Return the array module (numpy or cupy) of the configured backend."""
    if get_backend() == "cuda":
        return _import_cupy()
    return np


def _cupy_if_loaded():
    # cupy arrays can only exist if cupy was imported; never import it here.
    return sys.modules.get("cupy")


def is_cupy_array(a):
    cupy = _cupy_if_loaded()
    return cupy is not None and isinstance(a, cupy.ndarray)


def get_array_module(*arrays):
    """
    Return numpy or cupy, decided by the arrays given.

    Inputs:
    - arrays: any mix of arrays, scalars and None (only arrays count)

    Returns numpy when no cupy array is given, cupy when only cupy arrays are
    given, and raises TypeError when numpy and cupy arrays are mixed.
    """
    cupy = _cupy_if_loaded()
    if cupy is None:
        return np
    on_gpu = on_cpu = None
    for i, a in enumerate(arrays):
        if isinstance(a, cupy.ndarray):
            on_gpu = i if on_gpu is None else on_gpu
        elif isinstance(a, np.ndarray):
            on_cpu = i if on_cpu is None else on_cpu
    if on_gpu is not None and on_cpu is not None:
        raise TypeError(
            "mixed numpy and cupy arrays: argument %d is a numpy.ndarray %s and "
            "argument %d is a cupy.ndarray %s; move one side explicitly with "
            "xdl.asarray (to the configured backend) or xdl.asnumpy (to the host)"
            % (on_cpu, arrays[on_cpu].shape, on_gpu, arrays[on_gpu].shape)
        )
    return cupy if on_gpu is not None else np


def asarray(a, dtype=None):
    """Return ``a`` as an array of the configured backend (copying only if needed)."""
    xp = backend_module()
    if xp is np and is_cupy_array(a):
        a = a.get()
    return xp.asarray(a, dtype=dtype)


def asnumpy(a):
    """Return ``a`` as a numpy array on the host (cupy arrays are copied back)."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def host_floats(values):
    """
    Python floats of a list of scalars: numbers, host arrays, or 0-d cupy
    arrays, which come back in one copy (one synchronization) for the list.
    """
    if any(is_cupy_array(v) for v in values):
        xp = _cupy_if_loaded()
        return xp.stack([xp.asarray(v) for v in values]).get().tolist()
    return [float(v) for v in values]


def asarray_like(a, like, dtype=None):
    """
    Move ``a`` to the array module of ``like`` (host <-> device if needed).

    This is the one place where data crosses devices implicitly: the
    documented input boundary of models (``loss(X, y)``) and the Solver.
    """
    xp = get_array_module(like)
    if xp is np:
        return asnumpy(a) if dtype is None else asnumpy(a).astype(dtype, copy=False)
    return xp.asarray(a, dtype=dtype)


# The device interface: every name here is a function of cpu, of cuda and of
# numpy_kernels, with the same arguments (tests/test_kernel_contract.py
# checks both). See numpy_kernels for what each one computes.
OPERATIONS = (
    "im2col", "col2im", "conv_forward", "conv_backward",
    "maxpool_forward", "maxpool_backward",
    "conv_relu_pool_forward", "conv_relu_pool_backward",
    "matmul", "affine_backward", "softmax_loss",
    "sgd", "sgd_momentum", "rmsprop", "adam", "adamw", "adamw_alongside",
    "sum_of_squares", "axpy", "relu_backward",
)


def kernels_for(*arrays):
    """
    Return the device module for ``arrays``: ``xdl.backends.cpu`` for numpy
    arrays, ``xdl.backends.cuda`` for cupy arrays. Both implement every
    name of ``OPERATIONS``; a mix of numpy and cupy arrays raises TypeError.
    """
    xp = get_array_module(*arrays)
    if xp is np:
        cpu = sys.modules.get("xdl.backends.cpu")  # imported once (every kernel call asks)
        if cpu is None:
            from xdl.backends import cpu  # here: importing xdl loads no extension
        return cpu
    from xdl.backends import cuda
    return cuda


def set_num_threads(n):
    """
    Set how many threads the compiled CPU kernels use (default: the CPUs this
    process may use). A process that shares the cores with others, such as
    one of several sweep workers, sets its share. Without the compiled
    kernels the value is only recorded (NumPy's BLAS reads
    OPENBLAS_NUM_THREADS instead).

    Inputs:
    - n: integer >= 1
    """
    global _fallback_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError("set_num_threads needs an integer n >= 1, got %r" % (n,))
    from xdl.backends import cpu
    if cpu.compiled is not None:
        cpu.compiled.set_num_threads(int(n))
    _fallback_threads = int(n)


def get_num_threads():
    """Return how many threads the compiled CPU kernels use."""
    from xdl.backends import cpu
    if cpu.compiled is not None:
        return cpu.compiled.get_num_threads()
    return _fallback_threads or os.cpu_count() or 1


_fallback_threads = None
