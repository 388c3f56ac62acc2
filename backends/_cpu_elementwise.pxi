# Elementwise kernels on the CPU (included by _cpu_kernels.pyx): the update
# rules, the sum of squares and axpy of the L2 term. Each makes one pass over
# its arrays in chunks of ELEMENT_CHUNK elements shared by the team, with the
# floating-point operations of its formula in numpy_kernels.py, in the same
# order and in the array's dtype (scalars rounded to it first, as NumPy does
# with a Python float against a float32 array): results match the formulas
# to rounding, bit for bit where the compiler does not contract a*b + c into
# a fused multiply-add. xdl/DESIGN.md, "Update rules", shows how to add one.

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
    /* Adam (AdamW) over n elements in one pass, 4 (float) or 2 (double) at
       a time, with _adam_span's operations in its order (no fused
       multiply-add: the same bits as the scalar loop). Measured here on the
       4.1 M weights of the CNN's W2, from memory: 2.0-3.7 -> 1.8-3.0 ms
       (float32) and 5.5-6.0 -> 4.5-4.9 ms (float64) against the blocked
       loop, which reads and writes each block twice. Non-temporal stores
       of next_w were no faster. next_w may be w itself (the update in
       place: each vector of w is loaded before its result is stored, and no
       pointer here is restrict). Returns the elements done (the rest is
       left to the caller; 0 without SSE2). */
    static Py_ssize_t xdl_adam_span_f(const float *w, const float *dw, float *m, float *v,
                                      float *next_w, Py_ssize_t n, float b1, float k1, float b2,
                                      float k2, float neg_step, float eps, float shrink) {
        Py_ssize_t i = 0;
        __m128 B1 = _mm_set1_ps(b1), K1 = _mm_set1_ps(k1), B2 = _mm_set1_ps(b2);
        __m128 K2 = _mm_set1_ps(k2), S = _mm_set1_ps(neg_step), E = _mm_set1_ps(eps);
        __m128 R = _mm_set1_ps(shrink);
        for (; i + 4 <= n; i += 4) {
            __m128 g = _mm_loadu_ps(dw + i);
            __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), B1), _mm_mul_ps(K1, g));
            __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), B2),
                                   _mm_mul_ps(_mm_mul_ps(g, g), K2));
            __m128 nw = _mm_add_ps(_mm_mul_ps(_mm_div_ps(mi, _mm_add_ps(_mm_sqrt_ps(vi), E)), S),
                                   _mm_mul_ps(_mm_loadu_ps(w + i), R));
            _mm_storeu_ps(m + i, mi);
            _mm_storeu_ps(v + i, vi);
            _mm_storeu_ps(next_w + i, nw);
        }
        return i;
    }
    static Py_ssize_t xdl_adam_span_d(const double *w, const double *dw, double *m, double *v,
                                      double *next_w, Py_ssize_t n, double b1, double k1,
                                      double b2, double k2, double neg_step, double eps,
                                      double shrink) {
        Py_ssize_t i = 0;
        __m128d B1 = _mm_set1_pd(b1), K1 = _mm_set1_pd(k1), B2 = _mm_set1_pd(b2);
        __m128d K2 = _mm_set1_pd(k2), S = _mm_set1_pd(neg_step), E = _mm_set1_pd(eps);
        __m128d R = _mm_set1_pd(shrink);
        for (; i + 2 <= n; i += 2) {
            __m128d g = _mm_loadu_pd(dw + i);
            __m128d mi = _mm_add_pd(_mm_mul_pd(_mm_loadu_pd(m + i), B1), _mm_mul_pd(K1, g));
            __m128d vi = _mm_add_pd(_mm_mul_pd(_mm_loadu_pd(v + i), B2),
                                    _mm_mul_pd(_mm_mul_pd(g, g), K2));
            __m128d nw = _mm_add_pd(_mm_mul_pd(_mm_div_pd(mi, _mm_add_pd(_mm_sqrt_pd(vi), E)), S),
                                    _mm_mul_pd(_mm_loadu_pd(w + i), R));
            _mm_storeu_pd(m + i, mi);
            _mm_storeu_pd(v + i, vi);
            _mm_storeu_pd(next_w + i, nw);
        }
        return i;
    }
    /* RMSprop in one pass, likewise (the operations of _rmsprop_run, in its order). */
    static Py_ssize_t xdl_rmsprop_span_f(const float *w, const float *dw, float *cache,
                                         float *next_w, Py_ssize_t n, float decay, float keep,
                                         float neg_lr, float eps) {
        Py_ssize_t i = 0;
        __m128 D = _mm_set1_ps(decay), K = _mm_set1_ps(keep), L = _mm_set1_ps(neg_lr);
        __m128 E = _mm_set1_ps(eps);
        for (; i + 4 <= n; i += 4) {
            __m128 g = _mm_loadu_ps(dw + i);
            __m128 ci = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(cache + i), D),
                                   _mm_mul_ps(_mm_mul_ps(g, g), K));
            _mm_storeu_ps(cache + i, ci);
            _mm_storeu_ps(next_w + i, _mm_add_ps(
                _mm_mul_ps(_mm_div_ps(g, _mm_add_ps(_mm_sqrt_ps(ci), E)), L),
                _mm_loadu_ps(w + i)));
        }
        return i;
    }
    static Py_ssize_t xdl_rmsprop_span_d(const double *w, const double *dw, double *cache,
                                         double *next_w, Py_ssize_t n, double decay,
                                         double keep, double neg_lr, double eps) {
        Py_ssize_t i = 0;
        __m128d D = _mm_set1_pd(decay), K = _mm_set1_pd(keep), L = _mm_set1_pd(neg_lr);
        __m128d E = _mm_set1_pd(eps);
        for (; i + 2 <= n; i += 2) {
            __m128d g = _mm_loadu_pd(dw + i);
            __m128d ci = _mm_add_pd(_mm_mul_pd(_mm_loadu_pd(cache + i), D),
                                    _mm_mul_pd(_mm_mul_pd(g, g), K));
            _mm_storeu_pd(cache + i, ci);
            _mm_storeu_pd(next_w + i, _mm_add_pd(
                _mm_mul_pd(_mm_div_pd(g, _mm_add_pd(_mm_sqrt_pd(ci), E)), L),
                _mm_loadu_pd(w + i)));
        }
        return i;
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
    #if !(defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2))
    /* Without SSE2 the update rules take their blocked loops for all elements. */
    static Py_ssize_t xdl_adam_span_f(const float *w, const float *dw, float *m, float *v,
                                      float *next_w, Py_ssize_t n, float b1, float k1, float b2,
                                      float k2, float neg_step, float eps, float shrink) { return 0; }
    static Py_ssize_t xdl_adam_span_d(const double *w, const double *dw, double *m, double *v,
                                      double *next_w, Py_ssize_t n, double b1, double k1,
                                      double b2, double k2, double neg_step, double eps,
                                      double shrink) { return 0; }
    static Py_ssize_t xdl_rmsprop_span_f(const float *w, const float *dw, float *cache,
                                         float *next_w, Py_ssize_t n, float decay, float keep,
                                         float neg_lr, float eps) { return 0; }
    static Py_ssize_t xdl_rmsprop_span_d(const double *w, const double *dw, double *cache,
                                         double *next_w, Py_ssize_t n, double decay,
                                         double keep, double neg_lr, double eps) { return 0; }
    #endif
    """
    void xdl_sqrt_block_f(float* x, Py_ssize_t n) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_f(const float* w, const float* dw, float* cache, float* next_w,
                                  Py_ssize_t n, float decay, float keep, float neg_lr,
                                  float eps) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_d(const double* w, const double* dw, double* cache,
                                  double* next_w, Py_ssize_t n, double decay, double keep,
                                  double neg_lr, double eps) noexcept nogil
    Py_ssize_t xdl_adam_span_f(const float* w, const float* dw, float* m, float* v,
                               float* next_w, Py_ssize_t n, float b1, float k1, float b2,
                               float k2, float neg_step, float eps, float shrink) noexcept nogil
    Py_ssize_t xdl_adam_span_d(const double* w, const double* dw, double* m, double* v,
                               double* next_w, Py_ssize_t n, double b1, double k1, double b2,
                               double k2, double neg_step, double eps, double shrink) noexcept nogil
    void xdl_sqrt_block_d(double* x, Py_ssize_t n) noexcept nogil

# Elementwise kernels hand out chunks of this many elements. Timed with Adam
# on 4M elements here: chunks of 4096 were 1.2 (float64) to 1.5 (float32)
# times slower than these, larger ones no faster. An array of one chunk or
# less stays on the calling thread.
ELEMENT_CHUNK = 1 << 16

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


cdef _run_elementwise(_Work work, Py_ssize_t size, dtype, keep):
    """Run an elementwise work over `size` elements, ELEMENT_CHUNK per item."""
    if size:
        _start(work, size, int(ELEMENT_CHUNK), dtype, keep)


def _next_w(out, w, dtype, others):
    """
    The array an update rule writes next_w into: a new one (from the pool)
    for out=None, else out once checked: w itself (the update in place,
    each element read before it is written) or an array of its own, and
    C-contiguous (_boundary.check_out; others: the rule's other (name,
    array) pairs).
    """
    if out is None:
        return pooled_empty(w.shape, dtype)
    _boundary.check_out(out, w, *others)  # type, dtype, shape, writeable, overlap
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous: next_w is written into it")
    return out


# ------------------------------------------------------------------ sgd

cdef struct SgdJob:
    const void* w
    const void* dw
    void* next_w
    double lr


cdef void _sgd_run(Items* items, const SgdJob* j, floating* next_w) noexcept nogil:
    # next_w = w - lr * dw
    cdef const floating* w = <const floating*>j.w
    cdef const floating* dw = <const floating*>j.dw
    cdef floating lr = <floating>j.lr
    cdef Py_ssize_t lo = 0, hi = 0, i
    while _take(items, &lo, &hi):
        for i in range(lo, hi):
            next_w[i] = w[i] - lr * dw[i]


cdef class _SgdWork(_Work):
    cdef SgdJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _sgd_run(&self.items, &self.job, <double*>self.job.next_w)
            else:
                _sgd_run(&self.items, &self.job, <float*>self.job.next_w)


def sgd(w, dw, lr, out=None):
    """
    Vanilla stochastic gradient descent in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - lr: learning rate
    - out: None, or the array to write next_w into (w itself: in place)

    Returns:
    - next_w: w - lr * dw, a new array or out (dw is not modified, nor w
      unless it is out)
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), ())
    next_w = _next_w(out, w, dtype, (("dw", dw),))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    cdef _SgdWork work = _SgdWork()
    work.job.w, work.job.dw, work.job.next_w = _address(w, False), _address(dw, False), \
        _address(next_w, True)
    work.job.lr = lr
    _run_elementwise(work, w.size, dtype, (w, dw, next_w))
    return next_w


