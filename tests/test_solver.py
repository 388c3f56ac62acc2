"""The Solver: printed lines, histories, learning-rate decay, best-params
restoration, stopping on a bad loss, checkpoints and resuming, bad input."""
import glob
import os
import re
import time

import numpy as np
import pytest

import xdl

from xdl.classifiers import FullyConnectedNet, TwoLayerNet
from xdl.serialization import load_state
from xdl.solver import Solver, TrainingStopped

from helpers import host


def small_data(N=60, D=12, C=3, seed=0):
    rng = np.random.RandomState(seed)
    centers = rng.randn(C, D) * 3
    y = rng.randint(C, size=N + 20)
    X = centers[y] + rng.randn(N + 20, D)
    return {"X_train": X[:N], "y_train": y[:N], "X_val": X[N:], "y_val": y[N:]}


def make_model(seed=0, **kw):
    np.random.seed(seed)
    return TwoLayerNet(input_dim=12, hidden_dim=16, num_classes=3, weight_scale=1e-1, **kw)


def test_prints_notebook_lines_and_float_histories(backend, capsys):
    solver = Solver(make_model(), small_data(), update_rule="sgd",
                    optim_config={"learning_rate": 1e-2}, num_epochs=2, batch_size=20,
                    print_every=2)
    solver.train()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("(Iteration 1 / 6) loss: ")
    assert re.fullmatch(r"\(Epoch 0 / 2\) train acc: \d\.\d{6}; val_acc: \d\.\d{6}", out[1])
    assert out[-1].startswith("(Epoch 2 / 2) train acc: ")
    assert len(solver.loss_history) == 6
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 3
    for h in (solver.loss_history, solver.train_acc_history, solver.val_acc_history):
        assert all(type(v) is float for v in h)


def test_progress_goes_to_stderr_and_keeps_the_notebook_lines(capsys):
    data = small_data()
    solver = Solver(make_model(), data, update_rule="sgd", optim_config={"learning_rate": 1e-2},
                    num_epochs=2, batch_size=20, print_every=2, num_train_samples=None)
    solver.train()
    captured = capsys.readouterr()
    # stdout: only the notebooks' lines, exactly in their format
    for line in captured.out.splitlines():
        assert re.fullmatch(r"\(Iteration \d+ / 6\) loss: \d+\.\d{6}", line) or \
            re.fullmatch(r"\(Epoch \d / 2\) train acc: \d\.\d{6}; val_acc: \d\.\d{6}", line), line
    # stderr: the full training-accuracy passes, and each epoch with elapsed time and ETA
    err = captured.err.splitlines()
    assert err.count("[checking the accuracy on all 60 training images]") == 3
    epochs = [line for line in err if line.startswith("[epoch")]
    assert len(epochs) == 2
    assert re.fullmatch(r"\[epoch 1 / 2 took \d+\.\d s; \d+\.\d s elapsed, about \d+\.\d s left\]",
                        epochs[0])
    assert epochs[1].endswith("about 0.0 s left]")
    # quiet solvers print nothing at all
    Solver(make_model(), data, num_epochs=1, batch_size=20, verbose=False).train()
    assert capsys.readouterr() == ("", "")


def test_step_time_counts_training_steps_only(monkeypatch):
    solver = Solver(make_model(), small_data(), update_rule="sgd",
                    optim_config={"learning_rate": 1e-2}, num_epochs=2, batch_size=20,
                    verbose=False)
    real = solver.check_accuracy

    def slow_check(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)
    monkeypatch.setattr(solver, "check_accuracy", slow_check)
    start = time.perf_counter()
    solver.train()
    wall = time.perf_counter() - start
    checks = 2 * len(solver.train_acc_history)  # train and val, each sleeping 0.05 s
    assert solver.steps_taken == 6 and len(solver.train_acc_history) == 3
    assert 0 < solver.step_time <= wall - 0.05 * checks


