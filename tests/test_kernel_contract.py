"""The device interface (xdl.backends.OPERATIONS), one contract over every
implementation, through the ``impl`` fixture:

- ``compiled``: xdl.backends.cpu with the Cython extension (a missing build
  is a failure, not a skip);
- ``fallback``: xdl.backends.cpu with the extension made missing, i.e. the
  NumPy kernels of numpy_kernels;
- ``cuda-emulated``: xdl.backends.cuda with kernels.cu compiled for the host
  and run over an emulated grid on numpy arrays (tests/cuda_emulation.py;
  skips without a C++ compiler);
- ``cuda``: xdl.backends.cuda on a GPU (marked gpu: skipped without one, a
  failure under XDL_TEST_REQUIRE_GPU=1).

References are computed on the host in float64, never by an implementation
under test: plain loops (im2col, col2im), the naive layers of xdl.layers
(convolution, pooling), the formulas written out below (update rules,
softmax loss, sums), numerical gradients.
"""
import functools
import inspect
import math

import numpy as np
import pytest

from xdl import backends, layers
from xdl.backends import cpu, cuda, numpy_kernels
from xdl.gradient_check import eval_numerical_gradient_array, rel_error

from conftest import cupy_or_skip
from cuda_emulation import emulate, host_kernels  # noqa: F401 (a fixture)
import cases
from helpers import assert_close, host

FLOATS = [np.float32, np.float64]
FLOAT_IDS = ["float32", "float64"]


class Impl:
    """One implementation of the interface: its module and its array module."""

    def __init__(self, name, ops, xp):
        self.name, self.ops, self.xp = name, ops, xp

    def put(self, a, dtype=None):
        """A new array of the implementation's device holding a copy of host array a."""
        return self.xp.array(np.asarray(a, dtype=dtype))


@pytest.fixture(params=["compiled", "fallback", "cuda-emulated",
                        pytest.param("cuda", marks=pytest.mark.gpu)])
def impl(request, monkeypatch):
    name = request.param
    if name == "compiled":
        if cpu.compiled is None:
            pytest.fail("the compiled CPU kernels are not built (%s); "
                        "run `pip install -e . --no-deps`" % cpu._import_error)
        return Impl(name, cpu, np)
    if name == "fallback":
        monkeypatch.setattr(cpu, "compiled", None)
        monkeypatch.setattr(cpu, "_warned", True)  # the warning has its own test
        return Impl(name, cpu, np)
    if name == "cuda-emulated":
        emulate(monkeypatch, request.getfixturevalue("host_kernels"))
        return Impl(name, cuda, np)
    return Impl(name, cuda, cupy_or_skip())


# ---------------------------------------------------------------------------
# The interface itself
# ---------------------------------------------------------------------------


def test_every_device_module_has_every_operation_with_one_signature():
    for name in backends.OPERATIONS:
        reference = inspect.signature(getattr(numpy_kernels, name))
        for module in (cpu, cuda):
            fn = getattr(module, name, None)
            assert callable(fn), "%s.%s is missing" % (module.__name__, name)
            assert inspect.signature(fn) == reference, "%s.%s" % (module.__name__, name)


def test_compiled_kernels_take_the_interface_arguments():
    if cpu.compiled is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    for name in backends.OPERATIONS:
        fn = getattr(cpu.compiled, name, None)
        if fn is None:
            continue  # the cpu module runs the NumPy formula (softmax_loss)
        params = list(inspect.signature(fn).parameters)
        expected = list(inspect.signature(getattr(numpy_kernels, name)).parameters)
        assert params[:len(expected)] == expected, name


def test_kernels_for_is_the_door():
    assert backends.kernels_for(np.zeros(2), np.zeros(3), 1.0, None) is cpu
    assert backends.kernels_for() is cpu


def test_kernels_for_cupy_arrays(gpu):
    assert backends.kernels_for(gpu.zeros(2)) is cuda
    with pytest.raises(TypeError, match="mixed numpy and cupy"):
        backends.kernels_for(np.zeros(2), gpu.zeros(2))


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------


