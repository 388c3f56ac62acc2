# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled CPU kernels: convolution (im2col + GEMM), col2im, max pooling,
fused elementwise kernels (update rules, sum of squares, axpy) and a tiled
matrix product for the affine layers.

Same functions and layouts as ``numpy_kernels`` (see there). How the work is
done, and why:

- The loops are C over a fused float/double type (each array's dtype and
  layout are checked through a typed memoryview before its pointer is
  taken) and run without the GIL on a small team of threads: the calling
  thread plus ``get_num_threads() - 1`` workers. Each thread takes whole images
  (convolution) or bands of (n, c) planes (pooling) from a shared atomic
  counter, so a thread that the OS delays does not hold the others up.
- Every output element is written by exactly one thread, in a fixed order,
  so results do not depend on scheduling: repeated calls are bit-identical.
- The team waits passively (blocked on a queue) between calls. OpenMP's
  threads busy-wait for a while after each parallel region, and numpy's
  OpenBLAS threads do the same after each GEMM; on two cores the two pools
  then steal each other's cores, which made a ThreeLayerConvNet training
  step (convolution here, affine layers in numpy) much slower.
- Convolution never builds the full column matrix. A thread im2cols one
  image into its own slice of a reused workspace (it stays in the core's
  cache) and multiplies it right away with BLAS (scipy's ``cython_blas``),
  writing the image's output in NCHW order: no transpose after the GEMM.
- The GEMMs are issued in tiles small enough that OpenBLAS runs each one on
  the calling thread (it only starts its own threads for m*n*k >= 2**19), so
  the team is the only pool at work.
- The backward pass recomputes im2col per image, reuses that buffer for the
  column gradient, and folds it back into dx (col2im) while it is hot. The
  weight and bias gradients are summed per image and then reduced in image
  order, so they are deterministic too.
- Max-pool backward is a direct pass over the argmax; windows that tile the
  input exactly write every pixel once (no separate zero-fill pass).
- The affine layers' large products (matmul) are split in output tiles
  over the team, each tile's BLAS calls below that threshold too: numpy's
  own GEMM would wake its OpenBLAS threads, which then spin next to the
  team. Measured on a ThreeLayerConvNet float32 training step here, this
  contention made the convolutions about 1.7 times slower.
- The update rules (sgd, sgd_momentum, rmsprop, adam) make one pass over w,
  dw and the state, split in chunks over the team, where the NumPy formulas
  make about a dozen single-threaded passes and allocate temporaries. They
  do the same floating-point operations in the same order, in the array's
  dtype, so results match the formulas to rounding (bit for bit where the
  compiler does not contract a*b + c into a fused multiply-add).
"""
import os
import threading
from queue import SimpleQueue

import numpy as np

from xdl.backends import _boundary

from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #include <intrin.h>
    static long long xdl_fetch_add(long long *p) { return _InterlockedExchangeAdd64(p, 1); }
    #else
    static long long xdl_fetch_add(long long *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    #endif
    """
    long long xdl_fetch_add(long long* p) noexcept nogil

cdef extern from *:
    """
    /* Square roots of a block, in place. Compilers vectorize a sqrtf() loop
       only under -fno-math-errno (sqrtf of a negative number sets errno),
       so the vector loops are written with intrinsics; every instruction
       used is correctly rounded, like sqrtf(). */
    #include <math.h>
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    static void xdl_sqrt_block_f(float *x, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
        for (; i < n; i++) x[i] = sqrtf(x[i]);
    }
    static void xdl_sqrt_block_d(double *x, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 2 <= n; i += 2) _mm_storeu_pd(x + i, _mm_sqrt_pd(_mm_loadu_pd(x + i)));
        for (; i < n; i++) x[i] = sqrt(x[i]);
    }
    #elif defined(__aarch64__) && defined(__ARM_NEON)
    #include <arm_neon.h>
    static void xdl_sqrt_block_f(float *x, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vsqrtq_f32(vld1q_f32(x + i)));
        for (; i < n; i++) x[i] = sqrtf(x[i]);
    }
    static void xdl_sqrt_block_d(double *x, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 2 <= n; i += 2) vst1q_f64(x + i, vsqrtq_f64(vld1q_f64(x + i)));
        for (; i < n; i++) x[i] = sqrt(x[i]);
    }
    #else
    static void xdl_sqrt_block_f(float *x, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) x[i] = sqrtf(x[i]);
    }
    static void xdl_sqrt_block_d(double *x, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) x[i] = sqrt(x[i]);
    }
    #endif
    """
    void xdl_sqrt_block_f(float* x, Py_ssize_t n) noexcept nogil
    void xdl_sqrt_block_d(double* x, Py_ssize_t n) noexcept nogil

ctypedef fused floating:
    float
    double

# OpenBLAS multithreads a GEMM only when m*n*k >= 2**19 (65536 * its
# GEMM_MULTITHREAD_THRESHOLD of 4, times 2 threads); stay below that.
GEMM_TILE_LIMIT = (1 << 19) - 1

# Per-image gradient partials (dw, db) are kept for at most this many elements
# at a time before they are reduced into dw.
PARTIAL_ELEMENTS = 1 << 21

# Pooling hands out bands of planes of about this many input pixels.
POOL_BAND_PIXELS = 4096

# Elementwise kernels hand out chunks of this many elements. Timed with Adam
# on 4M elements here: chunks of 4096 were 1.2 (float64) to 1.5 (float32)
# times slower than these, larger ones no faster. An array of one chunk or
# less stays on the calling thread.
ELEMENT_CHUNK = 1 << 16


# ------------------------------------------------------------------ threads

def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_num_threads = max(1, _usable_cpus())


def set_num_threads(int n):
    """Set how many threads the kernels use (default: the CPUs this process may use)."""
    global _num_threads
    if n < 1:
        raise ValueError("number of threads must be >= 1, got %d" % n)
    _num_threads = n


def get_num_threads():
    """Return how many threads the kernels use."""
    return _num_threads


class _Team:
    """
    Worker threads that run a _Work together with the calling thread. Workers
    block on a queue between calls (no spinning). A call made while another
    Python thread is using the team runs on its calling thread alone.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inboxes = []
        self._done = SimpleQueue()

    def _serve(self, tid, inbox):
        while True:
            work = inbox.get()
            try:
                work.run(tid)
            except BaseException as exc:  # keep the caller from waiting forever
                self._done.put(exc)
            else:
                self._done.put(None)

    def run(self, work, int nt):
        if nt <= 1 or not self._lock.acquire(blocking=False):
            work.run(0)
            return
        results = []
        sent = 0
        interrupted = None
        try:
            while len(self._inboxes) < nt - 1:
                inbox = SimpleQueue()
                threading.Thread(target=self._serve, args=(len(self._inboxes) + 1, inbox),
                                 name="xdl-cpu-kernels", daemon=True).start()
                self._inboxes.append(inbox)
            for inbox in self._inboxes[:nt - 1]:
                inbox.put(work)
                sent += 1
            work.run(0)
        finally:
            # Collect every worker's answer even if interrupted (Ctrl-C): no
            # worker may still be writing, nor leave a stale answer behind.
            while len(results) < sent:
                try:
                    results.append(self._done.get())
                except KeyboardInterrupt as exc:
                    interrupted = exc
            self._lock.release()
        if interrupted is not None:
            raise interrupted
        for exc in results:
            if exc is not None:
                raise exc


_team = _Team()


def _new_team_after_fork():
    # A forked child has none of the parent's worker threads.
    global _team
    _team = _Team()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_team_after_fork)


# ---------------------------------------------------------------- workspace

_workspace_cache = {}
_WORKSPACE_SLOTS = 8


def _take_workspace(n, dtype):
    """
    A 1-D scratch array of n elements, reused across calls so that its pages
    are already mapped. The caller owns it until _give_back (a concurrent call
    from another Python thread gets a fresh one).
    """
    key = (int(n), np.dtype(dtype).char)
    buf = _workspace_cache.pop(key, None)
    if buf is None:
        buf = np.empty(key[0], dtype=dtype)
    return buf


def _give_back(buf):
    key = (buf.shape[0], buf.dtype.char)
    if key not in _workspace_cache and len(_workspace_cache) >= _WORKSPACE_SLOTS:
        _workspace_cache.pop(next(iter(_workspace_cache)))
    _workspace_cache[key] = buf


def clear_workspace():
    """Free the cached scratch buffers."""
    _workspace_cache.clear()


# ------------------------------------------------------------ small helpers

cdef inline void _gemm(char ta, char tb, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    # Column-major BLAS. A row-major (r, s) array with row stride ld is the
    # column-major (s, r) array with leading dimension ld.
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb,
              &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb,
              &beta, c, &ldc)


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _valid_range(int size, int k, int stride, int pad, int out,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Output positions o with 0 <= o*stride - pad + k < size are [lo, hi).
    cdef Py_ssize_t a = 0, b = 0
    if pad > k:
        a = _ceil_div(pad - k, stride)
    if size + pad - k > 0:
        b = _ceil_div(size + pad - k, stride)
    if b > out:
        b = out
    if a > out:
        a = out
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef void _im2col_image(const floating* x, floating* cols, Py_ssize_t ld,
                        int C, int H, int W, int KH, int KW, int stride, int pad,
                        int OH, int OW) noexcept nogil:
    # One image x (C, H, W) -> cols[row, oh*OW + ow], row = (c*KH + kh)*KW + kw,
    # rows ld elements apart. Zero padding is written, never read.
    cdef Py_ssize_t c, kh, kw, oh, j, ih, iw0
    cdef Py_ssize_t lo = 0, hi = 0
    cdef floating* dst
    cdef floating* d
    cdef const floating* src
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                dst = cols + ((c * KH + kh) * KW + kw) * ld
                _valid_range(W, kw, stride, pad, OW, &lo, &hi)
                iw0 = lo * stride - pad + kw
                for oh in range(OH):
                    d = dst + oh * OW
                    ih = oh * stride - pad + kh
                    # Plain loops, not memcpy/memset: rows are short (OW
                    # elements), where a libc call costs more than the copy.
                    if ih < 0 or ih >= H or hi == lo:
                        for j in range(OW):
                            d[j] = 0
                        continue
                    for j in range(lo):
                        d[j] = 0
                    src = x + (c * H + ih) * W + iw0
                    if stride == 1:
                        for j in range(hi - lo):
                            d[lo + j] = src[j]
                    else:
                        for j in range(hi - lo):
                            d[lo + j] = src[j * stride]
                    for j in range(hi, OW):
                        d[j] = 0


cdef void _col2im_image(const floating* cols, Py_ssize_t ld, floating* dx,
                        int C, int H, int W, int KH, int KW, int stride, int pad,
                        int OH, int OW) noexcept nogil:
    # Adjoint of _im2col_image: dx (C, H, W) = sum of the column entries read
    # from each pixel. The image belongs to one thread, which adds in a fixed
    # order: no races, deterministic.
    cdef Py_ssize_t c, kh, kw, oh, j, ih, iw0
    cdef Py_ssize_t lo = 0, hi = 0
    cdef const floating* srcrow
    cdef const floating* s
    cdef floating* d
    memset(dx, 0, <size_t>C * H * W * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                srcrow = cols + ((c * KH + kh) * KW + kw) * ld
                _valid_range(W, kw, stride, pad, OW, &lo, &hi)
                if hi == lo:
                    continue
                iw0 = lo * stride - pad + kw
                for oh in range(OH):
                    ih = oh * stride - pad + kh
                    if ih < 0 or ih >= H:
                        continue
                    s = srcrow + oh * OW + lo
                    d = dx + (c * H + ih) * W + iw0
                    if stride == 1:
                        for j in range(hi - lo):
                            d[j] += s[j]
                    else:
                        for j in range(hi - lo):
                            d[j * stride] += s[j]


# ------------------------------------------------------------ convolution

cdef struct ConvShape:
    int N, C, H, W, F, KH, KW, stride, pad, OH, OW
    int K, P          # rows of cols (C*KH*KW) and output pixels per image (OH*OW)
    int fb, pb        # forward / dx GEMM tile: fb filters x pb pixels
    int wk, wf, wp    # dw GEMM tile: wk rows of cols x wf filters, over wp pixels


cdef ConvShape _conv_shape(x_shape, w_shape, int stride, int pad, int OH, int OW):
    cdef ConvShape s
    s.N, s.C, s.H, s.W = x_shape
    s.F, _, s.KH, s.KW = w_shape
    s.stride, s.pad, s.OH, s.OW = stride, pad, OH, OW
    s.K = s.C * s.KH * s.KW
    s.P = OH * OW
    s.fb, s.pb = _tiles(s.F, s.K, s.P)
    s.wk, s.wf, s.wp = _dw_tiles(s.F, s.K, s.P)
    return s


def _tiles(int F, int K, int P):
    """
    Tile (fb filters, pb pixels) of the GEMMs out = w @ cols and
    dcols = w^T @ dout, with fb*K*pb <= GEMM_TILE_LIMIT (so each BLAS call
    stays on its thread): whole filter banks first, then as many pixels as
    fit, in multiples of 16 (the SIMD width).
    """
    limit = GEMM_TILE_LIMIT
    if F <= 0 or K <= 0 or P <= 0:
        return 1, 1
    fb = F if F * K * min(P, 64) <= limit else max(1, limit // (K * min(P, 64)))
    pb = max(1, limit // (fb * K))
    if pb >= P:
        return fb, P
    if pb >= 16:
        pb -= pb % 16
    return fb, pb


def _dw_tiles(int F, int K, int P):
    """
    Tile (wk rows, wf filters, wp pixels) of dw^T = cols @ dout^T, with
    wk*wf*wp <= GEMM_TILE_LIMIT: long sums over the pixels (each call reads
    and writes its block of dw once), then all filters, then rows.
    """
    limit = GEMM_TILE_LIMIT
    if F <= 0 or K <= 0 or P <= 0:
        return 1, 1, 1
    wp = max(1, min(P, limit // 64))
    wf = max(1, min(F, limit // (wp * 8)))
    wk = max(1, min(K, limit // (wp * wf)))
    return wk, wf, wp


cdef void _conv_forward_image(const floating* x, const floating* w, const floating* b,
                              floating* out, floating* cols, ConvShape s) noexcept nogil:
    # out (F, P) = w (F, K) @ cols (K, P) + b, by tiles of fb x pb.
    cdef Py_ssize_t f0, p0, f, p
    cdef int fn, pn
    cdef floating bias
    cdef floating* o
    _im2col_image(x, cols, s.P, s.C, s.H, s.W, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW)
    f0 = 0
    while f0 < s.F:
        fn = min(s.fb, s.F - f0)
        p0 = 0
        while p0 < s.P:
            pn = min(s.pb, s.P - p0)
            # column-major: out^T (pn, fn) = cols^T (pn, K) @ w^T (K, fn)
            _gemm(c'N', c'N', pn, fn, s.K, <floating>1, cols + p0, s.P,
                  w + f0 * s.K, s.K, <floating>0, out + f0 * s.P + p0, s.P)
            p0 += pn
        for f in range(f0, f0 + fn):
            bias = b[f]
            o = out + f * s.P
            for p in range(s.P):
                o[p] += bias
        f0 += fn


cdef void _conv_backward_image(const floating* x, const floating* w, const floating* dout,
                               floating* dx, floating* dw, floating* db, floating* cols,
                               bint compute_dx, ConvShape s) noexcept nogil:
    # dw (F, K) = dout (F, P) @ cols^T; db (F,) = row sums of dout;
    # dcols (K, P) = w^T @ dout, folded back into dx (C, H, W).
    cdef Py_ssize_t f0, p0, k0, f, p
    cdef int fn, pn, kn
    cdef floating acc
    cdef const floating* d
    _im2col_image(x, cols, s.P, s.C, s.H, s.W, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW)
    k0 = 0
    while k0 < s.K:
        kn = min(s.wk, s.K - k0)
        f0 = 0
        while f0 < s.F:
            fn = min(s.wf, s.F - f0)
            p0 = 0
            while p0 < s.P:
                pn = min(s.wp, s.P - p0)
                # column-major: dw^T (kn, fn) (+)= cols (kn, pn) @ dout^T (pn, fn)
                _gemm(c'T', c'N', kn, fn, pn, <floating>1, cols + k0 * s.P + p0, s.P,
                      dout + f0 * s.P + p0, s.P, <floating>(p0 > 0),
                      dw + f0 * s.K + k0, s.K)
                p0 += pn
            f0 += fn
        k0 += kn
    for f in range(s.F):
        d = dout + f * s.P
        acc = 0
        for p in range(s.P):
            acc = acc + d[p]
        db[f] = acc
    if not compute_dx:
        return
    # cols is no longer needed: it receives the column gradient.
    p0 = 0
    while p0 < s.P:
        pn = min(s.pb, s.P - p0)
        f0 = 0
        while f0 < s.F:
            fn = min(s.fb, s.F - f0)
            # column-major: dcols^T (pn, K) (+)= dout^T (pn, fn) @ w (fn, K)
            _gemm(c'N', c'T', pn, s.K, fn, <floating>1, dout + f0 * s.P + p0, s.P,
                  w + f0 * s.K, s.K, <floating>(f0 > 0), cols + p0, s.P)
            f0 += fn
        p0 += pn
    _col2im_image(cols, s.P, dx, s.C, s.H, s.W, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW)


cdef void _pool_forward_plane(const floating* x, floating* out, int* am, int H, int W,
                              int ph, int pw, int stride, int OH, int OW) noexcept nogil:
    # out[oh, ow] = max of the window; am = kh*pw + kw of its first maximum.
    cdef Py_ssize_t oh, ow, i, j
    cdef int k
    cdef floating best, v
    cdef const floating* r0
    cdef const floating* r1
    if ph == 2 and pw == 2 and stride == 2:
        for oh in range(OH):
            r0 = x + 2 * oh * W
            r1 = r0 + W
            for ow in range(OW):
                # Written so that GCC turns the float case into SIMD selects.
                best = r0[2 * ow]
                k = 0
                v = r0[2 * ow + 1]
                if v > best:  # strict: the first maximum keeps ties
                    best = v
                    k = 1
                v = r1[2 * ow]
                if v > best:
                    best = v
                    k = 2
                v = r1[2 * ow + 1]
                if v > best:
                    best = v
                    k = 3
                out[oh * OW + ow] = best
                am[oh * OW + ow] = k
        return
    for oh in range(OH):
        for ow in range(OW):
            r0 = x + oh * stride * W + ow * stride
            best = r0[0]
            k = 0
            for i in range(ph):
                for j in range(pw):
                    v = r0[i * W + j]
                    if v > best:  # strict: the first maximum keeps ties
                        best = v
                        k = i * pw + j
            out[oh * OW + ow] = best
            am[oh * OW + ow] = k


cdef void _pool_backward_plane(const floating* dout, const int* am, floating* dx, int H, int W,
                               int ph, int pw, int stride, int OH, int OW) noexcept nogil:
    cdef Py_ssize_t oh, ow, j, o
    cdef int k
    cdef floating* r0
    if ph == stride and pw == stride and H == ph * OH and W == pw * OW:
        # Windows tile the plane: zero one band of ph rows while it is in L1,
        # then store each gradient at its argmax (no data-dependent branches).
        for oh in range(OH):
            r0 = dx + oh * ph * W
            for j in range(ph * W):
                r0[j] = 0
            for ow in range(OW):
                o = oh * OW + ow
                k = am[o]
                r0[(k // pw) * W + ow * pw + k % pw] = dout[o]
        return
    # Overlapping windows or uncovered pixels: zero, then add.
    memset(dx, 0, <size_t>H * W * sizeof(floating))
    for oh in range(OH):
        for ow in range(OW):
            o = oh * OW + ow
            k = am[o]
            dx[(oh * stride + k // pw) * W + ow * stride + k % pw] += dout[o]


# ------------------------------------------------------ elementwise kernels
#
# Each function does, per element, the operations of the NumPy formula in
# xdl.optim (or xdl.classifiers.base) in the same order, with the scalars
# rounded to the array's dtype first (as NumPy does with a Python float
# against a float32 array).

cdef enum:
    # Update rules with a square root work in blocks of this many elements:
    # one loop updates the state and copies the denominators' radicands to a
    # stack buffer, the square roots are taken there (vectorized), and a
    # second loop finishes next_w. All of it stays in L1.
    SQRT_BLOCK = 256


cdef inline void _sqrt_block(floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        xdl_sqrt_block_f(x, n)
    else:
        xdl_sqrt_block_d(x, n)


cdef void _sgd_chunk(const floating* w, const floating* dw, floating* out, Py_ssize_t n,
                     const double* c) noexcept nogil:
    # out = w - lr * dw; c: lr
    cdef floating lr = <floating>c[0]
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = w[i] - lr * dw[i]


cdef void _sgd_momentum_chunk(const floating* w, const floating* dw, floating* v, floating* out,
                              Py_ssize_t n, const double* c) noexcept nogil:
    # v = mu * v - lr * dw; out = w + v; c: lr, mu
    cdef floating lr = <floating>c[0], mu = <floating>c[1]
    cdef floating vi
    cdef Py_ssize_t i
    for i in range(n):
        vi = v[i] * mu - lr * dw[i]
        v[i] = vi
        out[i] = w[i] + vi


cdef void _rmsprop_chunk(const floating* w, const floating* dw, floating* cache, floating* out,
                         Py_ssize_t n, const double* c) noexcept nogil:
    # cache = decay * cache + (1 - decay) * dw**2; out = w - lr * dw / (sqrt(cache) + eps)
    # c: -lr, decay, 1 - decay, eps
    cdef floating neg_lr = <floating>c[0], decay = <floating>c[1]
    cdef floating keep = <floating>c[2], eps = <floating>c[3]
    cdef floating g, ci
    cdef floating root[SQRT_BLOCK]
    cdef Py_ssize_t b0, bn, i
    b0 = 0
    while b0 < n:
        bn = min(<Py_ssize_t>SQRT_BLOCK, n - b0)
        for i in range(bn):
            g = dw[b0 + i]
            ci = cache[b0 + i] * decay + (g * g) * keep
            cache[b0 + i] = ci
            root[i] = ci
        _sqrt_block(root, bn)
        for i in range(bn):
            out[b0 + i] = (dw[b0 + i] / (root[i] + eps)) * neg_lr + w[b0 + i]
        b0 += bn


cdef void _adam_chunk(const floating* w, const floating* dw, floating* m, floating* v,
                      floating* out, Py_ssize_t n, const double* c) noexcept nogil:
    # m = beta1 * m + (1 - beta1) * dw; v = beta2 * v + (1 - beta2) * dw**2;
    # out = w - step * m / (sqrt(v) + eps_hat), the bias correction being in
    # step and eps_hat. c: beta1, 1 - beta1, beta2, 1 - beta2, -step, eps_hat
    cdef floating b1 = <floating>c[0], k1 = <floating>c[1]
    cdef floating b2 = <floating>c[2], k2 = <floating>c[3]
    cdef floating neg_step = <floating>c[4], eps = <floating>c[5]
    cdef floating g, vi
    cdef floating root[SQRT_BLOCK]
    cdef Py_ssize_t b0, bn, i
    b0 = 0
    while b0 < n:
        bn = min(<Py_ssize_t>SQRT_BLOCK, n - b0)
        for i in range(bn):
            g = dw[b0 + i]
            m[b0 + i] = m[b0 + i] * b1 + k1 * g
            vi = v[b0 + i] * b2 + (g * g) * k2
            v[b0 + i] = vi
            root[i] = vi
        _sqrt_block(root, bn)
        for i in range(bn):
            out[b0 + i] = (m[b0 + i] / (root[i] + eps)) * neg_step + w[b0 + i]
        b0 += bn


cdef double _sum_of_squares_chunk(const floating* x, Py_ssize_t n) noexcept nogil:
    # Eight independent partial sums in double: the loop vectorizes (one
    # running sum would be a chain of dependent additions), and a chunk's
    # error stays far below float32's rounding.
    cdef double acc[8]
    cdef double v
    cdef Py_ssize_t i, k
    cdef Py_ssize_t n8 = n - n % 8
    for k in range(8):
        acc[k] = 0
    for i in range(0, n8, 8):
        for k in range(8):
            v = x[i + k]
            acc[k] += v * v
    for i in range(n8, n):
        v = x[i]
        acc[0] += v * v
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef void _axpy_chunk(const floating* x, floating* y, Py_ssize_t n, const double* c) noexcept nogil:
    # y += alpha * x; c: alpha
    cdef floating alpha = <floating>c[0]
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = y[i] + alpha * x[i]


cdef void _run_chunk(Job* j, Py_ssize_t n, floating* tag) noexcept nogil:
    # Chunk n of an elementwise job; a: the arrays in the order of the
    # public function that calls _elementwise, each offset to the chunk.
    cdef Py_ssize_t lo = n * j.chunk
    cdef Py_ssize_t m = min(j.chunk, j.size - lo)
    cdef floating* a0 = <floating*>j.a[0] + lo
    cdef floating* a1 = <floating*>j.a[1] + lo
    if j.kind == SGD:
        _sgd_chunk(a0, a1, <floating*>j.a[2] + lo, m, j.c)
    elif j.kind == SGD_MOMENTUM:
        _sgd_momentum_chunk(a0, a1, <floating*>j.a[2] + lo, <floating*>j.a[3] + lo, m, j.c)
    elif j.kind == RMSPROP:
        _rmsprop_chunk(a0, a1, <floating*>j.a[2] + lo, <floating*>j.a[3] + lo, m, j.c)
    elif j.kind == ADAM:
        _adam_chunk(a0, a1, <floating*>j.a[2] + lo, <floating*>j.a[3] + lo,
                    <floating*>j.a[4] + lo, m, j.c)
    elif j.kind == SUM_OF_SQUARES:
        # a: x, partial sums (float64, one per chunk)
        (<double*>j.a[1])[n] = _sum_of_squares_chunk(a0, m)
    elif j.kind == AXPY:
        _axpy_chunk(a0, a1, m, j.c)


# ----------------------------------------------------------------- matmul

cdef void _matmul_tile(const floating* A, const floating* B, floating* C, Py_ssize_t t,
                       MatShape g) noexcept nogil:
    # Output tile t of C = A @ B: rows i0..i0+mn, columns j0..j0+nn, summed
    # over K by kb at a time (beta = 0, then 1) on this thread alone.
    # Column-major BLAS sees C^T (N, M) = B^T (N, K) @ A^T (K, M).
    cdef Py_ssize_t i0 = (t // g.tiles_n) * g.mb
    cdef Py_ssize_t j0 = (t % g.tiles_n) * g.nb
    cdef int mn = min(g.mb, g.M - i0)
    cdef int nn = min(g.nb, g.N - j0)
    cdef int kn
    cdef Py_ssize_t k0 = 0
    cdef const floating* pa
    cdef const floating* pb
    while k0 < g.K:
        kn = min(g.kb, g.K - k0)
        # B row-major (K, N) is B^T column-major with ld N; B column-major
        # (a transposed view) is B with ld K, read transposed.
        pb = B + (k0 * g.N + j0 if g.tb == c'N' else j0 * g.K + k0)
        pa = A + (i0 * g.K + k0 if g.ta == c'N' else k0 * g.M + i0)
        _gemm(g.tb, g.ta, nn, mn, kn, <floating>1, pb, g.ldb, pa, g.lda,
              <floating>(k0 > 0), C + i0 * g.N + j0, g.N)
        k0 += kn


# ----------------------------------------------------- work for the team

cdef enum Kind:
    IM2COL, COL2IM, CONV_FORWARD, CONV_BACKWARD, POOL_FORWARD, POOL_BACKWARD,
    MATMUL,             # units are output tiles
    # elementwise kinds: units are chunks of Job.chunk elements
    SGD, SGD_MOMENTUM, RMSPROP, ADAM, SUM_OF_SQUARES, AXPY


cdef struct MatShape:
    # C (M, N) = A (M, K) @ B (K, N), all row-major views; A and B are read
    # transposed (ta, tb = 'T') when they are column-major in memory.
    int M, N, K
    int mb, nb, kb      # tile: mb rows x nb columns of C, K summed kb at a time
    int tiles_n         # tiles across N
    char ta, tb
    int lda, ldb


cdef struct Job:
    int kind
    long long next      # next item to hand out (atomic)
    long long count     # items
    Py_ssize_t grain    # units (images or planes) per item
    Py_ssize_t total    # units
    Py_ssize_t n0       # first image (CONV_BACKWARD: partial slot = image - n0)
    bint compute_dx
    ConvShape s         # pooling uses H, W, OH, OW, KH = ph, KW = pw, stride
    void* a[7]          # arrays, by kind (see _run_unit and _run_chunk)
    Py_ssize_t ws       # workspace elements per thread
    Py_ssize_t size     # elementwise kinds: elements of each array
    Py_ssize_t chunk    # elementwise kinds: elements per unit
    double c[6]         # elementwise kinds: scalars (see _run_chunk)
    MatShape g          # MATMUL


cdef class _Work:
    """One kernel call, shared by the team; run(tid) processes items until none are left."""
    cdef Job job
    cdef bint is_double
    cdef object keep    # the arrays behind job.a, alive while any thread runs

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _run_items(&self.job, tid, <double*>NULL)
            else:
                _run_items(&self.job, tid, <float*>NULL)


cdef void _run_items(Job* j, int tid, floating* tag) noexcept nogil:
    cdef long long i
    cdef Py_ssize_t u, hi
    while True:
        i = xdl_fetch_add(&j.next)
        if i >= j.count:
            return
        hi = min((i + 1) * j.grain, j.total)
        for u in range(i * j.grain, hi):
            _run_unit(j, tid, j.n0 + u, tag)


cdef void _run_unit(Job* j, int tid, Py_ssize_t n, floating* tag) noexcept nogil:
    if j.kind >= SGD:
        _run_chunk(j, n, tag)
        return
    if j.kind == MATMUL:
        # a: A, B, C
        _matmul_tile(<floating*>j.a[0], <floating*>j.a[1], <floating*>j.a[2], n, j.g)
        return
    cdef ConvShape s = j.s
    cdef Py_ssize_t img = <Py_ssize_t>s.C * s.H * s.W
    cdef Py_ssize_t P = s.P
    cdef floating* work = <floating*>j.a[6] + tid * j.ws if j.a[6] != NULL else NULL
    if j.kind == IM2COL:
        # a: x, cols
        _im2col_image(<floating*>j.a[0] + n * img, <floating*>j.a[1] + n * P, s.N * P,
                      s.C, s.H, s.W, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW)
    elif j.kind == COL2IM:
        # a: cols, dx
        _col2im_image(<floating*>j.a[0] + n * P, s.N * P, <floating*>j.a[1] + n * img,
                      s.C, s.H, s.W, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW)
    elif j.kind == CONV_FORWARD:
        # a: x, w, b, out; workspace
        _conv_forward_image(<floating*>j.a[0] + n * img, <floating*>j.a[1], <floating*>j.a[2],
                            <floating*>j.a[3] + n * s.F * P, work, s)
    elif j.kind == CONV_BACKWARD:
        # a: x, w, dout, dx, dw partials, db partials; workspace
        _conv_backward_image(
            <floating*>j.a[0] + n * img, <floating*>j.a[1], <floating*>j.a[2] + n * s.F * P,
            (<floating*>j.a[3] + n * img) if j.compute_dx else NULL,
            <floating*>j.a[4] + (n - j.n0) * s.F * s.K, <floating*>j.a[5] + (n - j.n0) * s.F,
            work, j.compute_dx, s)
    elif j.kind == POOL_FORWARD:
        # a: x, out, argmax; n is a plane
        _pool_forward_plane(<floating*>j.a[0] + n * s.H * s.W, <floating*>j.a[1] + n * P,
                            <int*>j.a[2] + n * P, s.H, s.W, s.KH, s.KW, s.stride, s.OH, s.OW)
    elif j.kind == POOL_BACKWARD:
        # a: dout, argmax, dx; n is a plane
        _pool_backward_plane(<floating*>j.a[0] + n * P, <int*>j.a[1] + n * P,
                             <floating*>j.a[2] + n * s.H * s.W,
                             s.H, s.W, s.KH, s.KW, s.stride, s.OH, s.OW)


cdef void* _ptr(a) except? NULL:
    """
    Address of the first element of a non-empty C-contiguous float32, float64
    or int32 array (None -> NULL). Taking it through a typed memoryview checks
    the dtype and the layout; the caller keeps the array alive.
    """
    cdef float[::1] f
    cdef double[::1] d
    cdef int[::1] i
    if a is None:
        return NULL
    flat = a.reshape(-1)  # a view: a is contiguous
    if a.dtype == np.float32:
        f = flat
        return &f[0]
    if a.dtype == np.float64:
        d = flat
        return &d[0]
    i = flat
    return &i[0]


cdef _Work _make_work(int kind, ConvShape s, Py_ssize_t total, Py_ssize_t grain, arrays,
                      workspace=None, Py_ssize_t per_thread=0, Py_ssize_t n0=0,
                      bint compute_dx=True):
    cdef _Work w = _Work()
    cdef int i
    w.job.kind = kind
    w.job.next = 0
    w.job.grain = max(1, grain)
    w.job.total = total
    w.job.count = (total + w.job.grain - 1) // w.job.grain
    w.job.n0 = n0
    w.job.compute_dx = compute_dx
    w.job.s = s
    for i in range(7):
        w.job.a[i] = NULL
    for i, a in enumerate(arrays):
        w.job.a[i] = _ptr(a)
    w.job.a[6] = _ptr(workspace)
    w.job.ws = per_thread
    w.is_double = arrays[0].dtype == np.float64  # arrays[0] is always a float array
    w.keep = (arrays, workspace)
    return w


def _run(_Work work):
    """Run work on min(threads, items) threads."""
    _team.run(work, max(1, min(_num_threads, work.job.count)))


# ---------------------------------------------------------------- im2col

def _floating(a, name):
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError("%s must be float32 or float64, got %s" % (name, a.dtype))
    return np.ascontiguousarray(a)


cdef ConvShape _window_shape(x_shape, int KH, int KW, int stride, int pad, int OH, int OW):
    cdef ConvShape s
    s.N, s.C, s.H, s.W = x_shape
    s.F = 0
    s.KH, s.KW, s.stride, s.pad, s.OH, s.OW = KH, KW, stride, pad, OH, OW
    s.K = s.C * KH * KW
    s.P = OH * OW
    return s


def im2col(x, int KH, int KW, int stride, int pad, int OH, int OW):
    """
    Inputs:
    - x: (N, C, H, W) float32/float64; KH, KW: window; stride, pad; OH, OW:
      output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), row (c*KH + kh)*KW + kw, column
      (n*OH + oh)*OW + ow
    """
    x = _floating(x, "x")
    _boundary.check_im2col(x, KH, KW, stride, pad, OH, OW)
    cdef ConvShape s = _window_shape(x.shape, KH, KW, stride, pad, OH, OW)
    cols = np.empty((s.K, s.N * s.P), dtype=x.dtype)
    if cols.size:
        _run(_make_work(IM2COL, s, s.N, 1, (x, cols)))
    return cols


def col2im(cols, x_shape, int KH, int KW, int stride, int pad, int OH, int OW):
    """
    Adjoint of im2col: every column entry is added back into the input pixel
    it was read from.

    Inputs:
    - cols: (C*KH*KW, N*OH*OW); x_shape: (N, C, H, W); the rest as im2col

    Returns:
    - dx: (N, C, H, W) with the dtype of cols
    """
    cols = _floating(cols, "cols")
    _boundary.check_col2im(cols, x_shape, KH, KW, stride, pad, OH, OW)
    cdef ConvShape s = _window_shape(tuple(x_shape), KH, KW, stride, pad, OH, OW)
    dx = np.zeros((s.N, s.C, s.H, s.W), dtype=cols.dtype)
    if cols.size:
        _run(_make_work(COL2IM, s, s.N, 1, (cols, dx)))
    return dx


# ------------------------------------------------------------ convolution

def conv_forward(x, w, b, int stride, int pad, int OH, int OW):
    """
    Inputs:
    - x: (N, C, H, W); w: (F, C, KH, KW); b: (F,); all one float dtype
    - stride, pad; OH, OW: output size (validated by the caller)

    Returns:
    - out: (N, F, OH, OW), out[n, f] = sum over (c, kh, kw) of
      w[f, c, kh, kw] * xpad[n, c, oh*stride + kh, ow*stride + kw] + b[f]
    """
    _boundary.float_dtype((("x", x), ("w", w), ("b", b)), "CPU kernels", np.ndarray, "numpy")
    _boundary.check_conv_forward(x, w, b, stride, pad, OH, OW)
    x, w, b = np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(b)
    cdef ConvShape s = _conv_shape(x.shape, w.shape, stride, pad, OH, OW)
    out = np.empty((s.N, s.F, OH, OW), dtype=x.dtype)
    if out.size == 0:
        return out
    if s.K == 0:
        out[...] = b.reshape(1, -1, 1, 1)
        return out
    cdef Py_ssize_t per_thread = <Py_ssize_t>s.K * s.P
    work = _take_workspace(min(_num_threads, s.N) * per_thread, x.dtype)
    _run(_make_work(CONV_FORWARD, s, s.N, 1, (x, w, b, out), work, per_thread))
    _give_back(work)
    return out


def conv_backward(dout, x, w, int stride, int pad, int OH, int OW, compute_dx=True):
    """
    Inputs:
    - dout: (N, F, OH, OW) upstream gradient; x, w: as conv_forward
    - compute_dx: False skips the input gradient (dx is returned as None)

    Returns a tuple of (dx, dw, db).
    """
    _boundary.float_dtype((("dout", dout), ("x", x), ("w", w)), "CPU kernels", np.ndarray,
                          "numpy")
    _boundary.check_conv_backward(dout, x, w, stride, pad, OH, OW)
    x, dout, w = np.ascontiguousarray(x), np.ascontiguousarray(dout), np.ascontiguousarray(w)
    cdef ConvShape s = _conv_shape(x.shape, w.shape, stride, pad, OH, OW)
    cdef bint want_dx = bool(compute_dx)
    dx = np.empty(x.shape, dtype=x.dtype) if want_dx else None
    dw = np.zeros((s.F, s.K), dtype=x.dtype)
    db = np.zeros(s.F, dtype=x.dtype)
    if s.N == 0 or s.F == 0 or s.K == 0 or s.P == 0:
        if want_dx:
            dx[...] = 0
        db[...] = dout.sum(axis=(0, 2, 3))
        return dx, dw.reshape(w.shape), db
    # Images per group: the per-image partials of a group stay small.
    cdef Py_ssize_t group = max(min(_num_threads, s.N),
                                min(s.N, PARTIAL_ELEMENTS // (s.F * (s.K + 1))))
    cdef Py_ssize_t per_thread = <Py_ssize_t>s.K * s.P
    cdef Py_ssize_t n0, n1
    work = _take_workspace(min(_num_threads, s.N) * per_thread, x.dtype)
    parts = _take_workspace(group * s.F * (s.K + 1), x.dtype)
    dw_parts = parts[:group * s.F * s.K].reshape(group, s.F * s.K)
    db_parts = parts[group * s.F * s.K:].reshape(group, s.F)
    for n0 in range(0, s.N, group):
        n1 = min(s.N, n0 + group)
        _run(_make_work(CONV_BACKWARD, s, n1 - n0, 1, (x, w, dout, dx, dw_parts, db_parts),
                        work, per_thread, n0, want_dx))
        # Reduce in image order (numpy's pairwise sum): deterministic.
        dw += dw_parts[:n1 - n0].sum(axis=0).reshape(s.F, s.K)
        db += db_parts[:n1 - n0].sum(axis=0)
    _give_back(work)
    _give_back(parts)
    return dx, dw.reshape(w.shape), db


# ------------------------------------------------------------ max pooling

cdef ConvShape _pool_shape(x_shape, int ph, int pw, int stride, int OH, int OW):
    cdef ConvShape s = _window_shape(x_shape, ph, pw, stride, 0, OH, OW)
    return s


def _band(ConvShape s):
    return max(1, POOL_BAND_PIXELS // max(1, s.H * s.W))


def maxpool_forward(x, int ph, int pw, int stride, int OH, int OW):
    """
    Inputs:
    - x: (N, C, H, W); ph, pw: window; stride; OH, OW: output size

    Returns:
    - out: (N, C, OH, OW) window maxima
    - argmax: (N, C, OH, OW) int32, index kh*pw + kw of the first maximum of
      each window in row-major order (np.argmax's tie rule)
    """
    x = _floating(x, "x")
    _boundary.check_pool_forward(x, ph, pw, stride, OH, OW)
    cdef ConvShape s = _pool_shape(x.shape, ph, pw, stride, OH, OW)
    out = np.empty((s.N, s.C, OH, OW), dtype=x.dtype)
    argmax = np.empty((s.N, s.C, OH, OW), dtype=np.int32)
    if out.size:
        _run(_make_work(POOL_FORWARD, s, s.N * s.C, _band(s), (x, out, argmax)))
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, int ph, int pw, int stride, int OH, int OW):
    """
    Inputs:
    - dout: (N, C, OH, OW); argmax: from maxpool_forward; x_shape: (N, C, H, W)

    Returns:
    - dx: (N, C, H, W); each dout entry added to the pixel its argmax names
      (overlapping windows accumulate)
    """
    dout = _floating(dout, "dout")
    _boundary.check_pool_backward(dout, argmax, x_shape, ph, pw, stride, OH, OW)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    cdef ConvShape s = _pool_shape(tuple(x_shape), ph, pw, stride, OH, OW)
    dx = np.empty((s.N, s.C, s.H, s.W), dtype=dout.dtype)
    if dx.size == 0:
        return dx
    if dout.size == 0:
        dx[...] = 0
        return dx
    _run(_make_work(POOL_BACKWARD, s, s.N * s.C, _band(s), (dout, argmax, dx)))
    return dx


# ------------------------------------------------- elementwise: update rules

cdef void* _data(a, bint write) except? NULL:
    """
    Address of the first element of a non-empty C-contiguous float32 or
    float64 array; write also requires it to be writeable (checked by the
    typed memoryview). The caller keeps the array alive.
    """
    cdef float[::1] f
    cdef double[::1] d
    cdef const float[::1] cf
    cdef const double[::1] cd
    flat = a.reshape(-1)  # a view: a is contiguous
    if a.dtype == np.float32:
        if write:
            f = flat
            return &f[0]
        cf = flat
        return <void*>&cf[0]
    if write:
        d = flat
        return &d[0]
    cd = flat
    return <void*>&cd[0]


def _check_arrays(inputs, states, same_shape=True):
    """
    Check (name, array) pairs: numpy arrays of one float dtype (and of one
    shape, with same_shape); the states (updated in place) also C-contiguous
    and writeable.

    Returns the dtype. Raises TypeError (not numpy, not float32/float64,
    mixed dtypes) or ValueError (shapes, layout), naming the argument.
    """
    dtype = shape = first = None
    for name, a in tuple(inputs) + tuple(states):
        if not isinstance(a, np.ndarray):
            raise TypeError("%s must be a numpy array for the CPU kernels, got %s"
                            % (name, type(a).__name__))
        if a.dtype != np.float32 and a.dtype != np.float64:
            raise TypeError("%s must be float32 or float64 for the CPU kernels, got %s"
                            % (name, a.dtype))
        if dtype is None:
            dtype, shape, first = a.dtype, a.shape, name
        elif a.dtype != dtype:
            raise TypeError("%s has dtype %s but %s has dtype %s; the CPU kernels need one dtype"
                            % (name, a.dtype, first, dtype))
        elif same_shape and a.shape != shape:
            raise ValueError("%s has shape %s but %s has shape %s" % (name, a.shape, first, shape))
    for name, a in states:
        if not a.flags.c_contiguous:
            raise ValueError("%s must be C-contiguous: it is updated in place" % name)
        if not a.flags.writeable:
            raise ValueError("%s is read-only: it is updated in place" % name)
    return dtype


def _elementwise(int kind, arrays, scalars, int n_read):
    """
    Run an elementwise kernel over C-contiguous arrays of one dtype and size,
    in chunks of ELEMENT_CHUNK elements over the team. arrays[:n_read] are
    only read; scalars go to Job.c in order.
    """
    cdef _Work w = _Work()
    cdef Py_ssize_t size = arrays[0].size
    cdef int i
    if size == 0:
        return
    w.job.kind = kind
    w.job.next = 0
    w.job.size = size
    w.job.chunk = max(1, int(ELEMENT_CHUNK))
    w.job.grain = 1
    w.job.total = (size + w.job.chunk - 1) // w.job.chunk
    w.job.count = w.job.total
    w.job.n0 = 0
    w.job.ws = 0
    for i in range(7):
        w.job.a[i] = NULL
    for i, a in enumerate(arrays):
        w.job.a[i] = _data(a, i >= n_read)
    for i in range(6):
        w.job.c[i] = 0
    for i, c in enumerate(scalars):
        w.job.c[i] = c
    w.is_double = arrays[0].dtype == np.float64
    w.keep = arrays
    _run(w)


def sgd(w, dw, lr):
    """
    Vanilla stochastic gradient descent in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - lr: learning rate

    Returns:
    - next_w: w - lr * dw, a new array (w and dw are not modified)
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), ())
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    next_w = np.empty(w.shape, dtype=dtype)
    _elementwise(SGD, (w, dw, next_w), (lr,), 2)
    return next_w


