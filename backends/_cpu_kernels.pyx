# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled CPU kernels: convolution (im2col + GEMM), col2im, max pooling.

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
"""
import os
import threading
from queue import SimpleQueue

import numpy as np

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


# ----------------------------------------------------- work for the team

cdef enum Kind:
    IM2COL, COL2IM, CONV_FORWARD, CONV_BACKWARD, POOL_FORWARD, POOL_BACKWARD


cdef struct Job:
    int kind
    long long next      # next item to hand out (atomic)
    long long count     # items
    Py_ssize_t grain    # units (images or planes) per item
    Py_ssize_t total    # units
    Py_ssize_t n0       # first image (CONV_BACKWARD: partial slot = image - n0)
    bint compute_dx
    ConvShape s         # pooling uses H, W, OH, OW, KH = ph, KW = pw, stride
    void* a[7]          # arrays, by kind (see _run_unit)
    Py_ssize_t ws       # workspace elements per thread


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
    cdef ConvShape s = _window_shape(tuple(x_shape), KH, KW, stride, pad, OH, OW)
    if cols.shape != (s.K, s.N * s.P):
        raise ValueError("cols must have shape %s for x_shape %s, got %s"
                         % ((s.K, s.N * s.P), tuple(x_shape), cols.shape))
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
    x = _floating(x, "x")
    w = np.ascontiguousarray(w, dtype=x.dtype)
    b = np.ascontiguousarray(b, dtype=x.dtype)
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
    x = _floating(x, "x")
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    w = np.ascontiguousarray(w, dtype=x.dtype)
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
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    cdef ConvShape s = _pool_shape(tuple(x_shape), ph, pw, stride, OH, OW)
    if dout.shape != (s.N, s.C, OH, OW) or argmax.shape != dout.shape:
        raise ValueError("dout and argmax must have shape %s, got %s and %s"
                         % ((s.N, s.C, OH, OW), dout.shape, argmax.shape))
    dx = np.empty((s.N, s.C, s.H, s.W), dtype=dout.dtype)
    if dx.size == 0:
        return dx
    if dout.size == 0:
        dx[...] = 0
        return dx
    _run(_make_work(POOL_BACKWARD, s, s.N * s.C, _band(s), (dout, argmax, dx)))
    return dx
