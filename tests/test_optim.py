"""Update rules: the notebooks' expected values, on every backend, and bad input."""
import math

import numpy as np
import pytest

from xdl import optim
from xdl.gradient_check import rel_error

from helpers import host, to

N, D = 4, 5


def _w_dw(xp):
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    return to(xp, w), to(xp, dw)


def test_sgd(xp):
    w, dw = _w_dw(xp)
    next_w, config = optim.sgd(w, dw, {"learning_rate": 0.1})
    np.testing.assert_allclose(host(next_w), host(w) - 0.1 * host(dw))
    assert config["learning_rate"] == 0.1


def test_sgd_momentum_notebook_values(xp):
    w, dw = _w_dw(xp)
    v = to(xp, np.linspace(0.6, 0.9, num=N * D).reshape(N, D))
    config = {"learning_rate": 1e-3, "velocity": v}
    next_w, _ = optim.sgd_momentum(w, dw, config=config)
    expected_next_w = np.asarray([
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096]])
    expected_velocity = np.asarray([
        [0.5406, 0.55475789, 0.56891579, 0.58307368, 0.59723158],
        [0.61138947, 0.62554737, 0.63970526, 0.65386316, 0.66802105],
        [0.68217895, 0.69633684, 0.71049474, 0.72465263, 0.73881053],
        [0.75296842, 0.76712632, 0.78128421, 0.79544211, 0.8096]])
    assert rel_error(host(next_w), expected_next_w) < 1e-8
    assert rel_error(host(config["velocity"]), expected_velocity) < 1e-8


