"""Hyperparameter sweeps on Dask: the notebooks' tuning loops, run in parallel.

    python examples/sweep.py --preset softmax         # notebook 01: lr x reg, Softmax, LinearSVM
    python examples/sweep.py --preset two_layer       # notebook 02: hidden x lr x reg
    python examples/sweep.py --preset fc --trials 16  # notebook 03's best model, halving
    python examples/sweep.py --preset cnn --scheduler tcp://host:8786
    python examples/sweep.py --preset two_layer --gpus --trials-per-gpu 4

By default the trials run on an embedded Dask LocalCluster with one worker
process per core. --scheduler ADDRESS runs them on a running cluster (start
one with `dask scheduler` and `dask worker tcp://host:8786 --nthreads 1` on
each machine; --out-dir must then be on a file system all of them share).
Each finished trial is appended to OUT_DIR/journal.jsonl; --resume continues
an interrupted sweep. At the end: the table of results (also in
results.txt), notebook 01's accuracy plot over two hyperparameters, and the
best model restored from its checkpoint, saved and scored on the test set.
"""
import argparse
import os
import sys

from xdl import data_utils, sweep
from xdl.backends import BackendError

# The notebooks' searches. "grid" reproduces a notebook's nested loops (used
# unless --trials asks for random search); "random" is the random-search space.
PRESETS = {
    "softmax": {
        "help": "notebook 01: learning rate x regularization for Softmax and LinearSVM",
        "grid": {"model": ["Softmax", "LinearSVM"], "learning_rate": [2e-7, 2.5e-7, 3e-7],
                 "reg": [7.5e3, 8e3, 8.5e3]},
        "random": {"model": sweep.choice(["Softmax", "LinearSVM"]),
                   "learning_rate": sweep.loguniform(5e-8, 1e-6),
                   "reg": sweep.loguniform(1e3, 5e4)},
        "settings": {"num_iters": 2000, "batch_size": 300},
        "plot": ("learning_rate", "reg"),
    },
    "two_layer": {
        "help": "notebook 02: TwoLayerNet hidden size x learning rate x regularization",
        "model": "TwoLayerNet",
        "grid": {"hidden_dim": [50, 100], "learning_rate": [7e-4, 1e-3, 1.5e-3],
                 "reg": [0.0, 0.25, 0.5]},
        "random": {"hidden_dim": sweep.choice([50, 100, 200]),
                   "learning_rate": sweep.loguniform(3e-4, 3e-3),
                   "reg": sweep.loguniform(1e-3, 1.0)},
        "settings": {"update_rule": "sgd", "lr_decay": 0.95, "num_epochs": 10,
                     "batch_size": 100},
        "plot": ("learning_rate", "reg"),
    },
    "fc": {
        "help": "notebook 03's best model: a 5-layer FullyConnectedNet with batchnorm, "
                "dropout and Adam",
        "model": "FullyConnectedNet",
        "random": {"learning_rate": sweep.loguniform(1e-4, 3e-3),
                   "weight_scale": sweep.loguniform(1e-2, 5e-2),
                   "reg": sweep.loguniform(1e-4, 1e-2),
                   "dropout_keep_ratio": sweep.uniform(0.7, 1.0)},
        "settings": {"hidden_dims": [512, 256, 256, 128], "normalization": "batchnorm",
                     "update_rule": "adam", "lr_decay": 0.9, "num_epochs": 15,
                     "batch_size": 200},
        "trials": 16, "halving": 3,
        "plot": ("learning_rate", "reg"),
    },
    "cnn": {
        "help": "notebook 06: ThreeLayerConvNet, Adam, batch 50",
        "model": "ThreeLayerConvNet",
        "random": {"learning_rate": sweep.loguniform(3e-4, 3e-3),
                   "weight_scale": sweep.loguniform(1e-3, 1e-2),
                   "reg": sweep.loguniform(1e-4, 1e-2)},
        "settings": {"num_filters": 32, "filter_size": 7, "hidden_dim": 100,
                     "update_rule": "adam", "num_epochs": 1, "batch_size": 50},
        "trials": 8,
        "plot": ("learning_rate", "reg"),
    },
}


