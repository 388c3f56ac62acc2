"""The device interface (``xdl.backends.OPERATIONS``) for cupy arrays: the
GPU twin of ``cpu`` (same functions, same layouts, same update-rule state
convention; xdl/DESIGN.md, "One device interface" and "The CUDA kernels").

The kernels live in ``kernels.cu`` beside this file, templated on the float
type. They are compiled once, on first use, by one ``cupy.RawModule`` (NVRTC,
cached in memory and in CuPy's on-disk kernel cache); float32 and float64
arrays pick the ``<float>`` or ``<double>`` instance. Convolution and
pooling refuse other dtypes (TypeError); the update rules, sum_of_squares,
axpy and softmax_loss run the NumPy formulas of ``numpy_kernels`` on arrays
their fused kernels do not take (float16, strided state).

``_launch`` is the only code that touches the kernels' argument lists: it
checks each argument against ``SIGNATURES`` (which mirrors kernels.cu), makes
input arrays C-contiguous (a RawKernel sees a bare pointer and ignores
strides), checks output and in-place arrays are contiguous, wraps every
scalar in an explicit NumPy type (``np.int64`` for ``long long``,
``np.float32`` or ``np.float64`` for ``T``) and launches one thread per
output element in a grid-stride loop.

Importing this module does not import cupy; cupy is imported by the first
call (by then cupy arrays exist, so it is already loaded).
"""
import functools
import numbers
import os

import numpy as np

from xdl.backends import _boundary, numpy_kernels

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cu")
COMPILE_OPTIONS = ("-std=c++17",)

# Threads per block, and a cap on the grid (the grid-stride loops cover the rest).
BLOCK = 256
MAX_BLOCKS = 65535

# Keep each im2col buffer of a chunked convolution under this many elements
# (256 MiB in float32); bigger batches are processed in chunks of images.
CHUNK_ELEMENTS = 1 << 26

# C++ name of the kernels' float type T, by dtype.
FLOAT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# The parameter list of each kernel in kernels.cu, in order. Arrays:
# "in"/"out" of type T, "inout" of type T updated in place, "in_i32"/"out_i32"
# of int (int32), "in_i64" of long long (int64). Scalars: "i64" (long long)
# and "T".
SIGNATURES = {
    "im2col": ("in", "out") + ("i64",) * 10,
    "col2im": ("in", "out") + ("i64",) * 10,
    "conv_bias_nchw": ("in", "in", "out", "i64", "i64", "i64"),
    "maxpool_forward": ("in", "out", "out_i32") + ("i64",) * 9,
    "maxpool_backward": ("in", "in_i32", "out") + ("i64",) * 9,
    "sgd_update": ("in", "in", "out", "T", "i64"),
    "sgd_momentum_update": ("in", "in", "inout", "out", "T", "T", "i64"),
    "rmsprop_update": ("in", "in", "inout", "out") + ("T",) * 4 + ("i64",),
    "adamw_update": ("in", "in", "inout", "inout", "out") + ("T",) * 7 + ("i64",),
    "axpy": ("in", "inout", "T", "i64"),
    "softmax_loss_rows": ("in", "in_i64", "out", "out", "i64", "i64"),
}

NAME_EXPRESSIONS = tuple("%s<%s>" % (name, t) for name in SIGNATURES
                         for t in FLOAT_TYPES.values())

_ARRAY_DTYPES = {"in_i32": np.dtype(np.int32), "out_i32": np.dtype(np.int32),
                 "in_i64": np.dtype(np.int64)}


def _cupy():
    import cupy
    return cupy


# ---------------------------------------------------------------------------
# Compilation and launch
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _module():
    """The RawModule of kernels.cu (built once per process; compiled lazily)."""
    with open(SOURCE_PATH, encoding="utf-8") as f:
        code = f.read()
    return _cupy().RawModule(code=code, options=COMPILE_OPTIONS,
                             name_expressions=list(NAME_EXPRESSIONS))


