"""Affine, ReLU, losses, dropout and the normalization layers: the notebooks'
reference values, numerical gradients, statistics and bad input.

Inputs are generated on the host and moved to ``xp`` (numpy or cupy); the
numerical gradients are computed on the host in float64.
"""
import numpy as np
import pytest

import xdl
from xdl.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from xdl.layers import (
    affine_backward, affine_forward, batchnorm_backward, batchnorm_backward_alt,
    batchnorm_forward, dropout_backward, dropout_forward, layernorm_backward,
    layernorm_forward, relu_backward, relu_forward, softmax_loss,
    spatial_batchnorm_backward, spatial_batchnorm_forward, spatial_groupnorm_backward,
    spatial_groupnorm_forward, svm_loss,
)
from xdl.layer_utils import affine_relu_backward, affine_relu_forward

from helpers import assert_close, host, to


def num_grads(f, args, dout):
    """Host numerical gradients of sum(f(*args) * dout) for each arg."""
    grads = []
    for i in range(len(args)):
        def fi(a, i=i):
            call = list(args)
            call[i] = a
            return f(*call)
        grads.append(eval_numerical_gradient_array(fi, args[i].copy(), dout))
    return grads


# --- affine / relu -------------------------------------------------------------


def test_affine_forward_notebook_value(xp):
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * np.prod(input_shape)
    weight_size = output_dim * np.prod(input_shape)
    x = np.linspace(-0.1, 0.5, num=input_size).reshape(num_inputs, *input_shape)
    w = np.linspace(-0.2, 0.3, num=weight_size).reshape(np.prod(input_shape), output_dim)
    b = np.linspace(-0.3, 0.1, num=output_dim)
    out, _ = affine_forward(to(xp, x), to(xp, w), to(xp, b))
    correct_out = np.array([[1.49834967, 1.70660132, 1.91485297],
                            [3.25553199, 3.5141327, 3.77273342]])
    assert isinstance(out, xp.ndarray)
    assert rel_error(host(out), correct_out) < 1e-8


def test_affine_backward_numerical(xp):
    rng = np.random.RandomState(231)
    x, w, b = rng.randn(10, 2, 3), rng.randn(6, 5), rng.randn(5)
    dout = rng.randn(10, 5)
    expected = num_grads(lambda x, w, b: affine_forward(x, w, b)[0], (x, w, b), dout)
    _, cache = affine_forward(to(xp, x), to(xp, w), to(xp, b))
    got = affine_backward(to(xp, dout), cache)
    for g, e in zip(got, expected):
        assert rel_error(host(g), e) < 1e-9


@pytest.mark.parametrize("shape", [(10, 6, 5), (60, 200, 60)], ids=["small", "team-sized"])
def test_affine_backward_folds_the_l2_gradient(xp, shape):
    # dw with reg is the gradient of affine_forward(x, w, b) . dout
    # + 0.5 * reg * sum(w**2); the team-sized product (>= MATMUL_MIN_WORK
    # multiply-adds) adds reg * w inside the compiled GEMM on the CPU.
    N, D, M = shape
    rng = np.random.RandomState(5)
    x, w, b, dout = rng.randn(N, D), rng.randn(D, M), rng.randn(M), rng.randn(N, M)
    _, cache = affine_forward(to(xp, x), to(xp, w), to(xp, b))
    dx, dw, db = affine_backward(to(xp, dout), cache)
    dx_r, dw_r, db_r = affine_backward(to(xp, dout), cache, reg=0.7)
    assert_close(dw_r, host(dw) + 0.7 * w, np.float64)
    np.testing.assert_array_equal(host(dx_r), host(dx))
    np.testing.assert_array_equal(host(db_r), host(db))
    if N * D * M < 10 ** 4:
        dw_num = eval_numerical_gradient(
            lambda w: float(np.sum(affine_forward(x, w, b)[0] * dout) + 0.35 * np.sum(w * w)),
            w.copy(), verbose=False)
        assert rel_error(host(dw_r), dw_num) < 1e-8
    none, dw_skip, _ = affine_backward(to(xp, dout), cache, reg=0.7, compute_dx=False)
    assert none is None
    np.testing.assert_array_equal(host(dw_skip), host(dw_r))
    with pytest.raises(ValueError, match="reg must be a finite number >= 0, got -1"):
        affine_backward(to(xp, dout), cache, reg=-1)
    # w_squares: sum(w**2) appended, the gradients unchanged
    squares = [1.5]
    got = affine_backward(to(xp, dout), cache, reg=0.7, w_squares=squares)
    for g, r in zip(got, (dx_r, dw_r, db_r)):
        np.testing.assert_array_equal(host(g), host(r))
    assert len(squares) == 2 and squares[0] == 1.5
    assert abs(float(host(squares[1])) / float(np.sum(w * w)) - 1) < 1e-13
    with pytest.raises(TypeError, match="w_squares must be a list.*got tuple"):
        affine_backward(to(xp, dout), cache, reg=0.7, w_squares=())