def sgd_momentum(w, dw, v, lr, mu):
    """
    SGD with momentum in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - v: velocity, same shape and dtype, C-contiguous; updated in place
    - lr, mu: learning rate and momentum

    Returns a tuple of:
    - next_w: w + v (a new array), v being the updated velocity
    - v: the velocity array given, now mu * v - lr * dw
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("velocity", v),))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    next_w = np.empty(w.shape, dtype=dtype)
    _elementwise(SGD_MOMENTUM, (w, dw, v, next_w), (lr, mu), 2)
    return next_w, v


def rmsprop(w, dw, cache, lr, decay, eps):
    """
    RMSProp in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - cache: moving average of squared gradients, same shape and dtype,
      C-contiguous; updated in place
    - lr, decay, eps: learning rate, decay rate and smoothing term

    Returns a tuple of:
    - next_w: w - lr * dw / (sqrt(cache) + eps) with the updated cache (a new array)
    - cache: the cache array given, now decay * cache + (1 - decay) * dw**2
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("cache", cache),))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    next_w = np.empty(w.shape, dtype=dtype)
    _elementwise(RMSPROP, (w, dw, cache, next_w), (-lr, decay, 1 - decay, eps), 2)
    return next_w, cache


def adam(w, dw, m, v, beta1, beta2, step, eps_hat):
    """
    Adam in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - m, v: first and second moments, same shape and dtype, C-contiguous;
      updated in place
    - beta1, beta2: decay rates of the moments
    - step, eps_hat: learning rate and epsilon with the bias correction
      folded in (computed by xdl.optim.adam)

    Returns a tuple of:
    - next_w: w - step * m / (sqrt(v) + eps_hat) with the updated moments (a new array)
    - m: the array given, now beta1 * m + (1 - beta1) * dw
    - v: the array given, now beta2 * v + (1 - beta2) * dw**2
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("m", m), ("v", v)))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    next_w = np.empty(w.shape, dtype=dtype)
    _elementwise(ADAM, (w, dw, m, v, next_w),
                 (beta1, 1 - beta1, beta2, 1 - beta2, -step, eps_hat), 2)
    return next_w, m, v


# --------------------------------------------- elementwise: regularization

def sum_of_squares(x):
    """
    Sum of the squares of the elements of x, without a temporary the size
    of x. Each chunk is summed in float64; the chunk sums are added in chunk
    order, so the result does not depend on the threads.

    Inputs:
    - x: numpy float32 or float64 array

    Returns:
    - a scalar of x's dtype
    """
    dtype = _check_arrays((("x", x),), ())
    x = np.ascontiguousarray(x)
    chunk = max(1, int(ELEMENT_CHUNK))
    partials = np.empty((x.size + chunk - 1) // chunk, dtype=np.float64)
    _elementwise(SUM_OF_SQUARES, (x, partials), (), 1)
    return dtype.type(partials.sum())


def axpy(alpha, x, y):
    """
    y += alpha * x, in place, in one pass (no temporary the size of x).

    Inputs:
    - alpha: scalar
    - x: numpy array of one float dtype
    - y: array of x's shape and dtype, C-contiguous and writeable

    Returns:
    - y
    """
    _check_arrays((("x", x),), (("y", y),))
    x = np.ascontiguousarray(x)
    _elementwise(AXPY, (x, y), (alpha,), 1)
    return y


# ----------------------------------------------------------------- matmul

# Products with at least this many multiply-adds go through the team (see
# xdl.backends.cpu.matmul); smaller ones OpenBLAS runs on the calling thread,
# without waking its own threads.
MATMUL_MIN_WORK = 1 << 19


def _matmul_tiles(int M, int N, int K, bint transposed=False):
    """
    Tile (mb, nb, kb) of C (M, N) = A (M, K) @ B (K, N) with mb*nb*kb <=
    GEMM_TILE_LIMIT (each BLAS call stays on its thread). Chosen by timing
    the affine layers' products (minibatches of 50 to 200, widths 100 to
    8192) here: K is summed 128 at a time, or in one call up to 512 when A
    or B is a transposed view (x.T and w.T in the backward pass); a short
    minibatch (M <= 64) is one tile high, else 48 rows; then as many columns
    as fit, at most 128.
    """
    limit = GEMM_TILE_LIMIT
    kb = K if K <= (512 if transposed else 128) else 128
    mb = M if M <= 64 else 48
    nb = max(1, min(N, 128, limit // (kb * mb)))
    if 16 <= nb < N:
        nb -= nb % 16
    return mb, nb, kb


cdef _operand(a):
    """(array, transposed?) with a C- or F-contiguous layout for BLAS."""
    if a.flags.c_contiguous:
        return a, False
    if a.flags.f_contiguous:
        return a, True
    return np.ascontiguousarray(a), False


def matmul(a, b, tiles=None):
    """
    Matrix product of two 2-D float32/float64 numpy arrays of one dtype,
    split in output tiles over the team. Every BLAS call is small enough to
    stay on its thread, so numpy's OpenBLAS threads are not woken (they spin
    for a while after each multithreaded call, taking a core from the next
    kernel). Each tile is summed by one thread in a fixed order: repeated
    calls are bit-identical.

    Inputs:
    - a: (M, K); b: (K, N); C- or F-contiguous (e.g. a transposed view) or
      else copied
    - tiles: optional (mb, nb, kb), for tests; default from _matmul_tiles

    Returns:
    - c: (M, N) C-contiguous array, a @ b
    """
    dtype = _check_arrays((("a", a), ("b", b)), (), same_shape=False)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError("matmul needs a (M, K) and b (K, N), got %s and %s" % (a.shape, b.shape))
    cdef int M = a.shape[0], K = a.shape[1], N = b.shape[1]
    c = np.empty((M, N), dtype=dtype)
    if c.size == 0:
        return c
    if K == 0:
        c[...] = 0
        return c
    a, ta = _operand(a)
    b, tb = _operand(b)
    mb, nb, kb = _matmul_tiles(M, N, K, ta or tb) if tiles is None else tiles
    cdef _Work w = _Work()
    cdef int i
    w.job.kind = MATMUL
    w.job.next = 0
    w.job.g.M, w.job.g.N, w.job.g.K = M, N, K
    w.job.g.mb, w.job.g.nb, w.job.g.kb = max(1, mb), max(1, nb), max(1, kb)
    w.job.g.tiles_n = (N + w.job.g.nb - 1) // w.job.g.nb
    w.job.g.ta = c'T' if ta else c'N'
    w.job.g.tb = c'T' if tb else c'N'
    w.job.g.lda = M if ta else K
    w.job.g.ldb = K if tb else N
    w.job.grain = 1
    w.job.total = w.job.g.tiles_n * ((M + w.job.g.mb - 1) // w.job.g.mb)
    w.job.count = w.job.total
    for i in range(7):
        w.job.a[i] = NULL
    # A column-major operand's memory, read as a flat array, is its transpose.
    w.job.a[0] = _data(a.T if ta else a, False)
    w.job.a[1] = _data(b.T if tb else b, False)
    w.job.a[2] = _data(c, True)
    w.is_double = dtype == np.float64
    w.keep = (a, b, c)
    _run(w)
    return c
