/* Matrix-product kernels on CPUs with AVX2 and FMA (used by
   _cpu_gemm.pxi; xdl/DESIGN.md, "The CPU kernels", has the measurements).

   float32 dx = dout @ w.T and dw = x.T @ dout + reg * w, one block of rows
   of w at a time, and a stride-1 convolution's forward product and filter
   gradient without im2col, on a register tile of 6 rows by 16 columns: a broadcast
   element of one operand times two vectors of 8 of the other, summed in 12
   accumulators. The rest of the extension is built for baseline x86-64;
   these functions carry target("avx2,fma") and are called only when
   xdl_cpu_has_avx2_fma() says the CPU has both. (The same kernels for
   double, 6 x 8, were no faster than OpenBLAS here: 20.2-20.4 against
   20.3-20.8 ms on one thread, 10.8-10.9 against 10.3-10.5 ms on two, for
   the CNN's 8192 x 500 layer.) */
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

/* 8 x 8 transpose of r[0..7], in place. */
static XDL_AVX2 inline void xdl_transpose(__m256* r) {
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

/* The register tile, for MR = 1..6 rows (a constant once inlined):
   C[0:MR, 0:nn] (row stride ldc) = init + the sum over k < kc of
   A[r, k] * B[k, 0:16], plus beta * Y when y is not NULL (Y (MR, nn), row
   stride ldy; y == c adds to C). A[r, k] is a[r*rsa + k*csa]; B[k, j] is
   b[k*ldb + j], or with GATHER b[off[k] + j] (a convolution's columns read
   in place); 16 readable columns (padding past nn: zeros, or any values,
   as those lanes are never stored). init: NULL (zeros) or one value per
   row (the convolution's bias). Each element is summed in k order, one
   fused multiply-add at a time: the result does not depend on the threads. */
static XDL_AVX2 inline __attribute__((always_inline)) void xdl_tile(
        const int MR, const int GATHER, int kc, const float* a, long rsa, long csa,
        const float* b, long ldb, const int* off, float* c, long ldc, int nn, const float* y,
        long ldy, float beta, const float* init) {
    __m256 acc[XDL_SK_MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        acc[r][0] = init ? _mm256_set1_ps(init[r]) : _mm256_setzero_ps();
        acc[r][1] = acc[r][0];
    }
    for (int k = 0; k < kc; k++) {
        const float* bk = GATHER ? b + off[k] : b + k * ldb;
        __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 av = _mm256_broadcast_ss(a + r * rsa + k * csa);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    __m256 bv = _mm256_set1_ps(beta);
    if (nn == 16) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 v0 = acc[r][0], v1 = acc[r][1];
            if (y) {
                v0 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(y + r * ldy), v0);
                v1 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(y + r * ldy + 8), v1);
            }
            _mm256_storeu_ps(c + r * ldc, v0);
            _mm256_storeu_ps(c + r * ldc + 8, v1);
        }
    } else {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nn), lane);      /* lanes < nn */
        __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nn - 8), lane);  /* lanes < nn - 8 */
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 v0 = acc[r][0], v1 = acc[r][1];
            if (y) {
                v0 = _mm256_fmadd_ps(bv, _mm256_maskload_ps(y + r * ldy, m0), v0);
                v1 = _mm256_fmadd_ps(bv, _mm256_maskload_ps(y + r * ldy + 8, m1), v1);
            }
            _mm256_maskstore_ps(c + r * ldc, m0, v0);
            _mm256_maskstore_ps(c + r * ldc + 8, m1, v1);
        }
    }
}

/* pack (kc, 16) = rows [0, nn) of w (row stride ldw), columns [0, kc),
   transposed, zero past nn: the dx product's B operand (w.T), and a
   convolution's dout transposed for its filter gradient. */
