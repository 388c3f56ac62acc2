"""
First-order update rules for training neural networks.

Each update rule has the interface:

    def update(w, dw, config=None, out=None):

Inputs:
  - w: An array giving the current weights.
  - dw: An array of the same shape as w giving the gradient of the
    loss with respect to w.
  - config: A dictionary containing hyperparameter values such as learning
    rate, momentum, etc. If the update rule requires caching values over many
    iterations, then config will also hold these cached values.
  - out: Optional array to write next_w into: w itself for the update in
    place (saves a new array and its memory traffic each step; the Solver
    does this), or an array of w's shape and dtype sharing no memory with
    w, dw or the state.

Returns:
  - next_w: The next point after the update.
  - config: The config dictionary to be passed to the next iteration of the
    update rule.

Every rule does three things: read its hyperparameters from config (the
defaults of RULES filled in), fetch its state from config (made on w's
device with w's dtype on the first step), and call the rule of the same
name on w's device (``xdl.backends.kernels_for``): one fused kernel where
one applies, else the NumPy formula of ``xdl.backends.numpy_kernels``. The
state arrays in config are updated in place; each step allocates one new
array, next_w, unless out is given; dw is never modified, nor w unless it
is out. A config key that is neither a
hyperparameter nor a state of the rule raises ValueError, listing the keys
the rule takes. ``get_update_rule(name)`` looks a rule up by name for the
Solver; xdl/DESIGN.md ("Update rules") shows how to add one.

``in_place_step(rule, w, config)`` prepares the next adam or adamw step on
w for a model to take itself during its backward pass
(``InPlaceStep.take_alongside``: the Solver hands these to models that name
``in_place_params``).
"""
import difflib
import math
from typing import NamedTuple

from xdl.backends import get_array_module, kernels_for
from xdl.backends._boundary import is_integral, is_real
from xdl._checks import check_same_device


class Hyper(NamedTuple):
    """A hyperparameter: its config key, default and allowed range."""
    name: str
    default: float
    lo: float = 0.0
    hi: float = math.inf
    hi_open: bool = False  # the range excludes hi


class Rule(NamedTuple):
    """What an update rule keeps in its config dict."""
    hyperparameters: tuple  # Hyper entries, in the order the rule reads them
    state: tuple = ()       # keys of the state the rule keeps between steps

    def keys(self):
        return tuple(h.name for h in self.hyperparameters) + self.state


def _learning_rate(default):
    return Hyper("learning_rate", default)


EPSILON = Hyper("epsilon", 1e-8)
BETA1 = Hyper("beta1", 0.9, hi=1.0, hi_open=True)
BETA2 = Hyper("beta2", 0.999, hi=1.0, hi_open=True)

# The rule table: hyperparameters (with defaults and ranges) and state keys.
RULES = {
    "sgd": Rule((_learning_rate(1e-2),)),
    "sgd_momentum": Rule((_learning_rate(1e-2), Hyper("momentum", 0.9, hi=1.0)), ("velocity",)),
    "rmsprop": Rule((_learning_rate(1e-2), Hyper("decay_rate", 0.99, hi=1.0), EPSILON),
                    ("cache",)),
    "adam": Rule((_learning_rate(1e-3), BETA1, BETA2, EPSILON), ("m", "v", "t")),
    "adamw": Rule((_learning_rate(1e-3), BETA1, BETA2, EPSILON, Hyper("weight_decay", 1e-2)),
                  ("m", "v", "t")),
}

# Each rule's keys as a set, for check_config's test on every step.
_KEY_SETS = {name: frozenset(r.keys()) for name, r in RULES.items()}


def check_config(rule, config):
    """
    Check that every key of config is one the update rule named `rule` takes
    (a hyperparameter or a state of RULES[rule]); the Solver can call it
    before training starts.

    Raises ValueError naming the key, the closest known key, and the keys
    the rule takes; TypeError when config is not a dict.
    """
    if not isinstance(config, dict):
        raise TypeError("config must be a dict or None, got %s" % type(config).__name__)
    if _KEY_SETS[rule].issuperset(config):
        return
    known = RULES[rule].keys()
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ValueError("config key %r is not used by the update rule %s%s; %s"
                             % (key, rule, " (did you mean %r?)" % close[0] if close else "",
                                _describe(rule)))


def _config(rule, w, dw, config, out=None):
    """
    Check w, dw, out's device and the config's keys; return the config dict
    (a new one for None). The kernels check the rest of out.
    """
    check_same_device(w=w, dw=dw, out=out)
    if w.shape != dw.shape:
        raise ValueError("dw has shape %s but w has shape %s" % (dw.shape, w.shape))
    if config is None:
        return {}
    check_config(rule, config)
    return config


def _describe(rule):
    """'adam takes the hyperparameters ... and keeps its state in ...'."""
    hyper = [h.name for h in RULES[rule].hyperparameters]
    state = RULES[rule].state
    return "%s takes the hyperparameter%s %s and %s" % (
        rule, "s" if len(hyper) > 1 else "", ", ".join(hyper),
        "keeps its state in %s" % ", ".join(state) if state else "keeps no state")


