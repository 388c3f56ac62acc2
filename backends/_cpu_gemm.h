/* Matrix-product kernels on CPUs with AVX2 and FMA (used by
   _cpu_gemm.pxi; xdl/DESIGN.md, "The CPU kernels", has the measurements).

   A register tile of 6 rows by 2 vectors (16 floats, 8 doubles): a
   broadcast element of one operand times two vectors of the other, summed
   in 12 accumulators. It runs the affine layer's backward products, dx =
   dout @ w.T (float32; in float64 OpenBLAS was faster: 21.7 against 25.3
   ms for the CNN's 8192 x 500 layer on one thread) and dw = x.T @ dout +
   reg * w (float32 and float64: OpenBLAS packed dout again for every
   block, and the float64 sweep went 22.4 -> 20.3 ms on one thread, 11.5
   -> 10.7 on two), one block of rows of w at a time, and a stride-1 convolution's
   forward product and filter gradient without im2col, in both types
   (_cpu_gemm_typed.h, included here once per type). The rest of the
   extension is built for baseline x86-64; these functions carry
   target("avx2,fma") and are called only when xdl_cpu_has_avx2_fma() says
   the CPU has both. The convolution's image kernel is also built for
   AVX-512 (below: target("avx512f,avx2,fma"), behind xdl_cpu_has_avx512()). */
#ifndef XDL_CPU_GEMM_H
#define XDL_CPU_GEMM_H

#include <string.h>

#define XDL_SK_MR 6        /* rows of the register tile */
#define XDL_AFFINE_KC 256  /* the products' sums are taken this many terms at a time */

/* Prefetching the next block's rows of w and dw while this block is
   computed: lines [done, na + nb) of two contiguous regions, a (na lines)
   then b (nb lines), a share before each tile. */
typedef struct { const char* a; long na; const char* b; long nb; long done; } xdl_prefetch;

