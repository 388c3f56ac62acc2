"""Time xdl's fast convolution, pooling and a ThreeLayerConvNet training
iteration against the naive layers and against PyTorch, in one run; on the
CPU also the two batchnorm backward passes of xdl.layers against each other.

    python examples/benchmark.py                    # CPU, float32 and float64
    python examples/benchmark.py --dtype float32 --quick
    python examples/benchmark.py --device cuda      # cupy arrays, torch on cuda

Every number is the median of several timed repeats after warm-up runs, and
every ratio compares timings taken in the same run: naive/xdl is xdl's
speedup over the naive loops, xdl/torch < 1 means xdl is faster than
PyTorch (same dtype, same number of threads). PyTorch is optional (it is
never a dependency of xdl): without it those columns are empty. On the CPU
the training iteration is also given as a fraction of the GEMM peak
measured in the same run (its GEMMs' FLOPs / time / numpy's 2048^2 rate),
split into the kernels' stages, and timed at 1, 2, ... threads. The
training iteration, PyTorch's and the GEMM peak are timed in turn, round
after round (as are the thread counts), so that a change in the machine's
load reaches them alike; the spread of the rounds is printed with them.

On the CPU, run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they
slow numpy's BLAS), on an otherwise idle machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python examples/benchmark.py
"""
import os
import statistics
import sys
import time

import numpy as np

import xdl
from xdl import optim
from xdl._checks import labels_checked
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.solver import Solver
from xdl.fast_layers import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from xdl.gradient_check import rel_error
from xdl.layers import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

import common
import torch_cnn

CONV_CASES = [  # (x shape, w shape, stride, pad): the notebook's and the model's
    ((100, 3, 31, 31), (25, 3, 3, 3), 2, 1),
    ((50, 3, 32, 32), (32, 3, 7, 7), 1, 3),
]
POOL_CASES = [(100, 3, 32, 32), (50, 32, 32, 32)]  # 2x2 windows, stride 2
POOL_PARAM = {"pool_height": 2, "pool_width": 2, "stride": 2}
BATCHNORM_CASES = [(100, 500), (200, 4096)]  # (N, D): the notebook's and a wide layer
BATCH = 50
ITERATIONS_PER_EPOCH = 49000 // BATCH
MODEL_KW = dict(weight_scale=0.001, hidden_dim=500, reg=0.001)
TARGET = 1.0  # xdl/torch at most this for conv f+b and pool f+b
STEP_TARGETS = {"float32": 0.5, "float64": 0.3}  # xdl/torch at most this for a training iteration
PEAK_TARGET = 0.65  # a float32 training iteration runs at >= this fraction of the GEMM peak


# --------------------------------------------------------------- devices

class Device:
    """Where arrays live and how to wait for the work queued on them."""

    def __init__(self, name):
        self.name = name
        if name == "cuda":
            import cupy  # only on request: the CPU path never imports cupy
            self.xp = cupy
            self._sync = cupy.cuda.Device().synchronize
        else:
            self.xp = np
            self._sync = None

    def sync(self):
        if self._sync is not None:
            self._sync()

    def asarray(self, a):
        return self.xp.asarray(a)


TORCH_NOTE = "not installed"


def load_torch(device, threads):
    """torch, set to the same threads (and no TF32 on the GPU), or None."""
    global TORCH_NOTE
    torch, TORCH_NOTE = torch_cnn.load_torch(device.name, threads)
    return torch


def torch_sync(torch, device):
    torch_cnn.sync(torch, device.name)


# ---------------------------------------------------------------- timing

def median_time(fn, sync, repeats, warmup=3, warmup_s=0.05):
    """
    Median wall time of fn() in seconds over `repeats` runs, after at least
    `warmup` untimed runs and `warmup_s` seconds of them (threads woken,
    caches and memory pools warm). sync() waits for queued device work.
    """
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < warmup_s:
        fn()
        sync()
        done += 1
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def warm_up(both, sync, runs=5):
    """
    Run forward+backward a few times before any timing: PyTorch's CPU
    convolution forward is about 3x slower until a few backward passes have
    run (measured here), and training always runs both.
    """
    for _ in range(runs):
        both()
    sync()