def _hyperparameters(rule, config):
    """The rule's hyperparameters from config, defaults set there, ranges checked."""
    values = []
    for h in RULES[rule].hyperparameters:
        v = config.setdefault(h.name, h.default)
        ok = is_real(v) and math.isfinite(v) and v >= h.lo and (
            v < h.hi if h.hi_open else v <= h.hi)
        if not ok:
            raise ValueError("config['%s'] must be a finite number in [%g, %g%s, got %r"
                             % (h.name, h.lo, h.hi, ")" if h.hi_open else "]", v))
        values.append(float(v))
    return values


def _state(config, w, *names):
    """The named state arrays from config; zeros like w (C-contiguous) on the first step."""
    arrays = []
    for name in names:
        s = config.get(name)
        if s is None:
            s = config[name] = get_array_module(w).zeros(w.shape, dtype=w.dtype)
        elif getattr(s, "shape", None) != w.shape:
            raise ValueError("config['%s'] has shape %s but w has shape %s"
                             % (name, getattr(s, "shape", type(s).__name__), w.shape))
        arrays.append(s)
    return arrays


def _steps_taken(config):
    """config['t'], the steps taken so far (0 before the first)."""
    t = config.get("t", 0)
    if not is_integral(t) or isinstance(t, bool) or t < 0:
        raise ValueError("config['t'] (the steps taken) must be an integer >= 0, got %r" % (t,))
    return int(t)


def _adam_bias_correction(lr, beta1, beta2, eps, t):
    """
    Adam's bias-corrected step, folded into two scalars: with
    step = lr * sqrt(1 - beta2**t) / (1 - beta1**t) and
    eps_hat = eps * sqrt(1 - beta2**t),
    step * m / (sqrt(v) + eps_hat) == lr * mhat / (sqrt(vhat) + eps).
    """
    root = math.sqrt(1 - beta2 ** t)
    return lr * root / (1 - beta1 ** t), eps * root


def sgd(w, dw, config=None, out=None):
    """
    Performs vanilla stochastic gradient descent.

    config format:
    - learning_rate: Scalar learning rate.
    """
    config = _config("sgd", w, dw, config, out)
    lr, = _hyperparameters("sgd", config)
    next_w = kernels_for(w, dw, out).sgd(w, dw, lr, out)
    return next_w, config


def sgd_momentum(w, dw, config=None, out=None):
    """
    Performs stochastic gradient descent with momentum.

    config format:
    - learning_rate: Scalar learning rate.
    - momentum: Scalar between 0 and 1 giving the momentum value.
      Setting momentum = 0 reduces to sgd.
    - velocity: An array of the same shape as w and dw used to store a
      moving average of the gradients.
    """
    config = _config("sgd_momentum", w, dw, config, out)
    lr, mu = _hyperparameters("sgd_momentum", config)
    v, = _state(config, w, "velocity")
    next_w, _ = kernels_for(w, dw, v, out).sgd_momentum(w, dw, v, lr, mu, out)
    return next_w, config


def rmsprop(w, dw, config=None, out=None):
    """
    Uses the RMSProp update rule, which uses a moving average of squared
    gradient values to set adaptive per-parameter learning rates.

    config format:
    - learning_rate: Scalar learning rate.
    - decay_rate: Scalar between 0 and 1 giving the decay rate for the squared
      gradient cache.
    - epsilon: Small scalar used for smoothing to avoid dividing by zero.
    - cache: Moving average of second moments of gradients.
    """
    config = _config("rmsprop", w, dw, config, out)
    lr, decay, eps = _hyperparameters("rmsprop", config)
    cache, = _state(config, w, "cache")
    next_w, _ = kernels_for(w, dw, cache, out).rmsprop(w, dw, cache, lr, decay, eps, out)
    return next_w, config


def _adam_step(rule, w, config):
    """
    What adam's and adamw's kernels take for the next step on w: the
    hyperparameters from config (defaults set there), the moments (made on
    the first step) and the bias correction of steps taken plus one.

    Returns (m, v, beta1, beta2, step, eps_hat, shrink, t); shrink is
    1 - learning_rate * weight_decay for adamw, 1 for adam.
    """
    lr, beta1, beta2, eps, *decay = _hyperparameters(rule, config)
    m, v = _state(config, w, "m", "v")
    t = _steps_taken(config) + 1
    step, eps_hat = _adam_bias_correction(lr, beta1, beta2, eps, t)
    shrink = 1 - lr * decay[0] if decay else 1.0
    return m, v, beta1, beta2, step, eps_hat, shrink, t


