"""numpy against cupy on the same host-generated inputs: every layer, sandwich
layer, update rule and model, forward and backward, compared with the
per-dtype tolerances of tests/helpers.py; dropout's device generator; a
Solver step from identical weights; saving on one device and loading on the
other.

Dropout draws its masks with NumPy on the host and with a counter-based
generator on the GPU (xdl.layers._dropout_uniform), so a seed gives each
backend its own mask. The comparisons of layers and models with dropout run
the host side with the GPU's generator too (fixture ``same_dropout_masks``):
the masks are then the same, and so are the results, to the usual tolerances.

Every comparison also checks that cupy inputs give cupy results (of the
input's dtype). The GPU tests carry the gpu mark through the ``gpu``
fixture: skipped without a GPU, failures under XDL_TEST_REQUIRE_GPU=1.
"""
import numbers
import os
import subprocess
import sys

import numpy as np
import pytest

import xdl
from xdl import _rng, fast_layers, layer_utils, layers, optim
from xdl.backends import cuda
from xdl.classifiers import FullyConnectedNet, ThreeLayerConvNet, TwoLayerNet, load_model
from xdl.solver import Solver

from helpers import assert_close, host, tol

# ---------------------------------------------------------------------------
# Comparing nested results
# ---------------------------------------------------------------------------


