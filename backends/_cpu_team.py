"""The thread team and the scratch workspace of the compiled CPU kernels.

Plain Python: the kernels in ``_cpu_kernels`` hand the team a work object
whose ``run(tid)`` method releases the GIL and takes items from a shared
atomic counter until none are left (xdl/DESIGN.md, "The CPU kernels").

- The team is the calling thread plus ``get_num_threads() - 1`` workers.
  A worker that has finished a call spins for the next one for
  SPIN_SECONDS, then blocks on its queue; the caller spins until its
  workers are done. Waking a blocked thread took tens of microseconds here,
  twice per call; the spinning handoff is in ``_cpu_handoff.pxi``. Workers
  never spin when there are more threads than CPUs.
- A call made while another Python thread is using the team runs on its own
  thread alone (correct, just not parallel).
- The workspace keeps a few large scratch arrays alive between calls, so
  their pages are already mapped (a fresh page costs a page fault).
"""
import numbers
import os
import threading
from queue import SimpleQueue

import numpy as np


def usable_cpus():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_num_threads = max(1, usable_cpus())


def set_num_threads(n):
    """Set how many threads the kernels use (default: the CPUs this process may use)."""
    global _num_threads
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError("number of threads must be an integer >= 1, got %r" % (n,))
    _num_threads = int(n)


def get_num_threads():
    """Return how many threads the kernels use."""
    return _num_threads


# How long a worker that finished a call waits, spinning, for the next one
# before it blocks on its queue: longer than the Python between the kernel
# calls of a training step, short enough to give the core back soon after.
SPIN_SECONDS = 300e-6

_handoff = None


def use_handoff(words, start, claim, finished, next_call, wait):
    """Install the compiled module's handoff functions (_cpu_handoff.pxi); done at its import."""
    global _handoff
    _handoff = (words, start, claim, finished, next_call, wait)


class Team:
    """
    Worker threads that run a work object together with the calling thread.

    A work object has a method run(tid) that processes items until none are
    left; tid (0 for the calling thread) selects the thread's slice of any
    per-thread scratch space.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inboxes = []
        self._states = []        # each worker's handoff state word
        self._running = None     # the handoff's counter: workers still on the current call
        self._current = None     # the call being run
        self._errors = []        # what the workers raised during it
        self._oversubscribed = False

    def _serve(self, tid, inbox):
        _, _, _, finished, next_call, _ = _handoff
        state = self._states[tid - 1]
        work = inbox.get()
        while True:
            try:
                work.run(tid)
            except BaseException as exc:  # re-raised by the caller
                self._errors.append(exc)
            work = None  # not kept alive while this thread waits
            finished(state, self._running)
            spin = 0.0 if self._oversubscribed else SPIN_SECONDS
            work = self._current if next_call(state, spin) else inbox.get()

    def _grow(self, workers):
        word = _handoff[0]
        if self._running is None:
            self._running = word()
        while len(self._inboxes) < workers:
            inbox = SimpleQueue()
            self._states.append(word())
            threading.Thread(target=self._serve, args=(len(self._inboxes) + 1, inbox),
                             name="xdl-cpu-kernels", daemon=True).start()
            self._inboxes.append(inbox)

    def run(self, work, threads):
        """Run work on `threads` threads (the caller included); re-raise a worker's error."""
        if threads <= 1 or not self._lock.acquire(blocking=False):
            work.run(0)
            return
        try:
            self._grow(threads - 1)
            _, start, claim, _, _, wait = _handoff
            self._errors = []
            self._current = work
            # More threads than CPUs: nobody spins (the others need the cores).
            self._oversubscribed = threads > usable_cpus()
            start(self._running, threads - 1)
            for slot in range(threads - 1):
                if not claim(self._states[slot]):
                    self._inboxes[slot].put(work)
            try:
                work.run(0)
            finally:
                # Even if interrupted (Ctrl-C): no worker may still be
                # writing when the caller returns.
                wait(self._running, self._oversubscribed)
                self._current = None
        finally:
            self._lock.release()
        if self._errors:
            raise self._errors[0]


_team = Team()


def _new_team_after_fork():
    # A forked child has none of the parent's worker threads.
    global _team
    _team = Team()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_team_after_fork)


def threads_for(items):
    """How many threads a call with `items` items of work runs on: min(get_num_threads(), items)."""
    return max(1, min(_num_threads, items))


def run(work, threads):
    """Run work on `threads` threads (the caller included); see Team.run."""
    _team.run(work, threads)


# ----------------------------------------------------------------- workspace

WORKSPACE_SLOTS = 8
_workspace = {}


def take_workspace(n, dtype):
    """
    A 1-D scratch array of n elements of dtype, reused across calls. The
    caller owns it until give_back (a concurrent call from another Python
    thread gets a fresh one).
    """
    key = (int(n), np.dtype(dtype).char)
    buf = _workspace.pop(key, None)
    if buf is None:
        buf = np.empty(key[0], dtype=dtype)
    return buf


def give_back(buf):
    """Return a scratch array from take_workspace to the cache (oldest dropped past the slots)."""
    key = (buf.shape[0], buf.dtype.char)
    if key not in _workspace and len(_workspace) >= WORKSPACE_SLOTS:
        _workspace.pop(next(iter(_workspace)))
    _workspace[key] = buf


def clear_workspace():
    """Free the cached scratch arrays."""
    _workspace.clear()
