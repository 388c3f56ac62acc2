"""The compiled CPU kernels beyond convolution: fused update rules, sum of
squares and axpy (L2 regularization), and the tiled matmul of the affine
layers.

References: the NumPy formulas of xdl.optim (run by making the extension
look missing, which is also the fallback path), float64 sums, numpy's @.

numpy-only: these kernels exist only for host arrays, so every test here runs
with the numpy backend configured, whatever XDL_BACKEND says (the CUDA
counterparts are tested in test_cuda_kernels.py and test_cross_backend.py).
"""
import numpy as np
import pytest

from xdl import optim
from xdl.backends import cpu
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.classifiers.fc_net import FullyConnectedNet, TwoLayerNet
from xdl.layers import affine_backward, affine_forward

from helpers import assert_close, compiled_kernels as compiled

pytestmark = pytest.mark.usefixtures("numpy_backend")


@pytest.fixture(autouse=True)
def keep_global_rng():
    """The models here draw weights from numpy's global RNG; later tests get it back as it was."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


@pytest.fixture
def threads():
    """Restore the kernels' thread count after a test that changes it."""
    kern = compiled()
    n = kern.get_num_threads()
    yield kern
    kern.set_num_threads(n)


# Tight tolerances: the fused rules do the formulas' operations in the same
# order (bit for bit unless the compiler fuses a multiply-add).
RULE_TOL = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-14, atol=1e-16)}

RULE_CONFIGS = {
    "sgd": {"learning_rate": 0.05},
    "sgd_momentum": {"learning_rate": 0.05, "momentum": 0.8},
    "rmsprop": {"learning_rate": 0.01, "decay_rate": 0.9, "epsilon": 1e-8},
    "adam": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-8},
    "adamw": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-8,
              "weight_decay": 0.1},
}
STATE = {"sgd": (), "sgd_momentum": ("velocity",), "rmsprop": ("cache",), "adam": ("m", "v"),
         "adamw": ("m", "v")}


def _run_rule(rule, w, grads):
    """Steps of an update rule from fresh state; returns next_w and config after each."""
    update = optim.get_update_rule(rule)
    config = dict(RULE_CONFIGS[rule])
    history = []
    for dw in grads:
        w, config = update(w, dw, config)
        history.append((w.copy(), {k: (v.copy() if hasattr(v, "copy") else v)
                                   for k, v in config.items()}))
    return history


# ------------------------------------------------------------ update rules

@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_fused_rules_match_numpy_formulas_over_steps(monkeypatch, dtype, rule):
    kern = compiled()
    # Several chunks of unequal size, shared by the threads.
    monkeypatch.setattr(kern, "ELEMENT_CHUNK", 1000)
    rng = np.random.RandomState(3)
    w = rng.randn(61, 83).astype(dtype)
    grads = [rng.randn(61, 83).astype(dtype) for _ in range(5)]
    assert cpu.fused_kernels(w, grads[0]) is kern
    fused = _run_rule(rule, w, grads)
    monkeypatch.setattr(cpu, "compiled", None)
    assert cpu.fused_kernels(w, grads[0]) is None
    reference = _run_rule(rule, w, grads)
    for step, ((fw, fc), (rw, rc)) in enumerate(zip(fused, reference)):
        assert fw.dtype == dtype and fw.shape == w.shape
        np.testing.assert_allclose(fw, rw, err_msg="%s step %d" % (rule, step), **RULE_TOL[dtype])
        for name in STATE[rule]:
            assert fc[name].dtype == dtype
            np.testing.assert_allclose(fc[name], rc[name], err_msg="%s %s" % (rule, name),
                                       **RULE_TOL[dtype])
        assert fc.get("t") == rc.get("t")


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_fused_rules_update_state_in_place_and_leave_w_dw(dtype, rule):
    compiled()
    rng = np.random.RandomState(4)
    w = rng.randn(40, 50).astype(dtype)
    dw = rng.randn(40, 50).astype(dtype)
    w0, dw0 = w.copy(), dw.copy()
    config = dict(RULE_CONFIGS[rule])
    next_w, config = optim.get_update_rule(rule)(w, dw, config)
    states = {name: config[name] for name in STATE[rule]}
    next_w2, config = optim.get_update_rule(rule)(next_w, dw, config)
    for name, s in states.items():
        assert config[name] is s  # the same array, updated in place
    assert next_w is not w and next_w2 is not next_w
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(dw, dw0)


def test_fused_adam_keeps_the_notebook_values():
    # The notebook check of tests/test_optim.py, on the fused kernel directly.
    kern = compiled()
    N, D = 4, 5
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    m = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    v = np.linspace(0.7, 0.5, num=N * D).reshape(N, D)
    t = 6
    step = 1e-2 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    eps_hat = 1e-8 * np.sqrt(1 - 0.999 ** t)
    next_w, m2, v2 = kern.adam(w, dw, m, v, 0.9, 0.999, step, eps_hat)
    assert m2 is m and v2 is v
    np.testing.assert_allclose(next_w[0, :3], [-0.40094747, -0.34836187, -0.29577703], rtol=1e-7)
    np.testing.assert_allclose(v[3, 4], 0.49966, rtol=1e-8)
    np.testing.assert_allclose(m[3, 4], 0.85, rtol=1e-8)