def settle(seconds=0.3):
    """
    Let the other library's worker threads stop spinning before timing,
    this thread kept busy meanwhile. An idle pause (a sleep) left this
    shared VM's cores slow for the steps after it: float32 CNN steps took
    18.2-19.4 ms after a 0.3 s sleep against 15.8-17.7 back to back and
    16.5-18.6 after a busy wait (medians of 40 steps each, one process, in
    turn), which reaches xdl's short steps more than PyTorch's long ones.
    """
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ----------------------------------------------------------------- rows

class Table:
    HEAD = ("%-36s %11s %11s %10s %10s %10s  %s"
            % ("case", "xdl ms", "naive ms", "naive/xdl", "torch ms", "xdl/torch", "target"))

    def __init__(self):
        self.rows = []
        self.misses = []
        print(self.HEAD)
        print("-" * len(self.HEAD))

    def row(self, label, xdl_s, naive_s=None, torch_s=None, target=None, scaled=False,
            unit="ms", limit=TARGET):
        """One line; `target` names the case when xdl/torch must be <= limit."""
        def fmt(t):
            # milliseconds by default; whole seconds (marked " s") for epochs
            return "%.2f" % (t * 1e3) if unit == "ms" else "%.2f s" % t

        naive = "-" if naive_s is None else ("~" if scaled else "") + fmt(naive_s)
        speedup = "-" if naive_s is None else "%.0fx" % (naive_s / xdl_s)
        tms = "-" if torch_s is None else fmt(torch_s)
        ratio = "-" if torch_s is None else "%.2f" % (xdl_s / torch_s)
        verdict = ""
        if target and torch_s is not None:
            met = xdl_s / torch_s <= limit
            verdict = ("met" if met else "MISSED") + " (<= %.1f)" % limit
            if not met:
                self.misses.append("%s (xdl/torch <= %.1f)" % (target, limit))
        line = "%-36s %11s %11s %10s %10s %10s  %s" % (
            label, fmt(xdl_s), naive, speedup, tms, ratio, verdict)
        print(line.rstrip())
        sys.stdout.flush()


# ----------------------------------------------------------- convolution

