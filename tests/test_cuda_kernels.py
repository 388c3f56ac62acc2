"""The CUDA backend's kernels (backends/kernels.cu through xdl.backends.cuda)
against the NumPy reference kernels and the naive layers.

Most tests run twice, through the ``dev`` fixture:

- ``host``: kernels.cu compiled as plain C++ by the host compiler, every
  kernel run over an emulated grid (each block and thread in turn) on numpy
  arrays standing in for cupy arrays. It runs without a GPU and checks the
  kernels' index math, the argument lists (a scalar of the wrong type does
  not compile) and the Python side of xdl.backends.cuda (chunking, layouts,
  the launch helper).
- ``gpu``: the real kernels through CuPy (marked gpu: skipped without a GPU,
  a failure under XDL_TEST_REQUIRE_GPU=1).

GPU-only tests cover what the emulation cannot: compilation by NVRTC and its
caching, determinism, 64-bit offsets past 2**31 elements.
"""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from xdl import layers, optim
from xdl.backends import cuda, numpy_kernels
from xdl.gradient_check import eval_numerical_gradient_array, rel_error

from helpers import assert_close, host

FLOATS = [np.float32, np.float64]

# ---------------------------------------------------------------------------
# Host emulation of the kernels
# ---------------------------------------------------------------------------

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