def test_affine_keeps_float32(xp):
    x = to(xp, np.ones((2, 3)), np.float32)
    w = to(xp, np.ones((3, 4)), np.float32)
    b = to(xp, np.zeros(4), np.float32)
    out, cache = affine_forward(x, w, b)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in affine_backward(out, cache))


def test_affine_bad_shapes_name_arguments():
    with pytest.raises(ValueError, match="x has 6 features.*w has 5 rows"):
        affine_forward(np.ones((2, 2, 3)), np.ones((5, 4)), np.ones(4))
    with pytest.raises(ValueError, match="b must have shape \\(4,\\)"):
        affine_forward(np.ones((2, 5)), np.ones((5, 4)), np.ones(3))


def test_relu_forward_notebook_value(xp):
    x = np.linspace(-0.5, 0.5, num=12).reshape(3, 4)
    out, _ = relu_forward(to(xp, x))
    correct_out = np.array([[0., 0., 0., 0.],
                            [0., 0., 0.04545455, 0.13636364],
                            [0.22727273, 0.31818182, 0.40909091, 0.5]])
    assert rel_error(host(out), correct_out) < 1e-7


def test_relu_backward_numerical(xp):
    rng = np.random.RandomState(231)
    x, dout = rng.randn(10, 10), rng.randn(10, 10)
    dx_num = eval_numerical_gradient_array(lambda x: relu_forward(x)[0], x, dout)
    _, cache = relu_forward(to(xp, x))
    assert rel_error(host(relu_backward(to(xp, dout), cache)), dx_num) < 1e-10


def test_affine_relu_sandwich_numerical(xp):
    rng = np.random.RandomState(231)
    x, w, b = rng.randn(2, 3, 4), rng.randn(12, 10), rng.randn(10)
    dout = rng.randn(2, 10)
    expected = num_grads(lambda x, w, b: affine_relu_forward(x, w, b)[0], (x, w, b), dout)
    _, cache = affine_relu_forward(to(xp, x), to(xp, w), to(xp, b))
    for g, e in zip(affine_relu_backward(to(xp, dout), cache), expected):
        assert rel_error(host(g), e) < 1e-8


# --- losses ----------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [softmax_loss, svm_loss])
def test_loss_layers_numerical(xp, loss_fn):
    rng = np.random.RandomState(231)
    num_classes, num_inputs = 10, 50
    x = 0.001 * rng.randn(num_inputs, num_classes)
    y = rng.randint(num_classes, size=num_inputs)
    dx_num = eval_numerical_gradient(lambda x: loss_fn(x, y)[0], x, verbose=False)
    loss, dx = loss_fn(to(xp, x), xp.asarray(y))
    if loss_fn is softmax_loss:
        assert abs(float(loss) - 2.3025) < 5e-3
        assert rel_error(host(dx), dx_num) < 1e-7
    else:
        assert abs(float(loss) - 9.0) < 0.05
        assert rel_error(host(dx), dx_num) < 1e-7


