"""Train TwoLayerNet on CIFAR-10 with the Solver, as notebook 02 does.

    python examples/train_two_layer_net.py

The defaults are the notebook's best setting (hidden 100, SGD 1.5e-3,
reg 0.5, lr decay 0.95, batch 100, 10 epochs). Prints the Solver's lines and
the validation and test accuracy, and saves the loss/accuracy plot, the
first-layer weights as images and the model under --out-dir.
"""
import os

import numpy as np

import xdl
from xdl.classifiers.fc_net import TwoLayerNet
from xdl.solver import Solver

import common


def main(argv=None):
    p = common.parser(__doc__, epochs=10, batch_size=100, lr=1.5e-3, update_rule="sgd",
                      print_every=500)
    p.add_argument("--hidden-dim", type=common.positive_int, default=100,
                   help="Units in the hidden layer.")
    p.add_argument("--reg", type=common.nonneg_float, default=0.5,
                   help="The L2 regularization strength.")
    p.add_argument("--lr-decay", type=common.positive_float, default=0.95,
                   help="The learning rate is multiplied by this after every epoch.")
    args = common.parse(p, argv)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = TwoLayerNet(hidden_dim=args.hidden_dim, reg=args.reg,
                        dtype=np.dtype(args.dtype).type)
    solver = Solver(model, data, update_rule=args.update_rule,
                    optim_config={"learning_rate": args.lr}, lr_decay=args.lr_decay,
                    num_epochs=args.epochs, batch_size=args.batch_size,
                    print_every=args.print_every)
    common.train(solver)
    common.report_accuracy(solver, data, train_samples=1000)
    common.plot_history(solver, os.path.join(args.out_dir, "two_layer_net_history.png"),
                        "TwoLayerNet")
    W1 = xdl.asnumpy(model.params["W1"]).reshape(3, 32, 32, -1).transpose(3, 1, 2, 0)
    common.plot_grid(W1, os.path.join(args.out_dir, "two_layer_net_weights.png"),
                     "TwoLayerNet: first-layer weights of the %d hidden units" % args.hidden_dim)
    model.save(os.path.join(args.out_dir, "two_layer_net.npz"))


if __name__ == "__main__":
    main()
