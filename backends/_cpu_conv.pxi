# Convolution on the CPU (included by _cpu_kernels.pyx): im2col, col2im,
# conv_forward and conv_backward. A thread takes whole images; it im2cols an
# image into its own slice of a reused workspace and multiplies it right away
# with BLAS, in tiles that keep OpenBLAS on the calling thread
# (xdl/DESIGN.md, "The CPU kernels").

from libc.string cimport memcpy

# Per-image gradient partials (dw, db) are kept for at most this many
# elements at a time before they are reduced into dw.
PARTIAL_ELEMENTS = 1 << 21


cdef extern from *:
    """
    /* The turn to add the partials: taken by compare-and-swap, given back
       by a store, and the ready flags stored and read, all sequentially
       consistent: _add_ready's hand-over needs each thread's store (the
       turn given back, a flag set) ordered before its next load, which
       the handoff's release stores (_cpu_handoff.pxi) do not give. */
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int xdl_take_turn(long long *p) { return _InterlockedCompareExchange64(p, 1, 0) == 0; }
    static void xdl_give_turn(long long *p) { _InterlockedExchange64(p, 0); }
    static void xdl_set_flag(int *p) { _InterlockedExchange((long *)p, 1); }
    static int xdl_flag(int *p) { return _InterlockedCompareExchange((long *)p, 0, 0); }
    #else
    static int xdl_take_turn(long long *p) {
        long long expected = 0;
        return __atomic_compare_exchange_n(p, &expected, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static void xdl_give_turn(long long *p) { __atomic_store_n(p, 0, __ATOMIC_SEQ_CST); }
    static void xdl_set_flag(int *p) { __atomic_store_n(p, 1, __ATOMIC_SEQ_CST); }
    static int xdl_flag(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    #endif
    """
    bint xdl_take_turn(long long* p) noexcept nogil
    void xdl_give_turn(long long* p) noexcept nogil
    void xdl_set_flag(int* p) noexcept nogil
    bint xdl_flag(int* p) noexcept nogil


cdef struct OrderedSum:
    # A group's per-image partials of the filter gradient, added into dw and
    # db in image order while the other images are still computed.
    long long turn      # 1 while a thread adds
    Py_ssize_t next     # the next unit to add (read and written under the turn)
    Py_ssize_t count    # units of the group
    int* ready          # ready[u] set once unit u's partials are written
    void* dw            # (F*K,): dw += each unit's dw partial, in unit order
    void* db            # (F,): likewise


cdef void _add_ready(OrderedSum* o, Py_ssize_t u, const floating* dw_parts,
                     const floating* db_parts, Py_ssize_t FK, Py_ssize_t F) noexcept nogil:
    # Unit u's partials are written: mark them ready, then, if no other
    # thread is adding, add every ready unit from the next one on, in order.
    # The sums are those of adding all the units in order after the call
    # (the same bits, whatever thread took a unit), but taken meanwhile by
    # whichever thread is free, from its own cache where it computed the
    # unit (NumPy's sums after the call took 0.10-0.18 ms of the CNN's
    # step). A thread that finds the turn taken leaves: the thread adding
    # looks again at the next flag after giving the turn back, so a unit
    # marked meanwhile is added by one of them.
    cdef floating* dw = <floating*>o.dw
    cdef floating* db = <floating*>o.db
    cdef const floating* p
    cdef Py_ssize_t n, k
    xdl_set_flag(&o.ready[u])
    while xdl_take_turn(&o.turn):
        n = o.next
        while n < o.count and xdl_flag(&o.ready[n]):
            p = dw_parts + n * FK
            for k in range(FK):
                dw[k] = dw[k] + p[k]
            p = db_parts + n * F
            for k in range(F):
                db[k] = db[k] + p[k]
            n += 1
        o.next = n
        xdl_give_turn(&o.turn)
        if n >= o.count or not xdl_flag(&o.ready[n]):
            return


cdef class _OrderedSums:
    """
    The OrderedSum of one kernel call's groups of images, for dw (F, K) and
    db (F,) C-contiguous, zeros: start(units) before each group's team call,
    check() after it.
    """
    cdef OrderedSum sum
    cdef object ready, dw, db

    def __init__(self, Py_ssize_t group, dw, db):
        self.ready = np.empty(max(1, group), np.int32)  # cleared by start()
        self.dw, self.db = dw, db
        self.sum.ready = <int*>_address(self.ready, True)
        self.sum.dw = _address(dw, True)
        self.sum.db = _address(db, True)

    cdef OrderedSum* start(self, Py_ssize_t units) except NULL:
        memset(self.sum.ready, 0, units * sizeof(int))
        self.sum.turn, self.sum.next, self.sum.count = 0, 0, units
        return &self.sum

    cdef check(self):
        # Every unit added: the hand-over guarantees it once the call returns.
        if self.sum.next != self.sum.count:
            raise RuntimeError("conv backward: %d of %d images' filter gradients were added"
                               % (self.sum.next, self.sum.count))


