# The affine layer's backward pass in one sweep over the weights (included
# by _cpu_kernels.pyx). dx = dout @ w.T and dw = x.T @ dout + reg * w both
# read every row of w; done as two products they read the 16 MB of the CNN's
# 8192 x 500 w from memory twice (three times with the L2 term), after the
# update rules of the last step evicted it. Here each item is a block of
# rows of w: its part of dx, then its rows of dw, while the block (16 rows
# of 500, 32 KB) is still in the core's cache (xdl/DESIGN.md, "The CPU
# kernels").

# Rows of w per block: at most this many, and never so many that one BLAS
# call reaches GEMM_TILE_LIMIT (each call stays on its thread).
AFFINE_MAX_ROWS = 64

# Rows of w per block with the AVX2 + FMA kernels (float32, _cpu_gemm.pxi):
# 3 panels of 16 rows for dx, 8 register tiles of 6 rows for dw. Timed on
# the 8192x500 layer here (one thread, two): 48 rows 10.3-10.7 / 5.5-5.6 ms,
# 96 rows 10.5-10.6 / 5.7-5.9, 60 rows 10.9 / 5.9, 24 and 36 rows (partial
# panels) 11.8-12.2 / 5.9-6.7.
SIMD_AFFINE_ROWS = 48


def _affine_rows(int N, int D, int M):
    """
    Rows of w per block for x (N, D), w (D, M), dout (N, M): the largest
    multiple of 8 (or all D) with rows * N * M <= GEMM_TILE_LIMIT, at most
    AFFINE_MAX_ROWS; 0 when not even 8 rows fit (use two products then).
    """
    cdef long long per_row = <long long>N * M
    if per_row == 0:
        return max(1, min(D, AFFINE_MAX_ROWS))
    rows = min(AFFINE_MAX_ROWS, GEMM_TILE_LIMIT // per_row)
    if rows >= D:
        return D
    rows -= rows % 8
    return rows


cdef struct AffineBackwardJob:
    # x (N, D), w (D, M), dout (N, M), dx (N, D), dw (D, M): C-contiguous.
    int N, D, M
    int rows            # rows of w per block
    bint want_dx
    double reg          # dw += reg * w when nonzero
    const void* x
    const void* w
    const void* dout
    void* dx
    void* dw
    double* sumsq_parts     # NULL, or one sum of squares of w per block
    bint simd               # the AVX2 + FMA kernels (_cpu_gemm.pxi): float32's dx and dw, float64's dw
    const float* dout_tail  # simd float32, M % 16 != 0: dout's last M % 16 columns, (N, 16) zero-padded
    const double* dout_tail64   # simd float64, M % 8 != 0: dout's last M % 8 columns, (N, 8) zero-padded


cdef void _affine_backward_block(const AffineBackwardJob* j, Py_ssize_t blk,
                                 const floating* x, const floating* w,
                                 const floating* dout, floating* dx,
                                 floating* dw) noexcept nogil:
    # Column-major BLAS sees each row-major (r, s) array as its (s, r)
    # transpose. With w_b = w[d0:d0+dn] (dn, M):
    #   dx[:, d0:d0+dn] = dout @ w_b.T   <=>   (dn, N) = w_b (dn, M) @ dout.T (M, N)
    #   dw[d0:d0+dn]    = x_b.T @ dout   <=>   (M, dn) = dout.T (M, N) @ x_b (N, dn)
    cdef Py_ssize_t d0 = blk * j.rows
    cdef int dn = min(j.rows, j.D - d0)
    cdef floating beta = 0
    if j.want_dx:
        _gemm(c'T', c'N', dn, j.N, j.M, <floating>1, w + d0 * j.M, j.M, dout, j.M,
              <floating>0, dx + d0, j.D)
    if j.sumsq_parts != NULL:
        # The block of w is in cache (the dx product read it): its share of
        # sum(w**2), for the L2 loss, costs no pass of its own.
        j.sumsq_parts[blk] = _sumsq_span(w + d0 * j.M, <Py_ssize_t>dn * j.M)
    if j.reg != 0:
        # The block of w is still in cache: dw starts as w, and the product
        # adds to reg times it.
        memcpy(dw + d0 * j.M, w + d0 * j.M, dn * j.M * sizeof(floating))
        beta = <floating>j.reg
    _gemm(c'N', c'T', j.M, dn, j.N, <floating>1, dout, j.M, x + d0, j.D,
          beta, dw + d0 * j.M, j.M)


cdef int _simd_affine_backward_run(Items* items, const AffineBackwardJob* j,
                                   const floating* w) noexcept nogil:
    # The blocks with the AVX2 + FMA kernels: dx and dw in float32; dw only
    # in float64, whose dx stays on OpenBLAS (faster there: 21.7 against
    # 25.3 ms for the CNN's sweep on one thread), while OpenBLAS's dw call
    # packed all of dout again for every block of 16 rows (the dw half took
    # 13.2 of the sweep's 22.6 ms on one thread). While a block is computed,
    # the next block has its rows of w and dw prefetched (w for the dx
    # product, dw so its stores do not wait on memory). Returns -1 when
    # scratch memory could not be had (nothing done: the caller falls back).
    cdef float* packed_w = NULL
    cdef floating* packed_x = <floating*>malloc(XDL_AFFINE_KC * j.rows * sizeof(floating))
    cdef floating* dw = <floating*>j.dw
    cdef Py_ssize_t lo = 0, hi = 0, blk
    cdef int d0, dn, d1, dn1
    cdef long lines
    cdef xdl_prefetch pf
    if floating is float:
        packed_w = <float*>malloc(XDL_AFFINE_KC * 16 * sizeof(float))
    if packed_x == NULL or (floating is float and packed_w == NULL):
        free(packed_w)
        free(packed_x)
        return -1
    while _take(items, &lo, &hi):
        for blk in range(lo, hi):
            d0 = blk * j.rows
            dn = min(j.rows, j.D - d0)
            # The next block: this run's, or after its last block the first
            # block of the next item to be handed out, which this thread will
            # likely take (else the other core finds it in the shared L3).
            d1 = d0 + dn if blk + 1 < hi else xdl_load_relaxed(&items.next) * items.grain * j.rows
            dn1 = max(0, min(j.rows, j.D - d1))
            lines = (<long>dn1 * j.M * sizeof(floating) + 63) // 64
            pf.a = <const char*>(w + <Py_ssize_t>d1 * j.M)
            pf.b = <const char*>(dw + <Py_ssize_t>d1 * j.M)
            pf.na = lines
            pf.nb = lines
            pf.done = 0
            if j.want_dx:
                if floating is float:
                    xdl_affine_dx_block(j.N, j.D, j.M, w, <const float*>j.dout, <float*>j.dx,
                                        d0, dn, packed_w, &pf, lines)
                else:
                    _gemm(c'T', c'N', dn, j.N, j.M, <double>1, w + <Py_ssize_t>d0 * j.M, j.M,
                          <const double*>j.dout, j.M, <double>0, <double*>j.dx + d0, j.D)
            if j.sumsq_parts != NULL:
                j.sumsq_parts[blk] = _sumsq_span(w + <Py_ssize_t>d0 * j.M, <Py_ssize_t>dn * j.M)
            if floating is float:
                xdl_affine_dw_block(j.N, j.D, j.M, <const float*>j.x, w, <const float*>j.dout,
                                    j.dout_tail, dw, <float>j.reg, d0, dn, packed_x, &pf,
                                    2 * lines)
            else:
                xdl_affine_dw_block_d(j.N, j.D, j.M, <const double*>j.x, w,
                                      <const double*>j.dout, j.dout_tail64, dw, j.reg, d0, dn,
                                      packed_x, &pf, 2 * lines)
    free(packed_w)
    free(packed_x)
    return 0


cdef void _affine_backward_run(Items* items, const AffineBackwardJob* j,
                               floating* dx) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = 0, blk
    if j.simd and _simd_affine_backward_run(items, j, <const floating*>j.w) == 0:
        return
    while _take(items, &lo, &hi):
        for blk in range(lo, hi):
            _affine_backward_block(j, blk, <const floating*>j.x, <const floating*>j.w,
                                   <const floating*>j.dout, dx, <floating*>j.dw)


cdef class _AffineBackwardWork(_Work):
    cdef AffineBackwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _affine_backward_run(&self.items, &self.job, <double*>self.job.dx)
            else:
                _affine_backward_run(&self.items, &self.job, <float*>self.job.dx)


def affine_backward(x, w, dout, reg=0.0, compute_dx=True, w_sumsq=False):
    """
    The affine layer's matrix products backward, over blocks of rows of w
    on the team: each block's part of dx and its rows of dw (with reg * w)
    while the block is in cache, so w is read from memory once. float32 on
    a CPU with AVX2 and FMA runs on the kernels of _cpu_gemm.h (blocks of
    SIMD_AFFINE_ROWS rows; set_simd_kernels(False) selects OpenBLAS), and
    float64 there its dw (dx on OpenBLAS); the rest runs on OpenBLAS.
    Every element is computed by one thread in a fixed
    order (bit-identical across calls and thread counts).

    Inputs:
    - x: (N, D) input of the layer, flattened; w: (D, M); dout: (N, M);
      one float dtype, copied when not C-contiguous
    - reg: L2 strength; dw includes reg * w
    - compute_dx: False skips dx
    - w_sumsq: True also returns sum(w**2), each block's share summed in
      float64 while the block is in cache, the shares added in block order

    Returns a tuple of:
    - dx: (N, D) dout @ w.T, or None without compute_dx
    - dw: (D, M) x.T @ dout + reg * w
    - with w_sumsq only: sum(w**2), a scalar of w's dtype
    """
    dtype = _check_arrays((("x", x), ("w", w), ("dout", dout)), (), same_shape=False)
    _boundary.check_affine_backward(x, w, dout, reg)
    cdef int N = x.shape[0], D = x.shape[1], M = w.shape[1]
    rows = _affine_rows(N, D, M)
    if rows == 0:
        raise ValueError("affine_backward: N * M = %d * %d is too large for blocks of 8 rows "
                         "of w within GEMM_TILE_LIMIT; use matmul" % (N, M))
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    dout = np.ascontiguousarray(dout)
    dx = pooled_empty((N, D), dtype) if compute_dx else None
    dw = pooled_empty((D, M), dtype)
    if dw.size == 0 or N == 0:
        if dx is not None:
            dx[...] = 0  # an empty sum
        np.multiply(w, reg, out=dw)
        return (dx, dw, sum_of_squares(w)) if w_sumsq else (dx, dw)
    cdef _AffineBackwardWork work = _AffineBackwardWork()
    cdef AffineBackwardJob* j = &work.job
    j.N, j.D, j.M = N, D, M
    j.simd = _simd_kernels
    tail = tail64 = None
    if j.simd and dtype == np.float32:
        rows = min(D, SIMD_AFFINE_ROWS)
        if M % 16:
            tail = np.zeros((N, 16), np.float32)
            tail[:, :M % 16] = dout[:, M - M % 16:]
    elif j.simd and M % 8:  # float64: blocks of `rows` rows, as OpenBLAS's dx calls need
        tail64 = np.zeros((N, 8), np.float64)
        tail64[:, :M % 8] = dout[:, M - M % 8:]
    j.dout_tail = <const float*>_address(tail, False)
    j.dout_tail64 = <const double*>_address(tail64, False)
    j.rows = rows
    j.want_dx = dx is not None and dx.size > 0
    j.reg = reg
    j.x = _address(x, False)
    j.w = _address(w, False)
    j.dout = _address(dout, False)
    j.dx = _address(dx, True) if j.want_dx else NULL
    j.dw = _address(dw, True)
    blocks = (D + rows - 1) // rows
    parts = np.zeros(blocks, dtype=np.float64) if w_sumsq else None
    j.sumsq_parts = <double*>_address(parts, True) if w_sumsq else NULL
    _start(work, blocks, _tile_grain(blocks, _cpu_team.threads_for(blocks)), dtype,
           (x, w, dout, dx, dw, parts, tail, tail64))
    if w_sumsq:
        return dx, dw, dtype.type(parts.sum())
    return dx, dw