_POINTER_TYPES = {"in": "const {T}*", "out": "{T}*", "in_i32": "const int*",
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
            args.append("static_cast<%s>(p[%d])" % (_POINTER_TYPES[kind].format(T=T), counts["p"]))
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


class _HostKernel:
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
    lib = request.getfixturevalue("host_kernels")
    monkeypatch.setattr(cuda, "_cupy", lambda: np)
    monkeypatch.setattr(cuda, "_function", lambda name, dtype: _HostKernel(lib, name, dtype))
    # Small blocks and grids make several emulated threads share the loops.
    monkeypatch.setattr(cuda, "BLOCK", 32)
    monkeypatch.setattr(cuda, "MAX_BLOCKS", 7)
    return Device("host", np)


# ---------------------------------------------------------------------------
# The shape matrix
# ---------------------------------------------------------------------------


def _tiling(K, stride, pad, out):
    """An input size whose windows tile with `out` outputs (at least 2)."""
    while K - 2 * pad + stride * (out - 1) < 2:
        out += 1
    return K - 2 * pad + stride * (out - 1), out


def _conv_cases():
    cases = []
    for KH, KW in [(3, 3), (3, 2), (2, 3), (1, 1)]:
        for stride in (1, 2, 3):
            for pad in (0, 1, 2):
                H, OH = _tiling(KH, stride, pad, 3)
                W, OW = _tiling(KW, stride, pad, 4)
                if W == H:
                    W, OW = W + stride, OW + 1
                cases.append(pytest.param((2, 3, H, W, 4, KH, KW, stride, pad, OH, OW),
                                          id="k%dx%d-s%d-p%d" % (KH, KW, stride, pad)))
    return cases


# (ph, pw, stride): non-overlapping, overlapping, non-square, gaps between
# windows (stride > window), 1x1.
POOL_CASES = [(2, 2, 2), (3, 3, 2), (2, 3, 1), (3, 2, 3), (1, 1, 1), (2, 2, 1)]


def _conv_inputs(case, dtype, seed=0):
    N, C, H, W, F, KH, KW, stride, pad, OH, OW = case
    rng = np.random.RandomState(seed)
    x = rng.randn(N, C, H, W).astype(dtype)
    w = rng.randn(F, C, KH, KW).astype(dtype)
    b = rng.randn(F).astype(dtype)
    dout = rng.randn(N, F, OH, OW).astype(dtype)
    return x, w, b, dout


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("case", _conv_cases())
def test_im2col_col2im_match_reference(dev, case, dtype):
    N, C, H, W, F, KH, KW, stride, pad, OH, OW = case
    x, _, _, _ = _conv_inputs(case, dtype)
    geometry = (KH, KW, stride, pad, OH, OW)
    cols = cuda.im2col(dev.put(x), *geometry)
    assert isinstance(cols, dev.xp.ndarray) and cols.dtype == dtype
    # im2col copies values: exactly equal.
    np.testing.assert_array_equal(host(cols), numpy_kernels.im2col(x, *geometry))
    c = np.random.RandomState(1).randn(*cols.shape).astype(dtype)
    dx = cuda.col2im(dev.put(c), x.shape, *geometry)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(dx, numpy_kernels.col2im(c, x.shape, *geometry), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("case", _conv_cases())
def test_conv_forward_backward_match_reference(dev, case, dtype):
    N, C, H, W, F, KH, KW, stride, pad, OH, OW = case
    x, w, b, dout = _conv_inputs(case, dtype)
    out = cuda.conv_forward(dev.put(x), dev.put(w), dev.put(b), stride, pad, OH, OW)
    assert isinstance(out, dev.xp.ndarray) and out.dtype == dtype
    assert_close(out, numpy_kernels.conv_forward(x, w, b, stride, pad, OH, OW), dtype)
    dx, dw, db = cuda.conv_backward(dev.put(dout), dev.put(x), dev.put(w), stride, pad, OH, OW)
    ex, ew, eb = numpy_kernels.conv_backward(dout, x, w, stride, pad, OH, OW)
    for got, expected in ((dx, ex), (dw, ew), (db, eb)):
        assert got.dtype == dtype and got.shape == expected.shape
        assert_close(got, expected, dtype)


def test_conv_forward_matches_naive_layer(dev):
    x, w, b, _ = _conv_inputs((2, 3, 7, 8, 4, 3, 2, 2, 1, 4, 5), np.float64)
    out = cuda.conv_forward(dev.put(x), dev.put(w), dev.put(b), 2, 1, 4, 5)
    expected, _ = layers.conv_forward_naive(x, w, b, {"stride": 2, "pad": 1})
    assert_close(out, expected, np.float64)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("ph,pw,stride", POOL_CASES)
def test_maxpool_matches_reference(dev, ph, pw, stride, dtype):
    H, W = ph + stride * 3, pw + stride * 4
    OH, OW = 4, 5
    rng = np.random.RandomState(2)
    x = rng.randn(2, 3, H, W).astype(dtype)
    dout = rng.randn(2, 3, OH, OW).astype(dtype)
    out, argmax = cuda.maxpool_forward(dev.put(x), ph, pw, stride, OH, OW)
    e_out, e_arg = numpy_kernels.maxpool_forward(x, ph, pw, stride, OH, OW)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(host(out), e_out)
    np.testing.assert_array_equal(host(argmax), e_arg)
    dx = cuda.maxpool_backward(dev.put(dout), argmax, x.shape, ph, pw, stride, OH, OW)
    assert dx.dtype == dtype
    assert_close(dx, numpy_kernels.maxpool_backward(dout, e_arg, x.shape, ph, pw, stride, OH, OW),
                 dtype)
    naive_out, cache = layers.max_pool_forward_naive(
        x, {"pool_height": ph, "pool_width": pw, "stride": stride})
    np.testing.assert_array_equal(host(out), naive_out)
    assert_close(dx, layers.max_pool_backward_naive(dout, cache), dtype)


def test_non_contiguous_inputs(dev):
    rng = np.random.RandomState(3)
    x_base, w_base, b_base = rng.randn(2, 3, 8, 12), rng.randn(3, 3, 4, 3), rng.randn(8)
    dout_base, dp_base = rng.randn(4, 2, 8, 6), rng.randn(2, 3, 4, 3)
    # Reversed, strided and transposed views, on the host and on the device.
    views = [lambda a: a[:, :, ::-1, ::2],             # x: (2, 3, 8, 6)
             lambda a: a.transpose(2, 3, 0, 1),        # w: (4, 3, 3, 3)
             lambda a: a[::2],                         # b: (4,)
             lambda a: a.transpose(1, 0, 2, 3),        # dout: (2, 4, 8, 6)
             lambda a: a[:, :, :, ::-1]]               # pool dout: (2, 3, 4, 3)
    bases = [x_base, w_base, b_base, dout_base, dp_base]
    x, w, b, dout, dp = (view(a) for view, a in zip(views, bases))
    X, Wt, B, D, DP = (view(dev.xp.asarray(a)) for view, a in zip(views, bases))
    assert not any(a.flags.c_contiguous for a in (X, Wt, B, D, DP))
    out = cuda.conv_forward(X, Wt, B, 1, 1, 8, 6)
    assert_close(out, numpy_kernels.conv_forward(x, w, b, 1, 1, 8, 6), np.float64)
    for got, expected in zip(cuda.conv_backward(D, X, Wt, 1, 1, 8, 6),
                             numpy_kernels.conv_backward(dout, x, w, 1, 1, 8, 6)):
        assert_close(got, expected, np.float64)
    pooled, argmax = cuda.maxpool_forward(X, 2, 2, 2, 4, 3)
    e_out, e_arg = numpy_kernels.maxpool_forward(x, 2, 2, 2, 4, 3)
    np.testing.assert_array_equal(host(pooled), e_out)
    assert_close(cuda.maxpool_backward(DP, argmax, x.shape, 2, 2, 2, 4, 3),
                 numpy_kernels.maxpool_backward(dp, e_arg, x.shape, 2, 2, 2, 4, 3), np.float64)


def test_chunked_convolution_matches_one_chunk(dev, monkeypatch):
    case = (5, 2, 6, 7, 3, 3, 2, 1, 1, 6, 8)
    x, w, b, dout = _conv_inputs(case, np.float64)
    args = (dev.put(x), dev.put(w), dev.put(b))
    whole = cuda.conv_forward(*args, 1, 1, 6, 8)
    whole_grads = cuda.conv_backward(dev.put(dout), args[0], args[1], 1, 1, 6, 8)
    per_image = 2 * 3 * 2 * 6 * 8
    monkeypatch.setattr(cuda, "CHUNK_ELEMENTS", 2 * per_image)  # chunks of 2, 2, 1 images
    assert cuda._chunks(5, per_image) == [(0, 2), (2, 4), (4, 5)]
    assert_close(cuda.conv_forward(*args, 1, 1, 6, 8), whole, np.float64)
    chunked = cuda.conv_backward(dev.put(dout), args[0], args[1], 1, 1, 6, 8)
    for got, expected in zip(chunked, whole_grads):
        assert_close(got, expected, np.float64)


def test_conv_backward_without_dx(dev):
    case = (2, 3, 5, 6, 2, 3, 3, 1, 1, 5, 6)
    x, w, _, dout = _conv_inputs(case, np.float32)
    full = cuda.conv_backward(dev.put(dout), dev.put(x), dev.put(w), 1, 1, 5, 6)
    dx, dw, db = cuda.conv_backward(dev.put(dout), dev.put(x), dev.put(w), 1, 1, 5, 6,
                                    compute_dx=False)
    assert dx is None
    np.testing.assert_array_equal(host(dw), host(full[1]))
    np.testing.assert_array_equal(host(db), host(full[2]))


# ---------------------------------------------------------------------------
# Gradients, ties, adjointness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,kernel,stride,pad", [
    ((2, 2, 5, 4), (3, 3, 2), 1, 1),
    ((2, 2, 8, 5), (2, 2, 3), 2, 1),
])
def test_conv_numerical_gradients_float64(dev, shape, kernel, stride, pad):
    rng = np.random.RandomState(4)
    F, KH, KW = kernel
    N, C, H, W = shape
    OH, OW = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    x, w, b = dev.put(rng.randn(*shape)), dev.put(rng.randn(F, C, KH, KW)), dev.put(rng.randn(F))
    dout = dev.put(rng.randn(N, F, OH, OW))
    dx, dw, db = cuda.conv_backward(dout, x, w, stride, pad, OH, OW)
    fwd = lambda x, w, b: cuda.conv_forward(x, w, b, stride, pad, OH, OW)  # noqa: E731
    dx_num = eval_numerical_gradient_array(lambda v: fwd(v, w, b), x, dout)
    dw_num = eval_numerical_gradient_array(lambda v: fwd(x, v, b), w, dout)
    db_num = eval_numerical_gradient_array(lambda v: fwd(x, w, v), b, dout)
    assert rel_error(dx, dx_num) < 1e-6
    assert rel_error(dw, dw_num) < 1e-6
    assert rel_error(db, db_num) < 1e-6


