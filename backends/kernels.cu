// CUDA kernels of xdl's GPU backend, compiled once by backends/cuda.py with
// cupy.RawModule (NVRTC) and instantiated for T = float and T = double.
//
// Conventions (xdl/DESIGN.md, "The CUDA kernels"):
// - One thread per element of the kernel's output, in a grid-stride loop, with
//   64-bit (long long) indices and sizes: im2col buffers pass 2**31 elements.
// - col2im and the max-pool backward are gathers (one thread per input pixel
//   summing the entries that read it): no atomics, bit-reproducible results.
// - Every local value and accumulator has type T.
// - Arrays are C-contiguous; every scalar argument is a long long or a T
//   (backends/cuda.py wraps them in np.int64 / np.float32 / np.float64).
//
// Column layout shared by every backend: cols has shape (C*KH*KW, N*OH*OW);
// row (c*KH + kh)*KW + kw, column (n*OH + oh)*OW + ow.

#define XDL_GRID_STRIDE_LOOP(i, n)                                            \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;      \
         i < (n); i += (long long)blockDim.x * gridDim.x)

// ---------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------

// cols[row, col] = x[n, c, oh*stride - pad + kh, ow*stride - pad + kw], or 0
// in the padding. One thread per element of cols.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long stride, long long pad,
                       long long OH, long long OW)
{
    const long long ncols = N * OH * OW;
    const long long total = C * KH * KW * ncols;
    XDL_GRID_STRIDE_LOOP(i, total) {
        const long long col = i % ncols;
        const long long row = i / ncols;
        const long long ow = col % OW;
        const long long oh = (col / OW) % OH;
        const long long n = col / (OW * OH);
        const long long kw = row % KW;
        const long long kh = (row / KW) % KH;
        const long long c = row / (KW * KH);
        const long long ih = oh * stride - pad + kh;
        const long long iw = ow * stride - pad + kw;
        T v = T(0);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
            v = x[((n * C + c) * H + ih) * W + iw];
        }
        cols[i] = v;
    }
}

// The adjoint of im2col as a gather: dx[n, c, h, w] sums the column entries
// read from pixel (h, w). In padded coordinates hp = h + pad, the entry of
// kernel row kh comes from output row oh = (hp - kh) / stride, which exists
// when kh = hp (mod stride) and 0 <= oh < OH; likewise for the columns. The
// sum runs over kh, then kw, in increasing order (as the Cython kernel).
template <typename T>
__global__ void col2im(const T* __restrict__ cols, T* __restrict__ dx,
                       long long N, long long C, long long H, long long W,
                       long long KH, long long KW, long long stride, long long pad,
                       long long OH, long long OW)
{
    const long long ncols = N * OH * OW;
    const long long total = N * C * H * W;
    XDL_GRID_STRIDE_LOOP(i, total) {
        const long long hp = (i / W) % H + pad;
        const long long wp = i % W + pad;
        const long long c = (i / (W * H)) % C;
        const long long n = i / (W * H * C);
        T acc = T(0);
        for (long long kh = hp % stride; kh < KH; kh += stride) {
            const long long oh = (hp - kh) / stride;  // exact; decreases as kh grows
            if (oh < 0) break;
            if (oh >= OH) continue;
            for (long long kw = wp % stride; kw < KW; kw += stride) {
                const long long ow = (wp - kw) / stride;
                if (ow < 0) break;
                if (ow >= OW) continue;
                acc += cols[((c * KH + kh) * KW + kw) * ncols + (n * OH + oh) * OW + ow];
            }
        }
        dx[i] = acc;
    }
}

// out[n, f, p] = res[f, n, p] + b[f]: the GEMM result w2 @ cols, of shape
// (F, NB*P), moved to the (N, F, OH, OW) layout with the bias added, in one
// pass. out points at the first image of the chunk; P = OH*OW.
template <typename T>
__global__ void conv_bias_nchw(const T* __restrict__ res, const T* __restrict__ b,
                               T* __restrict__ out, long long NB, long long F, long long P)
{
    const long long total = NB * F * P;
    XDL_GRID_STRIDE_LOOP(i, total) {
        const long long p = i % P;
        const long long f = (i / P) % F;
        const long long n = i / (P * F);
        out[i] = res[(f * NB + n) * P + p] + b[f];
    }
}