def test_softmax_loss_stable_for_huge_scores(xp):
    # The notebooks print "loss: inf" and a divide-by-zero warning here.
    x = to(xp, [[1e4, -1e4, 0.0], [0.0, 5e3, -5e3]])
    y = xp.asarray(np.array([1, 2]))
    loss, dx = softmax_loss(x, y)  # RuntimeWarnings are errors in this suite
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx((2e4 + 1e4) / 2)
    assert np.all(np.isfinite(host(dx)))
    x32 = to(xp, [[1e30, -1e30]], np.float32)
    loss32, dx32 = softmax_loss(x32, xp.asarray(np.array([1])))
    assert np.isfinite(float(loss32)) and np.all(np.isfinite(host(dx32)))


@pytest.mark.parametrize("loss_fn", [softmax_loss, svm_loss])
def test_loss_bad_labels(loss_fn):
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels outside \[0, 4\): min 0, max 4"):
        loss_fn(x, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="min -1"):
        loss_fn(x, np.array([0, -1, 2]))
    with pytest.raises(TypeError, match="integer class labels"):
        loss_fn(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        loss_fn(x, np.array([0, 1]))


# --- dropout -----------------------------------------------------------------------


@pytest.mark.parametrize("p, mean_train, zero_frac", [
    (0.25, 10.014059116977283, 0.749784),
    (0.4, 9.977917658761159, 0.600796),
    (0.7, 9.987811912159426, 0.30074),
])
def test_dropout_forward_notebook_values(p, mean_train, zero_frac, numpy_backend):
    # Same global-RNG draws as the notebook: seed 231, then the three p's in order.
    np.random.seed(231)
    x = np.random.randn(500, 500) + 10
    for q in (0.25, 0.4, 0.7):
        out, _ = dropout_forward(x, {"mode": "train", "p": q})
        if q == p:
            break
    out_test, _ = dropout_forward(x, {"mode": "test", "p": p})
    assert out.mean() == pytest.approx(mean_train, rel=1e-12)
    assert (out == 0).mean() == pytest.approx(zero_frac, abs=1e-12)
    assert out_test.mean() == pytest.approx(x.mean(), rel=1e-15)
    assert (out_test == 0).mean() == 0


def test_dropout_statistics(xp, dtype):
    x = to(xp, np.random.RandomState(0).randn(400, 500) + 10, dtype)
    for p in (0.25, 0.5, 0.9):
        out, _ = dropout_forward(x, {"mode": "train", "p": p})
        assert out.dtype == dtype
        assert float((out == 0).mean()) == pytest.approx(1 - p, abs=0.01)
        assert float(out.mean()) == pytest.approx(float(x.mean()), rel=0.01)


def test_dropout_mask_holds_one_over_p_and_zero_in_the_input_dtype(xp, dtype):
    # Kept units hold dtype(1 / p) exactly and dropped ones +0.0: the bits of
    # where(keep, 1/p, 0).
    x = to(xp, np.random.RandomState(1).randn(30, 40), dtype)
    for p in (1 / 3, 0.5, 0.9, 1.0):
        _, (_, mask) = dropout_forward(x, {"mode": "train", "p": p, "seed": 5})
        m = host(mask)
        assert m.dtype == dtype and m.shape == (30, 40)
        kept = m != 0
        np.testing.assert_array_equal(m, np.where(kept, dtype(1 / p), dtype(0)))
        assert not np.signbit(m).any()
        if p == 1.0:
            assert kept.all()


def test_dropout_backward_numerical(xp):
    rng = np.random.RandomState(231)
    x, dout = rng.randn(10, 10) + 10, rng.randn(10, 10)
    param = {"mode": "train", "p": 0.2, "seed": 123}
    dx_num = eval_numerical_gradient_array(lambda xx: dropout_forward(xx, param)[0], x, dout)
    _, cache = dropout_forward(to(xp, x), param)
    assert rel_error(host(dropout_backward(to(xp, dout), cache)), dx_num) < 1e-10


def test_dropout_seed_is_reproducible_and_leaves_global_rng(xp):
    x = to(xp, np.ones((6, 7)))
    state = np.random.get_state()[1].copy()
    a, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    b, _ = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    np.testing.assert_array_equal(host(a), host(b))
    np.testing.assert_array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("p", [0, -0.1, 1.5, "0.5"])
def test_dropout_bad_keep_probability(p):
    with pytest.raises(ValueError, match=r"probability of keeping a unit.*\(0, 1\]"):
        dropout_forward(np.ones(3), {"mode": "train", "p": p})


def test_dropout_bad_mode():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        dropout_forward(np.ones(3), {"mode": "eval", "p": 0.5})


# --- batch normalization ------------------------------------------------------------


def _two_layer_activations(rng, N, D1=50, D2=60, D3=3, W1=None, W2=None):
    X = rng.randn(N, D1)
    return np.maximum(0, X.dot(W1)).dot(W2)


def test_batchnorm_train_statistics(xp, dtype):
    rng = np.random.RandomState(231)
    W1, W2 = rng.randn(50, 60), rng.randn(60, 3)
    a = to(xp, _two_layer_activations(rng, 200, W1=W1, W2=W2), dtype)
    gamma = to(xp, [1.0, 2.0, 3.0], dtype)
    beta = to(xp, [11.0, 12.0, 13.0], dtype)
    out, _ = batchnorm_forward(a, gamma, beta, {"mode": "train"})
    assert out.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-7
    np.testing.assert_allclose(host(out.mean(axis=0)), [11, 12, 13], atol=tol * 20)
    np.testing.assert_allclose(host(out.std(axis=0)), [1, 2, 3], rtol=tol)


def test_batchnorm_test_time_notebook_values(numpy_backend):
    np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    W1 = np.random.randn(D1, D2)
    W2 = np.random.randn(D2, D3)
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(D3), np.zeros(D3)
    for _ in range(50):
        X = np.random.randn(N, D1)
        batchnorm_forward(np.maximum(0, X.dot(W1)).dot(W2), gamma, beta, bn_param)
    bn_param["mode"] = "test"
    X = np.random.randn(N, D1)
    a_norm, _ = batchnorm_forward(np.maximum(0, X.dot(W1)).dot(W2), gamma, beta, bn_param)
    np.testing.assert_allclose(a_norm.mean(axis=0), [-0.03927354, -0.04349152, -0.10452688],
                               atol=1e-7)
    np.testing.assert_allclose(a_norm.std(axis=0), [1.01531428, 1.01238373, 0.97819988],
                               atol=1e-7)


@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_alt])
def test_batchnorm_backward_numerical(xp, backward):
    rng = np.random.RandomState(231)
    N, D = 4, 5
    x = 5 * rng.randn(N, D) + 12
    gamma, beta, dout = rng.randn(D), rng.randn(D), rng.randn(N, D)
    expected = num_grads(lambda x, g, b: batchnorm_forward(x, g, b, {"mode": "train"})[0],
                         (x, gamma, beta), dout)
    _, cache = batchnorm_forward(to(xp, x), to(xp, gamma), to(xp, beta), {"mode": "train"})
    for g, e in zip(backward(to(xp, dout), cache), expected):
        assert rel_error(host(g), e) < 1e-8