#if defined(_MSC_VER)
static long long xdl_load_relaxed(long long *p) { return *(volatile long long *)p; }
#else
static long long xdl_load_relaxed(long long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define XDL_AVX2 __attribute__((target("avx2,fma")))

static int xdl_cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Row tiles: m rows in ceil(m / 6) tiles of nearly equal height; tile t is
   rows [xdl_tile_lo(m, tiles, t), xdl_tile_lo(m, tiles, t + 1)). */
static inline int xdl_tiles(int m) { return (m + XDL_SK_MR - 1) / XDL_SK_MR; }
static inline int xdl_tile_lo(int m, int tiles, int t) { return (int)((long)m * t / tiles); }

static XDL_AVX2 inline void xdl_prefetch_upto(xdl_prefetch* pf, long upto) {
    for (; pf->done < upto; pf->done++) {
        long i = pf->done;
        _mm_prefetch(i < pf->na ? pf->a + 64 * i : pf->b + 64 * (i - pf->na), _MM_HINT_T0);
    }
}

/* The vector operations of the typed kernels that read alike in every
   width: XDL_VECTOR_OPS(target, suffix, element, vector, _mm256 or _mm512,
   ps or pd). A broadcast is set1 of the element (one vbroadcastss/sd from
   memory). */
#define XDL_VECTOR_OPS(TARGET, S, T, V, W, X)                                              \
    static TARGET inline V xdl_zero_##S(void) { return W##_setzero_##X(); }               \
    static TARGET inline V xdl_loadu_##S(const T* p) { return W##_loadu_##X(p); }         \
    static TARGET inline void xdl_storeu_##S(T* p, V v) { W##_storeu_##X(p, v); }         \
    static TARGET inline V xdl_bcast_##S(const T* p) { return W##_set1_##X(*p); }         \
    static TARGET inline V xdl_set1_##S(T x) { return W##_set1_##X(x); }                  \
    static TARGET inline V xdl_fmadd_##S(V a, V b, V c) { return W##_fmadd_##X(a, b, c); }

/* AVX2: float (8 lanes) and double (4 lanes), with their lane masks,
   masked loads and stores, and in-register transposes. */
XDL_VECTOR_OPS(XDL_AVX2, s, float, __m256, _mm256, ps)
XDL_VECTOR_OPS(XDL_AVX2, d, double, __m256d, _mm256, pd)

static XDL_AVX2 inline __m256i xdl_lanes_below_s(int n) {  /* lanes [0, n) set */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static XDL_AVX2 inline __m256 xdl_maskload_s(const float* p, __m256i m) {
    return _mm256_maskload_ps(p, m);
}
static XDL_AVX2 inline void xdl_maskstore_s(float* p, __m256i m, __m256 v) {
    _mm256_maskstore_ps(p, m, v);
}
static XDL_AVX2 inline void xdl_transpose_s(__m256* r) {  /* 8 x 8, in place */
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

static XDL_AVX2 inline __m256i xdl_lanes_below_d(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
static XDL_AVX2 inline __m256d xdl_maskload_d(const double* p, __m256i m) {
    return _mm256_maskload_pd(p, m);
}
static XDL_AVX2 inline void xdl_maskstore_d(double* p, __m256i m, __m256d v) {
    _mm256_maskstore_pd(p, m, v);
}
static XDL_AVX2 inline void xdl_transpose_d(__m256d* r) {  /* 4 x 4, in place */
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20); r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31); r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* CALL(MR, ...) with the constant MR = mr, for mr = 1..6: one inlined copy
   of the tile per height. */
#define XDL_BY_HEIGHT(mr, CALL, ...)                         \
    switch (mr) {                                            \
    case 6: CALL(6, __VA_ARGS__); break;                     \
    case 5: CALL(5, __VA_ARGS__); break;                     \
    case 4: CALL(4, __VA_ARGS__); break;                     \
    case 3: CALL(3, __VA_ARGS__); break;                     \
    case 2: CALL(2, __VA_ARGS__); break;                     \
    default: CALL(1, __VA_ARGS__); break;                    \
    }

#define XDL_TARGET XDL_AVX2
#define XDL_MASK __m256i
#define XDL_T float
#define XDL_V __m256
#define XDL_L 8
#define XDL_F(name) name##_s
#include "_cpu_gemm_typed.h"
#undef XDL_T
#undef XDL_V
#undef XDL_L
#undef XDL_F

#define XDL_T double
#define XDL_V __m256d
#define XDL_L 4
#define XDL_F(name) name##_d
#include "_cpu_gemm_typed.h"
#undef XDL_T
#undef XDL_V
#undef XDL_L
#undef XDL_F
#undef XDL_TARGET
#undef XDL_MASK

/* The stride-1 convolution's image kernel (xdl_conv_image) again with
   AVX-512: vectors of 16 floats or 8 doubles, tiles of 6 filters by 32
   floats or 16 doubles of an output row. On this Zen 4 (which runs a
   512-bit FMA as two 256-bit halves: the same peak) the CNN's convolution
   forward took 4.84 against 5.08 ms on one thread and 2.46 against 2.58
   on two (float32), 9.76 against 10.32 and 4.91 against 5.18 (float64);
   fewer instructions per FMA. The filter gradient was no faster, and the
   affine layer's kernels stay AVX2. */
#define XDL_AVX512 __attribute__((target("avx512f,avx2,fma")))

static int xdl_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return xdl_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
}

XDL_VECTOR_OPS(XDL_AVX512, zs, float, __m512, _mm512, ps)
XDL_VECTOR_OPS(XDL_AVX512, zd, double, __m512d, _mm512, pd)

static XDL_AVX512 inline __mmask16 xdl_lanes_below_zs(int n) {  /* lanes [0, n) set */
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}
static XDL_AVX512 inline __m512 xdl_maskload_zs(const float* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
}
static XDL_AVX512 inline void xdl_maskstore_zs(float* p, __mmask16 m, __m512 v) {
    _mm512_mask_storeu_ps(p, m, v);
}
static XDL_AVX512 inline __mmask8 xdl_lanes_below_zd(int n) {
    return n <= 0 ? 0 : n >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << n) - 1);
}
static XDL_AVX512 inline __m512d xdl_maskload_zd(const double* p, __mmask8 m) {
    return _mm512_maskz_loadu_pd(m, p);
}
static XDL_AVX512 inline void xdl_maskstore_zd(double* p, __mmask8 m, __m512d v) {
    _mm512_mask_storeu_pd(p, m, v);
}

#define XDL_TARGET XDL_AVX512
#define XDL_IMAGE_ONLY
#define XDL_MASK __mmask16
#define XDL_T float
#define XDL_V __m512
#define XDL_L 16
#define XDL_F(name) name##_zs
#include "_cpu_gemm_typed.h"
#undef XDL_T
#undef XDL_V
#undef XDL_L
#undef XDL_F
#undef XDL_MASK

