# Our own float32 matrix-product kernels for the affine layer's backward
# pass on CPUs with AVX2 and FMA (included by _cpu_kernels.pyx): a 6x16
# register tile, selected at run time (the rest of the extension is built
# for baseline x86-64). OpenBLAS's small-matrix calls, one per block of
# rows of w, re-packed dout for every call and left the block's rows of dw
# to be fetched from memory on the first store; here dout is read in place,
# each block's rows of w are packed transposed once, and the next block's
# rows of w and dw are prefetched while this block is computed
# (xdl/DESIGN.md, "The CPU kernels", has the measurements).

cdef extern from *:
    """
    #if defined(_MSC_VER)
    static long long xdl_load_relaxed(long long *p) { return *(volatile long long *)p; }
    #else
    static long long xdl_load_relaxed(long long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #include <immintrin.h>
    #define XDL_AVX2 __attribute__((target("avx2,fma")))
    #define XDL_SK_MR 6
    #define XDL_AFFINE_KC 256   /* k summed this many at a time (the scratch's rows) */

    static int xdl_cpu_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }

    /* The register tile, for MR = 1..6 rows: C[0:MR, 0:nn] (row stride ldc) =
       sum over k < kc of A[r, k] * B[k, 0:16], plus beta * Y when y is not NULL
       (Y (MR, nn), row stride ldy; y == c adds to C). A[r, k] is a[r*rsa + k*csa];
       B[k, j] is b[k*ldb + j], 16 readable columns (zero padding past nn).
       Each element is summed in k order, one fused multiply-add at a time: the
       result does not depend on the threads. (The backslashes end up joining
       the macro into one line, as the C preprocessor would.) */
    #define XDL_SK(MR)                                                                            \
    static XDL_AVX2 void xdl_sk##MR(int kc, const float* a, long rsa, long csa, const float* b,   \
                                    long ldb, float* c, long ldc, int nn, const float* y,        \
                                    long ldy, float beta) {                                      \
        __m256 acc[MR][2];                                                                        \
        _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                    \
            acc[r][0] = _mm256_setzero_ps(); acc[r][1] = _mm256_setzero_ps(); }                   \
        for (int k = 0; k < kc; k++) {                                                            \
            __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);      \
            _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                \
                __m256 av = _mm256_broadcast_ss(a + r * rsa + k * csa);                           \
                acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);                                   \
                acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]); }                                 \
        }                                                                                         \
        __m256 bv = _mm256_set1_ps(beta);                                                         \
        if (nn == 16) {                                                                           \
            _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                \
                __m256 v0 = acc[r][0], v1 = acc[r][1];                                            \
                if (y) { v0 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(y + r * ldy), v0);               \
                         v1 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(y + r * ldy + 8), v1); }         \
                _mm256_storeu_ps(c + r * ldc, v0); _mm256_storeu_ps(c + r * ldc + 8, v1); }        \
        } else {                                                                                  \
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                       \
            __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nn), lane);                         \
            __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nn - 8), lane);                     \
            _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                \
                __m256 v0 = acc[r][0], v1 = acc[r][1];                                            \
                if (y) { v0 = _mm256_fmadd_ps(bv, _mm256_maskload_ps(y + r * ldy, m0), v0);        \
                         v1 = _mm256_fmadd_ps(bv, _mm256_maskload_ps(y + r * ldy + 8, m1), v1); }  \
                _mm256_maskstore_ps(c + r * ldc, m0, v0);                                         \
                _mm256_maskstore_ps(c + r * ldc + 8, m1, v1); }                                   \
        }                                                                                         \
    }
    XDL_SK(1) XDL_SK(2) XDL_SK(3) XDL_SK(4) XDL_SK(5) XDL_SK(6)

    static XDL_AVX2 void xdl_sk(int mr, int kc, const float* a, long rsa, long csa, const float* b,
                                long ldb, float* c, long ldc, int nn, const float* y, long ldy,
                                float beta) {
        switch (mr) {
        case 6: xdl_sk6(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        case 5: xdl_sk5(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        case 4: xdl_sk4(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        case 3: xdl_sk3(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        case 2: xdl_sk2(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        default: xdl_sk1(kc, a, rsa, csa, b, ldb, c, ldc, nn, y, ldy, beta); break;
        }
    }

    /* Row tiles: m rows in ceil(m/6) tiles of nearly equal height; tile t is rows [lo, hi). */
    static inline int xdl_tiles(int m) { return (m + XDL_SK_MR - 1) / XDL_SK_MR; }
    static inline int xdl_tile_lo(int m, int tiles, int t) { return (int)((long)m * t / tiles); }

    /* 8x8 transpose of r[0..7] in place. */
    static XDL_AVX2 inline void xdl_transpose8(__m256* r) {
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
        r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
        r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
        r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
    }

    /* pack (kc, 16) = rows [0, nn) of w (row stride ldw), columns [0, kc), transposed; zero past nn. */
    static XDL_AVX2 void xdl_pack_transposed(float* pack, const float* w, long ldw, int nn, int kc) {
        int j8 = 0;
        for (; j8 + 8 <= nn; j8 += 8) {
            int k = 0;
            for (; k + 8 <= kc; k += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(w + (j8 + i) * ldw + k);
                xdl_transpose8(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(pack + (k + i) * 16 + j8, r[i]);
            }
            for (; k < kc; k++)
                for (int i = 0; i < 8; i++) pack[k * 16 + j8 + i] = w[(j8 + i) * ldw + k];
        }
        for (int k = 0; k < kc; k++) {
            for (int j = j8; j < nn; j++) pack[k * 16 + j] = w[j * ldw + k];
            for (int j = nn; j < 16; j++) pack[k * 16 + j] = 0.f;
        }
    }

    /* Prefetching the next block's rows of w and dw while this block is computed: lines
       [done, total) of two contiguous regions, a share before each kernel call. */
    typedef struct { const char* a; long na; const char* b; long nb; long done; } xdl_prefetch;

    static XDL_AVX2 inline void xdl_prefetch_upto(xdl_prefetch* pf, long upto) {
        for (; pf->done < upto; pf->done++) {
            long i = pf->done;
            _mm_prefetch(i < pf->na ? pf->a + 64 * i : pf->b + 64 * (i - pf->na), _MM_HINT_T0);
        }
    }

    /* dx[:, d0:d0+dn] = dout (N, M) @ w[d0:d0+dn].T; dx (N, D) C-contiguous. scratch: 256*16 floats. */
    static XDL_AVX2 void xdl_saffine_dx_block(int N, int D, int M, const float* w, const float* dout,
                                       float* dx, int d0, int dn, float* scratch, xdl_prefetch* pf,
                                       long pf_upto) {
        int tiles = xdl_tiles(N);
        long calls = (long)((dn + 15) / 16) * ((M + XDL_AFFINE_KC - 1) / XDL_AFFINE_KC) * tiles, call = 0;
        long pf_from = pf->done;
        for (int j0 = 0; j0 < dn; j0 += 16) {
            int nn = dn - j0 < 16 ? dn - j0 : 16;
            for (int k0 = 0; k0 < M; k0 += XDL_AFFINE_KC) {
                int kc = M - k0 < XDL_AFFINE_KC ? M - k0 : XDL_AFFINE_KC;
                xdl_pack_transposed(scratch, w + (long)(d0 + j0) * M + k0, M, nn, kc);
                for (int t = 0; t < tiles; t++) {
                    int i0 = xdl_tile_lo(N, tiles, t), i1 = xdl_tile_lo(N, tiles, t + 1);
                    float* c = dx + (long)i0 * D + d0 + j0;
                    xdl_prefetch_upto(pf, pf_from + (pf_upto - pf_from) * ++call / calls);
                    xdl_sk(i1 - i0, kc, dout + (long)i0 * M + k0, M, 1, scratch, 16, c, D, nn,
                           k0 ? c : NULL, D, 1.f);
                }
            }
        }
    }

    /* dw[d0:d0+dn] = x[:, d0:d0+dn].T @ dout + reg * w[d0:d0+dn]; x (N, D), dout (N, M), dw (D, M).
       dout_tail: NULL when M is a multiple of 16, else (N, 16): dout's last M % 16 columns,
       zero-padded. scratch: 256 * dn floats. */
    static XDL_AVX2 void xdl_saffine_dw_block(int N, int D, int M, const float* x, const float* w,
                                       const float* dout, const float* dout_tail, float* dw,
                                       float reg, int d0, int dn, float* scratch, xdl_prefetch* pf,
                                       long pf_upto) {
        int tiles = xdl_tiles(dn), panels = (M + 15) / 16;
        long calls = (long)((N + XDL_AFFINE_KC - 1) / XDL_AFFINE_KC) * panels * tiles, call = 0;
        long pf_from = pf->done;
        for (int k0 = 0; k0 < N; k0 += XDL_AFFINE_KC) {
            int kc = N - k0 < XDL_AFFINE_KC ? N - k0 : XDL_AFFINE_KC;
            for (int k = 0; k < kc; k++)
                memcpy(scratch + k * dn, x + (long)(k0 + k) * D + d0, dn * sizeof(float));
            for (int p = 0; p < panels; p++) {
                int j0 = 16 * p, nn = M - j0 < 16 ? M - j0 : 16;
                const float* b = nn == 16 ? dout + (long)k0 * M + j0 : dout_tail + (long)k0 * 16;
                long ldb = nn == 16 ? M : 16;
                for (int t = 0; t < tiles; t++) {
                    int r0 = xdl_tile_lo(dn, tiles, t), r1 = xdl_tile_lo(dn, tiles, t + 1);
                    float* c = dw + (long)(d0 + r0) * M + j0;
                    const float* y = k0 ? c : (reg != 0 ? w + (long)(d0 + r0) * M + j0 : NULL);
                    xdl_prefetch_upto(pf, pf_from + (pf_upto - pf_from) * ++call / calls);
                    xdl_sk(r1 - r0, kc, scratch + r0, 1, dn, b, ldb, c, M, nn, y, M, k0 ? 1.f : reg);
                }
            }
        }
    }

    #else
    /* Without GCC/Clang on x86-64 the kernels are never selected
       (xdl_cpu_has_avx2_fma() is 0): these definitions only let the module
       build. */
    typedef struct { const char* a; long na; const char* b; long nb; long done; } xdl_prefetch;
    #define XDL_AFFINE_KC 256
    static int xdl_cpu_has_avx2_fma(void) { return 0; }
    static void xdl_saffine_dx_block(int N, int D, int M, const float* w, const float* dout,
                                     float* dx, int d0, int dn, float* scratch,
                                     xdl_prefetch* pf, long pf_upto) {}
    static void xdl_saffine_dw_block(int N, int D, int M, const float* x, const float* w,
                                     const float* dout, const float* dout_tail, float* dw,
                                     float reg, int d0, int dn, float* scratch,
                                     xdl_prefetch* pf, long pf_upto) {}
    #endif
    """


cdef extern from *:
    ctypedef struct xdl_prefetch:
        # Lines [done, na + nb) of two regions to prefetch: a (na lines), then b.
        const char* a
        long na
        const char* b
        long nb
        long done
    int XDL_AFFINE_KC
    long long xdl_load_relaxed(long long* p) noexcept nogil
    int xdl_cpu_has_avx2_fma() nogil
    void xdl_saffine_dx_block(int N, int D, int M, const float* w, const float* dout,
                              float* dx, int d0, int dn, float* scratch, xdl_prefetch* pf,
                              long pf_upto) noexcept nogil
    void xdl_saffine_dw_block(int N, int D, int M, const float* x, const float* w,
                              const float* dout, const float* dout_tail, float* dw, float reg,
                              int d0, int dn, float* scratch, xdl_prefetch* pf,
                              long pf_upto) noexcept nogil


# Whether the AVX2 + FMA kernels may be used: the CPU has both and
# set_simd_kernels has not turned them off.
_simd_kernels = bool(xdl_cpu_has_avx2_fma())


def simd_kernels_available():
    """True when this CPU has AVX2 and FMA, which the float32 affine backward kernels need."""
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
