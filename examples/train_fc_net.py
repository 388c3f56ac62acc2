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
    p = common.parser(__doc__.splitlines()[0], epochs=15, batch_size=200, lr=1e-3)
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 256, 256, 128])
    p.add_argument("--normalization", choices=["none", "batchnorm", "layernorm"],
                   default="batchnorm")
    p.add_argument("--dropout-keep", type=float, default=0.85,
                   help="keep probability of dropout (1 disables it)")
    p.add_argument("--weight-scale", type=float, default=2e-2)
    p.add_argument("--reg", type=float, default=1e-3)
    p.add_argument("--lr-decay", type=float, default=0.9)
    p.set_defaults(print_every=200)
    args = p.parse_args(argv)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = FullyConnectedNet(args.hidden_dims, weight_scale=args.weight_scale, reg=args.reg,
                              dropout_keep_ratio=args.dropout_keep,
                              normalization=None if args.normalization == "none"
                              else args.normalization,
                              dtype=np.dtype(args.dtype).type)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": args.lr},
                    lr_decay=args.lr_decay, num_epochs=args.epochs, batch_size=args.batch_size,
                    print_every=args.print_every)
    common.timed_train(solver)
    common.report_accuracy(solver, data, train_samples=1000)
    os.makedirs(args.out_dir, exist_ok=True)
    common.plot_history(solver, os.path.join(args.out_dir, "fc_net_history.png"),
                        "FullyConnectedNet")
    model.save(os.path.join(args.out_dir, "fc_net.npz"))


if __name__ == "__main__":
    main()
