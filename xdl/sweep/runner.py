"""``run_sweep``: every trial of a search space on a Dask cluster, each
result journaled as it arrives, optionally with successive halving."""
import hashlib
import os

import numpy as np

from xdl.sweep.cluster import Engine, require
from xdl.sweep.data import DataSource
from xdl.sweep.halving import SuccessiveHalving
from xdl.sweep.journal import Journal
from xdl.sweep.results import SweepResult, format_values
from xdl.sweep.trial import build_trials, is_linear, new_record, run_trial

JOURNAL_NAME = "journal.jsonl"
CHECKPOINT_DIR = "checkpoints"


def _digest(data):
    """A digest of in-memory arrays: their trials' ids change with them."""
    h = hashlib.sha256()
    for key in sorted(data):
        a = np.ascontiguousarray(data[key])
        h.update(("%s %s %s;" % (key, a.dtype.str, a.shape)).encode())
        h.update(a.data)
    return h.hexdigest()[:16]


def _check_arrays(data):
    missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
    if missing:
        raise ValueError("data is missing %s (it needs X_train, y_train, X_val, y_val)"
                         % ", ".join(missing))
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise TypeError("data[%r] must be a numpy array (the sweep scatters it to the "
                            "workers), got %s" % (key, type(value).__name__))


def _plan(halving, trials):
    """The rungs' epoch budgets, or [None] for one round at each trial's own budget."""
    if halving is None:
        return [None]
    if not isinstance(halving, SuccessiveHalving):
        raise TypeError("halving must be a SuccessiveHalving or None, got %r" % (halving,))
    linear = sorted({t.model for t in trials if is_linear(t.model)})
    if linear:
        raise ValueError("successive halving continues Solver checkpoints; %s trains "
                         "without a Solver" % " and ".join(linear))
    budgets = sorted({t.budget for t in trials})
    if len(budgets) != 1:
        raise ValueError("successive halving needs one num_epochs for every trial, got %s"
                         % budgets)
    return halving.rungs(budgets[0])


class _Sweep:
    """The state of one run_sweep call: engine, journal, finished records."""

    def __init__(self, engine, journal, done, data_arg, checkpoint_dir, verbose):
        self.engine, self.journal, self.done = engine, journal, done
        self.data_arg, self.checkpoint_dir, self.verbose = data_arg, checkpoint_dir, verbose

    def log(self, *args):
        if self.verbose:
            print(*args, flush=True)

    def run(self, trials, label, resume_from=None):
        """Run the trials not already finished; return {trial id: record}."""
        dist = require()
        resume_from = resume_from or {}
        records = {t.id: self.done[t.id] for t in trials if t.id in self.done}
        todo = [t for t in trials if t.id not in records]
        if records:
            self.log("%s: %d of %d trials are in the journal already; running %d"
                     % (label, len(records), len(trials), len(todo)))
        client = self.engine.client
        futures = {}
        for trial in todo:
            future = client.submit(run_trial, trial, self.data_arg, self.checkpoint_dir,
                                   resume_from.get(trial.id), key="xdl-trial-%s" % trial.id,
                                   pure=False, resources=self.engine.task_resources)
            futures[future] = trial
        for count, future in enumerate(dist.as_completed(futures), 1):
            trial = futures.pop(future)
            try:
                record = future.result()
            except Exception as exc:  # e.g. KilledWorker: its workers kept dying
                record = new_record(trial, "failed", "%s: %s" % (type(exc).__name__, exc))
            future.release()
            self.journal.append(record)
            self.done[trial.id] = record
            records[trial.id] = record
            self.log(_progress_line(label, count, len(todo), record))
        return records


def _progress_line(label, count, total, record):
    acc = "val %.4f train %.4f" % (record["val_acc"], record["train_acc"]) \
        if record["val_acc"] is not None and record["train_acc"] is not None else "no accuracy"
    wall = "%.1f s" % record["wall_s"] if record["wall_s"] is not None else "-"
    line = "%s [%d/%d] %-8s %s  %s  %s" % (label, count, total, record["status"], acc, wall,
                                         format_values(record["hyperparameters"]))
    if record["error"] and record["status"] == "failed":
        line += "\n    " + record["error"]
    return line