#define XDL_MASK __mmask8
#define XDL_T double
#define XDL_V __m512d
#define XDL_L 8
#define XDL_F(name) name##_zd
#include "_cpu_gemm_typed.h"
#undef XDL_T
#undef XDL_V
#undef XDL_L
#undef XDL_F
#undef XDL_TARGET
#undef XDL_MASK


/* Adam (AdamW) and RMSprop over n elements in AVX2 or AVX-512 vectors (8 or 16 floats,
   4 or 8 doubles): the operations of _cpu_elementwise.pxi's
   xdl_adam_span_f/_d in their order, each correctly rounded, and no fused
   multiply-add (GCC would contract the mul and add intrinsics into one
   under these targets: fp-contract=off), so the same bits as the SSE2
   and scalar loops. Both are bound by the division and the square root
   as much as by memory. Timed in one process, in turn with the SSE2
   build, on 4.1 M weights (the CNN's W2) from memory, medians of 60-80
   calls in two runs: Adam float32 2.68 -> 1.97 and 3.05 -> 2.67 ms on
   one thread, 1.50 -> 1.24 and 2.10 -> 2.06 on two (there at the
   memory's speed); float64 7.90 -> 4.72 and 8.29 -> 5.73 on one thread,
   4.13 -> 2.91 and 4.58 -> 3.30 on two. RMSprop float64 4.24 -> 2.53 ms
   on two threads, float32 1.36 -> 1.06. In cache (65536 elements, one
   thread), per 4.1 M elements of Adam: SSE2 3.62 ms, AVX2 2.15, AVX-512
   1.61. Returns the elements done (the rest is left to the caller). */
#define XDL_ADAM_SPAN(TARGET, S, T, V, W, X, L)                                              \
    static TARGET Py_ssize_t xdl_adam_span_##S(const T* w, const T* dw, T* m, T* v, T* next_w, \
                                               Py_ssize_t n, T b1, T k1, T b2, T k2,          \
                                               T neg_step, T eps, T shrink) {                 \
        Py_ssize_t i = 0;                                                                     \
        V B1 = W##_set1_##X(b1), K1 = W##_set1_##X(k1), B2 = W##_set1_##X(b2);                \
        V K2 = W##_set1_##X(k2), St = W##_set1_##X(neg_step), E = W##_set1_##X(eps);          \
        V R = W##_set1_##X(shrink);                                                           \
        for (; i + L <= n; i += L) {                                                          \
            V g = W##_loadu_##X(dw + i);                                                      \
            V mi = W##_add_##X(W##_mul_##X(W##_loadu_##X(m + i), B1), W##_mul_##X(K1, g));    \
            V vi = W##_add_##X(W##_mul_##X(W##_loadu_##X(v + i), B2),                         \
                               W##_mul_##X(W##_mul_##X(g, g), K2));                           \
            V nw = W##_add_##X(                                                               \
                W##_mul_##X(W##_div_##X(mi, W##_add_##X(W##_sqrt_##X(vi), E)), St),          \
                W##_mul_##X(W##_loadu_##X(w + i), R));                                        \
            W##_storeu_##X(m + i, mi);                                                        \
            W##_storeu_##X(v + i, vi);                                                        \
            W##_storeu_##X(next_w + i, nw);                                                   \
        }                                                                                     \
        return i;                                                                             \
    }
#if defined(__clang__)
#define XDL_NO_CONTRACT
#else
#define XDL_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#endif
XDL_ADAM_SPAN(XDL_AVX2 XDL_NO_CONTRACT, ys, float, __m256, _mm256, ps, 8)
XDL_ADAM_SPAN(XDL_AVX2 XDL_NO_CONTRACT, yd, double, __m256d, _mm256, pd, 4)
XDL_ADAM_SPAN(XDL_AVX512 XDL_NO_CONTRACT, zs, float, __m512, _mm512, ps, 16)
XDL_ADAM_SPAN(XDL_AVX512 XDL_NO_CONTRACT, zd, double, __m512d, _mm512, pd, 8)