def parser():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="presets:\n" + "\n".join("  %-10s %s" % (k, v["help"])
                                          for k, v in PRESETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="two_layer",
                   help="which notebook's search to run (default: %(default)s)")
    p.add_argument("--trials", type=int, default=None,
                   help="random search with this many trials (default: the preset's grid, "
                        "or 16 trials for fc and 8 for cnn)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per trial (default: the preset's: 10 for two_layer, 15 for fc, 1 "
                        "for cnn)")
    p.add_argument("--num-iters", type=int, default=None,
                   help="iterations per trial of the softmax preset (default 2000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="minibatch size (default: the preset's)")
    p.add_argument("--halving", type=int, default=None, metavar="ETA",
                   help="successive halving keeping the best 1/ETA each rung (0: off; "
                        "default: 3 for fc, off otherwise)")
    p.add_argument("--min-epochs", type=int, default=1,
                   help="epochs of the first rung of successive halving (default: %(default)s)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask scheduler, e.g. tcp://host:8786 (default: an "
                        "embedded LocalCluster)")
    p.add_argument("--connect-timeout", type=float, default=10,
                   help="seconds to wait for --scheduler to answer (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the embedded cluster (default: one per core)")
    p.add_argument("--gpus", action="store_true",
                   help="one worker per visible GPU (CUDA_VISIBLE_DEVICES), trials on the "
                        "cuda backend")
    p.add_argument("--trials-per-gpu", type=int, default=1,
                   help="with --gpus: small trials that share one GPU at once "
                        "(default: %(default)s)")
    p.add_argument("--out-dir", default=None,
                   help="journal, checkpoints, table, plot and best model (default: "
                        "outputs/sweep_PRESET)")
    p.add_argument("--resume", action="store_true",
                   help="continue the journal in --out-dir: trials recorded ok or diverged are "
                        "skipped, failed ones run again")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="dtype of the data and the models (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-batches-py (default: $XDL_DATA_DIR or "
                        "~/.cache/xdl); the workers read it there")
    p.add_argument("--num-train", type=int, default=49000,
                   help="training images to use (default: %(default)s)")
    p.add_argument("--synthetic", action="store_true",
                   help="random images instead of CIFAR-10 (a smoke test; accuracy ~0.1)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of each trial's weights and minibatches, and of random search "
                        "(default: %(default)s)")
    p.add_argument("--plot", nargs=2, default=None, metavar=("X", "Y"),
                   help="hyperparameters on the axes of the accuracy plot (default: "
                        "learning_rate reg)")
    p.add_argument("--top", type=int, default=20,
                   help="rows of the table to print (default: %(default)s)")
    return p


def settings_from(args, preset, p):
    settings = dict(preset["settings"])
    if args.preset == "softmax":
        if args.epochs is not None:
            p.error("the softmax preset trains for --num-iters iterations, not epochs")
        if args.num_iters is not None:
            settings["num_iters"] = args.num_iters
    else:
        if args.num_iters is not None:
            p.error("--num-iters is for the softmax preset; use --epochs")
        if args.epochs is not None:
            settings["num_epochs"] = args.epochs
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    if args.dtype != "float32" and args.preset != "softmax":
        settings["dtype"] = args.dtype
    return settings


def search_space(args, preset):
    trials = args.trials if args.trials is not None else preset.get("trials")
    if trials is None:
        return sweep.grid(preset["grid"]), "grid"
    return sweep.random_search(preset["random"], trials, seed=args.seed), "random search"


def ensure_data(args, source):
    """CIFAR-10 for the driver (test score) and an embedded cluster's workers."""
    if args.synthetic:
        return
    folder = data_utils.cifar10_folder(args.data_dir)
    if data_utils.is_complete(folder):
        return
    if args.data_dir is not None or args.scheduler is not None:
        raise FileNotFoundError("CIFAR-10 is not in %s; python -m xdl.data_utils download "
                                "puts it in the default folder" % folder)
    print("CIFAR-10 is not in %s: downloading it (163 MB)." % folder)
    data_utils.download_cifar10(os.path.dirname(folder))


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for name in ("trials", "workers", "trials_per_gpu", "num_train", "top"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error("--%s must be >= 1, got %d" % (name.replace("_", "-"), value))
    settings = settings_from(args, preset, p)
    halving_eta = args.halving if args.halving is not None else preset.get("halving", 0)
    out_dir = args.out_dir or os.path.join("outputs", "sweep_%s" % args.preset)
    x, y = args.plot or preset["plot"]

    try:
        points, kind = search_space(args, preset)
        source = sweep.DataSource(folder=args.data_dir, num_train=args.num_train,
                                  dtype=args.dtype, synthetic=args.synthetic, seed=args.seed)
        halving = sweep.SuccessiveHalving(eta=halving_eta, min_epochs=args.min_epochs) \
            if halving_eta else None
        ensure_data(args, source)
        print("%s preset: %s of %d points" % (args.preset, kind, len(points)))
        result = sweep.run_sweep(
            points, model=preset.get("model", "Softmax"), settings=settings, data=source,
            out_dir=out_dir, seed=args.seed, halving=halving, resume=args.resume,
            scheduler=args.scheduler, workers=args.workers, gpus=args.gpus,
            trials_per_gpu=args.trials_per_gpu, connect_timeout=args.connect_timeout)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, ConnectionError,
            BackendError, ImportError) as exc:
        print("%s: error: %s" % (os.path.basename(sys.argv[0]), exc), file=sys.stderr)
        return 2

    counts = ", ".join("%d %s" % (n, s) for s, n in sorted(result.counts().items()))
    print("\n%d trials (%s), best first:" % (len(result.records), counts))
    table = result.table()
    print("\n".join(table.splitlines()[:args.top + 1]))
    with open(os.path.join(out_dir, "results.txt"), "w") as f:
        f.write(table + "\n")
    try:
        print("saved", result.plot(os.path.join(out_dir, "sweep_accuracy.png"), x, y))
    except ValueError as exc:
        print("no plot:", exc)

    best = result.best
    if best is None:
        print("no trial finished ok: no best model")
        return 1
    model = result.best_model()
    path = os.path.join(out_dir, "best_model.npz")
    model.save(path)
    print("best: %s %s, validation accuracy %.4f" % (best["model"],
                                                      sweep.results.format_values(
                                                          best["hyperparameters"]),
                                                      best["val_acc"]))
    print("Test set accuracy of the best model: %.4f" % result.score(model, best, "test"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
