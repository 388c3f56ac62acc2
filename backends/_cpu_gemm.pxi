# Our own matrix-product kernels on CPUs with AVX2 and FMA (included by
# _cpu_kernels.pyx before the kernels that use them; the C is in
# _cpu_gemm.h and _cpu_gemm_typed.h): a register tile of 6 rows by 2
# vectors, selected at run time (the rest of the extension is built for
# baseline x86-64). They run the float32 affine layer's backward pass (in
# float64 its dw; dx stays on OpenBLAS) and
# the stride-1 convolution's forward product and filter gradient in both
# float types (_conv_forward_image, _conv_backward_image: the columns read
# in place from the padded image, no im2col). For the affine layer:
# OpenBLAS's small-matrix calls, one per block of rows of w, re-packed dout
# for every call and left the block's rows of dw to be fetched from memory
# on the first store; here dout is read in place, each block's rows of w
# are packed transposed once, and the next block's rows of w and dw are
# prefetched while this block is computed. The convolution's image kernel
# also has an AVX-512 build (set_avx512_kernels). xdl/DESIGN.md, "The CPU
# kernels", has the measurements.

cdef extern from "_cpu_gemm.h":
    int XDL_AFFINE_KC
    ctypedef struct xdl_prefetch:
        # Lines [done, na + nb) of two regions to prefetch: a (na lines), then b.
        const char* a
        long na
        const char* b
        long nb
        long done
    long long xdl_load_relaxed(long long* p) noexcept nogil
    int xdl_cpu_has_avx2_fma() nogil
    int xdl_cpu_has_avx512() nogil
    void xdl_affine_dx_block(int N, int D, int M, const float* w, const float* dout,
                             float* dx, int d0, int dn, float* scratch, xdl_prefetch* pf,
                             long pf_upto) noexcept nogil
    void xdl_affine_dw_block(int N, int D, int M, const float* x, const float* w,
                             const float* dout, const float* dout_tail, float* dw, float reg,
                             int d0, int dn, float* scratch, xdl_prefetch* pf,
                             long pf_upto) noexcept nogil
    void xdl_affine_dw_block_d(int N, int D, int M, const double* x, const double* w,
                               const double* dout, const double* dout_tail, double* dw,
                               double reg, int d0, int dn, double* scratch, xdl_prefetch* pf,
                               long pf_upto) noexcept nogil
    Py_ssize_t xdl_adam_span_ys(const float* w, const float* dw, float* m, float* v, float* next_w,
                                Py_ssize_t n, float b1, float k1, float b2, float k2, float neg_step,
                                float eps, float shrink) noexcept nogil
    Py_ssize_t xdl_adam_span_zs(const float* w, const float* dw, float* m, float* v, float* next_w,
                                Py_ssize_t n, float b1, float k1, float b2, float k2, float neg_step,
                                float eps, float shrink) noexcept nogil
    Py_ssize_t xdl_adam_span_yd(const double* w, const double* dw, double* m, double* v, double* next_w,
                                Py_ssize_t n, double b1, double k1, double b2, double k2, double neg_step,
                                double eps, double shrink) noexcept nogil
    Py_ssize_t xdl_adam_span_zd(const double* w, const double* dw, double* m, double* v, double* next_w,
                                Py_ssize_t n, double b1, double k1, double b2, double k2, double neg_step,
                                double eps, double shrink) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_ys(const float* w, const float* dw, float* cache, float* next_w,
                                   Py_ssize_t n, float decay, float keep, float neg_lr,
                                   float eps) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_zs(const float* w, const float* dw, float* cache, float* next_w,
                                   Py_ssize_t n, float decay, float keep, float neg_lr,
                                   float eps) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_yd(const double* w, const double* dw, double* cache, double* next_w,
                                   Py_ssize_t n, double decay, double keep, double neg_lr,
                                   double eps) noexcept nogil
    Py_ssize_t xdl_rmsprop_span_zd(const double* w, const double* dw, double* cache, double* next_w,
                                   Py_ssize_t n, double decay, double keep, double neg_lr,
                                   double eps) noexcept nogil
    void xdl_conv_image_zs(const float* xpad, int Wp, int OH, int OW, int K, const int* off,
                          const float* w, const float* bias, int F, float* out) noexcept nogil
    void xdl_conv_image_s(const float* xpad, int Wp, int OH, int OW, int K, const int* off,
                          const float* w, const float* bias, int F, float* out) noexcept nogil
    void xdl_conv_dw_image_s(const float* xpad, int Wp, int OH, int OW, int K, const int* off,
                             const float* dconv, int F, float* dct, float* dw) noexcept nogil
    void xdl_conv_image_zd(const double* xpad, int Wp, int OH, int OW, int K, const int* off,
                          const double* w, const double* bias, int F, double* out) noexcept nogil
    void xdl_conv_image_d(const double* xpad, int Wp, int OH, int OW, int K, const int* off,
                          const double* w, const double* bias, int F, double* out) noexcept nogil
    void xdl_conv_dw_image_d(const double* xpad, int Wp, int OH, int OW, int K, const int* off,
                             const double* dconv, int F, double* dct, double* dw) noexcept nogil


