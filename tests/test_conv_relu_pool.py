"""The fused convolution + bias + ReLU + max pooling: the sandwich layers of
xdl.layer_utils and the device operation under them
(``conv_relu_pool_forward`` / ``conv_relu_pool_backward`` of
xdl.backends.OPERATIONS), on every implementation: the compiled CPU kernels
(fused per image), the NumPy fallback and the CUDA backend (composed of
their convolution and pooling kernels; emulated on the host without a GPU).

References: the unfused chain of fast layers (conv_forward_fast,
relu_forward, max_pool_forward_fast and their backward passes), the naive
float64 loops of xdl.layers, and numerical gradients.
"""
import numpy as np
import pytest

from xdl.backends import cpu, cuda
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.fast_layers import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from xdl.gradient_check import eval_numerical_gradient_array
from xdl.layer_utils import conv_relu_pool_backward, conv_relu_pool_forward
from xdl.layers import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
    relu_backward,
    relu_forward,
)

from cuda_emulation import emulate, host_kernels  # noqa: F401 (a fixture)
from helpers import assert_close, host, rel_error, to

FILTERS = [(3, 3), (2, 2), (3, 2), (2, 3), (5, 5), (1, 1)]      # odd, even, non-square
CONVS = [(1, 1), (1, 0), (2, 1), (1, 2), (3, 0), (2, 2)]        # (stride, pad)
POOLS = [(2, 2, 2), (3, 3, 2), (2, 3, 1), (3, 2, 3), (1, 1, 1), (2, 2, 3)]  # (ph, pw, stride)


def _size(out, k, stride, pad):
    """The input size whose convolution has `out` outputs, exactly tiled."""
    return (out - 1) * stride + k - 2 * pad


def _cases():
    """
    (x shape, w shape, conv stride, pad, pool): every filter with every
    pool (the convolutions cycling); N >= 2, C >= 2, H != W, and pooled
    maps of at least 2x3.
    """
    cases = []
    for i, (KH, KW) in enumerate(FILTERS):
        for j, (ph, pw, ps) in enumerate(POOLS):
            stride, pad = CONVS[(i + j) % len(CONVS)]
            OH, OW = ph + 1 * ps, pw + 2 * ps  # 2 x 3 pooled outputs
            H, W = _size(OH, KH, stride, pad), _size(OW, KW, stride, pad)
            while H < 1 or W < 1 or H == W:
                OH, OW = OH + ps, OW + 2 * ps
                H, W = _size(OH, KH, stride, pad), _size(OW, KW, stride, pad)
            N, C, F = 2 + (i + j) % 2, 2 + j % 2, 3 + i % 2
            cases.append(((N, C, H, W), (F, C, KH, KW), stride, pad, (ph, pw, ps)))
    return cases


CASES = _cases()
IDS = ["x%s-w%s-s%d-p%d-pool%dx%ds%d"
       % (("x".join(map(str, xs)), "x".join(map(str, ws)), s, p) + pool)
       for xs, ws, s, p, pool in CASES]


def _params(case):
    xs, ws, stride, pad, (ph, pw, ps) = case
    return ({"stride": stride, "pad": pad},
            {"pool_height": ph, "pool_width": pw, "stride": ps})


def _data(case, seed=0):
    xs, ws = case[:2]
    rng = np.random.RandomState(seed)
    return rng.randn(*xs), rng.randn(*ws), rng.randn(ws[0])


