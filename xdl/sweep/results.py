"""What a sweep leaves: its records ranked by validation accuracy, a table,
the notebooks' accuracy plot over two hyperparameters, and the best model
restored from its checkpoint (or trained again) and scored."""
import math
import numbers
import os
import tempfile

import numpy as np

_STATUS_ORDER = {"ok": 0, "diverged": 1, "failed": 2}


def format_values(values):
    """'name=value ...' with numbers in %g."""
    parts = []
    for k, v in values.items():
        parts.append("%s=%s" % (k, "%g" % v if isinstance(v, float) else v))
    return " ".join(parts)


def rank(records):
    """ok trials by validation accuracy (best first), then diverged, then failed."""
    def key(r):
        acc = r.get("val_acc")
        return (_STATUS_ORDER.get(r["status"], 3), -(acc if acc is not None else -1.0))
    return sorted(records, key=key)


def load_split(data, split):
    """(X, y) of a split ('train', 'val', 'test') from a DataSource or a dict of arrays."""
    from xdl.sweep.data import DataSource, load
    arrays = load(data) if isinstance(data, DataSource) else data
    if ("X_" + split) not in arrays or ("y_" + split) not in arrays:
        raise ValueError("the sweep's data has no %s split (X_%s, y_%s)" % (split, split, split))
    return arrays["X_" + split], arrays["y_" + split]


def accuracy(model, X, y, batch_size=1000):
    """Fraction of X that model classifies as y (linear classifiers: predict)."""
    from xdl.backends import asnumpy
    if hasattr(model, "predict"):
        pred = model.predict(X)
    else:
        pred = np.concatenate([asnumpy(model.loss(X[i:i + batch_size])).argmax(axis=1)
                               for i in range(0, X.shape[0], batch_size)])
    return float(np.mean(pred == np.asarray(y)))


def restore_model(record, data=None):
    """
    The trained model of a record: restored from its checkpoint (the Solver's
    best parameters, or a linear classifier's saved weights); when the file is
    gone, trained again here from the record's settings.

    Inputs:
    - record: a trial record of a sweep
    - data: the dict of arrays a sweep scattered, needed only to train
      such a trial again (a DataSource trial loads its own data)

    Returns:
    - model: a model of the record's class, on the configured backend
    """
    from xdl.solver import Solver
    from xdl.sweep.trial import Trial, _build_model, is_linear, model_class, run_trial
    path = record.get("checkpoint")
    if not path or not os.path.exists(path):
        trial = Trial.from_record(record)
        if trial.data is None and not isinstance(data, dict):
            raise FileNotFoundError("the checkpoint of trial %s (%r) is gone and the arrays "
                                    "it trained on were not given to train it again"
                                    % (record["id"], path))
        with tempfile.TemporaryDirectory() as folder:
            again = run_trial(trial, data=data if trial.data is None else None,
                              checkpoint_dir=folder)
            if again["status"] == "failed":
                raise RuntimeError("training trial %s again failed: %s"
                                   % (record["id"], again["error"]))
            return restore_model(again)
    settings = record["settings"]
    if is_linear(settings["model"]):
        model = model_class(settings["model"])()
        model.load(path, verbose=False)
        return model
    state = np.random.get_state()
    try:
        model = _build_model(model_class(settings["model"]), settings["model_kwargs"])
        tiny = {"X_train": np.zeros((1, 1)), "y_train": np.zeros(1, dtype=np.int64),
                "X_val": np.zeros((1, 1)), "y_val": np.zeros(1, dtype=np.int64)}
        solver = Solver(model, tiny, verbose=False)
        solver.load_checkpoint(path)
    finally:
        np.random.set_state(state)
    model.params = dict(solver.best_params)
    return model


