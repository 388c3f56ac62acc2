/* The register-tile kernels for one element type and vector width,
   included four times by _cpu_gemm.h: AVX2 with XDL_T float, XDL_V __m256,
   XDL_L 8 and XDL_F(name) name##_s, then double, __m256d, 4 and name##_d;
   AVX-512 (the image kernel only, XDL_IMAGE_ONLY) with __m512 / name##_zs
   and __m512d / name##_zd. XDL_TARGET is the functions' target attribute
   and XDL_MASK the type of a lane mask. The tile is 6 rows by XDL_NR = 2
   vectors (AVX2: 16 floats or 8 doubles; AVX-512: 32 or 16); the vector
   operations are _cpu_gemm.h's XDL_F(xdl_loadu) and the like. */
#define XDL_NR (2 * XDL_L)

/* The register tile, for MR = 1..6 rows (a constant once inlined):
   C[0:MR, 0:nn] (row stride ldc) = init + the sum over k < kc of
   A[r, k] * B[k, 0:XDL_NR], plus beta * Y when y is not NULL (Y (MR, nn), row
   stride ldy; y == c adds to C). A[r, k] is a[r*rsa + k*csa]; B[k, j] is
   b[k*ldb + j], or with GATHER b[off[k] + j] (a convolution's columns read
   in place); XDL_NR readable columns (padding past nn: zeros, or any values,
   as those lanes are never stored). init: NULL (zeros) or one value per
   row (the convolution's bias). Each element is summed in k order, one
   fused multiply-add at a time: the result does not depend on the threads. */
static XDL_TARGET inline __attribute__((always_inline)) void XDL_F(xdl_tile)(
        const int MR, const int GATHER, int kc, const XDL_T* a, long rsa, long csa,
        const XDL_T* b, long ldb, const int* off, XDL_T* c, long ldc, int nn, const XDL_T* y,
        long ldy, XDL_T beta, const XDL_T* init) {
    XDL_V acc[XDL_SK_MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        acc[r][0] = init ? XDL_F(xdl_set1)(init[r]) : XDL_F(xdl_zero)();
        acc[r][1] = acc[r][0];
    }
    for (int k = 0; k < kc; k++) {
        const XDL_T* bk = GATHER ? b + off[k] : b + k * ldb;
        XDL_V b0 = XDL_F(xdl_loadu)(bk), b1 = XDL_F(xdl_loadu)(bk + XDL_L);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            XDL_V av = XDL_F(xdl_bcast)(a + r * rsa + k * csa);
            acc[r][0] = XDL_F(xdl_fmadd)(av, b0, acc[r][0]);
            acc[r][1] = XDL_F(xdl_fmadd)(av, b1, acc[r][1]);
        }
    }
    XDL_V bv = XDL_F(xdl_set1)(beta);
    if (nn == XDL_NR) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            XDL_V v0 = acc[r][0], v1 = acc[r][1];
            if (y) {
                v0 = XDL_F(xdl_fmadd)(bv, XDL_F(xdl_loadu)(y + r * ldy), v0);
                v1 = XDL_F(xdl_fmadd)(bv, XDL_F(xdl_loadu)(y + r * ldy + XDL_L), v1);
            }
            XDL_F(xdl_storeu)(c + r * ldc, v0);
            XDL_F(xdl_storeu)(c + r * ldc + XDL_L, v1);
        }
    } else {
        XDL_MASK m0 = XDL_F(xdl_lanes_below)(nn), m1 = XDL_F(xdl_lanes_below)(nn - XDL_L);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            XDL_V v0 = acc[r][0], v1 = acc[r][1];
            if (y) {
                v0 = XDL_F(xdl_fmadd)(bv, XDL_F(xdl_maskload)(y + r * ldy, m0), v0);
                v1 = XDL_F(xdl_fmadd)(bv, XDL_F(xdl_maskload)(y + r * ldy + XDL_L, m1), v1);
            }
            XDL_F(xdl_maskstore)(c + r * ldc, m0, v0);
            XDL_F(xdl_maskstore)(c + r * ldc + XDL_L, m1, v1);
        }
    }
}

/* The tile for mr = 1..6 rows with B's rows at b + off[k], from init (A
   row-major with row stride lda; no Y). */