def out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def im2col_loops(x, KH, KW, stride, pad):
    """Reference layout: cols[(c*KH + kh)*KW + kw, (n*OH + oh)*OW + ow]."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.zeros((C * KH * KW, N * OH * OW), dtype=x.dtype)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for n in range(N):
                    for oh in range(OH):
                        for ow in range(OW):
                            cols[(c * KH + kh) * KW + kw, (n * OH + oh) * OW + ow] = \
                                xpad[n, c, oh * stride + kh, ow * stride + kw]
    return cols


def col2im_loops(cols, x_shape, KH, KW, stride, pad):
    """The adjoint of im2col_loops: each column entry added to the pixel it came from."""
    N, C, H, W = x_shape
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    dxpad = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                for n in range(N):
                    for oh in range(OH):
                        for ow in range(OW):
                            dxpad[n, c, oh * stride + kh, ow * stride + kw] += \
                                cols[(c * KH + kh) * KW + kw, (n * OH + oh) * OW + ow]
    return dxpad[:, :, pad:pad + H, pad:pad + W]


def _tiling(K, stride, pad, out):
    """An input size whose windows tile with `out` outputs (at least 2)."""
    while K - 2 * pad + stride * (out - 1) < 2:
        out += 1
    return K - 2 * pad + stride * (out - 1)


def _conv_matrix():
    """Kernels 3x3, 3x2, 2x3 and 1x1, strides 1-3, pads 0-2; H != W; every case tiles."""
    cases = []
    for KH, KW in [(3, 3), (3, 2), (2, 3), (1, 1)]:
        for stride in (1, 2, 3):
            for pad in (0, 1, 2):
                H, W = _tiling(KH, stride, pad, 3), _tiling(KW, stride, pad, 4)
                if W == H:
                    W += stride
                cases.append(((2, 3, H, W), (4, 3, KH, KW), stride, pad))
    return cases


# (x shape, w shape, stride, pad): the shape matrix, then the layer tests'
# hand-picked cases (batches of 3 and 4, other channel and filter counts).
CONV_CASES = _conv_matrix() + cases.CONV_CASES + [((2, 3, 7, 8), (4, 3, 3, 2), 2, 1)]
CONV_IDS = cases.conv_ids(CONV_CASES)

# The layer tests' pooling cases, and more of each kind.
POOL_CASES = cases.POOL_CASES + [
    ((2, 3, 8, 10), 2, 2, 2),
    ((2, 3, 9, 11), 3, 3, 2),
    ((2, 3, 5, 7), 2, 3, 1),
    ((2, 3, 12, 14), 3, 2, 3),
    ((2, 3, 4, 5), 1, 1, 1),
    ((2, 3, 5, 6), 2, 2, 1),
]
POOL_IDS = cases.pool_ids(POOL_CASES)


def conv_inputs(xs, ws, stride, pad, seed=0):
    rng = np.random.RandomState(seed)
    OH, OW = out_size(xs[2], ws[2], stride, pad), out_size(xs[3], ws[3], stride, pad)
    return (rng.randn(*xs), rng.randn(*ws), rng.randn(ws[0]),
            rng.randn(xs[0], ws[0], OH, OW), OH, OW)


@functools.lru_cache(maxsize=None)
def naive_conv(case):
    """(out, dx, dw, db) of the naive layers in float64."""
    xs, ws, stride, pad = case
    x, w, b, dout, _, _ = conv_inputs(xs, ws, stride, pad)
    out, cache = layers.conv_forward_naive(x, w, b, {"stride": stride, "pad": pad})
    return (out,) + layers.conv_backward_naive(dout, cache)


def conv_tol(dtype):
    return dict(atol=1e-4 if dtype == np.float32 else 1e-10)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_im2col_and_col2im_match_the_loops(impl, case, dtype):
    xs, ws, stride, pad = case
    x, _, _, _, OH, OW = conv_inputs(xs, ws, stride, pad)
    x = x.astype(dtype)
    geometry = (ws[2], ws[3], stride, pad, OH, OW)
    cols = impl.ops.im2col(impl.put(x), *geometry)
    assert isinstance(cols, impl.xp.ndarray) and cols.dtype == dtype
    # im2col copies values: exactly equal.
    np.testing.assert_array_equal(host(cols), im2col_loops(x, ws[2], ws[3], stride, pad))
    c = np.random.RandomState(1).randn(*cols.shape).astype(dtype)
    dx = impl.ops.col2im(impl.put(c), xs, *geometry)
    assert isinstance(dx, impl.xp.ndarray) and dx.shape == xs and dx.dtype == dtype
    assert_close(dx, col2im_loops(c.astype(np.float64), xs, ws[2], ws[3], stride, pad), dtype)


# The last case's windows do not reach the right edge (floor division): the
# kernels take it, the layers refuse it.
ADJOINT_CASES = CONV_CASES + [((2, 3, 7, 5), (4, 3, 3, 2), 2, 2)]


@pytest.mark.parametrize("case", ADJOINT_CASES)
def test_col2im_is_the_adjoint_of_im2col(impl, case):
    # <im2col(x), c> == <x, col2im(c)> for random x and c.
    xs, ws, stride, pad = case
    rng = np.random.RandomState(6)
    x = rng.randn(*xs)
    _, _, _, _, OH, OW = conv_inputs(xs, ws, stride, pad)
    geometry = (ws[2], ws[3], stride, pad, OH, OW)
    c = rng.randn(xs[1] * ws[2] * ws[3], xs[0] * OH * OW)
    lhs = float((host(impl.ops.im2col(impl.put(x), *geometry)) * c).sum())
    rhs = float((x * host(impl.ops.col2im(impl.put(c), xs, *geometry))).sum())
    assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1)


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_the_naive_layers(impl, case, dtype):
    xs, ws, stride, pad = case
    x, w, b, dout, OH, OW = conv_inputs(xs, ws, stride, pad)
    X, Wt, B, D = (impl.put(a, dtype) for a in (x, w, b, dout))
    out = impl.ops.conv_forward(X, Wt, B, stride, pad, OH, OW)
    dx, dw, db = impl.ops.conv_backward(D, X, Wt, stride, pad, OH, OW)
    for got, ref in zip((out, dx, dw, db), naive_conv(case)):
        assert isinstance(got, impl.xp.ndarray)
        assert got.dtype == dtype and got.shape == ref.shape
        assert_close(got, ref, dtype, **conv_tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_conv_backward_without_dx(impl, dtype):
    x, w, _, dout, OH, OW = conv_inputs((3, 2, 6, 5), (4, 2, 3, 3), 1, 1, seed=8)
    X, Wt, D = (impl.put(a, dtype) for a in (x, w, dout))
    dx, dw, db = impl.ops.conv_backward(D, X, Wt, 1, 1, OH, OW)
    none, dw2, db2 = impl.ops.conv_backward(D, X, Wt, 1, 1, OH, OW, compute_dx=False)
    assert none is None and dx is not None
    np.testing.assert_array_equal(host(dw2), host(dw))
    np.testing.assert_array_equal(host(db2), host(db))


def _batching_knob(impl):
    """The module constant that splits a convolution's batch, and a small value for it."""
    if impl.name == "compiled":
        return cpu.compiled, "PARTIAL_ELEMENTS", 3 * 2 * (2 * 3 * 2 + 1)  # partials of 2 images
    if impl.name == "fallback":
        return numpy_kernels, "CHUNK_ELEMENTS", 2 * 2 * 3 * 2 * 6 * 8    # chunks of 2 images
    return cuda, "CHUNK_ELEMENTS", 2 * 2 * 3 * 2 * 6 * 8


def test_batches_in_pieces_match_one_piece(impl, monkeypatch):
    # 5 images in pieces of 2, 2 and 1 give what one piece gives.
    x, w, b, dout, OH, OW = conv_inputs((5, 2, 6, 7), (3, 2, 3, 2), 1, 1)
    X, Wt, B, D = (impl.put(a) for a in (x, w, b, dout))
    whole = (impl.ops.conv_forward(X, Wt, B, 1, 1, OH, OW),) + \
        impl.ops.conv_backward(D, X, Wt, 1, 1, OH, OW)
    module, knob, small = _batching_knob(impl)
    monkeypatch.setattr(module, knob, small)
    if module is not cpu.compiled:
        assert numpy_kernels.chunks(5, 2 * 3 * 2 * OH * OW, small) == [(0, 2), (2, 4), (4, 5)]
    pieces = (impl.ops.conv_forward(X, Wt, B, 1, 1, OH, OW),) + \
        impl.ops.conv_backward(D, X, Wt, 1, 1, OH, OW)
    for got, expected in zip(pieces, whole):
        assert_close(got, expected, np.float64)


@pytest.mark.parametrize("shape,kernel,stride,pad", [
    ((2, 2, 5, 4), (3, 3, 2), 1, 1),
    ((2, 2, 8, 5), (2, 2, 3), 2, 1),
])
def test_conv_numerical_gradients_float64(impl, shape, kernel, stride, pad):
    rng = np.random.RandomState(4)
    F, KH, KW = kernel
    N, C, H, W = shape
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    x, w, b = (impl.put(a) for a in (rng.randn(*shape), rng.randn(F, C, KH, KW), rng.randn(F)))
    dout = impl.put(rng.randn(N, F, OH, OW))
    dx, dw, db = impl.ops.conv_backward(dout, x, w, stride, pad, OH, OW)
    fwd = lambda x, w, b: impl.ops.conv_forward(x, w, b, stride, pad, OH, OW)  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: fwd(v, w, b), x, dout)) < 1e-6
    assert rel_error(dw, eval_numerical_gradient_array(lambda v: fwd(x, v, b), w, dout)) < 1e-6
    assert rel_error(db, eval_numerical_gradient_array(lambda v: fwd(x, w, v), b, dout)) < 1e-6


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