def test_batchnorm_backward_alt_matches_graph(xp):
    rng = np.random.RandomState(231)
    N, D = 100, 500
    x = to(xp, 5 * rng.randn(N, D) + 12)
    gamma, beta, dout = to(xp, rng.randn(D)), to(xp, rng.randn(D)), to(xp, rng.randn(N, D))
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx1, dg1, db1 = batchnorm_backward(dout, cache)
    dx2, dg2, db2 = batchnorm_backward_alt(dout, cache)
    assert rel_error(dx1, dx2) < 1e-11
    assert rel_error(dg1, dg2) < 1e-12
    assert rel_error(db1, db2) == 0


def test_batchnorm_backward_twice_same_and_cache_untouched():
    rng = np.random.RandomState(0)
    x, g, b, dout = rng.randn(6, 4), rng.randn(4), rng.randn(4), rng.randn(6, 4)
    _, cache = batchnorm_forward(x, g, b, {"mode": "train"})
    saved = [c.copy() if isinstance(c, np.ndarray) else c for c in cache]
    first = batchnorm_backward(dout, cache)
    second = batchnorm_backward(dout, cache)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(saved, cache):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, c)


def test_batchnorm_bad_input():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        batchnorm_forward(x, np.ones(4), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        batchnorm_forward(x, np.ones(3), np.zeros((1, 3)), {"mode": "train"})
    with pytest.raises(ValueError, match="'train' or 'test'"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "training"})
    _, cache = batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "test"})
    with pytest.raises(ValueError, match="'train' mode"):
        batchnorm_backward(x, cache)