def _unfused(x, w, b, dout, conv_param, pool_param, compute_dx=True):
    """conv_forward_fast, relu_forward, max_pool_forward_fast and their backward passes."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    r, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(r, pool_param)
    dr = max_pool_backward_fast(dout, pool_cache)
    grads = conv_backward_fast(relu_backward(dr, relu_cache), conv_cache, compute_dx=compute_dx)
    return (out,) + tuple(grads)


# ------------------------------------------------------- the sandwich layer

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_layer_matches_the_unfused_layers(xp, dtype, case):
    conv_param, pool_param = _params(case)
    x, w, b = (to(xp, a, dtype) for a in _data(case))
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    dout = to(xp, np.random.RandomState(1).randn(*out.shape), dtype)
    grads = conv_relu_pool_backward(dout, cache)
    ref = _unfused(x, w, b, dout, conv_param, pool_param)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for got, want in zip((out,) + tuple(grads), ref):
        assert got.shape == want.shape
        assert_close(got, want, dtype)


@pytest.mark.parametrize("case", CASES[::3], ids=IDS[::3])
def test_fused_layer_matches_the_naive_loops(xp, case):
    conv_param, pool_param = _params(case)
    x, w, b = _data(case, seed=2)
    a, conv_cache = conv_forward_naive(x, w, b, conv_param)
    r, relu_cache = relu_forward(a)
    ref, pool_cache = max_pool_forward_naive(r, pool_param)
    dout = np.random.RandomState(3).randn(*ref.shape)
    refs = (ref,) + conv_backward_naive(
        relu_backward(max_pool_backward_naive(dout, pool_cache), relu_cache), conv_cache)
    out, cache = conv_relu_pool_forward(to(xp, x), to(xp, w), to(xp, b), conv_param, pool_param)
    got = (out,) + conv_relu_pool_backward(to(xp, dout), cache)
    for g, want in zip(got, refs):
        assert_close(g, want, np.float64)


def test_integer_data_gives_the_unfused_results_exactly(xp, dtype):
    # Integer data: every sum is exact whatever the GEMM order, with many tied
    # maxima, exact zeros and all-negative windows, where routing the
    # gradient differently from relu-then-pool would show.
    rng = np.random.RandomState(14)
    x = rng.randint(-2, 3, size=(4, 3, 10, 12)).astype(dtype)
    w = rng.randint(-1, 2, size=(5, 3, 3, 3)).astype(dtype)
    b = np.array([0, -1, 1, 2, -3], dtype=dtype)
    for pool_param in ({"pool_height": 2, "pool_width": 2, "stride": 2},
                       {"pool_height": 3, "pool_width": 2, "stride": 1}):
        conv_param = {"stride": 1, "pad": 1}
        out, cache = conv_relu_pool_forward(to(xp, x), to(xp, w), to(xp, b),
                                            conv_param, pool_param)
        dout = to(xp, rng.randint(-4, 5, size=out.shape).astype(dtype))
        got = (out,) + conv_relu_pool_backward(dout, cache)
        ref = _unfused(to(xp, x), to(xp, w), to(xp, b), dout, conv_param, pool_param)
        assert (host(out) == 0).any() and (host(cache[-1]) == -1).any()
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(host(g), host(r))


@pytest.mark.parametrize("case", [CASES[0], CASES[8], CASES[15], CASES[26]],
                         ids=[IDS[0], IDS[8], IDS[15], IDS[26]])
def test_fused_layer_numerical_gradients(xp, case):
    conv_param, pool_param = _params(case)
    x, w, b = (to(xp, a) for a in _data(case, seed=5))
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    dout = to(xp, np.random.RandomState(6).randn(*out.shape))
    grads = conv_relu_pool_backward(dout, cache)
    args = [x, w, b]
    for i, name in enumerate(["x", "w", "b"]):
        def f(v, i=i):
            a = list(args)
            a[i] = v
            return conv_relu_pool_forward(*a, conv_param, pool_param)[0]
        num = eval_numerical_gradient_array(f, args[i], dout)
        assert rel_error(grads[i], num) < 1e-6, name


def test_notebook_cell(xp):
    # The conv_relu_pool cell of the convolutional-networks notebook.
    np.random.seed(231)
    x = np.random.randn(2, 3, 16, 16)
    w = np.random.randn(3, 3, 3, 3)
    b = np.random.randn(3,)
    dout = np.random.randn(2, 3, 8, 8)
    conv_param = {'stride': 1, 'pad': 1}
    pool_param = {'pool_height': 2, 'pool_width': 2, 'stride': 2}
    x, w, b, dout = (to(xp, a) for a in (x, w, b, dout))
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    dx, dw, db = conv_relu_pool_backward(dout, cache)
    for i, grad in enumerate((dx, dw, db)):
        def f(v, i=i):
            a = [x, w, b]
            a[i] = v
            return conv_relu_pool_forward(*a, conv_param, pool_param)[0]
        num = eval_numerical_gradient_array(f, [x, w, b][i], dout)
        assert rel_error(num, grad) < 1e-7


def test_without_dx_and_backward_twice(xp, dtype):
    case = CASES[1]
    conv_param, pool_param = _params(case)
    x, w, b = (to(xp, a, dtype) for a in _data(case))
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    dout = to(xp, np.random.RandomState(4).randn(*out.shape), dtype)
    first = conv_relu_pool_backward(dout, cache)
    again = conv_relu_pool_backward(dout, cache)
    for a, r in zip(again, first):
        np.testing.assert_array_equal(host(a), host(r))  # deterministic, cache untouched
    none, dw, db = conv_relu_pool_backward(dout, cache, compute_dx=False)
    assert none is None
    np.testing.assert_array_equal(host(dw), host(first[1]))
    np.testing.assert_array_equal(host(db), host(first[2]))


def test_float64_dout_with_float32_layer(xp):
    # As max_pool_backward_fast, an upstream gradient of another float dtype is cast.
    case = CASES[0]
    conv_param, pool_param = _params(case)
    x, w, b = (to(xp, a, np.float32) for a in _data(case))
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    dout = np.random.RandomState(4).randn(*out.shape)
    grads = conv_relu_pool_backward(to(xp, dout), cache)
    ref = conv_relu_pool_backward(to(xp, dout, np.float32), cache)
    for g, r in zip(grads, ref):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(host(g), host(r))


def test_bad_input_names_the_problem(xp):
    x, w, b = (to(xp, a) for a in _data(CASES[0]))
    conv_param = {"stride": 1, "pad": 1}
    with pytest.raises(ValueError, match="height: windows do not tile"):
        conv_relu_pool_forward(x, w, b, conv_param,
                               {"pool_height": 2, "pool_width": 2, "stride": 3})
    with pytest.raises(ValueError, match="channels"):
        conv_relu_pool_forward(x[:, :1], w, b, conv_param, {})
    with pytest.raises(TypeError, match="one dtype"):
        conv_relu_pool_forward(x, w.astype(np.float32), b, conv_param, {})
    out, cache = conv_relu_pool_forward(x, w, b, conv_param, {})
    with pytest.raises(ValueError, match="dout must have shape"):
        conv_relu_pool_backward(out[:, :, :1], cache)


# ------------------------------------------------ the device operation

@pytest.fixture(params=["compiled", "fallback", "cuda-emulated"])
def ops(request, monkeypatch):
    """The operation's module: compiled CPU kernels, NumPy fallback, emulated CUDA."""
    if request.param == "compiled":
        if cpu.compiled is None:
            pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
        return cpu
    if request.param == "fallback":
        monkeypatch.setattr(cpu, "compiled", None)
        monkeypatch.setattr(cpu, "_warned", True)
        return cpu
    emulate(monkeypatch, request.getfixturevalue("host_kernels"))
    return cuda


