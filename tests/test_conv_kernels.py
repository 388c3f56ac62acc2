"""The fast convolution and max-pooling layers, and what is particular to
the compiled CPU kernels under them (tiles, thread team, workspace).

The kernels themselves, on every implementation of the device interface,
are tested in test_kernel_contract.py. References here: the naive loops of
xdl.layers (float64, on the host), numerical gradients, and the notebook's
values; the fast layers run on whatever device the ``xp`` fixture picks.
"""
import os
import warnings

import numpy as np
import pytest

import xdl
from xdl.backends import cpu, numpy_kernels
from xdl.fast_layers import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from xdl.gradient_check import eval_numerical_gradient_array
from xdl.layer_utils import (
    conv_bn_relu_backward,
    conv_bn_relu_forward,
    conv_bn_relu_pool_backward,
    conv_bn_relu_pool_forward,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)
from xdl.layers import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

from cases import CONV_CASES, POOL_CASES, conv_ids, pool_ids
from helpers import assert_close, compiled_kernels as compiled, host, rel_error, to

CONV_IDS, POOL_IDS = conv_ids(CONV_CASES), pool_ids(POOL_CASES)


def out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def conv_data(xs, ws, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(*xs)
    w = rng.randn(*ws)
    b = rng.randn(ws[0])
    return x, w, b


# ------------------------------------------------------------ fast layers

@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_fast_conv_layer_matches_naive(xp, case, dtype):
    xs, ws, stride, pad = case
    x, w, b = conv_data(xs, ws)
    conv_param = {"stride": stride, "pad": pad}
    out_ref, cache = conv_forward_naive(x, w, b, conv_param)
    dout = np.random.RandomState(2).randn(*out_ref.shape)
    grads_ref = conv_backward_naive(dout, cache)

    out, cache = conv_forward_fast(to(xp, x, dtype), to(xp, w, dtype), to(xp, b, dtype),
                                   conv_param)
    grads = conv_backward_fast(to(xp, dout, dtype), cache)
    assert_close(out, out_ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)
    for got, ref in zip(grads, grads_ref):
        assert got.dtype == dtype
        assert_close(got, ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_fast_pool_layer_matches_naive(xp, case, dtype):
    xs, ph, pw, stride = case
    rng = np.random.RandomState(3)
    x = rng.randn(*xs)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out_ref, cache = max_pool_forward_naive(x, pool_param)
    dout = rng.randn(*out_ref.shape)
    dx_ref = max_pool_backward_naive(dout, cache)

    out, cache = max_pool_forward_fast(to(xp, x, dtype), pool_param)
    dx = max_pool_backward_fast(to(xp, dout, dtype), cache)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(host(out), out_ref.astype(dtype))
    assert_close(dx, dx_ref, dtype)
    # The naive layer's (x, pool_param) cache works too.
    dx2 = max_pool_backward_fast(to(xp, dout, dtype), (to(xp, x, dtype), pool_param))
    assert_close(dx2, dx_ref, dtype)


# ---------------------------------------------------- layouts and strides

def test_fast_layers_take_non_contiguous_inputs(xp, dtype):
    rng = np.random.RandomState(5)
    xt = rng.randn(8, 6, 3, 2)  # (W, H, C, N)
    w = rng.randn(4, 3, 3, 3)
    b = rng.randn(4)
    conv_param = {"stride": 1, "pad": 1}
    out_ref, cache = conv_forward_naive(np.ascontiguousarray(xt.transpose(3, 2, 1, 0)), w, b,
                                        conv_param)
    dout_t = rng.randn(*out_ref.shape[::-1])
    grads_ref = conv_backward_naive(np.ascontiguousarray(dout_t.T), cache)
    # Transposed views on the device: (N, C, H, W) with reversed strides.
    xd = to(xp, xt, dtype).transpose(3, 2, 1, 0)
    dd = to(xp, dout_t, dtype).transpose(3, 2, 1, 0)
    assert not xd.flags.c_contiguous and not dd.flags.c_contiguous
    out, cache = conv_forward_fast(xd, to(xp, w, dtype), to(xp, b, dtype), conv_param)
    grads = conv_backward_fast(dd, cache)
    assert_close(out, out_ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)
    for got, ref in zip(grads, grads_ref):
        assert_close(got, ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)


# ------------------------------------------------- the Cython tiling paths

def test_gemm_tiles_cover_every_filter_and_pixel(monkeypatch, dtype):
    # Small GEMM tiles force several filter and pixel tiles per image; small
    # partial groups force several reductions of dw.
    kern = compiled()
    xs, ws = (5, 3, 9, 8), (7, 3, 3, 2)
    x, w, b = conv_data(xs, ws)
    OH, OW = out_size(9, 3, 1, 1), out_size(8, 2, 1, 1)
    dout = np.random.RandomState(6).randn(5, 7, OH, OW)
    args = (1, 1, OH, OW)
    ref = (kern.conv_forward(x, w, b, *args),) + kern.conv_backward(dout, x, w, *args)
    monkeypatch.setattr(kern, "GEMM_TILE_LIMIT", 18 * 20)
    monkeypatch.setattr(kern, "PARTIAL_ELEMENTS", 7 * 19 * 2)
    fb, pb = kern._tiles(7, 18, OH * OW)
    wk, wf, wp = kern._dw_tiles(7, 18, OH * OW)
    assert fb < 7 and pb < OH * OW and wk < 18 and wp < OH * OW
    xd, wd, bd, dd = (a.astype(dtype) for a in (x, w, b, dout))
    got = (kern.conv_forward(xd, wd, bd, *args),) + kern.conv_backward(dd, xd, wd, *args)
    for g, r in zip(got, ref):
        assert_close(g, r, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)


def test_thread_count_does_not_change_results(dtype):
    kern = compiled()
    x, w, b = conv_data((6, 3, 8, 7), (5, 3, 3, 3))
    x, w, b = (a.astype(dtype) for a in (x, w, b))
    dout = np.random.RandomState(7).randn(6, 5, 8, 7).astype(dtype)
    before = kern.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            kern.set_num_threads(n)
            results.append((kern.conv_forward(x, w, b, 1, 1, 8, 7),)
                           + kern.conv_backward(dout, x, w, 1, 1, 8, 7)
                           + kern.maxpool_forward(x, 3, 2, 1, 6, 6))
    finally:
        kern.set_num_threads(before)
    for other in results[1:]:
        for a, r in zip(other, results[0]):
            np.testing.assert_array_equal(a, r)
    with pytest.raises(ValueError):
        kern.set_num_threads(0)


def test_concurrent_calls_from_python_threads(dtype):
    # Calls from several Python threads at once: one gets the worker team,
    # the others run on their own thread; all results are exact.
    import threading
    kern = compiled()
    x, w, b = (a.astype(dtype) for a in conv_data((8, 3, 9, 8), (6, 3, 3, 3)))
    dout = np.random.RandomState(15).randn(8, 6, 9, 8).astype(dtype)
    ref = (kern.conv_forward(x, w, b, 1, 1, 9, 8),) + kern.conv_backward(dout, x, w, 1, 1, 9, 8)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                got = (kern.conv_forward(x, w, b, 1, 1, 9, 8),) + \
                    kern.conv_backward(dout, x, w, 1, 1, 9, 8)
                results.append(got)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    for got in results:
        for a, r in zip(got, ref):
            np.testing.assert_array_equal(a, r)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernels_work_in_a_forked_child():
    # The child has none of the parent's worker threads; it must start its own.
    kern = compiled()
    x, w, b = conv_data((4, 3, 6, 5), (2, 3, 3, 3))
    ref = kern.conv_forward(x, w, b, 1, 1, 6, 5)  # starts the parent's team
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        import signal
        signal.alarm(60)  # a hang (waiting on the parent's threads) kills the child
        ok = False
        try:
            kern.set_num_threads(2)
            ok = np.array_equal(kern.conv_forward(x, w, b, 1, 1, 6, 5), ref)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_workspace_is_reused_across_shapes():
    # Alternating shapes and dtypes through the workspace cache keeps results right.
    kern = compiled()
    cases = [((3, 2, 6, 5), (4, 2, 3, 3)), ((2, 3, 7, 7), (2, 3, 1, 1))]
    data = [conv_data(xs, ws, seed=i) for i, (xs, ws) in enumerate(cases)]
    refs = [conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})[0] for x, w, b in data]
    for _ in range(2):
        for dtype in (np.float64, np.float32):
            for (x, w, b), ref in zip(data, refs):
                out = kern.conv_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype),
                                        1, 1, ref.shape[2], ref.shape[3])
                assert_close(out, ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-10)
    kern.clear_workspace()


