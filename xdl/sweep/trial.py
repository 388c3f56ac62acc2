"""One trial of a sweep: a model (class name and keyword arguments), the
Solver's options and a data source, as plain data that pickles and hashes;
``build_trials`` turns the points of a search space into trials, checking
every setting before anything runs; ``run_trial`` trains one (on a worker)
and returns its result record.

A point's names are routed by who takes them: the model's constructor
(``reg``, ``hidden_dim``, ``weight_scale``, ...), the Solver (``update_rule``,
``lr_decay``, ``batch_size``, ``num_epochs``, ...) or the update rule's
``optim_config`` (``learning_rate``, ``momentum``, ``beta1``, ...). The linear
classifiers of notebook 01 (``Softmax``, ``LinearSVM``) train without a
Solver: their names are the arguments of ``train()`` (``learning_rate``,
``reg``, ``num_iters``, ``batch_size``).
"""
import dataclasses
import glob
import hashlib
import inspect
import json
import math
import os
import re
import socket
import time
import traceback
from typing import Optional

import numpy as np

from xdl import optim
from xdl.backends import use_backend
from xdl.sweep.data import DataSource, load

MODEL_NAMES = ("Softmax", "LinearSVM", "TwoLayerNet", "FullyConnectedNet", "ThreeLayerConvNet")

# The Solver options a sweep may set (it sets checkpoint_name, print_every
# and verbose itself).
SOLVER_OPTIONS = ("update_rule", "lr_decay", "batch_size", "num_epochs",
                  "num_train_samples", "num_val_samples")
DEFAULT_EPOCHS = 10      # the Solver's default num_epochs
DEFAULT_ITERS = 1500     # notebook 01's num_iters for the linear classifiers


def model_class(name):
    """The classifier class called name (one of MODEL_NAMES)."""
    from xdl import classifiers
    if name not in MODEL_NAMES:
        raise ValueError("unknown model %r; a sweep trains one of %s"
                         % (name, ", ".join(MODEL_NAMES)))
    return getattr(classifiers, name)


def is_linear(name):
    """True for the linear classifiers, which train with their own train()."""
    return name in ("Softmax", "LinearSVM")


def model_arguments(name):
    """The names a model's constructor takes (for linear models: train()'s)."""
    cls = model_class(name)
    if is_linear(name):
        skip = ("self", "X", "y", "verbose")
        return [p for p in inspect.signature(cls.train).parameters if p not in skip]
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def rule_hyperparameters(rule):
    """
    The optim_config names an update rule reads, found by running it once
    on a tiny array: every float it sets a default for (its state arrays
    and step counter are not hyperparameters).
    """
    if not isinstance(rule, str):
        raise TypeError("update_rule must be the name of a rule in xdl.optim, got %r" % (rule,))
    update = optim.get_update_rule(rule)
    _, config = update(np.zeros(2), np.zeros(2), {})
    return sorted(k for k, v in config.items() if isinstance(v, float))


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_id(settings):
    """A short hash of plain settings: the same settings give the same id."""
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:16]


