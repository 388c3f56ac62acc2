"""xdl.sweep: search spaces, trials, the journal, and sweeps on a real Dask
LocalCluster of 2 worker processes with small synthetic data, including the
faults: a worker killed mid-trial, a trial that raises, a diverging trial,
the driver killed with SIGKILL and resumed, and bad input."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import xdl
from xdl import sweep
from xdl.backends import BackendError, get_num_threads, set_num_threads
from xdl.fast_layers import conv_forward_fast
from xdl.sweep import cluster as sweep_cluster
from xdl.sweep.journal import Journal, TornLineWarning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = sweep.DataSource(synthetic=True, num_train=300, num_val=100, num_test=100)
FAST = {"hidden_dim": 20, "num_epochs": 2, "batch_size": 50}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def journal_lines(out_dir):
    with open(os.path.join(out_dir, "journal.jsonl"), "rb") as f:
        return f.read().split(b"\n")


# -- CPU kernel threads ------------------------------------------------------------


def test_set_num_threads_changes_the_kernels_threads_not_their_results():
    before = get_num_threads()
    rng = np.random.RandomState(0)
    x, w, b = rng.randn(8, 3, 9, 9), rng.randn(4, 3, 3, 3), rng.randn(4)
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        one, _ = conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
        set_num_threads(2)
        assert get_num_threads() == 2
        two, _ = conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    finally:
        set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="integer n >= 1"):
            set_num_threads(bad)


# -- search spaces -----------------------------------------------------------------


def test_grid_is_the_notebooks_nested_loops():
    points = sweep.grid({"learning_rate": [1e-7, 5e-7], "reg": [2.5e4, 5e4, 1e5]})
    assert len(points) == 6
    assert points[0] == {"learning_rate": 1e-7, "reg": 2.5e4}
    assert points[1] == {"learning_rate": 1e-7, "reg": 5e4}
    assert points[3] == {"learning_rate": 5e-7, "reg": 2.5e4}
    assert sweep.grid({"hidden_dims": [[100, 100]], "reg": [np.float64(0.5)]}) == \
        [{"hidden_dims": [100, 100], "reg": 0.5}]


def test_random_search_is_seeded_and_in_range():
    space = {"learning_rate": sweep.loguniform(1e-5, 1e-2), "keep": sweep.uniform(0.5, 1.0),
             "hidden_dim": sweep.choice([50, 100]), "update_rule": "adam"}
    a = sweep.random_search(space, 200, seed=3)
    assert a == sweep.random_search(space, 200, seed=3)
    assert a != sweep.random_search(space, 200, seed=4)
    lr = np.array([p["learning_rate"] for p in a])
    assert lr.min() >= 1e-5 and lr.max() < 1e-2
    # log-uniform: about half the draws below the geometric midpoint
    assert 0.35 < np.mean(lr < np.sqrt(1e-5 * 1e-2)) < 0.65
    assert all(0.5 <= p["keep"] < 1.0 for p in a)
    assert {p["hidden_dim"] for p in a} == {50, 100}
    assert {p["update_rule"] for p in a} == {"adam"}
    assert all(type(p["learning_rate"]) is float for p in a)


@pytest.mark.parametrize("make, match", [
    (lambda: sweep.grid({}), "space is empty"),
    (lambda: sweep.grid({"reg": []}), "'reg' needs a non-empty list"),
    (lambda: sweep.grid({"reg": [float("nan")]}), "finite"),
    (lambda: sweep.loguniform(0, 1), "lo must be > 0"),
    (lambda: sweep.uniform(2, 1), "lo must be < hi"),
    (lambda: sweep.choice([]), "non-empty list"),
    (lambda: sweep.random_search({"lr": sweep.uniform(0, 1)}, 0), "num_trials"),
    (lambda: sweep.random_search({}, 3), "space is empty"),
])
def test_bad_spaces_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- trials ------------------------------------------------------------------------


def test_trial_settings_are_routed_and_hashed():
    (t,) = sweep.build_trials([{"learning_rate": 1e-3, "reg": 0.25, "lr_decay": 0.95}],
                              settings={"hidden_dim": 50, "update_rule": "sgd_momentum",
                                        "momentum": 0.8}, data=SMALL, seed=1)
    assert t.model_kwargs == {"hidden_dim": 50, "reg": 0.25}
    assert t.solver_kwargs == {"update_rule": "sgd_momentum", "lr_decay": 0.95,
                               "num_epochs": 10,
                               "optim_config": {"momentum": 0.8, "learning_rate": 1e-3}}
    assert t.hyperparameters == {"learning_rate": 1e-3, "reg": 0.25, "lr_decay": 0.95}
    (same,) = sweep.build_trials([{"reg": 0.25, "lr_decay": 0.95, "learning_rate": 1e-3}],
                                 settings={"momentum": 0.8, "update_rule": "sgd_momentum",
                                           "hidden_dim": 50}, data=SMALL, seed=1)
    assert same.id == t.id and len(t.id) == 16
    (other,) = sweep.build_trials([{"learning_rate": 1e-3, "reg": 0.25, "lr_decay": 0.95}],
                                  settings={"hidden_dim": 50, "update_rule": "sgd_momentum",
                                            "momentum": 0.8}, data=SMALL, seed=2)
    assert other.id != t.id
    longer = t.with_budget(20)
    assert longer.id != t.id and longer.base_id == t.base_id and longer.budget == 20
    record = sweep.trial.new_record(t)
    assert sweep.Trial.from_record(json.loads(json.dumps(record))).id == t.id
    # duplicates run once; linear models take train()'s arguments and rows
    trials = sweep.build_trials(
        [{"model": "Softmax", "learning_rate": 1e-7, "reg": 1e4}] * 2 +
        [{"model": "LinearSVM", "learning_rate": 1e-7, "reg": 1e4}], data=SMALL)
    assert len(trials) == 2
    assert trials[0].solver_kwargs == {"learning_rate": 1e-7, "reg": 1e4, "num_iters": 1500}
    assert trials[0].data.rows and trials[0].budget_name == "num_iters"


def test_run_trial_ok_diverged_failed_in_process():
    ok, diverged, failed = sweep.build_trials(
        [{"learning_rate": 1e-3}, {"learning_rate": 1e3}, {"input_dim": 10}],
        settings=FAST, data=SMALL)
    r = sweep.run_trial(ok)
    assert r["status"] == "ok" and r["error"] is None and r["epochs"] == 2
    assert r["iterations"] == 12 and len(r["loss_history"]) == 12
    assert r["val_acc"] == max(r["val_acc_history"]) and r["train_acc"] is not None
    assert r["wall_s"] > 0 and r["id"] == ok.id
    with pytest.warns(xdl.solver.TrainingStopped):
        r = sweep.run_trial(diverged)
    assert r["status"] == "diverged" and "the loss became" in r["error"]
    assert r["iterations"] < 12 and None in r["loss_history"]  # NaN stored as null
    r = sweep.run_trial(failed)
    assert r["status"] == "failed" and "X must have shape (N, 10)" in r["error"]
    assert "Traceback" in r["traceback"]


def test_a_survivor_continued_from_its_checkpoint_matches_a_full_run(tmp_path):
    (trial,) = sweep.build_trials([{"learning_rate": 1e-2}], settings=FAST, data=SMALL)
    full = sweep.run_trial(trial.with_budget(3), checkpoint_dir=str(tmp_path / "a"))
    short = sweep.run_trial(trial.with_budget(1), checkpoint_dir=str(tmp_path / "b"))
    assert short["epochs"] == 1 and short["checkpoint"].endswith("_epoch_1.npz")
    cont = sweep.run_trial(trial.with_budget(3), checkpoint_dir=str(tmp_path / "b"),
                           resume_from=short["checkpoint"])
    assert cont["resumed_from_epoch"] == 1 and cont["epochs"] == 3
    for key in ("val_acc_history", "train_acc_history", "loss_history", "val_acc"):
        assert cont[key] == full[key], key
    # only the newest checkpoint of a trial is kept
    assert sorted(os.listdir(tmp_path / "b")) == sorted(
        os.path.basename(p) for p in (short["checkpoint"], cont["checkpoint"]))
    model = sweep.restore_model(cont)
    assert model.params["W1"].shape == (3072, 20)


def test_successive_halving_rungs():
    assert sweep.SuccessiveHalving(eta=3).rungs(10) == [1, 3, 10]
    assert sweep.SuccessiveHalving(eta=3).rungs(9) == [1, 3, 9]
    assert sweep.SuccessiveHalving(eta=2, min_epochs=2).rungs(8) == [2, 4, 8]
    assert sweep.SuccessiveHalving(eta=3).survivors(16) == 5
    assert sweep.SuccessiveHalving(eta=3).survivors(2) == 1
    with pytest.raises(ValueError, match="needs num_epochs >= 3"):
        sweep.SuccessiveHalving(eta=3).rungs(2)
    with pytest.raises(ValueError, match="eta must be an integer >= 2"):
        sweep.SuccessiveHalving(eta=1)


# -- the journal ---------------------------------------------------------------------


def test_journal_appends_lines_and_survives_a_torn_last_line(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    j = Journal(path)
    assert j.read() == []
    j.append({"id": "a", "val_acc": 0.5, "loss": [1.0, float("nan")]})
    j.append({"id": "b", "val_acc": float("inf")})
    with open(path) as f:  # on disk, strict JSON (no NaN) one record per line
        lines = f.read().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]
    assert json.loads(lines[0])["loss"] == [1.0, None] and "NaN" not in lines[0]
    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"id": "c", "val_ac')
    with pytest.warns(TornLineWarning, match="incomplete last line"):
        assert [r["id"] for r in Journal(path).read()] == ["a", "b"]
    j2 = Journal(path)
    j2.append({"id": "d"})
    with open(path) as f:
        assert [json.loads(line)["id"] for line in f.read().splitlines()] == ["a", "b", "d"]
    with open(path, "r+b") as f:  # damage before the last line is an error
        f.write(b"#")
    with pytest.raises(ValueError, match="line 1 is not a trial record"):
        Journal(path).read()


# -- bad input fails before any trial starts -----------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(space=[]), ValueError, "search space is empty"),
    (dict(model="ResNet50"), ValueError, "unknown model 'ResNet50'"),
    (dict(settings={"update_rule": "adamw2"}), ValueError, "unknown update rule 'adamw2'"),
    (dict(settings={"hiden_dim": 64}), ValueError,
     "'hiden_dim' is not taken by TwoLayerNet .*hidden_dim"),
    (dict(settings={"beta1": 0.9}), ValueError, "'beta1' is not taken.*rule 'sgd'"),
    (dict(space=[{"reg": -1.0}]), ValueError, "reg must be a finite number >= 0, got -1.0"),
    (dict(space=[{"learning_rate": -1.0}]), ValueError,
     r"config\['learning_rate'\] must be a finite number"),
    (dict(settings={"batch_size": 0}), ValueError, "batch_size must be a positive integer"),
    (dict(model="Softmax", settings={"hidden_dim": 64}), ValueError,
     r"'hidden_dim' is not taken by Softmax, which trains with train\(learning_rate, reg"),
    (dict(workers=0), ValueError, "workers must be an integer >= 1"),
    (dict(halving=sweep.SuccessiveHalving(eta=3), settings={"num_epochs": 2}), ValueError,
     "needs num_epochs >= 3"),
    (dict(model="Softmax", halving=sweep.SuccessiveHalving()), ValueError,
     "Softmax trains without a Solver"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, kwargs, error, match):
    from xdl.sweep import run_sweep
    args = dict(space=[{"learning_rate": 1e-3}], data=SMALL, out_dir=str(tmp_path / "out"),
                verbose=False)
    args.update(kwargs)
    start = time.time()
    with pytest.raises(error, match=match):
        run_sweep(**args)
    assert time.time() - start < 5  # no cluster was started
    assert not (tmp_path / "out").exists()


def test_a_scheduler_that_does_not_answer_is_named_within_the_timeout(tmp_path):
    address = "tcp://127.0.0.1:%d" % free_port()
    start = time.time()
    with pytest.raises(ConnectionError, match="no Dask scheduler answered at %s within 2 s"
                       % address):
        sweep.run_sweep([{"learning_rate": 1e-3}], data=SMALL, scheduler=address,
                        connect_timeout=2, out_dir=str(tmp_path / "out"), verbose=False)
    assert time.time() - start < 15
    assert not (tmp_path / "out").exists()


def test_gpus_without_a_gpu_is_a_backend_error():
    if xdl.gpu_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError):
        with sweep.Engine(gpus=True):
            pass


def test_importable_without_dask():
    code = textwrap.dedent("""
        import sys
        sys.modules["distributed"] = None  # as if Dask were not installed
        from xdl import sweep
        points = sweep.grid({"reg": [0.1]})
        trials = sweep.build_trials(points, data=sweep.DataSource(synthetic=True))
        assert len(trials) == 1
        try:
            sweep.run_sweep(points, data=sweep.DataSource(synthetic=True))
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and "pip install 'xdl[distributed]'" in out.stdout