# --- layer normalization ---------------------------------------------------------------


def test_layernorm_statistics(xp, dtype):
    rng = np.random.RandomState(231)
    W1, W2 = rng.randn(50, 60), rng.randn(60, 3)
    a = to(xp, _two_layer_activations(rng, 4, W1=W1, W2=W2), dtype)
    out, _ = layernorm_forward(a, to(xp, [3.0] * 3, dtype), to(xp, [5.0] * 3, dtype), {})
    tol = 1e-4 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(host(out.mean(axis=1)), 5.0, atol=tol * 10)
    np.testing.assert_allclose(host(out.std(axis=1)), 3.0, rtol=tol)


def test_layernorm_backward_numerical(xp):
    rng = np.random.RandomState(231)
    N, D = 4, 5
    x = 5 * rng.randn(N, D) + 12
    gamma, beta, dout = rng.randn(D), rng.randn(D), rng.randn(N, D)
    expected = num_grads(lambda x, g, b: layernorm_forward(x, g, b, {})[0],
                         (x, gamma, beta), dout)
    _, cache = layernorm_forward(to(xp, x), to(xp, gamma), to(xp, beta), {})
    for g, e in zip(layernorm_backward(to(xp, dout), cache), expected):
        assert rel_error(host(g), e) < 1e-8


def test_layernorm_bad_gamma():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        layernorm_forward(np.ones((2, 3)), np.ones(2), np.zeros(3), {})


# --- spatial batch / group normalization -------------------------------------------------


def test_spatial_batchnorm_statistics(xp, dtype):
    rng = np.random.RandomState(231)
    x = to(xp, 4 * rng.randn(2, 3, 4, 5) + 10, dtype)
    out, _ = spatial_batchnorm_forward(x, to(xp, [3, 4, 5], dtype), to(xp, [6, 7, 8], dtype),
                                       {"mode": "train"})
    assert out.shape == (2, 3, 4, 5) and out.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(host(out.mean(axis=(0, 2, 3))), [6, 7, 8], atol=tol * 20)
    np.testing.assert_allclose(host(out.std(axis=(0, 2, 3))), [3, 4, 5], rtol=tol)


