"""xdl: CS231n-style deep learning on NumPy + Cython (CPU) or CuPy (CUDA).

Layers are functions with ``forward``/``backward`` and a cache; models are
classes holding a ``params`` dict; ``xdl.solver.Solver`` trains them with the
update rules in ``xdl.optim``. The same code runs on numpy and cupy arrays:
the arrays decide, and the configured backend (``XDL_BACKEND`` =
``numpy`` | ``cuda``, or ``xdl.set_backend``) decides where new arrays live.
"""
from xdl._version import __version__
from xdl.backends import (
    BACKENDS,
    BackendError,
    asarray,
    asnumpy,
    backend_module,
    get_array_module,
    get_backend,
    gpu_available,
    set_backend,
    use_backend,
)

__all__ = [
    "__version__",
    "BACKENDS",
    "BackendError",
    "asarray",
    "asnumpy",
    "backend_module",
    "get_array_module",
    "get_backend",
    "gpu_available",
    "set_backend",
    "use_backend",
]