@functools.lru_cache(maxsize=None)
def _function(name, dtype):
    """The kernel ``name<T>`` for float dtype ``dtype``."""
    return _module().get_function("%s<%s>" % (name, FLOAT_TYPES[dtype]))


def _pack(kind, a, dtype, name, i):
    """Check argument i of kernel `name` against its kind; return what to pass."""
    if kind in ("i64", "T"):
        if kind == "i64" and isinstance(a, numbers.Integral) and not isinstance(a, bool):
            return np.int64(a)
        if kind == "T" and isinstance(a, numbers.Real) and not isinstance(a, bool):
            return dtype.type(a)
        raise TypeError("argument %d of kernel %s must be %s, got %r"
                        % (i, name, "an integer" if kind == "i64" else "a real number", a))
    cp = _cupy()
    want = _ARRAY_DTYPES.get(kind, dtype)
    if not isinstance(a, cp.ndarray):
        raise TypeError("argument %d of kernel %s must be a cupy array, got %s"
                        % (i, name, type(a).__name__))
    if a.dtype != want:
        raise TypeError("argument %d of kernel %s must have dtype %s, got %s"
                        % (i, name, want, a.dtype))
    if kind in ("in", "in_i32", "in_i64"):
        return cp.ascontiguousarray(a)
    if not a.flags.c_contiguous:  # a copy would lose the kernel's writes
        raise ValueError("%s argument %d of kernel %s must be C-contiguous"
                         % ("in-place" if kind == "inout" else "output", i, name))
    return a