# --------------------------------------------------------- sgd_momentum

cdef struct SgdMomentumJob:
    const void* w
    const void* dw
    void* v             # velocity, updated in place
    void* next_w
    double lr, mu


cdef void _sgd_momentum_run(Items* items, const SgdMomentumJob* j, floating* next_w) noexcept nogil:
    # v = mu * v - lr * dw; next_w = w + v
    cdef const floating* w = <const floating*>j.w
    cdef const floating* dw = <const floating*>j.dw
    cdef floating* v = <floating*>j.v
    cdef floating lr = <floating>j.lr, mu = <floating>j.mu
    cdef floating vi
    cdef Py_ssize_t lo = 0, hi = 0, i
    while _take(items, &lo, &hi):
        for i in range(lo, hi):
            vi = v[i] * mu - lr * dw[i]
            v[i] = vi
            next_w[i] = w[i] + vi


cdef class _SgdMomentumWork(_Work):
    cdef SgdMomentumJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _sgd_momentum_run(&self.items, &self.job, <double*>self.job.next_w)
            else:
                _sgd_momentum_run(&self.items, &self.job, <float*>self.job.next_w)


def sgd_momentum(w, dw, v, lr, mu, out=None):
    """
    SGD with momentum in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - v: velocity, same shape and dtype, C-contiguous; updated in place
    - lr, mu: learning rate and momentum
    - out: None, or the array to write next_w into (w itself: in place)

    Returns a tuple of:
    - next_w: w + v (a new array, or out), v being the updated velocity
    - v: the velocity array given, now mu * v - lr * dw
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("velocity", v),))
    next_w = _next_w(out, w, dtype, (("dw", dw), ("velocity", v)))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    cdef _SgdMomentumWork work = _SgdMomentumWork()
    work.job.w, work.job.dw = _address(w, False), _address(dw, False)
    work.job.v, work.job.next_w = _address(v, True), _address(next_w, True)
    work.job.lr, work.job.mu = lr, mu
    _run_elementwise(work, w.size, dtype, (w, dw, v, next_w))
    return next_w, v


# -------------------------------------------------------------- rmsprop

cdef struct RmspropJob:
    const void* w
    const void* dw
    void* cache         # moving average of dw**2, updated in place
    void* next_w
    double lr, decay, eps


cdef void _rmsprop_run(Items* items, const RmspropJob* j, floating* next_w) noexcept nogil:
    # cache = decay * cache + (1 - decay) * dw**2; next_w = w - lr * dw / (sqrt(cache) + eps)
    cdef const floating* w = <const floating*>j.w
    cdef const floating* dw = <const floating*>j.dw
    cdef floating* cache = <floating*>j.cache
    cdef floating neg_lr = <floating>(-j.lr), decay = <floating>j.decay
    cdef floating keep = <floating>(1 - j.decay), eps = <floating>j.eps
    cdef floating g, ci
    cdef floating root[SQRT_BLOCK]
    cdef Py_ssize_t lo = 0, hi = 0, b0, bn, i
    while _take(items, &lo, &hi):
        # The widest vectors (as in _adam_span), then SSE2, in one pass but
        # for a short tail; other machines: the blocks.
        b0 = lo
        if floating is float:
            if _simd_kernels and _avx512_kernels:
                b0 += xdl_rmsprop_span_zs(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                          decay, keep, neg_lr, eps)
            elif _simd_kernels:
                b0 += xdl_rmsprop_span_ys(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                          decay, keep, neg_lr, eps)
            b0 += xdl_rmsprop_span_f(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                     decay, keep, neg_lr, eps)
        else:
            if _simd_kernels and _avx512_kernels:
                b0 += xdl_rmsprop_span_zd(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                          decay, keep, neg_lr, eps)
            elif _simd_kernels:
                b0 += xdl_rmsprop_span_yd(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                          decay, keep, neg_lr, eps)
            b0 += xdl_rmsprop_span_d(w + b0, dw + b0, cache + b0, next_w + b0, hi - b0,
                                     decay, keep, neg_lr, eps)
        while b0 < hi:
            bn = min(<Py_ssize_t>SQRT_BLOCK, hi - b0)
            for i in range(bn):
                g = dw[b0 + i]
                ci = cache[b0 + i] * decay + (g * g) * keep
                cache[b0 + i] = ci
                root[i] = ci
            _sqrt_block(root, bn)
            for i in range(bn):
                next_w[b0 + i] = (dw[b0 + i] / (root[i] + eps)) * neg_lr + w[b0 + i]
            b0 += bn


cdef class _RmspropWork(_Work):
    cdef RmspropJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _rmsprop_run(&self.items, &self.job, <double*>self.job.next_w)
            else:
                _rmsprop_run(&self.items, &self.job, <float*>self.job.next_w)


def rmsprop(w, dw, cache, lr, decay, eps, out=None):
    """
    RMSProp in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - cache: moving average of squared gradients, same shape and dtype,
      C-contiguous; updated in place
    - lr, decay, eps: learning rate, decay rate and smoothing term
    - out: None, or the array to write next_w into (w itself: in place)

    Returns a tuple of:
    - next_w: w - lr * dw / (sqrt(cache) + eps) with the updated cache (a
      new array, or out)
    - cache: the cache array given, now decay * cache + (1 - decay) * dw**2
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("cache", cache),))
    next_w = _next_w(out, w, dtype, (("dw", dw), ("cache", cache)))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    cdef _RmspropWork work = _RmspropWork()
    work.job.w, work.job.dw = _address(w, False), _address(dw, False)
    work.job.cache, work.job.next_w = _address(cache, True), _address(next_w, True)
    work.job.lr, work.job.decay, work.job.eps = lr, decay, eps
    _run_elementwise(work, w.size, dtype, (w, dw, cache, next_w))
    return next_w, cache