@dataclasses.dataclass
class Trial:
    """
    One model to train.

    Fields:
    - model: class name (one of MODEL_NAMES)
    - model_kwargs: constructor arguments (dtype as 'float32'/'float64')
    - solver_kwargs: Solver options with 'optim_config'; for Softmax and
      LinearSVM the arguments of train()
    - data: a DataSource, or None when the sweep scattered in-memory arrays
    - data_id: identifies scattered arrays (a digest); None with a DataSource
    - seed: NumPy seed set before the model is built (weights, minibatches)
    - hyperparameters: the point of the search space the trial came from
    - backend: 'numpy' or 'cuda', where it trains (not part of its id)
    """
    model: str
    model_kwargs: dict
    solver_kwargs: dict
    data: Optional[DataSource]
    data_id: Optional[str]
    seed: int
    hyperparameters: dict
    backend: str = "numpy"

    @classmethod
    def from_record(cls, record):
        """The trial a journal record was made by (its id matches the record's)."""
        s = record["settings"]
        arrays = s["data"].get("arrays") if isinstance(s["data"], dict) else None
        data = None if "arrays" in s["data"] else DataSource(**s["data"])
        return cls(model=s["model"], model_kwargs=s["model_kwargs"],
                   solver_kwargs=s["solver_kwargs"], data=data, data_id=arrays, seed=s["seed"],
                   hyperparameters=record.get("hyperparameters", {}),
                   backend=record.get("backend", "numpy"))

    @property
    def budget_name(self):
        """'num_epochs' (Solver models) or 'num_iters' (linear classifiers)."""
        return "num_iters" if is_linear(self.model) else "num_epochs"

    @property
    def budget(self):
        return self.solver_kwargs[self.budget_name]

    def settings(self):
        """Everything that decides the trial's result, as plain data."""
        return {"model": self.model, "model_kwargs": self.model_kwargs,
                "solver_kwargs": self.solver_kwargs,
                "data": self.data.to_dict() if self.data is not None else {"arrays": self.data_id},
                "seed": self.seed}

    @property
    def id(self):
        """Hash of the settings: a trial's identity in the journal."""
        return settings_id(self.settings())

    @property
    def base_id(self):
        """Hash of the settings without the training budget: the rungs of
        successive halving of one setting share it."""
        settings = self.settings()
        settings["solver_kwargs"] = {k: v for k, v in self.solver_kwargs.items()
                                     if k != self.budget_name}
        return settings_id(settings)

    def with_budget(self, budget):
        """The same trial trained for budget epochs (or iterations)."""
        kwargs = dict(self.solver_kwargs, **{self.budget_name: int(budget)})
        return dataclasses.replace(self, solver_kwargs=kwargs)


# -- building and checking trials ------------------------------------------------


def _route(name, merged, rule_names):
    """Split merged settings into (model_kwargs, solver_kwargs) for model `name`."""
    taken = model_arguments(name)
    model_kwargs, solver_kwargs, optim_config = {}, {}, {}
    for key, value in merged.items():
        if is_linear(name):
            if key in taken:
                solver_kwargs[key] = value
                continue
        elif key in taken:
            model_kwargs[key] = value
            continue
        elif key in SOLVER_OPTIONS:
            solver_kwargs[key] = value
            continue
        elif key in rule_names:
            optim_config[key] = value
            continue
        if is_linear(name):
            raise ValueError("hyperparameter %r is not taken by %s, which trains with "
                             "train(%s)" % (key, name, ", ".join(taken)))
        raise ValueError(
            "hyperparameter %r is not taken by %s (its arguments: %s), by the Solver (%s) "
            "nor by update rule %r (%s)"
            % (key, name, ", ".join(taken), ", ".join(SOLVER_OPTIONS),
               merged.get("update_rule", "sgd"), ", ".join(rule_names)))
    if is_linear(name):
        solver_kwargs.setdefault("num_iters", DEFAULT_ITERS)
    else:
        solver_kwargs.setdefault("num_epochs", DEFAULT_EPOCHS)
        solver_kwargs["optim_config"] = optim_config
    return model_kwargs, solver_kwargs


def _construct(trial):
    """Build the trial's model (and Solver) once, so bad values fail now."""
    cls = model_class(trial.model)
    state = np.random.get_state()
    try:
        if is_linear(trial.model):
            kwargs = dict(trial.solver_kwargs)
            num_iters = kwargs.pop("num_iters")
            if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
                raise ValueError("num_iters must be an integer >= 1, got %r" % (num_iters,))
            # train() checks its arguments before the first step.
            cls().train(np.zeros((2, 3)), np.array([0, 1]), num_iters=0, **kwargs)
        else:
            from xdl.solver import Solver
            model = _build_model(cls, trial.model_kwargs)
            tiny = {"X_train": np.zeros((1, 1)), "y_train": np.zeros(1, dtype=np.int64),
                    "X_val": np.zeros((1, 1)), "y_val": np.zeros(1, dtype=np.int64)}
            kwargs = dict(trial.solver_kwargs)
            config = kwargs.pop("optim_config")
            solver = Solver(model, tiny, optim_config=dict(config), verbose=False, **kwargs)
            # One step of the rule on a tiny array checks the config's values.
            solver.update_rule(np.zeros(2), np.zeros(2), dict(config))
    finally:
        np.random.set_state(state)


def _build_model(cls, model_kwargs):
    kwargs = dict(model_kwargs)
    if "dtype" in kwargs:
        if kwargs["dtype"] not in ("float32", "float64"):
            raise ValueError("dtype must be 'float32' or 'float64', got %r" % (kwargs["dtype"],))
        kwargs["dtype"] = np.dtype(kwargs["dtype"]).type
    return cls(**kwargs)


