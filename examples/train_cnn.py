"""Train ThreeLayerConvNet on CIFAR-10 as notebook 06 does (the main job).

    python examples/train_cnn.py                 # CPU, one epoch
    XDL_BACKEND=cuda python examples/train_cnn.py --epochs 5

Prints the Solver's lines, train/validation/test accuracy, and saves the loss
curve, the first-layer filters and the trained model under --out-dir.
"""
import os

import numpy as np

import xdl
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.solver import Solver
from xdl.vis_utils import visualize_grid

import common


def save_filters(model, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = visualize_grid(xdl.asnumpy(model.params["W1"]).transpose(0, 2, 3, 1))
    plt.figure(figsize=(5, 5))
    plt.imshow(grid.astype("uint8"))
    plt.axis("off")
    plt.savefig(path, dpi=80)
    plt.close()
    print("saved", path)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], epochs=1, batch_size=50, lr=1e-3)
    p.add_argument("--weight-scale", type=float, default=1e-3)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--reg", type=float, default=1e-3)
    p.add_argument("--num-filters", type=int, default=32)
    p.add_argument("--filter-size", type=int, default=7)
    p.add_argument("--normalization", choices=["none", "batchnorm"], default="none")
    p.set_defaults(print_every=20)
    args = p.parse_args(argv)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = ThreeLayerConvNet(weight_scale=args.weight_scale, hidden_dim=args.hidden_dim,
                              reg=args.reg, num_filters=args.num_filters,
                              filter_size=args.filter_size, dtype=np.dtype(args.dtype).type,
                              normalization=None if args.normalization == "none"
                              else args.normalization)
    solver = Solver(model, data, num_epochs=args.epochs, batch_size=args.batch_size,
                    update_rule="adam", optim_config={"learning_rate": args.lr},
                    verbose=True, print_every=args.print_every)
    seconds = common.timed_train(solver)
    iterations = len(solver.loss_history)
    print("%.2f ms per iteration, %.1f s per epoch of %d images"
          % (1000 * seconds / max(iterations, 1), seconds / max(args.epochs, 1),
             data["X_train"].shape[0]))

    common.report_accuracy(solver, data)
    os.makedirs(args.out_dir, exist_ok=True)
    common.plot_history(solver, os.path.join(args.out_dir, "cnn_history.png"),
                        "ThreeLayerConvNet")
    save_filters(model, os.path.join(args.out_dir, "cnn_filters.png"))
    model.save(os.path.join(args.out_dir, "cnn_model.npz"))


if __name__ == "__main__":
    main()