static XDL_AVX2 void xdl_pack_transposed(float* pack, const float* w, long ldw, int nn, int kc) {
    int j = 0;
    for (; j + 8 <= nn; j += 8) {
        int k = 0;
        for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(w + (j + i) * ldw + k);
            xdl_transpose(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(pack + (k + i) * 16 + j, r[i]);
        }
        for (; k < kc; k++)
            for (int i = 0; i < 8; i++) pack[k * 16 + j + i] = w[(j + i) * ldw + k];
    }
    for (int k = 0; k < kc; k++) {
        for (int i = j; i < nn; i++) pack[k * 16 + i] = w[i * ldw + k];
        for (int i = nn; i < 16; i++) pack[k * 16 + i] = 0;
    }
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

/* The tile for mr = 1..6 rows (B in rows of stride ldb). */
static XDL_AVX2 void xdl_tiles_of(int mr, int kc, const float* a, long rsa, long csa,
                                  const float* b, long ldb, float* c, long ldc, int nn,
                                  const float* y, long ldy, float beta) {
    XDL_BY_HEIGHT(mr, xdl_tile, 0, kc, a, rsa, csa, b, ldb, NULL, c, ldc, nn, y, ldy, beta,
                  NULL)
}

/* The tile for mr = 1..6 rows with B's rows at b + off[k], from init (A
   row-major with row stride lda; no Y). */
static XDL_AVX2 void xdl_gathered_tiles_of(int mr, int kc, const float* a, long lda,
                                           const float* b, const int* off, float* c, long ldc,
                                           int nn, const float* init) {
    XDL_BY_HEIGHT(mr, xdl_tile, 1, kc, a, lda, 1, b, 0, off, c, ldc, nn, NULL, 0, 0, init)
}

/* One image's stride-1 convolution: out (F, OH*OW) = w (F, K) @ columns + b,
   the columns read in place from the padded image xpad (C, Hp, Wp): row
   k = (c, kh, kw) of column (oh, ow) is xpad[off[k] + oh*Wp + ow], with
   off[k] = (c*Hp + kh)*Wp + kw. No im2col: each panel of 16 output pixels
   of one row reads its K rows of 16 from the image (in the core's L1), for
   every register tile of filters. xpad needs 16 readable floats past its
   end (the last panel's spare lanes read them; they are never stored). */
static XDL_AVX2 void xdl_conv_image(const float* xpad, int Wp, int OH, int OW, int K,
                                    const int* off, const float* w, const float* bias, int F,
                                    float* out) {
    int tiles = xdl_tiles(F);
    long P = (long)OH * OW;
    for (int oh = 0; oh < OH; oh++) {
        for (int ow0 = 0; ow0 < OW; ow0 += 16) {
            int nn = OW - ow0 < 16 ? OW - ow0 : 16;
            for (int t = 0; t < tiles; t++) {
                int f0 = xdl_tile_lo(F, tiles, t), f1 = xdl_tile_lo(F, tiles, t + 1);
                xdl_gathered_tiles_of(f1 - f0, K, w + (long)f0 * K, K,
                                      xpad + (long)oh * Wp + ow0, off,
                                      out + f0 * P + (long)oh * OW + ow0, P, nn, bias + f0);
            }
        }
    }
}

/* The filter-gradient tile of one image, MR = 1..6 rows of K (a constant
   once inlined) by 16 filters: t[r][j] = the sum over the pixels (oh, ow),
   in order, of column k0 + r at (oh, ow), xpad[off[k0 + r] + oh*Wp + ow],
   times dct[(oh*OW + ow)*16 + j], the image's dconv transposed (one panel
   of 16 filters). */
static XDL_AVX2 inline __attribute__((always_inline)) void xdl_dw_tile(
        const int MR, const float* xpad, int Wp, int OH, int OW, const int* off,
        const float* dct, float* t) {
    __m256 acc[XDL_SK_MR][2];
    const float* row[XDL_SK_MR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        acc[r][0] = _mm256_setzero_ps();
        acc[r][1] = _mm256_setzero_ps();
    }
    for (int oh = 0; oh < OH; oh++) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) row[r] = xpad + off[r] + (long)oh * Wp;
        const float* b = dct + (long)oh * OW * 16;
        for (int ow = 0; ow < OW; ow++) {
            __m256 b0 = _mm256_loadu_ps(b + 16 * ow), b1 = _mm256_loadu_ps(b + 16 * ow + 8);
#pragma GCC unroll 6
            for (int r = 0; r < MR; r++) {
                __m256 av = _mm256_broadcast_ss(row[r] + ow);
                acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(t + 16 * r, acc[r][0]);
        _mm256_storeu_ps(t + 16 * r + 8, acc[r][1]);
    }
}

static XDL_AVX2 void xdl_dw_tiles_of(int mr, const float* xpad, int Wp, int OH, int OW,
                                     const int* off, const float* dct, float* t) {
    XDL_BY_HEIGHT(mr, xdl_dw_tile, xpad, Wp, OH, OW, off, dct, t)
}

/* One image's stride-1 filter gradient: dw (F, K) = dconv (F, P) @ columns^T,
   the columns read in place from xpad as in xdl_conv_image (no im2col).
   dconv is first packed transposed into dct (ceil(F/16) panels of P x 16,
   zero past F), then each tile of 6 rows of K by 16 filters sums over all
   P pixels in its registers and is stored transposed into dw. */
static XDL_AVX2 void xdl_conv_dw_image(const float* xpad, int Wp, int OH, int OW, int K,
                                       const int* off, const float* dconv, int F, float* dct,
                                       float* dw) {
    long P = (long)OH * OW;
    int panels = (F + 15) / 16, tiles = xdl_tiles(K);
    for (int pp = 0; pp < panels; pp++) {
        int nf = F - 16 * pp < 16 ? F - 16 * pp : 16;
        xdl_pack_transposed(dct + pp * P * 16, dconv + 16 * pp * P, P, nf, (int)P);
    }
    for (int pp = 0; pp < panels; pp++) {
        int f0 = 16 * pp, nf = F - f0 < 16 ? F - f0 : 16;
        for (int t = 0; t < tiles; t++) {
            int k0 = xdl_tile_lo(K, tiles, t), k1 = xdl_tile_lo(K, tiles, t + 1);
            float tile[XDL_SK_MR * 16];
            xdl_dw_tiles_of(k1 - k0, xpad, Wp, OH, OW, off + k0, dct + pp * P * 16, tile);
            for (int j = 0; j < nf; j++)
                for (int r = 0; r < k1 - k0; r++)
                    dw[(long)(f0 + j) * K + k0 + r] = tile[16 * r + j];
        }
    }
}

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
            xdl_pack_transposed(scratch, w + (long)(d0 + j0) * M + k0, M, nn, kc);
            for (int t = 0; t < tiles; t++) {
                int i0 = xdl_tile_lo(N, tiles, t), i1 = xdl_tile_lo(N, tiles, t + 1);
                float* c = dx + (long)i0 * D + d0 + j0;
                xdl_prefetch_upto(pf, pf_from + (pf_upto - pf_from) * ++call / calls);
                xdl_tiles_of(i1 - i0, kc, dout + (long)i0 * M + k0, M, 1, scratch, 16, c, D,
                             nn, k0 ? c : NULL, D, 1);
            }
        }
    }
}

