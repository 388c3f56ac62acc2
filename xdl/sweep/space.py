"""Search spaces: the notebooks' nested loops (``grid``) and random search
(``random_search`` over ``loguniform``, ``uniform`` and ``choice``).

A search space is a list of points; a point is a dict mapping hyperparameter
names (``learning_rate``, ``reg``, ``hidden_dim``, ..., and ``model`` to
sweep over model classes) to plain values.
"""
import itertools
import math
import numbers

import numpy as np


class Distribution:
    """
    Base class of what ``random_search`` draws a hyperparameter from: each
    subclass has ``sample(rng)``, which draws one plain Python value with a
    numpy RandomState.
    """


def _check_bounds(lo, hi, name, positive):
    for label, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError("%s: %s must be a finite number, got %r" % (name, label, v))
    if positive and lo <= 0:
        raise ValueError("%s: lo must be > 0 (it is drawn on a log scale), got %r" % (name, lo))
    if not lo < hi:
        raise ValueError("%s: lo must be < hi, got lo=%r, hi=%r" % (name, lo, hi))


class LogUniform(Distribution):
    """Uniform in log space on [lo, hi): learning rates, regularization strengths."""

    def __init__(self, lo, hi):
        _check_bounds(lo, hi, "loguniform", positive=True)
        self.lo, self.hi = float(lo), float(hi)

    def sample(self, rng):
        return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))

    def __repr__(self):
        return "loguniform(%g, %g)" % (self.lo, self.hi)


class Uniform(Distribution):
    """Uniform on [lo, hi): dropout keep ratios, momentum."""

    def __init__(self, lo, hi):
        _check_bounds(lo, hi, "uniform", positive=False)
        self.lo, self.hi = float(lo), float(hi)

    def sample(self, rng):
        return float(rng.uniform(self.lo, self.hi))

    def __repr__(self):
        return "uniform(%g, %g)" % (self.lo, self.hi)


class Choice(Distribution):
    """One of a list of values, each equally likely: hidden sizes, update rules."""

    def __init__(self, values):
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ValueError("choice needs a non-empty list of values, got %r" % (values,))
        self.values = [_plain(v, "choice") for v in values]

    def sample(self, rng):
        return self.values[rng.randint(len(self.values))]

    def __repr__(self):
        return "choice(%r)" % (self.values,)


def loguniform(lo, hi):
    """A value drawn uniformly in log space between lo and hi (both > 0)."""
    return LogUniform(lo, hi)


def uniform(lo, hi):
    """A value drawn uniformly between lo and hi."""
    return Uniform(lo, hi)


def choice(values):
    """One of the given values, drawn uniformly."""
    return Choice(values)


def _plain(value, where):
    """value as a plain Python value (numpy scalars converted) that JSON can store."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("%s: values must be finite, got %r" % (where, value))
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise TypeError("%s: hyperparameter values must be numbers, strings, booleans, None or "
                    "lists of them, got %r (%s)" % (where, value, type(value).__name__))


def _check_names(space, what):
    if not isinstance(space, dict):
        raise TypeError("%s needs a dict of hyperparameter name -> values, got %s"
                        % (what, type(space).__name__))
    if not space:
        raise ValueError("%s needs at least one hyperparameter; the space is empty" % what)
    for name in space:
        if not isinstance(name, str) or not name:
            raise TypeError("%s: hyperparameter names must be non-empty strings, got %r"
                            % (what, name))


def grid(space):
    """
    Every combination of the given values, in the order of the notebooks'
    nested loops (the first name is the outermost loop).

    Inputs:
    - space: dict mapping each hyperparameter name to a non-empty list of values,
      e.g. {'learning_rate': [1e-7, 5e-7], 'reg': [2.5e4, 5e4]}

    Returns:
    - points: list of dicts, one per combination
    """
    _check_names(space, "grid")
    names, value_lists = [], []
    for name, values in space.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ValueError("grid: %r needs a non-empty list of values, got %r" % (name, values))
        names.append(name)
        value_lists.append([_plain(v, "grid %r" % name) for v in values])
    return [dict(zip(names, combo)) for combo in itertools.product(*value_lists)]


def random_search(space, num_trials, seed=0):
    """
    num_trials points drawn at random: each hyperparameter from its
    distribution (``loguniform``, ``uniform``, ``choice``); a plain value
    (a number, a string, a list such as hidden_dims) is the same in every point.

    Inputs:
    - space: dict mapping hyperparameter names to distributions or fixed values
    - num_trials: number of points, >= 1
    - seed: seed of the numpy RandomState that draws them (same seed, same points)

    Returns:
    - points: list of num_trials dicts
    """
    _check_names(space, "random_search")
    if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) \
            or num_trials < 1:
        raise ValueError("random_search: num_trials must be an integer >= 1, got %r"
                         % (num_trials,))
    fixed = {name: _plain(v, "random_search %r" % name) for name, v in space.items()
             if not isinstance(v, Distribution)}
    rng = np.random.RandomState(seed)
    points = []
    for _ in range(int(num_trials)):
        point = {}
        for name, v in space.items():
            point[name] = v.sample(rng) if isinstance(v, Distribution) else fixed[name]
        points.append(point)
    return points