def test_fast_layer_without_dx(xp, dtype):
    x, w, b = conv_data((2, 3, 6, 5), (4, 3, 3, 3))
    out, cache = conv_forward_fast(to(xp, x, dtype), to(xp, w, dtype), to(xp, b, dtype),
                                   {"stride": 1, "pad": 1})
    dout = to(xp, np.random.RandomState(9).randn(*out.shape), dtype)
    dx, dw, db = conv_backward_fast(dout, cache)
    none, dw2, db2 = conv_backward_fast(dout, cache, compute_dx=False)
    assert none is None and dx is not None
    assert_close(dw2, dw, dtype)
    assert_close(db2, db, dtype)


# ------------------------------------------------------ notebook values

def test_conv_forward_fast_notebook_value(xp):
    x_shape, w_shape = (2, 3, 4, 4), (3, 3, 4, 4)
    x = np.linspace(-0.1, 0.5, num=np.prod(x_shape)).reshape(x_shape)
    w = np.linspace(-0.2, 0.3, num=np.prod(w_shape)).reshape(w_shape)
    b = np.linspace(-0.1, 0.2, num=3)
    out, _ = conv_forward_fast(to(xp, x), to(xp, w), to(xp, b), {"stride": 2, "pad": 1})
    correct_out = np.array([[[[-0.08759809, -0.10987781],
                              [-0.18387192, -0.2109216]],
                             [[0.21027089, 0.21661097],
                              [0.22847626, 0.23004637]],
                             [[0.50813986, 0.54309974],
                              [0.64082444, 0.67101435]]],
                            [[[-0.98053589, -1.03143541],
                              [-1.19128892, -1.24695841]],
                             [[0.69108355, 0.66880383],
                              [0.59480972, 0.56776003]],
                             [[2.36270298, 2.36904306],
                              [2.38090835, 2.38247847]]]])
    assert rel_error(host(out), correct_out) < 1e-7