# -- GPU cluster construction (no GPU needed to build it) ------------------------------


def test_visible_gpus_and_gpu_worker_specs():
    assert sweep_cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert sweep_cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert sweep_cluster.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}) == ["1"]
    assert sweep_cluster.visible_gpus({}, device_count=lambda: 2) == ["0", "1"]
    specs = sweep_cluster.gpu_worker_specs(["0", "GPU-8a1b"], 3)
    assert sorted(specs) == ["gpu-0", "gpu-GPU-8a1b"]
    opts = specs["gpu-GPU-8a1b"]["options"]
    assert opts == {"nthreads": 3, "env": {"CUDA_VISIBLE_DEVICES": "GPU-8a1b"},
                    "resources": {"GPU": 3}}


def test_host_shares_split_each_machines_cores_between_its_trials():
    nthreads = {"tcp://10.0.0.1:4001": 1, "tcp://10.0.0.1:4002": 1,
                "tcp://10.0.0.2:4001": 2, "tcp://10.0.0.3:4001": 4}
    cpus = {"tcp://10.0.0.1:4001": 2, "tcp://10.0.0.1:4002": 2,
            "tcp://10.0.0.2:4001": 8, "tcp://10.0.0.3:4001": 2}
    assert sweep_cluster.host_shares(nthreads, cpus) == {"10.0.0.1": 1, "10.0.0.2": 4,
                                                         "10.0.0.3": 1}