# ----------------------------------------------------------------- adam

cdef inline void _adam_moments(const floating* dw, floating* m, floating* v, floating* root,
                               Py_ssize_t n, floating b1, floating k1, floating b2,
                               floating k2) noexcept nogil:
    # m = beta1 * m + (1 - beta1) * dw; v = beta2 * v + (1 - beta2) * dw**2;
    # root = sqrt(v). k1 = 1 - beta1, k2 = 1 - beta2.
    cdef floating g, vi
    cdef Py_ssize_t i
    for i in range(n):
        g = dw[i]
        m[i] = m[i] * b1 + k1 * g
        vi = v[i] * b2 + (g * g) * k2
        v[i] = vi
        root[i] = vi
    _sqrt_block(root, n)


cdef struct AdamJob:
    const void* w
    const void* dw
    void* m             # first moment, updated in place
    void* v             # second moment, updated in place
    void* next_w
    double beta1, beta2, step, eps_hat


cdef void _adam_run(Items* items, const AdamJob* j, floating* next_w) noexcept nogil:
    # The moments, then next_w = w - step * m / (sqrt(v) + eps_hat), the bias
    # correction being in step and eps_hat.
    cdef const floating* w = <const floating*>j.w
    cdef const floating* dw = <const floating*>j.dw
    cdef floating* m = <floating*>j.m
    cdef floating* v = <floating*>j.v
    cdef floating b1 = <floating>j.beta1, k1 = <floating>(1 - j.beta1)
    cdef floating b2 = <floating>j.beta2, k2 = <floating>(1 - j.beta2)
    cdef floating neg_step = <floating>(-j.step), eps = <floating>j.eps_hat
    cdef Py_ssize_t lo = 0, hi = 0
    while _take(items, &lo, &hi):
        _adam_span(w + lo, dw + lo, m + lo, v + lo, next_w + lo, hi - lo,
                   b1, k1, b2, k2, neg_step, eps, 1)


