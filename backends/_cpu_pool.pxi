# Max pooling on the CPU (included by _cpu_kernels.pyx): direct passes over
# (n, c) planes, which threads take in bands (xdl/DESIGN.md, "The CPU
# kernels").

# Pooling hands out bands of planes of about this many input pixels.
POOL_BAND_PIXELS = 4096


cdef struct PoolShape:
    int N, C, H, W, ph, pw, stride, OH, OW


cdef PoolShape _pool_shape(x_shape, int ph, int pw, int stride, int OH, int OW):
    cdef PoolShape s
    s.N, s.C, s.H, s.W = x_shape
    s.ph, s.pw, s.stride, s.OH, s.OW = ph, pw, stride, OH, OW
    return s


def _band(int H, int W):
    """Planes per item of work: about POOL_BAND_PIXELS input pixels."""
    return max(1, POOL_BAND_PIXELS // max(1, H * W))


cdef extern from *:
    """
    /* One output row of a 2x2, stride-2 max pool: out[ow] = max of
       r0[2ow], r0[2ow+1], r1[2ow], r1[2ow+1] and am[ow] = the index (0-3)
       of the first maximum in that order (_wins: np.argmax's rule, where the
       first NaN is the maximum), as the scalar loop. SSE2 does
       2 (double) or 4 (float) windows per step with compare-and-select;
       GCC vectorizes neither the double loop (measured here: 1.67 ms
       against about 0.4 ms for the pooling of the CNN's 50x32x32x32 map)
       nor, fully, the float one. The index is carried as a float of the
       value's width and converted exactly at the end. The last OW mod 2
       (double) or 4 (float) windows and other machines take the scalar
       loop; returned: the windows done. */
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #define XDL_SEL_PD(m, a, b) _mm_or_pd(_mm_and_pd(m, a), _mm_andnot_pd(m, b))
    #define XDL_SEL_PS(m, a, b) _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b))
    /* v replaces best: v > best, or v is the window's first NaN. */
    #define XDL_WINS_PD(v, best) _mm_or_pd(_mm_cmpgt_pd(v, best), \
        _mm_and_pd(_mm_cmpunord_pd(v, v), _mm_cmpord_pd(best, best)))
    #define XDL_WINS_PS(v, best) _mm_or_ps(_mm_cmpgt_ps(v, best), \
        _mm_and_ps(_mm_cmpunord_ps(v, v), _mm_cmpord_ps(best, best)))
    static Py_ssize_t xdl_pool2x2_row_d(const double *r0, const double *r1, double *out,
                                        int *am, Py_ssize_t OW) {
        Py_ssize_t ow = 0;
        __m128d best, v, m, k;
        for (; ow + 2 <= OW; ow += 2) {
            __m128d a0 = _mm_loadu_pd(r0 + 2 * ow), a1 = _mm_loadu_pd(r0 + 2 * ow + 2);
            __m128d b0 = _mm_loadu_pd(r1 + 2 * ow), b1 = _mm_loadu_pd(r1 + 2 * ow + 2);
            best = _mm_unpacklo_pd(a0, a1);
            v = _mm_unpackhi_pd(a0, a1);
            m = XDL_WINS_PD(v, best);
            best = XDL_SEL_PD(m, v, best);
            k = _mm_and_pd(m, _mm_set1_pd(1.0));
            v = _mm_unpacklo_pd(b0, b1);
            m = XDL_WINS_PD(v, best);
            best = XDL_SEL_PD(m, v, best);
            k = XDL_SEL_PD(m, _mm_set1_pd(2.0), k);
            v = _mm_unpackhi_pd(b0, b1);
            m = XDL_WINS_PD(v, best);
            best = XDL_SEL_PD(m, v, best);
            k = XDL_SEL_PD(m, _mm_set1_pd(3.0), k);
            _mm_storeu_pd(out + ow, best);
            _mm_storel_epi64((__m128i *)(am + ow), _mm_cvttpd_epi32(k));
        }
        return ow;
    }
    static Py_ssize_t xdl_pool2x2_row_f(const float *r0, const float *r1, float *out,
                                        int *am, Py_ssize_t OW) {
        Py_ssize_t ow = 0;
        __m128 best, v, m, k;
        for (; ow + 4 <= OW; ow += 4) {
            __m128 a0 = _mm_loadu_ps(r0 + 2 * ow), a1 = _mm_loadu_ps(r0 + 2 * ow + 4);
            __m128 b0 = _mm_loadu_ps(r1 + 2 * ow), b1 = _mm_loadu_ps(r1 + 2 * ow + 4);
            best = _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0));
            v = _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(3, 1, 3, 1));
            m = XDL_WINS_PS(v, best);
            best = XDL_SEL_PS(m, v, best);
            k = _mm_and_ps(m, _mm_set1_ps(1.0f));
            v = _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0));
            m = XDL_WINS_PS(v, best);
            best = XDL_SEL_PS(m, v, best);
            k = XDL_SEL_PS(m, _mm_set1_ps(2.0f), k);
            v = _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1));
            m = XDL_WINS_PS(v, best);
            best = XDL_SEL_PS(m, v, best);
            k = XDL_SEL_PS(m, _mm_set1_ps(3.0f), k);
            _mm_storeu_ps(out + ow, best);
            _mm_storeu_si128((__m128i *)(am + ow), _mm_cvttps_epi32(k));
        }
        return ow;
    }
    /* The backward of one such row, when the windows tile the plane: every
       pixel of rows d0 and d1 is written, the window's gradient at its
       argmax k (0-3) and 0 elsewhere (a k outside 0-3, such as the -1 of a
       ReLU cut, gives four zeros): selects instead of zeroing the rows and
       storing at the argmax. Returns the windows done. */
    static Py_ssize_t xdl_unpool2x2_row_d(const double *dout, const int *am, double *d0,
                                          double *d1, Py_ssize_t OW) {
        Py_ssize_t ow = 0;
        for (; ow + 2 <= OW; ow += 2) {
            __m128d g = _mm_loadu_pd(dout + ow);
            __m128i k = _mm_loadl_epi64((const __m128i *)(am + ow));
            k = _mm_unpacklo_epi32(k, k);          /* each index twice: 64-bit lanes */
            __m128d e0 = _mm_and_pd(_mm_castsi128_pd(_mm_cmpeq_epi32(k, _mm_set1_epi32(0))), g);
            __m128d e1 = _mm_and_pd(_mm_castsi128_pd(_mm_cmpeq_epi32(k, _mm_set1_epi32(1))), g);
            __m128d e2 = _mm_and_pd(_mm_castsi128_pd(_mm_cmpeq_epi32(k, _mm_set1_epi32(2))), g);
            __m128d e3 = _mm_and_pd(_mm_castsi128_pd(_mm_cmpeq_epi32(k, _mm_set1_epi32(3))), g);
            _mm_storeu_pd(d0 + 2 * ow, _mm_unpacklo_pd(e0, e1));
            _mm_storeu_pd(d0 + 2 * ow + 2, _mm_unpackhi_pd(e0, e1));
            _mm_storeu_pd(d1 + 2 * ow, _mm_unpacklo_pd(e2, e3));
            _mm_storeu_pd(d1 + 2 * ow + 2, _mm_unpackhi_pd(e2, e3));
        }
        return ow;
    }
    static Py_ssize_t xdl_unpool2x2_row_f(const float *dout, const int *am, float *d0,
                                          float *d1, Py_ssize_t OW) {
        Py_ssize_t ow = 0;
        for (; ow + 4 <= OW; ow += 4) {
            __m128 g = _mm_loadu_ps(dout + ow);
            __m128i k = _mm_loadu_si128((const __m128i *)(am + ow));
            __m128 e0 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(0))), g);
            __m128 e1 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(1))), g);
            __m128 e2 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(2))), g);
            __m128 e3 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(3))), g);
            _mm_storeu_ps(d0 + 2 * ow, _mm_unpacklo_ps(e0, e1));
            _mm_storeu_ps(d0 + 2 * ow + 4, _mm_unpackhi_ps(e0, e1));
            _mm_storeu_ps(d1 + 2 * ow, _mm_unpacklo_ps(e2, e3));
            _mm_storeu_ps(d1 + 2 * ow + 4, _mm_unpackhi_ps(e2, e3));
        }
        return ow;
    }
    #else
    static Py_ssize_t xdl_unpool2x2_row_d(const double *dout, const int *am, double *d0,
                                          double *d1, Py_ssize_t OW) { return 0; }
    static Py_ssize_t xdl_unpool2x2_row_f(const float *dout, const int *am, float *d0,
                                          float *d1, Py_ssize_t OW) { return 0; }
    static Py_ssize_t xdl_pool2x2_row_d(const double *r0, const double *r1, double *out,
                                        int *am, Py_ssize_t OW) { return 0; }
    static Py_ssize_t xdl_pool2x2_row_f(const float *r0, const float *r1, float *out,
                                        int *am, Py_ssize_t OW) { return 0; }
    #endif
    """
    Py_ssize_t xdl_pool2x2_row_d(const double* r0, const double* r1, double* out, int* am,
                                 Py_ssize_t OW) noexcept nogil
    Py_ssize_t xdl_pool2x2_row_f(const float* r0, const float* r1, float* out, int* am,
                                 Py_ssize_t OW) noexcept nogil
    Py_ssize_t xdl_unpool2x2_row_d(const double* dout, const int* am, double* d0, double* d1,
                                   Py_ssize_t OW) noexcept nogil
    Py_ssize_t xdl_unpool2x2_row_f(const float* dout, const int* am, float* d0, float* d1,
                                   Py_ssize_t OW) noexcept nogil


cdef inline bint _wins(floating v, floating best) noexcept nogil:
    # Does v replace the window's maximum so far? np.argmax's rule: strictly
    # greater (the first of equal maxima keeps its place), or the first NaN,
    # which then stays (nothing compares greater than it).
    return v > best or (v != v and best == best)


cdef void _pool_forward_plane(const floating* x, floating* out, int* am,
                              PoolShape s) noexcept nogil:
    # out[oh, ow] = max of the window; am = kh*pw + kw of its first maximum.
    cdef Py_ssize_t oh, ow, i, j, done
    cdef int k
    cdef int W = s.W, OW = s.OW
    cdef floating best, v
    cdef const floating* r0
    cdef const floating* r1
    if s.ph == 2 and s.pw == 2 and s.stride == 2:
        for oh in range(s.OH):
            r0 = x + 2 * oh * W
            r1 = r0 + W
            if floating is float:
                done = xdl_pool2x2_row_f(r0, r1, out + oh * OW, am + oh * OW, OW)
            else:
                done = xdl_pool2x2_row_d(r0, r1, out + oh * OW, am + oh * OW, OW)
            for ow in range(done, OW):
                # The scalar loop, for the tail and machines without SSE2.
                best = r0[2 * ow]
                k = 0
                v = r0[2 * ow + 1]
                if _wins(v, best):
                    best = v
                    k = 1
                v = r1[2 * ow]
                if _wins(v, best):
                    best = v
                    k = 2
                v = r1[2 * ow + 1]
                if _wins(v, best):
                    best = v
                    k = 3
                out[oh * OW + ow] = best
                am[oh * OW + ow] = k
        return
    for oh in range(s.OH):
        for ow in range(OW):
            r0 = x + oh * s.stride * W + ow * s.stride
            best = r0[0]
            k = 0
            for i in range(s.ph):
                for j in range(s.pw):
                    v = r0[i * W + j]
                    if _wins(v, best):
                        best = v
                        k = i * s.pw + j
            out[oh * OW + ow] = best
            am[oh * OW + ow] = k


cdef void _pool_backward_plane(const floating* dout, const int* am, floating* dx,
                               PoolShape s) noexcept nogil:
    # An argmax entry that is not a window index contributes nothing (as on
    # every backend): nothing is ever written outside the plane.
    cdef Py_ssize_t oh, ow, j, o, done
    cdef int k
    cdef int W = s.W, pw = s.pw
    cdef unsigned int window = s.ph * pw
    cdef floating* r0
    if s.ph == 2 and pw == 2 and s.stride == 2 and s.H == 2 * s.OH and W == 2 * s.OW:
        # 2x2 windows that tile the plane, as below without dividing by pw.
        for oh in range(s.OH):
            r0 = dx + 2 * oh * W
            if floating is float:
                done = xdl_unpool2x2_row_f(dout + oh * s.OW, am + oh * s.OW, r0, r0 + W, s.OW)
            else:
                done = xdl_unpool2x2_row_d(dout + oh * s.OW, am + oh * s.OW, r0, r0 + W, s.OW)
            memset(r0 + 2 * done, 0, <size_t>(2 * (s.OW - done)) * sizeof(floating))
            memset(r0 + W + 2 * done, 0, <size_t>(2 * (s.OW - done)) * sizeof(floating))
            for ow in range(done, s.OW):
                o = oh * s.OW + ow
                k = am[o]
                if <unsigned int>k < 4:
                    r0[(k >> 1) * W + 2 * ow + (k & 1)] = dout[o]
        return
    if s.ph == s.stride and pw == s.stride and s.H == s.ph * s.OH and W == pw * s.OW:
        # Windows tile the plane: zero one band of ph rows while it is in L1,
        # then store each gradient at its argmax.
        for oh in range(s.OH):
            r0 = dx + oh * s.ph * W
            for j in range(s.ph * W):
                r0[j] = 0
            for ow in range(s.OW):
                o = oh * s.OW + ow
                k = am[o]
                if <unsigned int>k < window:
                    r0[(k // pw) * W + ow * pw + k % pw] = dout[o]
        return
    # Overlapping windows or uncovered pixels: zero, then add.
    memset(dx, 0, <size_t>s.H * W * sizeof(floating))
    for oh in range(s.OH):
        for ow in range(s.OW):
            o = oh * s.OW + ow
            k = am[o]
            if <unsigned int>k < window:
                dx[(oh * s.stride + k // pw) * W + ow * s.stride + k % pw] += dout[o]


# ------------------------------------------------ the planes of a call

cdef struct PoolForwardJob:
    PoolShape s
    const void* x       # (N*C planes, H, W)
    void* out           # (N*C, OH, OW)
    void* argmax        # (N*C, OH, OW) int32


cdef void _pool_forward_run(Items* items, const PoolForwardJob* j, floating* out) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef int* argmax = <int*>j.argmax
    cdef Py_ssize_t plane = <Py_ssize_t>j.s.H * j.s.W, P = <Py_ssize_t>j.s.OH * j.s.OW
    cdef Py_ssize_t lo = 0, hi = 0, n
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _pool_forward_plane(x + n * plane, out + n * P, argmax + n * P, j.s)


cdef class _PoolForwardWork(_Work):
    cdef PoolForwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _pool_forward_run(&self.items, &self.job, <double*>self.job.out)
            else:
                _pool_forward_run(&self.items, &self.job, <float*>self.job.out)


cdef struct PoolBackwardJob:
    PoolShape s
    const void* dout    # (N*C planes, OH, OW)
    const void* argmax  # (N*C, OH, OW) int32
    void* dx            # (N*C, H, W)


cdef void _pool_backward_run(Items* items, const PoolBackwardJob* j, floating* dx) noexcept nogil:
    cdef const floating* dout = <const floating*>j.dout
    cdef const int* argmax = <const int*>j.argmax
    cdef Py_ssize_t plane = <Py_ssize_t>j.s.H * j.s.W, P = <Py_ssize_t>j.s.OH * j.s.OW
    cdef Py_ssize_t lo = 0, hi = 0, n
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _pool_backward_plane(dout + n * P, argmax + n * P, dx + n * plane, j.s)


cdef class _PoolBackwardWork(_Work):
    cdef PoolBackwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _pool_backward_run(&self.items, &self.job, <double*>self.job.dx)
            else:
                _pool_backward_run(&self.items, &self.job, <float*>self.job.dx)


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
    cdef _PoolForwardWork work = _PoolForwardWork()
    work.job.s = _pool_shape(x.shape, ph, pw, stride, OH, OW)
    N, C = x.shape[:2]
    out = pooled_empty((N, C, OH, OW), x.dtype)
    argmax = pooled_empty((N, C, OH, OW), np.int32)
    if out.size:
        work.job.x = _address(x, False)
        work.job.out, work.job.argmax = _address(out, True), _address(argmax, True)
        _start(work, N * C, _band(x.shape[2], x.shape[3]), x.dtype, (x, out, argmax))
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
    cdef _PoolBackwardWork work = _PoolBackwardWork()
    work.job.s = _pool_shape(tuple(x_shape), ph, pw, stride, OH, OW)
    N, C, H, W = x_shape
    dx = pooled_empty((N, C, H, W), dout.dtype)
    if dx.size == 0:
        return dx
    if dout.size == 0:
        dx[...] = 0
        return dx
    work.job.dout, work.job.argmax = _address(dout, False), _address(argmax, False)
    work.job.dx = _address(dx, True)
    _start(work, N * C, _band(H, W), dout.dtype, (dout, argmax, dx))
    return dx
