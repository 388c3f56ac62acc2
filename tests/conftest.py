"""Fixtures shared by the whole suite.

- ``xp``: the array module a test runs on: numpy, and cupy (marked ``gpu``;
  skipped without a usable GPU, a failure instead when XDL_TEST_REQUIRE_GPU=1).
- ``backend``: like ``xp``, and also makes it the configured xdl backend for
  the test (models created inside put their parameters there).
- ``dtype``: float32 and float64.
"""
import os

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


def pytest_report_header(config):
    return "xdl backend: %s (XDL_BACKEND=%r), GPU usable: %s" % (
        xdl.get_backend(), os.environ.get("XDL_BACKEND"), xdl.gpu_available())
