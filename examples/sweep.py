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
import os
import sys

from xdl import sweep
from xdl.backends import BackendError

import common

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
    p = common.ArgumentParser(
        __doc__.splitlines()[0],
        epilog="presets:\n" + "\n".join("  %-10s %s" % (k, v["help"])
                                          for k, v in PRESETS.items()))
    p.add_argument("--preset", choices=sorted(PRESETS), default="two_layer",
                   help="Which notebook's search to run.")
    p.add_argument("--trials", type=common.positive_int, default=None,
                   help="Random search with this many trials (default: the preset's grid, "
                        "or 16 trials for fc and 8 for cnn).")
    p.add_argument("--epochs", type=common.positive_int, default=None,
                   help="Epochs per trial (default: the preset's: 10 for two_layer, 15 for "
                        "fc, 1 for cnn).")
    p.add_argument("--num-iters", type=common.positive_int, default=None,
                   help="Iterations per trial of the softmax preset (default: 2000).")
    p.add_argument("--batch-size", type=common.positive_int, default=None,
                   help="Images per training step (default: the preset's).")
    p.add_argument("--halving", type=common.nonneg_int, default=None, metavar="ETA",
                   help="Successive halving that keeps the best 1/ETA of the trials at each "
                        "rung; 0 turns it off (default: 3 for fc, off otherwise).")
    p.add_argument("--min-epochs", type=common.positive_int, default=1,
                   help="Epochs of the first rung of successive halving.")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Run on this Dask scheduler, e.g. tcp://host:8786 (default: an "
                        "embedded LocalCluster).")
    p.add_argument("--connect-timeout", type=common.positive_float, default=10,
                   help="Seconds to wait for --scheduler to answer.")
    p.add_argument("--workers", type=common.positive_int, default=None,
                   help="Worker processes of the embedded cluster (default: one per core).")
    p.add_argument("--gpus", action="store_true",
                   help="One worker per visible GPU (CUDA_VISIBLE_DEVICES), trials on the "
                        "cuda backend; the same as --device cuda.")
    p.add_argument("--trials-per-gpu", type=common.positive_int, default=1,
                   help="With --gpus: small trials that share one GPU at once.")
    p.add_argument("--resume", action="store_true",
                   help="Continue the journal in --out-dir: trials recorded ok or diverged "
                        "are skipped, failed ones run again.")
    p.add_argument("--plot", nargs=2, default=None, metavar=("X", "Y"),
                   help="The hyperparameters on the axes of the accuracy plot (default: "
                        "learning_rate reg).")
    p.add_argument("--top", type=common.positive_int, default=20,
                   help="Rows of the results table to print.")
    common.add_common_flags(p, out_dir=None)
    return p


def parse(p, argv):
    """Parse and check the flags before anything is loaded or started."""
    args = p.parse_args(argv)
    if not args.synthetic and args.num_train > 49000:
        p.error("argument --num-train: at most 49000 CIFAR-10 images are for training, "
                "got %d" % args.num_train)
    if args.data_dir is not None and not args.synthetic and not args.download \
            and not os.path.isdir(args.data_dir):
        p.error("argument --data-dir: %s is not a folder (add --download to download "
                "CIFAR-10 into it)" % args.data_dir)
    args.gpus = args.gpus or args.device == "cuda"
    args.out_dir = args.out_dir or os.path.join("outputs", "sweep_%s" % args.preset)
    common.check_writable(p, args.out_dir)
    return args


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


def main(argv=None):
    p = parser()
    args = parse(p, argv)
    preset = PRESETS[args.preset]
    settings = settings_from(args, preset, p)
    halving_eta = args.halving if args.halving is not None else preset.get("halving", 0)
    x, y = args.plot or preset["plot"]
    out_dir = args.out_dir

    try:
        points, kind = search_space(args, preset)
        source = sweep.DataSource(folder=args.data_dir, num_train=args.num_train,
                                  dtype=args.dtype, synthetic=args.synthetic, seed=args.seed)
        halving = sweep.SuccessiveHalving(eta=halving_eta, min_epochs=args.min_epochs) \
            if halving_eta else None
    except ValueError as exc:
        p.error(str(exc))
    if not args.synthetic:  # this process scores the best model on the test set
        common.cifar10_folder(args)
    print("%s preset: %s of %d points" % (args.preset, kind, len(points)))
    try:
        result = sweep.run_sweep(
            points, model=preset.get("model", "Softmax"), settings=settings, data=source,
            out_dir=out_dir, seed=args.seed, halving=halving, resume=args.resume,
            scheduler=args.scheduler, workers=args.workers, gpus=args.gpus,
            trials_per_gpu=args.trials_per_gpu, connect_timeout=args.connect_timeout)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, ConnectionError,
            BackendError, ImportError) as exc:
        common.fail(str(exc), 2)

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