/* RMSprop likewise: the operations of xdl_rmsprop_span_f/_d in their order. */
#define XDL_RMSPROP_SPAN(TARGET, S, T, V, W, X, L)                                           \
    static TARGET Py_ssize_t xdl_rmsprop_span_##S(const T* w, const T* dw, T* cache,          \
                                                  T* next_w, Py_ssize_t n, T decay, T keep,   \
                                                  T neg_lr, T eps) {                          \
        Py_ssize_t i = 0;                                                                     \
        V D = W##_set1_##X(decay), K = W##_set1_##X(keep), Lr = W##_set1_##X(neg_lr);        \
        V E = W##_set1_##X(eps);                                                              \
        for (; i + L <= n; i += L) {                                                          \
            V g = W##_loadu_##X(dw + i);                                                      \
            V ci = W##_add_##X(W##_mul_##X(W##_loadu_##X(cache + i), D),                      \
                               W##_mul_##X(W##_mul_##X(g, g), K));                            \
            W##_storeu_##X(cache + i, ci);                                                    \
            W##_storeu_##X(next_w + i, W##_add_##X(                                           \
                W##_mul_##X(W##_div_##X(g, W##_add_##X(W##_sqrt_##X(ci), E)), Lr),            \
                W##_loadu_##X(w + i)));                                                       \
        }                                                                                     \
        return i;                                                                             \
    }
XDL_RMSPROP_SPAN(XDL_AVX2 XDL_NO_CONTRACT, ys, float, __m256, _mm256, ps, 8)
XDL_RMSPROP_SPAN(XDL_AVX2 XDL_NO_CONTRACT, yd, double, __m256d, _mm256, pd, 4)
XDL_RMSPROP_SPAN(XDL_AVX512 XDL_NO_CONTRACT, zs, float, __m512, _mm512, ps, 16)
XDL_RMSPROP_SPAN(XDL_AVX512 XDL_NO_CONTRACT, zd, double, __m512d, _mm512, pd, 8)


/* dx[:, d0:d0+dn] = dout (N, M) @ w[d0:d0+dn].T, dx (N, D): panels of 16 rows
   of w, packed transposed XDL_AFFINE_KC columns at a time into scratch
   (XDL_AFFINE_KC * 16 floats); prefetches up to line pf_upto of pf. */
static XDL_AVX2 void xdl_affine_dx_block(int N, int D, int M, const float* w, const float* dout,
                                         float* dx, int d0, int dn, float* scratch,
                                         xdl_prefetch* pf, long pf_upto) {
    int tiles = xdl_tiles(N);
    long calls = (long)((dn + 15) / 16) * ((M + XDL_AFFINE_KC - 1) / XDL_AFFINE_KC) * tiles;
    long call = 0, pf_from = pf->done;
    for (int j0 = 0; j0 < dn; j0 += 16) {
        int nn = dn - j0 < 16 ? dn - j0 : 16;
        for (int k0 = 0; k0 < M; k0 += XDL_AFFINE_KC) {
            int kc = M - k0 < XDL_AFFINE_KC ? M - k0 : XDL_AFFINE_KC;
            xdl_pack_transposed_s(scratch, w + (long)(d0 + j0) * M + k0, M, nn, kc);
            for (int t = 0; t < tiles; t++) {
                int i0 = xdl_tile_lo(N, tiles, t), i1 = xdl_tile_lo(N, tiles, t + 1);
                float* c = dx + (long)i0 * D + d0 + j0;
                xdl_prefetch_upto(pf, pf_from + (pf_upto - pf_from) * ++call / calls);
                xdl_tiles_of_s(i1 - i0, kc, dout + (long)i0 * M + k0, M, 1, scratch, 16, c, D,
                             nn, k0 ? c : NULL, D, 1);
            }
        }
    }
}

/* dw[d0:d0+dn] = x[:, d0:d0+dn].T @ dout + reg * w[d0:d0+dn]; x (N, D),
   dout (N, M), dw (D, M), in panels of NR = 2 vectors of dw's columns:
   xdl_affine_dw_block in float32 (NR 16), xdl_affine_dw_block_d in
   float64 (NR 8). dout_tail: NULL when M is a multiple of NR, else (N, NR):
   dout's last M % NR columns, zero-padded. scratch holds XDL_AFFINE_KC * dn
   elements (x's block, k-major); prefetches up to line pf_upto of pf. */