cdef void _adam_span(const floating* w, const floating* dw, floating* m, floating* v,
                     floating* next_w, Py_ssize_t n, floating b1, floating k1,
                     floating b2, floating k2, floating neg_step, floating eps,
                     floating shrink) noexcept nogil:
    # Adam (AdamW with shrink != 1) on n consecutive elements: the moments,
    # then next_w = (m / (sqrt(v) + eps)) * neg_step + w * shrink. With
    # shrink = 1, w * shrink is w exactly: Adam's result.
    cdef floating root[SQRT_BLOCK]
    cdef Py_ssize_t b0 = 0, bn, i
    # The widest vectors the CPU has (and set_simd_kernels /
    # set_avx512_kernels allow: AVX-512 or AVX2, _cpu_gemm.h), then SSE2,
    # do all but a tail of fewer than 4 (float) or 2 (double) elements in
    # one pass, with the same bits; other machines take the blocks below.
    if floating is float:
        if _simd_kernels and _avx512_kernels:
            b0 = xdl_adam_span_zs(w, dw, m, v, next_w, n, b1, k1, b2, k2, neg_step, eps, shrink)
        elif _simd_kernels:
            b0 = xdl_adam_span_ys(w, dw, m, v, next_w, n, b1, k1, b2, k2, neg_step, eps, shrink)
        b0 += xdl_adam_span_f(w + b0, dw + b0, m + b0, v + b0, next_w + b0, n - b0,
                              b1, k1, b2, k2, neg_step, eps, shrink)
    else:
        if _simd_kernels and _avx512_kernels:
            b0 = xdl_adam_span_zd(w, dw, m, v, next_w, n, b1, k1, b2, k2, neg_step, eps, shrink)
        elif _simd_kernels:
            b0 = xdl_adam_span_yd(w, dw, m, v, next_w, n, b1, k1, b2, k2, neg_step, eps, shrink)
        b0 += xdl_adam_span_d(w + b0, dw + b0, m + b0, v + b0, next_w + b0, n - b0,
                              b1, k1, b2, k2, neg_step, eps, shrink)
    while b0 < n:
        bn = min(<Py_ssize_t>SQRT_BLOCK, n - b0)
        _adam_moments(dw + b0, m + b0, v + b0, root, bn, b1, k1, b2, k2)
        for i in range(bn):
            next_w[b0 + i] = (m[b0 + i] / (root[i] + eps)) * neg_step + w[b0 + i] * shrink
        b0 += bn


