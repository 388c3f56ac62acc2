# The affine layers' large matrix products on the CPU (included by
# _cpu_kernels.pyx): output tiles over the team, each tile's BLAS calls small
# enough to stay on its thread, so numpy's OpenBLAS threads are never woken
# (they spin after each multithreaded call, next to the team:
# xdl/DESIGN.md, "The CPU kernels").

# Products with at least this many multiply-adds go through the team (see
# xdl.backends.cpu.matmul); smaller ones OpenBLAS runs on the calling thread,
# without waking its own threads.
MATMUL_MIN_WORK = 1 << 19


def _matmul_tiles(int M, int N, int K, bint transposed=False):
    """
    Tile (mb, nb, kb) of C (M, N) = A (M, K) @ B (K, N) with mb*nb*kb <=
    GEMM_TILE_LIMIT (each BLAS call stays on its thread). Chosen by timing
    the affine layers' products (minibatches of 50 to 200, widths 100 to
    8192) here: K is summed 128 at a time, or in one call up to 512 when A
    or B is a transposed view (x.T and w.T in the backward pass); a short
    minibatch (M <= 64) is one tile high, else 48 rows; then as many columns
    as fit, at most 128.
    """
    limit = GEMM_TILE_LIMIT
    kb = K if K <= (512 if transposed else 128) else 128
    mb = M if M <= 64 else 48
    nb = max(1, min(N, 128, limit // (kb * mb)))
    if 16 <= nb < N:
        nb -= nb % 16
    return mb, nb, kb


def _tile_grain(int tiles, int threads):
    """
    Tiles per item of work: runs of neighbouring tiles, at least 8 items
    per thread (one run on one thread). Threads that took neighbouring
    tiles at the same time wrote the same cache lines where tiles meet (a
    tile of dx = dout @ w.T is 16 columns, 64 bytes, of each row, and
    numpy's large arrays start 16 bytes off a line): runs made the 8192x500
    products of the affine layer 2-6% faster on two threads here.
    """
    if threads <= 1:
        return max(1, tiles)
    return max(1, tiles // (8 * threads))


cdef struct MatmulJob:
    # C (M, N) = A (M, K) @ B (K, N), all row-major views; A and B are read
    # transposed (ta, tb = 'T') when they are column-major in memory.
    int M, N, K
    int mb, nb, kb      # tile: mb rows x nb columns of C, K summed kb at a time
    int tiles_n         # tiles across N
    char ta, tb
    int lda, ldb
    const void* a
    const void* b
    void* c
    const void* add     # NULL, or C-contiguous (M, N): C = A @ B + beta * add
    double beta


cdef void _matmul_block(const MatmulJob* g, Py_ssize_t t, Py_ssize_t k0, const floating* A,
                        const floating* B, floating* C) noexcept nogil:
    # Rows k0..k0+kb of the sum of output tile t of C = A @ B (rows
    # i0..i0+mn, columns j0..j0+nn): beta = 0 for the first block, then 1.
    # Column-major BLAS sees C^T (N, M) = B^T (N, K) @ A^T (K, M).
    cdef Py_ssize_t i0 = (t // g.tiles_n) * g.mb
    cdef Py_ssize_t j0 = (t % g.tiles_n) * g.nb
    cdef int mn = min(g.mb, g.M - i0)
    cdef int nn = min(g.nb, g.N - j0)
    cdef int kn = min(g.kb, g.K - k0)
    # B row-major (K, N) is B^T column-major with ld N; B column-major
    # (a transposed view) is B with ld K, read transposed.
    cdef const floating* pb = B + (k0 * g.N + j0 if g.tb == c'N' else j0 * g.K + k0)
    cdef const floating* pa = A + (i0 * g.K + k0 if g.ta == c'N' else k0 * g.M + i0)
    cdef floating beta = <floating>(k0 > 0)
    cdef Py_ssize_t i
    cdef const floating* add
    if k0 == 0 and g.add != NULL:
        # The tile of `add` goes into the tile of C first, while it is in
        # cache: the product then adds to beta * add (no second pass).
        add = <const floating*>g.add
        for i in range(i0, i0 + mn):
            memcpy(C + i * g.N + j0, add + i * g.N + j0, nn * sizeof(floating))
        beta = <floating>g.beta
    _gemm(g.tb, g.ta, nn, mn, kn, <floating>1, pb, g.ldb, pa, g.lda,
          beta, C + i0 * g.N + j0, g.N)


cdef void _matmul_run(Items* items, const MatmulJob* j, floating* C) noexcept nogil:
    # A run of tiles, summed over K a block at a time for all of them: the
    # block of A that tiles of one row share is read once per run. Each
    # tile still adds its blocks in order on one thread.
    cdef Py_ssize_t lo = 0, hi = 0, t, k0
    while _take(items, &lo, &hi):
        k0 = 0
        while k0 < j.K:
            for t in range(lo, hi):
                _matmul_block(j, t, k0, <const floating*>j.a, <const floating*>j.b, C)
            k0 += j.kb


cdef class _MatmulWork(_Work):
    cdef MatmulJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _matmul_run(&self.items, &self.job, <double*>self.job.c)
            else:
                _matmul_run(&self.items, &self.job, <float*>self.job.c)


cdef _operand(a):
    """(array, transposed?) with a C- or F-contiguous layout for BLAS."""
    if a.flags.c_contiguous:
        return a, False
    if a.flags.f_contiguous:
        return a, True
    return np.ascontiguousarray(a), False


def matmul(a, b, c=None, beta=0.0, tiles=None, grain=None):
    """
    Matrix product of two 2-D float32/float64 numpy arrays of one dtype,
    plus beta * c when c is given, split in output tiles over the team. Every BLAS call is small enough to
    stay on its thread, so numpy's OpenBLAS threads are not woken (they spin
    for a while after each multithreaded call, taking a core from the next
    kernel). Each tile is summed by one thread in a fixed order: repeated
    calls are bit-identical.

    Inputs:
    - a: (M, K); b: (K, N); C- or F-contiguous (e.g. a transposed view) or
      else copied
    - c: optional (M, N) array of the same dtype, not modified; each tile of
      it is copied into the tile of the result just before the tile's first
      BLAS call (beta = beta), so the sum costs no pass of its own (the
      affine layers fold the L2 gradient reg * w into dw this way)
    - beta: the factor of c
    - tiles: optional (mb, nb, kb), for tests; default from _matmul_tiles
    - grain: optional tiles per item of work, for tests; default from _tile_grain

    Returns:
    - out: (M, N) C-contiguous array, a @ b + beta * c
    """
    named = (("a", a), ("b", b)) + ((("c", c),) if c is not None else ())
    dtype = _check_arrays(named, (), same_shape=False)
    _boundary.check_matmul(a, b, c, beta)
    if c is not None and beta == 0:
        c = None  # as BLAS: beta 0 ignores c (even its NaNs)
    elif c is not None:
        c = np.ascontiguousarray(c)
    cdef int M = a.shape[0], K = a.shape[1], N = b.shape[1]
    out = pooled_empty((M, N), dtype)
    if out.size == 0:
        return out
    if K == 0:
        out[...] = 0
        if c is not None:
            out += beta * c
        return out
    a, ta = _operand(a)
    b, tb = _operand(b)
    mb, nb, kb = _matmul_tiles(M, N, K, ta or tb) if tiles is None else tiles
    cdef _MatmulWork work = _MatmulWork()
    cdef MatmulJob* g = &work.job
    g.M, g.N, g.K = M, N, K
    g.mb, g.nb, g.kb = max(1, mb), max(1, nb), max(1, kb)
    g.tiles_n = (N + g.nb - 1) // g.nb
    g.ta = c'T' if ta else c'N'
    g.tb = c'T' if tb else c'N'
    g.lda = M if ta else K
    g.ldb = K if tb else N
    # A column-major operand's memory, read as a flat array, is its transpose.
    g.a = _address(a.T if ta else a, False)
    g.b = _address(b.T if tb else b, False)
    g.c = _address(out, True)
    g.add = NULL if c is None else _address(c, False)
    g.beta = beta
    tiles = g.tiles_n * ((M + g.mb - 1) // g.mb)
    if grain is None:
        grain = _tile_grain(tiles, _cpu_team.threads_for(tiles))
    _start(work, tiles, grain, dtype, (a, b, c, out))
    return out
