"""Train ThreeLayerConvNet on CIFAR-10 as notebook 06 does (the main job).

    python examples/train_cnn.py                  # CPU, one epoch
    python examples/train_cnn.py --device cuda --epochs 5

Prints the Solver's lines, train/validation/test accuracy, and saves the loss
curve, the first-layer filters and the trained model under --out-dir. When
PyTorch is installed, it then trains the same network (same layers, loss,
Adam, minibatch size and number of steps) in PyTorch on the same device and
threads and prints both training times and PyTorch's validation accuracy
(--no-torch-baseline skips it).
"""
import os

import numpy as np

import xdl
from xdl.classifiers.cnn import ThreeLayerConvNet
from xdl.solver import Solver

import common
import torch_cnn


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
    p.add_argument("--no-torch-baseline", action="store_true",
                   help="Do not train the same network in PyTorch to compare the training "
                        "time (done when torch is installed and the update rule is adam).")
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
    ms = common.train(solver)

    common.report_accuracy(solver, data)
    if not args.no_torch_baseline:
        compare_with_torch(args, data, solver.steps_taken, ms)
    common.plot_history(solver, os.path.join(args.out_dir, "cnn_history.png"),
                        "ThreeLayerConvNet")
    common.plot_grid(xdl.asnumpy(model.params["W1"]).transpose(0, 2, 3, 1),
                     os.path.join(args.out_dir, "cnn_filters.png"),
                     "ThreeLayerConvNet: first-layer filters (%d of %dx%d)"
                     % (args.num_filters, args.filter_size, args.filter_size))
    model.save(os.path.join(args.out_dir, "cnn_model.npz"))


def compare_with_torch(args, data, steps, xdl_ms):
    """
    Train the same network in PyTorch for the same steps and print its
    training time against xdl's (xdl_ms per step) and its validation accuracy.
    """
    if args.update_rule != "adam" or args.normalization != "none":
        print("PyTorch baseline: only for --update-rule adam without normalization")
        return
    torch, note = torch_cnn.load_torch(args.device, xdl.backends.get_num_threads())
    if torch is None:
        print("PyTorch baseline: torch %s" % note)
        return
    print("Training the same network in PyTorch %s (%d threads) for %d steps ..."
          % (note, torch.get_num_threads(), steps), flush=True)
    run = torch_cnn.time_training(torch, args.device, data, steps, args.batch_size,
                                  seed=args.seed, dtype=args.dtype,
                                  num_filters=args.num_filters, filter_size=args.filter_size,
                                  hidden_dim=args.hidden_dim, reg=args.reg,
                                  learning_rate=args.lr)
    torch_ms = 1000 * run["step_s"] / max(steps, 1)
    print("PyTorch took %.1f s: %d steps at %.2f ms per step; xdl's steps took %.2fx "
          "PyTorch's time" % (run["step_s"], steps, torch_ms, xdl_ms / torch_ms))
    print("PyTorch validation set accuracy:", run["val_acc"])


if __name__ == "__main__":
    main()