def _geometry(case):
    xs, ws, stride, pad, (ph, pw, ps) = case
    OH = (xs[2] + 2 * pad - ws[2]) // stride + 1
    OW = (xs[3] + 2 * pad - ws[3]) // stride + 1
    return (stride, pad, OH, OW, ph, pw, ps, (OH - ph) // ps + 1, (OW - pw) // ps + 1)


def _argmax_loops(a, ph, pw, stride):
    """Index kh*pw + kw of the first maximum of each window (np.argmax's rule)."""
    N, C, H, W = a.shape
    OH, OW = (H - ph) // stride + 1, (W - pw) // stride + 1
    am = np.zeros((N, C, OH, OW), dtype=np.int32)
    for i in range(OH):
        for j in range(OW):
            win = a[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw]
            am[:, :, i, j] = win.reshape(N, C, -1).argmax(axis=-1)
    return am


@pytest.mark.parametrize("case", CASES[::2], ids=IDS[::2])
def test_operation_against_the_naive_loops(ops, dtype, case):
    conv_param, pool_param = _params(case)
    geo = _geometry(case)
    x, w, b = _data(case, seed=7)
    a, conv_cache = conv_forward_naive(x, w, b, conv_param)
    pooled, pool_cache = max_pool_forward_naive(a, pool_param)
    argmax_ref = _argmax_loops(a, *geo[4:7])
    dout = np.random.RandomState(8).randn(*pooled.shape)
    ref_dx, ref_dw, ref_db = conv_backward_naive(
        max_pool_backward_naive(np.where(pooled > 0, dout, 0), pool_cache), conv_cache)

    xd, wd, bd, dd = (v.astype(dtype) for v in (x, w, b, dout))
    out, argmax = ops.conv_relu_pool_forward(xd, wd, bd, *geo)
    assert out.dtype == dtype and argmax.dtype == np.int32
    assert_close(out, np.maximum(pooled, 0), dtype)
    np.testing.assert_array_equal(argmax, np.where(pooled > 0, argmax_ref, -1))
    dx, dw, db = ops.conv_relu_pool_backward(dd, argmax, xd, wd, *geo)
    for g, r in ((dx, ref_dx), (dw, ref_dw), (db, ref_db)):
        assert g.dtype == dtype
        assert_close(g, r, dtype, atol=1e-4 if dtype == np.float32 else 1e-9)
    none, dw2, db2 = ops.conv_relu_pool_backward(dd, argmax, xd, wd, *geo, compute_dx=False)
    assert none is None
    assert_close(dw2, dw, dtype)
    assert_close(db2, db, dtype)


def test_operation_checks_its_arguments(ops):
    case = CASES[0]
    geo = _geometry(case)
    x, w, b = _data(case)
    out, argmax = ops.conv_relu_pool_forward(x, w, b, *geo)
    with pytest.raises(ValueError, match="dout and argmax must have shape"):
        ops.conv_relu_pool_backward(out, argmax[:, :1], x, w, *geo)
    with pytest.raises(ValueError, match="output size"):
        ops.conv_relu_pool_forward(x, w, b, *geo[:-1], geo[-1] + 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.conv_relu_pool_forward(x.astype(np.int64), w, b, *geo)


# ------------------------------------------- the compiled kernels' path

def test_thread_count_does_not_change_results(dtype):
    kern = cpu.compiled
    if kern is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    case = ((9, 3, 10, 13), (4, 3, 3, 3), 1, 1, (2, 3, 1))
    geo = _geometry(case)
    x, w, b = (a.astype(dtype) for a in _data(case))
    dout = np.random.RandomState(9).randn(9, 4, geo[7], geo[8]).astype(dtype)
    before = kern.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            kern.set_num_threads(n)
            out, argmax = kern.conv_relu_pool_forward(x, w, b, *geo)
            results.append((out, argmax) + kern.conv_relu_pool_backward(dout, argmax, x, w, *geo))
    finally:
        kern.set_num_threads(before)
    for other in results[1:]:
        for a, r in zip(other, results[0]):
            np.testing.assert_array_equal(a, r)


def test_partial_groups_cover_every_image(monkeypatch, dtype):
    # Small partial groups: several reductions of dw over groups of images.
    kern = cpu.compiled
    if kern is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    case = ((7, 2, 8, 9), (3, 2, 3, 2), 1, 1, (2, 2, 2))
    geo = _geometry(case)
    x, w, b = (a.astype(dtype) for a in _data(case))
    out, argmax = kern.conv_relu_pool_forward(x, w, b, *geo)
    dout = np.random.RandomState(10).randn(*out.shape).astype(dtype)
    ref = kern.conv_relu_pool_backward(dout, argmax, x, w, *geo)
    monkeypatch.setattr(kern, "PARTIAL_ELEMENTS", 3 * 13 * 2)
    got = kern.conv_relu_pool_backward(dout, argmax, x, w, *geo)
    for g, r in zip(got, ref):
        assert_close(g, r, dtype)


@pytest.mark.parametrize("fused", [True, False], ids=["conv_relu_pool", "conv"])
def test_filter_gradient_adds_the_images_in_order(monkeypatch, dtype, fused):
    # dw and db are the per-image gradients added in image order, (((0 +
    # image 0) + image 1) + image 2) + ..., bit for bit, on two threads and
    # in groups of 2 images too: each image's own call gives its gradient,
    # and the batch's must be their sum in that order, whichever thread
    # took an image and added it (another order, an image lost or added
    # twice, or the db partials misplaced would change the bits).
    kern = cpu.compiled
    if kern is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    case = ((7, 2, 8, 9), (3, 2, 3, 2), 1, 1, (2, 2, 2))
    geo = _geometry(case)
    x, w, b = (a.astype(dtype) for a in _data(case, seed=4))
    out, argmax = kern.conv_relu_pool_forward(x, w, b, *geo)
    rng = np.random.RandomState(12)
    dout = rng.randn(*out.shape).astype(dtype)
    dconv = rng.randn(7, 3, geo[2], geo[3]).astype(dtype)

    def grads(n):
        if fused:
            return kern.conv_relu_pool_backward(dout[n], argmax[n], x[n], w, *geo)[1:]
        return kern.conv_backward(dconv[n], x[n], w, *geo[:4])[1:]

    per_image = [grads(slice(n, n + 1)) for n in range(7)]
    want = [np.zeros_like(g) for g in per_image[0]]
    for image in per_image:
        want = [total + g for total, g in zip(want, image)]
    threads = kern.get_num_threads()
    kern.set_num_threads(2)
    try:
        for group in (None, 2):
            if group is not None:  # partials of 2 images at a time
                monkeypatch.setattr(kern, "PARTIAL_ELEMENTS", 3 * (2 * 3 * 2 + 1) * group)
            for _ in range(5):
                for got, expected, name in zip(grads(slice(None)), want, ("dw", "db")):
                    np.testing.assert_array_equal(got, expected, err_msg="%s, groups of %s"
                                                  % (name, group))
    finally:
        kern.set_num_threads(threads)


def test_three_layer_convnet_takes_the_fused_kernels(monkeypatch):
    # ThreeLayerConvNet's conv - relu - pool runs the fused kernels, and no
    # separate pooling pass (what the layer-by-layer chain would call).
    kern = cpu.compiled
    if kern is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    calls = []

    def counting(name):
        real = getattr(kern, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    for name in ("conv_relu_pool_forward", "conv_relu_pool_backward", "maxpool_forward",
                 "maxpool_backward", "conv_forward", "conv_backward"):
        monkeypatch.setattr(kern, name, counting(name))
    np.random.seed(0)
    model = ThreeLayerConvNet(input_dim=(3, 8, 10), num_filters=4, filter_size=3,
                              hidden_dim=6, dtype=np.float64)
    X = np.random.randn(3, 3, 8, 10)
    model.loss(X, np.array([0, 1, 2]))
    assert calls == ["conv_relu_pool_forward", "conv_relu_pool_backward"]
    calls.clear()
    model.loss(X)
    assert calls == ["conv_relu_pool_forward"]
