"""The device interface written with array operations only: the reference
every other implementation is tested against, and the CPU fallback when
the compiled extension is missing.

Each operation of ``xdl.backends.OPERATIONS`` is a function here and a
function of ``cpu`` and of ``cuda``, with the same name, arguments and
results (xdl/DESIGN.md, "One device interface", says how they fit together).
Written against ``xp``, so they run on cupy arrays too: ``cuda`` uses the
chunked im2col + GEMM loops below (``gemm_conv_forward``,
``gemm_conv_backward``, ``chunks``), and these formulas for the update rules
on arrays its fused kernels do not take (float16, strided state).

Column layout, shared by every backend: ``cols`` has shape
``(C*KH*KW, N*OH*OW)``; row ``(c*KH + kh)*KW + kw`` (the order of
``w.reshape(F, -1)``), column ``(n*OH + oh)*OW + ow``.

Update rules: each updates its state arrays (velocity, cache, moments) in
place and returns ``(next_w, *state)``, the state being the arrays given;
``dw`` is never modified, nor ``w`` unless it is given as ``out`` (next_w is
then written over it: the update in place). Scalars arrive as the caller computed
them (``xdl.optim`` folds Adam's bias correction into ``step`` and
``eps_hat``).
"""
import numpy as np

from xdl.backends import _boundary, get_array_module

WHERE = "NumPy kernels"

# Keep each im2col buffer of a chunked convolution under this many elements.
CHUNK_ELEMENTS = 1 << 23


def chunks(N, per_image, limit):
    """[(n0, n1), ...] over N images, each chunk at most `limit` elements of per_image."""
    step = max(1, limit // max(per_image, 1))
    return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


# ---------------------------------------------------------------- im2col

def _windows(xpad, KH, KW, stride, OH, OW):
    """View of shape (C, KH, KW, N, OH, OW) over the padded input (no copy)."""
    xp = get_array_module(xpad)
    N, C, _, _ = xpad.shape
    sN, sC, sH, sW = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(C, KH, KW, N, OH, OW),
        strides=(sC, sH, sW, sN, sH * stride, sW * stride))


def _pad(x, pad):
    xp = get_array_module(x)
    if pad == 0:
        return xp.ascontiguousarray(x)
    return xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))


def _im2col(x, KH, KW, stride, pad, OH, OW):
    N, C = x.shape[:2]
    cols = _windows(_pad(x, pad), KH, KW, stride, OH, OW)
    return cols.reshape(C * KH * KW, N * OH * OW)


def _col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    c6 = cols.reshape(C, KH, KW, N, OH, OW)
    dxp = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            dxp[:, :, kh:kh + stride * OH:stride, kw:kw + stride * OW:stride] += \
                c6[:, kh, kw].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W])