def test_fused_rules_read_only_and_strided_inputs(dtype):
    kern = compiled()
    rng = np.random.RandomState(5)
    base = rng.randn(30, 40).astype(dtype)
    w = base[:, ::2]                      # strided: the rule falls back to the formulas
    dw = rng.randn(30, 20).astype(dtype)
    assert cpu.fused_kernels(w, dw) is None
    next_w, config = optim.adam(w, dw, {"learning_rate": 0.1})
    wc = np.ascontiguousarray(w)
    wc.setflags(write=False)              # read-only: the fused kernel only reads it
    dw.setflags(write=False)
    assert cpu.fused_kernels(wc, dw) is kern
    next_wc, config_c = optim.adam(wc, dw, {"learning_rate": 0.1})
    np.testing.assert_allclose(next_wc, next_w, **RULE_TOL[dtype])
    np.testing.assert_allclose(config_c["v"], config["v"], **RULE_TOL[dtype])


class _Sub(np.ndarray):
    pass


def test_fused_kernels_dispatch_only_for_contiguous_float_arrays():
    kern = compiled()
    a32 = np.ones((3, 4), np.float32)
    a64 = np.ones((3, 4), np.float64)
    assert cpu.fused_kernels(a32, a32.copy()) is kern
    assert cpu.fused_kernels(a64) is kern
    assert cpu.fused_kernels(a32, a64) is None                      # mixed dtypes
    assert cpu.fused_kernels(np.ones(3, np.float16)) is None        # other float
    assert cpu.fused_kernels(np.ones(3, np.int64)) is None
    assert cpu.fused_kernels(a32, np.asfortranarray(np.ones((3, 4), np.float32))) is None
    assert cpu.fused_kernels(a64, a64[:, ::2].copy(), a64[::2]) is None  # a strided view
    assert cpu.fused_kernels(a64.view(_Sub)) is None                 # a subclass
    assert cpu.fused_kernels() is None


def test_rules_on_other_dtypes_use_the_formulas():
    compiled()
    w = np.linspace(-1, 1, 12).astype(np.float16).reshape(3, 4)
    assert cpu.fused_kernels(w, w) is None
    next_w, config = optim.adam(w, w, {"learning_rate": 0.1})
    assert next_w.dtype == np.float16 and config["m"].dtype == np.float16
    # float32 w with a float64 gradient: the formulas, as before.
    w32 = np.ones((2, 3), np.float32)
    assert cpu.fused_kernels(w32, np.ones((2, 3))) is None
    next_w, _ = optim.sgd(w32, np.ones((2, 3)), {"learning_rate": 0.5})
    np.testing.assert_allclose(next_w, 0.5)