def window_argmax(x, ph, pw, stride):
    """np.argmax over each window in row-major order: the reference tie rule."""
    N, C, H, W = x.shape
    OH, OW = (H - ph) // stride + 1, (W - pw) // stride + 1
    am = np.empty((N, C, OH, OW), dtype=np.int64)
    for oh in range(OH):
        for ow in range(OW):
            win = x[:, :, oh * stride:oh * stride + ph, ow * stride:ow * stride + pw]
            am[:, :, oh, ow] = win.reshape(N, C, -1).argmax(axis=-1)
    return am


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_maxpool_matches_the_naive_layers(impl, case, dtype):
    xs, ph, pw, stride = case
    rng = np.random.RandomState(3)
    x = rng.randn(*xs)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out_ref, cache = layers.max_pool_forward_naive(x, pool_param)
    OH, OW = out_ref.shape[2:]
    dout = rng.randn(*out_ref.shape)
    out, argmax = impl.ops.maxpool_forward(impl.put(x, dtype), ph, pw, stride, OH, OW)
    assert out.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(host(out), out_ref.astype(dtype))
    np.testing.assert_array_equal(host(argmax), window_argmax(x.astype(dtype), ph, pw, stride))
    dx = impl.ops.maxpool_backward(impl.put(dout, dtype), argmax, xs, ph, pw, stride, OH, OW)
    assert isinstance(dx, impl.xp.ndarray) and dx.dtype == dtype and dx.shape == xs
    assert_close(dx, layers.max_pool_backward_naive(dout, cache), dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("ph,pw,stride", [(2, 2, 2), (3, 2, 1)])
def test_maxpool_ties_infinities_and_nan_follow_np_argmax(impl, dtype, ph, pw, stride):
    # Few distinct values (ties everywhere), infinities and NaNs, on widths
    # that give the vectorized 2x2 rows every tail length: the pooled value
    # is the window's np.max (NaN when it holds one) and the argmax np.argmax
    # (the first maximum, the first NaN before anything else).
    rng = np.random.RandomState(6)
    for W in (2, 6, 8, 10, 14, 18):
        x = rng.randint(-2, 3, size=(2, 3, 6, W)).astype(dtype)
        for value, share in ((np.nan, 0.1), (np.inf, 0.05), (-np.inf, 0.05)):
            x[rng.rand(*x.shape) < share] = value
        OH, OW = (6 - ph) // stride + 1, (W - pw) // stride + 1
        out, argmax = impl.ops.maxpool_forward(impl.put(x), ph, pw, stride, OH, OW)
        ref_argmax = window_argmax(x, ph, pw, stride)
        np.testing.assert_array_equal(host(argmax), ref_argmax)
        windows = np.stack([x[:, :, i:i + stride * (OH - 1) + 1:stride,
                              j:j + stride * (OW - 1) + 1:stride]
                            for i in range(ph) for j in range(pw)], axis=-1)
        ref_out = np.take_along_axis(windows, ref_argmax[..., None], axis=-1)[..., 0]
        np.testing.assert_array_equal(host(out), ref_out)
        assert np.isnan(host(out)).any()


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_maxpool_backward_2x2_rows_every_width_and_cut_windows(impl, dtype):
    # 2x2/2 windows tiling planes of every width the vectorized rows see
    # (with tails), the argmax holding -1 (a window the ReLU cut) and an
    # index past the window: both route nothing. Reference: the gradient
    # scattered by hand.
    rng = np.random.RandomState(8)
    for W in (2, 4, 6, 8, 10, 14, 16):
        OH, OW = 3, W // 2
        dout = rng.randn(2, 3, OH, OW).astype(dtype)
        argmax = rng.randint(0, 4, size=dout.shape).astype(np.int32)
        argmax[rng.rand(*argmax.shape) < 0.2] = -1
        argmax[rng.rand(*argmax.shape) < 0.05] = 7
        expected = np.zeros((2, 3, 2 * OH, W), dtype=dtype)
        for idx in np.ndindex(*dout.shape):
            k = argmax[idx]
            if 0 <= k < 4:
                expected[idx[0], idx[1], 2 * idx[2] + k // 2, 2 * idx[3] + k % 2] = dout[idx]
        dx = impl.ops.maxpool_backward(impl.put(dout), impl.put(argmax, np.int32),
                                       expected.shape, 2, 2, 2, OH, OW)
        np.testing.assert_array_equal(host(dx), expected)


def test_maxpool_numerical_gradient_float64(impl):
    rng = np.random.RandomState(5)
    x = impl.put(rng.randn(2, 2, 6, 5))   # overlapping 3x2 windows, stride 1
    dout = impl.put(rng.randn(2, 2, 4, 4))
    _, argmax = impl.ops.maxpool_forward(x, 3, 2, 1, 4, 4)
    dx = impl.ops.maxpool_backward(dout, argmax, x.shape, 3, 2, 1, 4, 4)
    dx_num = eval_numerical_gradient_array(
        lambda v: impl.ops.maxpool_forward(v, 3, 2, 1, 4, 4)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-7


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_maxpool_tie_rule_first_maximum_takes_all(impl, dtype):
    x = np.zeros((2, 2, 4, 6), dtype=dtype)           # every window is a tie
    x[1, 1, 0, 1] = x[1, 1, 1, 0] = 5                 # window (0, 0): two maxima
    out, argmax = impl.ops.maxpool_forward(impl.put(x), 2, 2, 2, 2, 3)
    a = host(argmax)
    assert a[1, 1, 0, 0] == 1                         # (0, 1) comes before (1, 0)
    others = np.ones(a.shape, dtype=bool)
    others[1, 1, 0, 0] = False
    assert (a[others] == 0).all()                     # all-equal windows: the first
    dout = np.ones((2, 2, 2, 3), dtype=dtype)
    dx = host(impl.ops.maxpool_backward(impl.put(dout), argmax, x.shape, 2, 2, 2, 2, 3))
    assert dx.sum() == dout.sum()                     # each window routes to one pixel
    assert dx[1, 1, 0, 1] == 1 and dx[1, 1, 1, 0] == 0
    assert dx[0, 0, 0, 0] == 1 and dx[0, 0, 0, 1] == 0 and dx[0, 0, 1, 0] == 0
    # Overlapping windows, all equal: each window's gradient goes to its own
    # top-left pixel.
    _, argmax = impl.ops.maxpool_forward(impl.put(x), 2, 2, 1, 3, 5)
    dx = host(impl.ops.maxpool_backward(impl.put(np.ones((2, 2, 3, 5), dtype=dtype)), argmax,
                                        x.shape, 2, 2, 1, 3, 5))
    assert (dx[0, 0, :3, :5] == 1).all()
    assert dx[0, 0, 3].sum() == 0 and dx[0, 0, :, 5].sum() == 0


# ---------------------------------------------------------------------------
# Layouts, empty batches, float64 precision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_non_contiguous_inputs(impl, dtype):
    rng = np.random.RandomState(3)
    bases = [rng.randn(2, 3, 8, 12), rng.randn(3, 3, 4, 3), rng.randn(8),
             rng.randn(4, 2, 8, 6), rng.randn(2, 3, 4, 3), rng.randn(6, 8, 3, 2)]
    # Reversed, strided and transposed views, on the host and on the device.
    views = [lambda a: a[:, :, ::-1, ::2],             # x: (2, 3, 8, 6)
             lambda a: a.transpose(2, 3, 0, 1),        # w: (4, 3, 3, 3)
             lambda a: a[::2],                         # b: (4,)
             lambda a: a.transpose(1, 0, 2, 3),        # dout: (2, 4, 8, 6)
             lambda a: a[:, :, :, ::-1],               # pool dout: (2, 3, 4, 3)
             lambda a: a.transpose(3, 2, 1, 0)]        # x2: (2, 3, 8, 6), reversed strides
    host_views = [view(a.astype(dtype)) for view, a in zip(views, bases)]
    dev_views = [view(impl.put(a, dtype)) for view, a in zip(views, bases)]
    assert not any(a.flags.c_contiguous for a in dev_views)
    x, w, b, dout, dp, x2 = (a.astype(np.float64) for a in host_views)
    X, Wt, B, D, DP, X2 = dev_views
    conv_param = {"stride": 1, "pad": 1}
    for xh, xd in ((x, X), (x2, X2)):
        out_ref, cache = layers.conv_forward_naive(xh, w, b, conv_param)
        assert_close(impl.ops.conv_forward(xd, Wt, B, 1, 1, 8, 6), out_ref, dtype,
                     **conv_tol(dtype))
        for got, ref in zip(impl.ops.conv_backward(D, xd, Wt, 1, 1, 8, 6),
                            layers.conv_backward_naive(dout, cache)):
            assert_close(got, ref, dtype, **conv_tol(dtype))
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        pooled_ref, pcache = layers.max_pool_forward_naive(xh, pool_param)
        pooled, argmax = impl.ops.maxpool_forward(xd, 2, 2, 2, 4, 3)
        np.testing.assert_array_equal(host(pooled), pooled_ref.astype(dtype))
        assert_close(impl.ops.maxpool_backward(DP, argmax, xd.shape, 2, 2, 2, 4, 3),
                     layers.max_pool_backward_naive(dp, pcache), dtype)
        overlapping = {"pool_height": 2, "pool_width": 2, "stride": 1}
        pooled_ref, _ = layers.max_pool_forward_naive(xh, overlapping)
        pooled, argmax = impl.ops.maxpool_forward(xd, 2, 2, 1, 7, 5)
        np.testing.assert_array_equal(host(pooled), pooled_ref.astype(dtype))
        np.testing.assert_array_equal(host(argmax), window_argmax(xh.astype(dtype), 2, 2, 1))
        cols = impl.ops.im2col(xd, 3, 3, 1, 1, 8, 6)
        np.testing.assert_array_equal(host(cols), im2col_loops(xh, 3, 3, 1, 1).astype(dtype))
        assert_close(impl.ops.col2im(cols.T.copy().T, xd.shape, 3, 3, 1, 1, 8, 6),
                     col2im_loops(host(cols).astype(np.float64), xd.shape, 3, 3, 1, 1), dtype)


def test_empty_batches(impl):
    x = impl.put(np.ones((0, 2, 4, 4)))
    out, argmax = impl.ops.maxpool_forward(x, 2, 2, 2, 2, 2)
    assert out.shape == (0, 2, 2, 2) and argmax.shape == (0, 2, 2, 2)
    assert impl.ops.maxpool_backward(impl.put(np.ones((0, 2, 2, 2))), argmax, x.shape,
                                     2, 2, 2, 2, 2).shape == (0, 2, 4, 4)
    w = impl.put(np.ones((3, 2, 3, 3)))
    assert impl.ops.conv_forward(x, w, impl.put(np.ones(3)), 1, 1, 4, 4).shape == (0, 3, 4, 4)
    dx, dw, db = impl.ops.conv_backward(impl.put(np.ones((0, 3, 4, 4))), x, w, 1, 1, 4, 4)
    assert dx.shape == (0, 2, 4, 4) and dw.shape == (3, 2, 3, 3) and db.shape == (3,)
    assert float(abs(dw).sum()) == 0 and float(abs(db).sum()) == 0
    assert impl.ops.im2col(x, 3, 3, 1, 1, 4, 4).shape == (18, 0)


def test_float64_kernels_keep_float64_precision(impl):
    """Inputs that differ only past float32's precision: a float local or
    accumulator in a float64 kernel would show at the 1e-9 level."""
    rng = np.random.RandomState(11)
    fine = lambda *shape: 1 + 1e-9 * rng.rand(*shape)  # noqa: E731
    tight = dict(rtol=1e-12, atol=1e-14)
    x, w, b = fine(2, 2, 5, 6), fine(3, 2, 3, 3), fine(3)
    cols = fine(2 * 9, 2 * 5 * 6)
    assert_close(impl.ops.col2im(impl.put(cols), x.shape, 3, 3, 1, 1, 5, 6),
                 col2im_loops(cols, x.shape, 3, 3, 1, 1), **tight)
    out_ref, _ = layers.conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})
    assert_close(impl.ops.conv_forward(impl.put(x), impl.put(w), impl.put(b), 1, 1, 5, 6),
                 out_ref, **tight)
    dout = fine(2, 2, 4, 5)
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 1}
    _, cache = layers.max_pool_forward_naive(x, pool_param)
    _, argmax = impl.ops.maxpool_forward(impl.put(x), 2, 2, 1, 4, 5)
    assert_close(impl.ops.maxpool_backward(impl.put(dout), argmax, x.shape, 2, 2, 1, 4, 5),
                 layers.max_pool_backward_naive(dout, cache), **tight)
    wv, dw, m, v = fine(4, 5), 1e-9 * fine(4, 5), fine(4, 5), fine(4, 5)
    assert_close(impl.ops.sgd(impl.put(wv), impl.put(dw), 0.5), wv - 0.5 * dw, **tight)
    got = impl.ops.sgd_momentum(impl.put(wv), impl.put(dw), impl.put(m), 0.5, 0.9)
    assert_close(got[1], 0.9 * m - 0.5 * dw, **tight)
    got = impl.ops.rmsprop(impl.put(wv), impl.put(dw), impl.put(v), 0.5, 0.9, 1e-8)
    assert_close(got[1], 0.9 * v + 0.1 * dw * dw, **tight)
    got = impl.ops.adam(impl.put(wv), impl.put(dw), impl.put(m), impl.put(v),
                        0.9, 0.999, 0.5, 1e-8)
    assert_close(got[1], 0.9 * m + 0.1 * dw, **tight)
    assert_close(got[0], wv - 0.5 * host(got[1]) / (np.sqrt(host(got[2])) + 1e-8), **tight)
    got = impl.ops.adamw(impl.put(wv), impl.put(dw), impl.put(m), impl.put(v),
                         0.9, 0.999, 0.5, 1e-8, 1 - 1e-9)
    assert_close(got[0], (1 - 1e-9) * wv - 0.5 * host(got[1]) / (np.sqrt(host(got[2])) + 1e-8),
                 **tight)
    scores, y = fine(3, 4), np.array([0, 3, 1])
    loss, dscores = impl.ops.softmax_loss(impl.put(scores), impl.put(y))
    e_loss, e_dscores = softmax_reference(scores, y)
    assert_close(loss, e_loss, **tight)
    assert_close(dscores, e_dscores, **tight)


