"""What is particular to the CUDA backend (backends/kernels.cu through
xdl.backends.cuda): the launch helper, the kernel list, compilation, and
what only a GPU shows.

The kernels' results, on every implementation of the device interface
(host-emulated CUDA and a real GPU included), are tested in
test_kernel_contract.py. Tests here run through the ``dev`` fixture where
they can:

- ``host``: kernels.cu compiled as plain C++ and run over an emulated grid
  on numpy arrays standing in for cupy arrays (tests/cuda_emulation.py);
- ``gpu``: the real kernels through CuPy (marked gpu: skipped without a GPU,
  a failure under XDL_TEST_REQUIRE_GPU=1).

GPU-only tests cover what the emulation cannot: compilation by NVRTC and its
caching, determinism, 64-bit offsets past 2**31 elements.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from xdl.backends import cuda

from cuda_emulation import POINTER_TYPES, emulate, host_kernels  # noqa: F401 (a fixture)
from helpers import host

FLOATS = [np.float32, np.float64]


class Device:
    """Where a kernel test runs: ``xp`` holds the arrays given to xdl.backends.cuda."""

    def __init__(self, name, xp):
        self.name, self.xp = name, xp

    def put(self, a, dtype=None):
        """A new array of xp holding a copy of the host array a."""
        return self.xp.array(np.asarray(a, dtype=dtype))


@pytest.fixture(params=["host", pytest.param("gpu", marks=pytest.mark.gpu)])
def dev(request, monkeypatch):
    if request.param == "gpu":
        return Device("gpu", request.getfixturevalue("gpu"))
    emulate(monkeypatch, request.getfixturevalue("host_kernels"))
    return Device("host", np)


# ---------------------------------------------------------------------------
# The launch helper
# ---------------------------------------------------------------------------


def test_launch_checks_arguments(dev):
    x = dev.put(np.arange(16.0).reshape(1, 1, 4, 4))
    out = dev.put(np.zeros((1, 1, 2, 2)))
    argmax = dev.put(np.zeros((1, 1, 2, 2)), dtype=np.int32)
    strided_out = dev.put(np.ones((1, 1, 4, 4)))[:, :, ::2, ::2]
    geometry = (1, 1, 4, 4, 2, 2, 2, 2, 2)
    with pytest.raises(TypeError, match="takes 12 arguments"):
        cuda._launch("maxpool_forward", x.dtype, 4, x, out, argmax)
    with pytest.raises(TypeError, match="must be an integer"):
        cuda._launch("maxpool_forward", x.dtype, 4, x, out, argmax, *geometry[:-1], 2.0)
    with pytest.raises(TypeError, match="must have dtype int32"):
        cuda._launch("maxpool_forward", x.dtype, 4, x, out, out, *geometry)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda._launch("maxpool_forward", x.dtype, 4, x, strided_out, argmax, *geometry)
    cuda._launch("maxpool_forward", x.dtype, 4, x, out, argmax, *geometry)
    assert host(out).tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
    assert (host(argmax) == 3).all()
    # State updated in place must be contiguous too (a copy would lose the update).
    w, v = dev.put(np.ones(4)), dev.put(np.ones(8))
    with pytest.raises(ValueError, match="in-place argument 2 of kernel sgd_momentum_update"):
        cuda._launch("sgd_momentum_update", w.dtype, 4, w, w, v[::2], dev.put(np.zeros(4)),
                     0.5, 0.9, 4)
    next_w = dev.put(np.zeros(4))
    cuda._launch("sgd_momentum_update", w.dtype, 4, w, w, v[:4], next_w, 0.5, 0.9, 4)
    assert host(v).tolist() == [0.4] * 4 + [1.0] * 4        # 0.9 * 1 - 0.5 * 1, in place
    assert host(next_w).tolist() == [1.4] * 4


# ---------------------------------------------------------------------------
# Compile checks (no GPU needed)
# ---------------------------------------------------------------------------


def test_signatures_name_every_kernel():
    with open(cuda.SOURCE_PATH, encoding="utf-8") as f:
        source = f.read()
    defined = set(re.findall(r"__global__\s+void\s+(\w+)\s*\(", source))
    assert defined == set(cuda.SIGNATURES)


def test_kernels_compile_with_nvcc(tmp_path):
    """nvcc accepts kernels.cu, with SIGNATURES as explicit instantiations."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    lines = ['#include "%s"' % cuda.SOURCE_PATH]
    scalar = {"i64": "long long", "T": "{T}"}
    for name, signature in cuda.SIGNATURES.items():
        for T in cuda.FLOAT_TYPES.values():
            types = [(POINTER_TYPES.get(k) or scalar[k]).format(T=T) for k in signature]
            lines.append("template __global__ void %s<%s>(%s);" % (name, T, ", ".join(types)))
    src = tmp_path / "instantiate.cu"
    src.write_text("\n".join(lines) + "\n")
    r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_80", "-c", str(src), "-o",
                        str(tmp_path / "instantiate.o")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------