# An image's columns are built and multiplied in bands of output rows of at
# most this many bytes, so that they stay in the core's L2 (1 MiB here) next
# to the GEMM's packed panels and the pre-pool map. The 7x7x3 columns of a
# 32x32 image are 600 KB in float32 and 1.2 MB in float64; the fused
# convolution's forward + backward over 50 images, by band height (rows of
# 32 pixels), measured here in interleaved runs: float32 32 rows 7.11-7.81
# ms, 16 rows 6.77-7.23, 11 rows 6.84-7.21, 8 rows 7.12-7.45; float64 32
# rows 13.81-14.51, 16 rows 13.21-14.07, 11 rows 12.45-12.80, 8 rows
# 12.52-13.41. This budget gives 16 rows in float32 and 11 in float64.
CONV_BAND_BYTES = 416 << 10


cdef struct ConvShape:
    int N, C, H, W, F, KH, KW, stride, pad, OH, OW
    int K, P          # rows of cols (C*KH*KW) and output pixels per image (OH*OW)
    int fb, pb        # forward / dx GEMM tile: fb filters x pb pixels
    int wk, wf, wp    # dw GEMM tile: wk rows of cols x wf filters, over wp pixels
    int bh            # output rows per band of an image's columns (_band_rows)


def _band_rows(int K, int OH, int OW, int itemsize):
    """
    Output rows per band: an image's columns are built and multiplied a
    band of rows at a time, in as few bands of equal height as keep each
    within CONV_BAND_BYTES (itemsize 0: always the whole image).
    """
    if itemsize <= 0 or K <= 0 or OW <= 0 or OH <= 0:
        return max(1, OH)
    most = max(1, min(OH, CONV_BAND_BYTES // (<Py_ssize_t>K * OW * itemsize)))
    bands = (OH + most - 1) // most
    return (OH + bands - 1) // bands


cdef ConvShape _conv_shape(x_shape, int F, int KH, int KW, int stride, int pad, int OH, int OW,
                           int itemsize=0):
    """
    The geometry of a convolution of x_shape with F filters (F = 0 for
    im2col, col2im); itemsize: the dtype's, for the bands (0: one band).
    """
    cdef ConvShape s
    s.N, s.C, s.H, s.W = x_shape
    s.F, s.KH, s.KW, s.stride, s.pad, s.OH, s.OW = F, KH, KW, stride, pad, OH, OW
    s.K = s.C * KH * KW
    s.P = OH * OW
    s.fb, s.pb = _tiles(s.F, s.K, s.P)
    s.wk, s.wf, s.wp = _dw_tiles(s.F, s.K, s.P)
    s.bh = _band_rows(s.K, OH, OW, itemsize)
    return s


def _tiles(int F, int K, int P):
    """
    Tile (fb filters, pb pixels) of the GEMMs out = w @ cols and
    dcols = w^T @ dout, with fb*K*pb <= GEMM_TILE_LIMIT (so each BLAS call
    stays on its thread): whole filter banks first, then as many pixels as
    fit, in multiples of 16 (the SIMD width).
    """
    limit = GEMM_TILE_LIMIT
    if F <= 0 or K <= 0 or P <= 0:
        return 1, 1
    fb = F if F * K * min(P, 64) <= limit else max(1, limit // (K * min(P, 64)))
    pb = max(1, limit // (fb * K))
    if pb >= P:
        return fb, P
    if pb >= 16:
        pb -= pb % 16
    return fb, pb


def _dw_tiles(int F, int K, int P):
    """
    Tile (wk rows, wf filters, wp pixels) of dw^T = cols @ dout^T, with
    wk*wf*wp <= GEMM_TILE_LIMIT: long sums over the pixels (each call reads
    and writes its block of dw once), then all filters, then rows, in
    multiples of 8 (15 rows of the 7x7x3 filters ran 7-9% slower than 8 or
    12 here, float32 and float64).
    """
    limit = GEMM_TILE_LIMIT
    if F <= 0 or K <= 0 or P <= 0:
        return 1, 1, 1
    wp = max(1, min(P, limit // 64))
    wf = max(1, min(F, limit // (wp * 8)))
    wk = max(1, min(K, limit // (wp * wf)))
    if 8 < wk < K:
        wk -= wk % 8
    return wk, wf, wp


# ------------------------------------------------------ one image

cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline void _valid_range(int size, int k, int stride, int pad, int out,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Output positions o with 0 <= o*stride - pad + k < size are [lo, hi).
    cdef Py_ssize_t a = 0, b = 0
    if pad > k:
        a = _ceil_div(pad - k, stride)
    if size + pad - k > 0:
        b = _ceil_div(size + pad - k, stride)
    if b > out:
        b = out
    if a > out:
        a = out
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef inline Py_ssize_t _aligned(Py_ssize_t n) noexcept nogil:
    # n elements rounded up to a multiple of 16 (64 bytes in float32).
    return (n + 15) & ~(<Py_ssize_t>15)


cdef inline Py_ssize_t _padded_size(ConvShape s) noexcept nogil:
    # Elements of one zero-padded image (C, H + 2*pad, W + 2*pad); none without padding.
    if s.pad == 0:
        return 0
    return _aligned(<Py_ssize_t>s.C * (s.H + 2 * s.pad) * (s.W + 2 * s.pad))


cdef inline Py_ssize_t _image_scratch(ConvShape s) noexcept nogil:
    # A thread's scratch for one image: its columns (K, P), then its padded copy.
    return _aligned(<Py_ssize_t>s.K * s.P) + _padded_size(s)


cdef void _pad_image(const floating* x, floating* xpad, ConvShape s) noexcept nogil:
    # xpad (C, H + 2*pad, W + 2*pad) = x with zero borders.
    cdef Py_ssize_t Hp = s.H + 2 * s.pad, Wp = s.W + 2 * s.pad
    cdef Py_ssize_t c, h
    memset(xpad, 0, <size_t>(s.C * Hp * Wp) * sizeof(floating))
    for c in range(s.C):
        for h in range(s.H):
            memcpy(xpad + (c * Hp + h + s.pad) * Wp + s.pad, x + (c * s.H + h) * s.W,
                   <size_t>s.W * sizeof(floating))


cdef const floating* _padded_source(const floating* x, floating* xpad,
                                    ConvShape s) noexcept nogil:
    # The image im2col reads: x, or with padding its copy in xpad
    # (_padded_size(s) elements) with zero borders.
    if s.pad > 0:
        _pad_image(x, xpad, s)
        return xpad
    return x


cdef void _im2col_rows(const floating* src_image, floating* cols, Py_ssize_t ld, ConvShape s,
                       int oh0, int oh1) noexcept nogil:
    # Output rows oh0..oh1 of one image -> cols[row, (oh - oh0)*OW + ow],
    # row = (c*KH + kh)*KW + kw, rows ld elements apart; src_image from
    # _padded_source, so that every row of cols is plain copies of OW
    # elements, without bounds (measured here: 16 us against 31 us with
    # bounds per row, 3x32x32 image, 7x7 window).
    cdef Py_ssize_t Hp = s.H + 2 * s.pad, Wp = s.W + 2 * s.pad
    cdef Py_ssize_t c, kh, kw, oh, j
    cdef int OW = s.OW, stride = s.stride
    cdef floating* dst
    cdef floating* d
    cdef const floating* src
    cdef const floating* r
    for c in range(s.C):
        for kh in range(s.KH):
            for kw in range(s.KW):
                dst = cols + ((c * s.KH + kh) * s.KW + kw) * ld
                src = src_image + (c * Hp + kh) * Wp + kw
                for oh in range(oh0, oh1):
                    d = dst + (oh - oh0) * OW
                    r = src + oh * stride * Wp
                    if stride == 1:
                        memcpy(d, r, <size_t>OW * sizeof(floating))
                    else:
                        for j in range(OW):
                            d[j] = r[j * stride]


cdef void _im2col_image(const floating* x, floating* xpad, floating* cols, Py_ssize_t ld,
                        ConvShape s) noexcept nogil:
    # One image x (C, H, W) -> cols (K, OH*OW), rows ld elements apart.
    _im2col_rows(_padded_source(x, xpad, s), cols, ld, s, 0, s.OH)


cdef void _col2im_rows(const floating* cols, Py_ssize_t ld, floating* dx, ConvShape s,
                       int oh0, int oh1) noexcept nogil:
    # Adjoint of _im2col_rows: adds the column entries of output rows
    # oh0..oh1 into the pixels of dx (C, H, W) they were read from. The
    # image belongs to one thread, which adds in a fixed order: no races,
    # deterministic.
    cdef Py_ssize_t c, kh, kw, oh, j, ih, iw0
    cdef Py_ssize_t lo = 0, hi = 0
    cdef int OW = s.OW, stride = s.stride
    cdef const floating* srcrow
    cdef const floating* src
    cdef floating* d
    for c in range(s.C):
        for kh in range(s.KH):
            for kw in range(s.KW):
                srcrow = cols + ((c * s.KH + kh) * s.KW + kw) * ld
                _valid_range(s.W, kw, stride, s.pad, OW, &lo, &hi)
                if hi == lo:
                    continue
                iw0 = lo * stride - s.pad + kw
                for oh in range(oh0, oh1):
                    ih = oh * stride - s.pad + kh
                    if ih < 0 or ih >= s.H:
                        continue
                    src = srcrow + (oh - oh0) * OW + lo
                    d = dx + (c * s.H + ih) * s.W + iw0
                    if stride == 1:
                        for j in range(hi - lo):
                            d[j] += src[j]
                    else:
                        for j in range(hi - lo):
                            d[j * stride] += src[j]


cdef void _col2im_image(const floating* cols, Py_ssize_t ld, floating* dx,
                        ConvShape s) noexcept nogil:
    # dx (C, H, W) = the sum of the column entries read from each pixel.
    memset(dx, 0, <size_t>s.C * s.H * s.W * sizeof(floating))
    _col2im_rows(cols, ld, dx, s, 0, s.OH)


cdef inline Py_ssize_t _padded_elements(ConvShape s) noexcept nogil:
    # Elements of one zero-padded image (C, H + 2*pad, W + 2*pad), unrounded.
    return <Py_ssize_t>s.C * (s.H + 2 * s.pad) * (s.W + 2 * s.pad)


cdef bint _gathered_conv(ConvShape s, Py_ssize_t extra=0) noexcept nogil:
    # Whether _conv_forward_image reads an image's columns in place
    # (_cpu_gemm_typed.h, xdl_conv_image): AVX2 + FMA, stride 1, and the
    # image's padded copy, SIMD_SPARE spare elements, the K row offsets and `extra`
    # more elements fit in the space of its columns (always but for some
    # 1x1 convolutions).
    return (_simd_kernels and s.stride == 1 and
            _padded_elements(s) + SIMD_SPARE + s.K + extra <= _aligned(<Py_ssize_t>s.K * s.P))


cdef void _padded_columns(const floating* x, floating* xpad, int* off, ConvShape s) noexcept nogil:
    # The image's columns, to be read in place: xpad (C, Hp, Wp) padded with
    # SIMD_SPARE zeros past its end (which a last panel's spare lanes read), and the
    # offset in xpad of each row k = (c, kh, kw) of the columns.
    cdef Py_ssize_t Hp = s.H + 2 * s.pad, Wp = s.W + 2 * s.pad
    cdef int c, kh, kw
    _pad_image(x, xpad, s)
    memset(xpad + _padded_elements(s), 0, SIMD_SPARE * sizeof(floating))
    for c in range(s.C):
        for kh in range(s.KH):
            for kw in range(s.KW):
                off[(c * s.KH + kh) * s.KW + kw] = <int>((c * Hp + kh) * Wp + kw)


cdef inline int* _column_offsets(floating* cols, ConvShape s) noexcept nogil:
    # Where the row offsets go in the space of cols: after the padded copy
    # and its SIMD_SPARE spare elements.
    return <int*>(cols + _padded_elements(s) + SIMD_SPARE)


cdef void _gathered_conv_image(const floating* x, const floating* w, const floating* b,
                               floating* out, floating* cols, ConvShape s) noexcept nogil:
    # out (F, P) = w (F, K) @ columns + b without im2col: the padded image
    # and the row offsets of its columns in the space of cols.
    cdef int* off = _column_offsets(cols, s)
    _padded_columns(x, cols, off, s)
    _xdl_conv_image(cols, s.W + 2 * s.pad, s.OH, s.OW, s.K, off, w, b, s.F, out)


cdef void _conv_forward_image(const floating* x, const floating* w, const floating* b,
                              floating* out, floating* cols, ConvShape s) noexcept nogil:
    # out (F, P) = w (F, K) @ cols (K, P) + b, band by band of s.bh output
    # rows: im2col of the band, then its product by tiles of fb x pb. On
    # AVX2 + FMA, stride 1: no im2col (_gathered_conv_image).
    cdef Py_ssize_t f0, p0, f, p, q0, bp
    cdef int fn, pn, oh0, oh1
    cdef floating bias
    cdef floating* o
    if _gathered_conv(s):
        _gathered_conv_image(x, w, b, out, cols, s)
        return
    cdef const floating* src = _padded_source(x, cols + _aligned(<Py_ssize_t>s.K * s.P), s)
    oh0 = 0
    while oh0 < s.OH:
        oh1 = min(oh0 + s.bh, s.OH)
        q0 = <Py_ssize_t>oh0 * s.OW      # the band's first pixel
        bp = <Py_ssize_t>(oh1 - oh0) * s.OW
        _im2col_rows(src, cols, bp, s, oh0, oh1)
        f0 = 0
        while f0 < s.F:
            fn = min(s.fb, s.F - f0)
            p0 = 0
            while p0 < bp:
                pn = min(s.pb, bp - p0)
                # column-major: out^T (pn, fn) = cols^T (pn, K) @ w^T (K, fn)
                _gemm(c'N', c'N', pn, fn, s.K, <floating>1, cols + p0, bp,
                      w + f0 * s.K, s.K, <floating>0, out + f0 * s.P + q0 + p0, s.P)
                p0 += pn
            f0 += fn
        oh0 = oh1
    for f in range(s.F):
        bias = b[f]
        o = out + f * s.P
        for p in range(s.P):
            o[p] += bias


cdef floating _sum(const floating* d, Py_ssize_t n) noexcept nogil:
    # Sum of n elements in 16 interleaved partial sums, added pairwise at the
    # end: a fixed order (deterministic) that the compiler vectorizes. One
    # running sum waits on every add: the 32 row sums of a 32x32 image's
    # gradient cost about 30 us of its 140 us backward pass here.
    cdef floating part[16]
    cdef Py_ssize_t i, l, width
    for l in range(16):
        part[l] = 0
    i = 0
    while i + 16 <= n:
        for l in range(16):
            part[l] = part[l] + d[i + l]
        i += 16
    for l in range(n - i):
        part[l] = part[l] + d[i + l]
    width = 8
    while width >= 1:
        for l in range(width):
            part[l] = part[l] + part[l + width]
        width //= 2
    return part[0]


cdef bint _gathered_conv_dw(ConvShape s, int panel) noexcept nogil:
    # Whether _conv_backward_image takes an image's filter gradient with the
    # columns read in place (xdl_conv_dw_image): as _gathered_conv, with
    # room in the columns' space for dout transposed (panels of `panel`
    # filters by P) too.
    return _gathered_conv(s, <Py_ssize_t>((s.F + panel - 1) // panel) * panel * s.P)


cdef void _gathered_conv_dw_image(const floating* x, const floating* dout, floating* dw,
                                  floating* cols, ConvShape s) noexcept nogil:
    # dw (F, K) = dout (F, P) @ columns^T without im2col: the padded image
    # (SIMD_SPARE zeros past its end), the row offsets and dout transposed in the
    # space of cols.
    cdef int* off = _column_offsets(cols, s)
    cdef floating* dct = <floating*>off + s.K
    _padded_columns(x, cols, off, s)
    _xdl_conv_dw_image(cols, s.W + 2 * s.pad, s.OH, s.OW, s.K, off, dout, s.F, dct, dw)


cdef bint _gathered_conv_dx(ConvShape s) noexcept nogil:
    # Whether _conv_backward_image takes dx as the stride-1 convolution of
    # dout, padded by KH-1-pad rows and KW-1-pad columns, with the filters
    # flipped and their two channel axes swapped (xdl_conv_image, no
    # col2im): padding no larger than the filter less one, and the padded
    # dout (SIMD_SPARE spare elements), the row offsets, the flipped filters and C
    # zeros (the bias) in the space of the image's columns.
    cdef Py_ssize_t Kt = <Py_ssize_t>s.F * s.KH * s.KW
    cdef Py_ssize_t Hd = s.OH + 2 * (s.KH - 1 - s.pad), Wd = s.OW + 2 * (s.KW - 1 - s.pad)
    return (_gathered_conv(s) and s.pad <= s.KH - 1 and s.pad <= s.KW - 1 and
            s.F * Hd * Wd + SIMD_SPARE + Kt + s.C * Kt + s.C <= _aligned(<Py_ssize_t>s.K * s.P))


cdef void _gathered_conv_dx_image(const floating* w, const floating* dout, floating* dx,
                                  floating* cols, ConvShape s) noexcept nogil:
    # dx (C, H, W) = the stride-1 convolution of dout padded by (KH-1-pad,
    # KW-1-pad) with wt[c, (f, kh, kw)] = w[f, c, KH-1-kh, KW-1-kw], read in
    # place as in _gathered_conv_image.
    cdef int ph = s.KH - 1 - s.pad, pw = s.KW - 1 - s.pad
    cdef Py_ssize_t Hd = s.OH + 2 * ph, Wd = s.OW + 2 * pw
    cdef Py_ssize_t Kt = <Py_ssize_t>s.F * s.KH * s.KW, padded = s.F * Hd * Wd
    cdef Py_ssize_t f, c, h, kh, kw, j
    cdef int* off = <int*>(cols + padded + SIMD_SPARE)
    cdef floating* wt = cols + padded + SIMD_SPARE + Kt
    cdef floating* zeros = wt + s.C * Kt
    memset(cols, 0, <size_t>(padded + SIMD_SPARE) * sizeof(floating))
    for f in range(s.F):
        for h in range(s.OH):
            memcpy(cols + (f * Hd + h + ph) * Wd + pw, dout + (f * s.OH + h) * s.OW,
                   <size_t>s.OW * sizeof(floating))
    for f in range(s.F):
        for kh in range(s.KH):
            for kw in range(s.KW):
                j = (f * s.KH + kh) * s.KW + kw
                off[j] = <int>((f * Hd + kh) * Wd + kw)
                for c in range(s.C):
                    wt[c * Kt + j] = w[((f * s.C + c) * s.KH + s.KH - 1 - kh) * s.KW
                                       + s.KW - 1 - kw]
    memset(zeros, 0, <size_t>s.C * sizeof(floating))
    _xdl_conv_image(cols, <int>Wd, s.H, s.W, <int>Kt, off, wt, zeros, s.C, dx)


cdef void _conv_backward_image(const floating* x, const floating* w, const floating* dout,
                               floating* dx, floating* dw, floating* db, floating* cols,
                               ConvShape s) noexcept nogil:
    # dw (F, K) = dout (F, P) @ cols^T; db (F,) = row sums of dout;
    # dcols (K, P) = w^T @ dout, folded back into dx (C, H, W) unless dx is
    # NULL. Band by band of s.bh output rows: im2col of the band, its part
    # of dw, then (in the band's buffer) its column gradient, added into dx.
    # On AVX2 + FMA, stride 1, dw is taken first without im2col
    # (_gathered_conv_dw_image), then dx without col2im
    # (_gathered_conv_dx_image) where the padding allows, else by the bands.
    cdef Py_ssize_t f0, p0, k0, f, q0, bp
    cdef int fn, pn, kn, oh0, oh1
    # panels of 2 vectors: 16 floats or 8 doubles
    cdef bint gathered = _gathered_conv_dw(s, 64 // sizeof(floating))
    if gathered:
        _gathered_conv_dw_image(x, dout, dw, cols, s)
    for f in range(s.F):
        db[f] = _sum(dout + f * s.P, s.P)
    if gathered and dx == NULL:
        return
    if gathered and _gathered_conv_dx(s):
        _gathered_conv_dx_image(w, dout, dx, cols, s)
        return
    cdef const floating* src = _padded_source(x, cols + _aligned(<Py_ssize_t>s.K * s.P), s)
    if dx != NULL:
        memset(dx, 0, <size_t>s.C * s.H * s.W * sizeof(floating))
    oh0 = 0
    while oh0 < s.OH:
        oh1 = min(oh0 + s.bh, s.OH)
        q0 = <Py_ssize_t>oh0 * s.OW
        bp = <Py_ssize_t>(oh1 - oh0) * s.OW
        if not gathered:
            _im2col_rows(src, cols, bp, s, oh0, oh1)
            k0 = 0
            while k0 < s.K:
                kn = min(s.wk, s.K - k0)
                f0 = 0
                while f0 < s.F:
                    fn = min(s.wf, s.F - f0)
                    p0 = 0
                    while p0 < bp:
                        pn = min(s.wp, bp - p0)
                        # column-major: dw^T (kn, fn) (+)= cols (kn, pn) @ dout^T (pn, fn)
                        _gemm(c'T', c'N', kn, fn, pn, <floating>1, cols + k0 * bp + p0, bp,
                              dout + f0 * s.P + q0 + p0, s.P, <floating>(q0 + p0 > 0),
                              dw + f0 * s.K + k0, s.K)
                        p0 += pn
                    f0 += fn
                k0 += kn
        if dx != NULL:
            # The band's columns are no longer needed: the buffer receives
            # their gradient.
            p0 = 0
            while p0 < bp:
                pn = min(s.pb, bp - p0)
                f0 = 0
                while f0 < s.F:
                    fn = min(s.fb, s.F - f0)
                    # column-major: dcols^T (pn, K) (+)= dout^T (pn, fn) @ w (fn, K)
                    _gemm(c'N', c'T', pn, s.K, fn, <floating>1, dout + f0 * s.P + q0 + p0, s.P,
                          w + f0 * s.K, s.K, <floating>(f0 > 0), cols + p0, bp)
                    f0 += fn
                p0 += pn
            _col2im_rows(cols, bp, dx, s, oh0, oh1)
        oh0 = oh1


# ------------------------------------------ im2col and col2im: per image

cdef struct Im2colJob:
    ConvShape s
    const void* x       # (N, C, H, W)
    void* cols          # (K, N*P)
    void* workspace     # _padded_size(s) elements per thread: a padded image


cdef void _im2col_run(Items* items, const Im2colJob* j, int tid, floating* cols) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef floating* xpad = <floating*>j.workspace + tid * _padded_size(j.s)
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t lo = 0, hi = 0, n
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _im2col_image(x + n * image, xpad, cols + n * j.s.P, <Py_ssize_t>j.s.N * j.s.P, j.s)


cdef class _Im2colWork(_Work):
    cdef Im2colJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _im2col_run(&self.items, &self.job, tid, <double*>self.job.cols)
            else:
                _im2col_run(&self.items, &self.job, tid, <float*>self.job.cols)


cdef struct Col2imJob:
    ConvShape s
    const void* cols    # (K, N*P)
    void* dx            # (N, C, H, W)


cdef void _col2im_run(Items* items, const Col2imJob* j, floating* dx) noexcept nogil:
    cdef const floating* cols = <const floating*>j.cols
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t lo = 0, hi = 0, n
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _col2im_image(cols + n * j.s.P, <Py_ssize_t>j.s.N * j.s.P, dx + n * image, j.s)


cdef class _Col2imWork(_Work):
    cdef Col2imJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _col2im_run(&self.items, &self.job, <double*>self.job.dx)
            else:
                _col2im_run(&self.items, &self.job, <float*>self.job.dx)


def im2col(x, int KH, int KW, int stride, int pad, int OH, int OW):
    """
    Inputs:
    - x: (N, C, H, W) float32/float64; KH, KW: window; stride, pad; OH, OW:
      output size

    Returns:
    - cols: (C*KH*KW, N*OH*OW), row (c*KH + kh)*KW + kw, column
      (n*OH + oh)*OW + ow
    """
    x = _floating(x, "x")
    _boundary.check_im2col(x, KH, KW, stride, pad, OH, OW)
    cdef _Im2colWork work = _Im2colWork()
    work.job.s = _conv_shape(x.shape, 0, KH, KW, stride, pad, OH, OW)
    cols = pooled_empty((work.job.s.K, work.job.s.N * work.job.s.P), x.dtype)
    if cols.size:
        threads = _cpu_team.threads_for(work.job.s.N)
        workspace = _cpu_team.take_workspace(max(1, threads * _padded_size(work.job.s)), x.dtype)
        work.job.x = _address(x, False)
        work.job.cols = _address(cols, True)
        work.job.workspace = _address(workspace, True)
        _start(work, work.job.s.N, 1, x.dtype, (x, cols, workspace), threads)
        _cpu_team.give_back(workspace)
    return cols


def col2im(cols, x_shape, int KH, int KW, int stride, int pad, int OH, int OW):
    """
    Adjoint of im2col: every column entry is added back into the input pixel
    it was read from.

    Inputs:
    - cols: (C*KH*KW, N*OH*OW); x_shape: (N, C, H, W); the rest as im2col

    Returns:
    - dx: (N, C, H, W) with the dtype of cols
    """
    cols = _floating(cols, "cols")
    _boundary.check_col2im(cols, x_shape, KH, KW, stride, pad, OH, OW)
    cdef _Col2imWork work = _Col2imWork()
    work.job.s = _conv_shape(tuple(x_shape), 0, KH, KW, stride, pad, OH, OW)
    dx = np.zeros(tuple(x_shape), dtype=cols.dtype)
    if cols.size:
        work.job.cols = _address(cols, False)
        work.job.dx = _address(dx, True)
        _start(work, work.job.s.N, 1, cols.dtype, (cols, dx))
    return dx


# --------------------------------------------- convolution: per image

cdef struct ConvForwardJob:
    ConvShape s
    const void* x           # (N, C, H, W)
    const void* w           # (F, K)
    const void* b           # (F,)
    void* out               # (N, F, P)
    void* workspace         # per_thread elements per thread: _image_scratch(s)
    Py_ssize_t per_thread


cdef void _conv_forward_run(Items* items, const ConvForwardJob* j, int tid,
                            floating* out) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef floating* cols = <floating*>j.workspace + tid * j.per_thread
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t lo = 0, hi = 0, n
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _conv_forward_image(x + n * image, <const floating*>j.w, <const floating*>j.b,
                                out + n * j.s.F * j.s.P, cols, j.s)


cdef class _ConvForwardWork(_Work):
    cdef ConvForwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _conv_forward_run(&self.items, &self.job, tid, <double*>self.job.out)
            else:
                _conv_forward_run(&self.items, &self.job, tid, <float*>self.job.out)


cdef struct ConvBackwardJob:
    ConvShape s
    const void* x           # (N, C, H, W)
    const void* w           # (F, K)
    const void* dout        # (N, F, P)
    void* dx                # (N, C, H, W), or NULL: no input gradient
    void* dw_parts          # (images of the group, F*K): each image's dw
    void* db_parts          # (images of the group, F): each image's db
    void* workspace         # per_thread elements per thread: _image_scratch(s)
    Py_ssize_t per_thread
    Py_ssize_t n0           # the group's first image: unit u is image n0 + u
    OrderedSum* order       # dw and db, summed over the group's units as they are done


cdef void _conv_backward_run(Items* items, const ConvBackwardJob* j, int tid,
                             floating* dw_parts) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef const floating* dout = <const floating*>j.dout
    cdef floating* dx = <floating*>j.dx
    cdef floating* db_parts = <floating*>j.db_parts
    cdef floating* cols = <floating*>j.workspace + tid * j.per_thread
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t lo = 0, hi = 0, u, n
    while _take(items, &lo, &hi):
        for u in range(lo, hi):
            n = j.n0 + u
            _conv_backward_image(x + n * image, <const floating*>j.w,
                                 dout + n * j.s.F * j.s.P,
                                 dx + n * image if dx != NULL else NULL,
                                 dw_parts + u * j.s.F * j.s.K, db_parts + u * j.s.F, cols, j.s)
            _add_ready(j.order, u, dw_parts, db_parts, <Py_ssize_t>j.s.F * j.s.K, j.s.F)


cdef class _ConvBackwardWork(_Work):
    cdef ConvBackwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _conv_backward_run(&self.items, &self.job, tid, <double*>self.job.dw_parts)
            else:
                _conv_backward_run(&self.items, &self.job, tid, <float*>self.job.dw_parts)


def conv_forward(x, w, b, int stride, int pad, int OH, int OW):
    """
    Inputs:
    - x: (N, C, H, W); w: (F, C, KH, KW); b: (F,); one float32/float64 dtype
    - stride, pad; OH, OW: output size

    Returns:
    - out: (N, F, OH, OW), out[n, f] = sum over (c, kh, kw) of
      w[f, c, kh, kw] * xpad[n, c, oh*stride + kh, ow*stride + kw] + b[f]
    """
    dtype = _boundary.float_dtype((("x", x), ("w", w), ("b", b)), WHERE, np.ndarray, "numpy")
    _boundary.check_conv_forward(x, w, b, stride, pad, OH, OW)
    x, w, b = np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(b)
    cdef _ConvForwardWork work = _ConvForwardWork()
    cdef ConvShape s = _conv_shape(x.shape, w.shape[0], w.shape[2], w.shape[3],
                                   stride, pad, OH, OW, np.dtype(dtype).itemsize)
    out = pooled_empty((s.N, s.F, OH, OW), dtype)
    if out.size == 0:
        return out
    if s.K == 0:
        out[...] = b.reshape(1, -1, 1, 1)
        return out
    cdef int threads = _cpu_team.threads_for(s.N)
    work.job.s = s
    work.job.per_thread = _image_scratch(s)
    workspace = _cpu_team.take_workspace(threads * work.job.per_thread, dtype)
    work.job.x, work.job.w, work.job.b = _address(x, False), _address(w, False), _address(b, False)
    work.job.out = _address(out, True)
    work.job.workspace = _address(workspace, True)
    _start(work, s.N, 1, dtype, (x, w, b, out, workspace), threads)
    _cpu_team.give_back(workspace)
    return out


def conv_backward(dout, x, w, int stride, int pad, int OH, int OW, compute_dx=True):
    """
    Inputs:
    - dout: (N, F, OH, OW) upstream gradient; x, w: as conv_forward
    - compute_dx: False skips the input gradient (dx is returned as None)

    Returns a tuple of (dx, dw, db).
    """
    dtype = _boundary.float_dtype((("dout", dout), ("x", x), ("w", w)), WHERE, np.ndarray,
                                  "numpy")
    _boundary.check_conv_backward(dout, x, w, stride, pad, OH, OW)
    x, dout, w = np.ascontiguousarray(x), np.ascontiguousarray(dout), np.ascontiguousarray(w)
    cdef ConvShape s = _conv_shape(x.shape, w.shape[0], w.shape[2], w.shape[3],
                                   stride, pad, OH, OW, np.dtype(dtype).itemsize)
    dx = pooled_empty(x.shape, dtype) if compute_dx else None
    dw = np.zeros((s.F, s.K), dtype=dtype)
    db = np.zeros(s.F, dtype=dtype)
    if s.N == 0 or s.F == 0 or s.K == 0 or s.P == 0:
        if dx is not None:
            dx[...] = 0
        db[...] = dout.sum(axis=(0, 2, 3))
        return dx, dw.reshape(w.shape), db
    cdef int threads = _cpu_team.threads_for(s.N)
    # Images per group: the per-image partials of a group stay small.
    cdef Py_ssize_t group = max(threads, min(s.N, PARTIAL_ELEMENTS // (s.F * (s.K + 1))))
    cdef Py_ssize_t per_thread = _image_scratch(s)
    cdef Py_ssize_t n0, n1
    cdef _ConvBackwardWork work
    workspace = _cpu_team.take_workspace(threads * per_thread, dtype)
    parts = _cpu_team.take_workspace(group * s.F * (s.K + 1), dtype)
    dw_parts = parts[:group * s.F * s.K]
    db_parts = parts[group * s.F * s.K:]
    cdef _OrderedSums sums = _OrderedSums(group, dw, db)
    for n0 in range(0, s.N, group):
        n1 = min(s.N, n0 + group)
        work = _ConvBackwardWork()
        work.job.s = s
        work.job.x, work.job.w = _address(x, False), _address(w, False)
        work.job.dout = _address(dout, False)
        work.job.dx = _address(dx, True)
        work.job.dw_parts, work.job.db_parts = _address(dw_parts, True), _address(db_parts, True)
        work.job.workspace = _address(workspace, True)
        work.job.per_thread = per_thread
        work.job.n0 = n0
        work.job.order = sums.start(n1 - n0)
        _start(work, n1 - n0, 1, dtype, (x, w, dout, dx, parts, workspace, sums),
               min(threads, n1 - n0))
        sums.check()
    _cpu_team.give_back(workspace)
    _cpu_team.give_back(parts)
    return dx, dw.reshape(w.shape), db
