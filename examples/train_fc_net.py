"""Train a 5-layer FullyConnectedNet on CIFAR-10 with Adam (notebook 03's
"train a good model"), with optional batch/layer normalization and dropout.

    python examples/train_fc_net.py --normalization batchnorm --dropout-keep 0.8

Prints the Solver's lines and the validation and test accuracy of the best
epoch, and saves the loss/accuracy plot and the model under --out-dir.
"""
import os

import numpy as np

from xdl.classifiers.fc_net import FullyConnectedNet
from xdl.solver import Solver

import common


def main(argv=None):
    p = common.parser(__doc__, epochs=15, batch_size=200, lr=1e-3, update_rule="adam",
                      print_every=200)
    p.add_argument("--hidden-dims", type=common.positive_int, nargs="+",
                   default=[512, 256, 256, 128], help="Units in each hidden layer.")
    p.add_argument("--normalization", choices=["none", "batchnorm", "layernorm"],
                   default="batchnorm", help="The normalization after each hidden affine layer.")
    p.add_argument("--dropout-keep", type=common.keep_ratio, default=0.85,
                   help="The probability of keeping each hidden unit in dropout (1 disables "
                        "dropout).")
    p.add_argument("--weight-scale", type=common.positive_float, default=2e-2,
                   help="The standard deviation of the initial weights.")
    p.add_argument("--reg", type=common.nonneg_float, default=1e-3,
                   help="The L2 regularization strength.")
    p.add_argument("--lr-decay", type=common.positive_float, default=0.9,
                   help="The learning rate is multiplied by this after every epoch.")
    args = common.parse(p, argv)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = FullyConnectedNet(args.hidden_dims, weight_scale=args.weight_scale, reg=args.reg,
                              dropout_keep_ratio=args.dropout_keep,
                              normalization=None if args.normalization == "none"
                              else args.normalization,
                              dtype=np.dtype(args.dtype).type)
    solver = Solver(model, data, update_rule=args.update_rule,
                    optim_config={"learning_rate": args.lr}, lr_decay=args.lr_decay,
                    num_epochs=args.epochs, batch_size=args.batch_size,
                    print_every=args.print_every)
    common.train(solver)
    common.report_accuracy(solver, data, train_samples=1000)
    common.plot_history(solver, os.path.join(args.out_dir, "fc_net_history.png"),
                        "FullyConnectedNet")
    model.save(os.path.join(args.out_dir, "fc_net.npz"))


if __name__ == "__main__":
    main()