def adam(w, dw, config=None, out=None):
    """
    Uses the Adam update rule, which incorporates moving averages of both the
    gradient and its square and a bias correction term.

    config format:
    - learning_rate: Scalar learning rate.
    - beta1: Decay rate for moving average of first moment of gradient.
    - beta2: Decay rate for moving average of second moment of gradient.
    - epsilon: Small scalar used for smoothing to avoid dividing by zero.
    - m: Moving average of gradient.
    - v: Moving average of squared gradient.
    - t: Iteration number.
    """
    config = _config("adam", w, dw, config, out)
    m, v, beta1, beta2, step, eps_hat, _, t = _adam_step("adam", w, config)
    next_w, _, _ = kernels_for(w, dw, m, v, out).adam(w, dw, m, v, beta1, beta2, step, eps_hat,
                                                      out)
    config["t"] = t
    return next_w, config


def adamw(w, dw, config=None, out=None):
    """
    Uses the AdamW update rule (Loshchilov and Hutter, "Decoupled Weight
    Decay Regularization"), as torch.optim.AdamW: Adam whose weight decay
    shrinks the weights directly, w -= learning_rate * weight_decay * w,
    instead of entering the gradient (and so the moments) as an L2 term
    does.

    config format:
    - learning_rate, beta1, beta2, epsilon, m, v, t: as for adam.
    - weight_decay: Decoupled weight decay; 0 gives adam.
    """
    config = _config("adamw", w, dw, config, out)
    m, v, beta1, beta2, step, eps_hat, shrink, t = _adam_step("adamw", w, config)
    next_w, _, _ = kernels_for(w, dw, m, v, out).adamw(w, dw, m, v, beta1, beta2, step, eps_hat,
                                                       shrink, out)
    config["t"] = t
    return next_w, config


class InPlaceStep:
    """
    The next step of adam or adamw on a weight array, in place, for a model
    to take during its backward pass, as soon as the weight's gradient is
    known, beside other work (take_alongside). The Solver makes one per
    parameter a model names in ``in_place_params`` and passes them to
    ``model.loss(X, y, in_place_steps=...)``; it applies every step that was
    not taken (applied False) as usual. Made by in_place_step.

    Attributes:
    - rule: 'adam' or 'adamw'
    - w: the weights, updated in place
    - m, v: the moments in config (made on the first step, updated in place)
    - beta1, beta2, step, eps_hat, shrink: this step's scalars, as the rule
      computes them (shrink 1 for adam)
    - applied: False until the step has been taken
    """

    def __init__(self, rule, w, config):
        self.rule, self.w, self._config = rule, w, config
        (self.m, self.v, self.beta1, self.beta2, self.step, self.eps_hat, self.shrink,
         self._t) = _adam_step(rule, w, config)
        self.applied = False

    def take_alongside(self, dw):
        """
        A context manager: the step with gradient dw is taken on w in place
        beside the block's work and is complete when the block ends (even if
        it raised). The block must not read or write w, dw or the moments.
        On the CPU the compiled kernels run the step (memory-bound) on the
        same threads as the block's first kernel call (arithmetic-bound),
        at the same time; elsewhere it runs when the block ends. The same
        bits as the rule: adam is adamw's kernel with shrink 1.
        """
        if self.applied:
            raise RuntimeError("this %s step was taken already" % self.rule)
        _config(self.rule, self.w, dw, self._config)  # dw's device and shape
        inner = kernels_for(self.w, dw, self.m, self.v).adamw_alongside(
            self.w, dw, self.m, self.v, self.beta1, self.beta2, self.step, self.eps_hat,
            self.shrink, self.w)
        return _Taken(self, inner)


class _Taken:
    """take_alongside's context manager: the device's, then the step recorded as taken."""

    def __init__(self, step, inner):
        self.step, self.inner = step, inner

    def __enter__(self):
        self.inner.__enter__()

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)  # the step, complete (also after an error in the block)
        self.step._config["t"] = self.step._t
        self.step.applied = True
        return False


def in_place_step(rule, w, config):
    """
    An InPlaceStep of the update rule `rule` (a name or one of this
    module's functions) on w with config (keys checked, defaults set there
    and the state made on the first step, as the rule does); None for the
    rules taken only by the Solver (sgd, sgd_momentum, rmsprop, a function
    of the user's).
    """
    name = rule if isinstance(rule, str) else next(
        (k for k, f in UPDATE_RULES.items() if f is rule), None)
    if name not in ("adam", "adamw"):
        return None
    check_config(name, config)
    return InPlaceStep(name, w, config)


UPDATE_RULES = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
}


def get_update_rule(rule):
    """
    Return the update rule named ``rule`` (or ``rule`` itself if it is
    callable). Raises ValueError listing the known names otherwise.
    """
    if callable(rule):
        return rule
    if isinstance(rule, str) and rule in UPDATE_RULES:
        return UPDATE_RULES[rule]
    raise ValueError("unknown update rule %r; known rules are %s, or pass a function "
                     "update(w, dw, config) -> (next_w, config)"
                     % (rule, ", ".join(sorted(UPDATE_RULES))))
