"""Shared pieces of the example scripts: command-line flags, data loading
(downloading CIFAR-10 when it is missing), plots and the final report."""
import argparse
import os
import time

import numpy as np

import xdl
from xdl import data_utils


def parser(description, epochs, batch_size, lr):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="learning rate")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-batches-py (default: $XDL_DATA_DIR or "
                        "~/.cache/xdl); downloaded there when missing")
    p.add_argument("--num-train", type=int, default=49000, help="training images to use")
    p.add_argument("--synthetic", action="store_true",
                   help="random images instead of CIFAR-10 (a smoke test; accuracy ~0.1)")
    p.add_argument("--seed", type=int, default=0, help="NumPy seed for init and minibatches")
    p.add_argument("--print-every", type=int, default=100)
    p.add_argument("--out-dir", default="outputs", help="where plots and the model go")
    return p


def load_data(args):
    """CIFAR-10 as the notebooks preprocess it (or random data with --synthetic)."""
    dtype = np.dtype(args.dtype)
    if args.synthetic:
        rng = np.random.RandomState(args.seed)
        n = args.num_train
        return {
            "X_train": rng.randn(n, 3, 32, 32).astype(dtype), "y_train": rng.randint(10, size=n),
            "X_val": rng.randn(1000, 3, 32, 32).astype(dtype), "y_val": rng.randint(10, size=1000),
            "X_test": rng.randn(1000, 3, 32, 32).astype(dtype),
            "y_test": rng.randint(10, size=1000),
        }
    folder = data_utils.cifar10_folder(args.data_dir)
    if not data_utils.is_complete(folder):
        print("CIFAR-10 is not in %s: downloading it (163 MB)." % folder)
        data_utils.download_cifar10(os.path.dirname(folder))
    data = data_utils.get_CIFAR10_data(num_training=args.num_train, cifar10_dir=folder,
                                       dtype=dtype)
    for k, v in data.items():
        print("%s: %s" % (k, v.shape))
    return data


def describe_backend():
    name = xdl.get_backend()
    if name == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return "cuda (%s)" % props["name"].decode()
    return "numpy (CPU)"


def timed_train(solver):
    start = time.time()
    solver.train()
    seconds = time.time() - start
    print("training took %.1f s" % seconds)
    return seconds


def plot_history(solver, path, title):
    """Loss per iteration, train/val accuracy per epoch: one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    ax1.plot(solver.loss_history, "o", markersize=2)
    ax1.set_title("%s: training loss" % title)
    ax1.set_xlabel("Iteration")
    ax2.plot(solver.train_acc_history, "-o", label="train")
    ax2.plot(solver.val_acc_history, "-o", label="val")
    ax2.set_title("Accuracy")
    ax2.set_xlabel("Epoch (0 = after the first iteration)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print("saved", path)


def report_accuracy(solver, data, train_samples=None):
    """Print train (optionally subsampled), validation and test accuracy; return them."""
    acc = {
        "train": solver.check_accuracy(data["X_train"], data["y_train"],
                                       num_samples=train_samples),
        "val": solver.check_accuracy(data["X_val"], data["y_val"]),
        "test": solver.check_accuracy(data["X_test"], data["y_test"]),
    }
    print("Full data training accuracy:" if train_samples is None else
          "Training accuracy (%d samples):" % train_samples, acc["train"])
    print("Validation set accuracy:", acc["val"])
    print("Test set accuracy:", acc["test"])
    return acc