#define XDL_AFFINE_DW_BLOCK(NAME, T, S, NR)                                                    \
    static XDL_AVX2 void NAME(int N, int D, int M, const T* x, const T* w, const T* dout,      \
                              const T* dout_tail, T* dw, T reg, int d0, int dn, T* scratch,    \
                              xdl_prefetch* pf, long pf_upto) {                                \
        int tiles = xdl_tiles(dn), panels = (M + NR - 1) / NR;                                 \
        long calls = (long)((N + XDL_AFFINE_KC - 1) / XDL_AFFINE_KC) * panels * tiles;        \
        long call = 0, pf_from = pf->done;                                                     \
        for (int k0 = 0; k0 < N; k0 += XDL_AFFINE_KC) {                                        \
            int kc = N - k0 < XDL_AFFINE_KC ? N - k0 : XDL_AFFINE_KC;                          \
            for (int k = 0; k < kc; k++)                                                       \
                memcpy(scratch + k * dn, x + (long)(k0 + k) * D + d0, dn * sizeof(T));         \
            for (int p = 0; p < panels; p++) {                                                 \
                int j0 = NR * p, nn = M - j0 < NR ? M - j0 : NR;                               \
                const T* b = nn == NR ? dout + (long)k0 * M + j0 : dout_tail + (long)k0 * NR;  \
                long ldb = nn == NR ? M : NR;                                                  \
                for (int t = 0; t < tiles; t++) {                                              \
                    int r0 = xdl_tile_lo(dn, tiles, t), r1 = xdl_tile_lo(dn, tiles, t + 1);    \
                    T* c = dw + (long)(d0 + r0) * M + j0;                                      \
                    const T* y = k0 ? c : (reg != 0 ? w + (long)(d0 + r0) * M + j0 : NULL);   \
                    xdl_prefetch_upto(pf, pf_from + (pf_upto - pf_from) * ++call / calls);    \
                    xdl_tiles_of_##S(r1 - r0, kc, scratch + r0, 1, dn, b, ldb, c, M, nn, y, M, \
                                     k0 ? 1 : reg);                                            \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }
XDL_AFFINE_DW_BLOCK(xdl_affine_dw_block, float, s, 16)
XDL_AFFINE_DW_BLOCK(xdl_affine_dw_block_d, double, d, 8)

#else
/* Without GCC or Clang on x86-64 the kernels are never selected
   (xdl_cpu_has_avx2_fma() is 0); these definitions only let the module
   build. */
static int xdl_cpu_has_avx2_fma(void) { return 0; }
static int xdl_cpu_has_avx512(void) { return 0; }
static void xdl_affine_dx_block(int N, int D, int M, const float* w, const float* dout,
                                float* dx, int d0, int dn, float* scratch, xdl_prefetch* pf,
                                long pf_upto) {}
static void xdl_affine_dw_block(int N, int D, int M, const float* x, const float* w,
                                const float* dout, const float* dout_tail, float* dw, float reg,
                                int d0, int dn, float* scratch, xdl_prefetch* pf,
                                long pf_upto) {}
static void xdl_affine_dw_block_d(int N, int D, int M, const double* x, const double* w,
                                  const double* dout, const double* dout_tail, double* dw,
                                  double reg, int d0, int dn, double* scratch, xdl_prefetch* pf,
                                  long pf_upto) {}
#define XDL_NO_ADAM(T, S) static Py_ssize_t xdl_adam_span_##S(const T* w, const T* dw, T* m, \
    T* v, T* next_w, Py_ssize_t n, T b1, T k1, T b2, T k2, T neg_step, T eps, T shrink) { return 0; }
XDL_NO_ADAM(float, ys)
XDL_NO_ADAM(double, yd)
XDL_NO_ADAM(float, zs)
XDL_NO_ADAM(double, zd)
#define XDL_NO_RMSPROP(T, S) static Py_ssize_t xdl_rmsprop_span_##S(const T* w, const T* dw, \
    T* cache, T* next_w, Py_ssize_t n, T decay, T keep, T neg_lr, T eps) { return 0; }
XDL_NO_RMSPROP(float, ys)
XDL_NO_RMSPROP(double, yd)
XDL_NO_RMSPROP(float, zs)
XDL_NO_RMSPROP(double, zd)
#define XDL_NO_CONV(T, S)                                                                      \
    static void xdl_conv_image_##S(const T* xpad, int Wp, int OH, int OW, int K, const int* off, \
                                   const T* w, const T* bias, int F, T* out) {}                \
    static void xdl_conv_dw_image_##S(const T* xpad, int Wp, int OH, int OW, int K,             \
                                      const int* off, const T* dconv, int F, T* dct, T* dw) {}
XDL_NO_CONV(float, s)
XDL_NO_CONV(double, d)
XDL_NO_CONV(float, zs)
XDL_NO_CONV(double, zd)
#endif

#endif  /* XDL_CPU_GEMM_H */
