"""The file format of models and checkpoints: round trips, arrays stored under
their names, atomic writes, files of the first format, and one clear message
for every wrong file."""
import json
import os
import pickle

import numpy as np
import pytest

from xdl import serialization
from xdl.classifiers import FullyConnectedNet, Softmax, TwoLayerNet, load_model
from xdl.serialization import WrongFileError, load_file, load_state, save_state
from xdl.solver import Solver

from helpers import host


def test_nested_roundtrip(tmp_path, xp):
    state = {"a": xp.arange(6, dtype=np.float32).reshape(2, 3), "n": 3, "f": 0.5, "s": "x",
             "none": None, "flag": True, "list": [1, {"b": np.int64(7)}, xp.ones(2)],
             "scalar": np.float64(2.5)}
    path = tmp_path / "state.bin"
    save_state(path, state)
    got = load_state(path)
    assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.float32
    np.testing.assert_array_equal(got["a"], np.arange(6).reshape(2, 3))
    assert got["n"] == 3 and got["f"] == 0.5 and got["s"] == "x" and got["none"] is None
    assert got["flag"] is True and got["list"][1]["b"] == 7 and got["scalar"] == 2.5
    np.testing.assert_array_equal(got["list"][2], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["state.bin"]  # exact name, no temp files
    # each array is stored under its path, readable with plain numpy and no pickle
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["__xdl_structure__", "a", "list/2"]
        np.testing.assert_array_equal(data["a"], np.arange(6).reshape(2, 3))


def test_array_names_that_numpy_savez_cannot_take(tmp_path):
    # np.savez(file, **arrays) breaks on a key named 'file' or 'allow_pickle'.
    path = tmp_path / "s.npz"
    save_state(path, {"file": np.ones(2), "allow_pickle": np.zeros(1)})
    with np.load(path) as data:
        assert sorted(data.files) == ["__xdl_structure__", "allow_pickle", "file"]
    assert load_state(path)["file"].tolist() == [1.0, 1.0]


def test_model_file_holds_arrays_by_name(tmp_path, numpy_backend):
    np.random.seed(0)
    model = FullyConnectedNet([5, 4], input_dim=6, num_classes=3, normalization="batchnorm")
    model.loss(np.random.randn(8, 6), np.arange(8) % 3)  # fills the running averages
    path = tmp_path / "model.npz"
    model.save(path, verbose=False)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"__xdl_structure__", "W1", "b1", "gamma1", "beta1", "W2",
                                   "b2", "gamma2", "beta2", "W3", "b3",
                                   "bn_params/0/running_mean", "bn_params/0/running_var",
                                   "bn_params/1/running_mean", "bn_params/1/running_var"}
        np.testing.assert_array_equal(data["W2"], host(model.params["W2"]))
        np.testing.assert_array_equal(data["bn_params/1/running_var"],
                                      host(model.bn_params[1]["running_var"]))
        description = json.loads(str(data["__xdl_structure__"]))
    assert description["kind"] == "model" and description["info"]["class"] == \
        "FullyConnectedNet"