def test_max_pool_forward_fast_notebook_value(xp):
    x_shape = (2, 3, 4, 4)
    x = np.linspace(-0.3, 0.4, num=np.prod(x_shape)).reshape(x_shape)
    out, _ = max_pool_forward_fast(to(xp, x), {"pool_width": 2, "pool_height": 2, "stride": 2})
    correct_out = np.array([[[[-0.26315789, -0.24842105],
                              [-0.20421053, -0.18947368]],
                             [[-0.14526316, -0.13052632],
                              [-0.08631579, -0.07157895]],
                             [[-0.02736842, -0.01263158],
                              [0.03157895, 0.04631579]]],
                            [[[0.09052632, 0.10526316],
                              [0.14947368, 0.16421053]],
                             [[0.20842105, 0.22315789],
                              [0.26736842, 0.28210526]],
                             [[0.32631579, 0.34105263],
                              [0.38526316, 0.4]]]])
    assert rel_error(host(out), correct_out) < 1e-7


def test_fast_layers_notebook_speed_shapes_agree_with_naive():
    # The notebook's timing cells compare naive and fast on these shapes
    # (smaller batch here to keep the naive loops quick).
    rng = np.random.RandomState(231)
    x = rng.randn(4, 3, 31, 31)
    w = rng.randn(25, 3, 3, 3)
    b = rng.randn(25)
    dout = rng.randn(4, 25, 16, 16)
    conv_param = {"stride": 2, "pad": 1}
    out_naive, cache_naive = conv_forward_naive(x, w, b, conv_param)
    out_fast, cache_fast = conv_forward_fast(x, w, b, conv_param)
    assert rel_error(out_naive, out_fast) < 1e-9
    for naive, fast in zip(conv_backward_naive(dout, cache_naive),
                           conv_backward_fast(dout, cache_fast)):
        assert rel_error(naive, fast) < 1e-9
    x = rng.randn(4, 3, 32, 32)
    dout = rng.randn(4, 3, 16, 16)
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out_naive, cache_naive = max_pool_forward_naive(x, pool_param)
    out_fast, cache_fast = max_pool_forward_fast(x, pool_param)
    assert rel_error(out_naive, out_fast) == 0.0
    assert rel_error(max_pool_backward_naive(dout, cache_naive),
                     max_pool_backward_fast(dout, cache_fast)) == 0.0


# ------------------------------------------------------ numerical gradients