static XDL_TARGET void XDL_F(xdl_gathered_tiles_of)(int mr, int kc, const XDL_T* a, long lda,
                                           const XDL_T* b, const int* off, XDL_T* c, long ldc,
                                           int nn, const XDL_T* init) {
    XDL_BY_HEIGHT(mr, XDL_F(xdl_tile), 1, kc, a, lda, 1, b, 0, off, c, ldc, nn, NULL, 0, 0,
                  init)
}

/* One image's stride-1 convolution: out (F, OH*OW) = w (F, K) @ columns + b,
   the columns read in place from the padded image xpad (C, Hp, Wp): row
   k = (c, kh, kw) of column (oh, ow) is xpad[off[k] + oh*Wp + ow], with
   off[k] = (c*Hp + kh)*Wp + kw. No im2col: each panel of XDL_NR output pixels
   of one row reads its K rows of XDL_NR from the image (in the core's L1), for
   every register tile of filters. xpad needs XDL_NR readable elements past its
   end (the last panel's spare lanes read them; they are never stored). */
static XDL_TARGET void XDL_F(xdl_conv_image)(const XDL_T* xpad, int Wp, int OH, int OW, int K,
                                    const int* off, const XDL_T* w, const XDL_T* bias, int F,
                                    XDL_T* out) {
    int tiles = xdl_tiles(F);
    long P = (long)OH * OW;
    for (int oh = 0; oh < OH; oh++) {
        for (int ow0 = 0; ow0 < OW; ow0 += XDL_NR) {
            int nn = OW - ow0 < XDL_NR ? OW - ow0 : XDL_NR;
            for (int t = 0; t < tiles; t++) {
                int f0 = xdl_tile_lo(F, tiles, t), f1 = xdl_tile_lo(F, tiles, t + 1);
                XDL_F(xdl_gathered_tiles_of)(f1 - f0, K, w + (long)f0 * K, K,
                                      xpad + (long)oh * Wp + ow0, off,
                                      out + f0 * P + (long)oh * OW + ow0, P, nn, bias + f0);
            }
        }
    }
}

/* The rest (the packing, the affine layer's tiles and the filter
   gradient) only where _cpu_gemm.h runs them: not in the AVX-512 build
   (XDL_IMAGE_ONLY). */
#ifndef XDL_IMAGE_ONLY
/* pack (kc, XDL_NR) = rows [0, nn) of w (row stride ldw), columns [0, kc),
   transposed, zero past nn: the dx product's B operand (w.T), and a
   convolution's dout transposed for its filter gradient. */
static XDL_TARGET void XDL_F(xdl_pack_transposed)(XDL_T* pack, const XDL_T* w, long ldw, int nn,
                                                int kc) {
    int j = 0;
    for (; j + XDL_L <= nn; j += XDL_L) {
        int k = 0;
        for (; k + XDL_L <= kc; k += XDL_L) {
            XDL_V r[XDL_L];
            for (int i = 0; i < XDL_L; i++) r[i] = XDL_F(xdl_loadu)(w + (j + i) * ldw + k);
            XDL_F(xdl_transpose)(r);
            for (int i = 0; i < XDL_L; i++)
                XDL_F(xdl_storeu)(pack + (k + i) * XDL_NR + j, r[i]);
        }
        for (; k < kc; k++)
            for (int i = 0; i < XDL_L; i++) pack[k * XDL_NR + j + i] = w[(j + i) * ldw + k];
    }
    for (int k = 0; k < kc; k++) {
        for (int i = j; i < nn; i++) pack[k * XDL_NR + i] = w[i * ldw + k];
        for (int i = nn; i < XDL_NR; i++) pack[k * XDL_NR + i] = 0;
    }
}

/* The tile for mr = 1..6 rows (B in rows of stride ldb). */
static XDL_TARGET void XDL_F(xdl_tiles_of)(int mr, int kc, const XDL_T* a, long rsa, long csa,
                                  const XDL_T* b, long ldb, XDL_T* c, long ldc, int nn,
                                  const XDL_T* y, long ldy, XDL_T beta) {
    XDL_BY_HEIGHT(mr, XDL_F(xdl_tile), 0, kc, a, rsa, csa, b, ldb, NULL, c, ldc, nn, y, ldy,
                  beta, NULL)
}

