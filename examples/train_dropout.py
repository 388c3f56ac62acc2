"""Notebook 04's regularization experiment: the same two-layer network
trained on 500 CIFAR-10 images without dropout and with a keep probability
of 0.25, to compare their train and validation accuracy.

    python examples/train_dropout.py
    python examples/train_dropout.py --keep-ratios 1 0.75 0.5 0.25 --epochs 10

Prints the Solver's lines for each network and a table of their final and
best accuracies, and saves the accuracy curves under --out-dir.
"""
import os

import numpy as np

from xdl.classifiers.fc_net import FullyConnectedNet
from xdl.solver import Solver

import common


def plot_accuracies(solvers, path):
    """Train and validation accuracy per epoch for each keep ratio, as the notebook."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 1, figsize=(10, 9))
    for ax, key, title in ((axes[0], "train_acc_history", "Train accuracy"),
                           (axes[1], "val_acc_history", "Val accuracy")):
        for keep, solver in solvers.items():
            ax.plot(getattr(solver, key), "o-", markersize=4,
                    label="keep ratio %.2f" % keep)
        ax.set_title("%s with and without dropout" % title)
        ax.set_xlabel("Epoch (0: after the first iteration)")
        ax.set_ylabel("Accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(ncol=2, loc="lower right")
    fig.tight_layout()
    common.save_figure(fig, path)


def main(argv=None):
    p = common.parser(__doc__, epochs=25, batch_size=100, lr=5e-4, update_rule="adam",
                      print_every=100)
    p.add_argument("--keep-ratios", type=common.keep_ratio, nargs="+", default=[1.0, 0.25],
                   help="Train one network for each of these dropout keep probabilities "
                        "(1: no dropout).")
    p.add_argument("--hidden-dims", type=common.positive_int, nargs="+", default=[500],
                   help="Units in each hidden layer.")
    p.add_argument("--weight-scale", type=common.positive_float, default=1e-2,
                   help="The standard deviation of the initial weights.")
    p.set_defaults(num_train=500, seed=231)
    args = common.parse(p, argv)
    if len(set(args.keep_ratios)) != len(args.keep_ratios):
        p.error("argument --keep-ratios: each ratio once, got %s"
                % " ".join(str(r) for r in args.keep_ratios))

    print("backend:", common.describe_backend())
    # The notebook subtracts the mean of all 49000 training images, then keeps 500.
    data = common.load_data(args, num_training=None if args.synthetic else 49000)
    small_data = {"X_train": data["X_train"][:args.num_train],
                  "y_train": data["y_train"][:args.num_train],
                  "X_val": data["X_val"], "y_val": data["y_val"]}
    np.random.seed(args.seed)
    solvers = {}
    for keep in args.keep_ratios:
        model = FullyConnectedNet(args.hidden_dims, weight_scale=args.weight_scale,
                                  dropout_keep_ratio=keep, dtype=np.dtype(args.dtype).type)
        print(keep)
        solver = Solver(model, small_data, num_epochs=args.epochs, batch_size=args.batch_size,
                        update_rule=args.update_rule, optim_config={"learning_rate": args.lr},
                        verbose=True, print_every=args.print_every)
        common.train(solver)
        solvers[keep] = solver

    print()
    print("%-12s %12s %12s %14s %14s" % ("keep ratio", "final train", "final val",
                                         "best val", "best epoch"))
    for keep, s in solvers.items():
        print("%-12.2f %12.3f %12.3f %14.3f %14d" % (keep, s.train_acc_history[-1],
                                                     s.val_acc_history[-1], s.best_val_acc,
                                                     s.best_epoch))
    plot_accuracies(solvers, os.path.join(args.out_dir, "dropout_accuracy.png"))


if __name__ == "__main__":
    main()
