# Convolution + bias + ReLU + max pooling, fused per image, on the CPU
# (included by _cpu_kernels.pyx after _cpu_conv.pxi and _cpu_pool.pxi, whose
# per-image and per-plane functions it runs).
#
# A thread takes whole images and keeps one image's pre-pool map (F planes of
# OH x OW) in its own scratch, which stays in its cache:
# - forward: convolve the image into the scratch (bias included), pool each
#   plane into the output, then apply the ReLU to the pooled values (ReLU and
#   max commute, so the ReLU runs on a quarter of the values for 2x2 pools);
# - backward: route the pooled gradient through the argmax into the scratch,
#   which is then the upstream gradient of the image's convolution.
# The pre-pool map is never written to memory, read back, or allocated.
#
# The argmax says where each pooled gradient goes: the window index of the
# first maximum (as maxpool_forward) where the pooled value is > 0, and -1
# where the ReLU cut it (numpy_kernels.relu_of_pooled). The unfused chain
# (conv_forward, maxpool_forward, then the ReLU) gives the same values bit
# for bit: the same per-image convolution, pooling and reductions.

from xdl.backends import numpy_kernels


cdef void _relu_pooled(floating* out, int* am, Py_ssize_t n) noexcept nogil:
    # ReLU of pooled values, and no gradient where it is not > 0. A NaN
    # stays NaN (as np.maximum leaves it), with no gradient. Selects, not
    # branches: the sign of a pooled value is a coin toss.
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = out[i]
        am[i] = am[i] if v > 0 else -1
        out[i] = 0 if v <= 0 else v


cdef struct ConvReluPoolForwardJob:
    ConvShape s             # the convolution
    PoolShape q             # the pooling of one image's (F, OH, OW) map
    const void* x           # (N, C, H, W)
    const void* w           # (F, K)
    const void* b           # (F,)
    void* out               # (N, F, POH, POW)
    void* argmax            # (N, F, POH, POW) int32
    void* workspace         # per thread: the map (F, P), then _image_scratch(s)
    Py_ssize_t per_thread
    Py_ssize_t cols_at      # offset of cols in a thread's workspace


cdef void _conv_relu_pool_forward_run(Items* items, const ConvReluPoolForwardJob* j, int tid,
                                      floating* out) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef int* argmax = <int*>j.argmax
    cdef floating* conv = <floating*>j.workspace + tid * j.per_thread
    cdef floating* cols = conv + j.cols_at
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t plane = <Py_ssize_t>j.q.OH * j.q.OW
    cdef Py_ssize_t lo = 0, hi = 0, n, f, o
    while _take(items, &lo, &hi):
        for n in range(lo, hi):
            _conv_forward_image(x + n * image, <const floating*>j.w, <const floating*>j.b,
                                conv, cols, j.s)
            o = n * j.s.F * plane
            for f in range(j.s.F):
                _pool_forward_plane(conv + f * j.s.P, out + o + f * plane,
                                    argmax + o + f * plane, j.q)
            _relu_pooled(out + o, argmax + o, j.s.F * plane)


cdef class _ConvReluPoolForwardWork(_Work):
    cdef ConvReluPoolForwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _conv_relu_pool_forward_run(&self.items, &self.job, tid, <double*>self.job.out)
            else:
                _conv_relu_pool_forward_run(&self.items, &self.job, tid, <float*>self.job.out)


cdef struct ConvReluPoolBackwardJob:
    ConvShape s
    PoolShape q
    const void* x           # (N, C, H, W)
    const void* w           # (F, K)
    const void* dout        # (N, F, POH, POW)
    const void* argmax      # (N, F, POH, POW) int32
    void* dx                # (N, C, H, W), or NULL: no input gradient
    void* dw_parts          # (images of the group, F*K): each image's dw
    void* db_parts          # (images of the group, F): each image's db
    void* workspace         # per thread: the map's gradient (F, P), then _image_scratch(s)
    Py_ssize_t per_thread
    Py_ssize_t cols_at
    Py_ssize_t n0           # the group's first image: unit u is image n0 + u
    OrderedSum* order       # dw and db, summed over the group's units as they are done


