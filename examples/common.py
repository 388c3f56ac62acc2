"""Shared pieces of the example scripts: command-line flags and their checks,
data loading (downloading CIFAR-10 into the default folder when it is
missing), the training run, plots and the final report.

User errors (a bad flag, data that is not there, a failed download, a run
stopped on a NaN loss) end the script with one line on stderr and a non-zero
exit status (2 for flags, 1 otherwise), never a traceback. Errors inside the
library stay exceptions.
"""
import argparse
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np

import xdl
from xdl import data_utils, optim, vis_utils
from xdl.solver import TrainingStopped


# --------------------------------------------------------------------- flags

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help keeps the script's docstring as written and shows every default
    (flags without a value, and those whose help says it, show none)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.nargs == 0:
            return action.help
        if isinstance(action.default, list):  # as it is typed: --hidden-dims 512 256
            return "%s (default: %s)" % (action.help, " ".join(str(v) for v in action.default))
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def __init__(self, description, **kwargs):
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, "%s: error: %s (see --help)\n" % (self.prog, message))


def fail(message, status=1):
    """End the script with one line on stderr."""
    sys.stdout.flush()
    sys.stderr.write("%s: error: %s\n" % (os.path.basename(sys.argv[0]) or "xdl", message))
    sys.exit(status)


def _number(text, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not %s" % (
            text, "an integer" if kind is int else "a number")) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number, got %r" % text)
    return value


def positive_int(text):
    """argparse type: an integer > 0."""
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be an integer > 0, got %r" % text)
    return value


def nonneg_int(text):
    """argparse type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError("must be an integer >= 0, got %r" % text)
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number > 0, got %r" % text)
    return value


def nonneg_float(text):
    """argparse type: a finite number >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a finite number >= 0, got %r" % text)
    return value


def keep_ratio(text):
    """argparse type: a dropout keep probability in (0, 1]."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("must be a probability in (0, 1], got %r" % text)
    return value


def seed(text):
    """argparse type: a NumPy seed, 0 <= seed < 2**32."""
    value = _number(text, int)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError("must be an integer in [0, 2**32), got %r" % text)
    return value


def default_device():
    """cuda when XDL_BACKEND says so, else cpu (the --device default)."""
    return "cuda" if os.environ.get("XDL_BACKEND", "").strip().lower() == "cuda" else "cpu"


def add_common_flags(p, num_train=49000, out_dir="outputs", print_every=None):
    """--device, --dtype, the data flags, --seed, --print-every and --out-dir."""
    p.add_argument("--device", choices=["cpu", "cuda"], default=default_device(),
                   help="Where to train: cpu (NumPy) or cuda (CuPy on an NVIDIA GPU); the "
                        "default follows XDL_BACKEND.")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="The floating-point type of the model and the data.")
    p.add_argument("--data-dir", default=None,
                   help="The folder holding cifar-10-batches-py/ (or that folder itself). "
                        "The default is $XDL_DATA_DIR, else ~/.cache/xdl, where a missing "
                        "copy is downloaded.")
    p.add_argument("--download", action="store_true",
                   help="Download CIFAR-10 (163 MB) into --data-dir or $XDL_DATA_DIR when it "
                        "is not there; without this flag only ~/.cache/xdl is filled "
                        "automatically.")
    p.add_argument("--num-train", type=positive_int, default=num_train,
                   help="How many training images to use (at most 49000; the 1000 after "
                        "them are the validation set).")
    p.add_argument("--synthetic", action="store_true",
                   help="Train on random images instead of CIFAR-10: a smoke test, accuracy "
                        "about 0.1.")
    p.add_argument("--seed", type=seed, default=0,
                   help="The NumPy seed for the initial weights and the minibatches.")
    if print_every is not None:
        p.add_argument("--print-every", type=nonneg_int, default=print_every,
                       help="Print the loss every this many iterations (0: never).")
    p.add_argument("--out-dir", default=out_dir,
                   help="The folder for the plots and the saved model.")


def parser(description, epochs, batch_size, lr, update_rule, print_every):
    """The flags every training example takes."""
    p = ArgumentParser(description)
    p.add_argument("--epochs", type=positive_int, default=epochs,
                   help="How many passes over the training images to make.")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="Images per training step.")
    p.add_argument("--lr", type=positive_float, default=lr, help="The learning rate.")
    p.add_argument("--update-rule", default=update_rule,
                   help="The update rule from xdl.optim: sgd, sgd_momentum, rmsprop or adam.")
    add_common_flags(p, print_every=print_every)
    return p


def parse(p, argv=None):
    """
    Parse and check every flag before anything is loaded: argparse checks
    each value, this checks how they combine, that --out-dir can be written
    and that the device is usable, and makes it the xdl backend.
    """
    args = p.parse_args(argv)
    if not args.synthetic and args.num_train > 49000:
        p.error("argument --num-train: at most 49000 CIFAR-10 images are for training, "
                "got %d" % args.num_train)
    if getattr(args, "update_rule", None) is not None:
        try:
            optim.get_update_rule(args.update_rule)
        except ValueError as exc:
            p.error("argument --update-rule: %s" % str(exc).split(", or pass a function")[0])
    check_writable(p, args.out_dir)
    if args.data_dir is not None and not args.synthetic and not args.download \
            and not os.path.isdir(args.data_dir):
        p.error("argument --data-dir: %s is not a folder (add --download to download "
                "CIFAR-10 into it)" % args.data_dir)
    try:
        xdl.set_backend("cuda" if args.device == "cuda" else "numpy")
    except xdl.BackendError as exc:
        p.error("argument --device: %s" % exc)
    # The Solver prints the reason itself; finish_training() exits on it.
    warnings.simplefilter("ignore", TrainingStopped)
    return args


def check_writable(p, folder):
    """Create `folder` if needed and make sure files can be written in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        p.error("argument --out-dir: cannot write to %s (%s)" % (folder, exc.strerror or exc))


