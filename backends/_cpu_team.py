"""The thread team and the scratch workspace of the compiled CPU kernels.

Plain Python: the kernels in ``_cpu_kernels`` hand the team a work object
whose ``run(tid)`` method releases the GIL and takes items from a shared
atomic counter until none are left (xdl/DESIGN.md, "The CPU kernels").

- The team is the calling thread plus ``get_num_threads() - 1`` workers that
  block on a queue between calls: they never spin, so they never take a core
  from numpy's OpenBLAS threads or from the next kernel.
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
        self._done = SimpleQueue()

    def _serve(self, tid, inbox):
        while True:
            work = inbox.get()
            try:
                work.run(tid)
            except BaseException as exc:  # keep the caller from waiting forever
                self._done.put(exc)
            else:
                self._done.put(None)

    def _grow(self, workers):
        while len(self._inboxes) < workers:
            inbox = SimpleQueue()
            threading.Thread(target=self._serve, args=(len(self._inboxes) + 1, inbox),
                             name="xdl-cpu-kernels", daemon=True).start()
            self._inboxes.append(inbox)

    def run(self, work, threads):
        """Run work on `threads` threads (the caller included); re-raise a worker's error."""
        if threads <= 1 or not self._lock.acquire(blocking=False):
            work.run(0)
            return
        results = []
        sent = 0
        interrupted = None
        try:
            self._grow(threads - 1)
            for inbox in self._inboxes[:threads - 1]:
                inbox.put(work)
                sent += 1
            work.run(0)
        finally:
            # Collect every worker's answer even if interrupted (Ctrl-C): no
            # worker may still be writing, nor leave a stale answer behind.
            while len(results) < sent:
                try:
                    results.append(self._done.get())
                except KeyboardInterrupt as exc:
                    interrupted = exc
            self._lock.release()
        if interrupted is not None:
            raise interrupted
        for exc in results:
            if exc is not None:
                raise exc


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