def test_durations_read_like_a_person_writes_them():
    from xdl.solver import _duration
    assert _duration(4.24) == "4.2 s"
    assert _duration(185) == "3 min 05 s"
    assert _duration(3725) == "1 h 02 min"


def test_training_learns_and_keeps_best_params(backend):
    model = make_model()
    solver = Solver(model, small_data(), update_rule="adam",
                    optim_config={"learning_rate": 1e-2}, num_epochs=5, batch_size=20,
                    verbose=False)
    solver.train()
    assert solver.loss_history[-1] < solver.loss_history[0]
    assert solver.best_val_acc == max(solver.val_acc_history) > 0.6
    for k, v in model.params.items():
        np.testing.assert_array_equal(host(v), host(solver.best_params[k]))
        assert isinstance(v, backend.ndarray)
    # check_accuracy on the validation set reproduces the best accuracy
    assert solver.check_accuracy(small_data()["X_val"], small_data()["y_val"]) == \
        solver.best_val_acc


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_every_update_rule_by_name(backend, rule):
    solver = Solver(make_model(), small_data(), update_rule=rule,
                    optim_config={"learning_rate": 1e-3}, num_epochs=1, batch_size=20,
                    verbose=False)
    solver.train()
    assert len(solver.loss_history) == 3


def test_lr_decay_per_epoch(backend):
    solver = Solver(make_model(), small_data(), update_rule="sgd",
                    optim_config={"learning_rate": 1.0}, lr_decay=0.5, num_epochs=3,
                    batch_size=30, verbose=False)
    solver.train()
    assert all(c["learning_rate"] == pytest.approx(0.125) for c in solver.optim_configs.values())


def test_check_accuracy_batches_and_subsamples(backend):
    model = make_model()
    data = small_data()
    solver = Solver(model, data, verbose=False)
    full = solver.check_accuracy(data["X_train"], data["y_train"], batch_size=7)
    assert full == solver.check_accuracy(data["X_train"], data["y_train"], batch_size=100)
    preds = np.argmax(host(model.loss(data["X_train"])), axis=1)
    assert full == pytest.approx(np.mean(preds == data["y_train"]))
    sub = solver.check_accuracy(data["X_train"], data["y_train"], num_samples=10)
    assert sub in {i / 10 for i in range(11)}


def test_nonfinite_loss_stops_and_restores_best(backend):
    model = make_model()
    solver = Solver(model, small_data(), update_rule="sgd",
                    optim_config={"learning_rate": 1e30}, num_epochs=3, batch_size=20,
                    verbose=False)
    with pytest.warns(TrainingStopped, match=r"training stopped at iteration \d+ \(epoch 0\): "
                                             r"the loss is (nan|inf)"):
        with np.errstate(all="ignore"):
            solver.train()
    it, value = solver.stopped
    assert not np.isfinite(value) and it < 9
    for k, v in model.params.items():
        assert np.all(np.isfinite(host(v)))
        np.testing.assert_array_equal(host(v), host(solver.best_params[k]))
    assert solver.best_epoch == 0


def test_checkpoints_are_written_each_epoch_and_resume_matches(backend, tmp_path):
    data = small_data()
    name = str(tmp_path / "ckpt")
    kwargs = dict(update_rule="adam", optim_config={"learning_rate": 1e-2}, lr_decay=0.9,
                  batch_size=20, verbose=False)
    np.random.seed(5)
    full = Solver(make_model(seed=1), data, num_epochs=4, checkpoint_name=name, **kwargs)
    full.train()
    files = sorted(glob.glob(name + "_epoch_*.npz"))
    assert [os.path.basename(f) for f in files] == ["ckpt_epoch_%d.npz" % e for e in (1, 2, 3, 4)]
    assert not glob.glob(str(tmp_path / ".*.tmp"))  # no temp files left behind
    state = load_state(name + "_epoch_2.npz")
    assert state["epoch"] == 2 and state["iteration"] == 6

    resumed = Solver(make_model(seed=99), data, num_epochs=4, **kwargs)
    resumed.load_checkpoint(name + "_epoch_2.npz")
    assert resumed.epoch == 2 and len(resumed.loss_history) == 6
    resumed.train()
    np.testing.assert_allclose(resumed.loss_history, full.loss_history, rtol=1e-6)
    assert resumed.val_acc_history == full.val_acc_history
    for k in full.model.params:
        np.testing.assert_allclose(host(resumed.model.params[k]), host(full.model.params[k]),
                                   rtol=1e-6)


