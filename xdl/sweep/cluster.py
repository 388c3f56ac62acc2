"""The Dask side of a sweep: an embedded ``LocalCluster`` (one
single-threaded worker process per core), a cluster reached by its
scheduler address, or a client the caller made; with ``gpus=True`` one
worker per visible GPU pinned by ``CUDA_VISIBLE_DEVICES`` (dask-cuda's
``LocalCUDACluster`` when it is installed). Dask does the scheduling, the
worker processes and the rerunning of a trial whose worker died; this
module only builds and configures the cluster.

Imported on use: ``import xdl.sweep`` works without Dask installed.
"""
import importlib.util
import os

try:
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as exc:  # raised again, with the extra to install, by require()
    distributed = None
    WorkerPlugin = object
    _import_error = exc
else:
    _import_error = None

# Resource a GPU trial asks for: a GPU worker offers trials_per_gpu of them,
# so that many trials share its GPU at once (Ray Tune's fractional GPUs).
GPU_RESOURCE = "GPU"


def require():
    """Return the distributed module, or raise ImportError naming the extra."""
    if distributed is None:
        raise ImportError("xdl.sweep runs its trials on Dask distributed, which is not "
                          "installed (%s). Install it with: pip install 'xdl[distributed]' "
                          "(or pip install 'dask[distributed]')" % _import_error)
    return distributed


def usable_cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def visible_gpus(environ=None, device_count=None):
    """
    The GPUs a sweep may use, as CUDA_VISIBLE_DEVICES entries.

    Inputs:
    - environ: the environment (default os.environ); its CUDA_VISIBLE_DEVICES,
      when set, lists the GPUs (indices or UUIDs)
    - device_count: function returning how many GPUs CUDA sees, used when
      CUDA_VISIBLE_DEVICES is not set (default: CuPy's count)

    Returns:
    - ids: list of strings, one per GPU
    """
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry:
                continue
            if entry.startswith("-"):  # CUDA stops at the first invalid index
                break
            ids.append(entry)
        return ids
    if device_count is None:
        def device_count():
            import cupy
            return cupy.cuda.runtime.getDeviceCount()
    return [str(i) for i in range(device_count())]


def gpu_worker_specs(gpu_ids, trials_per_gpu):
    """
    SpecCluster worker specs: one worker process (a Nanny) per GPU, which
    sees only its GPU (CUDA_VISIBLE_DEVICES) and runs up to trials_per_gpu
    trials at once, each taking one unit of the GPU resource.

    Inputs:
    - gpu_ids: CUDA_VISIBLE_DEVICES entries, one per worker
    - trials_per_gpu: integer >= 1

    Returns:
    - specs: dict worker name -> {'cls': Nanny, 'options': {...}}
    """
    require()
    return {"gpu-%s" % gid: {"cls": distributed.Nanny,
                             "options": {"nthreads": trials_per_gpu,
                                         "env": {"CUDA_VISIBLE_DEVICES": str(gid)},
                                         "resources": {GPU_RESOURCE: trials_per_gpu}}}
            for gid in gpu_ids}