def _launch(name, dtype, size, *args):
    """
    Launch kernel ``name<T>`` with one thread per output element.

    Inputs:
    - name: a kernel of kernels.cu (a key of SIGNATURES)
    - dtype: float32 or float64, selects T
    - size: number of output elements (the grid-stride loop bound)
    - args: the kernel's arguments, in order (checked against SIGNATURES)
    """
    signature, dtype = SIGNATURES[name], np.dtype(dtype)
    if len(args) != len(signature):
        raise TypeError("kernel %s takes %d arguments, got %d" % (name, len(signature), len(args)))
    packed = tuple(_pack(kind, a, dtype, name, i)
                   for i, (kind, a) in enumerate(zip(signature, args)))
    if size == 0:
        return
    blocks = min((size + BLOCK - 1) // BLOCK, MAX_BLOCKS)
    _function(name, dtype)((blocks,), (BLOCK,), packed)


WHERE = "CUDA kernels"


def _float_dtype(*named):
    """
    Check (name, array) pairs are cupy arrays of one float32/float64 dtype;
    return it. Raises TypeError for numpy arrays, other dtypes or mixed dtypes.
    """
    return _boundary.float_dtype(named, WHERE, _cupy().ndarray, "cupy")


def _fused_dtype(inputs, state=()):
    """
    Check the (name, array) pairs of an elementwise operation: cupy arrays,
    the first one floating, all of its shape. Returns the dtype when the
    fused kernel takes them (one float32/float64 dtype; the state, updated
    in place, C-contiguous), else None: the caller runs the NumPy formula.
    """
    cp = _cupy()
    named = tuple(inputs) + tuple(state)
    for name, a in named:
        if not isinstance(a, cp.ndarray):
            raise TypeError("%s must be a cupy array for the %s, got %s"
                            % (name, WHERE, type(a).__name__))
    _boundary.check_floating(*named[0])
    _boundary.check_same_shape(*named)
    dtype = named[0][1].dtype
    if dtype not in FLOAT_TYPES or any(a.dtype != dtype for _, a in named):
        return None
    if not all(a.flags.c_contiguous for _, a in state):
        return None
    return dtype


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------


def _im2col(x, KH, KW, stride, pad, OH, OW):
    N, C, H, W = x.shape
    cols = _cupy().empty((C * KH * KW, N * OH * OW), dtype=x.dtype)
    _launch("im2col", x.dtype, cols.size, x, cols, N, C, H, W, KH, KW, stride, pad, OH, OW)
    return cols


def _col2im_into(cols, dx, KH, KW, stride, pad, OH, OW):
    """Write col2im(cols) into the contiguous array dx (N, C, H, W)."""
    N, C, H, W = dx.shape
    _launch("col2im", dx.dtype, dx.size, cols, dx, N, C, H, W, KH, KW, stride, pad, OH, OW)


def _bias_to_nchw(res, b, out):
    """out (nb, F, OH, OW) = res (F, nb*OH*OW) + b, in one pass."""
    nb, F = out.shape[:2]
    _launch("conv_bias_nchw", res.dtype, out.size, res, b, out, nb, F, out.shape[2] * out.shape[3])


def im2col(x, KH, KW, stride, pad, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W) cupy array; KH, KW: window; stride, pad; OH, OW: output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), row (c*KH + kh)*KW + kw, column (n*OH + oh)*OW + ow
    """
    _float_dtype(("x", x))
    _boundary.check_im2col(x, KH, KW, stride, pad, OH, OW)
    return _im2col(x, KH, KW, stride, pad, OH, OW)


def col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    """
    Adjoint of im2col, as a gather: each input pixel sums the column entries
    that were read from it.

    Inputs:
    - cols: (C*KH*KW, N*OH*OW) cupy array
    - x_shape: (N, C, H, W)

    Returns:
    - dx: (N, C, H, W) with the dtype of cols
    """
    dtype = _float_dtype(("cols", cols))
    _boundary.check_col2im(cols, x_shape, KH, KW, stride, pad, OH, OW)
    dx = _cupy().empty(tuple(x_shape), dtype=dtype)
    _col2im_into(cols, dx, KH, KW, stride, pad, OH, OW)
    return dx


def conv_forward(x, w, b, stride, pad, OH, OW):
    """
    Convolution by im2col + one cuBLAS GEMM per chunk of images
    (numpy_kernels.gemm_conv_forward). The GEMM gives (F, nb*OH*OW); one
    kernel then adds the bias while writing it in the (N, F, OH, OW) layout,
    so the transpose costs no extra pass.

    Inputs:
    - x: (N, C, H, W), w: (F, C, KH, KW), b: (F,), cupy arrays of one dtype
    - stride, pad; OH, OW: output size

    Returns:
    - out: (N, F, OH, OW)
    """
    _float_dtype(("x", x), ("w", w), ("b", b))
    _boundary.check_conv_forward(x, w, b, stride, pad, OH, OW)
    return numpy_kernels.gemm_conv_forward(x, w, b, stride, pad, OH, OW, _im2col,
                                           _bias_to_nchw, CHUNK_ELEMENTS)


def conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=True):
    """
    Gradients of conv_forward; im2col is recomputed chunk by chunk
    (numpy_kernels.gemm_conv_backward).

    Inputs:
    - dout: (N, F, OH, OW); x, w: the forward inputs (cupy arrays of one dtype)
    - compute_dx: False skips dx (the GEMM w2.T @ dout and col2im), for a
      first layer whose input needs no gradient

    Returns a tuple of:
    - dx: (N, C, H, W), or None when compute_dx is False
    - dw: (F, C, KH, KW)
    - db: (F,)
    """
    _float_dtype(("dout", dout), ("x", x), ("w", w))
    _boundary.check_conv_backward(dout, x, w, stride, pad, OH, OW)
    return numpy_kernels.gemm_conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx,
                                            _im2col, _col2im_into, CHUNK_ELEMENTS)


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


def maxpool_forward(x, ph, pw, stride, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W) cupy array; ph, pw: window; stride; OH, OW: output size

    Returns:
    - out: (N, C, OH, OW) window maxima
    - argmax: (N, C, OH, OW) int32, row-major index kh*pw + kw of the first
      maximum inside each window (np.argmax's tie rule)
    """
    dtype = _float_dtype(("x", x))
    _boundary.check_pool_forward(x, ph, pw, stride, OH, OW)
    cp = _cupy()
    N, C, H, W = x.shape
    out = cp.empty((N, C, OH, OW), dtype=dtype)
    argmax = cp.empty((N, C, OH, OW), dtype=np.int32)
    _launch("maxpool_forward", dtype, out.size, x, out, argmax,
            N, C, H, W, ph, pw, stride, OH, OW)
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW):
    """
    Routes each dout entry to the input pixel its window's argmax names, as a
    gather (one thread per input pixel); overlapping windows add up.

    Inputs:
    - dout: (N, C, OH, OW) cupy array; argmax: (N, C, OH, OW) integer array
      from maxpool_forward; x_shape: (N, C, H, W)

    Returns:
    - dx: (N, C, H, W) with the dtype of dout
    """
    dtype = _float_dtype(("dout", dout))
    cp = _cupy()
    if not isinstance(argmax, cp.ndarray) or argmax.dtype.kind not in "iu":
        raise TypeError("argmax must be a cupy integer array, got %s"
                        % getattr(argmax, "dtype", type(argmax).__name__))
    _boundary.check_pool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW)
    N, C, H, W = x_shape
    dx = cp.empty((N, C, H, W), dtype=dtype)
    _launch("maxpool_backward", dtype, dx.size, dout, argmax.astype(np.int32, copy=False), dx,
            N, C, H, W, ph, pw, stride, OH, OW)
    return dx