def test_conv_fast_numerical_gradients(xp):
    rng = np.random.RandomState(231)
    x = to(xp, rng.randn(3, 2, 5, 6))
    w = to(xp, rng.randn(3, 2, 3, 2))
    b = to(xp, rng.randn(3))
    conv_param = {"stride": 1, "pad": 1}
    out, cache = conv_forward_fast(x, w, b, conv_param)
    dout = to(xp, rng.randn(*out.shape))
    dx, dw, db = conv_backward_fast(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda v: conv_forward_fast(v, w, b, conv_param)[0],
                                           x, dout)
    dw_num = eval_numerical_gradient_array(lambda v: conv_forward_fast(x, v, b, conv_param)[0],
                                           w, dout)
    db_num = eval_numerical_gradient_array(lambda v: conv_forward_fast(x, w, v, conv_param)[0],
                                           b, dout)
    assert rel_error(dx, dx_num) < 1e-6
    assert rel_error(dw, dw_num) < 1e-6
    assert rel_error(db, db_num) < 1e-6


def test_max_pool_fast_numerical_gradient(xp):
    rng = np.random.RandomState(231)
    x = to(xp, rng.randn(3, 2, 8, 6))
    for pool_param in ({"pool_height": 2, "pool_width": 2, "stride": 2},
                       {"pool_height": 3, "pool_width": 2, "stride": 1}):
        out, cache = max_pool_forward_fast(x, pool_param)
        dout = to(xp, rng.randn(*out.shape))
        dx = max_pool_backward_fast(dout, cache)
        dx_num = eval_numerical_gradient_array(
            lambda v: max_pool_forward_fast(v, pool_param)[0], x, dout)
        assert rel_error(dx, dx_num) < 1e-8


def _check_sandwich(xp, forward, backward, args, grad_names, tol=1e-6, zero=()):
    """
    Numerical gradients of a sandwich layer with respect to its array
    arguments; the gradients named in ``zero`` must vanish (a bias followed
    by batchnorm), so they are compared absolutely.
    """
    out, cache = forward(*args)
    dout = to(xp, np.random.RandomState(0).randn(*out.shape))
    grads = backward(dout, cache)
    for i, name in enumerate(grad_names):
        def f(v, i=i):
            a = list(args)
            a[i] = v
            return forward(*a)[0]
        num = eval_numerical_gradient_array(f, args[i], dout)
        if name in zero:
            assert float(abs(grads[i]).max()) < 1e-8 and float(abs(num).max()) < 1e-8, name
        else:
            assert rel_error(grads[i], num) < tol, name
    # Skipping dx leaves the other gradients unchanged.
    rest = backward(dout, cache, compute_dx=False)
    assert rest[0] is None
    for got, want in zip(rest[1:], grads[1:]):
        assert_close(got, want, np.float64)


def test_conv_relu_sandwich_numerical(xp):
    rng = np.random.RandomState(231)
    args = (to(xp, rng.randn(2, 3, 6, 5)), to(xp, rng.randn(3, 3, 3, 3)),
            to(xp, rng.randn(3)), {"stride": 1, "pad": 1})
    _check_sandwich(xp, conv_relu_forward, conv_relu_backward, args, ["x", "w", "b"])


def test_conv_relu_pool_sandwich_numerical(xp):
    rng = np.random.RandomState(231)
    args = (to(xp, rng.randn(2, 3, 8, 6)), to(xp, rng.randn(3, 3, 3, 3)),
            to(xp, rng.randn(3)), {"stride": 1, "pad": 1},
            {"pool_height": 2, "pool_width": 2, "stride": 2})
    _check_sandwich(xp, conv_relu_pool_forward, conv_relu_pool_backward, args, ["x", "w", "b"])