def im2col(x, KH, KW, stride, pad, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W) float32/float64; KH, KW: window; stride, pad; OH, OW:
      output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), contiguous
    """
    _boundary.float_dtype((("x", x),), WHERE)
    _boundary.check_im2col(x, KH, KW, stride, pad, OH, OW)
    return _im2col(x, KH, KW, stride, pad, OH, OW)


def col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    """
    Adjoint of im2col: sums every column entry back into the input pixel it
    was read from.

    Inputs:
    - cols: (C*KH*KW, N*OH*OW); x_shape: (N, C, H, W); the rest as im2col

    Returns:
    - dx: (N, C, H, W) with the dtype of cols
    """
    _boundary.float_dtype((("cols", cols),), WHERE)
    _boundary.check_col2im(cols, x_shape, KH, KW, stride, pad, OH, OW)
    return _col2im(cols, tuple(x_shape), KH, KW, stride, pad, OH, OW)


# ----------------------------------------------------------- convolution
#
# The chunked im2col + GEMM loops are shared with the CUDA backend, which
# passes its own im2col, bias and col2im kernels and its own chunk size.

def gemm_conv_forward(x, w, b, stride, pad, OH, OW, im2col, bias_to_nchw, chunk_elements):
    """
    out = conv(x, w) + b, by im2col + one GEMM per chunk of images.

    Inputs:
    - x, w, b, stride, pad, OH, OW: as conv_forward (already checked)
    - im2col(x_chunk, KH, KW, stride, pad, OH, OW) -> cols
    - bias_to_nchw(res, b, out_chunk): writes res (F, nb*OH*OW) + b into
      out_chunk (nb, F, OH, OW)
    - chunk_elements: the largest cols buffer, in elements

    Returns:
    - out: (N, F, OH, OW)
    """
    xp = get_array_module(x, w, b)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    out = xp.empty((N, F, OH, OW), dtype=x.dtype)
    for n0, n1 in chunks(N, C * KH * KW * OH * OW, chunk_elements):
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        bias_to_nchw(w2 @ cols, b, out[n0:n1])
    return out


def gemm_conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx, im2col, col2im_into,
                       chunk_elements):
    """
    Gradients of gemm_conv_forward; im2col is recomputed chunk by chunk.

    Inputs:
    - dout, x, w, stride, pad, OH, OW, compute_dx: as conv_backward (checked)
    - im2col: as gemm_conv_forward
    - col2im_into(dcols, dx_chunk, KH, KW, stride, pad, OH, OW): writes the
      adjoint of im2col of dcols into dx_chunk (nb, C, H, W)
    - chunk_elements: the largest cols buffer, in elements

    Returns a tuple of (dx or None, dw, db).
    """
    xp = get_array_module(dout, x, w)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    dx = xp.empty(x.shape, dtype=x.dtype) if compute_dx else None
    dw = xp.zeros((F, C * KH * KW), dtype=w.dtype)
    db = xp.zeros(F, dtype=w.dtype)
    for n0, n1 in chunks(N, C * KH * KW * OH * OW, chunk_elements):
        # (nb, F, OH, OW) -> (F, nb*OH*OW), the column order of cols.
        d2 = xp.ascontiguousarray(dout[n0:n1].transpose(1, 0, 2, 3)).reshape(F, -1)
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        dw += d2 @ cols.T
        db += d2.sum(axis=1)
        if compute_dx:
            col2im_into(w2.T @ d2, dx[n0:n1], KH, KW, stride, pad, OH, OW)
    return dx, dw.reshape(w.shape), db


def _bias_to_nchw(res, b, out):
    F, nb = b.shape[0], out.shape[0]
    out[...] = res.reshape(F, nb, out.shape[2], out.shape[3]).transpose(1, 0, 2, 3)
    out += b.reshape(1, F, 1, 1)


def _col2im_into(dcols, dx, KH, KW, stride, pad, OH, OW):
    dx[...] = _col2im(dcols, dx.shape, KH, KW, stride, pad, OH, OW)


def conv_forward(x, w, b, stride, pad, OH, OW):
    """
    out[n, f] = sum over (c, kh, kw) of w[f] * window + b[f], by im2col + GEMM.

    Inputs:
    - x: (N, C, H, W); w: (F, C, KH, KW); b: (F,); one float32/float64 dtype
    - stride, pad; OH, OW: output size

    Returns:
    - out: (N, F, OH, OW)
    """
    _boundary.float_dtype((("x", x), ("w", w), ("b", b)), WHERE)
    _boundary.check_conv_forward(x, w, b, stride, pad, OH, OW)
    return gemm_conv_forward(x, w, b, stride, pad, OH, OW, _im2col, _bias_to_nchw,
                             CHUNK_ELEMENTS)


def conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=True):
    """
    Gradients of conv_forward.

    Inputs:
    - dout: (N, F, OH, OW); x, w: the forward inputs; one dtype
    - compute_dx: False skips dx (returned as None)

    Returns a tuple of (dx, dw, db).
    """
    _boundary.float_dtype((("dout", dout), ("x", x), ("w", w)), WHERE)
    _boundary.check_conv_backward(dout, x, w, stride, pad, OH, OW)
    return gemm_conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx, _im2col,
                              _col2im_into, CHUNK_ELEMENTS)


# ------------------------------------------------------------ max pooling

def maxpool_forward(x, ph, pw, stride, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W) float32/float64; ph, pw: window; stride; OH, OW:
      output size

    Returns:
    - out: (N, C, OH, OW) window maxima
    - argmax: (N, C, OH, OW) int32, row-major index kh*pw + kw of the first
      maximum inside each window (np.argmax's tie rule)
    """
    _boundary.float_dtype((("x", x),), WHERE)
    _boundary.check_pool_forward(x, ph, pw, stride, OH, OW)
    xp = get_array_module(x)
    N, C, H, W = x.shape
    if ph == pw == stride and H == ph * OH and W == pw * OW:
        # Non-overlapping windows that tile x: a reshape, no copy of windows.
        win = x.reshape(N, C, OH, ph, OW, pw).transpose(0, 1, 2, 4, 3, 5)
    else:
        sN, sC, sH, sW = x.strides
        win = xp.lib.stride_tricks.as_strided(
            x, shape=(N, C, OH, OW, ph, pw),
            strides=(sN, sC, sH * stride, sW * stride, sH, sW))
    win = win.reshape(N, C, OH, OW, ph * pw)
    argmax = win.argmax(axis=-1).astype(np.int32)
    out = xp.take_along_axis(win, argmax[..., None].astype(np.intp), axis=-1)[..., 0]
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW):
    """
    Routes each dout entry to the input pixel its window's argmax names.

    Inputs:
    - dout: (N, C, OH, OW); argmax: (N, C, OH, OW) from maxpool_forward;
      x_shape: (N, C, H, W)

    Returns:
    - dx: (N, C, H, W); overlapping windows add up
    """
    _boundary.float_dtype((("dout", dout),), WHERE)
    _boundary.check_pool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW)
    xp = get_array_module(dout, argmax)
    dx = xp.zeros(tuple(x_shape), dtype=dout.dtype)
    zero = xp.zeros((), dtype=dout.dtype)
    for kh in range(ph):
        for kw in range(pw):
            contrib = xp.where(argmax == kh * pw + kw, dout, zero)
            dx[:, :, kh:kh + stride * OH:stride, kw:kw + stride * OW:stride] += contrib
    return dx


