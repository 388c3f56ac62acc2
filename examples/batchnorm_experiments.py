"""Notebook 05's experiments: batch normalization against weight
initialization scale, and against batch size (with layer normalization too).

    python examples/batchnorm_experiments.py                # both, as the notebook
    python examples/batchnorm_experiments.py --only batch-size
    python examples/batchnorm_experiments.py --epochs 2 --num-train 500 --num-scales 5

Trains on the first 1000 CIFAR-10 training images as the notebook does,
prints each experiment's results as a table and saves the plots under
--out-dir.
"""
import os

import numpy as np

from xdl.classifiers.fc_net import FullyConnectedNet
from xdl.solver import Solver

import common


def small_data(data, num_train):
    return {"X_train": data["X_train"][:num_train], "y_train": data["y_train"][:num_train],
            "X_val": data["X_val"], "y_val": data["y_val"]}


def train(model, data, batch_size, lr, epochs):
    solver = Solver(model, data, num_epochs=epochs, batch_size=batch_size, update_rule="adam",
                    optim_config={"learning_rate": lr}, verbose=False)
    # Diverging baselines are part of the experiment: no floating-point warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solver.train()
    return solver


def final_loss(solver):
    """Mean of the last 100 finite losses; inf for a run stopped on a NaN/inf loss."""
    if solver.stopped is not None:
        return float("inf")
    return float(np.mean(solver.loss_history[-100:]))


def axis_labels(ax, x, y):
    ax.set_xlabel(x)
    ax.set_ylabel(y)


def weight_scale_experiment(data, plt, args):
    """Eight-layer nets with and without batchnorm over a range of weight scales."""
    np.random.seed(args.seed)
    hidden_dims = [50] * 8
    weight_scales = np.logspace(-4, 0, num=args.num_scales)
    rows = {"baseline": [], "batchnorm": []}
    for i, ws in enumerate(weight_scales):
        print("Running weight scale %d / %d (%.2e)" % (i + 1, len(weight_scales), ws), flush=True)
        for label, norm in (("batchnorm", "batchnorm"), ("baseline", None)):
            model = FullyConnectedNet(hidden_dims, weight_scale=ws, normalization=norm,
                                      dtype=np.dtype(args.dtype).type)
            solver = train(model, data, batch_size=50, lr=1e-3, epochs=args.epochs)
            rows[label].append((max(solver.val_acc_history), max(solver.train_acc_history),
                                final_loss(solver)))

    print()
    print("%-12s %21s %21s %25s" % ("", "best val accuracy", "best train accuracy",
                                    "final training loss"))
    print("%-12s" % "weight scale" + " %10s %10s" % ("baseline", "batchnorm") * 2
          + " %12s %12s" % ("baseline", "batchnorm"))
    for i, ws in enumerate(weight_scales):
        b, n = rows["baseline"][i], rows["batchnorm"][i]
        print("%-12.2e %10.3f %10.3f %10.3f %10.3f %12.4g %12.4g"
              % (ws, b[0], n[0], b[1], n[1], b[2], n[2]))
    if any(r[2] == float("inf") for runs in rows.values() for r in runs):
        print("(a final loss of inf: training stopped on a NaN or infinite loss)")

    fig, axes = plt.subplots(3, 1, figsize=(10, 12))
    titles = ["Best val accuracy", "Best train accuracy", "Final training loss"]
    for k, ax in enumerate(axes):
        for label in rows:
            values = np.array([r[k] for r in rows[label]])
            ax.semilogx(weight_scales, np.where(np.isfinite(values), values, np.nan), "-o",
                        label=label)
        ax.set_title("%s vs. weight initialization scale" % titles[k])
        if k == 2:
            ax.set_yscale("log")  # diverging baselines reach losses of 1e8
        axis_labels(ax, "Weight initialization scale", titles[k])
        ax.legend()
    fig.tight_layout()
    common.save_figure(fig, os.path.join(args.out_dir, "batchnorm_weight_scale.png"))


def batch_size_experiment(data, plt, args, normalization):
    """Six-layer nets with normalization at batch sizes 5, 10, 50 against a baseline."""
    from matplotlib.ticker import MaxNLocator

    np.random.seed(args.seed)
    hidden_dims = [100] * 5
    lr = 10 ** -3.5
    batch_sizes = [5, 10, 50]
    dtype = np.dtype(args.dtype).type
    print("No normalization: batch size = ", batch_sizes[0], flush=True)
    baseline = train(FullyConnectedNet(hidden_dims, weight_scale=2e-2, dtype=dtype), data,
                     batch_sizes[0], lr, args.epochs)
    solvers = []
    for bs in batch_sizes:
        print("Normalization: batch size = ", bs, flush=True)
        model = FullyConnectedNet(hidden_dims, weight_scale=2e-2, normalization=normalization,
                                  dtype=dtype)
        solvers.append(train(model, data, bs, lr, args.epochs))

    print()
    print("%-24s %16s %16s" % (normalization, "best train acc", "best val acc"))
    for bs, s in zip(batch_sizes, solvers):
        print("%-24s %16.3f %16.3f" % ("  batch size %d" % bs, max(s.train_acc_history),
                                       max(s.val_acc_history)))
    print("%-24s %16.3f %16.3f" % ("  baseline, batch size %d" % batch_sizes[0],
                                   max(baseline.train_acc_history),
                                   max(baseline.val_acc_history)))
    print()

    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    for ax, key, title in ((axes[0], "train_acc_history", "Training accuracy"),
                           (axes[1], "val_acc_history", "Validation accuracy")):
        for bs, s in zip(batch_sizes, solvers):
            ax.plot(getattr(s, key), "-o", label="%s, batch %d" % (normalization, bs))
        ax.plot(getattr(baseline, key), "-^", label="baseline, batch %d" % batch_sizes[0])
        ax.set_title("%s (%s)" % (title, normalization))
        axis_labels(ax, "Epoch (0: after the first iteration)", title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="lower right", ncol=2)
    fig.tight_layout()
    common.save_figure(fig, os.path.join(args.out_dir, "%s_batch_size.png" % normalization))


def main(argv=None):
    p = common.ArgumentParser(__doc__)
    p.add_argument("--only", choices=["weight-scale", "batch-size"], default=None,
                   help="Run only this experiment (both run without it).")
    p.add_argument("--num-scales", type=common.positive_int, default=20,
                   help="How many weight scales, from 1e-4 to 1, to try.")
    p.add_argument("--epochs", type=common.positive_int, default=10,
                   help="Epochs to train each network.")
    common.add_common_flags(p, num_train=1000)
    p.set_defaults(seed=231)
    args = common.parse(p, argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("backend:", common.describe_backend())
    # The notebook subtracts the mean of all 49000 training images, then keeps 1000.
    data = small_data(common.load_data(args, num_training=None if args.synthetic else 49000),
                      args.num_train)
    if args.only in (None, "weight-scale"):
        weight_scale_experiment(data, plt, args)
    if args.only in (None, "batch-size"):
        for normalization in ("batchnorm", "layernorm"):
            batch_size_experiment(data, plt, args, normalization)


if __name__ == "__main__":
    main()