# ---------------------------------------------------------------------------
# Convolution + ReLU + max pooling: composed of the kernels above (the CPU
# fuses them per image; on the GPU each is already one pass).
# ---------------------------------------------------------------------------


def conv_relu_pool_forward(x, w, b, stride, pad, OH, OW, ph, pw, pool_stride, POH, POW):
    """
    conv_forward, maxpool_forward, then the ReLU of the pooled values
    (numpy_kernels.relu_of_pooled).

    Inputs:
    - x: (N, C, H, W), w: (F, C, KH, KW), b: (F,), cupy arrays of one dtype
    - stride, pad; OH, OW: the convolution's output size
    - ph, pw: pooling window; pool_stride; POH, POW: the pooled size

    Returns a tuple of:
    - out: (N, F, POH, POW)
    - argmax: (N, F, POH, POW) int32, the window index of the first maximum
      where out > 0, -1 where the ReLU passes no gradient
    """
    _float_dtype(("x", x), ("w", w), ("b", b))
    _boundary.check_conv_relu_pool_forward(x, w, b, stride, pad, OH, OW,
                                           ph, pw, pool_stride, POH, POW)
    out, argmax = maxpool_forward(conv_forward(x, w, b, stride, pad, OH, OW),
                                  ph, pw, pool_stride, POH, POW)
    return numpy_kernels.relu_of_pooled(out, argmax)


def conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW, ph, pw, pool_stride,
                            POH, POW, compute_dx=True):
    """
    maxpool_backward through the argmax (it carries the ReLU), then
    conv_backward.

    Inputs:
    - dout: (N, F, POH, POW); argmax: from conv_relu_pool_forward; x, w and
      the geometry: as conv_relu_pool_forward
    - compute_dx: False skips dx (returned as None)

    Returns a tuple of (dx, dw, db).
    """
    _float_dtype(("dout", dout), ("x", x), ("w", w))
    _boundary.check_conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW,
                                            ph, pw, pool_stride, POH, POW)
    dconv = maxpool_backward(dout, argmax, (x.shape[0], w.shape[0], OH, OW),
                             ph, pw, pool_stride, POH, POW)
    return conv_backward(dconv, x, w, stride, pad, OH, OW, compute_dx=compute_dx)


# ---------------------------------------------------------------------------
# Affine and softmax loss
# ---------------------------------------------------------------------------


