"""Notebook 05's experiments: batch normalization against weight
initialization scale, and against batch size (with layer normalization too).

    python examples/batchnorm_experiments.py            # both experiments
    python examples/batchnorm_experiments.py --only batch-size

Trains on 1000 CIFAR-10 images as the notebook does and saves the plots
under --out-dir.
"""
import argparse
import os

import numpy as np

from xdl import data_utils
from xdl.classifiers.fc_net import FullyConnectedNet
from xdl.solver import Solver


def small_data(data, num_train=1000):
    return {"X_train": data["X_train"][:num_train], "y_train": data["y_train"][:num_train],
            "X_val": data["X_val"], "y_val": data["y_val"]}


def train(model, data, batch_size, lr, epochs=10):
    solver = Solver(model, data, num_epochs=epochs, batch_size=batch_size, update_rule="adam",
                    optim_config={"learning_rate": lr}, verbose=False)
    solver.train()
    return solver


def weight_scale_experiment(data, plt, out_dir, num_scales):
    """Eight-layer nets with and without batchnorm over a range of weight scales."""
    np.random.seed(231)
    hidden_dims = [50] * 8
    weight_scales = np.logspace(-4, 0, num=num_scales)
    rows = {"baseline": [], "batchnorm": []}
    for i, ws in enumerate(weight_scales):
        print("Running weight scale %d / %d" % (i + 1, len(weight_scales)))
        for label, norm in (("batchnorm", "batchnorm"), ("baseline", None)):
            model = FullyConnectedNet(hidden_dims, weight_scale=ws, normalization=norm)
            solver = train(model, data, batch_size=50, lr=1e-3)
            rows[label].append((max(solver.val_acc_history), max(solver.train_acc_history),
                                float(np.mean(solver.loss_history[-100:]))))
    fig, axes = plt.subplots(3, 1, figsize=(10, 12))
    titles = ["Best val accuracy", "Best train accuracy", "Final training loss"]
    for k, ax in enumerate(axes):
        for label in rows:
            ax.semilogx(weight_scales, [r[k] for r in rows[label]], "-o", label=label)
        ax.set_title("%s vs. weight initialization scale" % titles[k])
        if k == 2:
            ax.set_yscale("log")  # diverging baselines reach losses of 1e8
        ax.set_xlabel("Weight initialization scale")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "batchnorm_weight_scale.png")
    fig.savefig(path, dpi=80)
    print("saved", path)


def batch_size_experiment(data, plt, out_dir, normalization):
    """Six-layer nets with normalization at batch sizes 5, 10, 50 against a baseline."""
    np.random.seed(231)
    hidden_dims = [100] * 5
    lr = 10 ** -3.5
    batch_sizes = [5, 10, 50]
    print("No normalization: batch size = ", batch_sizes[0])
    baseline = train(FullyConnectedNet(hidden_dims, weight_scale=2e-2), data, batch_sizes[0], lr)
    solvers = []
    for bs in batch_sizes:
        print("Normalization: batch size = ", bs)
        model = FullyConnectedNet(hidden_dims, weight_scale=2e-2, normalization=normalization)
        solvers.append(train(model, data, bs, lr))
    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    for ax, key, title in ((axes[0], "train_acc_history", "Training accuracy"),
                           (axes[1], "val_acc_history", "Validation accuracy")):
        for bs, s in zip(batch_sizes, solvers):
            ax.plot(getattr(s, key), "-o", label="%s, batch %d" % (normalization, bs))
        ax.plot(getattr(baseline, key), "-^", label="baseline, batch %d" % batch_sizes[0])
        ax.set_title("%s (%s)" % (title, normalization))
        ax.set_xlabel("Epoch")
        ax.legend(loc="lower right", ncol=2)
    fig.tight_layout()
    path = os.path.join(out_dir, "%s_batch_size.png" % normalization)
    fig.savefig(path, dpi=80)
    print("saved", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["weight-scale", "batch-size"], default=None)
    p.add_argument("--num-scales", type=int, default=20, help="weight scales to try")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default="outputs")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = small_data(data_utils.get_CIFAR10_data(cifar10_dir=args.data_dir))
    os.makedirs(args.out_dir, exist_ok=True)
    if args.only in (None, "weight-scale"):
        weight_scale_experiment(data, plt, args.out_dir, args.num_scales)
    if args.only in (None, "batch-size"):
        for normalization in ("batchnorm", "layernorm"):
            batch_size_experiment(data, plt, args.out_dir, normalization)


if __name__ == "__main__":
    main()
