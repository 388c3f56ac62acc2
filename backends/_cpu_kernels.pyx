# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled CPU kernels: im2col, col2im (a gather), max pooling with argmax.

Same functions and layouts as ``numpy_kernels`` (see there). Loops release
the GIL and run in parallel with OpenMP (``prange``) where the compiler has
it; the GEMMs of the convolution go through NumPy's BLAS.
"""
import numpy as np
from cython.parallel cimport prange

ctypedef fused floating:
    float
    double

# Keep each im2col buffer of a chunked convolution under this many elements,
# so that it stays in cache between im2col and the GEMM that reads it.
CHUNK_ELEMENTS = 1 << 18


cdef void _im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
                  int KH, int KW, int stride, int pad, int OH, int OW) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t rows = C * KH * KW
    cdef Py_ssize_t row, c, kh, kw, n, oh, ow, ih, iw, col
    for row in prange(rows, schedule="static"):
        c = row // (KH * KW)
        kh = (row // KW) % KH
        kw = row % KW
        col = 0
        for n in range(N):
            for oh in range(OH):
                ih = oh * stride - pad + kh
                if ih < 0 or ih >= H:
                    for ow in range(OW):
                        cols[row, col + ow] = 0
                else:
                    for ow in range(OW):
                        iw = ow * stride - pad + kw
                        if iw < 0 or iw >= W:
                            cols[row, col + ow] = 0
                        else:
                            cols[row, col + ow] = x[n, c, ih, iw]
                col = col + OW


cdef void _col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] dx,
                  int KH, int KW, int stride, int pad, int OH, int OW) noexcept nogil:
    # Gather: each input pixel sums the column entries that read it.
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t plane, n, c, h, w, kh, kw, oh, ow, hp, wp
    cdef floating acc
    for plane in prange(N * C, schedule="static"):
        n = plane // C
        c = plane % C
        for h in range(H):
            hp = h + pad
            for w in range(W):
                wp = w + pad
                acc = 0
                for kh in range(KH):
                    if hp < kh or (hp - kh) % stride != 0:
                        continue
                    oh = (hp - kh) // stride
                    if oh >= OH:
                        continue
                    for kw in range(KW):
                        if wp < kw or (wp - kw) % stride != 0:
                            continue
                        ow = (wp - kw) // stride
                        if ow >= OW:
                            continue
                        acc = acc + cols[(c * KH + kh) * KW + kw, (n * OH + oh) * OW + ow]
                dx[n, c, h, w] = acc


cdef void _maxpool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                           int[:, :, :, ::1] argmax, int ph, int pw, int stride) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow, i, j
    cdef int best_k
    cdef floating best, v
    for plane in prange(N * C, schedule="static"):
        n = plane // C
        c = plane % C
        for oh in range(OH):
            for ow in range(OW):
                best = x[n, c, oh * stride, ow * stride]
                best_k = 0
                for i in range(ph):
                    for j in range(pw):
                        v = x[n, c, oh * stride + i, ow * stride + j]
                        if v > best:  # strict: the first maximum wins ties
                            best = v
                            best_k = i * pw + j
                out[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_k


cdef void _maxpool_backward(const floating[:, :, :, ::1] dout, const int[:, :, :, ::1] argmax,
                            floating[:, :, :, ::1] dx, int pw, int stride) noexcept nogil:
    # One thread per (n, c) plane: overlapping windows add into the same
    # pixel only from within one plane, so there are no races.
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t plane, n, c, oh, ow
    cdef int k
    for plane in prange(N * C, schedule="static"):
        n = plane // C
        c = plane % C
        for oh in range(OH):
            for ow in range(OW):
                k = argmax[n, c, oh, ow]
                dx[n, c, oh * stride + k // pw, ow * stride + k % pw] += dout[n, c, oh, ow]


def _floating(a, name):
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError("%s must be float32 or float64, got %s" % (name, a.dtype))
    return np.ascontiguousarray(a)


def im2col(x, int KH, int KW, int stride, int pad, int OH, int OW):
    """(N, C, H, W) -> cols (C*KH*KW, N*OH*OW); see numpy_kernels.im2col."""
    x = _floating(x, "x")
    N, C = x.shape[0], x.shape[1]
    cols = np.empty((C * KH * KW, N * OH * OW), dtype=x.dtype)
    if x.dtype == np.float32:
        _im2col[float](x, cols, KH, KW, stride, pad, OH, OW)
    else:
        _im2col[double](x, cols, KH, KW, stride, pad, OH, OW)
    return cols


def col2im(cols, x_shape, int KH, int KW, int stride, int pad, int OH, int OW):
    """cols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W); the adjoint of im2col."""
    cols = _floating(cols, "cols")
    dx = np.empty(x_shape, dtype=cols.dtype)
    if cols.dtype == np.float32:
        _col2im[float](cols, dx, KH, KW, stride, pad, OH, OW)
    else:
        _col2im[double](cols, dx, KH, KW, stride, pad, OH, OW)
    return dx


def _chunks(N, per_image):
    step = max(1, CHUNK_ELEMENTS // max(per_image, 1))
    return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


def conv_forward(x, w, b, int stride, int pad, int OH, int OW):
    """Convolution by chunks of images: im2col into a cache-sized buffer, then one GEMM."""
    x = _floating(x, "x")
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = np.ascontiguousarray(w.reshape(F, -1))
    out = np.empty((N, F, OH, OW), dtype=x.dtype)
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        if n1 - n0 == 1:
            np.matmul(w2, cols, out=out[n0].reshape(F, OH * OW))
        else:
            res = (w2 @ cols).reshape(F, n1 - n0, OH, OW)
            out[n0:n1] = res.transpose(1, 0, 2, 3)
    out += b.reshape(1, F, 1, 1)
    return out


def conv_backward(dout, x, w, int stride, int pad, int OH, int OW):
    """Returns (dx, dw, db); im2col is recomputed chunk by chunk."""
    x = _floating(x, "x")
    dout = _floating(dout, "dout")
    N = x.shape[0]
    F, C, KH, KW = w.shape
    w2 = np.ascontiguousarray(w.reshape(F, -1))
    dx = np.empty_like(x)
    dw = np.zeros((F, C * KH * KW), dtype=w.dtype)
    for n0, n1 in _chunks(N, C * KH * KW * OH * OW):
        if n1 - n0 == 1:
            d2 = dout[n0].reshape(F, OH * OW)
        else:
            d2 = dout[n0:n1].transpose(1, 0, 2, 3).reshape(F, -1)
        cols = im2col(x[n0:n1], KH, KW, stride, pad, OH, OW)
        dw += d2 @ cols.T
        dx[n0:n1] = col2im(w2.T @ d2, (n1 - n0,) + x.shape[1:], KH, KW, stride, pad, OH, OW)
    return dx, dw.reshape(w.shape), dout.sum(axis=(0, 2, 3))


def maxpool_forward(x, int ph, int pw, int stride, int OH, int OW):
    """Returns (out, argmax int32 window index kh*pw + kw of the first maximum)."""
    x = _floating(x, "x")
    N, C = x.shape[0], x.shape[1]
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32)
    if x.dtype == np.float32:
        _maxpool_forward[float](x, out, argmax, ph, pw, stride)
    else:
        _maxpool_forward[double](x, out, argmax, ph, pw, stride)
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, int ph, int pw, int stride, int OH, int OW):
    """Routes each dout entry to the input pixel its window's argmax names."""
    dout = _floating(dout, "dout")
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    dx = np.zeros(x_shape, dtype=dout.dtype)
    if dout.dtype == np.float32:
        _maxpool_backward[float](dout, argmax, dx, pw, stride)
    else:
        _maxpool_backward[double](dout, argmax, dx, pw, stride)
    return dx