def test_module_is_compiled_once(gpu):
    x = gpu.ones((2, 2, 4, 4), dtype=np.float32)
    for dtype in FLOATS:
        cuda.im2col(x.astype(dtype), 3, 3, 1, 1, 4, 4)
        cuda.maxpool_forward(x.astype(dtype), 2, 2, 2, 2, 2)
    module = cuda._module()
    assert cuda._module() is module
    assert cuda._module.cache_info().misses == 1
    assert cuda._function.cache_info().currsize <= len(cuda.NAME_EXPRESSIONS)


def test_backward_passes_are_bit_reproducible(gpu):
    rng = np.random.RandomState(9)
    x = gpu.asarray(rng.randn(8, 4, 12, 10).astype(np.float32))
    w = gpu.asarray(rng.randn(6, 4, 3, 3).astype(np.float32))
    dout = gpu.asarray(rng.randn(8, 6, 6, 5).astype(np.float32))
    first = cuda.conv_backward(dout, x, w, 2, 1, 6, 5)
    second = cuda.conv_backward(dout, x, w, 2, 1, 6, 5)
    for a, b in zip(first, second):
        assert gpu.array_equal(a, b)
    _, argmax = cuda.maxpool_forward(x, 3, 3, 1, 10, 8)
    dp = gpu.asarray(rng.randn(8, 4, 10, 8).astype(np.float32))
    assert gpu.array_equal(cuda.maxpool_backward(dp, argmax, x.shape, 3, 3, 1, 10, 8),
                           cuda.maxpool_backward(dp, argmax, x.shape, 3, 3, 1, 10, 8))
    cols = gpu.asarray(rng.randn(4 * 9, 8 * 6 * 5).astype(np.float32))  # (C*KH*KW, N*OH*OW)
    assert gpu.array_equal(cuda.col2im(cols, x.shape, 3, 3, 2, 1, 6, 5),
                           cuda.col2im(cols, x.shape, 3, 3, 2, 1, 6, 5))


def test_numpy_arrays_are_refused(gpu):
    with pytest.raises(TypeError, match="cupy array"):
        cuda.im2col(np.ones((1, 1, 3, 3), dtype=np.float32), 3, 3, 1, 0, 1, 1)


def test_offsets_past_2_31_elements(gpu):
    """im2col and col2im index more than 2**31 elements (64-bit offsets)."""
    free, _ = gpu.cuda.Device().mem_info
    if free < 12 * 2 ** 30:
        pytest.skip("needs 12 GiB of free GPU memory")
    K, H = 48, 1024
    OH = H - K + 1
    rng = np.random.RandomState(10)
    x_host = rng.randint(0, 8, size=(1, 1, H, H)).astype(np.float32)  # small integers: exact sums
    x = gpu.asarray(x_host)
    cols = cuda.im2col(x, K, K, 1, 0, OH, OH)
    assert cols.size > 2 ** 31
    r = np.concatenate([rng.randint(K * K, size=2000), [K * K - 1]])
    c = np.concatenate([rng.randint(OH * OH, size=2000), [OH * OH - 1]])
    got = host(cols[gpu.asarray(r), gpu.asarray(c)])
    expected = x_host[0, 0, c // OH + r // K, c % OH + r % K]
    np.testing.assert_array_equal(got, expected)
    dx = host(cuda.col2im(cols, x.shape, K, K, 1, 0, OH, OH))
    del cols
    gpu.get_default_memory_pool().free_all_blocks()
    # Pixel (h, w) is read by count(h) * count(w) windows.
    idx = np.arange(H)
    count = np.minimum(idx, OH - 1) - np.maximum(idx - K + 1, 0) + 1
    np.testing.assert_array_equal(dx[0, 0], x_host[0, 0] * count[:, None] * count[None, :])