def to_device(cp, tree):
    """A copy of a nested structure (dicts, lists, tuples) with numpy arrays moved to cupy."""
    if isinstance(tree, np.ndarray):
        return cp.asarray(tree)
    if isinstance(tree, dict):
        return {k: to_device(cp, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(cp, v) for v in tree)
    return tree


def assert_same(cp, on_gpu, on_cpu, dtype, where="result"):
    """
    on_gpu has the structure of on_cpu, with a cupy array wherever on_cpu has
    a numpy array or scalar (same shape and dtype), and values close within
    the tolerance of dtype.
    """
    if isinstance(on_cpu, (np.ndarray, np.generic)):
        assert isinstance(on_gpu, cp.ndarray), "%s: %s, not a cupy array" % (where, type(on_gpu))
        assert on_gpu.shape == np.shape(on_cpu), where
        assert on_gpu.dtype == on_cpu.dtype, "%s: %s vs %s" % (where, on_gpu.dtype, on_cpu.dtype)
        assert_close(on_gpu, on_cpu, dtype, err_msg=where)
    elif isinstance(on_cpu, dict):
        assert isinstance(on_gpu, dict) and set(on_gpu) == set(on_cpu), where
        for k in on_cpu:
            assert_same(cp, on_gpu[k], on_cpu[k], dtype, "%s[%r]" % (where, k))
    elif isinstance(on_cpu, (list, tuple)):
        assert isinstance(on_gpu, (list, tuple)) and len(on_gpu) == len(on_cpu), where
        for i, (g, c) in enumerate(zip(on_gpu, on_cpu)):
            assert_same(cp, g, c, dtype, "%s[%d]" % (where, i))
    elif isinstance(on_cpu, float):
        assert isinstance(on_gpu, numbers.Real), where
        t = tol(dtype)
        assert on_gpu == pytest.approx(on_cpu, rel=t["rtol"], abs=t["atol"]), where
    else:  # None, strings, ints: equal
        assert on_gpu == on_cpu, where


def both(cp, make, seed=0):
    """make(rng) called with two generators of one seed: (host inputs, the same on cupy)."""
    return make(np.random.RandomState(seed)), to_device(cp, make(np.random.RandomState(seed)))


# ---------------------------------------------------------------------------
# Layers: forward (out, cache) and backward (dout, cache)
# ---------------------------------------------------------------------------

CONV = {"stride": 1, "pad": 1}
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


def _randn(rng, dtype, *shape):
    return rng.randn(*shape).astype(dtype)


def _bn_args(rng, dtype, shape, C, param):
    return (_randn(rng, dtype, *shape), 1 + _randn(rng, dtype, C), _randn(rng, dtype, C), param)


def _randn_wb_norm(g, d, norm_param):
    """w (6, 5), b, gamma, beta, norm_param of an affine-norm-relu block."""
    return (_randn(g, d, 6, 5), _randn(g, d, 5), 1 + _randn(g, d, 5), _randn(g, d, 5), norm_param)


# name: (forward, backward or None, inputs(rng, dtype) -> forward arguments)
LAYER_CASES = {
    "affine": (layers.affine_forward, layers.affine_backward,
               lambda g, d: (_randn(g, d, 4, 2, 3), _randn(g, d, 6, 5), _randn(g, d, 5))),
    "relu": (layers.relu_forward, layers.relu_backward, lambda g, d: (_randn(g, d, 4, 5),)),
    "dropout_train": (layers.dropout_forward, layers.dropout_backward,
                      lambda g, d: (_randn(g, d, 6, 7), {"mode": "train", "p": 0.6, "seed": 3})),
    "dropout_test": (layers.dropout_forward, layers.dropout_backward,
                     lambda g, d: (_randn(g, d, 6, 7), {"mode": "test", "p": 0.6})),
    "batchnorm": (layers.batchnorm_forward, layers.batchnorm_backward,
                  lambda g, d: _bn_args(g, d, (8, 5), 5, {"mode": "train"})),
    "batchnorm_alt": (layers.batchnorm_forward, layers.batchnorm_backward_alt,
                      lambda g, d: _bn_args(g, d, (8, 5), 5, {"mode": "train", "momentum": 0.5})),
    "batchnorm_test_mode": (layers.batchnorm_forward, None, lambda g, d: _bn_args(
        g, d, (8, 5), 5, {"mode": "test", "running_mean": _randn(g, d, 5),
                          "running_var": 1 + g.rand(5).astype(d)})),
    "layernorm": (layers.layernorm_forward, layers.layernorm_backward,
                  lambda g, d: _bn_args(g, d, (6, 7), 7, {})),
    "spatial_batchnorm": (layers.spatial_batchnorm_forward, layers.spatial_batchnorm_backward,
                          lambda g, d: _bn_args(g, d, (3, 4, 5, 6), 4, {"mode": "train"})),
    "spatial_groupnorm": (
        layers.spatial_groupnorm_forward, layers.spatial_groupnorm_backward,
        lambda g, d: (_randn(g, d, 2, 6, 4, 5), 1 + _randn(g, d, 1, 6, 1, 1),
                      _randn(g, d, 1, 6, 1, 1), 3, {})),
    "conv_fast": (fast_layers.conv_forward_fast, fast_layers.conv_backward_fast,
                  lambda g, d: (_randn(g, d, 2, 3, 7, 8), _randn(g, d, 4, 3, 3, 2),
                                _randn(g, d, 4), CONV)),
    "conv_fast_stride2": (fast_layers.conv_forward_fast, fast_layers.conv_backward_fast,
                          lambda g, d: (_randn(g, d, 2, 3, 7, 7), _randn(g, d, 4, 3, 3, 3),
                                        _randn(g, d, 4), {"stride": 2, "pad": 1})),
    "max_pool_fast": (fast_layers.max_pool_forward_fast, fast_layers.max_pool_backward_fast,
                      lambda g, d: (_randn(g, d, 2, 3, 6, 8), POOL)),
    "max_pool_fast_overlapping": (
        fast_layers.max_pool_forward_fast, fast_layers.max_pool_backward_fast,
        lambda g, d: (_randn(g, d, 2, 3, 6, 5), {"pool_height": 3, "pool_width": 3, "stride": 1})),
    "affine_relu": (layer_utils.affine_relu_forward, layer_utils.affine_relu_backward,
                    lambda g, d: (_randn(g, d, 4, 6), _randn(g, d, 6, 5), _randn(g, d, 5))),
    "affine_bn_relu": (layer_utils.affine_bn_relu_forward, layer_utils.affine_bn_relu_backward,
                       lambda g, d: (_randn(g, d, 8, 6),)
                       + _randn_wb_norm(g, d, {"mode": "train"})),
    "affine_ln_relu": (layer_utils.affine_ln_relu_forward, layer_utils.affine_ln_relu_backward,
                       lambda g, d: (_randn(g, d, 8, 6),) + _randn_wb_norm(g, d, {})),
    "affine_norm_relu_dropout": (
        layer_utils.affine_norm_relu_forward, layer_utils.affine_norm_relu_backward,
        lambda g, d: (_randn(g, d, 8, 6),) + _randn_wb_norm(g, d, {"mode": "train"})
        + ("batchnorm", {"mode": "train", "p": 0.7, "seed": 5})),
    "conv_relu": (layer_utils.conv_relu_forward, layer_utils.conv_relu_backward,
                  lambda g, d: (_randn(g, d, 2, 3, 6, 5), _randn(g, d, 4, 3, 3, 3),
                                _randn(g, d, 4), CONV)),
    "conv_bn_relu": (layer_utils.conv_bn_relu_forward, layer_utils.conv_bn_relu_backward,
                     lambda g, d: (_randn(g, d, 2, 3, 6, 5), _randn(g, d, 4, 3, 3, 3),
                                   _randn(g, d, 4), 1 + _randn(g, d, 4), _randn(g, d, 4),
                                   CONV, {"mode": "train"})),
    "conv_relu_pool": (layer_utils.conv_relu_pool_forward, layer_utils.conv_relu_pool_backward,
                       lambda g, d: (_randn(g, d, 2, 3, 8, 6), _randn(g, d, 4, 3, 3, 3),
                                     _randn(g, d, 4), CONV, POOL)),
    "conv_bn_relu_pool": (
        layer_utils.conv_bn_relu_pool_forward, layer_utils.conv_bn_relu_pool_backward,
        lambda g, d: (_randn(g, d, 2, 3, 8, 6), _randn(g, d, 4, 3, 3, 3), _randn(g, d, 4),
                      1 + _randn(g, d, 4), _randn(g, d, 4), CONV, {"mode": "train"}, POOL)),
}


@pytest.fixture
def same_dropout_masks(monkeypatch):
    """Dropout on the host uses the GPU's counter-based generator (see the module docstring)."""
    monkeypatch.setattr(layers, "_dropout_uniform", lambda xp, shape, seed: _rng.uniform(
        xp, shape, _rng.new_seed() if seed is None else seed))


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_matches_across_backends(gpu, dtype, name, same_dropout_masks):
    forward, backward, inputs = LAYER_CASES[name]
    cpu_args, gpu_args = both(gpu, lambda rng: inputs(rng, dtype))
    out_cpu, cache_cpu = forward(*cpu_args)
    out_gpu, cache_gpu = forward(*gpu_args)
    assert_same(gpu, out_gpu, out_cpu, dtype, name)
    # Parameter dicts (running averages) are updated alike, on each device.
    for i, (a_gpu, a_cpu) in enumerate(zip(gpu_args, cpu_args)):
        if isinstance(a_cpu, dict):
            assert_same(gpu, a_gpu, a_cpu, dtype, "%s argument %d" % (name, i))
    if backward is not None:
        dout = np.random.RandomState(1).randn(*out_cpu.shape).astype(dtype)
        assert_same(gpu, backward(gpu.asarray(dout), cache_gpu), backward(dout, cache_cpu),
                    dtype, name + " backward")


@pytest.mark.parametrize("loss_fn", [layers.softmax_loss, layers.svm_loss])
def test_loss_layers_match_across_backends(gpu, dtype, loss_fn):
    def inputs(rng):
        return (rng.randn(9, 6) * 4).astype(dtype), rng.randint(6, size=9)
    cpu_args, gpu_args = both(gpu, inputs)
    assert_same(gpu, loss_fn(*gpu_args), loss_fn(*cpu_args), dtype)
    assert_same(gpu, layers.log_softmax(gpu_args[0]), layers.log_softmax(cpu_args[0]), dtype)


def test_dropout_mask_is_made_on_the_gpu_by_the_counter_generator(gpu, dtype):
    x = gpu.asarray(np.random.RandomState(2).randn(50, 40).astype(dtype))
    param = {"mode": "train", "p": 0.3, "seed": 17}
    out, (_, mask) = layers.dropout_forward(x, dict(param))
    assert isinstance(mask, gpu.ndarray) and mask.dtype == dtype
    # The same numbers as the generator run on the host, bit for bit.
    expected = np.where(_rng.uniform(np, x.shape, 17) < 0.3, dtype(1 / 0.3), dtype(0))
    np.testing.assert_array_equal(host(mask), expected)
    np.testing.assert_array_equal(host(out), host(x) * expected)
    # Unseeded masks follow NumPy's global seed.
    np.random.seed(5)
    _, (_, first) = layers.dropout_forward(x, {"mode": "train", "p": 0.5})
    np.random.seed(5)
    _, (_, again) = layers.dropout_forward(x, {"mode": "train", "p": 0.5})
    np.testing.assert_array_equal(host(first), host(again))


def test_naive_layers_refuse_cupy_arrays(gpu):
    x, w, b = gpu.ones((1, 1, 4, 4)), gpu.ones((1, 1, 3, 3)), gpu.zeros(1)
    with pytest.raises(TypeError, match="host-only"):
        layers.conv_forward_naive(x, w, b, CONV)
    with pytest.raises(TypeError, match="host-only"):
        layers.max_pool_forward_naive(x, POOL)


# ---------------------------------------------------------------------------
# Update rules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_update_rules_match_across_backends(gpu, dtype, rule):
    update = optim.get_update_rule(rule)
    rng = np.random.RandomState(2)
    w = rng.randn(6, 7).astype(dtype)
    w_cpu, w_gpu = w, gpu.asarray(w)
    config_cpu, config_gpu = {"learning_rate": 1e-2}, {"learning_rate": 1e-2}
    for step in range(3):
        dw = rng.randn(6, 7).astype(dtype)
        w_cpu, config_cpu = update(w_cpu, dw, config_cpu)
        w_gpu, config_gpu = update(w_gpu, gpu.asarray(dw), config_gpu)
        assert_same(gpu, w_gpu, w_cpu, dtype, "%s step %d" % (rule, step))
        assert_same(gpu, config_gpu, config_cpu, dtype, "%s config" % rule)


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_update_rules_use_one_fused_kernel_on_the_gpu(gpu, monkeypatch, rule):
    calls = []
    fused = getattr(cuda, rule)
    monkeypatch.setattr(cuda, rule, lambda *a: calls.append(rule) or fused(*a))
    w = gpu.ones((3, 4), dtype=np.float32)
    next_w, _ = optim.get_update_rule(rule)(w, w, {"learning_rate": 0.5})
    assert calls == [rule] and next_w.dtype == np.float32
    assert float(w.sum()) == 12  # w is not modified: a new array comes back


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

# name: (constructor(dtype), input shape of one example, number of classes)
MODEL_CASES = {
    "two_layer": (lambda d: TwoLayerNet(input_dim=12, hidden_dim=10, num_classes=4,
                                        weight_scale=0.1, reg=0.1, dtype=d), (12,)),
    "fc": (lambda d: FullyConnectedNet([10, 8], input_dim=12, num_classes=4, reg=0.05,
                                       weight_scale=0.1, dtype=d), (3, 4)),
    "fc_batchnorm_dropout": (lambda d: FullyConnectedNet(
        [10, 8], input_dim=12, num_classes=4, dropout_keep_ratio=0.7, normalization="batchnorm",
        reg=0.05, weight_scale=0.1, dtype=d, seed=123), (12,)),
    "fc_layernorm_dropout": (lambda d: FullyConnectedNet(
        [10, 8], input_dim=12, num_classes=4, dropout_keep_ratio=0.7, normalization="layernorm",
        weight_scale=0.1, dtype=d, seed=123), (12,)),
    "cnn": (lambda d: ThreeLayerConvNet(input_dim=(3, 8, 6), num_filters=4, filter_size=3,
                                        hidden_dim=7, num_classes=4, weight_scale=0.1, reg=0.05,
                                        dtype=d), (3, 8, 6)),
    "cnn_batchnorm": (lambda d: ThreeLayerConvNet(
        input_dim=(3, 8, 6), num_filters=4, filter_size=3, hidden_dim=7, num_classes=4,
        weight_scale=0.1, dtype=d, normalization="batchnorm"), (3, 8, 6)),
}


def model_pair(make):
    """The same model (same seed) built under the numpy and the cuda backend."""
    models = []
    for backend in ("numpy", "cuda"):
        with xdl.use_backend(backend):
            np.random.seed(0)
            models.append(make())
    return models


def _model_data(input_shape, n=5, classes=4):
    rng = np.random.RandomState(3)
    return rng.randn(n, *input_shape), rng.randint(classes, size=n)


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_model_matches_across_backends(gpu, dtype, name, same_dropout_masks):
    make, input_shape = MODEL_CASES[name]
    cpu_model, gpu_model = model_pair(lambda: make(dtype))
    assert_same(gpu, gpu_model.params, cpu_model.params, dtype, "initial params")
    X, y = _model_data(input_shape)
    # The GPU model takes host input, and cupy input with the same result.
    for X_gpu, y_gpu in ((X, y), (gpu.asarray(X), gpu.asarray(y))):
        expected = cpu_model.loss(X, y)
        assert_same(gpu, gpu_model.loss(X_gpu, y_gpu), expected, dtype, name)
        # Running averages, updated on each device by the training pass.
        assert_same(gpu, getattr(gpu_model, "bn_params", []), getattr(cpu_model, "bn_params", []),
                    dtype, name + " bn_params")
    assert_same(gpu, gpu_model.loss(X), cpu_model.loss(X), dtype, name + " scores")


@pytest.mark.parametrize("dtype,rule,normalization", [
    (np.float64, "adam", "batchnorm"),
    (np.float32, "sgd_momentum", None),
])
def test_solver_step_matches_across_backends(gpu, dtype, rule, normalization):
    rng = np.random.RandomState(4)
    data = {"X_train": rng.randn(20, 3, 8, 6), "y_train": rng.randint(4, size=20),
            "X_val": rng.randn(10, 3, 8, 6), "y_val": rng.randint(4, size=10)}
    runs = []
    for backend in ("numpy", "cuda"):
        with xdl.use_backend(backend):
            np.random.seed(0)
            model = ThreeLayerConvNet(input_dim=(3, 8, 6), num_filters=4, filter_size=3,
                                      hidden_dim=7, num_classes=4, weight_scale=0.1,
                                      dtype=dtype, normalization=normalization)
            # One epoch of one batch: a single step, then an accuracy check.
            solver = Solver(model, data, update_rule=rule, optim_config={"learning_rate": 1e-2},
                            batch_size=20, num_epochs=1, verbose=False)
            np.random.seed(1)
            solver.train()
        runs.append((model, solver))
    (cpu_model, cpu_solver), (gpu_model, gpu_solver) = runs
    assert gpu_solver.iteration == cpu_solver.iteration == 1
    for history in ("loss_history", "train_acc_history", "val_acc_history"):
        values = getattr(gpu_solver, history)
        assert values and all(type(v) is float for v in values), history
        assert_same(gpu, values, getattr(cpu_solver, history), dtype, history)
    assert_same(gpu, gpu_model.params, cpu_model.params, dtype, "params after one step")
    assert_same(gpu, gpu_solver.optim_configs, cpu_solver.optim_configs, dtype, "optim state")


def test_save_and_load_across_devices(gpu, tmp_path):
    make, input_shape = MODEL_CASES["cnn_batchnorm"]
    X, y = _model_data(input_shape)
    with xdl.use_backend("cuda"):
        np.random.seed(0)
        gpu_model = make(np.float32)
        gpu_model.loss(X, y)  # running averages to save
        gpu_model.save(tmp_path / "gpu.npz", verbose=False)
        gpu_scores = gpu_model.loss(X)
    with xdl.use_backend("numpy"):
        cpu_model = load_model(tmp_path / "gpu.npz")
        assert all(isinstance(v, np.ndarray) for v in cpu_model.params.values())
        cpu_scores = cpu_model.loss(X)
        assert isinstance(cpu_scores, np.ndarray)
        assert_close(cpu_scores, gpu_scores, np.float32)
        cpu_model.save(tmp_path / "cpu.npz", verbose=False)
    with xdl.use_backend("cuda"):
        back = load_model(tmp_path / "cpu.npz")
        assert all(isinstance(v, gpu.ndarray) for v in back.params.values())
        assert_same(gpu, back.loss(X), cpu_scores, np.float32, "scores after the round trip")


def test_models_made_under_cuda_keep_params_on_the_gpu(gpu):
    with xdl.use_backend("cuda"):
        model = MODEL_CASES["cnn"][0](np.float32)
    X, y = _model_data((3, 8, 6))
    loss, grads = model.loss(X, y)
    assert isinstance(loss, gpu.ndarray) and loss.ndim == 0
    for name, p in model.params.items():
        assert isinstance(p, gpu.ndarray) and p.dtype == np.float32, name
        assert isinstance(grads[name], gpu.ndarray) and grads[name].dtype == np.float32, name


# ---------------------------------------------------------------------------
# Without a GPU
# ---------------------------------------------------------------------------


@pytest.mark.skipif(xdl.gpu_available(), reason="checks the error on machines without a GPU")
def test_model_under_cuda_backend_without_gpu_fails_with_one_clear_error():
    env = dict(os.environ, XDL_BACKEND="cuda")
    r = subprocess.run(
        [sys.executable, "-c", "from xdl.classifiers import TwoLayerNet; TwoLayerNet()"],
        capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("xdl.backends.BackendError: the cuda backend"), r.stderr
    assert r.stderr.count("Traceback") == 1, r.stderr  # no chained ImportError


def test_the_cuda_kernel_module_imports_without_cupy():
    r = subprocess.run(
        [sys.executable, "-c", "import sys, xdl.backends.cuda, xdl.optim, xdl.fast_layers; "
                               "print('cupy' in sys.modules)"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
