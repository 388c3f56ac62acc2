"""Numerical gradients and rel_error on both backends."""
import numpy as np
import pytest

from xdl.gradient_check import (eval_numerical_gradient, eval_numerical_gradient_array,
                                grad_check_sparse, rel_error)

from helpers import host, to


def test_eval_numerical_gradient_of_known_function(xp):
    x0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.1, -0.3]])
    x = to(xp, x0)
    grad = eval_numerical_gradient(lambda a: float((a ** 3).sum()), x, verbose=False)
    np.testing.assert_allclose(host(grad), 3 * x0 ** 2, rtol=1e-8)
    np.testing.assert_array_equal(host(x), x0)  # restored after the perturbations


def test_eval_numerical_gradient_verbose_prints_indices(capsys):
    eval_numerical_gradient(lambda a: float((a * a).sum()), np.ones(2))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(0,) ") and lines[1].startswith("(1,) ")


def test_eval_numerical_gradient_array_of_linear_map(xp):
    rng = np.random.RandomState(0)
    A, x0, df = rng.randn(4, 3), rng.randn(3, 2), rng.randn(4, 2)
    grad = eval_numerical_gradient_array(lambda v: to(xp, A) @ v, to(xp, x0), to(xp, df))
    np.testing.assert_allclose(host(grad), A.T @ df, rtol=1e-7)


def test_grad_check_sparse_format_and_errors(capsys):
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    errors = grad_check_sparse(lambda a: float((a ** 2).sum()), x, 2 * x, num_checks=5)
    assert len(errors) == 5 and max(errors) < 1e-8
    lines = capsys.readouterr().out.splitlines()
    for line in lines:
        num, ana = line.split(", relative error: ")[0].split(" analytic: ")
        assert num.startswith("numerical: ") and float(num.split()[1]) == pytest.approx(
            float(ana), abs=1e-6)
    # Off by 1 everywhere: relative error >= 1 / (2 + 3) at every element.
    wrong = grad_check_sparse(lambda a: float((a ** 2).sum()), x, 2 * x + 1, num_checks=3)
    assert min(wrong) > 0.1


def test_rel_error(xp):
    a = to(xp, [1.0, 2.0, 0.0])
    b = to(xp, [1.0, 2.2, 0.0])
    assert rel_error(a, b) == pytest.approx(0.2 / 4.2)
    assert type(rel_error(a, a)) is float and rel_error(a, a) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        rel_error(a, to(xp, [1.0]))