cdef class _AdamWork(_Work):
    cdef AdamJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _adam_run(&self.items, &self.job, <double*>self.job.next_w)
            else:
                _adam_run(&self.items, &self.job, <float*>self.job.next_w)


def adam(w, dw, m, v, beta1, beta2, step, eps_hat, out=None):
    """
    Adam in one pass.

    Inputs:
    - w, dw: numpy arrays of one shape and one float dtype
    - m, v: first and second moments, same shape and dtype, C-contiguous;
      updated in place
    - beta1, beta2: decay rates of the moments
    - step, eps_hat: learning rate and epsilon with the bias correction
      folded in (computed by xdl.optim.adam)
    - out: None, or the array to write next_w into (w itself: in place)

    Returns a tuple of:
    - next_w: w - step * m / (sqrt(v) + eps_hat) with the updated moments (a
      new array, or out)
    - m: the array given, now beta1 * m + (1 - beta1) * dw
    - v: the array given, now beta2 * v + (1 - beta2) * dw**2
    """
    dtype = _check_arrays((("w", w), ("dw", dw)), (("m", m), ("v", v)))
    next_w = _next_w(out, w, dtype, (("dw", dw), ("m", m), ("v", v)))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    cdef _AdamWork work = _AdamWork()
    work.job.w, work.job.dw = _address(w, False), _address(dw, False)
    work.job.m, work.job.v = _address(m, True), _address(v, True)
    work.job.next_w = _address(next_w, True)
    work.job.beta1, work.job.beta2, work.job.step, work.job.eps_hat = beta1, beta2, step, eps_hat
    _run_elementwise(work, w.size, dtype, (w, dw, m, v, next_w))
    return next_w, m, v