@pytest.mark.slow
def test_gpus_on_a_cluster_without_gpu_workers_is_refused(client, tmp_path):
    with pytest.raises(ValueError, match="no worker of .* offers the 'GPU' resource"):
        sweep.run_sweep([{"learning_rate": 1e-3}], settings=FAST, data=SMALL, client=client,
                        gpus=True, out_dir=str(tmp_path / "out"), verbose=False)
    assert not (tmp_path / "out" / "journal.jsonl").exists()


def _worker_profiles(dask_worker):
    """Whether a worker runs Dask's statistical profiler (its config, and a live timer)."""
    import dask
    enabled = dask.config.get("distributed.worker.profile.enabled")
    return bool(enabled) or "profile" in dask_worker.periodic_callbacks


@pytest.mark.slow
def test_the_embedded_cluster_gives_each_worker_its_share_of_the_cores():
    with sweep.Engine(workers=2) as engine:
        engine.client.wait_for_workers(2, timeout=60)
        assert "2 single-threaded worker processes" in engine.description
        share = max(1, sweep_cluster.usable_cpus() // 2)
        assert set(engine.client.run(get_num_threads).values()) == {share}
        assert set(engine.client.nthreads().values()) == {1}
        # started without Dask's MALLOC_TRIM_THRESHOLD_ (see cluster.WORKER_CONFIG)
        env = engine.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(env.values()) == {None}
        # and without Dask's statistical profiler (it takes the trials' GIL)
        profiling = engine.client.run(_worker_profiles)
        assert set(profiling.values()) == {False}
    assert engine.client is None and engine.cluster is None


@pytest.mark.slow
def test_gpu_worker_specs_start_pinned_workers_with_gpu_slots():
    import dask
    import distributed
    specs = sweep_cluster.gpu_worker_specs(["0", "1"], 2)
    with dask.config.set(sweep_cluster.WORKER_CONFIG), \
            distributed.SpecCluster(workers=specs, scheduler={
            "cls": distributed.Scheduler, "options": {"dashboard_address": ":0",
                                                      "dashboard": False}}) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        env = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(env.values()) == ["0", "1"]
        info = client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in info] == [{"GPU": 2}, {"GPU": 2}]
        assert [w["nthreads"] for w in info] == [2, 2]
        # a trial's resource request lands on these workers, K at a time each
        futures = [client.submit(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), pure=False,
                                 resources={"GPU": 1}) for _ in range(4)]
        assert set(client.gather(futures)) <= {"0", "1"}