def test_fused_kernels_reject_bad_arrays():
    kern = compiled()
    w = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="w must be float32 or float64.*float16"):
        kern.sgd(w.astype(np.float16), w, 0.1)
    with pytest.raises(TypeError, match="m has dtype float64 but w has dtype float32"):
        kern.adam(w, w, np.zeros((3, 4)), np.zeros((3, 4), np.float32), 0.9, 0.99, 0.1, 1e-8)
    with pytest.raises(TypeError, match="dw must be a numpy array"):
        kern.sgd(w, [[1.0] * 4] * 3, 0.1)
    with pytest.raises(ValueError, match=r"velocity has shape \(4, 3\) but w has shape \(3, 4\)"):
        kern.sgd_momentum(w, w, np.zeros((4, 3), np.float32), 0.1, 0.9)
    with pytest.raises(ValueError, match="cache must be C-contiguous"):
        kern.rmsprop(w, w, np.zeros((3, 4), np.float32, order="F"), 0.1, 0.9, 1e-8)
    frozen = np.zeros((3, 4), np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="v is read-only"):
        kern.adam(w, w, np.zeros_like(w), frozen, 0.9, 0.99, 0.1, 1e-8)
    with pytest.raises(ValueError, match="y must be C-contiguous"):
        kern.axpy(0.5, w, np.zeros((4, 3), np.float32).T)
    # The kernels write next_w through a pointer: a strided out is refused
    # (xdl.backends.cpu gives such an out to the formula instead).
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        kern.sgd(w, w, 0.1, np.zeros((3, 8), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        strided_w = np.ones((3, 8), np.float32)[:, ::2]
        kern.sgd(strided_w, w, 0.1, strided_w)


def test_kernels_read_arrays_of_either_byte_order_mark_but_refuse_byte_swapped_ones():
    # The kernels take addresses through the buffer protocol. Arrays that
    # come back from pickles and Dask carry an explicit '<' mark; arrays of
    # the other byte order would be read as garbage, and are refused.
    kern = compiled()
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 8, 8).astype(np.float32)
    w = rng.randn(4, 3, 3, 3).astype(np.float32)
    b = rng.randn(4).astype(np.float32)
    native = kern.conv_relu_pool_forward(x, w, b, 1, 1, 8, 8, 2, 2, 2, 4, 4)
    marked = [a.astype(a.dtype.newbyteorder("=")) for a in (x, w, b)]
    little = [a.astype(a.dtype.newbyteorder("<")) for a in (x, w, b)]
    for arrays in (marked, little) if np.little_endian else (marked,):
        out, argmax = kern.conv_relu_pool_forward(*arrays, 1, 1, 8, 8, 2, 2, 2, 4, 4)
        np.testing.assert_array_equal(out, native[0])
        np.testing.assert_array_equal(argmax, native[1])
    swapped = [a.astype(a.dtype.newbyteorder("S")) for a in (x, w, b)]
    with pytest.raises(TypeError, match="native float32, float64 or int32"):
        kern.conv_relu_pool_forward(*swapped, 1, 1, 8, 8, 2, 2, 2, 4, 4)
    s = swapped[1].reshape(4, -1)
    with pytest.raises(TypeError, match="native float32, float64 or int32"):
        kern.adam(s, s, s.copy(), s.copy(), 0.9, 0.99, 0.1, 1e-8)


def test_fused_rules_on_empty_arrays(dtype):
    compiled()
    w = np.zeros((0, 3), dtype)
    for rule in sorted(optim.UPDATE_RULES):
        next_w, _ = optim.get_update_rule(rule)(w, w, None)
        assert next_w.shape == (0, 3) and next_w.dtype == dtype


def test_fallback_rules_keep_the_notebook_values(monkeypatch):
    # The extension missing: the NumPy formulas give the notebook's numbers.
    monkeypatch.setattr(cpu, "compiled", None)
    N, D = 4, 5
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    v = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    next_w, config = optim.sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    np.testing.assert_allclose(next_w[0, :2], [0.1406, 0.20738947], rtol=1e-7)
    np.testing.assert_allclose(config["velocity"][3, 4], 0.8096, rtol=1e-8)


def test_thread_count_does_not_change_results(threads, dtype):
    kern = threads
    kern_chunk = kern.ELEMENT_CHUNK
    rng = np.random.RandomState(6)
    w, dw = rng.randn(2, 3 * kern_chunk + 17).astype(dtype), rng.randn(2, 3 * kern_chunk + 17)
    dw = dw.astype(dtype)
    a, b = rng.randn(70, 300).astype(dtype), rng.randn(300, 90).astype(dtype)
    results = []
    for n in (1, 2, 3):
        kern.set_num_threads(n)
        m, v = np.zeros_like(w), np.ones_like(w)
        out = kern.adam(w, dw, m, v, 0.9, 0.999, 0.01, 1e-8)
        results.append(out + (kern.sum_of_squares(w), kern.matmul(a, b, tiles=(16, 32, 64))))
    for other in results[1:]:
        for x, y in zip(results[0], other):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------- L2 regularization

def test_sum_of_squares_matches_a_float64_sum(monkeypatch, dtype):
    kern = compiled()
    monkeypatch.setattr(kern, "ELEMENT_CHUNK", 1000)
    rng = np.random.RandomState(7)
    for shape in [(1,), (7,), (999,), (3, 1001), (37, 41, 3)]:
        x = rng.randn(*shape).astype(dtype)
        got = kern.sum_of_squares(x)
        assert type(got) is np.dtype(dtype).type
        exact = (x.astype(np.float64) ** 2).sum()
        np.testing.assert_allclose(got, exact, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert kern.sum_of_squares(np.zeros((0, 4), dtype)) == 0
    strided = rng.randn(20, 30).astype(dtype)[:, ::3]
    exact = (strided.astype(np.float64) ** 2).sum()
    np.testing.assert_allclose(kern.sum_of_squares(strided), exact,
                               rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_axpy_adds_in_place(dtype):
    kern = compiled()
    rng = np.random.RandomState(8)
    x = rng.randn(5, 4001).astype(dtype)
    y = rng.randn(5, 4001).astype(dtype)
    expected = y + 0.3 * x
    assert kern.axpy(0.3, x, y) is y
    np.testing.assert_allclose(y, expected, **RULE_TOL[dtype])


def _model_cases(dtype):
    np.random.seed(0)
    yield TwoLayerNet(input_dim=20, hidden_dim=30, num_classes=5, weight_scale=0.1,
                      reg=0.3, dtype=dtype), (8, 20), 5
    np.random.seed(0)
    yield FullyConnectedNet([30, 40], input_dim=20, num_classes=5, weight_scale=0.1,
                            reg=0.3, dtype=dtype, normalization="batchnorm"), (8, 20), 5
    np.random.seed(0)
    yield ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=120,
                            num_classes=5, weight_scale=0.1, reg=0.3, dtype=dtype), (6, 3, 8, 8), 5


@pytest.mark.parametrize("fallback", [False, True], ids=["compiled", "fallback"])
def test_l2_loss_and_gradient_unchanged(monkeypatch, dtype, fallback):
    """loss(reg) = loss(0) + 0.5*reg*sum W**2 and grads[W](reg) = grads[W](0) + reg*W."""
    compiled()
    if fallback:
        monkeypatch.setattr(cpu, "compiled", None)
        monkeypatch.setattr(cpu, "_warned", True)  # the conv net's fallback warning
    rng = np.random.RandomState(9)
    for model, x_shape, classes in _model_cases(dtype):
        X = rng.randn(*x_shape)
        y = rng.randint(classes, size=x_shape[0])
        weights = sorted(k for k in model.params if k.startswith("W"))
        loss, grads = model.loss(X, y)
        model.reg = 0.0
        assert model._l2(weights) == 0.0
        loss0, grads0 = model.loss(X, y)
        l2 = sum((model.params[k].astype(np.float64) ** 2).sum() for k in weights)
        tol = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
        np.testing.assert_allclose(loss, loss0 + 0.5 * 0.3 * l2, **tol)
        for k in model.params:
            assert grads[k].dtype == dtype
            extra = 0.3 * model.params[k] if k in weights else 0
            assert_close(grads[k], grads0[k] + extra, dtype)
        model.reg = 0.3
        np.testing.assert_allclose(model._l2(weights), 0.5 * 0.3 * l2, **tol)


# ------------------------------------------------------------------ matmul

# (M, K, N): one element, a long K (several k-steps), odd sizes that leave
# partial tiles, a column, a row.
MATMUL_SHAPES = [(1, 1, 1), (3, 700, 5), (67, 129, 33), (50, 1030, 13), (9, 40, 1), (1, 300, 77)]
TILES = [None, (5, 7, 3), (16, 32, 64), (64, 128, 500)]


def _layouts(rng, M, K, N, dtype):
    """(a, b) pairs of every layout: C-contiguous, transposed views, strided views."""
    a = rng.randn(M, K).astype(dtype)
    b = rng.randn(K, N).astype(dtype)
    yield a, b
    yield np.asfortranarray(a), b
    yield a, np.ascontiguousarray(b.T).T
    yield np.ascontiguousarray(a.T).T, np.asfortranarray(b)
    yield rng.randn(M, 2 * K).astype(dtype)[:, ::2], rng.randn(2 * K, N).astype(dtype)[::2]


@pytest.mark.parametrize("shape", MATMUL_SHAPES,
                         ids=["x".join(map(str, s)) for s in MATMUL_SHAPES])
def test_matmul_matches_numpy_on_every_layout(dtype, shape):
    kern = compiled()
    rng = np.random.RandomState(10)
    for a, b in _layouts(rng, *shape, dtype):
        expected = a.astype(np.float64) @ b.astype(np.float64)
        for tiles in TILES:
            got = kern.matmul(a, b, tiles=tiles)
            assert got.shape == expected.shape and got.dtype == dtype
            assert got.flags.c_contiguous
            assert_close(got, expected, dtype, atol=1e-4 if dtype == np.float32 else 1e-11)


@pytest.mark.parametrize("shape", MATMUL_SHAPES,
                         ids=["x".join(map(str, s)) for s in MATMUL_SHAPES])
def test_matmul_adds_beta_c_inside_the_product(dtype, shape):
    # c's tile is copied into the result's tile before the tile's first BLAS
    # call; with kb < K the later blocks must add to it, not replace it.
    kern = compiled()
    rng = np.random.RandomState(11)
    M, K, N = shape
    c = rng.randn(M, N).astype(dtype)
    for a, b in _layouts(rng, M, K, N, dtype):
        for c_view in (c, np.asfortranarray(c)):
            kept = c_view.copy()
            expected = a.astype(np.float64) @ b.astype(np.float64) + 0.3 * c.astype(np.float64)
            for tiles in TILES:
                got = kern.matmul(a, b, c_view, 0.3, tiles=tiles)
                assert got.flags.c_contiguous and got.dtype == dtype
                assert_close(got, expected, dtype, atol=1e-4 if dtype == np.float32 else 1e-11)
            np.testing.assert_array_equal(c_view, kept)  # c is not modified
    a, b = rng.randn(M, K).astype(dtype), rng.randn(K, N).astype(dtype)
    # beta 0 ignores c, as BLAS does (even its NaNs); K == 0 gives beta * c.
    np.testing.assert_array_equal(kern.matmul(a, b, np.full((M, N), np.nan, dtype), 0.0),
                                  kern.matmul(a, b))
    np.testing.assert_allclose(kern.matmul(np.ones((M, 0), dtype), np.ones((0, N), dtype),
                                           c, 2.0), 2 * c, rtol=1e-6)


@pytest.mark.parametrize("shape", [(50, 8192, 500), (50, 600, 40), (3, 1000, 7), (50, 64, 20)],
                         ids=["cnn-hidden", "partial-block", "narrow", "one-block"])
def test_affine_backward_sweep_matches_two_products(dtype, shape):
    # The compiled sweep over blocks of rows of w gives the products' values
    # (to rounding), the same bits on 1 and 2 threads and on every call, and
    # never writes outside dx and dw.
    kern = compiled()
    N, D, M = shape
    rng = np.random.RandomState(14)
    x, w, dout = (rng.randn(*s).astype(dtype) for s in ((N, D), (D, M), (N, M)))
    rows = kern._affine_rows(N, D, M)
    assert rows == D or (rows % 8 == 0 and 8 <= rows <= kern.AFFINE_MAX_ROWS)
    assert rows * N * M <= kern.GEMM_TILE_LIMIT
    dx, dw = kern.affine_backward(x, w, dout, 0.25, True)
    tol = 1e-3 if dtype == np.float32 else 1e-10
    x64, w64, d64 = (a.astype(np.float64) for a in (x, w, dout))
    assert_close(dx, d64 @ w64.T, dtype, atol=tol)
    assert_close(dw, x64.T @ d64 + 0.25 * w64, dtype, atol=tol)
    threads = kern.get_num_threads()
    try:
        kern.set_num_threads(1)
        one = kern.affine_backward(x, w, dout, 0.25, True)
    finally:
        kern.set_num_threads(threads)
    kern.set_num_threads(2)
    try:
        two = kern.affine_backward(x, w, dout, 0.25, True)
    finally:
        kern.set_num_threads(threads)
    for a, b in zip(one + two, (dx, dw) * 2):
        np.testing.assert_array_equal(a, b)
    none, dw_only = kern.affine_backward(x, w, dout, 0.25, False)
    assert none is None
    np.testing.assert_array_equal(dw_only, dw)
    _, dw0 = kern.affine_backward(x, w, dout, 0.0, False)
    assert_close(dw0, x64.T @ d64, dtype, atol=tol)
    # sum(w**2) taken block by block in the sweep: the float64 sum, rounded
    # once; the same bits on one or two threads
    for reg in (0.0, 0.25):
        results = []
        for n in (1, 2):
            kern.set_num_threads(n)
            try:
                results.append(kern.affine_backward(x, w, dout, reg, False, True))
            finally:
                kern.set_num_threads(threads)
        (_, dw1, s1), (_, dw2, s2) = results
        np.testing.assert_array_equal(dw1, dw2)
        assert s1 == s2 and s1.dtype == dtype
        assert s1 == dtype((w64 ** 2).sum()) or abs(s1 / (w64 ** 2).sum() - 1) < 1e-7


def test_affine_backward_edge_cases():
    kern = compiled()
    w = np.arange(6.0).reshape(3, 2)
    dx, dw = kern.affine_backward(np.ones((0, 3)), w, np.ones((0, 2)), 0.5, True)
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dw, 0.5 * w)         # no samples: only the L2 term
    assert kern.affine_backward(np.ones((0, 3)), w, np.ones((0, 2)), 0.5, True, True)[2] == 55.0
    dx, dw = kern.affine_backward(np.ones((4, 3)), np.ones((3, 0)), np.ones((4, 0)), 0.5, True)
    np.testing.assert_array_equal(dx, np.zeros((4, 3)))  # M == 0: an empty sum
    assert dw.shape == (3, 0)
    assert kern.affine_backward(np.ones((4, 3)), np.ones((3, 0)), np.ones((4, 0)), 0.5, True,
                                True)[2] == 0.0
    assert kern._affine_rows(200, 300, 400) == 0        # N * M too large for 8-row blocks
    with pytest.raises(ValueError, match="too large for blocks of 8 rows"):
        kern.affine_backward(np.ones((200, 300)), np.ones((300, 400)), np.ones((200, 400)))


def test_matmul_edge_cases_and_bad_input():
    kern = compiled()
    np.testing.assert_array_equal(kern.matmul(np.ones((3, 0)), np.ones((0, 4))), np.zeros((3, 4)))
    assert kern.matmul(np.ones((0, 5)), np.ones((5, 4))).shape == (0, 4)
    frozen = np.ones((4, 6), np.float32)
    frozen.setflags(write=False)
    np.testing.assert_array_equal(kern.matmul(frozen, frozen.T), np.full((4, 4), 6, np.float32))
    with pytest.raises(TypeError, match="b has dtype float64 but a has dtype float32"):
        kern.matmul(np.ones((2, 3), np.float32), np.ones((3, 2)))
    with pytest.raises(TypeError, match="a must be float32 or float64"):
        kern.matmul(np.ones((2, 3), np.int64), np.ones((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\)"):
        kern.matmul(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"c must have the shape \(M, N\) = \(2, 2\).*"
                                         r"got \(2, 3\)"):
        kern.matmul(np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 3)), 1.0)
    with pytest.raises(TypeError, match="c has dtype float32"):
        kern.matmul(np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 2), np.float32), 1.0)
    with pytest.raises(ValueError, match="beta must be a finite number"):
        kern.matmul(np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 2)), float("nan"))


