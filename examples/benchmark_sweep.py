"""Speed of xdl.sweep: a TwoLayerNet sweep on a Dask LocalCluster against the
same trials one after another in one process, measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python examples/benchmark_sweep.py

Prints, for each repeat and as medians: the sequential time (data loaded
once, then the trials as notebook 02's loop runs them, with all of this
process's cores for xdl's kernels), the sweep's time from starting the
cluster to the last result (each worker loads the data once and has its
share of the cores; the run_sweep call with its embedded LocalCluster), the
speedup, and the engine's overhead per trial: the worker time not spent
loading data or training, i.e. cluster start and stop, scheduling, moving
results, checkpoints, the journal and idle workers at the end, divided by
the number of trials. "cluster start" is timed on its own, separately. "the
trial times allow" is workers x (mean sequential trial / mean sweep trial):
the speedup a perfect engine would reach with the trials as slow or fast as
they ran (one kernel thread next to a busy neighbour vs. all the cores).
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time

from xdl import backends, sweep
from xdl.sweep.cluster import usable_cpus


def sequential(trials, source):
    start = time.time()
    sweep.load(source)
    load_s = time.time() - start
    walls = []
    for trial in trials:
        record = sweep.run_trial(trial)
        assert record["status"] == "ok", record["error"]
        walls.append(record["wall_s"])
    return {"load_s": load_s, "total_s": time.time() - start, "trial_s": walls}


def cluster_start(workers):
    """Seconds to start and stop the embedded cluster alone."""
    start = time.time()
    with sweep.Engine(workers=workers) as engine:
        engine.client.wait_for_workers(workers)
        started = time.time() - start
    return started


def on_cluster(points, settings, source, workers):
    out_dir = tempfile.mkdtemp(prefix="xdl-sweep-bench-")
    try:
        start = time.time()
        result = sweep.run_sweep(points, settings=settings, data=source, out_dir=out_dir,
                                 workers=workers, verbose=False)
        total_s = time.time() - start
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    bad = [r for r in result.records if r["status"] != "ok"]
    assert not bad, bad[0]["error"]
    return {"total_s": total_s, "trial_s": [r["wall_s"] for r in result.records],
            "load_s": sum(r["load_s"] for r in result.records),
            "workers_used": len({r["worker"] for r in result.records})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--num-train", type=int, default=49000)
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument("--repeat", type=int, default=2, help="runs of both sides; medians printed")
    p.add_argument("--one-thread-baseline", action="store_true",
                   help="also run the trials one after another with one kernel thread (each "
                        "sweep worker's share), the baseline that shows the engine's own "
                        "scaling apart from how well one trial uses two cores")
    args = p.parse_args(argv)

    points = sweep.grid({"learning_rate": [7e-4, 1e-3, 1.5e-3, 2e-3],
                         "reg": [0.0, 0.1, 0.25, 0.5]})
    settings = {"hidden_dim": 100, "update_rule": "sgd", "lr_decay": 0.95,
                "num_epochs": args.epochs, "batch_size": 100}
    source = sweep.DataSource(num_train=args.num_train, synthetic=args.synthetic)
    source.check_available()
    trials = sweep.build_trials(points, settings=settings, data=source)
    cpus = usable_cpus()
    threads = max(1, cpus // args.workers)
    print("%d TwoLayerNet trials (hidden 100, SGD, %d epochs on %d %s images); %d CPUs; "
          "load average %.2f" % (len(trials), args.epochs, args.num_train,
                                 "random" if args.synthetic else "CIFAR-10", cpus,
                                 os.getloadavg()[0]))
    rows = []
    for rep in range(args.repeat):
        seq = sequential(trials, source)
        sweep.data.clear_cache()  # the workers load the data themselves
        start_s = cluster_start(args.workers)
        par = on_cluster(points, settings, source, args.workers)
        busy = sum(par["trial_s"]) + par["load_s"]
        overhead = (args.workers * par["total_s"] - busy) / len(trials)
        row = {"seq_s": seq["total_s"], "seq_trial_s": statistics.mean(seq["trial_s"]),
               "par_s": par["total_s"], "par_trial_s": statistics.mean(par["trial_s"]),
               "start_s": start_s, "speedup": seq["total_s"] / par["total_s"],
               "overhead_s": overhead, "load_avg": os.getloadavg()[0]}
        # What the trials' own times allow: workers x (sequential trial / sweep
        # trial); the engine's efficiency is the measured speedup over that.
        row["allowed"] = args.workers * row["seq_trial_s"] / row["par_trial_s"]
        row["efficiency"] = row["speedup"] / row["allowed"]
        if args.one_thread_baseline:
            kept = backends.get_num_threads()
            backends.set_num_threads(threads)
            try:
                one = sequential(trials, source)
            finally:
                backends.set_num_threads(kept)
            row["seq1_s"] = one["total_s"]
            row["speedup1"] = one["total_s"] / par["total_s"]
            print("run %d: one after another with %d kernel thread%s: %.1f s (mean trial "
                  "%.2f s); the sweep is %.2fx faster" % (
                      rep + 1, threads, "" if threads == 1 else "s", one["total_s"],
                      statistics.mean(one["trial_s"]), row["speedup1"]))
        rows.append(row)
        print("run %d: sequential %.1f s (data %.1f s, mean trial %.2f s with %d kernel "
              "threads) | sweep on %d workers %.1f s (cluster start %.1f s, mean trial %.2f s "
              "with %d kernel thread%s, %d workers used) | speedup %.2fx | engine overhead "
              "%.2f s per trial | the trial times allow %.2fx, efficiency %.0f%% | load "
              "average %.2f"
              % (rep + 1, seq["total_s"], seq["load_s"], row["seq_trial_s"],
                 backends.get_num_threads(), args.workers, par["total_s"], start_s,
                 row["par_trial_s"], threads, "" if threads == 1 else "s",
                 par["workers_used"], row["speedup"], overhead, row["allowed"],
                 100 * row["efficiency"], row["load_avg"]))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    if args.one_thread_baseline:
        print("median of %d: the sweep against the trials one after another on %d kernel "
              "thread%s: %.2fx" % (len(rows), threads, "" if threads == 1 else "s",
                                   med["speedup1"]))
    print("median of %d: sequential %.1f s, sweep %.1f s, speedup %.2fx (the trial times "
          "allow %.2fx, efficiency %.0f%%); engine overhead %.2f s per trial = %.1f%% of a "
          "10 s trial (%.1f%% of this run's mean sweep trial, %.2f s)"
          % (len(rows), med["seq_s"], med["par_s"], med["speedup"], med["allowed"],
             100 * med["efficiency"], med["overhead_s"], 100 * med["overhead_s"] / 10.0,
             100 * med["overhead_s"] / med["par_trial_s"], med["par_trial_s"]))
    return rows


if __name__ == "__main__":
    main()
