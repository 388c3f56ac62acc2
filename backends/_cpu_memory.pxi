# Reused memory for the CPU kernels' large outputs (included by
# _cpu_kernels.pyx after _cpu_common.pxi). xdl/DESIGN.md, "The CPU kernels".
#
# A training step frees and allocates the same large arrays every time: the
# update rule's next_w replaces w, the backward pass's dw replaces the last
# one. glibc gives arrays over its mmap threshold (dynamic, at most 32 MiB)
# back to the kernel when they are freed, or trims them off its heap when
# several are freed together, and every new one then costs page faults in
# which the kernel zeroes its pages: about 580 faults and 10% of the float64
# CNN step here (its 8192 x 500 W2 and dW2 are 32.8 MB each; perf showed the
# zeroing, clear_page_erms, under Adam's writes and the dW2 copy).
#
# Outputs of POOL_MIN_BYTES or more therefore live in blocks kept here: an
# output is a numpy array over a _Block's memory; when the last array (or
# view) using the block is gone, the block's memory goes back to the idle
# list and the next output of that byte size reuses it, already mapped. Idle
# blocks are capped at POOL_IDLE_BYTES (oldest freed first); free_pooled()
# frees them all.

from libc.stdlib cimport free, malloc

# Outputs at least this large come from the pool (smaller ones: np.empty,
# which glibc serves from its heap without faults).
POOL_MIN_BYTES = 1 << 20
# Idle memory kept for reuse, at most.
POOL_IDLE_BYTES = 256 << 20

cdef enum:
    POOL_ALIGN = 64     # bytes: a cache line, and every SIMD load aligned

# Idle blocks, oldest first: (nbytes, raw pointer as int, aligned address as int).
_idle = []
_idle_bytes = 0


cdef void _keep_idle(char* raw, char* data, Py_ssize_t nbytes):
    # A block's memory, no longer used by any array: keep it for reuse, and
    # free the oldest idle blocks past the cap.
    global _idle_bytes
    _idle.append((nbytes, <size_t>raw, <size_t>data))
    _idle_bytes += nbytes
    while _idle_bytes > POOL_IDLE_BYTES and _idle:
        size, old, _ = _idle.pop(0)
        _idle_bytes -= size
        free(<void*><size_t>old)


cdef class _Block:
    """
    POOL_ALIGN-aligned memory for one output array, exported as a writable
    byte buffer (the array's base); back to the idle list when the array and
    every view of it are gone.
    """
    cdef char* raw
    cdef char* data
    cdef Py_ssize_t nbytes
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = b"B"
        view.ndim = 1
        self.shape[0] = self.nbytes
        self.strides[0] = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        if self.raw == NULL:
            return
        try:
            _keep_idle(self.raw, self.data, self.nbytes)
        except Exception:  # the module is being torn down (its globals are gone)
            free(self.raw)


def pooled_empty(shape, dtype):
    """
    np.empty(shape, dtype), for the kernels' outputs: from a reused block of
    memory when it is POOL_MIN_BYTES or more (see the top of this file).

    Inputs:
    - shape: tuple of ints; dtype: numpy dtype

    Returns:
    - a C-contiguous, writeable, uninitialized array
    """
    global _idle_bytes
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    cdef Py_ssize_t count = 1
    for d in shape:
        count *= d
    cdef Py_ssize_t nbytes = count * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    cdef _Block block = _Block()
    for i in range(len(_idle) - 1, -1, -1):  # the most recently freed first
        if _idle[i][0] == nbytes:
            _, raw, data = _idle.pop(i)
            _idle_bytes -= nbytes
            block.raw, block.data = <char*><size_t>raw, <char*><size_t>data
            break
    else:
        block.raw = <char*>malloc(nbytes + POOL_ALIGN)
        if block.raw == NULL:
            raise MemoryError("cannot allocate %d bytes for an array of shape %s (%s)"
                              % (nbytes, shape, dtype))
        block.data = block.raw + (-<size_t>block.raw) % POOL_ALIGN
    block.nbytes = nbytes
    return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)


def free_pooled():
    """Free the idle blocks kept for reuse (arrays in use keep theirs)."""
    global _idle_bytes
    while _idle:
        size, raw, _ = _idle.pop()
        _idle_bytes -= size
        free(<void*><size_t>raw)


def pooled_idle_bytes():
    """Bytes of idle memory kept for reuse now."""
    return _idle_bytes