# ------------------------------------- convolution + ReLU + max pooling

def relu_of_pooled(out, argmax):
    """
    The ReLU of max-pooled values, in place. ReLU and max commute
    (relu(maxpool(a)) == maxpool(relu(a)), the same first maximum getting
    the gradient), so the ReLU can run on the pooled values; where one is not
    > 0 it passes no gradient, recorded as argmax -1, which every
    maxpool_backward skips. NaN stays NaN (as np.maximum leaves it).

    Inputs:
    - out, argmax: from maxpool_forward

    Returns a tuple of (out, argmax), the arrays given.
    """
    argmax[~(out > 0)] = -1
    out[out <= 0] = 0
    return out, argmax


def conv_relu_pool_forward(x, w, b, stride, pad, OH, OW, ph, pw, pool_stride, POH, POW):
    """
    Max pooling of relu(conv(x, w) + b): conv_forward, maxpool_forward, then
    relu_of_pooled.

    Inputs:
    - x: (N, C, H, W); w: (F, C, KH, KW); b: (F,); one float32/float64 dtype
    - stride, pad; OH, OW: the convolution's output size
    - ph, pw: pooling window; pool_stride; POH, POW: the pooled size

    Returns a tuple of:
    - out: (N, F, POH, POW)
    - argmax: (N, F, POH, POW) int32, index kh*pw + kw of the first maximum
      of each window where out > 0, -1 where the ReLU passes no gradient
    """
    _boundary.float_dtype((("x", x), ("w", w), ("b", b)), WHERE)
    _boundary.check_conv_relu_pool_forward(x, w, b, stride, pad, OH, OW,
                                           ph, pw, pool_stride, POH, POW)
    out, argmax = maxpool_forward(conv_forward(x, w, b, stride, pad, OH, OW),
                                  ph, pw, pool_stride, POH, POW)
    return relu_of_pooled(out, argmax)


def conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW, ph, pw, pool_stride,
                            POH, POW, compute_dx=True):
    """
    Gradients of conv_relu_pool_forward: maxpool_backward through the argmax
    (which already carries the ReLU), then conv_backward.

    Inputs:
    - dout: (N, F, POH, POW); argmax: from conv_relu_pool_forward; x, w and
      the geometry: as conv_relu_pool_forward
    - compute_dx: False skips dx (returned as None)

    Returns a tuple of (dx, dw, db).
    """
    _boundary.float_dtype((("dout", dout), ("x", x), ("w", w)), WHERE)
    _boundary.check_conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW,
                                            ph, pw, pool_stride, POH, POW)
    dconv = maxpool_backward(dout, argmax, (x.shape[0], w.shape[0], OH, OW),
                             ph, pw, pool_stride, POH, POW)
    return conv_backward(dconv, x, w, stride, pad, OH, OW, compute_dx=compute_dx)


# ------------------------------------------------------ affine and loss

