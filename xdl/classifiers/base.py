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
    - in_place_params: names of the parameters whose adam/adamw step the
      model's loss can take itself (loss(X, y, in_place_steps=...), see
      xdl.solver.Solver); none by default
    """

    in_place_params = ()

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

    def _l2(self, names, squares=None):
        """
        0.5 * reg * sum of squares of the named weights (0 without reg).

        Inputs:
        - names: the regularized weights, in the order they are summed
        - squares: optional dict name -> the list an affine layer's backward
          pass appended the weight's sum of squares to (w_squares, from
          _squares_lists); the other weights' sums are computed here
        """
        if self.reg == 0:
            return 0.0
        squares = squares or {}
        total = 0.0
        for name in names:
            taken = squares.get(name)
            total = total + (taken[0] if taken else _sum_of_squares(self.params[name]))
        return 0.5 * self.reg * total

    def _squares_lists(self, names):
        """
        dict name -> a list for the affine layers' w_squares (sums of squares
        taken in their backward pass), or None for every name without reg.
        """
        return {name: [] if self.reg != 0 else None for name in names}

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
        """
        The bn_param dicts of the batch normalization layers, whose running
        statistics are saved; bn_params[i] normalizes the layer whose scale
        parameter is gamma<i+1>.
        """
        return []

    # -- state: parameters and running statistics by name ---------------------

    def state(self):
        """
        Everything a trained model needs at test time, by name (like PyTorch's
        ``state_dict``): the parameters under their own names ('W1', 'b1', ...)
        and the running statistics of batch normalization layer i under
        'bn_params/<i>/running_mean' and 'bn_params/<i>/running_var'.

        Returns a new dict of the model's arrays (not copies).
        """
        state = dict(self.params)
        for i, d in enumerate(self._state_dicts()):
            for k in _RUNNING_KEYS:
                if k in d:
                    state["bn_params/%d/%s" % (i, k)] = d[k]
        return state

    def _expected_state_shapes(self):
        """Name -> shape of every entry load_state takes (running stats are optional)."""
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        for i, _ in enumerate(self._state_dicts()):
            gamma = self.params["gamma%d" % (i + 1)]
            for k in _RUNNING_KEYS:
                shapes["bn_params/%d/%s" % (i, k)] = tuple(gamma.shape)
        return shapes

    def load_state(self, state, source="state"):
        """
        Set the parameters and running statistics from a dict made by
        ``state()`` (of a model of the same class and shapes), moving the
        arrays to this model's device and dtype.

        Inputs:
        - state: dict of arrays (numpy or cupy) named as state() names them
        - source: what the state came from, for error messages (a file name)

        Raises ValueError naming the missing, unexpected or misshapen entries;
        the model is unchanged then.
        """
        shapes = self._expected_state_shapes()
        missing = sorted(k for k in self.params if k not in state)
        unexpected = sorted(k for k in state if k not in shapes)
        if missing or unexpected:
            raise ValueError("%s does not fit this %s: %s" % (
                source, type(self).__name__, "; ".join(
                    part for part in (
                        "missing %s" % ", ".join(missing) if missing else "",
                        "unexpected %s" % ", ".join(unexpected) if unexpected else "")
                    if part)))
        for k, v in state.items():
            if tuple(v.shape) != shapes[k]:
                raise ValueError("%s in %s has shape %s, this %s's has shape %s"
                                 % (k, source, tuple(v.shape), type(self).__name__, shapes[k]))
        like = self._first_param()
        moved = {k: asarray_like(v, like, dtype=self.dtype) for k, v in state.items()}
        self.params = {k: moved[k] for k in self.params}
        for i, d in enumerate(self._state_dicts()):
            for k in _RUNNING_KEYS:
                name = "bn_params/%d/%s" % (i, k)
                if name in moved:
                    d[k] = moved[name]

    # -- save / load ---------------------------------------------------------

    def save(self, fname, verbose=True):
        """
        Save the parameters (and running statistics) to ``fname``, atomically:
        an .npz archive holding each array under its name in ``state()``
        (``numpy.load(fname)["W1"]`` works) plus the model's class and
        constructor arguments. The file loads on any backend with
        ``model.load(fname)`` or ``xdl.classifiers.load_model(fname)``.
        """
        serialization.save_state(fname, self.state(), kind="model", info={
            "class": type(self).__name__,
            "config": self._config,
            "dtype": np.dtype(self.dtype).name,
        })
        if verbose:
            print(fname, "saved.")

    def load(self, fname, verbose=True):
        """
        Load parameters saved by ``save`` into this model, on the device of
        its parameters, in the dtype of the file. The file must come from a
        model of the same class and shapes. Returns True.
        """
        saved = serialization.load_file(fname, kind="model", loader="model.load")
        if saved.info.get("class") != type(self).__name__:
            raise ValueError("%s holds a %s, not a %s: load it with "
                             "xdl.classifiers.load_model(%r)"
                             % (fname, saved.info.get("class"), type(self).__name__, fname))
        dtype = self.dtype
        self.dtype = np.dtype(_dtype_name(saved.info["dtype"])).type
        try:
            self.load_state(saved.state, source=fname)
        except ValueError:
            self.dtype = dtype
            raise
        if verbose:
            print(fname, "loaded.")
        return True


_RUNNING_KEYS = ("running_mean", "running_var")


def load_model(fname):
    """
    Rebuild a model saved with ``model.save(fname)`` on the configured backend.

    Returns the model, with its saved parameters and running statistics.
    """
    saved = serialization.load_file(fname, kind="model", loader="xdl.classifiers.load_model")
    cls = _MODEL_CLASSES.get(saved.info.get("class"))
    if cls is None:
        raise ValueError("%s holds an unknown model class %r; known: %s"
                         % (fname, saved.info.get("class"), ", ".join(sorted(_MODEL_CLASSES))))
    config = dict(saved.info["config"])
    config["dtype"] = np.dtype(_dtype_name(saved.info["dtype"])).type
    model = cls(**config)
    model.load_state(saved.state, source=fname)
    return model