# ---------------------------------------------------------------------- data

def synthetic_data(num_train, dtype, seed, num_val=1000, num_test=1000):
    rng = np.random.RandomState(seed)

    def images(n):
        return rng.randn(n, 3, 32, 32).astype(dtype), rng.randint(10, size=n)
    data = {}
    for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
        data["X_" + split], data["y_" + split] = images(n)
    return data


def cifar10_folder(args):
    """
    The CIFAR-10 folder for these flags, downloaded first when it is missing
    and either it is the default ~/.cache/xdl or --download was given (so a
    mistyped --data-dir never starts a 163 MB download).
    """
    folder = data_utils.cifar10_folder(args.data_dir)
    if data_utils.is_complete(folder):
        return folder
    explicit = args.data_dir is not None or bool(os.environ.get("XDL_DATA_DIR"))
    if explicit and not args.download:
        where = "--data-dir" if args.data_dir is not None else "XDL_DATA_DIR"
        fail("CIFAR-10 is not in %s (from %s); give the folder holding cifar-10-batches-py/, "
             "or add --download to download it there (163 MB)" % (folder, where), 2)
    print("CIFAR-10 is not in %s: downloading it (163 MB)." % folder, flush=True)
    try:
        data_utils.download_cifar10(os.path.dirname(folder))
    except (ConnectionError, ValueError) as exc:
        fail(str(exc))
    return folder


def load_data(args, num_validation=1000, num_training=None):
    """
    CIFAR-10 as the notebooks preprocess it (or random data with --synthetic):
    num_training (default --num-train) training images, the num_validation
    after them for validation, 1000 test images.
    """
    dtype = np.dtype(args.dtype)
    num_training = args.num_train if num_training is None else num_training
    if args.synthetic:
        return synthetic_data(num_training, dtype, args.seed, num_val=num_validation)
    folder = cifar10_folder(args)
    print("Loading CIFAR-10 from %s ..." % folder, flush=True)
    start = time.perf_counter()
    try:
        data = data_utils.get_CIFAR10_data(num_training=num_training,
                                           num_validation=num_validation, cifar10_dir=folder,
                                           dtype=dtype)
    except data_utils.CIFAR10Error as exc:
        fail(str(exc))
    print("Loaded in %.1f s:" % (time.perf_counter() - start),
          ", ".join("%s %s" % (k, v.shape) for k, v in data.items()))
    return data


# ------------------------------------------------------------------ training

def describe_backend():
    name = xdl.get_backend()
    if name == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return "cuda (%s)" % props["name"].decode()
    return "numpy (CPU)"


def train(solver):
    """
    Train, print how long it took (training steps apart from accuracy checks)
    and end the script with status 1 if the Solver stopped on a NaN loss.
    Returns the milliseconds per training step.
    """
    start = time.perf_counter()
    # A diverging run overflows; the Solver stops it and says why, so numpy's
    # floating-point warnings would only repeat that.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solver.train()
    seconds = time.perf_counter() - start
    if solver.stopped is not None:
        it, value = solver.stopped
        fail("training stopped at iteration %d: the loss became %r (lower --lr or the weight "
             "scale); nothing was saved" % (it + 1, value))
    ms = 1000 * solver.step_time / max(solver.steps_taken, 1)
    print("Training took %.1f s: %d steps at %.2f ms per step, and %.1f s outside the steps "
          "(accuracy checks, checkpoints)" % (seconds, solver.steps_taken, ms,
                                               seconds - solver.step_time))
    return ms


def report_accuracy(solver, data, train_samples=None):
    """Print train (optionally subsampled), validation and test accuracy; return them."""
    if train_samples is None:
        print("Checking the accuracy on all %d training images ..." % data["X_train"].shape[0],
              flush=True)
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


# --------------------------------------------------------------------- plots

def save_figure(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt
    plt.close(fig)
    print("saved", path)


def plot_history(solver, path, title):
    """Loss per iteration (raw and smoothed), train/val accuracy per epoch: one PNG."""
    save_figure(vis_utils.plot_solver_history(solver, title), path)


def plot_grid(images, path, title):
    """Images (N, H, W, C) tiled into one titled grid: one PNG."""
    save_figure(vis_utils.plot_grid(images, title), path)