cdef inline void _xdl_conv_image(const floating* xpad, int Wp, int OH, int OW, int K,
                                 const int* off, const floating* w, const floating* bias, int F,
                                 floating* out) noexcept nogil:
    # Output rows in panels of 2 vectors: AVX-512's where they pad a row no
    # more than AVX2's (a 16-pixel float32 row would fill half of one).
    cdef bint wide = _wide_panels(OW, sizeof(floating))
    if floating is float:
        if wide:
            xdl_conv_image_zs(xpad, Wp, OH, OW, K, off, w, bias, F, out)
        else:
            xdl_conv_image_s(xpad, Wp, OH, OW, K, off, w, bias, F, out)
    else:
        if wide:
            xdl_conv_image_zd(xpad, Wp, OH, OW, K, off, w, bias, F, out)
        else:
            xdl_conv_image_d(xpad, Wp, OH, OW, K, off, w, bias, F, out)


cdef inline void _xdl_conv_dw_image(const floating* xpad, int Wp, int OH, int OW, int K,
                                    const int* off, const floating* dconv, int F, floating* dct,
                                    floating* dw) noexcept nogil:
    # (AVX2 only: the AVX-512 build was no faster here, 2.96 against 3.04 ms
    # for the CNN's filter gradient on two threads, 5.74 against 5.87 in float64.)
    if floating is float:
        xdl_conv_dw_image_s(xpad, Wp, OH, OW, K, off, dconv, F, dct, dw)
    else:
        xdl_conv_dw_image_d(xpad, Wp, OH, OW, K, off, dconv, F, dct, dw)


# Whether the AVX2 + FMA kernels are used: the CPU has both and
# set_simd_kernels has not turned them off (a C variable: the kernels read
# it without the GIL).
cdef bint _simd_kernels = xdl_cpu_has_avx2_fma()
# Whether those kernels run in their AVX-512 build (vectors twice as wide).
cdef bint _avx512_kernels = _simd_kernels and xdl_cpu_has_avx512()

cdef enum:
    # Readable elements past the end of an image read in place: a last
    # panel's spare lanes (2 vectors of AVX-512 floats at most).
    SIMD_SPARE = 32


cdef inline bint _wide_panels(int n, int elem_bytes) noexcept nogil:
    # Whether a tile row of n elements runs on the AVX-512 build: the CPU
    # has it, and its panels of 2 vectors (128 bytes) pad n to no more
    # elements than AVX2's (64 bytes).
    cdef int narrow = 64 // elem_bytes, wide = 128 // elem_bytes
    return _avx512_kernels and (n + wide - 1) // wide * wide == (n + narrow - 1) // narrow * narrow


def avx512_kernels_available():
    """True when this CPU has AVX-512 (and AVX2 and FMA): xdl_conv_image's wider build."""
    return bool(xdl_cpu_has_avx512())


def _wide_panels_for(int n, int itemsize):
    """Whether a tile row of n elements of itemsize bytes runs on the AVX-512 build now (tests)."""
    return bool(_wide_panels(n, itemsize))


def set_avx512_kernels(enabled):
    """
    Let the convolution's image kernel (xdl_conv_image: the stride-1
    forward product and dx) run its AVX-512 build where that pads an output
    row no more than AVX2 (True, the default where the CPU has AVX-512), or
    always its AVX2 build (False); for tests and benchmarks. The two give
    the same bits. Returns the previous setting. Raises ValueError when
    enabled on a CPU without AVX-512.
    """
    global _avx512_kernels
    previous = _avx512_kernels
    if enabled and not xdl_cpu_has_avx512():
        raise ValueError("set_avx512_kernels(True): this CPU lacks AVX-512")
    _avx512_kernels = bool(enabled)
    return previous


def simd_kernels_available():
    """True when this CPU has AVX2 and FMA, which the kernels of _cpu_gemm.h need."""
    return bool(xdl_cpu_has_avx2_fma())


def set_simd_kernels(enabled):
    """
    Use (True, the default where the CPU allows) or not (False: OpenBLAS, as on
    other CPUs) the AVX2 + FMA kernels; for tests and benchmarks. Returns the
    previous setting. Raises ValueError when enabled on a CPU without them.
    """
    global _simd_kernels
    previous = _simd_kernels
    if enabled and not xdl_cpu_has_avx2_fma():
        raise ValueError("set_simd_kernels(True): this CPU lacks AVX2 or FMA")
    _simd_kernels = bool(enabled)
    return previous