def test_checkpoint_restores_batchnorm_running_stats(backend, tmp_path):
    data = small_data()
    np.random.seed(0)
    model = FullyConnectedNet([8], input_dim=12, num_classes=3, normalization="batchnorm")
    solver = Solver(model, data, num_epochs=1, batch_size=20, verbose=False,
                    checkpoint_name=str(tmp_path / "bn"))
    solver.train()
    np.random.seed(0)
    fresh = FullyConnectedNet([8], input_dim=12, num_classes=3, normalization="batchnorm")
    Solver(fresh, data, verbose=False).load_checkpoint(str(tmp_path / "bn_epoch_1.npz"))
    np.testing.assert_array_equal(host(fresh.bn_params[0]["running_mean"]),
                                  host(model.bn_params[0]["running_mean"]))


def test_load_checkpoint_of_another_model_fails(backend, tmp_path):
    data = small_data()
    solver = Solver(make_model(), data, num_epochs=1, batch_size=20, verbose=False,
                    checkpoint_name=str(tmp_path / "c"))
    solver.train()
    other = Solver(FullyConnectedNet([5], input_dim=12, num_classes=3), data, verbose=False)
    with pytest.raises(ValueError, match="checkpoint of a TwoLayerNet, not of a "
                                         "FullyConnectedNet"):
        other.load_checkpoint(str(tmp_path / "c_epoch_1.npz"))


