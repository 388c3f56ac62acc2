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
from xdl.vis_utils import visualize_grid

import common


def save_weights(model, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    W1 = xdl.asnumpy(model.params["W1"]).reshape(3, 32, 32, -1).transpose(3, 1, 2, 0)
    plt.figure(figsize=(8, 8))
    plt.imshow(visualize_grid(W1, padding=3).astype("uint8"))
    plt.axis("off")
    plt.savefig(path, dpi=80)
    plt.close()
    print("saved", path)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], epochs=10, batch_size=100, lr=1.5e-3)
    p.add_argument("--hidden-dim", type=int, default=100)
    p.add_argument("--reg", type=float, default=0.5)
    p.add_argument("--lr-decay", type=float, default=0.95)
    p.set_defaults(print_every=500)
    args = p.parse_args(argv)

    print("backend:", common.describe_backend())
    np.random.seed(args.seed)
    data = common.load_data(args)
    model = TwoLayerNet(hidden_dim=args.hidden_dim, reg=args.reg,
                        dtype=np.dtype(args.dtype).type)
    solver = Solver(model, data, update_rule="sgd", optim_config={"learning_rate": args.lr},
                    lr_decay=args.lr_decay, num_epochs=args.epochs, batch_size=args.batch_size,
                    print_every=args.print_every)
    common.timed_train(solver)
    common.report_accuracy(solver, data, train_samples=1000)
    os.makedirs(args.out_dir, exist_ok=True)
    common.plot_history(solver, os.path.join(args.out_dir, "two_layer_net_history.png"),
                        "TwoLayerNet")
    save_weights(model, os.path.join(args.out_dir, "two_layer_net_weights.png"))
    model.save(os.path.join(args.out_dir, "two_layer_net.npz"))


if __name__ == "__main__":
    main()