def test_checkpoint_holds_arrays_by_path(tmp_path):
    data = small_data()
    np.random.seed(0)
    solver = Solver(TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3), data,
                    update_rule="adam", num_epochs=1, batch_size=10, verbose=False,
                    checkpoint_name=str(tmp_path / "c"))
    solver.train()
    with np.load(tmp_path / "c_epoch_1.npz", allow_pickle=False) as arrays:
        names = set(arrays.files)
        for p in ("W1", "b1", "W2", "b2"):
            assert {"params/" + p, "best_params/" + p, "optim_configs/%s/m" % p,
                    "optim_configs/%s/v" % p} <= names
        assert "rng_state/keys" in names
        np.testing.assert_array_equal(arrays["optim_configs/W1/m"],
                                      host(solver.optim_configs["W1"]["m"]))


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_state(path, {"w": np.ones(3), "v": np.ones(3)})
    real = np.lib.format.write_array
    written = []

    def crash_on_second(f, array, **kwargs):
        written.append(1)
        if len(written) == 3:  # the description, one array, then the crash
            f.write(b"half an array")
            raise OSError("disk full")
        return real(f, array, **kwargs)
    monkeypatch.setattr(np.lib.format, "write_array", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, {"w": np.zeros(3), "v": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(load_state(path)["w"], np.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_saved_files_get_the_usual_permissions(tmp_path):
    # The temporary file of an atomic write is private (0600); the saved file must not be.
    umask = os.umask(0o022)
    try:
        path = tmp_path / "model.npz"
        save_state(path, {"w": np.ones(2)})
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)
        save_state(path, {"w": np.zeros(2)})  # replacing keeps the file's mode
        assert os.stat(path).st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot save a value of type object"):
        save_state(tmp_path / "x", {"o": object()})
    with pytest.raises(TypeError, match="only non-empty string keys"):
        save_state(tmp_path / "x", {1: 2})
    with pytest.raises(TypeError, match="cannot save o: an array of Python objects needs pickle"):
        save_state(tmp_path / "x", {"o": np.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match="two arrays would be saved under the name 'a/b'"):
        save_state(tmp_path / "x", {"a/b": np.ones(1), "a": {"b": np.ones(1)}})
    assert not os.path.exists(tmp_path / "x")


def test_damaged_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.npz"):
        load_state(tmp_path / "missing.npz")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(WrongFileError, match="junk is a text file, not a file xdl wrote"):
        load_state(junk)
    npy = tmp_path / "arr.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(WrongFileError, match=r"is a single NumPy array \(.npy\)"):
        load_state(npy)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(2))
    with pytest.raises(WrongFileError, match=r"is a NumPy .npz archive \(arrays: a\) that xdl "
                                             r"did not write: open it with numpy.load"):
        load_state(other)
    good = tmp_path / "good.npz"
    save_state(good, {"w": np.ones(1000)})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(WrongFileError, match="truncated.npz is"):
        load_state(truncated)
    with pytest.raises(WrongFileError, match="is a folder"):
        load_state(tmp_path)


# --- one message per wrong file, naming what to call instead --------------------------


def small_data(N=40, D=4, C=3, seed=0):
    rng = np.random.RandomState(seed)
    return {"X_train": rng.randn(N, D), "y_train": rng.randint(C, size=N),
            "X_val": rng.randn(10, D), "y_val": rng.randint(C, size=10)}


@pytest.fixture
def files(tmp_path, numpy_backend):
    np.random.seed(0)
    model = TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3)
    model.save(tmp_path / "model.npz", verbose=False)
    solver = Solver(model, small_data(), num_epochs=1, batch_size=20, verbose=False,
                    checkpoint_name=str(tmp_path / "ckpt"))
    solver.train()
    (tmp_path / "notes.txt").write_text("W1 = [[0.1, 0.2]]\n")
    np.savez(tmp_path / "plain.npz", W1=np.ones((4, 5)))
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"W1": np.ones(2)}, f, protocol=2)
    softmax = Softmax()
    softmax.W = np.ones((4, 3))
    softmax.save(tmp_path / "softmax.npz", verbose=False)
    return tmp_path


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_load_model_on_a_checkpoint_says_what_it_is(files):
    with pytest.raises(WrongFileError) as info:
        load_model(files / "ckpt_epoch_1.npz")
    msg = one_line(info)
    assert "is a Solver checkpoint of a TwoLayerNet at epoch 1, not a saved model" in msg
    assert "load it with solver.load_checkpoint(" in msg
    with pytest.raises(WrongFileError, match="is a saved Softmax linear classifier, not a saved "
                                             r"model: load it with Softmax\(\).load\("):
        load_model(files / "softmax.npz")


def test_load_checkpoint_on_a_model_says_what_it_is(files):
    solver = Solver(TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3), small_data(),
                    verbose=False)
    with pytest.raises(WrongFileError) as info:
        solver.load_checkpoint(files / "model.npz")
    msg = one_line(info)
    assert "model.npz is a saved TwoLayerNet model, not a Solver checkpoint" in msg
    assert "load it with xdl.classifiers.load_model(" in msg


@pytest.mark.parametrize("name, what", [
    ("notes.txt", "is a text file, not a file xdl wrote"),
    ("plain.npz", r"is a NumPy .npz archive \(arrays: W1\) that xdl did not write"),
    ("model.pkl", "is a pickle file"),
])
def test_foreign_files_given_to_every_loader(files, name, what):
    solver = Solver(TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3), small_data(),
                    verbose=False)
    for load in (load_model, solver.load_checkpoint, TwoLayerNet().load, Softmax().load):
        with pytest.raises(WrongFileError, match=what) as info:
            load(files / name)
        one_line(info)
        assert "allow_pickle" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(files / "nope.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        solver.load_checkpoint(files / "nope.npz")


def test_model_load_state_checks_names_and_shapes(numpy_backend):
    np.random.seed(0)
    model = TwoLayerNet(input_dim=4, hidden_dim=5, num_classes=3)
    state = {k: v.copy() for k, v in model.state().items()}
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match="missing b2; unexpected W9"):
        model.load_state(dict({k: v for k, v in state.items() if k != "b2"}, W9=np.ones(1)))
    with pytest.raises(ValueError, match=r"W2 in state has shape \(3, 3\), this TwoLayerNet's "
                                         r"has shape \(5, 3\)"):
        model.load_state(dict(state, W2=np.ones((3, 3))))
    for k in before:  # unchanged after the failures
        np.testing.assert_array_equal(model.params[k], before[k])
    state["W1"] = state["W1"] * 2
    model.load_state(state)
    np.testing.assert_array_equal(model.params["W1"], 2 * before["W1"])
    assert model.params["W1"].dtype == np.float32


