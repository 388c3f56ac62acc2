"""Softmax and SVM losses (naive vs vectorized, numerical gradients) and the
LinearClassifier training loop."""
import random

import numpy as np
import pytest

from xdl.classifiers import LinearSVM, Softmax
from xdl.classifiers.linear_svm import svm_loss_naive, svm_loss_vectorized
from xdl.classifiers.softmax import softmax_loss_naive, softmax_loss_vectorized
from xdl.gradient_check import grad_check_sparse

from helpers import host, to


def dev_set(N=40, D=31, C=10, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(N, D) * 50
    X[:, -1] = 1  # bias trick
    return X, rng.randint(C, size=N), rng.randn(D, C) * 1e-4


@pytest.mark.parametrize("naive, vectorized", [
    (softmax_loss_naive, softmax_loss_vectorized),
    (svm_loss_naive, svm_loss_vectorized),
])
def test_naive_matches_vectorized(xp, naive, vectorized):
    X, y, W = dev_set()
    Xd, yd, Wd = to(xp, X), xp.asarray(y), to(xp, W)
    for reg in (0.0, 5e-6, 5e1):
        loss_n, grad_n = naive(Wd, Xd, yd, reg)
        loss_v, grad_v = vectorized(Wd, Xd, yd, reg)
        assert abs(loss_n - loss_v) < 1e-10 * max(1, abs(loss_n))
        assert np.linalg.norm(host(grad_n) - host(grad_v)) < 1e-10
        assert isinstance(grad_v, xp.ndarray)


def test_softmax_initial_loss_near_log10():
    X, y, W = dev_set(N=500, D=3073)
    loss, grad = softmax_loss_vectorized(W, X, y, 0.0)
    assert abs(loss - np.log(10)) < 0.1
    assert grad.shape == W.shape


@pytest.mark.parametrize("loss_fn", [softmax_loss_naive, softmax_loss_vectorized,
                                     svm_loss_vectorized])
def test_sparse_gradient_check(loss_fn, capsys):
    random.seed(0)  # grad_check_sparse picks elements with Python's random
    X, y, W = dev_set()
    for reg in (0.0, 5e1):
        _, grad = loss_fn(W, X, y, reg)
        errors = grad_check_sparse(lambda w: loss_fn(w, X, y, reg)[0], W, grad, num_checks=8)
        limit = 1e-5 if "svm" not in loss_fn.__name__ else 1e-3  # hinge kinks
        assert max(errors) < limit
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 16
    assert all(line.startswith("numerical: ") and ", relative error: " in line for line in lines)


def test_softmax_vectorized_stable_for_large_weights():
    X, y, W = dev_set()
    loss, grad = softmax_loss_vectorized(W * 1e6, X, y, 0.0)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("loss_fn", [softmax_loss_naive, softmax_loss_vectorized,
                                     svm_loss_naive, svm_loss_vectorized])
def test_losses_reject_bad_input(loss_fn):
    X, y, W = dev_set()
    with pytest.raises(ValueError, match="reg must be a finite number >= 0, got -1"):
        loss_fn(W, X, y, -1.0)
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        loss_fn(W, X, np.full_like(y, 10), 0.0)
    with pytest.raises(ValueError, match="X has 30 features .* W has 31 rows"):
        loss_fn(W, X[:, :30], y, 0.0)
    with pytest.raises(TypeError, match="integer class labels"):
        loss_fn(W, X, y.astype(float), 0.0)


@pytest.mark.parametrize("cls", [Softmax, LinearSVM])
def test_linear_classifier_trains_predicts_saves(backend, cls, tmp_path, capsys):
    rng = np.random.RandomState(0)
    C, D = 3, 21
    centers = rng.randn(C, D) * 4
    y = rng.randint(C, size=600)
    X = centers[y] + rng.randn(600, D)
    X[:, -1] = 1
    np.random.seed(0)
    clf = cls()
    history = clf.train(X, y, learning_rate=1e-3, reg=1e-3, num_iters=201, batch_size=100,
                        verbose=True)
    assert len(history) == 201 and all(type(v) is float for v in history)
    assert history[-1] < history[0]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("iteration 0 / 201: loss ") and len(out) == 3
    pred = clf.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == (600,)
    assert np.mean(pred == y) > 0.9
    assert isinstance(clf.W, backend.ndarray)
    path = str(tmp_path / "linear.npy")
    clf.save(path)
    assert capsys.readouterr().out.strip() == path + " saved."
    other = cls()
    assert other.load(path, verbose=False)
    np.testing.assert_array_equal(other.predict(X), pred)
    with pytest.raises(ValueError, match="holds a"):
        (LinearSVM if cls is Softmax else Softmax)().load(path)


def test_linear_classifier_stops_on_divergence(backend):
    from xdl.solver import TrainingStopped
    X, y, _ = dev_set(N=200)
    np.random.seed(0)
    clf = Softmax()
    with pytest.warns(TrainingStopped, match="training stopped at iteration"):
        history = clf.train(X, y, learning_rate=1e150, reg=1e10, num_iters=50)
    assert len(history) < 50 and all(np.isfinite(history))
    # W is the one of the last finite step (the bad steps were not applied).
    assert np.all(np.isfinite(host(clf.W)))


def test_linear_classifier_bad_arguments(backend):
    X, y, _ = dev_set()
    for bad in (-1e-3, float("nan"), float("inf"), True, "1e-3"):
        with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
            Softmax().train(X, y, learning_rate=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Softmax().train(X, y, batch_size=0)
    with pytest.raises(RuntimeError, match="call train\\(\\) or load\\(\\) first"):
        Softmax().predict(X)


def test_zero_learning_rate_measures_the_initial_loss():
    # A user measures the initial loss with learning_rate=0 (torch.optim accepts 0 too):
    # the weights must not move, and the loss is about log(C) for small weights.
    X, y, _ = dev_set()
    np.random.seed(0)
    clf = Softmax()
    history = clf.train(X, y, learning_rate=0.0, reg=0.0, num_iters=5, batch_size=50)
    W0 = host(clf.W).copy()
    clf.train(X, y, learning_rate=0, reg=0.0, num_iters=3)
    np.testing.assert_array_equal(host(clf.W), W0)
    assert len(history) == 5
    assert abs(np.mean(history) - np.log(int(y.max()) + 1)) < 0.1