def matmul(a, b, c=None, beta=0.0):
    """
    Inputs:
    - a: (M, K); b: (K, N)
    - c: optional (M, N) array added as beta * c (BLAS's gemm with alpha 1;
      the affine layers fold the L2 gradient reg * w into dw this way); not
      modified

    Returns:
    - a @ b + beta * c, (M, N)
    """
    _boundary.check_matmul(a, b, c, beta)
    out = a @ b
    if c is not None and beta != 0:
        out += beta * c
    return out


def affine_backward(x, w, dout, reg=0.0, compute_dx=True, w_sumsq=False):
    """
    The matrix products of the affine layer's backward pass.

    Inputs:
    - x: (N, D) the layer's input, flattened; w: (D, M); dout: (N, M)
    - reg: L2 strength: dw includes reg * w, the gradient of
      0.5 * reg * sum(w**2)
    - compute_dx: False skips dx
    - w_sumsq: True also returns sum(w**2) (as sum_of_squares), for the L2
      loss; the compiled CPU kernel takes it in the pass that reads w

    Returns a tuple of:
    - dx: (N, D) dout @ w.T, or None without compute_dx
    - dw: (D, M) x.T @ dout + reg * w
    - with w_sumsq only: sum(w**2), a scalar of w's dtype (0-d on the GPU)
    """
    _boundary.check_affine_backward(x, w, dout, reg)
    return affine_backward_by_products(matmul, sum_of_squares, x, w, dout, reg, compute_dx,
                                       w_sumsq)


def affine_backward_by_products(matmul, sum_of_squares, x, w, dout, reg, compute_dx,
                                w_sumsq=False):
    """
    affine_backward (arguments already checked) as two products of the
    given device's matmul: dx = dout @ w.T, dw = x.T @ dout + reg * w, and
    with w_sumsq the device's sum_of_squares(w). The NumPy formula, the
    CUDA backend and the CPU's layers too wide for the compiled sweep use it.
    """
    dx = matmul(dout, w.T) if compute_dx else None
    dw = matmul(x.T, dout, w, reg)
    return (dx, dw, sum_of_squares(w)) if w_sumsq else (dx, dw)


def softmax_loss(x, y):
    """
    Softmax loss and its gradient, from the log-softmax shifted by each
    row's max (finite for any finite scores).

    Inputs:
    - x: (N, C) scores; y: (N,) integer labels in [0, C) (checked by the
      caller: labels are checked where they come from)

    Returns a tuple of:
    - loss: scalar
    - dx: (N, C) gradient of the loss with respect to x
    """
    _boundary.check_floating("x", x)
    _boundary.check_scores(x, y)
    xp = get_array_module(x, y)
    N = x.shape[0]
    rows = xp.arange(N)
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[rows, y].sum() / N
    dx = xp.exp(log_probs)
    dx[rows, y] -= 1
    dx /= N
    return loss, dx


# ------------------------------------------------------------ update rules

def _check_rule(w, dw, out, **state):
    _boundary.check_floating("w", w)
    _boundary.check_same_shape(("w", w), ("dw", dw), *state.items())
    _boundary.check_out(out, w, ("dw", dw), *state.items())


def _into(out, next_w):
    """next_w, or out holding next_w's values when out is given."""
    if out is None:
        return next_w
    out[...] = next_w
    return out


# Every rule takes out: None for a new next_w, or an array of w's shape and
# dtype to write it into, w itself for the update in place
# (_boundary.check_out says what else out may be).

def sgd(w, dw, lr, out=None):
    """
    Returns:
    - next_w: w - lr * dw (in out when given)
    """
    _check_rule(w, dw, out)
    return _into(out, w - lr * dw)


def sgd_momentum(w, dw, v, lr, mu, out=None):
    """
    Returns a tuple of:
    - next_w: w + v, v being the updated velocity (in out when given)
    - v: the velocity given, updated in place to mu * v - lr * dw
    """
    _check_rule(w, dw, out, velocity=v)
    v *= mu
    v -= lr * dw
    return _into(out, w + v), v


def rmsprop(w, dw, cache, lr, decay, eps, out=None):
    """
    Returns a tuple of:
    - next_w: w - lr * dw / (sqrt(cache) + eps) with the updated cache (in
      out when given)
    - cache: the cache given, updated in place to
      decay * cache + (1 - decay) * dw**2
    """
    _check_rule(w, dw, out, cache=cache)
    xp = get_array_module(w, dw, cache)
    tmp = dw * dw  # the one new buffer of the step; it becomes next_w
    tmp *= 1 - decay
    cache *= decay
    cache += tmp
    xp.sqrt(cache, out=tmp)
    tmp += eps
    xp.divide(dw, tmp, out=tmp)
    tmp *= -lr
    tmp += w
    return _into(out, tmp), cache