cdef void _conv_relu_pool_backward_run(Items* items, const ConvReluPoolBackwardJob* j, int tid,
                                       floating* dw_parts) noexcept nogil:
    cdef const floating* x = <const floating*>j.x
    cdef const floating* dout = <const floating*>j.dout
    cdef const int* argmax = <const int*>j.argmax
    cdef floating* dx = <floating*>j.dx
    cdef floating* db_parts = <floating*>j.db_parts
    cdef floating* dconv = <floating*>j.workspace + tid * j.per_thread
    cdef floating* cols = dconv + j.cols_at
    cdef Py_ssize_t image = <Py_ssize_t>j.s.C * j.s.H * j.s.W
    cdef Py_ssize_t plane = <Py_ssize_t>j.q.OH * j.q.OW
    cdef Py_ssize_t lo = 0, hi = 0, u, n, f, o
    while _take(items, &lo, &hi):
        for u in range(lo, hi):
            n = j.n0 + u
            o = n * j.s.F * plane
            for f in range(j.s.F):
                _pool_backward_plane(dout + o + f * plane, argmax + o + f * plane,
                                     dconv + f * j.s.P, j.q)
            _conv_backward_image(x + n * image, <const floating*>j.w, dconv,
                                 dx + n * image if dx != NULL else NULL,
                                 dw_parts + u * j.s.F * j.s.K, db_parts + u * j.s.F, cols, j.s)
            _add_ready(j.order, u, dw_parts, db_parts, <Py_ssize_t>j.s.F * j.s.K, j.s.F)


cdef class _ConvReluPoolBackwardWork(_Work):
    cdef ConvReluPoolBackwardJob job

    def run(self, int tid):
        with nogil:
            if self.is_double:
                _conv_relu_pool_backward_run(&self.items, &self.job, tid,
                                             <double*>self.job.dw_parts)
            else:
                _conv_relu_pool_backward_run(&self.items, &self.job, tid,
                                             <float*>self.job.dw_parts)


def conv_relu_pool_forward(x, w, b, int stride, int pad, int OH, int OW,
                           int ph, int pw, int pool_stride, int POH, int POW):
    """
    Inputs:
    - x: (N, C, H, W); w: (F, C, KH, KW); b: (F,); one float32/float64 dtype
    - stride, pad; OH, OW: the convolution's output size
    - ph, pw: pooling window; pool_stride; POH, POW: the pooled size

    Returns a tuple of:
    - out: (N, F, POH, POW), max pooling of relu(conv(x, w) + b)
    - argmax: (N, F, POH, POW) int32, index kh*pw + kw of the first maximum
      of each window where out > 0, -1 where the ReLU gives no gradient
    """
    dtype = _boundary.float_dtype((("x", x), ("w", w), ("b", b)), WHERE, np.ndarray, "numpy")
    _boundary.check_conv_relu_pool_forward(x, w, b, stride, pad, OH, OW,
                                           ph, pw, pool_stride, POH, POW)
    x, w, b = np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(b)
    cdef ConvShape s = _conv_shape(x.shape, w.shape[0], w.shape[2], w.shape[3],
                                   stride, pad, OH, OW, np.dtype(dtype).itemsize)
    if s.K == 0 or s.N == 0 or s.F == 0:
        out, argmax = maxpool_forward(conv_forward(x, w, b, stride, pad, OH, OW),
                                      ph, pw, pool_stride, POH, POW)
        return numpy_kernels.relu_of_pooled(out, argmax)
    cdef _ConvReluPoolForwardWork work = _ConvReluPoolForwardWork()
    work.job.s = s
    work.job.q = _pool_shape((s.N, s.F, OH, OW), ph, pw, pool_stride, POH, POW)
    out = pooled_empty((s.N, s.F, POH, POW), dtype)
    argmax = pooled_empty((s.N, s.F, POH, POW), np.int32)
    cdef int threads = _cpu_team.threads_for(s.N)
    work.job.cols_at = _aligned(<Py_ssize_t>s.F * s.P)
    work.job.per_thread = work.job.cols_at + _image_scratch(s)
    workspace = _cpu_team.take_workspace(threads * work.job.per_thread, dtype)
    work.job.x, work.job.w, work.job.b = _address(x, False), _address(w, False), _address(b, False)
    work.job.out, work.job.argmax = _address(out, True), _address(argmax, True)
    work.job.workspace = _address(workspace, True)
    _start(work, s.N, 1, dtype, (x, w, b, out, argmax, workspace), threads)
    _cpu_team.give_back(workspace)
    return out, argmax