def build_trials(points, model="TwoLayerNet", settings=None, data=None, data_id=None,
                 seed=0, backend="numpy"):
    """
    Turn the points of a search space into checked trials.

    Inputs:
    - points: list of dicts (from grid or random_search); a point may name
      its 'model'
    - model: the model class name for points that name none
    - settings: dict of fixed settings for every trial (same names as points)
    - data: a DataSource, or None with data_id for scattered arrays
    - data_id: digest of scattered arrays
    - seed: NumPy seed of every trial
    - backend: 'numpy' or 'cuda'

    Returns:
    - trials: list of Trial, in the order of the points, duplicates removed

    Raises ValueError/TypeError naming the point and the setting for an empty
    space, an unknown model or update rule, a name no one takes, or a value
    the model, the Solver or the rule rejects.
    """
    if not isinstance(points, (list, tuple)):
        raise TypeError("the search space must be a list of points (dicts), e.g. from grid() "
                        "or random_search(), got %s" % type(points).__name__)
    if len(points) == 0:
        raise ValueError("the search space is empty: there is no trial to run")
    settings = dict(settings or {})
    if data is not None and not isinstance(data, DataSource):
        raise TypeError("data must be a DataSource, got %s" % type(data).__name__)
    trials, seen, checked = [], set(), set()
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise TypeError("point %d of the search space is a %s, not a dict"
                            % (i, type(point).__name__))
        both = sorted(set(point) & set(settings))
        if both:
            raise ValueError("point %d sets %s, which the fixed settings also set"
                             % (i, ", ".join(both)))
        merged = dict(settings, **point)
        name = merged.pop("model", model)
        try:
            model_class(name)
            rule_names = [] if is_linear(name) else \
                rule_hyperparameters(merged.get("update_rule", "sgd"))
            model_kwargs, solver_kwargs = _route(name, merged, rule_names)
            source = data
            if source is not None and is_linear(name):
                source = dataclasses.replace(source, rows=True)
            trial = Trial(model=name, model_kwargs=model_kwargs, solver_kwargs=solver_kwargs,
                          data=source, data_id=data_id, seed=seed,
                          hyperparameters=dict(point), backend=backend)
            key = trial.id
            if key not in checked:
                _construct(trial)
                checked.add(key)
        except (ValueError, TypeError) as exc:
            raise type(exc)("point %d %s: %s" % (i, _canonical(point), exc)) from None
        if key not in seen:
            seen.add(key)
            trials.append(trial)
    return trials


# -- running one trial -----------------------------------------------------------


def _finite_or_none(values):
    return [v if math.isfinite(v) else None for v in (float(x) for x in values)]


def _checkpoints(name):
    """{epoch: path} of the Solver checkpoints '<name>_epoch_<e>.npz'."""
    found = {}
    for path in glob.glob(glob.escape(name) + "_epoch_*.npz"):
        m = re.search(r"_epoch_(\d+)\.npz$", path)
        if m:
            found[int(m.group(1))] = path
    return found


def _worker_address():
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return None


def _train_solver_model(trial, data, checkpoint_dir, resume_from, record):
    from xdl.solver import Solver
    model = _build_model(model_class(trial.model), trial.model_kwargs)
    kwargs = dict(trial.solver_kwargs)
    config = kwargs.pop("optim_config")
    name = os.path.join(checkpoint_dir, trial.id) if checkpoint_dir else None
    solver = Solver(model, data, optim_config=dict(config), checkpoint_name=name,
                    print_every=0, verbose=False, **kwargs)
    # A rerun after its worker died continues from its own newest checkpoint;
    # a survivor of successive halving from its previous rung's last one.
    own = _checkpoints(name) if name is not None else {}
    start_from = own[max(own)] if own else resume_from
    if start_from is not None:
        solver.load_checkpoint(start_from)
        record["resumed_from_epoch"] = solver.epoch
    start = time.time()
    solver.train()
    record["wall_s"] = time.time() - start
    if solver.stopped is not None:
        record["status"] = "diverged"
        record["error"] = "the loss became %r at iteration %d" % (solver.stopped[1],
                                                                  solver.stopped[0] + 1)
    val = solver.val_acc_history
    record.update(
        val_acc=solver.best_val_acc if solver.best_epoch is not None else None,
        train_acc=solver.train_acc_history[int(np.argmax(val))] if val else None,
        best_epoch=solver.best_epoch, epochs=solver.epoch, iterations=solver.iteration,
        val_acc_history=list(val), train_acc_history=list(solver.train_acc_history),
        loss_history=_finite_or_none(solver.loss_history))
    saved = _checkpoints(name) if name is not None else {}
    if saved:
        newest = max(saved)
        record["checkpoint"] = saved[newest]
        for e, path in saved.items():
            if e < newest:  # only the last one is needed to continue or restore
                os.remove(path)