// ---------------------------------------------------------------------------
// Max pooling (no padding; windows of ph x pw every `stride` pixels)
// ---------------------------------------------------------------------------

// out[n, c, oh, ow] = max over the window; argmax = kh*pw + kw of its first
// maximum in row-major window order (np.argmax's rule: strict >, and the
// first NaN is the maximum). One thread per output element.
template <typename T>
__global__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ out,
                                int* __restrict__ argmax,
                                long long N, long long C, long long H, long long W,
                                long long ph, long long pw, long long stride,
                                long long OH, long long OW)
{
    const long long total = N * C * OH * OW;
    XDL_GRID_STRIDE_LOOP(i, total) {
        const long long ow = i % OW;
        const long long oh = (i / OW) % OH;
        const long long plane = i / (OW * OH);  // n*C + c
        const T* win = x + (plane * H + oh * stride) * W + ow * stride;
        T best = win[0];
        int best_k = 0;
        for (long long kh = 0; kh < ph; ++kh) {
            for (long long kw = 0; kw < pw; ++kw) {
                const T v = win[kh * W + kw];
                if (v > best || (v != v && best == best)) {  // np.argmax: the first NaN wins
                    best = v;
                    best_k = (int)(kh * pw + kw);
                }
            }
        }
        out[i] = best;
        argmax[i] = best_k;
    }
}

// Gather: dx[n, c, h, w] sums dout over the windows that cover (h, w) and
// whose argmax names (h, w). Windows oh with oh*stride <= h < oh*stride + ph,
// in increasing (oh, ow) order. Works for overlapping windows.
template <typename T>
__global__ void maxpool_backward(const T* __restrict__ dout, const int* __restrict__ argmax,
                                 T* __restrict__ dx,
                                 long long N, long long C, long long H, long long W,
                                 long long ph, long long pw, long long stride,
                                 long long OH, long long OW)
{
    const long long total = N * C * H * W;
    XDL_GRID_STRIDE_LOOP(i, total) {
        const long long w = i % W;
        const long long h = (i / W) % H;
        const long long plane = i / (W * H);
        // First window covering h: ceil((h - ph + 1) / stride), at least 0.
        const long long oh0 = h >= ph ? (h - ph + stride) / stride : 0;
        const long long ow0 = w >= pw ? (w - pw + stride) / stride : 0;
        const long long oh1 = h / stride < OH - 1 ? h / stride : OH - 1;
        const long long ow1 = w / stride < OW - 1 ? w / stride : OW - 1;
        T acc = T(0);
        for (long long oh = oh0; oh <= oh1; ++oh) {
            for (long long ow = ow0; ow <= ow1; ++ow) {
                const long long o = (plane * OH + oh) * OW + ow;
                const long long k = (h - oh * stride) * pw + (w - ow * stride);
                if (argmax[o] == k) acc += dout[o];
            }
        }
        dx[i] = acc;
    }
}

// ---------------------------------------------------------------------------
// Fused update rules (xdl.optim): one launch per parameter instead of one per
// array operation. Each reads w and dw, updates its state arrays in place and
// writes next_w, with the arithmetic of the formulas in numpy_kernels.py.
// next_w may be w itself (the update in place, xdl.optim's out=w): each
// thread reads w[i] before it writes next_w[i], and w and next_w are not
// __restrict__ (the other arrays are distinct, _boundary.check_out).
// ---------------------------------------------------------------------------

// next_w = w - lr * dw
template <typename T>
__global__ void sgd_update(const T* w, const T* __restrict__ dw,
                           T* next_w, T lr, long long n)
{
    XDL_GRID_STRIDE_LOOP(i, n) {
        next_w[i] = w[i] - lr * dw[i];
    }
}