# ---------------------------------------------------------------- adamw

cdef struct AdamWJob:
    const void* w
    const void* dw
    void* m             # first moment, updated in place
    void* v             # second moment, updated in place
    void* next_w
    double beta1, beta2, step, eps_hat, shrink


cdef void _adamw_run(Items* items, const AdamWJob* j, floating* next_w) noexcept nogil:
    # The moments of adam, then next_w = shrink * w - step * m / (sqrt(v) + eps_hat),
    # shrink = 1 - lr * weight_decay (the decoupled weight decay).
    cdef const floating* w = <const floating*>j.w
    cdef const floating* dw = <const floating*>j.dw
    cdef floating* m = <floating*>j.m
    cdef floating* v = <floating*>j.v
    cdef floating b1 = <floating>j.beta1, k1 = <floating>(1 - j.beta1)
    cdef floating b2 = <floating>j.beta2, k2 = <floating>(1 - j.beta2)
    cdef floating neg_step = <floating>(-j.step), eps = <floating>j.eps_hat
    cdef floating shrink = <floating>j.shrink
    cdef Py_ssize_t lo = 0, hi = 0
    while _take(items, &lo, &hi):
        _adam_span(w + lo, dw + lo, m + lo, v + lo, next_w + lo, hi - lo,
                   b1, k1, b2, k2, neg_step, eps, shrink)


cdef class _AdamWWork(_Work):
    cdef AdamWJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _adamw_run(&self.items, &self.job, <double*>self.job.next_w)
            else:
                _adamw_run(&self.items, &self.job, <float*>self.job.next_w)


def adamw(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out=None):
    """
    AdamW (Adam with decoupled weight decay) in one pass.

    Inputs:
    - w, dw, m, v, beta1, beta2, step, eps_hat: as adam
    - shrink: 1 - learning_rate * weight_decay (computed by xdl.optim.adamw)
    - out: None, or the array to write next_w into (w itself: in place)

    Returns a tuple of:
    - next_w: shrink * w - step * m / (sqrt(v) + eps_hat) with the updated
      moments (a new array, or out)
    - m, v: the arrays given, updated as in adam
    """
    work, dtype, next_w, keep = _adamw_work(w, dw, m, v, beta1, beta2, step, eps_hat, shrink,
                                            out)
    _run_elementwise(work, w.size, dtype, keep)
    return next_w, m, v


