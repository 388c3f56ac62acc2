"""xdl: CS231n-style deep learning on NumPy + Cython (CPU) or CuPy (CUDA).

Layers are functions with ``forward``/``backward`` and a cache; models are
classes holding a ``params`` dict; ``xdl.solver.Solver`` trains them with the
update rules in ``xdl.optim``. The same code runs on numpy and cupy arrays:
the arrays decide, and the configured backend (``XDL_BACKEND`` =
``numpy`` | ``cuda``, or ``xdl.set_backend``) decides where new arrays live.

The submodules (``xdl.classifiers``, ``xdl.solver``, ``xdl.layers``, ...) are
reachable from ``import xdl`` and imported on first use, so importing xdl
stays cheap (and never imports CuPy).
"""
import importlib

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

#: Submodules imported on first attribute access (``xdl.classifiers.load_model``).
SUBMODULES = (
    "classifiers",
    "data_utils",
    "fast_layers",
    "gradient_check",
    "layer_utils",
    "layers",
    "optim",
    "serialization",
    "solver",
    "vis_utils",
)


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module("xdl." + name)  # also sets xdl.<name>
    raise AttributeError("module 'xdl' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