# -- sweeps on a real LocalCluster of 2 worker processes ---------------------------------


@pytest.fixture(scope="module")
def client():
    import dask
    import distributed
    with dask.config.set(sweep_cluster.WORKER_CONFIG):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           scheduler_kwargs={"dashboard": False})
        client = distributed.Client(cluster)
        yield client
        client.close()
        cluster.close()


@pytest.mark.slow
def test_sweep_records_ok_failed_and_diverged_and_loads_data_once(client, tmp_path):
    client.wait_for_workers(2, timeout=60)
    before = client.run(lambda: sum(sweep.data.load_counts().values()))
    points = [{"learning_rate": 1e-3, "reg": 0.0}, {"learning_rate": 1e-2, "reg": 0.1},
              {"learning_rate": 1e3, "reg": 0.0},                      # diverges
              {"learning_rate": 1e-3, "reg": 0.1, "input_dim": 10},    # raises
              {"learning_rate": 3e-3, "reg": 0.2}]
    out = str(tmp_path / "out")
    result = sweep.run_sweep(points, settings=FAST, data=SMALL, out_dir=out, client=client,
                             verbose=False)
    status = {(r["hyperparameters"]["learning_rate"], "input_dim" in r["hyperparameters"]):
              r["status"] for r in result.records}
    assert status == {(1e-3, False): "ok", (1e-2, False): "ok", (1e3, False): "diverged",
                      (1e-3, True): "failed", (3e-3, False): "ok"}
    failed = [r for r in result.records if r["status"] == "failed"][0]
    assert "X must have shape (N, 10)" in failed["error"]
    assert [r["status"] for r in result.records] == ["ok"] * 3 + ["diverged", "failed"]
    accs = [r["val_acc"] for r in result.records[:3]]
    assert accs == sorted(accs, reverse=True) and result.best is result.records[0]
    # every trial journaled once, each line valid JSON
    lines = [json.loads(line) for line in journal_lines(out) if line]
    assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in result.records)
    # each worker process read the data set at most once, and its kernel threads
    # were set to its share: 2 workers of 1 Dask thread on this host's cores
    after = client.run(lambda: sum(sweep.data.load_counts().values()))
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)
    share = max(1, sweep_cluster.usable_cpus() // 2)
    assert set(client.run(get_num_threads).values()) == {share}
    assert len({r["worker"] for r in result.records}) == 2
    # the table, the plot and the best model
    assert result.table().splitlines()[0].split()[:4] == ["rank", "status", "val_acc",
                                                          "train_acc"]
    png = result.plot(str(tmp_path / "acc.png"), "learning_rate", "reg")
    assert os.path.getsize(png) > 1000
    with pytest.raises(ValueError, match="'input_dim' to be a number in every trial"):
        result.plot(str(tmp_path / "no.png"), "learning_rate", "input_dim")
    model = result.best_model()
    test_acc = result.score(model, result.best, "test")
    assert 0.0 <= test_acc <= 1.0
    # resume: nothing runs again; without resume the journal is protected
    again = sweep.run_sweep(points, settings=FAST, data=SMALL, out_dir=out, client=client,
                            resume=True, verbose=False)
    assert len([line for line in journal_lines(out) if line]) == 5 + 1  # the failed one reran
    assert {r["id"] for r in again.records} == {r["id"] for r in result.records}
    with pytest.raises(FileExistsError, match="resume=True"):
        sweep.run_sweep(points, settings=FAST, data=SMALL, out_dir=out, client=client,
                        verbose=False)


@pytest.mark.slow
def test_scattered_arrays_and_successive_halving(client, tmp_path):
    client.wait_for_workers(2, timeout=60)
    rng = np.random.RandomState(0)
    arrays = {"X_train": rng.randn(300, 3, 32, 32).astype(np.float32),
              "y_train": rng.randint(10, size=300),
              "X_val": rng.randn(100, 3, 32, 32).astype(np.float32),
              "y_val": rng.randint(10, size=100),
              "X_test": rng.randn(50, 3, 32, 32).astype(np.float32),
              "y_test": rng.randint(10, size=50)}
    points = sweep.random_search({"learning_rate": sweep.loguniform(1e-4, 1e-1)}, 6, seed=0)
    out = str(tmp_path / "out")
    result = sweep.run_sweep(points, settings=dict(FAST, num_epochs=3), data=arrays,
                             out_dir=out, client=client, halving=sweep.SuccessiveHalving(eta=3),
                             verbose=False)
    epochs = sorted(r["epochs"] for r in result.records)
    assert epochs == [1, 1, 1, 1, 3, 3]  # 6 trials for 1 epoch, the best 2 for 3
    survivors = [r for r in result.records if r["epochs"] == 3]
    assert all(r["resumed_from_epoch"] == 1 for r in survivors)
    first_rung = {json.loads(line)["base_id"]: json.loads(line)
                  for line in journal_lines(out)[:6]}
    # the best two of the first rung (ties go to the earlier point) went on
    ranked = sorted(first_rung.values(),
                    key=lambda r: (-r["val_acc"], points.index(r["hyperparameters"])))
    assert {r["base_id"] for r in survivors} == {r["base_id"] for r in ranked[:2]}
    assert len([line for line in journal_lines(out) if line]) == 8
    assert result.records[0] in survivors
    model = result.best_model()
    assert 0.0 <= result.score(model, result.best, "test") <= 1.0


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_rerun_and_no_result_is_lost(client, tmp_path):
    client.wait_for_workers(2, timeout=60)
    points = sweep.grid({"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3]})
    settings = {"hidden_dim": 100, "num_epochs": 8, "batch_size": 100}
    data = sweep.DataSource(synthetic=True, num_train=4000, num_val=200, num_test=10, seed=1)
    out = tmp_path / "out"
    killed = {}

    def kill_a_worker_mid_trial():
        # Wait until some trial has written its first checkpoint and is still
        # running, then SIGKILL the worker process running it.
        deadline = time.time() + 120
        while time.time() < deadline:
            for address, keys in client.processing().items():
                for key in keys:
                    key = str(key)
                    trial_id = key[len("xdl-trial-"):]
                    if key.startswith("xdl-trial-") and \
                            list((out / "checkpoints").glob(trial_id + "_epoch_*.npz")):
                        pid = client.run(os.getpid, workers=[address])[address]
                        os.kill(pid, signal.SIGKILL)
                        killed.update(id=trial_id, pid=pid)
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_mid_trial)
    killer.start()
    result = sweep.run_sweep(points, settings=settings, data=data, out_dir=str(out),
                             client=client, threads_per_trial=1, verbose=False)
    killer.join()
    assert killed, "no trial was caught running"
    assert [r["status"] for r in result.records] == ["ok"] * 4
    rerun = {r["id"]: r for r in result.records}[killed["id"]]
    assert rerun["pid"] != killed["pid"]           # Dask ran it again elsewhere
    assert rerun["resumed_from_epoch"] >= 1        # from its own checkpoint
    assert rerun["epochs"] == 8 and len(rerun["val_acc_history"]) == 9
    ids = [json.loads(line)["id"] for line in journal_lines(str(out)) if line]
    assert sorted(ids) == sorted(r["id"] for r in result.records)  # each once, none lost


DRIVER_SETTINGS = {"hidden_dim": 50, "num_epochs": 6, "batch_size": 100}
DRIVER_DATA = dict(synthetic=True, num_train=3000, num_val=100, num_test=10)
DRIVER = """
import sys
from xdl import sweep

SETTINGS = %r
DATA = sweep.DataSource(**%r)
""" % (DRIVER_SETTINGS, DRIVER_DATA) + """
if __name__ == "__main__":
    points = sweep.grid({"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]})
    sweep.run_sweep(points, settings=SETTINGS, data=DATA, out_dir=sys.argv[1], workers=2)
"""


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_resumed(client, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen([sys.executable, str(script), str(out)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and driver.poll() is None:
                if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
                    break
                time.sleep(0.02)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            try:  # its worker processes exit with it; make sure of it
                os.killpg(driver.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    raw = journal.read_bytes()
    complete = raw[:raw.rfind(b"\n") + 1].splitlines()
    assert 2 <= len(complete) < 8
    before = [json.loads(line) for line in complete]  # still valid JSON lines
    assert all(r["status"] == "ok" for r in before)
    with open(journal, "ab") as f:  # and as if the kill had torn a line in half
        f.write(b'{"id": "0123456789abcdef", "status": "o')

    points = sweep.grid({"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]})
    with pytest.warns(TornLineWarning):
        result = sweep.run_sweep(points, settings=DRIVER_SETTINGS,
                                 data=sweep.DataSource(**DRIVER_DATA), out_dir=str(out),
                                 client=client, resume=True, verbose=False)
    assert [r["status"] for r in result.records] == ["ok"] * 8
    after = [json.loads(line) for line in journal.read_bytes().splitlines()]
    ids = [r["id"] for r in after]
    assert sorted(ids) == sorted(r["id"] for r in result.records)  # none twice, none lost
    assert ids[:len(before)] == [r["id"] for r in before]          # finished ones kept


@pytest.mark.slow
def test_example_script_on_a_scheduler_address(client, tmp_path):
    client.wait_for_workers(2, timeout=60)
    out = str(tmp_path / "out")
    base = [sys.executable, os.path.join(ROOT, "examples", "sweep.py"), "--synthetic",
            "--num-train", "200", "--scheduler", client.scheduler.address, "--out-dir", out]

    def run(*flags):
        return subprocess.run(base + list(flags), capture_output=True, text=True, timeout=300)

    r = run("--preset", "softmax", "--trials", "3", "--num-iters", "20")
    assert r.returncode == 0, r.stderr
    assert "Test set accuracy of the best model:" in r.stdout
    for name in ("journal.jsonl", "results.txt", "best_model.npz", "sweep_accuracy.png"):
        assert os.path.exists(os.path.join(out, name)), name
    r = run("--preset", "softmax", "--trials", "3", "--num-iters", "20")
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr
    r = run("--preset", "softmax", "--trials", "3", "--num-iters", "20", "--resume")
    assert r.returncode == 0 and "3 of 3 trials are in the journal already; running 0" in r.stdout
    r = run("--preset", "softmax", "--trials", "0")
    assert r.returncode == 2 and "--trials: must be an integer > 0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    address = "tcp://127.0.0.1:%d" % free_port()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "sweep.py"),
                        "--synthetic", "--scheduler", address, "--connect-timeout", "1",
                        "--out-dir", str(tmp_path / "other")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and address in r.stderr and "Traceback" not in r.stderr