/* The filter-gradient tile of one image, MR = 1..6 rows of K (a constant
   once inlined) by XDL_NR filters: t[r][j] = the sum over the pixels (oh, ow),
   in order, of column k0 + r at (oh, ow), xpad[off[k0 + r] + oh*Wp + ow],
   times dct[(oh*OW + ow)*XDL_NR + j], the image's dconv transposed (one panel
   of XDL_NR filters). */
static XDL_TARGET inline __attribute__((always_inline)) void XDL_F(xdl_dw_tile)(
        const int MR, const XDL_T* xpad, int Wp, int OH, int OW, const int* off,
        const XDL_T* dct, XDL_T* t) {
    XDL_V acc[XDL_SK_MR][2];
    const XDL_T* row[XDL_SK_MR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        acc[r][0] = XDL_F(xdl_zero)();
        acc[r][1] = XDL_F(xdl_zero)();
    }
    for (int oh = 0; oh < OH; oh++) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) row[r] = xpad + off[r] + (long)oh * Wp;
        const XDL_T* b = dct + (long)oh * OW * XDL_NR;
        for (int ow = 0; ow < OW; ow++) {
            XDL_V b0 = XDL_F(xdl_loadu)(b + XDL_NR * ow);
            XDL_V b1 = XDL_F(xdl_loadu)(b + XDL_NR * ow + XDL_L);
#pragma GCC unroll 6
            for (int r = 0; r < MR; r++) {
                XDL_V av = XDL_F(xdl_bcast)(row[r] + ow);
                acc[r][0] = XDL_F(xdl_fmadd)(av, b0, acc[r][0]);
                acc[r][1] = XDL_F(xdl_fmadd)(av, b1, acc[r][1]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        XDL_F(xdl_storeu)(t + XDL_NR * r, acc[r][0]);
        XDL_F(xdl_storeu)(t + XDL_NR * r + XDL_L, acc[r][1]);
    }
}

static XDL_TARGET void XDL_F(xdl_dw_tiles_of)(int mr, const XDL_T* xpad, int Wp, int OH, int OW,
                                     const int* off, const XDL_T* dct, XDL_T* t) {
    XDL_BY_HEIGHT(mr, XDL_F(xdl_dw_tile), xpad, Wp, OH, OW, off, dct, t)
}

/* One image's stride-1 filter gradient: dw (F, K) = dconv (F, P) @ columns^T,
   the columns read in place from xpad as in xdl_conv_image (no im2col).
   dconv is first packed transposed into dct (ceil(F/XDL_NR) panels of P x XDL_NR,
   zero past F), then each tile of 6 rows of K by XDL_NR filters sums over all
   P pixels in its registers and is stored transposed into dw. */
static XDL_TARGET void XDL_F(xdl_conv_dw_image)(const XDL_T* xpad, int Wp, int OH, int OW, int K,
                                       const int* off, const XDL_T* dconv, int F, XDL_T* dct,
                                       XDL_T* dw) {
    long P = (long)OH * OW;
    int panels = (F + XDL_NR - 1) / XDL_NR, tiles = xdl_tiles(K);
    for (int pp = 0; pp < panels; pp++) {
        int nf = F - XDL_NR * pp < XDL_NR ? F - XDL_NR * pp : XDL_NR;
        XDL_F(xdl_pack_transposed)(dct + pp * P * XDL_NR, dconv + XDL_NR * pp * P, P, nf,
                                   (int)P);
    }
    for (int pp = 0; pp < panels; pp++) {
        int f0 = XDL_NR * pp, nf = F - f0 < XDL_NR ? F - f0 : XDL_NR;
        for (int t = 0; t < tiles; t++) {
            int k0 = xdl_tile_lo(K, tiles, t), k1 = xdl_tile_lo(K, tiles, t + 1);
            XDL_T tile[XDL_SK_MR * XDL_NR];
            XDL_F(xdl_dw_tiles_of)(k1 - k0, xpad, Wp, OH, OW, off + k0, dct + pp * P * XDL_NR,
                                   tile);
            for (int j = 0; j < nf; j++)
                for (int r = 0; r < k1 - k0; r++)
                    dw[(long)(f0 + j) * K + k0 + r] = tile[XDL_NR * r + j];
        }
    }
}

#endif  /* XDL_IMAGE_ONLY */

#undef XDL_NR