def host_shares(nthreads, cpus):
    """
    Kernel threads per trial on each machine, so that the trials running at
    once in all the workers of a machine share its cores.

    Inputs:
    - nthreads: {worker address: Dask threads (trials at once)}
    - cpus: {worker address: CPUs it may use}

    Returns:
    - shares: {host: threads per trial, >= 1}
    """
    from distributed.comm import get_address_host
    trials, host_cpus = {}, {}
    for address, n in nthreads.items():
        host = get_address_host(address)
        trials[host] = trials.get(host, 0) + n
        host_cpus[host] = max(host_cpus.get(host, 0), cpus.get(address, 1))
    return {host: max(1, host_cpus[host] // trials[host]) for host in trials}


class WorkerSetup(WorkerPlugin):
    """
    Runs on every worker as it starts (restarted ones too): sets xdl's CPU
    kernel threads to the worker's share of its machine's cores.

    Inputs:
    - num_threads: threads per trial, or None to look the worker's host up in
      shares, else to divide its CPUs by its Dask threads
    - shares: {host: threads per trial} (see host_shares), or None
    """

    name = "xdl-sweep-setup"

    def __init__(self, num_threads=None, shares=None):
        self.num_threads = num_threads
        self.shares = dict(shares or {})

    def setup(self, worker):
        from distributed.comm import get_address_host
        from xdl.backends import set_num_threads
        n = self.num_threads or self.shares.get(get_address_host(worker.address)) or \
            max(1, usable_cpus() // max(1, worker.state.nthreads))
        set_num_threads(n)


def _check_count(value, name):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError("%s must be an integer >= 1, got %r" % (name, value))


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also
# pins glibc's mmap threshold at 128 KiB: every minibatch-sized temporary is
# then a fresh mmap whose pages fault in on first touch. Measured here on a
# TwoLayerNet trial (10000 images, 2 epochs, 1 thread): 0.67-0.9 s without
# it, 1.3-1.8 s with it. Embedded clusters start their workers without it.
# Their workers also run without Dask's statistical profiler, which takes
# the GIL every 10 ms to walk the trial thread's stack (it only feeds the
# dashboard's Profile page). Measured here: a TwoLayerNet trial (49000
# images, 2 epochs, 1 kernel thread, 2 workers side by side) took 2.36 and
# 2.31 s with it, 2.12 and 2.12 s without, as long as in a plain process.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                 "distributed.worker.profile.enabled": False}


def has_bokeh():
    """Dask's dashboard needs bokeh (not a dependency of xdl[distributed])."""
    return importlib.util.find_spec("bokeh") is not None


# An embedded scheduler serves HTTP on a free port (two sweeps never clash on
# 8787) and shows the dashboard when bokeh is installed.
def _scheduler_options():
    return {"dashboard_address": ":0", "dashboard": has_bokeh()}


class Engine:
    """
    Where a sweep's trials run; a context manager that starts (or connects
    to) the cluster on entry and closes what it started on exit.

    Inputs:
    - client: a distributed.Client to use as it is
    - scheduler: address of a running scheduler, e.g. 'tcp://host:8786'
    - workers: embedded cluster: number of worker processes (default: one
      per usable core); each gets cores // workers kernel threads
    - gpus: one worker per visible GPU, trials on the cuda backend
    - trials_per_gpu: trials that share one GPU at once
    - threads_per_trial: xdl kernel threads of each trial on a cluster given
      by client or scheduler (default: the worker's cores / its Dask threads)
    - connect_timeout: seconds to wait for the scheduler to answer
    """

    def __init__(self, client=None, scheduler=None, workers=None, gpus=False,
                 trials_per_gpu=1, threads_per_trial=None, connect_timeout=10):
        if client is not None and scheduler is not None:
            raise ValueError("give a client or a scheduler address, not both")
        if scheduler is not None and not isinstance(scheduler, str):
            raise TypeError("scheduler must be an address string such as "
                            "'tcp://host:8786', got %r" % (scheduler,))
        _check_count(workers, "workers")
        _check_count(trials_per_gpu, "trials_per_gpu")
        _check_count(threads_per_trial, "threads_per_trial")
        if workers is not None and (client is not None or scheduler is not None):
            raise ValueError("workers sets the size of the embedded cluster; a cluster given "
                             "by client or scheduler has its own workers")
        if workers is not None and gpus:
            raise ValueError("with gpus=True there is one worker per visible GPU; "
                             "do not give workers")
        if trials_per_gpu != 1 and not gpus:
            raise ValueError("trials_per_gpu needs gpus=True")
        if not (isinstance(connect_timeout, (int, float)) and connect_timeout > 0):
            raise ValueError("connect_timeout must be a number of seconds > 0, got %r"
                             % (connect_timeout,))
        self.given_client = client
        self.scheduler = scheduler
        self.workers = workers
        self.gpus = bool(gpus)
        self.trials_per_gpu = trials_per_gpu
        self.threads_per_trial = threads_per_trial
        self.connect_timeout = connect_timeout
        self.client = None
        self.cluster = None
        self.description = None
        self._config = None

    @property
    def embedded(self):
        return self.given_client is None and self.scheduler is None

    @property
    def backend(self):
        return "cuda" if self.gpus else "numpy"

    @property
    def task_resources(self):
        """What each trial asks of its worker (a GPU slot with gpus=True)."""
        return {GPU_RESOURCE: 1} if self.gpus else None

    def __enter__(self):
        require()
        import dask
        self._config = dask.config.set(WORKER_CONFIG)  # for workers restarted later too
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self):
        shares = None
        if self.given_client is not None or self.scheduler is not None:
            if self.given_client is not None:
                self.client = self.given_client
                where = "the given Dask client's scheduler (%s)" % self.client.scheduler.address
            else:
                self.client = self._connect()
                where = "the Dask scheduler at %s" % self.scheduler
            self._check_workers(where)
            threads = 1 if self.gpus else self.threads_per_trial
            if threads is None:
                shares = host_shares(self.client.nthreads(), self.client.run(usable_cpus))
            self.description = "%s (%d workers)" % (where, len(self.client.nthreads()))
        elif self.gpus:
            self.cluster = self._gpu_cluster()
            self.client = distributed.Client(self.cluster)
            threads = 1
        else:
            n = self.workers or usable_cpus()
            threads = max(1, usable_cpus() // n)
            options = _scheduler_options()
            self.cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True,
                dashboard_address=options.pop("dashboard_address"), scheduler_kwargs=options)
            self.client = distributed.Client(self.cluster)
            self.description = ("an embedded LocalCluster: %d single-threaded worker "
                                "processes, %d kernel thread%s each"
                                % (n, threads, "" if threads == 1 else "s"))
        self.client.register_plugin(WorkerSetup(threads, shares))
        return self

    def _check_workers(self, where):
        """A cluster given by address or client must have workers that can run the trials."""
        try:
            self.client.wait_for_workers(1, timeout=self.connect_timeout)
        except TimeoutError:
            raise ConnectionError("%s has no workers (waited %g s); start some with "
                                  "`dask worker %s --nthreads 1`"
                                  % (where, self.connect_timeout,
                                     self.client.scheduler.address)) from None
        if self.gpus:
            resources = self.client.run_on_scheduler(
                lambda dask_scheduler: {a: dict(ws.resources)
                                        for a, ws in dask_scheduler.workers.items()})
            if not any(r.get(GPU_RESOURCE) for r in resources.values()):
                raise ValueError(
                    "gpus=True but no worker of %s offers the %r resource that GPU trials "
                    "ask for; start one worker per GPU with e.g. `CUDA_VISIBLE_DEVICES=0 "
                    "dask worker %s --nthreads K --resources %s=K` (K trials per GPU)"
                    % (where, GPU_RESOURCE, self.client.scheduler.address, GPU_RESOURCE))

    def __exit__(self, *exc_info):
        try:
            if self.given_client is None and self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            self.client = self.cluster = None
            if self._config is not None:
                self._config.__exit__(None, None, None)
                self._config = None
        return False

    def _connect(self):
        try:
            return distributed.Client(self.scheduler, timeout=self.connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConnectionError("no Dask scheduler answered at %s within %g s (%s: %s)"
                                  % (self.scheduler, self.connect_timeout,
                                     type(exc).__name__, exc)) from None

    def _gpu_cluster(self):
        from xdl.backends import use_backend
        with use_backend("cuda"):  # BackendError, saying what is missing, without a GPU
            ids = visible_gpus()
        if not ids:
            from xdl.backends import BackendError
            raise BackendError("gpus=True but CUDA_VISIBLE_DEVICES=%r lists no GPU"
                               % os.environ.get("CUDA_VISIBLE_DEVICES"))
        k = self.trials_per_gpu
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            options = _scheduler_options()
            cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(ids), threads_per_worker=k,
                                       resources={GPU_RESOURCE: k},
                                       dashboard_address=options.pop("dashboard_address"),
                                       scheduler_kwargs=options)
            kind = "dask-cuda LocalCUDACluster"
        else:
            cluster = distributed.SpecCluster(
                workers=gpu_worker_specs(ids, k),
                scheduler={"cls": distributed.Scheduler, "options": _scheduler_options()})
            kind = "LocalCluster of GPU workers"
        self.description = ("a %s: one worker per GPU (%s), %d trial%s per GPU at once"
                            % (kind, ",".join(ids), k, "" if k == 1 else "s"))
        return cluster

    def dashboard_link(self):
        """The Dask dashboard's address; None for an embedded cluster without bokeh."""
        if self.cluster is not None and not has_bokeh():
            return None
        return self.client.dashboard_link
