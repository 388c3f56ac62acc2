"""The compiled kernels' thread team (backends/_cpu_team.py) and its handoff
(backends/_cpu_handoff.pxi): every thread runs each call, the caller returns
only when all of them are done, a worker's error reaches the caller, and
calls hand over both to spinning workers (back to back) and to blocked ones
(after a pause longer than SPIN_SECONDS), also with more threads than CPUs.
"""
import threading
import time

import numpy as np
import pytest

from xdl.backends import _cpu_team

from helpers import compiled_kernels

pytestmark = pytest.mark.usefixtures("numpy_backend")


@pytest.fixture
def team():
    """A fresh team, with the compiled module's handoff installed."""
    compiled_kernels()  # importing it installs the handoff
    return _cpu_team.Team()


class Record:
    """A call that notes which threads ran it; workers finish after the caller."""

    def __init__(self, worker_delay=0.0):
        self.lock = threading.Lock()
        self.tids = []
        self.finished = []
        self.worker_delay = worker_delay

    def run(self, tid):
        if tid and self.worker_delay:
            time.sleep(self.worker_delay)
        with self.lock:
            self.tids.append(tid)
            self.finished.append(tid)


def test_every_thread_runs_the_call_and_the_caller_waits(team):
    call = Record(worker_delay=0.02)
    team.run(call, 3)
    # the caller came back only after both slow workers had finished
    assert sorted(call.finished) == [0, 1, 2]


@pytest.mark.parametrize("oversubscribed", [False, True], ids=["spinning", "oversubscribed"])
def test_calls_hand_over_back_to_back_and_after_pauses(team, monkeypatch, oversubscribed):
    if oversubscribed:
        monkeypatch.setattr(_cpu_team, "usable_cpus", lambda: 1)
    pause = 3 * _cpu_team.SPIN_SECONDS
    for i in range(120):
        threads = 2 + i % 3          # teams of 2, 3 and 4 threads in turn
        call = Record()
        team.run(call, threads)
        assert sorted(call.tids) == list(range(threads)), i
        if i % 10 == 9:
            time.sleep(pause)          # the workers give up spinning and block


def test_a_worker_error_reaches_the_caller_and_the_team_goes_on(team):
    class Fails:
        def run(self, tid):
            if tid == 1:
                raise ValueError("worker %d failed" % tid)

    with pytest.raises(ValueError, match="worker 1 failed"):
        team.run(Fails(), 2)
    call = Record()
    team.run(call, 2)
    assert sorted(call.tids) == [0, 1]


def test_kernels_on_the_spinning_team_give_the_same_bits():
    # The compiled kernels on 2 threads, call after call: each result is the
    # same as the first (no call may see another's workers still writing).
    kern = compiled_kernels()
    threads = kern.get_num_threads()
    rng = np.random.RandomState(2)
    x = rng.randn(1 << 20).astype(np.float32)
    try:
        kern.set_num_threads(2)
        first = kern.axpy(0.5, x, np.zeros_like(x))
        for _ in range(50):
            np.testing.assert_array_equal(kern.axpy(0.5, x, np.zeros_like(x)), first)
            assert kern.sum_of_squares(x) == kern.sum_of_squares(x)
    finally:
        kern.set_num_threads(threads)