# ---------------------------------------------------------------------------
# Affine product, softmax loss, L2 terms
# ---------------------------------------------------------------------------


def softmax_reference(x, y):
    """Loss and gradient of the mean softmax cross-entropy, in float64."""
    x = x.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    N = x.shape[0]
    loss = -np.log(p[np.arange(N), y]).sum() / N
    dx = p.copy()
    dx[np.arange(N), y] -= 1
    return loss, dx / N


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_softmax_loss(impl, dtype, label_dtype):
    rng = np.random.RandomState(8)
    x = (rng.randn(13, 7) * 3).astype(dtype)
    y = rng.randint(7, size=13).astype(label_dtype)
    loss, dx = impl.ops.softmax_loss(impl.put(x), impl.put(y))
    e_loss, e_dx = softmax_reference(x, y)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(loss, e_loss, dtype)
    assert_close(dx, e_dx, dtype)
    x[0, 2] = 1e4 if dtype == np.float64 else 1e30   # huge score: stays finite
    loss, dx = impl.ops.softmax_loss(impl.put(x), impl.put(y))
    assert np.isfinite(float(loss)) and np.isfinite(host(dx)).all()


# (M, K, N): tiny, odd sizes, and one past the compiled kernels' MATMUL_MIN_WORK.
MATMUL_SHAPES = [(1, 1, 1), (7, 13, 5), (50, 200, 60)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=["x".join(map(str, s)) for s in MATMUL_SHAPES])
def test_matmul(impl, dtype, shape):
    # a @ b on every layout; + beta * c with c left as it was; beta 0 ignores
    # c (NaNs included).
    M, K, N = shape
    rng = np.random.RandomState(10)
    a, b, c = rng.randn(M, K), rng.randn(K, N), rng.randn(M, N)
    tol = dict(atol=1e-4 if dtype == np.float32 else 1e-11)
    C, nan = impl.put(c, dtype), impl.put(np.full((M, N), np.nan), dtype)
    for A, B in ((impl.put(a, dtype), impl.put(b, dtype)),
                 (impl.put(a.T, dtype).T, impl.put(b, dtype)),        # a transposed view
                 (impl.put(a, dtype), impl.put(np.repeat(b, 2, axis=1), dtype)[:, ::2])):
        got = impl.ops.matmul(A, B)
        assert isinstance(got, impl.xp.ndarray) and got.dtype == dtype and got.shape == (M, N)
        assert_close(got, a @ b, dtype, **tol)
        assert_close(impl.ops.matmul(A, B, C, 0.25), a @ b + 0.25 * c, dtype, **tol)
        assert_close(impl.ops.matmul(A, B, nan, 0.0), a @ b, dtype, **tol)
    assert_close(C, c, dtype, atol=0)