def _adam_moments(dw, m, v, beta1, beta2):
    """m, v updated in place; returns sqrt(v) in a new buffer."""
    xp = get_array_module(dw, m, v)
    tmp = (1 - beta1) * dw
    m *= beta1
    m += tmp
    xp.multiply(dw, dw, out=tmp)
    tmp *= 1 - beta2
    v *= beta2
    v += tmp
    xp.sqrt(v, out=tmp)
    return tmp


def adam(w, dw, m, v, beta1, beta2, step, eps_hat, out=None):
    """
    Adam with its bias correction folded into step and eps_hat (see
    xdl.optim.adam).

    Returns a tuple of:
    - next_w: w - step * m / (sqrt(v) + eps_hat) with the updated moments
      (in out when given)
    - m: the array given, updated in place to beta1 * m + (1 - beta1) * dw
    - v: the array given, updated in place to beta2 * v + (1 - beta2) * dw**2
    """
    _check_rule(w, dw, out, m=m, v=v)
    xp = get_array_module(w, dw, m, v)
    tmp = _adam_moments(dw, m, v, beta1, beta2)  # becomes next_w
    tmp += eps_hat
    xp.divide(m, tmp, out=tmp)
    tmp *= -step
    tmp += w
    return _into(out, tmp), m, v


def adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out=None):
    """
    AdamW: Adam with decoupled weight decay (Loshchilov and Hutter), as
    torch.optim.AdamW: the weights shrink by shrink = 1 - lr * weight_decay
    before the Adam step, so the decay never enters the moments.

    Returns a tuple of:
    - next_w: shrink * w - step * m / (sqrt(v) + eps_hat), m and v updated
      (in out when given)
    - m, v: the arrays given, updated in place as in adam
    """
    _check_rule(w, dw, out, m=m, v=v)
    xp = get_array_module(w, dw, m, v)
    tmp = _adam_moments(dw, m, v, beta1, beta2)
    tmp += eps_hat
    xp.divide(m, tmp, out=tmp)
    tmp *= -step
    next_w = w * shrink
    next_w += tmp
    return _into(out, next_w), m, v


class _StepOnExit:
    """The context manager of adamw_alongside here: the step runs when the block ends."""

    def __init__(self, step):
        self.step = step

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        self.step()  # even when the block raised: the step is complete on exit
        return False


def adamw_alongside(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out):
    """
    adamw (adam with shrink 1, the same bits) for a block of other work: a
    context manager; when its block ends, the step is complete (next_w in
    out, which may be w itself; m and v updated). The block must not read
    or write w, dw, m, v or out. The CPU kernels run the step beside the
    block's first kernel call, on the same threads at the same time (a
    memory-bound pass beside arithmetic: the CNN's Adam step on W2 beside
    its convolution's backward pass); this formula and the GPU run it when
    the block ends.
    """
    if out is None:
        raise TypeError("adamw_alongside needs out: the array next_w goes into (w itself "
                        "for the update in place)")
    _check_rule(w, dw, out, m=m, v=v)
    return _StepOnExit(lambda: adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out))


# ---------------------------------------------------- L2 regularization

def sum_of_squares(x):
    """
    Returns:
    - the sum of the squares of x's elements, a scalar of x's dtype (0-d on
      the GPU)
    """
    _boundary.check_floating("x", x)
    flat = x.ravel()
    return get_array_module(x).vdot(flat, flat)


def relu_backward(dout, x):
    """
    The ReLU's backward pass.

    Inputs:
    - dout: upstream gradient; x: the ReLU's input, of dout's shape

    Returns:
    - dx: dout where x > 0, else 0 (also where dout or x is NaN there), of
      dout's dtype (any dtype: the fused kernels take float32 and float64)
    """
    _boundary.check_same_shape(("dout", dout), ("x", x))
    xp = get_array_module(dout, x)
    return xp.where(x > 0, dout, xp.zeros((), dtype=dout.dtype))


def axpy(alpha, x, y):
    """
    y += alpha * x, in place.

    Returns:
    - y
    """
    _boundary.check_floating("y", y)
    _boundary.check_same_shape(("x", x), ("y", y))
    y += alpha * x
    return y