def test_matmul_tiles_fit_the_blas_limit():
    kern = compiled()
    for M, N, K in [(50, 500, 8192), (50, 8192, 500), (8192, 500, 50), (200, 512, 3072),
                    (1, 1, 1), (3000, 7, 10 ** 6)]:
        for transposed in (False, True):
            mb, nb, kb = kern._matmul_tiles(M, N, K, transposed)
            assert 1 <= mb <= M and 1 <= nb <= N and 1 <= kb <= K
            assert mb * nb * kb <= kern.GEMM_TILE_LIMIT


def test_backend_matmul_routes_large_products(monkeypatch, dtype):
    kern = compiled()
    calls = []
    monkeypatch.setattr(kern, "matmul",
                        lambda a, b, c=None, beta=0.0: calls.append(a.shape) or a @ b)
    small = np.ones((4, 5), dtype), np.ones((5, 6), dtype)
    large = np.ones((50, 200), dtype), np.ones((200, 60), dtype)   # 600,000 multiply-adds
    cpu.matmul(*small)
    assert calls == []
    cpu.matmul(*large)
    assert calls == [(50, 200)]
    cpu.matmul(large[0].astype(np.float16), large[1].astype(np.float16))
    cpu.matmul(large[0], large[1].astype(np.float64 if dtype == np.float32 else np.float32))
    assert calls == [(50, 200)]
    monkeypatch.setattr(cpu, "compiled", None)
    np.testing.assert_array_equal(cpu.matmul(*large), large[0] @ large[1])


