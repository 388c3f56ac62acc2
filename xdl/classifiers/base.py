"""What every network model shares: a ``params`` dict on the configured
backend, input/label handling, L2 regularization, and save/load.

A model subclass draws its initial weights with NumPy (so a seed gives the
same numbers on every backend), passes them to ``_set_initial_params``, and
implements ``loss(X, y=None)``.
"""
import numpy as np

from xdl import serialization
from xdl.backends import asarray, asarray_like, kernels_for
from xdl._checks import check_labels, check_reg

_MODEL_CLASSES = {}


def register(cls):
    """Class decorator: make a model class loadable by ``load_model``."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def _dtype_name(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError("dtype must be float32 or float64, got %s" % dtype)
    return dtype.name


def _sum_of_squares(w):
    """
    Sum of the squares of w's elements, as a scalar of w's dtype (a 0-d
    array on the GPU), without a temporary the size of w.
    """
    return kernels_for(w).sum_of_squares(w)


def _add_scaled(g, alpha, w):
    """g += alpha * w, in place, in one pass on the arrays' device."""
    kernels_for(g, w).axpy(alpha, w, g)


class Model:
    """
    Base class of the network models.

    Attributes:
    - params: dict mapping parameter names to arrays (numpy or cupy)
    - reg: L2 regularization strength (loss += 0.5 * reg * sum of W**2)
    - dtype: the floating dtype of the parameters
    """

    def __init__(self, config):
        # Constructor arguments, kept so that load_model can rebuild the model.
        self._config = dict(config)
        self.params = {}

    # -- parameters ----------------------------------------------------------

    @property
    def reg(self):
        return self._reg

    @reg.setter
    def reg(self, value):
        self._reg = check_reg(value)

    def _set_initial_params(self, host_params, dtype):
        """Cast host-drawn parameters to dtype and move them to the backend."""
        self.dtype = np.dtype(_dtype_name(dtype)).type
        self.params = {k: asarray(np.asarray(v, dtype=self.dtype)) for k, v in host_params.items()}

    def _first_param(self):
        return next(iter(self.params.values()))

    def _input(self, X, input_shape):
        """Move X to the parameters' device and dtype, checking its shape."""
        if not hasattr(X, "shape"):
            X = np.asarray(X)
        if tuple(X.shape[1:]) != tuple(input_shape) and \
                int(np.prod(X.shape[1:])) != int(np.prod(input_shape)):
            raise ValueError("X must have shape (N, %s), got %s"
                             % (", ".join(str(d) for d in input_shape), tuple(X.shape)))
        ref = self._first_param()
        return asarray_like(X, ref, dtype=ref.dtype)

    def _labels(self, y, num_samples, num_classes):
        """Check labels (on the host when they come from the host) and move them."""
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        check_labels(y, num_samples, num_classes, "y")
        return asarray_like(y, self._first_param())

    def _l2(self, names):
        """0.5 * reg * sum of squares of the named weights (0 without reg)."""
        if self.reg == 0:
            return 0.0
        total = 0.0
        for name in names:
            total = total + _sum_of_squares(self.params[name])
        return 0.5 * self.reg * total

    def _add_l2_grads(self, grads, names):
        """
        Add the gradient of the L2 term, reg * W, to grads[name] in place for
        each named weight (nothing without reg).

        Inputs:
        - grads: dict of gradients, arrays owned by the caller
        - names: names of the regularized weights
        """
        if self.reg == 0:
            return
        for name in names:
            _add_scaled(grads[name], self.reg, self.params[name])

    # -- running statistics (models with batch normalization override) --------

    def _state_dicts(self):
        """The dicts holding running statistics (bn_params), to be saved."""
        return []

    # -- save / load ---------------------------------------------------------

    def save(self, fname, verbose=True):
        """
        Save the parameters (and running statistics) to ``fname``, atomically.
        The file loads on any backend with ``model.load(fname)`` or
        ``xdl.classifiers.load_model(fname)``.
        """
        running = [{k: v for k, v in d.items() if k in ("running_mean", "running_var")}
                   for d in self._state_dicts()]
        serialization.save_state(fname, {
            "class": type(self).__name__,
            "config": self._config,
            "dtype": np.dtype(self.dtype).name,
            "params": self.params,
            "running": running,
        })
        if verbose:
            print(fname, "saved.")

    def load(self, fname, verbose=True):
        """
        Load parameters saved by ``save`` into this model, onto the configured
        backend. The file must come from a model of the same class and shapes.
        Returns True.
        """
        state = serialization.load_state(fname)
        if state.get("class") != type(self).__name__:
            raise ValueError("%s holds a %s, not a %s" % (fname, state.get("class"),
                                                           type(self).__name__))
        params = state["params"]
        if set(params) != set(self.params):
            raise ValueError("%s has parameters %s but this model has %s"
                             % (fname, sorted(params), sorted(self.params)))
        for k, v in params.items():
            if v.shape != self.params[k].shape:
                raise ValueError("parameter %s in %s has shape %s, this model's has shape %s"
                                 % (k, fname, v.shape, self.params[k].shape))
        self.dtype = np.dtype(state["dtype"]).type
        self.params = {k: asarray(v.astype(self.dtype)) for k, v in params.items()}
        for d, saved in zip(self._state_dicts(), state.get("running", [])):
            d.update({k: asarray(v.astype(self.dtype)) for k, v in saved.items()})
        if verbose:
            print(fname, "loaded.")
        return True


def load_model(fname):
    """
    Rebuild a model saved with ``model.save(fname)`` on the configured backend.

    Returns the model, with its saved parameters and running statistics.
    """
    state = serialization.load_state(fname)
    cls = _MODEL_CLASSES.get(state.get("class"))
    if cls is None:
        raise ValueError("%s holds an unknown model class %r; known: %s"
                         % (fname, state.get("class"), ", ".join(sorted(_MODEL_CLASSES))))
    config = dict(state["config"])
    config["dtype"] = np.dtype(state["dtype"]).type
    model = cls(**config)
    model.load(fname, verbose=False)
    return model