def matmul(a, b, c=None, beta=0.0):
    """
    Inputs:
    - a: (M, K); b: (K, N) cupy arrays
    - c: optional (M, N) cupy array, not modified

    Returns:
    - a @ b + beta * c (cuBLAS, then axpy's one pass)
    """
    cp = _cupy()
    for name, m in (("a", a), ("b", b), ("c", c)):
        if m is not None and not isinstance(m, cp.ndarray):
            raise TypeError("%s must be a cupy array for the %s, got %s"
                            % (name, WHERE, type(m).__name__))
    _boundary.check_matmul(a, b, c, beta)
    out = a @ b
    if c is not None and beta != 0:
        axpy(beta, c, out)
    return out


def affine_backward(x, w, dout, reg=0.0, compute_dx=True, w_sumsq=False):
    """
    numpy_kernels.affine_backward on cupy arrays: two cuBLAS products, and
    reg * w added to dw in one pass (axpy); w_sumsq by sum_of_squares.
    """
    _boundary.check_affine_backward(x, w, dout, reg)
    return numpy_kernels.affine_backward_by_products(matmul, sum_of_squares, x, w, dout, reg,
                                                     compute_dx, w_sumsq)


def softmax_loss(x, y):
    """
    Softmax loss and its gradient in one kernel plus one reduction (the
    NumPy formula takes about fifteen launches); float16 scores take the
    formula.

    Inputs:
    - x: (N, C) cupy array of scores; y: (N,) cupy integer labels in [0, C)
      (not checked here: callers check labels where they come from)

    Returns a tuple of:
    - loss: 0-d cupy array
    - dx: (N, C) gradient of the loss with respect to x
    """
    cp = _cupy()
    if not isinstance(x, cp.ndarray) or not isinstance(y, cp.ndarray):
        raise TypeError("x and y must be cupy arrays for the %s, got %s and %s"
                        % (WHERE, type(x).__name__, type(y).__name__))
    _boundary.check_floating("x", x)
    _boundary.check_scores(x, y)
    if x.dtype not in FLOAT_TYPES:
        return numpy_kernels.softmax_loss(x, y)
    N, C = x.shape
    dx = cp.empty((N, C), dtype=x.dtype)
    row_loss = cp.empty(N, dtype=x.dtype)
    _launch("softmax_loss_rows", x.dtype, N, x, y.astype(np.int64, copy=False), dx, row_loss,
            N, C)
    return row_loss.sum(), dx


# ---------------------------------------------------------------------------
# Fused update rules: one launch per parameter; each updates its state in
# place and returns (next_w, *state), as numpy_kernels, whose formulas run
# where the kernels do not apply.
# ---------------------------------------------------------------------------


def _next_w(out, w, dtype, others):
    """
    The array a fused update kernel writes next_w into: a new one for
    out=None, else out, which _fused_rule_dtype found a C-contiguous cupy
    array of w's shape and dtype, once _boundary.check_out finds it w
    itself or an array of its own.
    """
    if out is None:
        return _cupy().empty(w.shape, dtype=dtype)
    _boundary.check_out(out, w, *others)
    return out


def _fused_rule_dtype(out, inputs, state):
    """
    _fused_dtype of an update rule's arrays, out among them when given (a
    strided out goes to the NumPy formula, which fills it).
    """
    if out is None:
        return _fused_dtype(inputs, state)
    return _fused_dtype(inputs, tuple(state) + (("out", out),))


def sgd(w, dw, lr, out=None):
    """Returns next_w = w - lr * dw (in out when given; out=w: in place)."""
    inputs = (("w", w), ("dw", dw))
    dtype = _fused_rule_dtype(out, inputs, ())
    if dtype is None:
        return numpy_kernels.sgd(w, dw, lr, out)
    next_w = _next_w(out, w, dtype, inputs[1:])
    _launch("sgd_update", dtype, w.size, w, dw, next_w, lr, w.size)
    return next_w