@pytest.mark.parametrize("fallback", [False, True], ids=["compiled", "fallback"])
def test_affine_layers_unchanged_on_large_products(monkeypatch, dtype, fallback):
    if fallback:
        monkeypatch.setattr(cpu, "compiled", None)
    rng = np.random.RandomState(11)
    x = rng.randn(20, 4, 9, 10).astype(dtype)       # D = 360; 20*360*150 multiply-adds
    w = rng.randn(360, 150).astype(dtype)
    b = rng.randn(150).astype(dtype)
    dout = rng.randn(20, 150).astype(dtype)
    out, cache = affine_forward(x, w, b)
    dx, dw, db = affine_backward(dout, cache)
    x2, w64, d64 = x.reshape(20, -1).astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    for got, ref in [(out, x2 @ w64 + b), (dx, (d64 @ w64.T).reshape(x.shape)),
                     (dw, x2.T @ d64), (db, d64.sum(axis=0))]:
        assert got.dtype == dtype and got.shape == ref.shape
        assert_close(got, ref, dtype, atol=1e-4 if dtype == np.float32 else 1e-11)


def test_affine_with_mixed_dtypes_uses_numpy():
    compiled()
    rng = np.random.RandomState(12)
    x = rng.randn(60, 300).astype(np.float32)
    w = rng.randn(300, 40)
    out, _ = affine_forward(x, w, np.zeros(40))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, x @ w, rtol=1e-12)