/* dw[d0:d0+dn] = x[:, d0:d0+dn].T @ dout + reg * w[d0:d0+dn]; x (N, D),
   dout (N, M), dw (D, M). dout_tail: NULL when M is a multiple of 16, else
   (N, 16): dout's last M % 16 columns, zero-padded. scratch holds
   XDL_AFFINE_KC * dn floats (x's block, k-major); prefetches up to line
   pf_upto of pf. */
static XDL_AVX2 void xdl_affine_dw_block(int N, int D, int M, const float* x, const float* w,
                                         const float* dout, const float* dout_tail, float* dw,
                                         float reg, int d0, int dn, float* scratch,
                                         xdl_prefetch* pf, long pf_upto) {
    int tiles = xdl_tiles(dn), panels = (M + 15) / 16;
    long calls = (long)((N + XDL_AFFINE_KC - 1) / XDL_AFFINE_KC) * panels * tiles;
    long call = 0, pf_from = pf->done;
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
                xdl_tiles_of(r1 - r0, kc, scratch + r0, 1, dn, b, ldb, c, M, nn, y, M,
                             k0 ? 1 : reg);
            }
        }
    }
}

#else
/* Without GCC or Clang on x86-64 the kernels are never selected
   (xdl_cpu_has_avx2_fma() is 0); these definitions only let the module
   build. */
static int xdl_cpu_has_avx2_fma(void) { return 0; }
static void xdl_affine_dx_block(int N, int D, int M, const float* w, const float* dout,
                                float* dx, int d0, int dn, float* scratch, xdl_prefetch* pf,
                                long pf_upto) {}
static void xdl_affine_dw_block(int N, int D, int M, const float* x, const float* w,
                                const float* dout, const float* dout_tail, float* dw, float reg,
                                int d0, int dn, float* scratch, xdl_prefetch* pf,
                                long pf_upto) {}
static void xdl_conv_image(const float* xpad, int Wp, int OH, int OW, int K, const int* off,
                           const float* w, const float* bias, int F, float* out) {}
static void xdl_conv_dw_image(const float* xpad, int Wp, int OH, int OW, int K, const int* off,
                              const float* dconv, int F, float* dct, float* dw) {}
#endif

#endif  /* XDL_CPU_GEMM_H */
