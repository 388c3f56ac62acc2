# What every kind of CPU kernel shares (included by _cpu_kernels.pyx): the
# float type, BLAS, the work counter and the work objects the thread team
# runs, array addresses and argument checks. xdl/DESIGN.md, "The CPU
# kernels", explains the pattern and how to add a kind of kernel.

from libc.string cimport memcpy, memset
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
import sys
import threading
from scipy.linalg.cython_blas cimport dgemm, sgemm

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #include <intrin.h>
    static long long xdl_fetch_add(long long *p) { return _InterlockedExchangeAdd64(p, 1); }
    #else
    static long long xdl_fetch_add(long long *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    #endif
    """
    long long xdl_fetch_add(long long* p) noexcept nogil

ctypedef fused floating:
    float
    double

WHERE = "CPU kernels"

# OpenBLAS multithreads a GEMM only when m*n*k >= 2**19 (65536 * its
# GEMM_MULTITHREAD_THRESHOLD of 4, times 2 threads); every BLAS call here
# stays below that, so the team is the only pool at work.
GEMM_TILE_LIMIT = (1 << 19) - 1


# ----------------------------------------------------------- work items

cdef struct Items:
    # The units of one kernel call (images, planes, tiles or elements),
    # handed out `grain` at a time: item i is units [i*grain, (i+1)*grain).
    long long next      # the next item to hand out (atomic)
    long long count     # items
    Py_ssize_t grain    # units per item
    Py_ssize_t total    # units


cdef inline bint _take(Items* items, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Take the next item: units [lo, hi). False when none are left."""
    cdef long long i = xdl_fetch_add(&items.next)
    if i >= items.count:
        return False
    lo[0] = i * items.grain
    hi[0] = min(lo[0] + items.grain, items.total)
    return True


cdef class _Work:
    """
    One kernel call, shared by the team. A subclass per kind of kernel holds
    its job struct and defines run(tid): release the GIL, pick the float or
    double run function, which takes items until none are left.
    """
    cdef Items items
    cdef bint is_double
    cdef object keep    # the arrays behind the job's pointers, alive while any thread runs


cdef _prepare(_Work work, Py_ssize_t total, Py_ssize_t grain, dtype, keep):
    """Set up `total` units, `grain` per item, for the team."""
    work.items.next = 0
    work.items.grain = max(1, grain)
    work.items.total = total
    work.items.count = (total + work.items.grain - 1) // work.items.grain
    work.is_double = dtype == np.float64
    work.keep = keep


cdef class _Together(_Work):
    """
    A kernel call's work and a side work (an update rule's pass, pending
    from adamw_alongside) on the team at once: odd threads start with the side work,
    the others with the call's, and each then helps with the other until
    both are done. The side work reads and writes only its own arrays.
    """
    cdef _Work main
    cdef _Work side

    def run(self, int tid):
        if tid % 2:
            self.side.run(tid)
            self.main.run(tid)
        else:
            self.main.run(tid)
            self.side.run(tid)


# The side work the calling thread's next kernel call runs beside its own
# (see adamw_alongside), per Python thread.
_side = threading.local()


cdef _start(_Work work, Py_ssize_t total, Py_ssize_t grain, dtype, keep, int threads=0):
    """
    Hand `total` units, `grain` per item, to the team and wait (threads=0: as
    many as useful); with a side work pending (adamw_alongside), both at once.
    """
    cdef _Together together
    _prepare(work, total, grain, dtype, keep)
    if threads <= 0:
        threads = _cpu_team.threads_for(work.items.count)
    side = getattr(_side, "work", None)
    if side is None:
        _cpu_team.run(work, threads)
        return
    _side.work = None
    together = _Together()
    together.main, together.side = work, side
    _cpu_team.run(together, max(threads, _cpu_team.threads_for((<_Work>side).items.count)))


# ------------------------------------------------------------ arrays

# The byte-order mark of the host's own order in a buffer's format.
cdef char _NATIVE_ORDER = c'<' if sys.byteorder == "little" else c'>'


cdef void* _address(a, bint writable) except? NULL:
    """
    Address of the first element of a C-contiguous float32, float64 or int32
    numpy array (NULL for None or an empty array). Taken through the buffer
    protocol, which checks the layout and, with writable, that the array
    may be written; the element type is checked here. The caller keeps the
    array alive (the buffer is released at once: numpy arrays never move
    their data). About 0.2 us a call, against 1 us through a typed
    memoryview (which made a view of the array first): the kernels take
    several addresses per call, the CNN's step about 60.
    """
    cdef Py_buffer view
    cdef void* p
    cdef const char* fmt
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    if a is None or a.size == 0:
        return NULL
    if writable:
        flags |= PyBUF_WRITABLE
    PyObject_GetBuffer(a, &view, flags)
    try:
        # numpy's format: the type code, after a byte-order mark that is
        # native ('@', '=', or the host's '<' or '>') unless the array is
        # byte-swapped, which the kernels cannot read.
        fmt = view.format
        if fmt != NULL and (fmt[0] == c'@' or fmt[0] == c'=' or fmt[0] == _NATIVE_ORDER):
            fmt += 1
        if fmt == NULL or fmt[0] == 0 or fmt[1] != 0 or not (
                (fmt[0] == c'f' and view.itemsize == 4)
                or (fmt[0] == c'd' and view.itemsize == 8)
                or ((fmt[0] == c'i' or fmt[0] == c'l') and view.itemsize == 4)):
            raise TypeError("the kernels take native float32, float64 or int32 arrays, got %s"
                            % (a.dtype,))
        p = view.buf
    finally:
        PyBuffer_Release(&view)
    return p


def _floating(a, name):
    """a as a C-contiguous float32/float64 numpy array (TypeError otherwise)."""
    _boundary.float_dtype(((name, a),), WHERE, np.ndarray, "numpy")
    return np.ascontiguousarray(a)


def _check_arrays(inputs, states, same_shape=True):
    """
    Check (name, array) pairs: numpy arrays of one float dtype (and of one
    shape, with same_shape); the states (updated in place) also C-contiguous
    and writeable.

    Returns the dtype. Raises TypeError (not numpy, not float32/float64,
    mixed dtypes) or ValueError (shapes, layout), naming the argument.
    """
    named = tuple(inputs) + tuple(states)
    dtype = _boundary.float_dtype(named, WHERE, np.ndarray, "numpy")
    if same_shape:
        _boundary.check_same_shape(*named)
    for name, a in states:
        if not a.flags.c_contiguous:
            raise ValueError("%s must be C-contiguous: it is updated in place" % name)
        if not a.flags.writeable:
            raise ValueError("%s is read-only: it is updated in place" % name)
    return dtype


# -------------------------------------------------------------- BLAS

cdef inline void _gemm(char ta, char tb, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    # Column-major BLAS. A row-major (r, s) array with row stride ld is the
    # column-major (s, r) array with leading dimension ld.
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb,
              &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb,
              &beta, c, &ldc)