def test_rmsprop_notebook_values(xp):
    w, dw = _w_dw(xp)
    cache = to(xp, np.linspace(0.6, 0.9, num=N * D).reshape(N, D))
    config = {"learning_rate": 1e-2, "cache": cache}
    next_w, _ = optim.rmsprop(w, dw, config=config)
    expected_next_w = np.asarray([
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619]])
    expected_cache = np.asarray([
        [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
        [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
        [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
        [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.8926]])
    assert rel_error(host(next_w), expected_next_w) < 1e-7
    assert rel_error(host(config["cache"]), expected_cache) < 1e-8


def test_adam_notebook_values(xp):
    w, dw = _w_dw(xp)
    m = to(xp, np.linspace(0.6, 0.9, num=N * D).reshape(N, D))
    v = to(xp, np.linspace(0.7, 0.5, num=N * D).reshape(N, D))
    config = {"learning_rate": 1e-2, "m": m, "v": v, "t": 5}
    next_w, _ = optim.adam(w, dw, config=config)
    expected_next_w = np.asarray([
        [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
        [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
        [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
        [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459]])
    expected_v = np.asarray([
        [0.69966, 0.68908382, 0.67851319, 0.66794809, 0.65738853],
        [0.64683452, 0.63628604, 0.6257431, 0.61520571, 0.60467385],
        [0.59414753, 0.58362676, 0.57311152, 0.56260183, 0.55209767],
        [0.54159906, 0.53110598, 0.52061845, 0.51013645, 0.49966]])
    expected_m = np.asarray([
        [0.48, 0.49947368, 0.51894737, 0.53842105, 0.55789474],
        [0.57736842, 0.59684211, 0.61631579, 0.63578947, 0.65526316],
        [0.67473684, 0.69421053, 0.71368421, 0.73315789, 0.75263158],
        [0.77210526, 0.79157895, 0.81105263, 0.83052632, 0.85]])
    # The notebook's expected_next_w is rounded: it reports 1.14e-07 here too.
    assert rel_error(host(next_w), expected_next_w) < 2e-7
    assert rel_error(host(config["v"]), expected_v) < 1e-8
    assert rel_error(host(config["m"]), expected_m) < 1e-8
    assert config["t"] == 6


def test_adam_matches_textbook_bias_correction(xp, dtype):
    rng = np.random.RandomState(0)
    w0, g = rng.randn(3, 4), rng.randn(3, 4)
    w, config = to(xp, w0, dtype), {"learning_rate": 0.01}
    m = v = np.zeros_like(w0)
    ref = w0.copy()
    for t in range(1, 4):
        w, config = optim.adam(w, to(xp, g, dtype), config)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert w.dtype == dtype and config["m"].dtype == dtype
    np.testing.assert_allclose(host(w), ref, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam", "adamw"])
def test_rules_keep_dtype_and_device(xp, dtype, rule):
    w = to(xp, np.ones((2, 3)), dtype)
    next_w, config = optim.get_update_rule(rule)(w, w * 0.5, None)
    assert isinstance(next_w, xp.ndarray) and next_w.dtype == dtype
    for value in config.values():
        if hasattr(value, "dtype"):
            assert isinstance(value, xp.ndarray) and value.dtype == dtype


def test_unknown_update_rule_lists_known_names():
    with pytest.raises(ValueError, match="unknown update rule 'adagrad'.*adam, adamw, rmsprop, "
                                         "sgd, sgd_momentum"):
        optim.get_update_rule("adagrad")


def test_bad_hyperparameters():
    w = np.ones(3)
    with pytest.raises(ValueError, match=r"config\['momentum'\]"):
        optim.sgd_momentum(w, w, {"momentum": 1.5})
    with pytest.raises(ValueError, match=r"config\['learning_rate'\]"):
        optim.adam(w, w, {"learning_rate": float("nan")})
    with pytest.raises(ValueError, match=r"dw has shape \(2,\) but w has shape \(3,\)"):
        optim.sgd(w, np.ones(2))


def test_misspelled_config_key_names_the_keys_the_rule_takes():
    w = np.ones(3)
    with pytest.raises(ValueError, match=r"config key 'lr' is not used by the update rule adam; "
                                         r"adam takes the hyperparameters learning_rate, beta1, "
                                         r"beta2, epsilon and keeps its state in m, v, t"):
        optim.adam(w, w, {"lr": 1e-3})
    with pytest.raises(ValueError, match=r"'momentun' .*\(did you mean 'momentum'\?\).*velocity"):
        optim.sgd_momentum(w, w, {"learning_rate": 1e-3, "momentun": 0.9})
    with pytest.raises(ValueError, match="sgd takes the hyperparameter learning_rate and keeps "
                                         "no state"):
        optim.sgd(w, w, {"learning_rate": 1e-3, "velocity": np.zeros(3)})
    config = {"learning_rate": 1e-2, "decay": 0.9}
    with pytest.raises(ValueError, match=r"'decay' .*did you mean 'decay_rate'"):
        optim.rmsprop(w, w, config)
    assert config == {"learning_rate": 1e-2, "decay": 0.9}  # nothing was changed
    with pytest.raises(ValueError, match="'lr' is not used by the update rule adamw"):
        optim.check_config("adamw", {"lr": 1e-3})     # what the Solver can check up front
    optim.check_config("adam", {"learning_rate": 1e-3, "m": None, "t": 0})


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_config_after_a_step_is_valid_for_the_next_step(rule):
    # The state the rule stores, and its defaults, are keys it accepts.
    w = np.ones((2, 3))
    update = optim.get_update_rule(rule)
    next_w, config = update(w, w * 0.5, None)
    assert set(config) == set(optim.RULES[rule].keys())
    update(next_w, w * 0.5, config)


def test_bad_step_count_raises():
    w = np.ones(3)
    for t in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"config\['t'\]"):
            optim.adam(w, w, {"t": t})


# ------------------------------------------------------------------ AdamW

def adamw_reference(w, grads, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW's step, written out in float64; returns w after each step."""
    w = w.astype(np.float64)
    m = v = np.zeros_like(w)
    history = []
    for t, g in enumerate(grads, start=1):
        w = w * (1 - lr * weight_decay)              # decoupled weight decay
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps
        w = w - (lr / (1 - beta1 ** t)) * m / denom
        history.append(w)
    return history


def test_adamw_matches_its_formula(xp, dtype):
    rng = np.random.RandomState(1)
    w0 = rng.randn(5, 6)
    grads = [rng.randn(5, 6) for _ in range(4)]
    hyper = dict(learning_rate=0.05, beta1=0.8, beta2=0.99, epsilon=1e-6, weight_decay=0.3)
    expected = adamw_reference(w0, grads, *hyper.values())
    w, config = to(xp, w0, dtype), dict(hyper)
    for g, e in zip(grads, expected):
        w, config = optim.adamw(w, to(xp, g, dtype), config)
        assert w.dtype == dtype
        np.testing.assert_allclose(host(w), e, rtol=2e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-14)
    assert config["t"] == 4 and set(config) == set(optim.RULES["adamw"].keys())


def test_adamw_defaults_are_torchs():
    _, config = optim.adamw(np.ones(3), np.ones(3))
    assert (config["learning_rate"], config["beta1"], config["beta2"], config["epsilon"],
            config["weight_decay"]) == (1e-3, 0.9, 0.999, 1e-8, 1e-2)


def test_adamw_without_weight_decay_is_adam(xp, dtype):
    rng = np.random.RandomState(2)
    w_adam = w_adamw = to(xp, rng.randn(4, 7), dtype)
    c_adam, c_adamw = {"learning_rate": 0.01}, {"learning_rate": 0.01, "weight_decay": 0.0}
    for _ in range(3):
        g = to(xp, rng.randn(4, 7), dtype)
        w_adam, c_adam = optim.adam(w_adam, g, c_adam)
        w_adamw, c_adamw = optim.adamw(w_adamw, g, c_adamw)
        np.testing.assert_array_equal(host(w_adamw), host(w_adam))


def test_adamw_decays_weights_without_a_gradient():
    # A zero gradient leaves Adam's step at zero: only the decay moves w.
    w, config = np.full(4, 2.0), {"learning_rate": 0.1, "weight_decay": 0.5}
    for _ in range(3):
        w, config = optim.adamw(w, np.zeros(4), config)
    np.testing.assert_allclose(w, 2.0 * 0.95 ** 3, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_adamw_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(3)
    w0 = rng.randn(6, 5).astype(dtype)
    grads = [rng.randn(6, 5).astype(dtype) for _ in range(5)]
    param = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([param], lr=0.02, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.2)
    w, config = w0, {"learning_rate": 0.02, "beta1": 0.85, "beta2": 0.995, "epsilon": 1e-7,
                     "weight_decay": 0.2}
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()
        w, config = optim.adamw(w, g, config)
        np.testing.assert_allclose(w, param.detach().numpy(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-13,
                                   atol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_out_w_updates_in_place_with_the_same_values(xp, dtype, rule):
    # Three steps with out=w against three with new arrays: the same bits,
    # the same state, and w is the array returned each time.
    update = optim.get_update_rule(rule)
    w0, dw = _w_dw(xp)
    w0, dw = w0.astype(dtype), dw.astype(dtype)
    new, new_config = w0.copy(), {"learning_rate": 1e-2}
    w, config = w0.copy(), {"learning_rate": 1e-2}
    for _ in range(3):
        new, new_config = update(new, dw, new_config)
        returned, config = update(w, dw, config, out=w)
        assert returned is w
    np.testing.assert_array_equal(host(w), host(new))
    for key, value in new_config.items():
        np.testing.assert_array_equal(host(config[key]), host(value))


def test_a_bad_out_changes_nothing(xp):
    w, dw = _w_dw(xp)
    config = {"learning_rate": 1e-2}
    optim.adam(w, dw, config)
    m, t = host(config["m"]).copy(), config["t"]
    with pytest.raises(ValueError, match="out shares memory with dw"):
        optim.adam(w, dw, config, out=dw)
    with pytest.raises(ValueError, match=r"out has shape \(5, 4\) but w has shape \(4, 5\)"):
        optim.adam(w, dw, config, out=w.T.copy())
    assert config["t"] == t
    np.testing.assert_array_equal(host(config["m"]), m)
    if xp is not np:
        with pytest.raises(TypeError, match="mixed numpy and cupy arrays: out is a numpy"):
            optim.sgd(w, dw, None, out=np.zeros((N, D)))