def test_spatial_batchnorm_test_time_notebook_values(numpy_backend):
    np.random.seed(231)
    N, C, H, W = 10, 4, 11, 12
    bn_param = {"mode": "train"}
    gamma, beta = np.ones(C), np.zeros(C)
    for _ in range(50):
        spatial_batchnorm_forward(2.3 * np.random.randn(N, C, H, W) + 13, gamma, beta, bn_param)
    bn_param["mode"] = "test"
    a_norm, _ = spatial_batchnorm_forward(2.3 * np.random.randn(N, C, H, W) + 13,
                                          gamma, beta, bn_param)
    np.testing.assert_allclose(a_norm.mean(axis=(0, 2, 3)),
                               [-0.08034406, 0.07562881, 0.05716371, 0.04378383], atol=1e-7)
    np.testing.assert_allclose(a_norm.std(axis=(0, 2, 3)),
                               [0.96718744, 1.0299714, 1.02887624, 1.00585577], atol=1e-7)


def test_spatial_batchnorm_backward_numerical(xp):
    rng = np.random.RandomState(231)
    N, C, H, W = 2, 3, 4, 5
    x = 5 * rng.randn(N, C, H, W) + 12
    gamma, beta, dout = rng.randn(C), rng.randn(C), rng.randn(N, C, H, W)
    expected = num_grads(
        lambda x, g, b: spatial_batchnorm_forward(x, g, b, {"mode": "train"})[0],
        (x, gamma, beta), dout)
    _, cache = spatial_batchnorm_forward(to(xp, x), to(xp, gamma), to(xp, beta),
                                         {"mode": "train"})
    for g, e in zip(spatial_batchnorm_backward(to(xp, dout), cache), expected):
        assert rel_error(host(g), e) < 1e-6


def test_spatial_groupnorm_statistics(xp, dtype):
    rng = np.random.RandomState(231)
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = to(xp, 4 * rng.randn(N, C, H, W) + 10, dtype)
    gamma = to(xp, np.ones((1, C, 1, 1)), dtype)
    beta = to(xp, np.zeros((1, C, 1, 1)), dtype)
    out, _ = spatial_groupnorm_forward(x, gamma, beta, G, {})
    out_g = host(out).reshape(N * G, -1)
    tol = 1e-4 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(out_g.mean(axis=1), 0, atol=tol * 10)
    np.testing.assert_allclose(out_g.std(axis=1), 1, rtol=tol)


def test_spatial_groupnorm_backward_numerical(xp):
    rng = np.random.RandomState(231)
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * rng.randn(N, C, H, W) + 12
    gamma, beta = rng.randn(1, C, 1, 1), rng.randn(1, C, 1, 1)
    dout = rng.randn(N, C, H, W)
    expected = num_grads(lambda x, g, b: spatial_groupnorm_forward(x, g, b, G, {})[0],
                         (x, gamma, beta), dout)
    _, cache = spatial_groupnorm_forward(to(xp, x), to(xp, gamma), to(xp, beta), G, {})
    got = spatial_groupnorm_backward(to(xp, dout), cache)
    assert got[1].shape == (1, C, 1, 1) and got[2].shape == (1, C, 1, 1)
    for g, e in zip(got, expected):
        assert rel_error(host(g), e) < 1e-7


def test_spatial_groupnorm_groups_must_divide_channels():
    x = np.ones((2, 6, 3, 3))
    g, b = np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1))
    with pytest.raises(ValueError, match="divisor of the number of channels C=6, got 4"):
        spatial_groupnorm_forward(x, g, b, 4, {})
    with pytest.raises(ValueError, match=r"gamma must have shape \(1, 6, 1, 1\)"):
        spatial_groupnorm_forward(x, np.ones(6), b, 3, {})


def test_spatial_batchnorm_bad_gamma():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        spatial_batchnorm_forward(np.ones((2, 3, 2, 2)), np.ones((1, 3, 1, 1)), np.zeros(3),
                                  {"mode": "train"})


def test_layers_reject_mixed_devices(gpu):
    with pytest.raises(TypeError, match="mixed numpy and cupy"):
        affine_forward(np.ones((2, 3)), gpu.ones((3, 4)), gpu.zeros(4))
    assert xdl.get_array_module(gpu.ones(1)) is gpu
