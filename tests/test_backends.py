"""Backend selection, array-module lookup and host/device moves."""
import os
import subprocess
import sys

import numpy as np
import pytest

import xdl
from xdl import backends


def run_python(code, **env):
    full_env = dict(os.environ)
    full_env.pop("XDL_BACKEND", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_default_backend_is_numpy():
    r = run_python("import xdl; print(xdl.get_backend())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "numpy"


def test_env_var_selects_backend_case_insensitively():
    r = run_python("import xdl; print(xdl.get_backend())", XDL_BACKEND=" NumPy ")
    assert r.stdout.strip() == "numpy", r.stderr


def test_unknown_env_backend_lists_valid_names():
    r = run_python("import xdl; xdl.get_backend()", XDL_BACKEND="tpu")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "'tpu'" in r.stderr
    assert "'numpy'" in r.stderr and "'cuda'" in r.stderr


def test_import_does_not_import_cupy():
    r = run_python("import sys, xdl, xdl.layers, xdl.fast_layers, xdl.solver, "
                   "xdl.classifiers; print('cupy' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_set_backend_rejects_unknown_name(numpy_backend):
    with pytest.raises(ValueError, match="valid names are 'numpy', 'cuda'"):
        xdl.set_backend("gpu")
    assert xdl.get_backend() == "numpy"


def test_use_backend_restores_previous(numpy_backend):
    with xdl.use_backend("numpy"):
        assert xdl.get_backend() == "numpy"
    assert xdl.get_backend() == "numpy"


@pytest.mark.skipif(xdl.gpu_available(), reason="checks the error on machines without a GPU")
def test_cuda_without_gpu_raises_one_clear_error(numpy_backend):
    with pytest.raises(xdl.BackendError) as info:
        xdl.set_backend("cuda")
    msg = str(info.value)
    assert "cuda backend" in msg
    assert "cupy" in msg.lower() and ("pip install" in msg or "GPU" in msg)
    assert xdl.get_backend() == "numpy"  # unchanged


@pytest.mark.skipif(xdl.gpu_available(), reason="checks the error on machines without a GPU")
def test_cuda_env_without_gpu_raises_backend_error():
    r = run_python("import xdl; xdl.get_backend()", XDL_BACKEND="cuda")
    assert r.returncode != 0
    assert "BackendError" in r.stderr and "cuda backend" in r.stderr


def test_get_array_module_numpy():
    a = np.zeros(3)
    assert xdl.get_array_module(a, 1.0, None) is np
    assert xdl.get_array_module() is np


def test_get_array_module_mixed_raises(gpu):
    with pytest.raises(TypeError, match="mixed numpy and cupy"):
        xdl.get_array_module(np.zeros(2), gpu.zeros(2))


def test_get_array_module_cupy(gpu):
    assert xdl.get_array_module(gpu.zeros(2), 3) is gpu


def test_asarray_and_asnumpy_roundtrip(backend):
    xp = backend
    a = xdl.asarray(np.arange(6.0).reshape(2, 3), dtype=np.float32)
    assert isinstance(a, xp.ndarray) and a.dtype == np.float32
    h = xdl.asnumpy(a)
    assert isinstance(h, np.ndarray)
    np.testing.assert_array_equal(h, np.arange(6.0).reshape(2, 3))


def test_asarray_like_moves_to_reference_device(xp):
    ref = xp.zeros(2, dtype=np.float32)
    moved = backends.asarray_like(np.ones(3), ref, dtype=ref.dtype)
    assert isinstance(moved, xp.ndarray) and moved.dtype == np.float32
    back = backends.asarray_like(moved, np.zeros(1))
    assert isinstance(back, np.ndarray)


def test_gpu_available_is_boolean():
    assert xdl.gpu_available() in (True, False)


def test_cupy_performance_warning_is_not_an_error(monkeypatch):
    # setup.cfg makes RuntimeWarnings errors; conftest exempts CuPy's
    # PerformanceWarning (a RuntimeWarning subclass). Checked with a stand-in.
    import types
    import warnings
    import conftest

    class PerformanceWarning(RuntimeWarning):
        pass
    fake = types.ModuleType("cupy")
    fake._util = types.SimpleNamespace(PerformanceWarning=PerformanceWarning)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("error", RuntimeWarning)
        conftest.allow_cupy_performance_warnings()
        warnings.warn("slow path", PerformanceWarning)
        with pytest.raises(RuntimeWarning, match="overflow"):
            warnings.warn("overflow", RuntimeWarning)
    assert [str(w.message) for w in seen] == ["slow path"]


class _FakeCupyArray(np.ndarray):
    """Stands in for a cupy array where no GPU is available."""


def test_check_same_device_names_both_arguments(monkeypatch):
    from xdl import _checks
    monkeypatch.setattr(_checks, "is_cupy_array", lambda a: isinstance(a, _FakeCupyArray))
    # cupy arrays exist only once cupy is imported (the check returns at once before)
    monkeypatch.setattr(_checks, "_cupy_if_loaded", lambda: object())
    x, w = np.zeros((2, 3)), np.zeros((4, 5)).view(_FakeCupyArray)
    _checks.check_same_device(x=x, w=np.zeros(4), b=None, scale=2.0)
    _checks.check_same_device(w=w, b=w)
    with pytest.raises(TypeError, match=r"mixed numpy and cupy arrays: x is a numpy array of "
                                        r"shape \(2, 3\) and w a cupy array of shape \(4, 5\)"):
        _checks.check_same_device(x=x, w=w)


def test_check_same_device_with_cupy(gpu):
    from xdl._checks import check_same_device
    with pytest.raises(TypeError, match="dout is a numpy array.*x a cupy array"):
        check_same_device(x=gpu.zeros(3), dout=np.zeros(3))


def test_import_loads_no_compiled_extension():
    r = run_python("import sys, xdl, xdl.layers, xdl.fast_layers, xdl.optim, xdl.solver, "
                   "xdl.classifiers; print(any('_cpu_kernels' in m for m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
