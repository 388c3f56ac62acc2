"""Reference array kernels for convolution and max pooling, written with
array operations only (no loops over pixels).

They are the CPU fallback when the Cython extension is missing, and the
reference the compiled kernels are tested against. Written against ``xp`` so
they also run on cupy arrays (used in tests as a second GPU reference).

Column layout, shared by every backend: ``cols`` has shape
``(C*KH*KW, N*OH*OW)``; row ``(c*KH + kh)*KW + kw`` (the order of
``w.reshape(F, -1)``), column ``(n*OH + oh)*OW + ow``.
"""
import numpy as np

from xdl.backends import get_array_module

# Keep each im2col buffer of a chunked convolution under this many elements.
CHUNK_ELEMENTS = 1 << 23


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


def im2col(x, KH, KW, stride, pad, OH, OW):
    """
    Inputs:
    - x: (N, C, H, W); KH, KW: window; stride, pad; OH, OW: output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), contiguous
    """
    N, C = x.shape[:2]
    cols = _windows(_pad(x, pad), KH, KW, stride, OH, OW)
    return cols.reshape(C * KH * KW, N * OH * OW)


def col2im(cols, x_shape, KH, KW, stride, pad, OH, OW):
    """
    Adjoint of im2col: sums every column entry back into the input pixel it
    was read from.

    Returns:
    - dx: (N, C, H, W) with the dtype of cols
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    c6 = cols.reshape(C, KH, KW, N, OH, OW)
    dxp = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            dxp[:, :, kh:kh + stride * OH:stride, kw:kw + stride * OW:stride] += \
                c6[:, kh, kw].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W])


def _chunks(N, per_image):
    step = max(1, CHUNK_ELEMENTS // max(per_image, 1))
    return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


def conv_forward(x, w, b, stride, pad, OH, OW):
    """out[n, f] = sum over (c, kh, kw) of w[f] * window + b[f], by im2col + GEMM."""
    xp = get_array_module(x, w, b)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    out = xp.empty((N, F, OH, OW), dtype=x.dtype)
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        res = (w2 @ cols).reshape(F, n1 - n0, OH, OW)
        out[n0:n1] = res.transpose(1, 0, 2, 3)
    out += b.reshape(1, F, 1, 1)
    return out


def conv_backward(dout, x, w, stride, pad, OH, OW, compute_dx=True):
    """
    Gradients of conv_forward; im2col is recomputed chunk by chunk.

    Inputs:
    - dout: (N, F, OH, OW); x, w: the forward inputs
    - compute_dx: False skips dx (returned as None)

    Returns a tuple of (dx, dw, db).
    """
    xp = get_array_module(dout, x, w)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = w.reshape(F, -1)
    dx = xp.empty(x.shape, dtype=x.dtype) if compute_dx else None
    dw = xp.zeros((F, C * KH * KW), dtype=w.dtype)
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        d2 = dout[n0:n1].transpose(1, 0, 2, 3).reshape(F, -1)
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        dw += d2 @ cols.T
        if compute_dx:
            dx[n0:n1] = col2im(w2.T @ d2, (n1 - n0,) + x.shape[1:],
                               KH, KW, stride, pad, OH, OW)
    return dx, dw.reshape(w.shape), dout.sum(axis=(0, 2, 3))


def maxpool_forward(x, ph, pw, stride, OH, OW):
    """
    Returns:
    - out: (N, C, OH, OW) window maxima
    - argmax: (N, C, OH, OW) int32, row-major index kh*pw + kw of the first
      maximum inside each window (np.argmax's tie rule)
    """
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
    """Routes each dout entry to the input pixel its window's argmax names."""
    xp = get_array_module(dout, argmax)
    N, C, H, W = x_shape
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    zero = xp.zeros((), dtype=dout.dtype)
    for kh in range(ph):
        for kw in range(pw):
            contrib = xp.where(argmax == kh * pw + kw, dout, zero)
            dx[:, :, kh:kh + stride * OH:stride, kw:kw + stride * OW:stride] += contrib
    return dx
