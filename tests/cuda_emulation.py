"""Host emulation of the CUDA kernels, for machines without a GPU.

kernels.cu is compiled as plain C++ by the host compiler, and every kernel
runs over an emulated grid (each block and thread in turn) on numpy arrays
standing in for cupy arrays. It checks the kernels' index math, the argument
lists (a scalar of the wrong type does not compile) and the Python side of
xdl.backends.cuda (chunking, layouts, the launch helper). Used by
test_kernel_contract.py (the "cuda-emulated" implementation) and
test_cuda_kernels.py.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from xdl.backends import cuda

_HOST_PRELUDE = r"""
#include <cmath>
using std::exp; using std::log; using std::sqrt;
struct XdlDim3 { unsigned int x, y, z; };
static XdlDim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
// A scalar converts only to its own type: if SIGNATURES says long long where
// the kernel takes T (or the reverse), the wrapper does not compile.
struct I64 {
    long long v;
    operator long long() const { return v; }
    template <class U> operator U() const = delete;
};
template <class T> struct Real {
    T v;
    operator T() const { return v; }
    template <class U> operator U() const = delete;
};
"""

POINTER_TYPES = {"in": "const {T}*", "out": "{T}*", "inout": "{T}*", "in_i32": "const int*",
                 "out_i32": "int*", "in_i64": "const long long*"}


def _host_wrapper(name, T):
    """C++ source of extern "C" xdl_<name>_<T>(ptrs, ints, reals, grid, block)."""
    args, counts = [], {"p": 0, "n": 0, "r": 0}
    for kind in cuda.SIGNATURES[name]:
        if kind == "i64":
            args.append("I64{n[%d]}" % counts["n"])
            counts["n"] += 1
        elif kind == "T":
            args.append("Real<%s>{(%s)r[%d]}" % (T, T, counts["r"]))
            counts["r"] += 1
        else:
            args.append("static_cast<%s>(p[%d])" % (POINTER_TYPES[kind].format(T=T), counts["p"]))
            counts["p"] += 1
    return (
        'extern "C" void xdl_%s_%s(void** p, const long long* n, const double* r,\n'
        '                          unsigned grid, unsigned block) {\n'
        '    gridDim.x = grid; blockDim.x = block;\n'
        '    for (unsigned b = 0; b < grid; ++b) {\n'
        '        for (unsigned t = 0; t < block; ++t) {\n'
        '            blockIdx.x = b; threadIdx.x = t;\n'
        '            %s<%s>(%s);\n'
        '        }\n'
        '    }\n'
        '}\n' % (name, T, name, T, ", ".join(args)))


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """kernels.cu built as a host shared library (skips without a C++ compiler)."""
    cxx = shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++ compiler to emulate the CUDA kernels on the host")
    folder = tmp_path_factory.mktemp("host_kernels")
    src = folder / "host_kernels.cpp"
    wrappers = [_host_wrapper(name, T) for name in cuda.SIGNATURES
                for T in cuda.FLOAT_TYPES.values()]
    src.write_text(_HOST_PRELUDE + '#include "%s"\n' % cuda.SOURCE_PATH + "\n".join(wrappers))
    lib = folder / "host_kernels.so"
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return ctypes.CDLL(str(lib))


class HostKernel:
    """Stands in for a cupy RawKernel: checks what _launch packed, runs the grid."""

    def __init__(self, lib, name, dtype):
        self.fn = getattr(lib, "xdl_%s_%s" % (name, cuda.FLOAT_TYPES[np.dtype(dtype)]))
        self.signature = cuda.SIGNATURES[name]
        self.dtype = np.dtype(dtype)

    def __call__(self, grid, block, args):
        ptrs, ints, reals = [], [], []
        for kind, a in zip(self.signature, args, strict=True):
            if kind == "i64":
                assert type(a) is np.int64
                ints.append(int(a))
            elif kind == "T":
                assert type(a) is self.dtype.type
                reals.append(float(a))
            else:
                assert isinstance(a, np.ndarray) and a.flags.c_contiguous
                ptrs.append(a.ctypes.data)
        assert len(grid) == 1 and len(block) == 1 and 0 < grid[0] <= cuda.MAX_BLOCKS
        self.fn((ctypes.c_void_p * len(ptrs))(*ptrs), (ctypes.c_longlong * len(ints))(*ints),
                (ctypes.c_double * len(reals))(*reals), ctypes.c_uint(grid[0]),
                ctypes.c_uint(block[0]))


def emulate(monkeypatch, lib):
    """Make xdl.backends.cuda run its kernels on the host, on numpy arrays."""
    monkeypatch.setattr(cuda, "_cupy", lambda: np)
    monkeypatch.setattr(cuda, "_function", lambda name, dtype: HostKernel(lib, name, dtype))
    # Small blocks and grids make several emulated threads share the loops.
    monkeypatch.setattr(cuda, "BLOCK", 32)
    monkeypatch.setattr(cuda, "MAX_BLOCKS", 7)
