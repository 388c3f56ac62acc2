"""Hyperparameter sweeps that scale out, on Dask distributed.

The notebooks' tuning loops, run in parallel::

    from xdl import sweep
    points = sweep.grid({"learning_rate": [7e-4, 1e-3, 1.5e-3], "reg": [0.0, 0.25, 0.5]})
    result = sweep.run_sweep(points, model="TwoLayerNet",
                             settings={"hidden_dim": 100, "lr_decay": 0.95, "num_epochs": 10},
                             data=sweep.DataSource(num_train=49000), out_dir="outputs/sweep")
    print(result.table())
    model = result.best_model()

- search spaces: ``grid`` (nested loops), ``random_search`` over
  ``loguniform``, ``uniform`` and ``choice``, with a seed;
- trials (``Trial``, ``build_trials``, ``run_trial``): a model class name and
  its arguments, the Solver's options and a ``DataSource``, plain data whose
  hash is the trial's id; each returns its accuracies, histories, epochs,
  wall time and status ``ok``, ``diverged`` (the Solver's NaN stop) or
  ``failed`` (with the error);
- ``run_sweep`` runs them on an embedded ``LocalCluster`` (one single-threaded
  worker process per core, each with its share of xdl's kernel threads), on a
  scheduler address, on a ``distributed.Client``, or one worker per GPU
  (``gpus=True``); ``SuccessiveHalving`` stops poor trials early;
- results: a JSON-lines ``Journal`` (flushed and fsynced per trial, resumable),
  ``SweepResult`` with a table, the notebooks' accuracy plot and the best model.

Dask is imported when ``run_sweep`` is first used (``pip install 'xdl[distributed]'``).
"""
from xdl.sweep.data import DataSource, load
from xdl.sweep.halving import SuccessiveHalving
from xdl.sweep.journal import Journal, TornLineWarning
from xdl.sweep.results import SweepResult, accuracy, restore_model
from xdl.sweep.space import choice, grid, loguniform, random_search, uniform
from xdl.sweep.trial import MODEL_NAMES, Trial, build_trials, run_trial

__all__ = ["DataSource", "Engine", "Journal", "MODEL_NAMES", "SuccessiveHalving",
           "SweepResult", "TornLineWarning", "Trial", "accuracy", "build_trials", "choice",
           "grid", "load", "loguniform", "random_search", "restore_model", "run_sweep",
           "run_trial", "uniform"]


def __getattr__(name):
    # The parts that need Dask load on first use, so that importing xdl.sweep
    # stays cheap and works without Dask installed.
    if name == "run_sweep":
        from xdl.sweep.runner import run_sweep
        return run_sweep
    if name == "Engine":
        from xdl.sweep.cluster import Engine
        return Engine
    raise AttributeError("module 'xdl.sweep' has no attribute %r" % name)