def conv_relu_pool_backward(dout, argmax, x, w, int stride, int pad, int OH, int OW,
                            int ph, int pw, int pool_stride, int POH, int POW, compute_dx=True):
    """
    Inputs:
    - dout: (N, F, POH, POW) upstream gradient; argmax: from
      conv_relu_pool_forward; x, w and the geometry: as conv_relu_pool_forward
    - compute_dx: False skips the input gradient (dx is returned as None)

    Returns a tuple of (dx, dw, db).
    """
    dtype = _boundary.float_dtype((("dout", dout), ("x", x), ("w", w)), WHERE, np.ndarray,
                                  "numpy")
    _boundary.check_conv_relu_pool_backward(dout, argmax, x, w, stride, pad, OH, OW,
                                            ph, pw, pool_stride, POH, POW)
    x, dout, w = np.ascontiguousarray(x), np.ascontiguousarray(dout), np.ascontiguousarray(w)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    cdef ConvShape s = _conv_shape(x.shape, w.shape[0], w.shape[2], w.shape[3],
                                   stride, pad, OH, OW, np.dtype(dtype).itemsize)
    if s.N == 0 or s.F == 0 or s.K == 0 or s.P == 0:
        dconv = maxpool_backward(dout, argmax, (s.N, s.F, OH, OW), ph, pw, pool_stride, POH, POW)
        return conv_backward(dconv, x, w, stride, pad, OH, OW, compute_dx=compute_dx)
    dx = pooled_empty(x.shape, dtype) if compute_dx else None
    dw = np.zeros((s.F, s.K), dtype=dtype)
    db = np.zeros(s.F, dtype=dtype)
    cdef int threads = _cpu_team.threads_for(s.N)
    # Images per group: the per-image partials of a group stay small.
    cdef Py_ssize_t group = max(threads, min(s.N, PARTIAL_ELEMENTS // (s.F * (s.K + 1))))
    cdef Py_ssize_t n0, n1
    cdef _ConvReluPoolBackwardWork work = _ConvReluPoolBackwardWork()
    work.job.s = s
    work.job.q = _pool_shape((s.N, s.F, OH, OW), ph, pw, pool_stride, POH, POW)
    work.job.cols_at = _aligned(<Py_ssize_t>s.F * s.P)
    work.job.per_thread = work.job.cols_at + _image_scratch(s)
    workspace = _cpu_team.take_workspace(threads * work.job.per_thread, dtype)
    parts = _cpu_team.take_workspace(group * s.F * (s.K + 1), dtype)
    dw_parts = parts[:group * s.F * s.K]
    db_parts = parts[group * s.F * s.K:]
    work.job.x, work.job.w = _address(x, False), _address(w, False)
    work.job.dout, work.job.argmax = _address(dout, False), _address(argmax, False)
    work.job.dx = _address(dx, True)
    work.job.dw_parts, work.job.db_parts = _address(dw_parts, True), _address(db_parts, True)
    work.job.workspace = _address(workspace, True)
    cdef _OrderedSums sums = _OrderedSums(group, dw, db)
    keep = (x, w, dout, argmax, dx, parts, workspace, sums)
    for n0 in range(0, s.N, group):
        n1 = min(s.N, n0 + group)
        work.job.n0 = n0
        work.job.order = sums.start(n1 - n0)
        _start(work, n1 - n0, 1, dtype, keep, min(threads, n1 - n0))
        sums.check()
    _cpu_team.give_back(workspace)
    _cpu_team.give_back(parts)
    return dx, dw.reshape(w.shape), db