# ---------------------------------------------------------------------------
# Reused memory for large outputs (_cpu_memory.pxi)
# ---------------------------------------------------------------------------


@pytest.fixture
def pool():
    """The compiled kernels with an empty pool; limits restored afterwards."""
    kern = compiled()
    limits = kern.POOL_MIN_BYTES, kern.POOL_IDLE_BYTES
    kern.free_pooled()
    yield kern
    kern.POOL_MIN_BYTES, kern.POOL_IDLE_BYTES = limits
    kern.free_pooled()


def test_pooled_empty_reuses_freed_memory_of_the_same_size(pool):
    a = pool.pooled_empty((1024, 512), np.float32)           # 2 MiB
    assert a.shape == (1024, 512) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 64 == 0
    address = a.ctypes.data
    assert pool.pooled_idle_bytes() == 0
    del a
    assert pool.pooled_idle_bytes() == 2 << 20
    b = pool.pooled_empty((256, 1024), np.float64)           # the same bytes, another shape
    assert b.ctypes.data == address and pool.pooled_idle_bytes() == 0
    c = pool.pooled_empty((1024, 512), np.float32)           # b still in use: new memory
    assert c.ctypes.data != address
    small = pool.pooled_empty((10, 10), np.float64)          # below POOL_MIN_BYTES: np.empty
    assert small.flags.owndata and small.shape == (10, 10)