def bench_conv(table, device, torch, dtype, args, case):
    xs, ws, stride, pad = case
    rng = np.random.RandomState(231)
    x_h, w_h, b_h = rng.randn(*xs), rng.randn(*ws), rng.randn(ws[0])
    conv_param = {"stride": stride, "pad": pad}
    x, w, b = (device.asarray(a.astype(dtype)) for a in (x_h, w_h, b_h))
    out, cache = conv_forward_fast(x, w, b, conv_param)
    dout_h = rng.randn(*out.shape)
    dout = device.asarray(dout_h.astype(dtype))
    sync, reps = device.sync, args.repeats

    def both():
        conv_backward_fast(dout, conv_forward_fast(x, w, b, conv_param)[1])

    settle()
    warm_up(both, sync)
    fwd = median_time(lambda: conv_forward_fast(x, w, b, conv_param), sync, reps)
    bwd = median_time(lambda: conv_backward_fast(dout, cache), sync, reps)
    both = median_time(both, sync, reps)

    naive = [None, None, None]
    scaled = False
    if device.name == "cpu" and not args.no_naive:
        # The naive loops are linear in the batch: --quick times a tenth of it.
        n = xs[0] if not args.quick else max(1, xs[0] // 10)
        scaled = n != xs[0]
        xn, dn = x_h[:n].astype(dtype), dout_h[:n].astype(dtype)
        wn, bn = w_h.astype(dtype), b_h.astype(dtype)
        t0 = time.perf_counter()
        _, ncache = conv_forward_naive(xn, wn, bn, conv_param)
        t1 = time.perf_counter()
        conv_backward_naive(dn, ncache)
        t2 = time.perf_counter()
        naive = [(t1 - t0) * xs[0] / n, (t2 - t1) * xs[0] / n, (t2 - t0) * xs[0] / n]

    tt = [None, None, None]
    if torch is not None:
        tt = bench_torch_conv(torch, device, x_h, w_h, b_h, dout_h, dtype, stride, pad, reps)

    label = "conv x%s w%s s%d p%d" % ("x".join(map(str, xs)), "x".join(map(str, ws)),
                                      stride, pad)
    table.row(label + "  fwd", fwd, naive[0], tt[0], scaled=scaled)
    table.row(" " * len(label) + "  bwd", bwd, naive[1], tt[1], scaled=scaled)
    table.row(" " * len(label) + "  f+b", both, naive[2], tt[2], target=label + " f+b",
              scaled=scaled)


def bench_torch_conv(torch, device, x_h, w_h, b_h, dout_h, dtype, stride, pad, reps):
    F = torch.nn.functional
    tdev = "cuda" if device.name == "cuda" else "cpu"
    tdt = getattr(torch, np.dtype(dtype).name)
    x, w, b = (torch.tensor(a, dtype=tdt, device=tdev).requires_grad_() for a in (x_h, w_h, b_h))
    dout = torch.tensor(dout_h, dtype=tdt, device=tdev)
    sync = lambda: torch_sync(torch, device)  # noqa: E731

    def forward():
        with torch.no_grad():
            F.conv2d(x, w, b, stride=stride, padding=pad)

    out = F.conv2d(x, w, b, stride=stride, padding=pad)

    def backward():
        x.grad = w.grad = b.grad = None
        out.backward(dout, retain_graph=True)

    def both():
        x.grad = w.grad = b.grad = None
        F.conv2d(x, w, b, stride=stride, padding=pad).backward(dout)

    settle()
    warm_up(both, sync)
    return [median_time(forward, sync, reps), median_time(backward, sync, reps),
            median_time(both, sync, reps)]


# --------------------------------------------------------------- pooling

def bench_pool(table, device, torch, dtype, args, xs):
    rng = np.random.RandomState(231)
    x_h = rng.randn(*xs)
    x = device.asarray(x_h.astype(dtype))
    out, cache = max_pool_forward_fast(x, POOL_PARAM)
    dout_h = rng.randn(*out.shape)
    dout = device.asarray(dout_h.astype(dtype))
    sync, reps = device.sync, args.repeats

    def both():
        max_pool_backward_fast(dout, max_pool_forward_fast(x, POOL_PARAM)[1])

    settle()
    warm_up(both, sync)
    fwd = median_time(lambda: max_pool_forward_fast(x, POOL_PARAM), sync, reps)
    bwd = median_time(lambda: max_pool_backward_fast(dout, cache), sync, reps)
    both = median_time(both, sync, reps)

    naive = [None, None, None]
    if device.name == "cpu" and not args.no_naive:
        xn, dn = x_h.astype(dtype), dout_h.astype(dtype)
        nreps = 1 if args.quick else 3
        fwd_n = median_time(lambda: max_pool_forward_naive(xn, POOL_PARAM), sync, nreps,
                            warmup=0, warmup_s=0)
        ncache = (xn, POOL_PARAM)
        bwd_n = median_time(lambda: max_pool_backward_naive(dn, ncache), sync, nreps,
                            warmup=0, warmup_s=0)
        naive = [fwd_n, bwd_n, fwd_n + bwd_n]

    tt = [None, None, None]
    if torch is not None:
        tt = bench_torch_pool(torch, device, x_h, dout_h, dtype, reps)

    label = "max pool 2x2/2 x%s" % "x".join(map(str, xs))
    table.row(label + "  fwd", fwd, naive[0], tt[0])
    table.row(" " * len(label) + "  bwd", bwd, naive[1], tt[1])
    table.row(" " * len(label) + "  f+b", both, naive[2], tt[2], target=label + " f+b")


def bench_torch_pool(torch, device, x_h, dout_h, dtype, reps):
    F = torch.nn.functional
    tdev = "cuda" if device.name == "cuda" else "cpu"
    tdt = getattr(torch, np.dtype(dtype).name)
    x = torch.tensor(x_h, dtype=tdt, device=tdev).requires_grad_()
    dout = torch.tensor(dout_h, dtype=tdt, device=tdev)
    sync = lambda: torch_sync(torch, device)  # noqa: E731

    def forward():
        with torch.no_grad():
            F.max_pool2d(x, 2, 2)

    out = F.max_pool2d(x, 2, 2)

    def backward():
        x.grad = None
        out.backward(dout, retain_graph=True)

    def both():
        x.grad = None
        F.max_pool2d(x, 2, 2).backward(dout)

    settle()
    warm_up(both, sync)
    return [median_time(forward, sync, reps), median_time(backward, sync, reps),
            median_time(both, sync, reps)]


# --------------------------------------------------------------- training

class XdlTrainer:
    """ThreeLayerConvNet + Adam over every parameter, one minibatch per step."""

    def __init__(self, device, dtype):
        np.random.seed(0)
        with xdl.use_backend("cuda" if device.name == "cuda" else "numpy"):
            self.model = ThreeLayerConvNet(dtype=dtype, **MODEL_KW)
        self.configs = {k: {"learning_rate": 1e-3} for k in self.model.params}
        self.xp = device.xp

    def step(self, X, y):
        # As the Solver does: every parameter updated in place, W2's step
        # taken by the model beside its convolution's backward pass.
        steps = {k: optim.in_place_step("adam", self.model.params[k], self.configs[k])
                 for k in self.model.in_place_params}
        with labels_checked():  # as in the Solver: the labels were made valid, once
            loss, grads = self.model.loss(X, y, in_place_steps=steps)
        for k, w in self.model.params.items():
            if not (k in steps and steps[k].applied):
                self.model.params[k], self.configs[k] = optim.adam(w, grads[k], self.configs[k],
                                                                   out=w)
        return loss


class TorchTrainer(torch_cnn.TorchCNN):
    """The same network, loss (softmax + 0.5*reg*sum W^2) and Adam in PyTorch."""

    def __init__(self, torch, device, dtype):
        self.tdev = "cuda" if device.name == "cuda" else "cpu"
        super().__init__(torch, self.tdev, dtype, hidden_dim=MODEL_KW["hidden_dim"],
                         reg=MODEL_KW["reg"])


def step_flops():
    """
    Floating-point operations of the GEMMs in one training iteration: the
    convolution forward and its filter gradient (the input needs none), and
    the forward, dx and dw products of both affine layers. The elementwise
    work (ReLU, pooling, softmax, Adam) is not counted.
    """
    C, H, W, F, k = 3, 32, 32, 32, 7
    hidden, classes = MODEL_KW["hidden_dim"], 10
    conv = 2 * BATCH * F * (C * k * k) * (H * W)
    affine = 2 * BATCH * (F * (H // 2) * (W // 2)) * hidden
    scores = 2 * BATCH * hidden * classes
    return 2 * conv + 3 * affine + 3 * scores


# The training iteration's cases (xdl, torch, the GEMM peak; the thread
# counts) are timed in turn, this many rounds: a change in the machine's
# load then reaches every case alike, and the ratios between them are
# steadier than with one case timed after the other.
ROUNDS = 5


class Case:
    """One timed case of interleaved_times: fn, sync, untimed runs per round, timed runs."""

    def __init__(self, fn, sync=lambda: None, warmup=2, repeats=4, before=None):
        self.fn, self.sync, self.warmup, self.repeats = fn, sync, warmup, repeats
        self.before = before  # called before the case's runs in each round (settings)
        self.times, self.round_medians = [], []

    @property
    def median(self):
        return statistics.median(self.times)


def interleaved_times(cases, rounds=ROUNDS):
    """
    Time the cases in turn: in each of `rounds` rounds, every case runs its
    warm-up and then its timed runs, the order reversed every other round.
    Fills each case's times (every timed run) and round_medians; returns
    the cases.
    """
    for r in range(rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            if case.before is not None:
                case.before()
            settle()  # the other library's threads stop spinning
            for _ in range(case.warmup):
                case.fn()
            case.sync()
            block = []
            for _ in range(case.repeats):
                case.sync()
                t0 = time.perf_counter()
                case.fn()
                case.sync()
                block.append(time.perf_counter() - t0)
            case.times += block
            case.round_medians.append(statistics.median(block))
    return cases


def gemm_peak_case(dtype, n=2048):
    """
    A Case timing numpy's GEMM on two n x n matrices (2 * n**3 FLOPs): the
    machine's practical peak in this run. numpy's BLAS uses its own threads
    (every usable CPU unless OPENBLAS_NUM_THREADS says otherwise).
    """
    a = np.random.RandomState(0).randn(n, n).astype(dtype)
    case = Case(lambda: a @ a, warmup=1, repeats=2)
    case.flops = 2.0 * n ** 3
    return case


def step_case(device, dtype, before=None):
    """A Case timing one XdlTrainer step on a fixed random minibatch."""
    rng = np.random.RandomState(0)
    X = device.asarray(rng.randn(BATCH, 3, 32, 32).astype(dtype))
    y = device.asarray(rng.randint(10, size=BATCH))
    trainer = XdlTrainer(device, dtype)
    return Case(lambda: trainer.step(X, y), device.sync, before=before)


def _spread(values, fmt):
    """'lo to hi' of per-round figures."""
    return "%s to %s" % (fmt % min(values), fmt % max(values))


def bench_training(table, device, torch, dtype, args):
    rng = np.random.RandomState(0)
    X_h = rng.randn(BATCH, 3, 32, 32).astype(dtype)
    y_h = rng.randint(10, size=BATCH)
    xdl_case = step_case(device, dtype)
    cases = [xdl_case]
    torch_case = peak_case = None
    if torch is not None:
        tt = TorchTrainer(torch, device, dtype)
        Xt = torch.tensor(X_h, device=tt.tdev)
        yt = torch.tensor(y_h, device=tt.tdev)
        torch_case = Case(lambda: tt.step(Xt, yt), lambda: torch_sync(torch, device))
        cases.append(torch_case)
    if device.name == "cpu":
        peak_case = gemm_peak_case(dtype)
        cases.append(peak_case)
    interleaved_times(cases)

    it = xdl_case.median
    t_it = None if torch_case is None else torch_case.median
    name = np.dtype(dtype).name
    table.row("train iteration (batch %d, Adam)" % BATCH, it, None, t_it,
              target="training iteration", limit=STEP_TARGETS[name])
    table.row("  projected epoch (%d it)" % ITERATIONS_PER_EPOCH, it * ITERATIONS_PER_EPOCH,
              None, None if t_it is None else t_it * ITERATIONS_PER_EPOCH, unit="s")
    print("  timed in turn, %d rounds of %d steps each (%s ms per xdl step by round)"
          % (ROUNDS, xdl_case.repeats, _spread([t * 1e3 for t in xdl_case.round_medians],
                                                "%.2f")))
    if torch_case is not None:
        print("  xdl/torch by round: %s" % _spread(
            [a / b for a, b in zip(xdl_case.round_medians, torch_case.round_medians)], "%.2f"))
    if peak_case is not None:
        flops = step_flops()
        peak = peak_case.flops / peak_case.median
        rate = flops / it
        line = ("  GEMM work %.2f GFLOP: %.0f GFLOP/s = %.0f%% of the %s GEMM peak "
                "(numpy 2048^2: %.0f GFLOP/s)"
                % (flops / 1e9, rate / 1e9, 100 * rate / peak, name, peak / 1e9))
        if name == "float32":
            met = rate / peak >= PEAK_TARGET
            line += "  %s (>= %.0f%%)" % ("met" if met else "MISSED", 100 * PEAK_TARGET)
            if not met:
                table.misses.append("training iteration (>= %.0f%% of the GEMM peak)"
                                    % (100 * PEAK_TARGET))
        print(line)
        shares = [100 * (flops / a) / (peak_case.flops / b)
                  for a, b in zip(xdl_case.round_medians, peak_case.round_medians)]
        print("  share of the GEMM peak by round: %s" % _spread(shares, "%.0f%%"))


def bench_scaling(device, dtype, args):
    """
    The training iteration at 1, 2, 4, ... threads, up to the CPUs this
    process may use (1 and 2 always), timed in turn: the kernels should use
    every core they are given.
    """
    from xdl.backends import _cpu_team, cpu
    if cpu.compiled is None:
        return
    usable = _cpu_team.usable_cpus()
    counts = sorted({1, 2, usable} | {n for n in (4, 8, 16, 32, 64) if n < usable})
    try:
        cases = [step_case(device, dtype, before=lambda n=n: cpu.compiled.set_num_threads(n))
                 for n in counts]
        interleaved_times(cases)
    finally:
        cpu.compiled.set_num_threads(args.threads)
    times = [c.median for c in cases]
    parts = ["%d thread%s %.2f ms (%.2fx)" % (n, "" if n == 1 else "s", t * 1e3, times[0] / t)
             for n, t in zip(counts, times)]
    print("  thread scaling of the iteration (%d usable CPUs): %s" % (usable, ", ".join(parts)))
    sys.stdout.flush()


# What each kind of work the compiled kernels hand their thread team does
# in the CNN's step (the work classes of backends/_cpu_*.pxi).
STAGE_NAMES = {
    "_ConvReluPoolForwardWork": "conv + ReLU + pool forward",
    "_MatmulWork": "matmul (the affine forward x @ W2)",
    "_AffineBackwardWork": "affine backward sweep (dx, dW2, sum of squares)",
    "_ConvReluPoolBackwardWork": "conv + ReLU + pool backward (dW1)",
    "_Together": "conv + ReLU + pool backward (dW1), Adam on W2 beside it",
    "_AdamWork": "Adam (the other parameters)",
    "_SumOfSquaresWork": "sums of squares",
    "_AxpyWork": "axpy (reg * W1)",
}


def bench_stages(device, dtype, steps=60):
    """
    Where a training step goes on the CPU: every call of the compiled
    kernels' thread team timed inside `steps` steps and summed per kind of
    work and step; printed as medians over the steps, with what the step
    spends outside the kernels (Python, NumPy's small operations).
    """
    from xdl.backends import _cpu_team, cpu
    if cpu.compiled is None:
        return
    case = step_case(device, dtype)
    for _ in range(5):
        case.fn()
    per_step = []
    current = {}
    run = _cpu_team.run

    def timed_run(work, threads):
        t0 = time.perf_counter()
        run(work, threads)
        name = type(work).__name__
        current[name] = current.get(name, 0.0) + time.perf_counter() - t0
    _cpu_team.run = timed_run
    try:
        for _ in range(steps):
            current.clear()
            t0 = time.perf_counter()
            case.fn()
            current["step"] = time.perf_counter() - t0
            per_step.append(dict(current))
    finally:
        _cpu_team.run = run
    step = statistics.median(s["step"] for s in per_step)
    outside = statistics.median(s["step"] - sum(v for k, v in s.items() if k != "step")
                                for s in per_step)
    names = sorted({k for s in per_step for k in s if k != "step"},
                   key=lambda k: -statistics.median(s.get(k, 0.0) for s in per_step))
    print("  where the iteration goes (%d steps, medians per step; step %.2f ms):"
          % (steps, step * 1e3))
    for k in names:
        print("    %-56s %6.2f ms" % (STAGE_NAMES.get(k, k),
                                     statistics.median(s.get(k, 0.0) for s in per_step) * 1e3))
    print("    %-56s %6.2f ms" % ("outside the kernels (Python, small NumPy operations)",
                                 outside * 1e3))
    sys.stdout.flush()


def bench_epoch(table, device, torch, dtype, args):
    """
    A whole epoch as users run it: xdl's Solver.train() on 49,000 synthetic
    images (the Solver copies them to the device once and samples each
    minibatch there), against PyTorch eager with the images on the device and
    a random minibatch gathered there per iteration. The xdl figure is the
    Solver's step time (training steps only, not its two accuracy checks).
    """
    n = BATCH * ITERATIONS_PER_EPOCH
    rng = np.random.RandomState(0)
    X_h = rng.randn(n, 3, 32, 32).astype(dtype)
    y_h = rng.randint(10, size=n)
    data = {"X_train": X_h, "y_train": y_h, "X_val": X_h[:1000], "y_val": y_h[:1000]}

    def solver(num_train):
        np.random.seed(0)
        with xdl.use_backend("cuda" if device.name == "cuda" else "numpy"):
            model = ThreeLayerConvNet(dtype=dtype, **MODEL_KW)
        part = dict(data, X_train=X_h[:num_train], y_train=y_h[:num_train])
        return Solver(model, part, update_rule="adam", optim_config={"learning_rate": 1e-3},
                      batch_size=BATCH, num_epochs=1, verbose=False)

    solver(BATCH * 5).train()  # warm-up: kernel compilation, memory pools
    device.sync()
    settle()
    run = solver(n)
    run.train()
    epoch = run.step_time

    t_epoch = None
    if torch is not None:
        tt = TorchTrainer(torch, device, dtype)
        Xt = torch.tensor(X_h, device=tt.tdev)
        yt = torch.tensor(y_h, device=tt.tdev)
        gen = torch.Generator(device=tt.tdev).manual_seed(0)

        def step():
            idx = torch.randint(n, (BATCH,), device=tt.tdev, generator=gen)
            return tt.step(Xt[idx], yt[idx])
        for _ in range(5):
            step()
        torch_sync(torch, device)
        settle()
        t0 = time.perf_counter()
        for _ in range(ITERATIONS_PER_EPOCH):
            loss = step()
        float(loss)
        torch_sync(torch, device)
        t_epoch = time.perf_counter() - t0
    table.row("whole epoch through the Solver (%d images)" % n, epoch, None, t_epoch, unit="s")
    table.row("  per iteration", epoch / max(run.steps_taken, 1), None,
              None if t_epoch is None else t_epoch / ITERATIONS_PER_EPOCH)
    if torch is not None and device.name == "cuda":
        print_launches(torch, device, dtype)


def print_launches(torch, device, dtype, steps=5):
    """
    GPU kernel launches (and memory copies/sets) per training step of the
    Solver, counted by PyTorch's profiler (CUPTI sees every kernel of the
    process, CuPy's included).
    """
    try:
        from torch.profiler import ProfilerActivity, profile
        rng = np.random.RandomState(1)
        X_h = rng.randn(BATCH * 4, 3, 32, 32).astype(dtype)
        y_h = rng.randint(10, size=BATCH * 4)
        np.random.seed(0)
        with xdl.use_backend("cuda"):
            model = ThreeLayerConvNet(dtype=dtype, **MODEL_KW)
        run = Solver(model, {"X_train": X_h, "y_train": y_h, "X_val": X_h, "y_val": y_h},
                     update_rule="adam", batch_size=BATCH, verbose=False)
        run._train_set = run._on_model_device(X_h, y_h)
        for _ in range(3):
            run._step()
        device.sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                run._step()
            device.sync()
        names = [e.name for e in prof.events()
                 if str(getattr(e, "device_type", "")).endswith("CUDA")]
        copies = sum(1 for nm in names if nm.startswith(("Memcpy", "Memset")))
        print("GPU work per Solver step (profiler, %d steps): %.1f kernel launches, "
              "%.1f memory copies/sets" % (steps, (len(names) - copies) / steps, copies / steps))
    except Exception as exc:  # a profiler without CUPTI: say so, keep the benchmark
        print("GPU launches per step: not counted (%s: %s)" % (type(exc).__name__, exc))


# -------------------------------------------------------------- batchnorm

def bench_batchnorm(dtype, args):
    """
    batchnorm_backward (through the computation graph) against
    batchnorm_backward_alt (the simplified formula), CPU only: both times,
    the speedup, and the largest rel_error between their gradients.
    """
    head = "%-36s %11s %11s %10s %14s" % ("batchnorm backward (xdl.layers)", "graph ms",
                                          "alt ms", "graph/alt", "max rel_error")
    print()
    print(head)
    print("-" * len(head))
    for N, D in BATCHNORM_CASES:
        rng = np.random.RandomState(231)
        x = (5 * rng.randn(N, D) + 12).astype(dtype)
        gamma, beta = rng.randn(D).astype(dtype), rng.randn(D).astype(dtype)
        dout = rng.randn(N, D).astype(dtype)
        _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
        settle()
        graph = median_time(lambda: batchnorm_backward(dout, cache), lambda: None, args.repeats)
        alt = median_time(lambda: batchnorm_backward_alt(dout, cache), lambda: None, args.repeats)
        # rel_error is elementwise: in float32 its maximum sits on a dx entry
        # near zero (about 1e-2 at N=200, D=4096, where the largest difference
        # is about 1e-7 of max |dx|); the notebook compares in float64.
        err = max(rel_error(a, b) for a, b in zip(batchnorm_backward(dout, cache),
                                                  batchnorm_backward_alt(dout, cache)))
        print("%-36s %11.2f %11.2f %9.1fx %14.1e"
              % ("  N=%d, D=%d" % (N, D), graph * 1e3, alt * 1e3, graph / alt, err))
    sys.stdout.flush()


# ------------------------------------------------------------------ main

def header(device, torch, dtype, args):
    from xdl.backends import cpu
    if device.name == "cpu":
        kern = cpu.compiled
        if kern is None:
            kernels = "NumPy FALLBACK (not built)"
        else:
            simd = ("AVX2+FMA, AVX-512" if kern.avx512_kernels_available() else "AVX2+FMA"
                    ) if kern.simd_kernels_available() else "OpenBLAS only"
            kernels = "compiled Cython (%s)" % simd
    else:
        name = device.xp.cuda.runtime.getDeviceProperties(device.xp.cuda.Device().id)["name"]
        kernels = "CUDA on %s (cupy %s)" % (
            name.decode() if isinstance(name, bytes) else name, device.xp.__version__)
    print()
    print("xdl benchmark: device %s, %s, %d threads, kernels: %s" % (
        device.name, np.dtype(dtype).name, args.threads, kernels))
    print("numpy %s, torch %s; medians of %d repeats after warm-up"
          % (np.__version__, TORCH_NOTE, args.repeats))
    if hasattr(os, "getloadavg"):
        print("load average before the run: %.2f (other work on the machine slows every "
              "number and adds noise)" % os.getloadavg()[0])
    if device.name == "cpu" and (os.environ.get("OPENBLAS_CORETYPE")
                                 or os.environ.get("OPENBLAS_L2_SIZE")):
        print("WARNING: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set: numpy's BLAS runs slower")
    print()


def main(argv=None):
    p = common.ArgumentParser(__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=common.default_device(),
                   help="Time on the CPU (numpy arrays) or on the GPU (cupy arrays); the "
                        "default follows XDL_BACKEND.")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                   help="The floating-point type(s) to time.")
    p.add_argument("--threads", type=common.positive_int, default=2,
                   help="Threads for xdl's CPU kernels and for torch.")
    p.add_argument("--repeats", type=common.positive_int, default=21,
                   help="Timed repeats per case; each number is their median.")
    p.add_argument("--quick", action="store_true",
                   help="Time the naive conv on a tenth of the batch (scaled up, marked ~) "
                        "and fewer naive pooling repeats.")
    p.add_argument("--no-naive", action="store_true", help="Skip the naive layers.")
    p.add_argument("--no-epoch", action="store_true",
                   help="Skip the whole-epoch timing (cuda).")
    p.add_argument("--training-only", action="store_true",
                   help="Time only the training iteration (with its GEMM peak and thread "
                        "scaling).")
    args = p.parse_args(argv)
    if args.device == "cuda":
        try:  # the library's message: what is missing and how to install it
            xdl.set_backend("cuda")
        except xdl.BackendError as exc:
            p.error("argument --device: %s" % exc)

    device = Device(args.device)
    if device.name == "cpu":
        from xdl.backends import cpu
        if cpu.compiled is not None:
            cpu.compiled.set_num_threads(args.threads)
    torch = load_torch(device, args.threads)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    misses = []
    for name in dtypes:
        dtype = np.dtype(name).type
        header(device, torch, dtype, args)
        table = Table()
        if not args.training_only:
            for case in CONV_CASES:
                bench_conv(table, device, torch, dtype, args, case)
            for xs in POOL_CASES:
                bench_pool(table, device, torch, dtype, args, xs)
        bench_training(table, device, torch, dtype, args)
        if device.name == "cpu":
            bench_stages(device, dtype)
            bench_scaling(device, dtype, args)
        if device.name == "cuda" and not args.no_epoch:
            bench_epoch(table, device, torch, dtype, args)
        if device.name == "cpu" and not args.training_only:
            bench_batchnorm(dtype, args)
        misses += ["%s %s" % (name, m) for m in table.misses]
    if torch is not None or misses:
        print()
        print("targets missed: %s" % ("; ".join(misses) or "none"))


if __name__ == "__main__":
    main()