def test_bad_arguments(backend):
    data = small_data()
    with pytest.raises(ValueError, match="unknown update rule 'nesterov'"):
        Solver(make_model(), data, update_rule="nesterov")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Solver(make_model(), data, batch_size=0)
    with pytest.raises(ValueError, match="lr_decay must be a number > 0"):
        Solver(make_model(), data, lr_decay=-1)
    with pytest.raises(ValueError, match="data is missing 'X_val'"):
        Solver(make_model(), {k: v for k, v in data.items() if k != "X_val"})
    bad = dict(data, y_train=data["y_train"][:-1])
    with pytest.raises(ValueError, match=r"y_train must have shape \(60,\)"):
        Solver(make_model(), bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        Solver(make_model(), data, epochs=3)
    with pytest.raises(ValueError, match=r"config key 'lr' is not used by the update rule adam; "
                                         r"adam takes the hyperparameters learning_rate"):
        Solver(make_model(), data, update_rule="adam", optim_config={"lr": 1e-3})
    with pytest.raises(TypeError, match="optim_config must be a dict or None, got float"):
        Solver(make_model(), data, optim_config=1e-3)


def test_labels_are_checked_once_when_the_solver_is_built(backend, monkeypatch):
    data = small_data()
    bad = dict(data, y_val=np.where(data["y_val"] == 2, 3, data["y_val"]))
    with pytest.raises(ValueError, match=r"y_val holds labels outside \[0, 3\): min 0, max 3"):
        Solver(make_model(), bad)
    # The training steps then skip the check: no device-to-host copy per step.
    from xdl import _checks
    calls = []
    original = _checks.check_labels

    def counting(y, *args, **kwargs):
        calls.append(_checks._labels_prechecked.get())
        return original(y, *args, **kwargs)
    monkeypatch.setattr("xdl.classifiers.base.check_labels", counting)
    solver = Solver(make_model(), data, num_epochs=1, batch_size=20, verbose=False)
    solver.train()
    assert len(calls) == 3 and all(calls)


def test_labels_checked_skips_only_the_values():
    from xdl._checks import check_labels, labels_checked
    y = np.array([0, 7, 1])
    with labels_checked():
        check_labels(y, 3, 2)  # values not checked
        with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
            check_labels(y, 4, 2)
        with pytest.raises(TypeError, match="integer class labels"):
            check_labels(y.astype(float), 3, 2)
    with pytest.raises(ValueError, match=r"labels outside \[0, 2\): min 0, max 7"):
        check_labels(y, 3, 2)


def test_minibatches_follow_numpys_seed(backend):
    def run():
        np.random.seed(3)
        solver = Solver(make_model(), small_data(), update_rule="sgd", num_epochs=1,
                        batch_size=20, verbose=False)
        solver.train()
        return solver.loss_history, solver.train_acc_history
    assert run() == run()


def test_accuracy_subsample_is_drawn_where_the_data_is(backend):
    data = small_data()
    solver = Solver(make_model(), data, verbose=False)
    np.random.seed(1)
    a = solver.check_accuracy(data["X_train"], data["y_train"], num_samples=10)
    np.random.seed(1)
    X, y = backend.asarray(data["X_train"]), backend.asarray(data["y_train"])
    assert solver.check_accuracy(X, y, num_samples=10) == a


def test_gpu_training_set_is_copied_once_or_falls_back(gpu, monkeypatch, capsys):
    data = small_data()
    with xdl.use_backend("cuda"):
        model = make_model()
    copied = []
    solver = Solver(model, data, num_epochs=1, batch_size=20, print_every=0)
    original = solver._on_model_device
    monkeypatch.setattr(solver, "_on_model_device",
                        lambda X, y: copied.append(X.shape) or original(X, y))
    solver.train()
    assert copied == [(60, 12), (20, 12)]  # once each, not per step
    assert solver._train_set[0] is solver.X_train  # the device copy is dropped after train()
    # Not enough free memory: a notice, and the steps copy their minibatches.
    monkeypatch.setattr("xdl.solver.device_free_bytes", lambda: 1000)
    fallback = Solver(model, data, num_epochs=1, batch_size=20, print_every=0)
    assert fallback._on_model_device(data["X_train"], data["y_train"])[0] is data["X_train"]
    assert "do not fit in the GPU's free memory" in capsys.readouterr().out


def _adam_as_users_write_it(w, dw, config=None):
    """xdl's adam behind a rule of the user's: the Solver calls it without out."""
    return xdl.optim.adam(w, dw, config)


def test_steps_after_the_first_update_the_parameters_in_place(backend):
    # The model's own arrays are never written; from the second step on each
    # parameter is the array the step before made, updated in place, and
    # training gives the bits of a rule that makes new arrays.
    data = small_data()
    kwargs = dict(optim_config={"learning_rate": 1e-2}, num_epochs=3, batch_size=20,
                  verbose=False)
    model = make_model()
    given = dict(model.params)
    given_values = {k: host(v).copy() for k, v in given.items()}
    np.random.seed(3)
    solver = Solver(model, data, update_rule="adam", **kwargs)
    solver._step()
    first = dict(model.params)
    assert all(first[k] is not given[k] for k in given)
    solver._step()
    solver._step()
    assert all(model.params[k] is first[k] for k in first)
    for k, v in given.items():
        np.testing.assert_array_equal(host(v), given_values[k])

    np.random.seed(4)
    in_place = Solver(make_model(), data, update_rule="adam", **kwargs)
    in_place.train()
    np.random.seed(4)
    new_arrays = Solver(make_model(), data, update_rule=_adam_as_users_write_it, **kwargs)
    new_arrays.train()
    assert in_place.loss_history == new_arrays.loss_history
    for k in in_place.model.params:
        np.testing.assert_array_equal(host(in_place.model.params[k]),
                                      host(new_arrays.model.params[k]))


def test_training_again_never_writes_over_best_params(backend):
    # After train() the model holds the best_params arrays themselves; the
    # steps of a second train() must leave them as they were.
    model = make_model()
    solver = Solver(model, small_data(), update_rule="sgd_momentum",
                    optim_config={"learning_rate": 1e-2}, num_epochs=2, batch_size=20,
                    verbose=False)
    solver.train()
    assert all(model.params[k] is solver.best_params[k] for k in model.params)
    kept = {k: host(v).copy() for k, v in solver.best_params.items()}
    best = dict(solver.best_params)
    for _ in range(3):
        solver._step()
    assert any(not np.array_equal(host(model.params[k]), kept[k]) for k in kept)
    for k, v in best.items():
        np.testing.assert_array_equal(host(v), kept[k])


def _adamw_as_users_write_it(w, dw, config=None):
    """xdl's adamw behind a rule of the user's: the Solver never hands it to the model."""
    return xdl.optim.adamw(w, dw, config)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalization", [None, "batchnorm"])
@pytest.mark.parametrize("rule, users_rule", [("adam", _adam_as_users_write_it),
                                              ("adamw", _adamw_as_users_write_it)],
                         ids=["adam", "adamw"])
def test_the_cnn_takes_w2s_step_beside_its_backward_pass_with_the_same_bits(
        backend, monkeypatch, dtype, normalization, rule, users_rule):
    # From the second step of train() on, the Solver hands its adam/adamw
    # step on W2 (ThreeLayerConvNet.in_place_params) to the model, which
    # takes it beside the convolution's backward pass. Training must give
    # the losses, weights and moments of a rule the Solver cannot hand
    # over (applied after the backward pass), bit for bit.
    from xdl.classifiers import ThreeLayerConvNet
    taken = []
    take = xdl.optim.InPlaceStep.take_alongside

    def counting(self, dw):
        taken.append(self.w.shape)
        return take(self, dw)
    monkeypatch.setattr(xdl.optim.InPlaceStep, "take_alongside", counting)
    rng = np.random.RandomState(0)
    data = {"X_train": rng.randn(40, 3, 8, 8), "y_train": rng.randint(10, size=40),
            "X_val": rng.randn(10, 3, 8, 8), "y_val": rng.randint(10, size=10)}
    config = {"learning_rate": 1e-2}
    if rule == "adamw":
        config["weight_decay"] = 0.1

    def train(update_rule):
        np.random.seed(0)
        model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3,
                                  hidden_dim=12, weight_scale=1e-1, reg=0.01,
                                  normalization=normalization, dtype=dtype)
        np.random.seed(1)
        solver = Solver(model, data, update_rule=update_rule, optim_config=config,
                        num_epochs=2, batch_size=10, verbose=False)
        solver.train()
        return solver

    beside = train(rule)
    assert taken == [(4 * 4 * 4, 12)] * 7  # W2, on every step but the first of 8
    taken.clear()
    after = train(users_rule)
    assert taken == []
    assert beside.loss_history == after.loss_history
    for k in beside.model.params:
        np.testing.assert_array_equal(host(beside.model.params[k]), host(after.model.params[k]))
        assert beside.optim_configs[k]["t"] == after.optim_configs[k]["t"] == 8
        for state in ("m", "v"):
            np.testing.assert_array_equal(host(beside.optim_configs[k][state]),
                                          host(after.optim_configs[k][state]))


def test_a_model_without_in_place_params_is_called_as_before():
    # A user's model whose loss takes (X, y) only gets exactly that.
    calls = []
    inner = make_model()

    class PlainModel:
        params = inner.params

        def loss(self, X, y=None):
            calls.append(y is not None)
            return inner.loss(X, y)
    solver = Solver(PlainModel(), small_data(), update_rule="adam", num_epochs=1,
                    batch_size=20, verbose=False)
    solver.train()
    assert calls.count(True) == 3