def test_conv_relu_pool_matches_the_layer_by_layer_chain(xp, dtype):
    # The sandwich pools before its ReLU (they commute). Integer data makes
    # many tied maxima, exact zeros and all-negative windows, where a wrong
    # order would route gradients differently.
    from xdl.layers import relu_backward, relu_forward
    rng = np.random.RandomState(14)
    x = rng.randint(-2, 3, size=(3, 2, 6, 8)).astype(np.float64)
    w = rng.randint(-1, 2, size=(3, 2, 3, 3)).astype(np.float64)
    b = np.array([0.0, -1.0, 1.0])
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    a, conv_cache = conv_forward_naive(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    ref, pool_cache = max_pool_forward_naive(s, pool_param)
    dout = rng.randn(*ref.shape)
    da = relu_backward(max_pool_backward_naive(dout, pool_cache), relu_cache)
    grads_ref = conv_backward_naive(da, conv_cache)
    assert (a == 0).any() and (ref == 0).any()

    out, cache = conv_relu_pool_forward(to(xp, x, dtype), to(xp, w, dtype), to(xp, b, dtype),
                                        conv_param, pool_param)
    grads = conv_relu_pool_backward(to(xp, dout, dtype), cache)
    np.testing.assert_array_equal(host(out), ref.astype(dtype))
    for got, want in zip(grads, grads_ref):
        assert_close(got, want, dtype)


def test_conv_bn_relu_sandwiches_numerical(xp):
    rng = np.random.RandomState(231)
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    x, w, b = to(xp, rng.randn(2, 3, 6, 4)), to(xp, rng.randn(3, 3, 3, 3)), to(xp, rng.randn(3))
    gamma, beta = to(xp, rng.rand(3) + 0.5), to(xp, rng.randn(3))
    names = ["x", "w", "b", "gamma", "beta"]
    _check_sandwich(xp, lambda *a: conv_bn_relu_forward(*a, conv_param, {"mode": "train"}),
                    conv_bn_relu_backward, (x, w, b, gamma, beta), names, zero={"b"})
    _check_sandwich(
        xp, lambda *a: conv_bn_relu_pool_forward(*a, conv_param, {"mode": "train"}, pool_param),
        conv_bn_relu_pool_backward, (x, w, b, gamma, beta), names, zero={"b"})


# ------------------------------------------------------------ tie rule

def test_max_pool_ties_go_to_the_first_element(xp, dtype):
    x = xp.ones((2, 3, 4, 6), dtype=dtype)
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = max_pool_forward_fast(x, pool_param)
    dx = host(max_pool_backward_fast(xp.ones(out.shape, dtype=dtype), cache))
    expected = np.zeros((2, 3, 4, 6), dtype=dtype)
    expected[:, :, ::2, ::2] = 1
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_argmax_agrees_with_np_argmax(xp, dtype):
    # Few distinct values: many windows hold tied maxima.
    x = np.random.RandomState(13).randint(0, 3, size=(2, 3, 6, 8)).astype(dtype)
    _, cache = max_pool_forward_fast(to(xp, x), {"pool_height": 2, "pool_width": 2, "stride": 2})
    windows = x.reshape(2, 3, 3, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 4, 4)
    np.testing.assert_array_equal(host(cache[2]), windows.argmax(axis=-1))


def test_max_pool_overlapping_ties_accumulate(xp, dtype):
    # 3x3 windows with stride 1 on a constant plane: each window's gradient goes
    # to its top-left pixel, so dx counts one per window at those pixels.
    x = xp.zeros((2, 2, 5, 6), dtype=dtype)
    pool_param = {"pool_height": 3, "pool_width": 3, "stride": 1}
    out, cache = max_pool_forward_fast(x, pool_param)
    dx = host(max_pool_backward_fast(xp.ones(out.shape, dtype=dtype), cache))
    expected = np.zeros((2, 2, 5, 6), dtype=dtype)
    expected[:, :, :3, :4] = 1
    np.testing.assert_array_equal(dx, expected)
    # Distinct maxima shared by overlapping windows add up.
    x = to(xp, np.arange(2 * 2 * 5 * 6).reshape(2, 2, 5, 6), dtype)
    out, cache = max_pool_forward_fast(x, pool_param)
    dx = host(max_pool_backward_fast(xp.ones(out.shape, dtype=dtype), cache))
    ref = max_pool_backward_naive(np.ones(out.shape), (host(x).astype(np.float64), pool_param))
    np.testing.assert_array_equal(dx, ref.astype(dtype))


# ----------------------------------------------------- errors and dtypes

def test_shapes_that_do_not_tile_name_the_dimension(xp):
    x = xp.zeros((2, 3, 8, 7))
    w = xp.zeros((4, 3, 3, 3))
    b = xp.zeros(4)
    with pytest.raises(ValueError, match="width"):
        conv_forward_fast(xp.zeros((2, 3, 7, 8)), w, b, {"stride": 2, "pad": 0})
    with pytest.raises(ValueError, match="height"):
        conv_forward_fast(x, w, b, {"stride": 2, "pad": 0})
    with pytest.raises(ValueError, match="width"):
        max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    with pytest.raises(ValueError, match="height"):
        max_pool_forward_fast(xp.zeros((2, 3, 7, 8)),
                              {"pool_height": 2, "pool_width": 2, "stride": 2})


def test_channel_mismatch_raises(xp):
    with pytest.raises(ValueError, match="channels"):
        conv_forward_fast(xp.zeros((2, 3, 6, 6)), xp.zeros((4, 2, 3, 3)), xp.zeros(4),
                          {"stride": 1, "pad": 1})


def test_bad_dout_shape_and_mixed_dtypes_raise(xp):
    x, w, b = xp.zeros((2, 3, 6, 6)), xp.zeros((4, 3, 3, 3)), xp.zeros(4)
    out, cache = conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="dout"):
        conv_backward_fast(xp.zeros((2, 4, 5, 6)), cache)
    with pytest.raises(TypeError, match="dtype"):
        conv_forward_fast(x.astype(np.float32), w, b, {"stride": 1, "pad": 1})
    with pytest.raises(TypeError):
        conv_forward_fast(xp.zeros((2, 3, 6, 6), dtype=np.int64), w, b, {"stride": 1, "pad": 1})
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    _, cache = max_pool_forward_fast(x, pool_param)
    with pytest.raises(ValueError, match="dout"):
        max_pool_backward_fast(xp.zeros((2, 3, 3, 2)), cache)