def test_a_view_keeps_its_block_in_use(pool):
    a = pool.pooled_empty((1 << 18,), np.float64)            # 2 MiB
    a[:] = 1.0
    view = a[10:20]
    del a
    assert pool.pooled_idle_bytes() == 0                     # the view still uses the block
    b = pool.pooled_empty((1 << 18,), np.float64)
    b[:] = 2.0
    np.testing.assert_array_equal(view, np.ones(10))         # untouched by b
    del view
    assert pool.pooled_idle_bytes() == 2 << 20
    del b
    assert pool.pooled_idle_bytes() == 4 << 20
    assert cpu.free_pooled_memory() == 4 << 20
    assert pool.pooled_idle_bytes() == 0 and cpu.free_pooled_memory() == 0


def test_idle_memory_is_capped_oldest_freed_first(pool):
    pool.POOL_IDLE_BYTES = 5 << 20
    a0, a1, a2 = (pool.pooled_empty((1 << 20,), np.uint8) for _ in range(3))
    big = pool.pooled_empty((3 << 20,), np.uint8)
    addresses = [a.ctypes.data for a in (a0, a1, a2)]
    del a0, a1, a2                                           # 3 MiB idle, a0 the oldest
    assert pool.pooled_idle_bytes() == 3 << 20
    del big                                                  # 6 MiB > 5: a0 is freed
    assert pool.pooled_idle_bytes() == 5 << 20
    reused = [pool.pooled_empty((1 << 20,), np.uint8) for _ in range(2)]
    assert [r.ctypes.data for r in reused] == addresses[:0:-1]  # a2, then a1
    assert pool.pooled_idle_bytes() == 3 << 20               # the 3 MiB block is left


def _poison(pool, shapes_dtypes):
    """Leave idle blocks of these shapes full of NaN (ints: 12345); return their addresses."""
    blocks = []
    for shape, dtype in shapes_dtypes:
        a = pool.pooled_empty(shape, dtype)
        a.fill(np.nan if np.dtype(dtype).kind == "f" else 12345)
        blocks.append(a)
    addresses = {a.ctypes.data for a in blocks}
    del a
    blocks.clear()
    return addresses


