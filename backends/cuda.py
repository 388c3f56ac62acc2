"""CUDA kernels for cupy arrays: the GPU twin of ``numpy_kernels`` and the
Cython ``_cpu_kernels`` (same functions, same layouts), plus fused update
rules for ``xdl.optim`` and a fused softmax loss.

The kernels live in ``kernels.cu`` beside this file, templated on the float
type. They are compiled once, on first use, by one ``cupy.RawModule`` (NVRTC,
cached in memory and in CuPy's on-disk kernel cache); float32 and float64
arrays pick the ``<float>`` or ``<double>`` instance, other dtypes raise
TypeError.

``_launch`` is the only code that touches the kernels' argument lists: it
checks each argument against ``SIGNATURES`` (which mirrors kernels.cu), makes
input arrays C-contiguous (a RawKernel sees a bare pointer and ignores
strides), checks output arrays are contiguous, wraps every scalar in an
explicit NumPy type (``np.int64`` for ``long long``, ``np.float32`` or
``np.float64`` for ``T``) and launches one thread per output element in a
grid-stride loop.

Importing this module does not import cupy; cupy is imported by the first
call (by then cupy arrays exist, so it is already loaded).
"""
import functools
import numbers
import os

import numpy as np

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
# "in"/"out" of type T, "in_i32"/"out_i32" of int (int32), "in_i64" of long
# long (int64). Scalars: "i64" (long long) and "T".
SIGNATURES = {
    "im2col": ("in", "out") + ("i64",) * 10,
    "col2im": ("in", "out") + ("i64",) * 10,
    "conv_bias_nchw": ("in", "in", "out", "i64", "i64", "i64"),
    "maxpool_forward": ("in", "out", "out_i32") + ("i64",) * 9,
    "maxpool_backward": ("in", "in_i32", "out") + ("i64",) * 9,
    "sgd_update": ("in", "in", "out", "T", "i64"),
    "sgd_momentum_update": ("in", "in", "in", "out", "out", "T", "T", "i64"),
    "rmsprop_update": ("in", "in", "in", "out", "out") + ("T",) * 4 + ("i64",),
    "adam_update": ("in",) * 4 + ("out",) * 3 + ("T",) * 6 + ("i64",),
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
    if kind.startswith("in"):
        return cp.ascontiguousarray(a)
    if not a.flags.c_contiguous:  # a copy would lose the kernel's writes
        raise ValueError("output argument %d of kernel %s must be C-contiguous" % (i, name))
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


def _float_dtype(*named):
    """
    Check (name, array) pairs are cupy arrays of one float dtype; return it.
    Raises TypeError for numpy arrays, other dtypes or mixed dtypes.
    """
    cp = _cupy()
    dtype = None
    for name, a in named:
        if not isinstance(a, cp.ndarray):
            raise TypeError("%s must be a cupy array for the CUDA kernels, got %s"
                            % (name, type(a).__name__))
        if a.dtype not in FLOAT_TYPES:
            raise TypeError("%s must be float32 or float64 for the CUDA kernels, got %s"
                            % (name, a.dtype))
        if dtype is not None and a.dtype != dtype:
            raise TypeError("%s has dtype %s but %s has dtype %s; the CUDA kernels need one dtype"
                            % (name, a.dtype, named[0][0], dtype))
        dtype = a.dtype
    return dtype


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------


def im2col(x, KH, KW, stride, pad, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W) cupy array; KH, KW: window; stride, pad; OH, OW: output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), row (c*KH + kh)*KW + kw, column (n*OH + oh)*OW + ow
    """
    dtype = _float_dtype(("x", x))
    N, C, H, W = x.shape
    cols = _cupy().empty((C * KH * KW, N * OH * OW), dtype=dtype)
    _launch("im2col", dtype, cols.size, x, cols, N, C, H, W, KH, KW, stride, pad, OH, OW)
    return cols


def _col2im_into(cols, dx, KH, KW, stride, pad, OH, OW):
    """Write col2im(cols) into the contiguous array dx (N, C, H, W)."""
    N, C, H, W = dx.shape
    _launch("col2im", dx.dtype, dx.size, cols, dx, N, C, H, W, KH, KW, stride, pad, OH, OW)


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
    dx = _cupy().empty(tuple(x_shape), dtype=dtype)
    _col2im_into(cols, dx, KH, KW, stride, pad, OH, OW)
    return dx


def _chunks(N, per_image):
    step = max(1, CHUNK_ELEMENTS // max(per_image, 1))
    return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


def conv_forward(x, w, b, stride, pad, OH, OW):
    """
    Convolution by im2col + one cuBLAS GEMM per chunk of images.

    The GEMM w.reshape(F, -1) @ cols gives (F, N*OH*OW); one kernel then adds
    the bias while writing it in the (N, F, OH, OW) layout, so the transpose
    costs no extra pass.

    Inputs:
    - x: (N, C, H, W), w: (F, C, KH, KW), b: (F,), cupy arrays of one dtype
    - stride, pad; OH, OW: output size

    Returns:
    - out: (N, F, OH, OW)
    """
    dtype = _float_dtype(("x", x), ("w", w), ("b", b))
    cp = _cupy()
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    out = cp.empty((N, F, OH, OW), dtype=dtype)
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        res = w2 @ cols
        _launch("conv_bias_nchw", dtype, (n1 - n0) * F * OH * OW,
                res, b, out[n0:n1], n1 - n0, F, OH * OW)
    return out


def conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=True):
    """
    Gradients of conv_forward; im2col is recomputed chunk by chunk.

    Inputs:
    - dout: (N, F, OH, OW); x, w: the forward inputs (cupy arrays of one dtype)
    - compute_dx: False skips dx (the GEMM w2.T @ dout and col2im), for a
      first layer whose input needs no gradient

    Returns a tuple of:
    - dx: (N, C, H, W), or None when compute_dx is False
    - dw: (F, C, KH, KW)
    - db: (F,)
    """
    dtype = _float_dtype(("dout", dout), ("x", x), ("w", w))
    cp = _cupy()
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    dx = cp.empty(x.shape, dtype=dtype) if compute_dx else None
    dw = db = None
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        # (nb, F, OH, OW) -> (F, nb*OH*OW), the column order of cols.
        d2 = cp.ascontiguousarray(dout[n0:n1].transpose(1, 0, 2, 3)).reshape(F, -1)
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        dw_part, db_part = d2 @ cols.T, d2.sum(axis=1)
        dw = dw_part if dw is None else dw + dw_part
        db = db_part if db is None else db + db_part
        if compute_dx:
            _col2im_into(w2.T @ d2, dx[n0:n1], KH, KW, stride, pad, OH, OW)
    if dw is None:  # empty batch
        dw, db = cp.zeros((F, C * KH * KW), dtype=dtype), cp.zeros(F, dtype=dtype)
    return dx, dw.reshape(w.shape), db


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
    N, C, H, W = x_shape
    dx = cp.empty((N, C, H, W), dtype=dtype)
    _launch("maxpool_backward", dtype, dx.size, dout, argmax.astype(np.int32, copy=False), dx,
            N, C, H, W, ph, pw, stride, OH, OW)
    return dx


# ---------------------------------------------------------------------------
# Fused update rules (one launch per parameter; see xdl.optim for the math)
# ---------------------------------------------------------------------------


def sgd(w, dw, lr):
    """Returns next_w = w - lr * dw."""
    dtype = _float_dtype(("w", w), ("dw", dw))
    next_w = _cupy().empty(w.shape, dtype=dtype)
    _launch("sgd_update", dtype, w.size, w, dw, next_w, lr, w.size)
    return next_w


def sgd_momentum(w, dw, v, lr, mu):
    """Returns (next_w, next_v): next_v = mu * v - lr * dw, next_w = w + next_v."""
    dtype = _float_dtype(("w", w), ("dw", dw), ("velocity", v))
    cp = _cupy()
    next_w, next_v = cp.empty(w.shape, dtype=dtype), cp.empty(w.shape, dtype=dtype)
    _launch("sgd_momentum_update", dtype, w.size, w, dw, v, next_w, next_v, lr, mu, w.size)
    return next_w, next_v


def rmsprop(w, dw, cache, lr, decay, eps):
    """
    Returns (next_w, next_cache): next_cache = decay * cache + (1 - decay) * dw**2,
    next_w = w - lr * dw / (sqrt(next_cache) + eps).
    """
    dtype = _float_dtype(("w", w), ("dw", dw), ("cache", cache))
    cp = _cupy()
    next_w, next_cache = cp.empty(w.shape, dtype=dtype), cp.empty(w.shape, dtype=dtype)
    _launch("rmsprop_update", dtype, w.size, w, dw, cache, next_w, next_cache,
            lr, decay, 1 - decay, eps, w.size)
    return next_w, next_cache


def adam(w, dw, m, v, beta1, beta2, step, eps_hat):
    """
    Returns (next_w, next_m, next_v): the moment updates of Adam and
    next_w = w - step * next_m / (sqrt(next_v) + eps_hat), where step and
    eps_hat carry the bias correction (computed by xdl.optim.adam).
    """
    dtype = _float_dtype(("w", w), ("dw", dw), ("m", m), ("v", v))
    cp = _cupy()
    next_w, next_m, next_v = (cp.empty(w.shape, dtype=dtype) for _ in range(3))
    _launch("adam_update", dtype, w.size, w, dw, m, v, next_w, next_m, next_v,
            beta1, 1 - beta1, beta2, 1 - beta2, step, eps_hat, w.size)
    return next_w, next_m, next_v


# ---------------------------------------------------------------------------
# Softmax loss
# ---------------------------------------------------------------------------


def softmax_loss(x, y):
    """
    Softmax loss and its gradient in one kernel plus one reduction (the
    NumPy formula in xdl.layers takes about fifteen launches).

    Inputs:
    - x: (N, C) cupy array of scores; y: (N,) cupy integer labels in [0, C)
      (not checked here: callers check labels where they come from)

    Returns a tuple of:
    - loss: 0-d cupy array
    - dx: (N, C) gradient of the loss with respect to x
    """
    dtype = _float_dtype(("x", x))
    cp = _cupy()
    N, C = x.shape
    dx = cp.empty((N, C), dtype=dtype)
    row_loss = cp.empty(N, dtype=dtype)
    _launch("softmax_loss_rows", dtype, N, x, y.astype(np.int64, copy=False), dx, row_loss, N, C)
    return row_loss.sum(), dx