def run_sweep(space, model="TwoLayerNet", settings=None, data=None, out_dir="outputs/sweep",
              seed=0, halving=None, resume=False, client=None, scheduler=None, workers=None,
              gpus=False, trials_per_gpu=1, threads_per_trial=None, connect_timeout=10,
              verbose=True):
    """
    Train every point of a search space on Dask and journal each result.

    Inputs:
    - space: list of points (dicts), from grid() or random_search()
    - model: class name of the model, for points that do not name a 'model'
    - settings: fixed settings of every trial, named like the points
      (e.g. {'update_rule': 'adam', 'num_epochs': 5, 'lr_decay': 0.95})
    - data: a DataSource (default DataSource(): CIFAR-10, loaded once by each
      worker), or a dict of numpy arrays X_train, y_train, X_val, y_val
      (X_test, y_test) that is scattered to the workers once
    - out_dir: folder of the journal (journal.jsonl) and the checkpoints; on a
      cluster of several machines it must be on a file system they share
    - seed: NumPy seed set before each trial builds its model
    - halving: a SuccessiveHalving, or None to train every trial fully
    - resume: continue the journal in out_dir: trials recorded 'ok' or
      'diverged' are not run again ('failed' ones are)
    - client: a distributed.Client to run on
    - scheduler: the address of a Dask scheduler, e.g. 'tcp://host:8786'
    - workers: worker processes of the embedded LocalCluster (default: one per
      core); used when neither client nor scheduler is given
    - gpus: one worker per visible GPU, trials on the cuda backend
    - trials_per_gpu: trials sharing each GPU at once (with gpus=True)
    - threads_per_trial: xdl CPU kernel threads per trial on a given cluster
    - connect_timeout: seconds to wait for the scheduler
    - verbose: print the cluster, the dashboard address and a line per trial

    Returns:
    - a SweepResult (records sorted by validation accuracy, table, plot,
      best model)

    Every setting is checked before any trial starts: an empty space, an
    unknown model or update rule, a name no one takes, a bad value, a
    scheduler that does not answer within connect_timeout (ConnectionError
    naming its address), or an existing journal without resume=True.
    """
    engine = Engine(client=client, scheduler=scheduler, workers=workers, gpus=gpus,
                    trials_per_gpu=trials_per_gpu, threads_per_trial=threads_per_trial,
                    connect_timeout=connect_timeout)
    arrays, data_id = None, None
    if data is None:
        data = DataSource()
    if isinstance(data, dict):
        _check_arrays(data)
        arrays, data_id, data = data, _digest(data), None
    elif not isinstance(data, DataSource):
        raise TypeError("data must be a DataSource or a dict of numpy arrays, got %s"
                        % type(data).__name__)
    trials = build_trials(space, model=model, settings=settings, data=data, data_id=data_id,
                          seed=seed, backend=engine.backend)
    rungs = _plan(halving, trials)
    if arrays is not None and any(is_linear(t.model) for t in trials) \
            and arrays["X_train"].ndim != 2:
        raise ValueError("Softmax and LinearSVM train on rows: data['X_train'] must be (N, D), "
                         "got %s (a DataSource makes notebook 01's rows with a bias column)"
                         % (arrays["X_train"].shape,))
    if engine.embedded:  # the workers read the same folder as this process
        for source in {t.data for t in trials if t.data is not None}:
            source.check_available()
    require()

    journal = Journal(os.path.join(out_dir, JOURNAL_NAME))
    previous = journal.read()
    if previous and not resume:
        raise FileExistsError("%s already holds %d results: pass resume=True (--resume) to "
                              "continue that sweep, or choose another out_dir"
                              % (journal.path, len(previous)))
    done = {r["id"]: r for r in previous if r.get("status") in ("ok", "diverged")}
    checkpoint_dir = os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR))

    with engine:  # nothing is written before the cluster is up
        os.makedirs(checkpoint_dir, exist_ok=True)
        sweep = _Sweep(engine, journal, done, None, checkpoint_dir, verbose)
        sweep.log("sweep: %d trials of %s on %s" % (
            len(trials), ", ".join(sorted({t.model for t in trials})), engine.description))
        link = engine.dashboard_link()
        if link:
            sweep.log("Dask dashboard:", link)
        if arrays is not None:  # one copy per worker, not one per task
            sweep.data_arg = engine.client.scatter([arrays], broadcast=True)[0]
        if rungs == [None]:
            records = sweep.run(trials, "trial")
            final = [records[t.id] for t in trials]
        else:
            final = _halving_rounds(sweep, trials, rungs, halving)
    return SweepResult(final, out_dir=out_dir, data=data if arrays is None else arrays)


def _halving_rounds(sweep, trials, rungs, halving):
    """Run the rungs; return the furthest record of every setting."""
    alive, latest = list(trials), {}
    for r, budget in enumerate(rungs):
        batch = [t.with_budget(budget) for t in alive]
        resume_from = {t.id: latest[t.base_id]["checkpoint"] for t in batch
                       if t.base_id in latest}
        sweep.log("successive halving: rung %d of %d, %d trials to %d epochs"
                  % (r + 1, len(rungs), len(batch), budget))
        records = sweep.run(batch, "rung %d" % (r + 1), resume_from)
        for t in batch:
            latest[t.base_id] = records[t.id]
        ok = [t for t in alive if latest[t.base_id]["status"] == "ok"
              and latest[t.base_id]["val_acc"] is not None]
        ok.sort(key=lambda t: -latest[t.base_id]["val_acc"])  # stable: ties keep order
        if not ok:
            break
        alive = ok[:halving.survivors(len(batch))]
    return [latest[t.base_id] for t in trials]