// v = mu * v - lr * dw (in place); next_w = w + v
template <typename T>
__global__ void sgd_momentum_update(const T* w, const T* __restrict__ dw,
                                    T* __restrict__ v, T* next_w,
                                    T lr, T mu, long long n)
{
    XDL_GRID_STRIDE_LOOP(i, n) {
        const T vi = mu * v[i] - lr * dw[i];
        v[i] = vi;
        next_w[i] = w[i] + vi;
    }
}

// cache = decay * cache + (1 - decay) * dw^2 (in place);
// next_w = w - lr * dw / (sqrt(cache) + eps). one_m_decay = 1 - decay.
template <typename T>
__global__ void rmsprop_update(const T* w, const T* __restrict__ dw,
                               T* __restrict__ cache, T* next_w,
                               T lr, T decay, T one_m_decay, T eps, long long n)
{
    XDL_GRID_STRIDE_LOOP(i, n) {
        const T g = dw[i];
        const T ci = decay * cache[i] + one_m_decay * (g * g);
        cache[i] = ci;
        next_w[i] = w[i] - lr * g / (sqrt(ci) + eps);
    }
}

// Adam and AdamW: m = beta1 * m + (1 - beta1) * dw; v = beta2 * v +
// (1 - beta2) * dw^2 (in place); next_w = shrink * w - step * m / (sqrt(v) +
// eps_hat), with the bias correction folded into step and eps_hat by the
// caller and shrink = 1 - lr * weight_decay (AdamW's decoupled weight decay;
// 1 for Adam, where shrink * w is w exactly).
template <typename T>
__global__ void adamw_update(const T* w, const T* __restrict__ dw,
                             T* __restrict__ m, T* __restrict__ v, T* next_w,
                             T beta1, T one_m_beta1, T beta2, T one_m_beta2,
                             T step, T eps_hat, T shrink, long long n)
{
    XDL_GRID_STRIDE_LOOP(i, n) {
        const T g = dw[i];
        const T mi = beta1 * m[i] + one_m_beta1 * g;
        const T vi = beta2 * v[i] + one_m_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        next_w[i] = shrink * w[i] - step * mi / (sqrt(vi) + eps_hat);
    }
}

// ---------------------------------------------------------------------------
// L2 regularization
// ---------------------------------------------------------------------------

// y += alpha * x, in place
template <typename T>
__global__ void axpy(const T* __restrict__ x, T* __restrict__ y, T alpha, long long n)
{
    XDL_GRID_STRIDE_LOOP(i, n) {
        y[i] = y[i] + alpha * x[i];
    }
}

// ---------------------------------------------------------------------------
// Softmax loss
// ---------------------------------------------------------------------------

// One thread per row i of the scores x (N, C), labels y (N,):
// row_loss[i] = (log-sum-exp(x[i]) - x[i, y[i]]) / N and
// dx[i, c] = (softmax(x[i])[c] - [c == y[i]]) / N, computed from the row
// shifted by its max (finite for any finite scores). The loss is the sum of
// row_loss (one reduction on the caller's side).
template <typename T>
__global__ void softmax_loss_rows(const T* __restrict__ x, const long long* __restrict__ y,
                                  T* __restrict__ dx, T* __restrict__ row_loss,
                                  long long N, long long C)
{
    XDL_GRID_STRIDE_LOOP(i, N) {
        const T* row = x + i * C;
        T* drow = dx + i * C;
        T mx = row[0];
        for (long long c = 1; c < C; ++c) {
            if (row[c] > mx) mx = row[c];
        }
        T s = T(0);
        for (long long c = 0; c < C; ++c) {
            s += exp(row[c] - mx);
        }
        const T log_s = log(s);
        const long long yi = y[i];
        const T n = T(N);
        row_loss[i] = (log_s - (row[yi] - mx)) / n;
        for (long long c = 0; c < C; ++c) {
            const T p = exp(row[c] - mx - log_s);
            drow[c] = (c == yi ? p - T(1) : p) / n;
        }
    }
}