cdef _adamw_work(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out):
    """adamw's arguments checked and its work set up: (work, dtype, next_w, arrays to keep)."""
    dtype = _check_arrays((("w", w), ("dw", dw)), (("m", m), ("v", v)))
    next_w = _next_w(out, w, dtype, (("dw", dw), ("m", m), ("v", v)))
    w, dw = np.ascontiguousarray(w), np.ascontiguousarray(dw)
    cdef _AdamWWork work = _AdamWWork()
    work.job.w, work.job.dw = _address(w, False), _address(dw, False)
    work.job.m, work.job.v = _address(m, True), _address(v, True)
    work.job.next_w = _address(next_w, True)
    work.job.beta1, work.job.beta2, work.job.step, work.job.eps_hat = beta1, beta2, step, eps_hat
    work.job.shrink = shrink
    return work, dtype, next_w, (w, dw, m, v, next_w)


class _Alongside:
    """
    The context manager of adamw_alongside: the side work is pending while
    the body runs (the first kernel call there runs it too); whatever of
    it is left runs on exit, so the step is complete when the block ends
    (even when the body raised).
    """

    def __init__(self, work, threads):
        self.work, self.threads = work, threads

    def __enter__(self):
        if getattr(_side, "work", None) is not None:
            raise RuntimeError("adamw_alongside: another side work is pending on this thread")
        _side.work = self.work

    def __exit__(self, *exc):
        cdef _Work work = self.work
        if getattr(_side, "work", None) is work:
            _side.work = None  # no kernel call in the body took it
        if work.items.next < work.items.count:
            _cpu_team.run(work, self.threads)
        return False


def adamw_alongside(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out):
    """
    adamw (adam with shrink 1: the same bits) run beside the next kernel
    call of the calling thread: a context manager whose block makes that
    call (the convolution's backward pass, say). Adam's pass is bound by
    memory and the call by arithmetic, so the team runs both at once: odd
    threads start with Adam, the others with the call, and each helps with
    the other until both are done. The block must not read or write w, dw,
    m, v or out. On exit the step is complete (the rest of it runs there if
    the block made no kernel call). Arguments as adamw, out required (w
    itself for the update in place); the context manager's value is None.
    """
    if out is None:
        raise TypeError("adamw_alongside needs out: the array next_w goes into (w itself "
                        "for the update in place)")
    work, dtype, _, keep = _adamw_work(w, dw, m, v, beta1, beta2, step, eps_hat, shrink, out)
    _prepare(work, w.size, int(ELEMENT_CHUNK), dtype, keep)
    return _Alongside(work, _cpu_team.threads_for((<_Work>work).items.count))


# ------------------------------------------------------- sum of squares

cdef struct SumOfSquaresJob:
    const void* x
    double* partials    # one float64 sum per chunk, added in chunk order afterwards