def test_float32_in_float32_out(xp):
    rng = np.random.RandomState(10)
    x = to(xp, rng.randn(2, 3, 6, 8), np.float32)
    w = to(xp, rng.randn(4, 3, 3, 3), np.float32)
    b = to(xp, rng.randn(4), np.float32)
    out, cache = conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    grads = conv_backward_fast(xp.ones(out.shape, dtype=np.float32), cache)
    pooled, pcache = max_pool_forward_fast(out, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dpool = max_pool_backward_fast(xp.ones(pooled.shape, dtype=np.float32), pcache)
    for a in (out, pooled, dpool) + tuple(grads):
        assert a.dtype == np.float32


def test_backward_twice_is_identical_and_leaves_the_cache_alone(xp, dtype):
    rng = np.random.RandomState(11)
    x = to(xp, rng.randn(3, 3, 8, 6), dtype)
    w = to(xp, rng.randn(4, 3, 3, 3), dtype)
    b = to(xp, rng.randn(4), dtype)
    out, cache = conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    pooled, pcache = max_pool_forward_fast(out, {"pool_height": 2, "pool_width": 2, "stride": 2})
    saved = [host(a).copy() for a in (x, w, b, out, pcache[2])]
    dpool = to(xp, rng.randn(*pooled.shape), dtype)
    first_pool = host(max_pool_backward_fast(dpool, pcache))
    second_pool = host(max_pool_backward_fast(dpool, pcache))
    np.testing.assert_array_equal(first_pool, second_pool)
    dout = to(xp, first_pool, dtype)
    first = [host(g) for g in conv_backward_fast(dout, cache)]
    second = [host(g) for g in conv_backward_fast(dout, cache)]
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    for before, now in zip(saved, (x, w, b, out, pcache[2])):
        np.testing.assert_array_equal(before, host(now))
    assert cache[3] == {"stride": 1, "pad": 1}


# ------------------------------------------------------------- fallback

def test_fallback_warns_once_and_matches(monkeypatch, dtype):
    rng = np.random.RandomState(12)
    x = rng.randn(2, 3, 7, 6).astype(dtype)
    w = rng.randn(4, 3, 3, 2).astype(dtype)
    b = rng.randn(4).astype(dtype)
    conv_param = {"stride": 1, "pad": 1}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 1}

    def run():
        out, cache = conv_forward_fast(x, w, b, conv_param)
        grads = conv_backward_fast(np.ones_like(out), cache)
        pooled, pcache = max_pool_forward_fast(out, pool_param)
        return (out, pooled, max_pool_backward_fast(np.ones_like(pooled), pcache)) + grads

    fast = run()
    monkeypatch.setattr(cpu, "compiled", None)
    monkeypatch.setattr(cpu, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = run()
        run()
    fallback_warnings = [c for c in caught if issubclass(c.category, cpu.SlowFallbackWarning)]
    assert len(fallback_warnings) == 1
    assert "fallback" in str(fallback_warnings[0].message)
    for a, c in zip(slow, fast):
        assert a.dtype == dtype
        assert_close(a, c, dtype)
    assert xdl.backends.kernels_for(x) is cpu and cpu.kernels() is numpy_kernels