def test_maxpool_numerical_gradient_float64(dev):
    rng = np.random.RandomState(5)
    x = dev.put(rng.randn(2, 2, 6, 5))   # overlapping 3x2 windows, stride 1
    dout = dev.put(rng.randn(2, 2, 4, 4))
    _, argmax = cuda.maxpool_forward(x, 3, 2, 1, 4, 4)
    dx = cuda.maxpool_backward(dout, argmax, x.shape, 3, 2, 1, 4, 4)
    dx_num = eval_numerical_gradient_array(
        lambda v: cuda.maxpool_forward(v, 3, 2, 1, 4, 4)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-7


def test_col2im_is_the_adjoint_of_im2col(dev):
    rng = np.random.RandomState(6)
    x = rng.randn(2, 3, 7, 5)
    geometry = (3, 2, 2, 2, 5, 4)
    cols = rng.randn(3 * 3 * 2, 2 * 5 * 4)
    lhs = float((host(cuda.im2col(dev.put(x), *geometry)) * cols).sum())
    rhs = float((x * host(cuda.col2im(dev.put(cols), x.shape, *geometry))).sum())
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
def test_maxpool_tie_rule_first_maximum_takes_all(dev, dtype):
    x = np.zeros((2, 2, 4, 6), dtype=dtype)           # every window is a tie
    x[1, 1, 0, 1] = x[1, 1, 1, 0] = 5                 # window (0, 0): two maxima
    out, argmax = cuda.maxpool_forward(dev.put(x), 2, 2, 2, 2, 3)
    a = host(argmax)
    assert a[1, 1, 0, 0] == 1                         # (0, 1) comes before (1, 0)
    others = np.ones(a.shape, dtype=bool)
    others[1, 1, 0, 0] = False
    assert (a[others] == 0).all()                     # all-equal windows: the first
    np.testing.assert_array_equal(a, numpy_kernels.maxpool_forward(x, 2, 2, 2, 2, 3)[1])
    dout = np.ones((2, 2, 2, 3), dtype=dtype)
    dx = host(cuda.maxpool_backward(dev.put(dout), argmax, x.shape, 2, 2, 2, 2, 3))
    assert dx.sum() == dout.sum()                     # each window routes to one pixel
    assert dx[1, 1, 0, 1] == 1 and dx[1, 1, 1, 0] == 0
    assert dx[0, 0, 0, 0] == 1 and dx[0, 0, 0, 1] == 0 and dx[0, 0, 1, 0] == 0
    # Overlapping windows, all equal: each window's gradient goes to its own
    # top-left pixel.
    dx = host(cuda.maxpool_backward(dev.put(np.ones((2, 2, 3, 5), dtype=dtype)),
                                    cuda.maxpool_forward(dev.put(x), 2, 2, 1, 3, 5)[1],
                                    x.shape, 2, 2, 1, 3, 5))
    assert (dx[0, 0, :3, :5] == 1).all()
    assert dx[0, 0, 3].sum() == 0 and dx[0, 0, :, 5].sum() == 0


# ---------------------------------------------------------------------------
# Fused update rules and softmax loss against the NumPy formulas
# ---------------------------------------------------------------------------


def _rule_inputs(dtype):
    rng = np.random.RandomState(7)
    w, dw = rng.randn(7, 9).astype(dtype), rng.randn(7, 9).astype(dtype)
    s1, s2 = rng.randn(7, 9).astype(dtype), rng.rand(7, 9).astype(dtype)
    return w, dw, s1, s2


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
def test_fused_update_rules_match_numpy_formulas(dev, dtype):
    w, dw, s1, s2 = _rule_inputs(dtype)
    put = dev.put
    S1, S2 = put(s1), put(s2)
    e_w, _ = optim.sgd(w, dw, {"learning_rate": 0.1})
    assert_close(cuda.sgd(put(w), put(dw), 0.1), e_w, dtype)

    # The CPU rules update their state in place: give them copies.
    cfg = {"learning_rate": 0.1, "momentum": 0.8, "velocity": s1.copy()}
    e_w, cfg = optim.sgd_momentum(w, dw, cfg)
    got_w, got_v = cuda.sgd_momentum(put(w), put(dw), S1, 0.1, 0.8)
    assert_close(got_w, e_w, dtype)
    assert_close(got_v, cfg["velocity"], dtype)

    cfg = {"learning_rate": 0.01, "decay_rate": 0.9, "epsilon": 1e-8, "cache": s2.copy()}
    e_w, cfg = optim.rmsprop(w, dw, cfg)
    got_w, got_c = cuda.rmsprop(put(w), put(dw), S2, 0.01, 0.9, 1e-8)
    assert_close(got_w, e_w, dtype)
    assert_close(got_c, cfg["cache"], dtype)

    cfg = {"learning_rate": 0.01, "m": s1.copy(), "v": s2.copy(), "t": 4}
    e_w, cfg = optim.adam(w, dw, cfg)
    t = 5
    step = 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    eps_hat = 1e-8 * np.sqrt(1 - 0.999 ** t)
    got = cuda.adam(put(w), put(dw), S1, S2, 0.9, 0.999, float(step), float(eps_hat))
    for g, e in zip(got, (e_w, cfg["m"], cfg["v"])):
        assert g.dtype == dtype
        assert_close(g, e, dtype)
    # The state given is not modified: new arrays come back.
    np.testing.assert_array_equal(host(S1), s1)
    np.testing.assert_array_equal(host(S2), s2)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_fused_softmax_loss_matches_layer(dev, dtype, label_dtype):
    rng = np.random.RandomState(8)
    x = (rng.randn(13, 7) * 3).astype(dtype)
    x[0, 2] = 1e4                                     # huge score: stays finite
    y = rng.randint(7, size=13).astype(label_dtype)
    loss, dx = cuda.softmax_loss(dev.put(x), dev.put(y))
    e_loss, e_dx = layers.softmax_loss(x, y)
    assert dx.dtype == dtype and np.isfinite(float(loss))
    assert_close(loss, e_loss, dtype)
    assert_close(dx, e_dx, dtype)


def test_float64_kernels_keep_float64_precision(dev):
    """Inputs that differ only past float32's precision: a float local or
    accumulator in a <double> kernel would show at the 1e-9 level."""
    rng = np.random.RandomState(11)
    fine = lambda *shape: 1 + 1e-9 * rng.rand(*shape)  # noqa: E731
    tight = dict(rtol=1e-12, atol=1e-14)
    x, w, b = fine(2, 2, 5, 6), fine(3, 2, 3, 3), fine(3)
    cols = fine(2 * 9, 2 * 5 * 6)
    assert_close(cuda.col2im(dev.put(cols), x.shape, 3, 3, 1, 1, 5, 6),
                 numpy_kernels.col2im(cols, x.shape, 3, 3, 1, 1, 5, 6), **tight)
    out = host(cuda.conv_forward(dev.put(x), dev.put(w), dev.put(b), 1, 1, 5, 6))
    assert_close(out, numpy_kernels.conv_forward(x, w, b, 1, 1, 5, 6), **tight)
    dout = fine(2, 2, 4, 5)
    _, argmax = numpy_kernels.maxpool_forward(x, 2, 2, 1, 4, 5)
    assert_close(cuda.maxpool_backward(dev.put(dout), dev.put(argmax), x.shape, 2, 2, 1, 4, 5),
                 numpy_kernels.maxpool_backward(dout, argmax, x.shape, 2, 2, 1, 4, 5), **tight)
    wv, dw, m, v = fine(4, 5), 1e-9 * fine(4, 5), fine(4, 5), fine(4, 5)
    assert_close(cuda.sgd(dev.put(wv), dev.put(dw), 0.5), wv - 0.5 * dw, **tight)
    got = cuda.sgd_momentum(dev.put(wv), dev.put(dw), dev.put(m), 0.5, 0.9)
    assert_close(got[1], 0.9 * m - 0.5 * dw, **tight)
    got = cuda.rmsprop(dev.put(wv), dev.put(dw), dev.put(v), 0.5, 0.9, 1e-8)
    assert_close(got[1], 0.9 * v + 0.1 * dw * dw, **tight)
    got = cuda.adam(dev.put(wv), dev.put(dw), dev.put(m), dev.put(v), 0.9, 0.999, 0.5, 1e-8)
    assert_close(got[1], 0.9 * m + 0.1 * dw, **tight)
    assert_close(got[0], wv - 0.5 * host(got[1]) / (np.sqrt(host(got[2])) + 1e-8), **tight)
    scores, y = fine(3, 4), np.array([0, 3, 1])
    loss, dscores = cuda.softmax_loss(dev.put(scores), dev.put(y))
    e_loss, e_dscores = layers.softmax_loss(scores, y)
    assert_close(loss, e_loss, **tight)
    assert_close(dscores, e_dscores, **tight)


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.int32, np.float16, np.int64])
def test_unsupported_dtypes_raise_type_error(dev, bad):
    x = dev.put(np.ones((2, 2, 4, 4)), dtype=bad)
    w, b = dev.put(np.ones((3, 2, 3, 3)), dtype=bad), dev.put(np.ones(3), dtype=bad)
    cols = dev.put(np.ones((18, 32)), dtype=bad)
    calls = [
        lambda: cuda.im2col(x, 3, 3, 1, 1, 4, 4),
        lambda: cuda.col2im(cols, (2, 2, 4, 4), 3, 3, 1, 1, 4, 4),
        lambda: cuda.conv_forward(x, w, b, 1, 1, 4, 4),
        lambda: cuda.conv_backward(dev.put(np.ones((2, 3, 4, 4)), dtype=bad), x, w, 1, 1, 4, 4),
        lambda: cuda.maxpool_forward(x, 2, 2, 2, 2, 2),
        lambda: cuda.maxpool_backward(dev.put(np.ones((2, 2, 2, 2)), dtype=bad),
                                      dev.put(np.zeros((2, 2, 2, 2)), dtype=np.int32),
                                      (2, 2, 4, 4), 2, 2, 2, 2, 2),
        lambda: cuda.sgd(b, b, 0.1),
        lambda: cuda.adam(b, b, b, b, 0.9, 0.999, 0.1, 1e-8),
        lambda: cuda.softmax_loss(cols, dev.put(np.zeros(18), dtype=np.int64)),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="float32 or float64"):
            call()


def test_mixed_dtypes_raise_type_error(dev):
    x = dev.put(np.ones((2, 2, 4, 4)), dtype=np.float32)
    w, b = dev.put(np.ones((3, 2, 3, 3))), dev.put(np.ones(3))
    with pytest.raises(TypeError, match="one dtype"):
        cuda.conv_forward(x, w, b, 1, 1, 4, 4)


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


def test_empty_batch_launches_nothing(dev):
    x = dev.put(np.ones((0, 2, 4, 4)))
    out, argmax = cuda.maxpool_forward(x, 2, 2, 2, 2, 2)
    assert out.shape == (0, 2, 2, 2) and argmax.shape == (0, 2, 2, 2)
    dx, dw, db = cuda.conv_backward(dev.put(np.ones((0, 3, 4, 4))), x,
                                    dev.put(np.ones((3, 2, 3, 3))), 1, 1, 4, 4)
    assert dx.shape == (0, 2, 4, 4) and float(abs(dw).sum()) == 0 and float(abs(db).sum()) == 0


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
            types = [(_POINTER_TYPES.get(k) or scalar[k]).format(T=T) for k in signature]
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
    cols = gpu.asarray(rng.randn(4 * 9, 8 * 60).astype(np.float32))
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
