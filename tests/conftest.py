"""Fixtures shared by the whole suite.

- ``xp``: the array module a test runs on: numpy, and cupy (marked ``gpu``;
  skipped without a usable GPU, a failure instead when XDL_TEST_REQUIRE_GPU=1).
- ``backend``: like ``xp``, and also makes it the configured xdl backend for
  the test (models created inside put their parameters there).
- ``dtype``: float32 and float64.
"""
import importlib.util
import os
import sys
import warnings

# Keep float32 GEMMs on the GPU comparable with the CPU: no TF32.
os.environ.setdefault("CUPY_TF32", "0")
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import xdl  # noqa: E402

REQUIRE_GPU = os.environ.get("XDL_TEST_REQUIRE_GPU") == "1"


def cupy_or_skip():
    """Return cupy when a GPU is usable; skip (or fail under XDL_TEST_REQUIRE_GPU=1)."""
    if xdl.gpu_available():
        import cupy
        return cupy
    if REQUIRE_GPU:
        pytest.fail("XDL_TEST_REQUIRE_GPU=1 but CuPy or a CUDA GPU is not usable")
    pytest.skip("needs CuPy and a CUDA GPU")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    return cupy_or_skip()


@pytest.fixture
def backend(xp):
    with xdl.use_backend("numpy" if xp is np else "cuda"):
        yield xp


@pytest.fixture
def gpu():
    """cupy, for tests that only make sense on the GPU."""
    return cupy_or_skip()


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def numpy_backend():
    """Run a test with the numpy backend configured, whatever XDL_BACKEND says."""
    with xdl.use_backend("numpy"):
        yield np


def _cupy_performance_warning():
    """CuPy's PerformanceWarning class, or None without CuPy (it subclasses RuntimeWarning)."""
    cupy = sys.modules.get("cupy")
    if cupy is None and importlib.util.find_spec("cupy") is not None:
        import cupy
    for where in ("_util", "exceptions"):
        cls = getattr(getattr(cupy, where, None), "PerformanceWarning", None)
        if isinstance(cls, type) and issubclass(cls, Warning):
            return cls
    return None


def allow_cupy_performance_warnings():
    """
    setup.cfg turns RuntimeWarnings into errors (a numpy overflow or invalid
    value is a bug here). CuPy's PerformanceWarning is a RuntimeWarning
    subclass that advises on speed, not correctness: it is shown, not raised.
    """
    cls = _cupy_performance_warning()
    if cls is not None:
        warnings.filterwarnings("default", category=cls)


@pytest.fixture(autouse=True)
def cupy_performance_warnings_stay_warnings():
    # Added inside pytest's per-test warning context: comes before setup.cfg's filters.
    allow_cupy_performance_warnings()
    yield


def pytest_report_header(config):
    return "xdl backend: %s (XDL_BACKEND=%r), GPU usable: %s" % (
        xdl.get_backend(), os.environ.get("XDL_BACKEND"), xdl.gpu_available())
