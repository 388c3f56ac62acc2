"""
First-order update rules for training neural networks.

Each update rule has the interface:

    def update(w, dw, config=None):

Inputs:
  - w: An array giving the current weights.
  - dw: An array of the same shape as w giving the gradient of the
    loss with respect to w.
  - config: A dictionary containing hyperparameter values such as learning
    rate, momentum, etc. If the update rule requires caching values over many
    iterations, then config will also hold these cached values.

Returns:
  - next_w: The next point after the update.
  - config: The config dictionary to be passed to the next iteration of the
    update rule.

Rules work on numpy and cupy arrays; their state (velocity, caches, moments)
is created on w's device with w's dtype. On the CPU the state arrays in
``config`` are updated in place and each step allocates one new array
(next_w); w and dw are never modified. Each rule runs as one fused kernel
where one applies: on the GPU (``xdl.backends.cuda``) one launch instead of
one per array operation; on the CPU, for C-contiguous float32/float64
arrays, one multithreaded pass of the compiled kernels
(``xdl.backends._cpu_kernels``) instead of about a dozen passes. The
formulas below are the reference and the fallback (other dtypes, strided
state, extension not built); the fused kernels do the same operations in
the same order. ``get_update_rule(name)`` looks a rule up by name for the
Solver.
"""
import math
import numbers

import numpy as np

from xdl.backends import get_array_module, is_cupy_array


def _check(w, dw, config):
    get_array_module(w, dw)
    if w.shape != dw.shape:
        raise ValueError("dw has shape %s but w has shape %s" % (dw.shape, w.shape))
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        raise TypeError("config must be a dict or None, got %s" % type(config).__name__)
    return config


def _hyper(config, name, default, lo=0.0, hi=math.inf, hi_open=False):
    """Read a hyperparameter (setting its default) and check its range."""
    v = config.setdefault(name, default)
    ok = isinstance(v, numbers.Real) and math.isfinite(v) and v >= lo and (
        v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError("config['%s'] must be a finite number in [%g, %g%s, got %r"
                         % (name, lo, hi, ")" if hi_open else "]", v))
    return float(v)


def _state(config, name, w):
    xp = get_array_module(w)
    s = config.get(name)
    if s is None:
        s = xp.zeros_like(w)
        config[name] = s
    elif s.shape != w.shape:
        raise ValueError("config['%s'] has shape %s but w has shape %s" % (name, s.shape, w.shape))
    return s


def _fused_kernels(w, *arrays):
    """
    The fused update kernels for w's device, or None (the NumPy formulas run):
    - the GPU kernels (xdl.backends.cuda; they return new state arrays) when
      w is a float32/float64 cupy array and every other array shares its dtype;
    - the compiled CPU kernels (they update the state in place) when w and
      the others are C-contiguous numpy arrays of one float32/float64 dtype.
    """
    if not is_cupy_array(w):
        from xdl.backends import cpu  # here: importing xdl.optim loads no extension
        return cpu.fused_kernels(w, *arrays)
    if w.dtype not in (np.float32, np.float64):
        return None
    if any(a.dtype != w.dtype for a in arrays):
        return None
    from xdl.backends import cuda
    return cuda


def sgd(w, dw, config=None):
    """
    Performs vanilla stochastic gradient descent.

    config format:
    - learning_rate: Scalar learning rate.
    """
    config = _check(w, dw, config)
    lr = _hyper(config, "learning_rate", 1e-2)
    fused = _fused_kernels(w, dw)
    if fused is not None:
        return fused.sgd(w, dw, lr), config
    return w - lr * dw, config


def sgd_momentum(w, dw, config=None):
    """
    Performs stochastic gradient descent with momentum.

    config format:
    - learning_rate: Scalar learning rate.
    - momentum: Scalar between 0 and 1 giving the momentum value.
      Setting momentum = 0 reduces to sgd.
    - velocity: An array of the same shape as w and dw used to store a
      moving average of the gradients.
    """
    config = _check(w, dw, config)
    lr = _hyper(config, "learning_rate", 1e-2)
    mu = _hyper(config, "momentum", 0.9, hi=1.0)
    v = _state(config, "velocity", w)
    fused = _fused_kernels(w, dw, v)
    if fused is not None:
        next_w, v = fused.sgd_momentum(w, dw, v, lr, mu)
    else:
        v *= mu  # state updated in place: no page faults on fresh buffers
        v -= lr * dw
        next_w = w + v
    config["velocity"] = v
    return next_w, config


def rmsprop(w, dw, config=None):
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
    config = _check(w, dw, config)
    xp = get_array_module(w)
    lr = _hyper(config, "learning_rate", 1e-2)
    decay = _hyper(config, "decay_rate", 0.99, hi=1.0)
    eps = _hyper(config, "epsilon", 1e-8)
    cache = _state(config, "cache", w)
    fused = _fused_kernels(w, dw, cache)
    if fused is not None:
        next_w, cache = fused.rmsprop(w, dw, cache, lr, decay, eps)
    else:
        tmp = dw * dw  # the one new buffer of the step; it becomes next_w
        tmp *= 1 - decay
        cache *= decay
        cache += tmp
        xp.sqrt(cache, out=tmp)
        tmp += eps
        xp.divide(dw, tmp, out=tmp)
        tmp *= -lr
        tmp += w
        next_w = tmp
    config["cache"] = cache
    return next_w, config


def adam(w, dw, config=None):
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
    config = _check(w, dw, config)
    xp = get_array_module(w)
    lr = _hyper(config, "learning_rate", 1e-3)
    beta1 = _hyper(config, "beta1", 0.9, hi=1.0, hi_open=True)
    beta2 = _hyper(config, "beta2", 0.999, hi=1.0, hi_open=True)
    eps = _hyper(config, "epsilon", 1e-8)
    m = _state(config, "m", w)
    v = _state(config, "v", w)
    t = config.get("t", 0) + 1
    # Bias correction, folded into the step size.
    step = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    eps_hat = eps * math.sqrt(1 - beta2 ** t)
    fused = _fused_kernels(w, dw, m, v)
    if fused is not None:
        next_w, m, v = fused.adam(w, dw, m, v, beta1, beta2, step, eps_hat)
    else:
        tmp = (1 - beta1) * dw  # the one new buffer of the step; it becomes next_w
        m *= beta1
        m += tmp
        xp.multiply(dw, dw, out=tmp)
        tmp *= 1 - beta2
        v *= beta2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp += eps_hat
        xp.divide(m, tmp, out=tmp)
        tmp *= -step
        tmp += w
        next_w = tmp
    config.update(m=m, v=v, t=t)
    return next_w, config


UPDATE_RULES = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
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
