"""Train ThreeLayerConvNet on CIFAR-10 as notebook 06 does (the main job).

    python examples/train_cnn.py                  # CPU, one epoch
    python examples/train_cnn.py --device cuda --epochs 5

Prints the Solver's lines, train/validation/test accuracy, and saves the loss
curve, the first-layer filters and the trained model under --out-dir.
"""
import os

import numpy as np

import xdl
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.solver import Solver

import common


def main(argv=None):
    p = common.parser(__doc__, epochs=1, batch_size=50, lr=1e-3, update_rule="adam",
                      print_every=20)
    p.add_argument("--weight-scale", type=common.positive_float, default=1e-3,
                   help="The standard deviation of the initial weights.")
    p.add_argument("--hidden-dim", type=common.positive_int, default=500,
                   help="Units in the hidden affine layer.")
    p.add_argument("--reg", type=common.nonneg_float, default=1e-3,
                   help="The L2 regularization strength.")
    p.add_argument("--num-filters", type=common.positive_int, default=32,
                   help="Filters in the convolutional layer.")
    p.add_argument("--filter-size", type=common.positive_int, default=7,
                   help="The filters' width and height (odd, so the size is kept).")
    p.add_argument("--normalization", choices=["none", "batchnorm"], default="none",
                   help="Spatial batch normalization after the convolution and batch "
                        "normalization after the hidden layer, or none.")
    args = common.parse(p, argv)
    if args.filter_size % 2 == 0:
        p.error("argument --filter-size: must be odd, got %d" % args.filter_size)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = ThreeLayerConvNet(weight_scale=args.weight_scale, hidden_dim=args.hidden_dim,
                              reg=args.reg, num_filters=args.num_filters,
                              filter_size=args.filter_size, dtype=np.dtype(args.dtype).type,
                              normalization=None if args.normalization == "none"
                              else args.normalization)
    solver = Solver(model, data, num_epochs=args.epochs, batch_size=args.batch_size,
                    update_rule=args.update_rule, optim_config={"learning_rate": args.lr},
                    verbose=True, print_every=args.print_every)
    common.train(solver)

    common.report_accuracy(solver, data)
    common.plot_history(solver, os.path.join(args.out_dir, "cnn_history.png"),
                        "ThreeLayerConvNet")
    common.plot_grid(xdl.asnumpy(model.params["W1"]).transpose(0, 2, 3, 1),
                     os.path.join(args.out_dir, "cnn_filters.png"),
                     "ThreeLayerConvNet: first-layer filters (%d of %dx%d)"
                     % (args.num_filters, args.filter_size, args.filter_size))
    model.save(os.path.join(args.out_dir, "cnn_model.npz"))


if __name__ == "__main__":
    main()