cdef void _sum_of_squares_run(Items* items, const SumOfSquaresJob* j,
                              const floating* x) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = 0
    while _take(items, &lo, &hi):
        j.partials[lo // items.grain] = _sumsq_span(x + lo, hi - lo)


cdef double _sumsq_span(const floating* x, Py_ssize_t n) noexcept nogil:
    # Eight independent partial sums in double: the loop vectorizes (one
    # running sum would be a chain of dependent additions), and a span's
    # error stays far below float32's rounding.
    cdef double acc[8]
    cdef double v
    cdef Py_ssize_t i, k, n8 = n - n % 8
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


cdef class _SumOfSquaresWork(_Work):
    cdef SumOfSquaresJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _sum_of_squares_run(&self.items, &self.job, <const double*>self.job.x)
            else:
                _sum_of_squares_run(&self.items, &self.job, <const float*>self.job.x)


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
    partials = np.zeros((x.size + chunk - 1) // chunk, dtype=np.float64)
    cdef _SumOfSquaresWork work = _SumOfSquaresWork()
    work.job.x = _address(x, False)
    work.job.partials = <double*>_address(partials, True)
    if x.size:
        _start(work, x.size, chunk, dtype, (x, partials))
    return dtype.type(partials.sum())


# ----------------------------------------------------------------- axpy

cdef struct AxpyJob:
    const void* x
    void* y             # updated in place
    double alpha


cdef void _axpy_run(Items* items, const AxpyJob* j, floating* y) noexcept nogil:
    # y += alpha * x
    cdef const floating* x = <const floating*>j.x
    cdef floating alpha = <floating>j.alpha
    cdef Py_ssize_t lo = 0, hi = 0, i
    while _take(items, &lo, &hi):
        for i in range(lo, hi):
            y[i] = y[i] + alpha * x[i]


cdef class _AxpyWork(_Work):
    cdef AxpyJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _axpy_run(&self.items, &self.job, <double*>self.job.y)
            else:
                _axpy_run(&self.items, &self.job, <float*>self.job.y)


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
    dtype = _check_arrays((("x", x),), (("y", y),))
    x = np.ascontiguousarray(x)
    cdef _AxpyWork work = _AxpyWork()
    work.job.x, work.job.y = _address(x, False), _address(y, True)
    work.job.alpha = alpha
    _run_elementwise(work, x.size, dtype, (x, y))
    return y


# --------------------------------------------------------- ReLU backward

cdef extern from *:
    """
    /* dx = dout where x > 0, else +0. dout is read whatever x is, so that
       the compiler may select instead of branch and vectorize (a load only
       under the condition it may not make unconditionally: 0.8 ns an
       element with its mispredicted branches on random signs). */
    static void xdl_relu_backward_f(const float* dout, const float* x, float* dx, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            float d = dout[i];
            dx[i] = x[i] > 0 ? d : 0.0f;
        }
    }
    static void xdl_relu_backward_d(const double* dout, const double* x, double* dx,
                                    Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            double d = dout[i];
            dx[i] = x[i] > 0 ? d : 0.0;
        }
    }
    """
    void xdl_relu_backward_f(const float* dout, const float* x, float* dx,
                             Py_ssize_t n) noexcept nogil
    void xdl_relu_backward_d(const double* dout, const double* x, double* dx,
                             Py_ssize_t n) noexcept nogil


cdef struct ReluBackwardJob:
    const void* dout
    const void* x
    void* dx


cdef void _relu_backward_run(Items* items, const ReluBackwardJob* j,
                             floating* dx) noexcept nogil:
    # dx = dout where x > 0, else +0 (a NaN x or dout there gives 0, as the
    # NumPy formula's where).
    cdef const floating* dout = <const floating*>j.dout
    cdef const floating* x = <const floating*>j.x
    cdef Py_ssize_t lo = 0, hi = 0
    while _take(items, &lo, &hi):
        if floating is float:
            xdl_relu_backward_f(dout + lo, x + lo, dx + lo, hi - lo)
        else:
            xdl_relu_backward_d(dout + lo, x + lo, dx + lo, hi - lo)


cdef class _ReluBackwardWork(_Work):
    cdef ReluBackwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _relu_backward_run(&self.items, &self.job, <double*>self.job.dx)
            else:
                _relu_backward_run(&self.items, &self.job, <float*>self.job.dx)


def relu_backward(dout, x):
    """
    The ReLU's backward pass in one pass (numpy's where() with a scalar
    took 27 against 6.1 us on a (50, 500) float32 layer, 6.4 against 0.18
    ms on a (50, 32, 32, 32) one).

    Inputs:
    - dout: upstream gradient; x: the ReLU's input; numpy arrays of one
      shape and one float dtype

    Returns:
    - dx: dout where x > 0, else 0 (a new array)
    """
    dtype = _check_arrays((("dout", dout), ("x", x)), ())
    dout, x = np.ascontiguousarray(dout), np.ascontiguousarray(x)
    dx = pooled_empty(dout.shape, dtype)
    cdef _ReluBackwardWork work = _ReluBackwardWork()
    work.job.dout, work.job.x = _address(dout, False), _address(x, False)
    work.job.dx = _address(dx, True)
    _run_elementwise(work, dx.size, dtype, (dout, x, dx))
    return dx