# (N, D, M): tiny; small products (numpy's @); blocks of 64 rows of w with a
# partial last block (the compiled sweep); N * M too large for 8-row blocks
# (two products on the CPU).
AFFINE_SHAPES = [(1, 1, 1), (7, 13, 5), (50, 600, 40), (200, 300, 400)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", AFFINE_SHAPES, ids=["x".join(map(str, s)) for s in AFFINE_SHAPES])
def test_affine_backward(impl, dtype, shape):
    N, D, M = shape
    rng = np.random.RandomState(13)
    x, w, dout = rng.randn(N, D), rng.randn(D, M), rng.randn(N, M)
    tol = dict(atol=1e-3 if dtype == np.float32 else 1e-10)
    for reg in (0.0, 0.3):
        X, Wt, Dout = impl.put(x, dtype), impl.put(w, dtype), impl.put(dout, dtype)
        dx, dw = impl.ops.affine_backward(X, Wt, Dout, reg, True)
        assert isinstance(dx, impl.xp.ndarray) and dx.dtype == dtype and dx.shape == (N, D)
        assert isinstance(dw, impl.xp.ndarray) and dw.dtype == dtype and dw.shape == (D, M)
        assert_close(dx, dout @ w.T, dtype, **tol)
        assert_close(dw, x.T @ dout + reg * w, dtype, **tol)
        for given, kept in ((X, x), (Wt, w), (Dout, dout)):
            assert_close(given, kept, dtype, atol=0)  # inputs are not modified
        none, dw_only = impl.ops.affine_backward(X, Wt, Dout, reg, False)
        assert none is None
        np.testing.assert_array_equal(host(dw_only), host(dw))
        # w_sumsq: the same dx and dw, and sum(w**2) of w as given (rounded)
        dx_s, dw_s, sumsq = impl.ops.affine_backward(X, Wt, Dout, reg, True, True)
        np.testing.assert_array_equal(host(dx_s), host(dx))
        np.testing.assert_array_equal(host(dw_s), host(dw))
        w_given = w.astype(dtype).astype(np.float64)
        assert host(sumsq).dtype == dtype and host(sumsq).shape == ()
        np.testing.assert_allclose(float(host(sumsq)), float((w_given ** 2).sum()),
                                   rtol=1e-6 if dtype == np.float32 else 1e-13)
    # strided and transposed inputs give the same values
    Xt = impl.put(np.asfortranarray(x), dtype)
    Wt2 = impl.put(np.repeat(w, 2, axis=1), dtype)[:, ::2]
    dx, dw = impl.ops.affine_backward(Xt, Wt2, impl.put(dout, dtype), 0.5, True)
    assert_close(dx, dout @ w.T, dtype, **tol)
    assert_close(dw, x.T @ dout + 0.5 * w, dtype, **tol)


def test_affine_backward_bad_input(impl):
    x, w, dout = impl.put(np.ones((4, 6))), impl.put(np.ones((6, 3))), impl.put(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"w must have shape \(D, M\) with D = 6.*got \(5, 3\)"):
        impl.ops.affine_backward(x, impl.put(np.ones((5, 3))), dout, 0.0, True)
    with pytest.raises(ValueError, match=r"dout must have shape \(N, M\) = \(4, 3\).*got \(4, 2\)"):
        impl.ops.affine_backward(x, w, impl.put(np.ones((4, 2))), 0.0, True)
    with pytest.raises(ValueError, match=r"x must be a 2-D array"):
        impl.ops.affine_backward(impl.put(np.ones((4, 2, 3))), w, dout, 0.0, True)
    with pytest.raises(ValueError, match="reg must be a finite number >= 0, got -0.5"):
        impl.ops.affine_backward(x, w, dout, -0.5, True)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sum_of_squares_and_axpy(impl, dtype):
    rng = np.random.RandomState(7)
    for shape in [(1,), (7,), (3, 1001), (37, 41, 3), (0, 4)]:
        x = rng.randn(*shape).astype(dtype)
        got = impl.ops.sum_of_squares(impl.put(x))
        np.testing.assert_allclose(float(got), (x.astype(np.float64) ** 2).sum(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
        y0 = rng.randn(*shape).astype(dtype)
        y = impl.put(y0)
        assert impl.ops.axpy(0.3, impl.put(x), y) is y     # in place
        assert_close(y, y0.astype(np.float64) + 0.3 * x, dtype)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_relu_backward(impl, dtype):
    # dout where x > 0, else +0.0: also where x is NaN, -0.0 or 0, and where
    # dout is NaN or inf at a unit that gets no gradient; sizes with and
    # without a vector tail, several of the compiled kernels' chunks.
    rng = np.random.RandomState(8)
    for shape in [(1,), (7,), (3, 1001), (2, 3, 5, 7), (70000,), (0, 4)]:
        x = rng.randn(*shape).astype(dtype)
        dout = rng.randn(*shape).astype(dtype)
        flat_x, flat_d = x.reshape(-1), dout.reshape(-1)
        if flat_x.size >= 7:
            flat_x[:4] = [np.nan, -0.0, 0.0, -1.0]
            flat_d[:4] = [1.0, 2.0, 3.0, np.nan]
            flat_x[4:7] = [-2.0, -3.0, 5.0]
            flat_d[4:7] = [np.inf, -4.0, np.nan]   # a live unit passes NaN on
        expected = np.where(x > 0, dout, 0).astype(dtype)
        got = host(impl.ops.relu_backward(impl.put(dout), impl.put(x)))
        assert got.dtype == dtype and got.shape == shape
        # bit for bit: +0.0, never -0.0, where the unit gets no gradient
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
    with pytest.raises(ValueError, match="x has shape"):
        impl.ops.relu_backward(impl.put(np.ones((2, 3), dtype)), impl.put(np.ones((3, 2), dtype)))


def test_relu_backward_of_strided_and_mixed_arrays(impl):
    # Views, float64 inputs to float32 gradients and other dtypes take the
    # formula on the CPU: dout's dtype, the same values.
    rng = np.random.RandomState(9)
    x = rng.randn(6, 10)
    dout = rng.randn(6, 10).astype(np.float32)
    got = host(impl.ops.relu_backward(impl.put(dout)[:, ::2], impl.put(x)[:, ::2]))
    np.testing.assert_array_equal(got, np.where(x[:, ::2] > 0, dout[:, ::2], 0))
    assert got.dtype == np.float32
    got = host(impl.ops.relu_backward(impl.put(dout), impl.put(x)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.where(x > 0, dout, 0))
    # other dtypes keep theirs (the formula): integers, float16
    got = host(impl.ops.relu_backward(impl.put(np.array([1, -2, 3], np.int64)),
                                      impl.put(np.array([1.0, 2.0, -1.0]))))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [1, -2, 0])
    half = host(impl.ops.relu_backward(impl.put(dout, np.float16), impl.put(x, np.float16)))
    assert half.dtype == np.float16


# ---------------------------------------------------------------------------
# Update rules: one state convention
# ---------------------------------------------------------------------------


def rule_case(name, rng):
    """(state arrays, scalars, reference function) of update rule `name`, in float64.

    The reference takes (w, dw, *state) and returns (next_w, *next_state)."""
    if name == "sgd":
        return (), (0.05,), lambda w, dw: (w - 0.05 * dw,)
    if name == "sgd_momentum":
        return (rng.randn(7, 9),), (0.05, 0.8), lambda w, dw, v: (
            w + (0.8 * v - 0.05 * dw), 0.8 * v - 0.05 * dw)
    if name == "rmsprop":
        def rmsprop(w, dw, cache):
            cache = 0.9 * cache + 0.1 * dw * dw
            return w - 0.01 * dw / (np.sqrt(cache) + 1e-8), cache
        return (rng.rand(7, 9),), (0.01, 0.9, 1e-8), rmsprop
    # Adam and AdamW at step t = 5, the bias correction folded in as
    # xdl.optim does; AdamW's weights shrink by 1 - lr * weight_decay.
    t, lr = 5, 0.01
    step = lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    eps_hat = 1e-8 * math.sqrt(1 - 0.999 ** t)
    shrink = 1 - lr * 0.1 if name == "adamw" else 1

    def adam(w, dw, m, v):
        m = 0.9 * m + 0.1 * dw
        v = 0.999 * v + 0.001 * dw * dw
        return shrink * w - step * m / (np.sqrt(v) + eps_hat), m, v
    scalars = (0.9, 0.999, step, eps_hat) + ((shrink,) if name == "adamw" else ())
    return (rng.randn(7, 9), rng.rand(7, 9)), scalars, adam


RULE_NAMES = ["sgd", "sgd_momentum", "rmsprop", "adam", "adamw"]


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_update_rules_match_their_formulas_and_update_state_in_place(impl, rule, dtype):
    rng = np.random.RandomState(7)
    w, dw = rng.randn(7, 9), rng.randn(7, 9)
    state, scalars, reference = rule_case(rule, rng)
    W, DW = impl.put(w, dtype), impl.put(dw, dtype)
    S = [impl.put(s, dtype) for s in state]
    got = getattr(impl.ops, rule)(W, DW, *S, *scalars)
    got = got if isinstance(got, tuple) else (got,)
    expected = reference(*(a.astype(dtype).astype(np.float64) for a in (w, dw) + state))
    assert len(got) == 1 + len(state)
    for g, s in zip(got[1:], S):
        assert g is s                       # the state given, updated in place
    assert got[0] is not W and isinstance(got[0], impl.xp.ndarray) and got[0].dtype == dtype
    for g, e in zip(got, expected):
        assert_close(g, e, dtype)
    np.testing.assert_array_equal(host(W), w.astype(dtype))    # w and dw are only read
    np.testing.assert_array_equal(host(DW), dw.astype(dtype))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_update_rules_take_strided_state_and_other_float_types(impl, rule):
    # A strided state (a column slice) and float16 arrays: the formulas run,
    # still in place, still right.
    rng = np.random.RandomState(9)
    w, dw = rng.randn(7, 9), rng.randn(7, 9)
    state, scalars, reference = rule_case(rule, rng)
    expected = reference(w, dw, *state)
    bases = [impl.put(np.repeat(s, 2, axis=1)) for s in state]
    S = [base[:, ::2] for base in bases]
    got = getattr(impl.ops, rule)(impl.put(w), impl.put(dw), *S, *scalars)
    got = got if isinstance(got, tuple) else (got,)
    for g, s, e in zip(got[1:], S, expected[1:]):
        assert g is s
        assert_close(s, e, np.float64)
    assert_close(got[0], expected[0], np.float64)
    half = [impl.put(a, np.float16) for a in (w, dw) + state]
    got = getattr(impl.ops, rule)(*half, *scalars)
    got = got if isinstance(got, tuple) else (got,)
    assert all(g.dtype == np.float16 for g in got)
    np.testing.assert_allclose(host(got[0]).astype(np.float64), expected[0], rtol=2e-2, atol=2e-2)


STATE_NAMES = {"sgd": (), "sgd_momentum": ("velocity",), "rmsprop": ("cache",),
               "adam": ("m", "v"), "adamw": ("m", "v")}


def _run_rule(impl, rule, w, dw, state, scalars, dtype, out_kind):
    """Run `rule` on fresh device copies; out_kind None, 'w', 'other' or 'strided'."""
    W, DW = impl.put(w, dtype), impl.put(dw, dtype)
    S = [impl.put(s, dtype) for s in state]
    out = {None: None, "w": W, "other": impl.put(np.full(w.shape, 7.0), dtype),
           "strided": impl.put(np.full((w.shape[0], 2 * w.shape[1]), 7.0), dtype)[:, ::2]
           }[out_kind]
    got = getattr(impl.ops, rule)(W, DW, *S, *scalars, out=out)
    got = got if isinstance(got, tuple) else (got,)
    return W, out, got, S


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_update_rules_write_next_w_into_out(impl, rule, dtype):
    # out=w is the update in place: the bits of a new next_w, in w. Another
    # array receives next_w and is returned; w is then left as it was.
    rng = np.random.RandomState(11)
    w, dw = rng.randn(7, 9), rng.randn(7, 9)
    state, scalars, _ = rule_case(rule, rng)
    _, _, new, new_state = _run_rule(impl, rule, w, dw, state, scalars, dtype, None)
    W, out, got, S = _run_rule(impl, rule, w, dw, state, scalars, dtype, "w")
    assert got[0] is W
    np.testing.assert_array_equal(host(W), host(new[0]))
    for s, g, e in zip(S, got[1:], new_state):
        assert g is s
        np.testing.assert_array_equal(host(s), host(e))
    W, out, got, _ = _run_rule(impl, rule, w, dw, state, scalars, dtype, "other")
    assert got[0] is out
    np.testing.assert_array_equal(host(out), host(new[0]))
    np.testing.assert_array_equal(host(W), w.astype(dtype))
    # A strided out (which the fused kernels do not take) gets the formula's values.
    W, out, got, _ = _run_rule(impl, rule, w, dw, state, scalars, dtype, "strided")
    assert got[0] is out
    assert_close(out, host(new[0]).astype(np.float64), dtype)
    np.testing.assert_array_equal(host(W), w.astype(dtype))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_update_rules_in_place_on_a_strided_w(impl, rule):
    # w a column slice given as its own out: the formula updates the slice
    # and leaves the columns between alone.
    rng = np.random.RandomState(13)
    w, dw = rng.randn(7, 9), rng.randn(7, 9)
    state, scalars, reference = rule_case(rule, rng)
    base = impl.put(np.repeat(w, 2, axis=1))
    W = base[:, ::2]
    got = getattr(impl.ops, rule)(W, impl.put(dw), *[impl.put(s) for s in state], *scalars,
                                  out=W)
    got = got if isinstance(got, tuple) else (got,)
    assert got[0] is W
    assert_close(W, reference(w, dw, *state)[0], np.float64)
    np.testing.assert_array_equal(host(base)[:, 1::2], w)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_update_rules_refuse_a_bad_out_before_updating_anything(impl, rule):
    rng = np.random.RandomState(12)
    w, dw = rng.randn(7, 9), rng.randn(7, 9)
    state, scalars, _ = rule_case(rule, rng)
    W, DW = impl.put(w), impl.put(dw)
    S = [impl.put(s) for s in state]

    def call(out):
        return getattr(impl.ops, rule)(W, DW, *S, *scalars, out=out)
    with pytest.raises(ValueError, match=r"out has shape \(9, 7\) but w has shape \(7, 9\)"):
        call(impl.put(np.zeros((9, 7))))
    with pytest.raises(TypeError, match="out has dtype float32 but w has dtype float64"):
        call(impl.put(np.zeros((7, 9)), np.float32))
    with pytest.raises(TypeError, match="out must be"):
        call([[0.0] * 9] * 7)
    with pytest.raises(ValueError, match="out shares memory with dw"):
        call(DW)
    for name, s in zip(STATE_NAMES[rule], S):
        with pytest.raises(ValueError, match="out shares memory with %s" % name):
            call(s)
    # An array overlapping w without being w would be read after it was written.
    base = impl.put(np.concatenate([w.ravel(), [0.0]]))
    shifted = base[1:].reshape(7, 9)
    with pytest.raises(ValueError, match="out shares memory with w"):
        getattr(impl.ops, rule)(base[:-1].reshape(7, 9), DW, *S, *scalars, out=shifted)
    if impl.xp is np:
        frozen = np.zeros((7, 9))
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            call(frozen)
    np.testing.assert_array_equal(host(W), w)
    for s, s0 in zip(S, state):
        np.testing.assert_array_equal(host(s), s0)


# ---------------------------------------------------------------------------
# Bad input at the kernel boundary
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.int32, np.float16, np.int64])
def test_conv_and_pool_refuse_other_dtypes(impl, bad):
    x = impl.put(np.ones((2, 2, 4, 4)), bad)
    w, b = impl.put(np.ones((3, 2, 3, 3)), bad), impl.put(np.ones(3), bad)
    cols = impl.put(np.ones((18, 32)), bad)
    calls = [
        lambda: impl.ops.im2col(x, 3, 3, 1, 1, 4, 4),
        lambda: impl.ops.col2im(cols, (2, 2, 4, 4), 3, 3, 1, 1, 4, 4),
        lambda: impl.ops.conv_forward(x, w, b, 1, 1, 4, 4),
        lambda: impl.ops.conv_backward(impl.put(np.ones((2, 3, 4, 4)), bad), x, w, 1, 1, 4, 4),
        lambda: impl.ops.maxpool_forward(x, 2, 2, 2, 2, 2),
        lambda: impl.ops.maxpool_backward(impl.put(np.ones((2, 2, 2, 2)), bad),
                                          impl.put(np.zeros((2, 2, 2, 2)), np.int32),
                                          (2, 2, 4, 4), 2, 2, 2, 2, 2),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="float32 or float64"):
            call()


@pytest.mark.parametrize("bad", [np.int32, np.int64])
def test_rules_and_reductions_refuse_integer_arrays(impl, bad):
    a = impl.put(np.ones(3), bad)
    labels = impl.put(np.zeros(3), np.int64)
    calls = [
        lambda: impl.ops.sgd(a, a, 0.1),
        lambda: impl.ops.sgd_momentum(a, a, a, 0.1, 0.9),
        lambda: impl.ops.rmsprop(a, a, a, 0.1, 0.9, 1e-8),
        lambda: impl.ops.adam(a, a, a, a, 0.9, 0.999, 0.1, 1e-8),
        lambda: impl.ops.adamw(a, a, a, a, 0.9, 0.999, 0.1, 1e-8, 0.99),
        lambda: impl.ops.sum_of_squares(a),
        lambda: impl.ops.axpy(0.5, a, a),
        lambda: impl.ops.softmax_loss(impl.put(np.ones((3, 4)), bad), labels),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="floating-point"):
            call()


def test_mixed_dtypes_raise_type_error(impl):
    x = impl.put(np.ones((2, 2, 4, 4)), np.float32)
    w, b = impl.put(np.ones((3, 2, 3, 3))), impl.put(np.ones(3))
    with pytest.raises(TypeError, match="one dtype"):
        impl.ops.conv_forward(x, w, b, 1, 1, 4, 4)
    with pytest.raises(TypeError, match="one dtype"):
        impl.ops.conv_backward(impl.put(np.ones((2, 3, 4, 4))), x,
                               impl.put(np.ones((3, 2, 3, 3)), np.float32), 1, 1, 4, 4)


def test_shapes_are_checked_at_the_kernel_boundary(impl):
    """A buffer of the wrong shape would be read out of bounds (or misread)."""
    x = impl.put(np.ones((8, 4, 12, 10)))
    w, b = impl.put(np.ones((6, 4, 3, 3))), impl.put(np.ones(6))
    geometry = (3, 3, 2, 1, 6, 5)                     # cols (36, 8*6*5 = 240)
    for cols_shape in [(36, 480), (36, 120), (18, 240)]:
        with pytest.raises(ValueError, match=r"cols must have shape \(36, 240\)"):
            impl.ops.col2im(impl.put(np.ones(cols_shape)), x.shape, *geometry)
    with pytest.raises(ValueError, match="height"):
        impl.ops.im2col(x, 3, 3, 2, 1, 7, 5)          # one output row too many
    with pytest.raises(ValueError, match="width"):
        impl.ops.conv_forward(x, w, b, 2, 1, 6, 6)
    with pytest.raises(ValueError, match="channels"):
        impl.ops.conv_forward(x, impl.put(np.ones((6, 3, 3, 3))), b, 2, 1, 6, 5)
    with pytest.raises(ValueError, match="b must have shape"):
        impl.ops.conv_forward(x, w, impl.put(np.ones(5)), 2, 1, 6, 5)
    with pytest.raises(ValueError, match="dout must have shape"):
        impl.ops.conv_backward(impl.put(np.ones((8, 6, 6, 4))), x, w, 2, 1, 6, 5)
    with pytest.raises(ValueError, match="height"):
        impl.ops.maxpool_forward(x, 2, 2, 2, 7, 5)    # would read past the last row
    _, argmax = impl.ops.maxpool_forward(x, 2, 2, 2, 6, 5)
    dout = impl.put(np.ones((8, 4, 6, 5)))
    with pytest.raises(ValueError, match="dout and argmax must have shape"):
        impl.ops.maxpool_backward(impl.put(np.ones((8, 4, 6, 10))), argmax, x.shape,
                                  2, 2, 2, 6, 5)
    with pytest.raises(ValueError, match="dout and argmax must have shape"):
        impl.ops.maxpool_backward(dout, argmax[:4], x.shape, 2, 2, 2, 6, 5)
    with pytest.raises(ValueError, match="width"):
        impl.ops.maxpool_backward(dout, argmax, (8, 4, 12, 13), 2, 2, 2, 6, 5)
    a, v = impl.put(np.ones((3, 4))), impl.put(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dw has shape \(4, 3\) but w has shape \(3, 4\)"):
        impl.ops.sgd(a, v, 0.1)
    with pytest.raises(ValueError, match=r"velocity has shape \(4, 3\) but w has shape"):
        impl.ops.sgd_momentum(a, a, v, 0.1, 0.9)
    with pytest.raises(ValueError, match=r"v has shape \(4, 3\)"):
        impl.ops.adam(a, a, a, v, 0.9, 0.999, 0.1, 1e-8)
    with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\)"):
        impl.ops.matmul(a, a)
    with pytest.raises(ValueError, match=r"c must have the shape \(M, N\) = \(3, 3\)"):
        impl.ops.matmul(a, v, a, 1.0)
    with pytest.raises(ValueError, match="has shape"):
        impl.ops.axpy(0.5, a, v)
    with pytest.raises(ValueError, match="y must have shape"):
        impl.ops.softmax_loss(a, impl.put(np.zeros(4), np.int64))


def test_argmax_entries_outside_the_window_contribute_nothing(impl):
    # Never written outside the plane (the compiled kernel would otherwise
    # store out of bounds): such an entry's gradient is dropped, everywhere.
    rng = np.random.RandomState(12)
    x = rng.randn(2, 3, 6, 8)
    for ph, pw, stride, OH, OW in [(2, 2, 2, 3, 4), (3, 2, 1, 4, 7)]:
        _, argmax = impl.ops.maxpool_forward(impl.put(x), ph, pw, stride, OH, OW)
        dout = rng.randn(2, 3, OH, OW)
        bad = host(argmax).copy()
        bad[0, 1, 1, 2], bad[1, 2, 0, 0] = ph * pw, -7
        kept = dout.copy()
        kept[0, 1, 1, 2] = kept[1, 2, 0, 0] = 0
        got = impl.ops.maxpool_backward(impl.put(dout), impl.put(bad), x.shape,
                                        ph, pw, stride, OH, OW)
        expected = impl.ops.maxpool_backward(impl.put(kept), argmax, x.shape,
                                             ph, pw, stride, OH, OW)
        np.testing.assert_array_equal(host(got), host(expected))


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("shrink", [1.0, 0.97], ids=["adam", "adamw"])
@pytest.mark.parametrize("block", ["kernel-call", "no-call", "raises"])
def test_adamw_alongside_takes_the_step_by_the_end_of_the_block(impl, dtype, shrink, block):
    # The step is complete when the block ends, with adamw's bits, whatever
    # the block did: a kernel call (on the CPU the step runs beside it, on
    # the same threads), none, or an error (re-raised). The block's own
    # kernel call gives its usual result.
    rng = np.random.RandomState(17)
    n = 3 * 65536 + 5  # several of the team's chunks
    w, dw, m = rng.randn(n), rng.randn(n), rng.randn(n)
    v = rng.rand(n)
    x = impl.put(rng.randn(200, 1000), dtype)
    scalars = (0.9, 0.99, 1e-2, 1e-7, shrink)
    W, DW, M, V = (impl.put(a, dtype) for a in (w, dw, m, v))
    ref = impl.ops.adamw(impl.put(w, dtype), DW, impl.put(m, dtype), impl.put(v, dtype),
                         *scalars)
    expected_sumsq = host(impl.ops.sum_of_squares(x))
    context = impl.ops.adamw_alongside(W, DW, M, V, *scalars, W)
    if block == "raises":
        with pytest.raises(KeyError):
            with context:
                raise KeyError("the block failed")
    else:
        with context:
            if block == "kernel-call":
                sumsq = impl.ops.sum_of_squares(x)
        if block == "kernel-call":
            assert host(sumsq) == expected_sumsq
    for got, want in zip((W, M, V), ref):
        np.testing.assert_array_equal(host(got), host(want))
    with pytest.raises(TypeError, match="needs out"):
        impl.ops.adamw_alongside(W, DW, M, V, *scalars, None)
