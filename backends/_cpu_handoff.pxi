# How the team hands a kernel call to its workers and learns that they are
# done, without waiting on the OS (included by _cpu_kernels.pyx; the team
# itself is _cpu_team.py). A worker blocked on a queue takes tens of
# microseconds to wake on these virtual machines, twice per call (start
# and end); a call of the training step's kernels lost about that much each
# time. So a worker that has finished a call spins for the next one a short
# while (SPIN_SECONDS in _cpu_team.py) before it blocks, and the caller
# spins until its workers are done. xdl/DESIGN.md, "Threads", has the
# measurements.
#
# Each worker has a state word, alone on its cache line:
#   BLOCKED: waiting on its queue (a call must be put there);
#   SPINNING: waiting here for a call (the caller claims it: CLAIMED);
#   CLAIMED: a call was handed over by that claim.
# The team's counter word holds the workers still running the current call.

cdef extern from *:
    """
    #include <time.h>
    #if defined(_WIN32)
    #include <windows.h>
    #else
    #include <sched.h>
    #endif
    #if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
    #include <immintrin.h>
    #define XDL_PAUSE() _mm_pause()
    #elif defined(__aarch64__)
    #define XDL_PAUSE() __asm__ __volatile__("yield")
    #else
    #define XDL_PAUSE() ((void)0)
    #endif

    #define XDL_BLOCKED 0
    #define XDL_SPINNING 1
    #define XDL_CLAIMED 2

    #if defined(_MSC_VER)
    static long long xdl_load(long long *p) { return _InterlockedOr64(p, 0); }
    static void xdl_store(long long *p, long long v) { _InterlockedExchange64(p, v); }
    static long long xdl_add(long long *p, long long d) { return _InterlockedExchangeAdd64(p, d) + d; }
    static int xdl_cas(long long *p, long long expected, long long desired) {
        return _InterlockedCompareExchange64(p, desired, expected) == expected;
    }
    #else
    static long long xdl_load(long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static void xdl_store(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static long long xdl_add(long long *p, long long d) {
        return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
    }
    static int xdl_cas(long long *p, long long expected, long long desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }
    #endif

    static double xdl_seconds(void) {
    #if defined(_WIN32)
        LARGE_INTEGER f, c;
        QueryPerformanceFrequency(&f);
        QueryPerformanceCounter(&c);
        return (double)c.QuadPart / (double)f.QuadPart;
    #else
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec + 1e-9 * t.tv_nsec;
    #endif
    }

    static void xdl_yield(void) {
    #if defined(_WIN32)
        SwitchToThread();
    #else
        sched_yield();
    #endif
    }

    /* A worker that finished a call: wait up to `seconds` for the next one.
       1: claimed (run the caller's current call); 0: none came, the state
       is BLOCKED (wait on the queue), unless a claim won the race (1).
       Every 64 checks it looks at the clock and yields, should a thread of
       this process (the caller, running Python) be waiting for this CPU. */
    static int xdl_spin_for_call(long long *state, double seconds) {
        double end = xdl_seconds() + seconds;
        unsigned i;
        for (i = 1;; i++) {
            if (xdl_load(state) == XDL_CLAIMED) return 1;
            if (i % 64 == 0) {
                if (xdl_seconds() >= end) break;
                xdl_yield();
            } else {
                XDL_PAUSE();
            }
        }
        return !xdl_cas(state, XDL_SPINNING, XDL_BLOCKED);
    }

    /* The caller: wait until no worker is left running, giving the core
       to another thread every `yield_every` checks (1 when the team has
       more threads than CPUs: the workers need it). */
    static void xdl_wait_for_workers(long long *running, unsigned yield_every) {
        unsigned i;
        for (i = 1; xdl_load(running) != 0; i++) {
            if (i % yield_every == 0) xdl_yield();
            else XDL_PAUSE();
        }
    }
    """
    long long XDL_SPINNING
    long long XDL_CLAIMED
    long long xdl_add(long long* p, long long d) noexcept nogil
    void xdl_store(long long* p, long long v) noexcept nogil
    int xdl_cas(long long* p, long long expected, long long desired) noexcept nogil
    int xdl_spin_for_call(long long* state, double seconds) noexcept nogil
    void xdl_wait_for_workers(long long* running, unsigned yield_every) noexcept nogil

def handoff_word():
    """A zeroed state or counter word, alone on its 64-byte cache line."""
    return np.zeros(8, dtype=np.int64)


def handoff_start(long long[::1] running, int workers):
    """The caller, before handing a call over: `workers` workers will run it."""
    xdl_store(&running[0], workers)


def handoff_claim(long long[::1] state):
    """The caller: hand the current call to a spinning worker. False: it is blocked on its queue."""
    return bool(xdl_cas(&state[0], XDL_SPINNING, XDL_CLAIMED))


def handoff_finished(long long[::1] state, long long[::1] running):
    """
    A worker finished its part of the call: it will spin for the next one.
    The state comes first, so a caller that sees the counter reach 0 finds
    the worker claimable.
    """
    xdl_store(&state[0], XDL_SPINNING)
    xdl_add(&running[0], -1)


def handoff_next(long long[::1] state, double seconds):
    """A worker: spin up to `seconds` for the next call; True when one was claimed for it."""
    cdef int claimed
    cdef long long* p = &state[0]
    with nogil:
        claimed = xdl_spin_for_call(p, seconds)
    return bool(claimed)


def handoff_wait(long long[::1] running, bint oversubscribed):
    """The caller: wait until every worker has finished the call (yielding the core at once if oversubscribed)."""
    cdef long long* p = &running[0]
    cdef unsigned yield_every = 1 if oversubscribed else 1024
    with nogil:
        xdl_wait_for_workers(p, yield_every)


_cpu_team.use_handoff(handoff_word, handoff_start, handoff_claim, handoff_finished,
                      handoff_next, handoff_wait)