class SweepResult:
    """
    The records of a sweep (for successive halving: each setting's furthest
    rung), ranked by validation accuracy.

    Attributes:
    - records: list of record dicts, best first (see xdl.sweep.run_trial)
    - out_dir: the sweep's folder
    - data: the sweep's data (DataSource or dict of arrays)
    """

    def __init__(self, records, out_dir=None, data=None):
        self.records = rank(records)
        self.out_dir = out_dir
        self.data = data

    @property
    def best(self):
        """The record with the best validation accuracy among 'ok' ones, or None."""
        ok = [r for r in self.records if r["status"] == "ok" and r["val_acc"] is not None]
        return ok[0] if ok else None

    def counts(self):
        """{status: number of trials}."""
        out = {}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def table(self, limit=None):
        """The records as a text table, best first (the notebooks' printout)."""
        names = []
        for r in self.records:
            for k in r["hyperparameters"]:
                if k not in names:
                    names.append(k)
        header = ["rank", "status", "val_acc", "train_acc", "epochs", "wall_s"] + names
        rows = []
        for i, r in enumerate(self.records[:limit] if limit else self.records, 1):
            row = [str(i), r["status"], _fmt(r["val_acc"]), _fmt(r["train_acc"]),
                   _fmt(r.get("epochs") if r.get("epochs") is not None else r.get("iterations")),
                   _fmt(r["wall_s"], "%.1f")]
            row += [_fmt(r["hyperparameters"].get(k)) for k in names]
            rows.append(row)
        widths = [max(len(h), *(len(row[j]) for row in rows)) if rows else len(h)
                  for j, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)

    def plot(self, path, x, y):
        """
        Notebook 01's figure: training and validation accuracy of each trial
        as colour over two hyperparameters, on log axes where all values are
        positive (where several trials share a point, the best one). Saves a
        PNG at path and returns path.
        """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        points = [r for r in self.records if r["val_acc"] is not None]
        for name in (x, y):
            values = [r["hyperparameters"].get(name) for r in points]
            if not points or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                     for v in values):
                raise ValueError("plot needs %r to be a number in every trial with an "
                                 "accuracy; the swept names are %s"
                                 % (name, sorted({k for r in self.records
                                                  for k in r["hyperparameters"]})))
        # Trials that differ only in other hyperparameters share a point: show
        # the best of them (records are ranked, so the first one seen).
        best_at = {}
        for r in points:
            best_at.setdefault((r["hyperparameters"][x], r["hyperparameters"][y]), r)
        shared = len(best_at) < len(points)
        points = list(best_at.values())
        xs = [r["hyperparameters"][x] for r in points]
        ys = [r["hyperparameters"][y] for r in points]
        fig, axes = plt.subplots(2, 1, figsize=(7, 9))
        for ax, key, title in ((axes[0], "train_acc", "training"),
                               (axes[1], "val_acc", "validation")):
            colors = [r[key] if r[key] is not None else math.nan for r in points]
            sc = ax.scatter(xs, ys, 100, c=colors, cmap=plt.cm.coolwarm)
            fig.colorbar(sc, ax=ax, label="%s accuracy" % title)
            ax.set_xscale("log" if min(xs) > 0 else "linear")
            ax.set_yscale("log" if min(ys) > 0 else "linear")
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            ax.set_title("%s accuracy%s" % (title.capitalize(),
                                            " (best trial at each point)" if shared else ""))
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def best_model(self):
        """The best trial's model, restored (or trained again), or None if none is ok."""
        best = self.best
        return None if best is None else restore_model(best, self.data)

    def score(self, model, record, split="test"):
        """
        Accuracy of model on a split of the data a record trained on (a
        linear classifier's rows with their bias column included).

        Inputs:
        - model: e.g. best_model()
        - record: the record the model comes from (e.g. best)
        - split: 'train', 'val' or 'test'
        """
        from xdl.sweep.trial import Trial
        source = Trial.from_record(record).data
        X, y = load_split(source if source is not None else self.data, split)
        return accuracy(model, X, y)


def _fmt(v, spec="%.4g"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return spec % v
    return str(v)