def sgd_momentum(w, dw, v, lr, mu, out=None):
    """Returns (next_w, v): v = mu * v - lr * dw in place, next_w = w + v (in out)."""
    inputs, state = (("w", w), ("dw", dw)), (("velocity", v),)
    dtype = _fused_rule_dtype(out, inputs, state)
    if dtype is None:
        return numpy_kernels.sgd_momentum(w, dw, v, lr, mu, out)
    next_w = _next_w(out, w, dtype, inputs[1:] + state)
    _launch("sgd_momentum_update", dtype, w.size, w, dw, v, next_w, lr, mu, w.size)
    return next_w, v


def rmsprop(w, dw, cache, lr, decay, eps, out=None):
    """
    Returns (next_w, cache): cache = decay * cache + (1 - decay) * dw**2 in
    place, next_w = w - lr * dw / (sqrt(cache) + eps) (in out when given).
    """
    inputs, state = (("w", w), ("dw", dw)), (("cache", cache),)
    dtype = _fused_rule_dtype(out, inputs, state)
    if dtype is None:
        return numpy_kernels.rmsprop(w, dw, cache, lr, decay, eps, out)
    next_w = _next_w(out, w, dtype, inputs[1:] + state)
    _launch("rmsprop_update", dtype, w.size, w, dw, cache, next_w,
            lr, decay, 1 - decay, eps, w.size)
    return next_w, cache


def adam(w, dw, m, v, beta1, beta2, step, eps_hat, out=None):
    """
    Returns (next_w, m, v): the moments updated in place and
    next_w = w - step * m / (sqrt(v) + eps_hat) (in out when given), where
    step and eps_hat carry the bias correction (computed by xdl.optim.adam).
    """
    dtype = _fused_rule_dtype(out, (("w", w), ("dw", dw)), (("m", m), ("v", v)))
    if dtype is None:
        return numpy_kernels.adam(w, dw, m, v, beta1, beta2, step, eps_hat, out)
    return adamw(w, dw, m, v, beta1, beta2, step, eps_hat, 1.0, out)  # shrink 1: Adam


def adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out=None):
    """
    Returns (next_w, m, v): the moments updated in place as in adam and
    next_w = shrink * w - step * m / (sqrt(v) + eps_hat) (in out when
    given), where shrink = 1 - lr * weight_decay (computed by
    xdl.optim.adamw).
    """
    inputs, state = (("w", w), ("dw", dw)), (("m", m), ("v", v))
    dtype = _fused_rule_dtype(out, inputs, state)
    if dtype is None:
        return numpy_kernels.adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out)
    next_w = _next_w(out, w, dtype, inputs[1:] + state)
    _launch("adamw_update", dtype, w.size, w, dw, m, v, next_w,
            beta1, 1 - beta1, beta2, 1 - beta2, step, eps_hat, shrink, w.size)
    return next_w, m, v


def adamw_alongside(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out):
    """
    numpy_kernels.adamw_alongside on cupy arrays: adamw runs when the block
    ends (queued on the stream after the block's kernels).
    """
    if out is None:
        raise TypeError("adamw_alongside needs out: the array next_w goes into (w itself "
                        "for the update in place)")
    _fused_rule_dtype(out, (("w", w), ("dw", dw)), (("m", m), ("v", v)))
    return numpy_kernels._StepOnExit(
        lambda: adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out))


# ---------------------------------------------------------------------------
# L2 regularization
# ---------------------------------------------------------------------------


def sum_of_squares(x):
    """Returns the sum of the squares of x's elements, a 0-d cupy array (cuBLAS dot)."""
    _fused_dtype((("x", x),))
    flat = x.ravel()
    return _cupy().vdot(flat, flat)


def axpy(alpha, x, y):
    """y += alpha * x in place, in one launch; returns y."""
    dtype = _fused_dtype((("x", x),), (("y", y),))
    if dtype is None:
        return numpy_kernels.axpy(alpha, x, y)
    _launch("axpy", dtype, y.size, x, y, alpha, y.size)
    return y


def relu_backward(dout, x):
    """numpy_kernels.relu_backward on cupy arrays: CuPy's where, one elementwise launch."""
    return numpy_kernels.relu_backward(dout, x)
