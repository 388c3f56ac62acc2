"""End-to-end training on the real CIFAR-10 copy (marked ``cifar10``; skipped
when the data folder is missing, run on CI after it builds the copy)."""
import numpy as np
import pytest

from xdl import data_utils
from xdl.classifiers import Softmax, ThreeLayerConvNet, TwoLayerNet
from xdl.solver import Solver

pytestmark = [pytest.mark.cifar10, pytest.mark.slow]


@pytest.fixture(scope="module")
def cifar10():
    folder = data_utils.cifar10_folder()
    if not data_utils.is_complete(folder):
        pytest.skip("CIFAR-10 is not in %s (python -m xdl.data_utils download)" % folder)
    return data_utils.get_CIFAR10_data(cifar10_dir=folder)


def test_softmax_notebook_settings(cifar10, numpy_backend):
    # Notebook 01: rows with the bias trick, lr 1e-7, reg 2.5e4, 1500 iterations.
    def rows(X):
        X = X.reshape(X.shape[0], -1).astype(np.float64)
        return np.hstack([X, np.ones((X.shape[0], 1))])
    X_train, X_val = rows(cifar10["X_train"]), rows(cifar10["X_val"])
    np.random.seed(0)
    softmax = Softmax()
    history = softmax.train(X_train, cifar10["y_train"], learning_rate=1e-7, reg=2.5e4,
                            num_iters=1500)
    assert 700 < history[0] < 850 and history[-1] < 2.3
    val_acc = np.mean(softmax.predict(X_val) == cifar10["y_val"])
    assert val_acc > 0.33


def test_two_layer_net_solver(cifar10, numpy_backend):
    np.random.seed(0)
    model = TwoLayerNet(hidden_dim=100, reg=0.5)
    solver = Solver(model, cifar10, update_rule="sgd", optim_config={"learning_rate": 1.5e-3},
                    lr_decay=0.95, num_epochs=6, batch_size=100, verbose=False)
    solver.train()
    assert solver.best_val_acc > 0.45


def test_three_layer_convnet_beats_chance(cifar10, backend):
    np.random.seed(0)
    small = {"X_train": cifar10["X_train"][:4000], "y_train": cifar10["y_train"][:4000],
             "X_val": cifar10["X_val"], "y_val": cifar10["y_val"]}
    model = ThreeLayerConvNet(num_filters=16, filter_size=5, hidden_dim=100,
                              weight_scale=1e-2, reg=1e-3)
    solver = Solver(model, small, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    num_epochs=2, batch_size=50, verbose=False)
    solver.train()
    assert solver.best_val_acc > 0.30