def _train_linear(trial, data, checkpoint_dir, record):
    cls = model_class(trial.model)
    clf = cls()
    kwargs = dict(trial.solver_kwargs)
    start = time.time()
    history = clf.train(data["X_train"], data["y_train"], verbose=False, **kwargs)
    record["wall_s"] = time.time() - start
    if len(history) < kwargs["num_iters"]:  # train() stops on a non-finite loss
        record["status"] = "diverged"
        record["error"] = "the loss became non-finite at iteration %d" % len(history)
    train_acc = float(np.mean(clf.predict(data["X_train"]) == data["y_train"]))
    val_acc = float(np.mean(clf.predict(data["X_val"]) == data["y_val"]))
    record.update(val_acc=val_acc, train_acc=train_acc, iterations=len(history),
                  val_acc_history=[val_acc], train_acc_history=[train_acc],
                  loss_history=_finite_or_none(history))
    if checkpoint_dir:
        path = os.path.join(checkpoint_dir, trial.id + ".npz")
        clf.save(path, verbose=False)
        record["checkpoint"] = path


def new_record(trial, status="ok", error=None):
    """A result record for trial with nothing measured yet."""
    return {"id": trial.id, "base_id": trial.base_id, "model": trial.model,
            "hyperparameters": trial.hyperparameters, "settings": trial.settings(),
            "backend": trial.backend, "status": status, "error": error,
            "val_acc": None, "train_acc": None, "best_epoch": None, "epochs": None,
            "iterations": None, "val_acc_history": [], "train_acc_history": [],
            "loss_history": [], "wall_s": None, "load_s": 0.0, "resumed_from_epoch": None,
            "checkpoint": None, "worker": None, "host": None, "pid": None}


def run_trial(trial, data=None, checkpoint_dir=None, resume_from=None):
    """
    Train one trial and return its result record. Runs on a Dask worker (or
    in this process); never raises for a failing trial.

    Inputs:
    - trial: a Trial
    - data: the data dict (scattered arrays), or None to load trial.data
      through this process's cache (xdl.sweep.data.load)
    - checkpoint_dir: folder for the Solver's checkpoints (shared with the
      driver), or None for none
    - resume_from: a Solver checkpoint of the same settings with fewer
      epochs to continue from (successive halving), or None

    Returns:
    - record: dict with id, status ('ok', 'diverged' on the Solver's NaN stop,
      'failed' with the error text), val_acc, train_acc, the histories,
      epochs run, wall time and where it ran
    """
    record = new_record(trial)
    record.update(worker=_worker_address(), host=socket.gethostname(), pid=os.getpid())
    try:
        with use_backend(trial.backend), np.errstate(over="ignore", invalid="ignore"):
            if data is None:
                start = time.time()
                data = load(trial.data)
                record["load_s"] = time.time() - start
            np.random.seed(trial.seed)
            if trial.backend == "cuda":
                import cupy
                # Each of a GPU worker's threads queues its kernels on its own stream.
                with cupy.cuda.Stream(non_blocking=True):
                    _train(trial, data, checkpoint_dir, resume_from, record)
            else:
                _train(trial, data, checkpoint_dir, resume_from, record)
    except Exception as exc:  # the sweep records the failure and goes on
        record["status"] = "failed"
        record["error"] = "%s: %s" % (type(exc).__name__, exc)
        record["traceback"] = traceback.format_exc()
    record["finished_at"] = time.time()
    return record


def _train(trial, data, checkpoint_dir, resume_from, record):
    if is_linear(trial.model):
        _train_linear(trial, data, checkpoint_dir, record)
    else:
        _train_solver_model(trial, data, checkpoint_dir, resume_from, record)