def _pool_cases(dtype):
    """(name, args) of every operation with an array output, on small shapes."""
    rng = np.random.RandomState(7)
    r = lambda *s: rng.randn(*s).astype(dtype)  # noqa: E731
    x, w, b = r(3, 2, 8, 8), r(4, 2, 3, 3), r(4)
    conv = (1, 1, 8, 8)
    pool2 = (2, 2, 2, 4, 4)
    _, argmax = cpu.numpy_kernels.conv_relu_pool_forward(x, w, b, *conv, *pool2)
    _, pam = cpu.numpy_kernels.maxpool_forward(x, 2, 2, 2, 4, 4)
    params = [r(5, 7) for _ in range(4)]
    v = np.abs(params[3])
    return [
        ("im2col", (x, 3, 3, 1, 1, 8, 8)),
        ("conv_forward", (x, w, b) + conv),
        ("conv_backward", (r(3, 4, 8, 8), x, w) + conv),
        ("maxpool_forward", (x, 2, 2, 2, 4, 4)),
        ("maxpool_backward", (r(3, 2, 4, 4), pam, x.shape, 2, 2, 2, 4, 4)),
        ("conv_relu_pool_forward", (x, w, b) + conv + pool2),
        ("conv_relu_pool_backward", (r(3, 4, 4, 4), argmax, x, w) + conv + pool2),
        ("matmul", (r(6, 5), r(5, 7), r(6, 7), 0.5)),
        ("affine_backward", (r(6, 40), r(40, 7), r(6, 7), 0.1)),
        ("sgd", (params[0], params[1], 0.1)),
        ("adam", (params[0], params[1], params[2].copy(), v.copy(), 0.9, 0.999, 1e-3, 1e-8)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_write_every_element_of_reused_memory(pool, dtype):
    # Fresh pages come zeroed from the kernel; reused ones hold the last
    # array's values. Every output must be written in full: each operation
    # runs on blocks left full of NaN by outputs of its own
    # shapes (12345 for argmax), and must reuse them and match the NumPy
    # formula.
    pool.POOL_MIN_BYTES = 0
    for name, args in _pool_cases(dtype):
        ref = getattr(cpu.numpy_kernels, name)(*[a.copy() if isinstance(a, np.ndarray) else a
                                                 for a in args])
        ref = ref if isinstance(ref, tuple) else (ref,)
        outs = [o for o in ref if isinstance(o, np.ndarray) and o.size]
        poisoned = _poison(pool, [(o.shape, o.dtype) for o in outs])
        got = getattr(pool, name)(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
        got = got if isinstance(got, tuple) else (got,)
        arrays = [g for g in got if isinstance(g, np.ndarray) and g.size]
        assert poisoned & {g.ctypes.data for g in arrays}, name + " did not reuse a block"
        for g, o in zip(arrays, outs):
            assert g.shape == o.shape and g.dtype == o.dtype, name
            if g.dtype.kind == "f":
                assert_close(g, o, dtype)
            else:
                np.testing.assert_array_equal(g, o, err_msg=name)
        del got, arrays
        pool.free_pooled()


@pytest.mark.parametrize("threads_n", [1, 2])
def test_adamw_alongside_runs_beside_the_next_kernel_call(monkeypatch, threads, threads_n):
    # The compiled adamw_alongside hands its pass to the block's first
    # kernel call: one team call runs both (odd threads start with Adam),
    # the next call runs alone, and the results are the bits of the two
    # run one after the other, on one thread or two.
    from xdl.backends import _cpu_team
    kern = threads
    kern.set_num_threads(threads_n)
    rng = np.random.RandomState(23)
    x = rng.randn(50, 3, 32, 32).astype(np.float32)
    w = (rng.randn(32, 3, 7, 7) * 1e-2).astype(np.float32)
    pooled, argmax = kern.conv_relu_pool_forward(x, w, np.zeros(32, np.float32), 1, 3, 32, 32,
                                                 2, 2, 2, 16, 16)
    dout = rng.randn(*pooled.shape).astype(np.float32)
    W2, dW2, m = (rng.randn(8192, 50).astype(np.float32) for _ in range(3))
    v = rng.rand(8192, 50).astype(np.float32)
    conv = (dout, argmax, x, w, 1, 3, 32, 32, 2, 2, 2, 16, 16, False)
    scalars = (0.9, 0.999, 1e-3, 1e-8, 1.0)
    want_conv = kern.conv_relu_pool_backward(*conv)
    Wr, mr, vr = W2.copy(), m.copy(), v.copy()
    kern.adamw(Wr, dW2, mr, vr, *scalars, Wr)
    calls = []
    run = _cpu_team.run

    def recording_run(work, n):
        calls.append(type(work).__name__)
        run(work, n)
    monkeypatch.setattr(_cpu_team, "run", recording_run)
    with kern.adamw_alongside(W2, dW2, m, v, *scalars, W2):
        got_conv = kern.conv_relu_pool_backward(*conv)
        again = kern.conv_relu_pool_backward(*conv)
    assert calls == ["_Together", "_ConvReluPoolBackwardWork"]
    for a, b in zip(got_conv[1:] + again[1:], want_conv[1:] * 2):
        np.testing.assert_array_equal(a, b)
    for a, b in ((W2, Wr), (m, mr), (v, vr)):
        np.testing.assert_array_equal(a, b)
    # no kernel call in the block: the pass runs on exit, and nothing is
    # left pending for the calls after the block
    calls.clear()
    with kern.adamw_alongside(W2, dW2, m, v, *scalars, W2):
        pass
    kern.sum_of_squares(np.ones(3 * 65536, np.float32))
    assert calls == ["_AdamWWork", "_SumOfSquaresWork"]


def test_adamw_alongside_refuses_a_second_pending_step():
    kern = compiled()
    a = [np.zeros(10) for _ in range(4)]
    b = [np.zeros(10) for _ in range(4)]
    with kern.adamw_alongside(*a, 0.9, 0.99, 0.1, 1e-8, 1.0, a[0]):
        with pytest.raises(RuntimeError, match="another side work is pending"):
            with kern.adamw_alongside(*b, 0.9, 0.99, 0.1, 1e-8, 1.0, b[0]):
                pass
    np.testing.assert_array_equal(b[0], 0)  # the refused step never ran


def test_in_place_step_is_made_for_adam_and_adamw_only():
    w = np.zeros((3, 4), np.float32)
    for rule in ("sgd", "sgd_momentum", "rmsprop", optim.sgd, lambda w, dw, c: (w, c)):
        assert optim.in_place_step(rule, w, {}) is None
    config = {"learning_rate": 0.5, "t": 4}
    step = optim.in_place_step(optim.adamw, w, config)
    assert step.rule == "adamw" and step.w is w and step.shrink == 1 - 0.5 * 1e-2
    assert config["m"] is step.m and config["m"].dtype == np.float32  # the state, made once
    assert config["t"] == 4 and not step.applied
    dw = np.ones_like(w)
    with step.take_alongside(dw):
        pass
    assert config["t"] == 5 and step.applied
    expected, _ = optim.adamw(np.zeros_like(w), dw, {"learning_rate": 0.5, "t": 4})
    np.testing.assert_array_equal(w, expected)
    with pytest.raises(RuntimeError, match="taken already"):
        step.take_alongside(dw)
    with pytest.raises(ValueError, match="'lr' is not used by the update rule adam"):
        optim.in_place_step("adam", w, {"lr": 1e-3})
    with pytest.raises(ValueError, match="dw has shape"):
        optim.in_place_step("adam", w, {}).take_alongside(np.ones(5, np.float32))