# --- files of the first format (xdl-state-1) -------------------------------------------


def write_first_format(path, state):
    """The writer of the first format, as it was: arrays a0, a1, ... in the order met,
    and the structure with {'__array__': index} in __xdl_structure__."""
    arrays = []

    def flatten(obj):
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            return {"__array__": len(arrays) - 1}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, dict):
            return {"__dict__": {k: flatten(v) for k, v in obj.items()}}
        if isinstance(obj, (list, tuple)):
            return {"__list__": [flatten(v) for v in obj]}
        return obj
    structure = {"format": "xdl-state-1", "state": flatten(state)}
    np.savez(path, **{"__xdl_structure__": np.array(json.dumps(structure))},
             **{"a%d" % i: a for i, a in enumerate(arrays)})


def host_params(model):
    return {k: host(v) for k, v in model.params.items()}


def test_first_format_model_and_checkpoint_still_load(tmp_path, numpy_backend):
    np.random.seed(0)
    model = FullyConnectedNet([5], input_dim=4, num_classes=3, normalization="batchnorm")
    X = np.random.randn(8, 4)
    model.loss(X, np.arange(8) % 3)
    expected = host(model.loss(X))
    running = [{k: host(v) for k, v in model.bn_params[0].items()
                if k in ("running_mean", "running_var")}]
    old_model = tmp_path / "old_model.npz"
    write_first_format(old_model, {
        "class": "FullyConnectedNet", "config": model._config, "dtype": "float32",
        "params": host_params(model), "running": running})
    with np.load(old_model) as data:
        assert "a0" in data.files and "W1" not in data.files  # really the old layout
    again = load_model(old_model)
    np.testing.assert_array_equal(host(again.loss(X)), expected)

    # A checkpoint as the first Solver wrote it (list-shaped RNG state, running_stats).
    np.random.seed(1)
    rng = np.random.get_state()
    configs = {k: {"learning_rate": 1e-3, "t": 2, "m": np.full(v.shape, 0.5, np.float32),
                   "v": np.ones(v.shape, np.float32)} for k, v in model.params.items()}
    old_ckpt = tmp_path / "old_ckpt.npz"
    write_first_format(old_ckpt, {
        "model": "FullyConnectedNet", "update_rule": "adam", "lr_decay": 1.0,
        "batch_size": 10, "num_train_samples": 1000, "num_val_samples": None, "epoch": 2,
        "iteration": 8, "params": host_params(model), "running_stats": running,
        "optim_configs": configs, "best_val_acc": 0.5, "best_epoch": 1,
        "best_params": host_params(model), "loss_history": [2.0, 1.5],
        "train_acc_history": [0.1, 0.2], "val_acc_history": [0.3, 0.5],
        "rng_state": [rng[0], rng[1], int(rng[2]), int(rng[3]), float(rng[4])]})
    np.random.seed(2)
    fresh = FullyConnectedNet([5], input_dim=4, num_classes=3, normalization="batchnorm")
    solver = Solver(fresh, small_data(), verbose=False)
    solver.load_checkpoint(old_ckpt)
    assert np.random.rand() == np.random.RandomState(1).rand()  # the saved RNG state
    assert solver.epoch == 2 and solver.iteration == 8 and solver.loss_history == [2.0, 1.5]
    np.testing.assert_array_equal(host(fresh.loss(X)), expected)
    np.testing.assert_array_equal(host(solver.optim_configs["W1"]["m"]), 0.5)
    with pytest.raises(WrongFileError, match="is a saved FullyConnectedNet model, not a Solver"):
        solver.load_checkpoint(old_model)
    with pytest.raises(WrongFileError, match="is a Solver checkpoint of a FullyConnectedNet "
                                             "at epoch 2, not a saved model"):
        load_model(old_ckpt)


def test_first_format_linear_classifier_still_loads(tmp_path):
    path = tmp_path / "old_softmax.npz"
    W = np.arange(12.0).reshape(4, 3)
    write_first_format(path, {"class": "Softmax", "W": W})
    clf = Softmax()
    clf.load(path, verbose=False)
    np.testing.assert_array_equal(host(clf.W), W)
    assert load_file(path).kind == "linear_classifier"


def test_kind_is_checked(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        save_state(tmp_path / "x", {}, kind="weights")
    save_state(tmp_path / "s", {"a": 1})
    with pytest.raises(WrongFileError, match="is an xdl state file, not a saved model"):
        serialization.load_state(tmp_path / "s", kind="model")
