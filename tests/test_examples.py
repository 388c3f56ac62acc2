"""The example scripts as a user meets them: --help, flag errors in one line
with exit status 2 before anything is loaded, data that is missing or cannot
be downloaded, a run stopped on a NaN loss, and short runs on synthetic data
that write their plots and model."""
import argparse
import os
import re
import sys

import numpy as np
import pytest

import xdl
from xdl import data_utils
from xdl.classifiers import load_model
from xdl.classifiers.cnn import ThreeLayerConvNet

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import benchmark  # noqa: E402
import common  # noqa: E402
import batchnorm_experiments  # noqa: E402
import torch_cnn  # noqa: E402
import train_cnn  # noqa: E402
import train_dropout  # noqa: E402
import train_fc_net  # noqa: E402
import train_two_layer_net  # noqa: E402

TRAINING = [train_cnn, train_two_layer_net, train_fc_net, train_dropout]
ALL = TRAINING + [batchnorm_experiments, benchmark]


@pytest.fixture(autouse=True)
def keep_backend():
    with xdl.use_backend(xdl.get_backend()):
        yield


class Captured(Exception):
    pass


def parser_of(module, monkeypatch):
    """The ArgumentParser a script's main() builds (captured at parse time)."""
    def capture(self, *args, **kwargs):
        raise Captured(self)
    monkeypatch.setattr(common.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as info:
        module.main([])
    monkeypatch.undo()
    return info.value.args[0]


@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__)
def test_help_shows_every_default_in_whole_sentences(module, monkeypatch, capsys):
    p = parser_of(module, monkeypatch)
    flags = {s for a in p._actions for s in a.option_strings}
    assert "--device" in flags
    text = p.format_help()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0]
        assert action.help and action.help[0].isupper() and action.help.endswith("."), name
        if action.default not in (None, False):
            default = " ".join(str(v) for v in action.default) \
                if isinstance(action.default, list) else str(action.default)
            assert "(default: %s)" % default in " ".join(text.split()), name
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0 and "(default: " in capsys.readouterr().out


def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")
    monkeypatch.setattr(data_utils, "get_CIFAR10_data", refuse)
    monkeypatch.setattr(data_utils, "download_cifar10", refuse)
    monkeypatch.setattr(common, "synthetic_data", refuse)


def user_error(module, argv, capsys):
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


BAD_FLAGS = [
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--lr", "-0.001"], "argument --lr: must be a finite number > 0, got '-0.001'"),
    (["--lr=-1e-3"], "argument --lr: must be a finite number > 0, got '-1e-3'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer > 0, got '0'"),
    (["--num-train", "0"], "argument --num-train: must be an integer > 0, got '0'"),
    (["--num-train", "49001"], "argument --num-train: at most 49000"),
    (["--epochs", "2.5"], "argument --epochs: '2.5' is not an integer"),
    (["--update-rule", "nesterov"], "argument --update-rule: unknown update rule 'nesterov'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**32)"),
    (["--data-dir", "/no/such/folder"], "argument --data-dir: /no/such/folder is not a folder"),
]


@pytest.mark.parametrize("module", TRAINING, ids=lambda m: m.__name__)
@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_bad_flags_are_one_line_before_loading(module, argv, message, monkeypatch, capsys,
                                               tmp_path):
    no_loading(monkeypatch)
    err = user_error(module, argv + ["--out-dir", str(tmp_path)], capsys)
    assert err.startswith("%s: error: %s" % (os.path.basename(sys.argv[0]), message)), err


def test_example_specific_flags(monkeypatch, capsys, tmp_path):
    no_loading(monkeypatch)
    out = ["--out-dir", str(tmp_path)]
    assert "--filter-size: must be odd, got 4" in user_error(
        train_cnn, ["--filter-size", "4"] + out, capsys)
    assert "--dropout-keep: must be a probability in (0, 1], got '0'" in user_error(
        train_fc_net, ["--dropout-keep", "0"] + out, capsys)
    assert "--keep-ratios: each ratio once" in user_error(
        train_dropout, ["--keep-ratios", "1", "1"] + out, capsys)
    assert "--reg: must be a finite number >= 0" in user_error(
        train_two_layer_net, ["--reg", "-1"] + out, capsys)
    assert "--num-scales: must be an integer > 0" in user_error(
        batchnorm_experiments, ["--num-scales", "0"] + out, capsys)
    assert "--repeats: must be an integer > 0" in user_error(benchmark, ["--repeats", "0"],
                                                             capsys)


@pytest.mark.parametrize("module", TRAINING + [batchnorm_experiments], ids=lambda m: m.__name__)
def test_unwritable_out_dir(module, monkeypatch, capsys, tmp_path):
    no_loading(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = user_error(module, ["--out-dir", str(blocker / "out")], capsys)
    assert "argument --out-dir: cannot write to %s" % (blocker / "out") in err


@pytest.mark.skipif(xdl.gpu_available(), reason="CuPy and a GPU are usable here")
@pytest.mark.parametrize("module", ALL, ids=lambda m: m.__name__)
def test_device_cuda_without_cupy_gives_the_backend_error(module, monkeypatch, capsys, tmp_path):
    no_loading(monkeypatch)
    out = [] if module is benchmark else ["--out-dir", str(tmp_path)]
    err = user_error(module, ["--device", "cuda"] + out, capsys)
    assert "argument --device: the cuda backend needs CuPy" in err or \
        "argument --device: the cuda backend found CuPy but no" in err
    assert "ModuleNotFoundError" not in err


def test_device_follows_xdl_backend(monkeypatch):
    monkeypatch.setenv("XDL_BACKEND", "cuda")
    assert common.default_device() == "cuda"
    monkeypatch.setenv("XDL_BACKEND", "numpy")
    assert common.default_device() == "cpu"


def test_explicit_data_dir_without_data_never_downloads(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(data_utils, "download_cifar10", lambda *a, **k: pytest.fail("download"))
    empty = tmp_path / "typo"
    empty.mkdir()
    err = user_error(train_two_layer_net, ["--data-dir", str(empty), "--out-dir",
                                           str(tmp_path / "out")], capsys)
    assert "CIFAR-10 is not in %s (from --data-dir)" % (empty / "cifar-10-batches-py") in err
    assert "add --download" in err
    assert os.listdir(empty) == []
    monkeypatch.setenv("XDL_DATA_DIR", str(empty))
    err = user_error(train_two_layer_net, ["--out-dir", str(tmp_path / "out")], capsys)
    assert "(from XDL_DATA_DIR)" in err


def test_offline_download_is_one_line(monkeypatch, capsys, tmp_path):
    # The default folder is filled automatically; offline, that fails in one line.
    monkeypatch.delenv("XDL_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    real = data_utils.download_cifar10

    def offline(data_dir, **kwargs):
        return real(data_dir, url="http://127.0.0.1:9/cifar-10-python.tar.gz", progress=False,
                    timeout=5)
    monkeypatch.setattr(data_utils, "download_cifar10", offline)
    with pytest.raises(SystemExit) as info:
        train_two_layer_net.main(["--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1, err
    assert "CIFAR-10 download failed" in err and "XDL_DATA_DIR" in err
    assert "put a copy of cifar-10-batches-py/ in %s" % (tmp_path / ".cache" / "xdl") in err


def test_damaged_data_is_one_line(monkeypatch, capsys, tmp_path):
    from test_data_utils import write_fake_cifar
    monkeypatch.setattr(data_utils, "IMAGES_PER_BATCH", 12)
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(str(folder))
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q")
    with pytest.raises(SystemExit) as info:
        train_two_layer_net.main(["--data-dir", str(tmp_path), "--num-train", "40",
                                  "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1, err
    assert "data_batch_2 is damaged" in err and "download --force" in err


def test_nan_stopped_run_exits_nonzero_and_says_so(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        train_two_layer_net.main(["--synthetic", "--num-train", "500", "--epochs", "2",
                                  "--lr", "1e30", "--out-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert info.value.code == 1
    assert captured.err.endswith("error: training stopped at iteration 2: the loss became nan "
                                 "(lower --lr or the weight scale); nothing was saved\n")
    assert "RuntimeWarning" not in captured.err and os.listdir(tmp_path) == []


# --- short runs on synthetic data ------------------------------------------------------


def test_train_cnn_runs_and_saves(capsys, tmp_path):
    train_cnn.main(["--synthetic", "--num-train", "100", "--batch-size", "50",
                    "--num-filters", "2", "--filter-size", "3", "--hidden-dim", "8",
                    "--print-every", "1", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "(Iteration 1 / 2) loss: " in out and "(Epoch 1 / 1) train acc: " in out
    assert "Checking the accuracy on all 100 training images ..." in out
    assert "2 steps at " in out and "ms per step" in out
    assert sorted(os.listdir(tmp_path)) == ["cnn_filters.png", "cnn_history.png",
                                            "cnn_model.npz"]
    model = load_model(tmp_path / "cnn_model.npz")
    assert model.params["W1"].shape == (2, 3, 3, 3)


CNN_TINY = ["--synthetic", "--num-train", "100", "--batch-size", "50", "--num-filters", "2",
            "--filter-size", "3", "--hidden-dim", "8"]


def test_train_cnn_compares_with_pytorch_when_installed(capsys, tmp_path):
    pytest.importorskip("torch")
    train_cnn.main(CNN_TINY + ["--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Training the same network in PyTorch " in out and " for 2 steps ..." in out
    assert re.search(r"PyTorch took [0-9.]+ s: 2 steps at [0-9.]+ ms per step; xdl's steps "
                     r"took [0-9.]+x PyTorch's time", out)
    assert re.search(r"PyTorch validation set accuracy: [0-9.]+", out)


def test_train_cnn_without_the_pytorch_baseline(capsys, tmp_path, monkeypatch):
    train_cnn.main(CNN_TINY + ["--out-dir", str(tmp_path), "--no-torch-baseline"])
    assert "PyTorch" not in capsys.readouterr().out
    monkeypatch.setattr(train_cnn.torch_cnn, "load_torch", lambda device, threads:
                        (None, "not installed"))
    train_cnn.main(CNN_TINY + ["--out-dir", str(tmp_path)])
    assert "PyTorch baseline: torch not installed" in capsys.readouterr().out
    train_cnn.main(CNN_TINY + ["--out-dir", str(tmp_path), "--update-rule", "sgd"])
    assert "PyTorch baseline: only for --update-rule adam" in capsys.readouterr().out


def test_the_pytorch_baseline_is_the_same_network():
    # Same weights in: the same loss, gradients and one Adam step as
    # ThreeLayerConvNet + optim.adam (float64, so differences are rounding).
    torch = pytest.importorskip("torch")
    from xdl import optim
    np.random.seed(3)
    model = ThreeLayerConvNet(num_filters=4, filter_size=5, hidden_dim=12, reg=0.05,
                              weight_scale=0.1, dtype=np.float64)
    base = torch_cnn.TorchCNN(torch, "cpu", np.float64, num_filters=4, filter_size=5,
                              hidden_dim=12, reg=0.05, learning_rate=1e-3)
    layers = {"W1": (0, "weight"), "b1": (0, "bias"), "W2": (4, "weight"), "b2": (4, "bias"),
              "W3": (6, "weight"), "b3": (6, "bias")}
    with torch.no_grad():
        for name, (i, attr) in layers.items():
            value = model.params[name]
            getattr(base.net[i], attr).copy_(torch.from_numpy(value.T if name in ("W2", "W3")
                                                              else value))
    rng = np.random.RandomState(4)
    X, y = rng.randn(6, 3, 32, 32), rng.randint(10, size=6)
    loss, grads = model.loss(X, y)
    t_loss = base.step(base.tensor(X), base.tensor(y, labels=True))
    assert abs(float(t_loss.detach()) - float(loss)) < 1e-10
    for name, (i, attr) in layers.items():
        stepped = getattr(base.net[i], attr).detach().numpy()
        expected, _ = optim.adam(model.params[name], grads[name], {"learning_rate": 1e-3})
        got = stepped.T if name in ("W2", "W3") else stepped
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_train_dropout_runs_the_notebook_experiment(capsys, tmp_path):
    train_dropout.main(["--synthetic", "--num-train", "50", "--epochs", "2", "--batch-size",
                        "25", "--hidden-dims", "10", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    table = out[out.index("keep ratio    final train    final val       best val     "
                          "best epoch") + 1:]
    assert table[0].startswith("1.00 ") and table[1].startswith("0.25 ")
    assert sum(line.startswith("(Epoch 2 / 2) train acc: ") for line in out) == 2
    assert os.listdir(tmp_path) == ["dropout_accuracy.png"]


def test_batchnorm_experiments_print_their_results(capsys, tmp_path):
    batchnorm_experiments.main(["--synthetic", "--num-train", "50", "--epochs", "1",
                                "--num-scales", "2", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "weight scale   baseline  batchnorm   baseline  batchnorm" in out
    assert "1.00e-04 " in out and "1.00e+00 " in out
    assert "  batch size 5 " in out and "  baseline, batch size 5 " in out
    assert sorted(os.listdir(tmp_path)) == ["batchnorm_batch_size.png",
                                            "batchnorm_weight_scale.png",
                                            "layernorm_batch_size.png"]


def test_synthetic_data_has_the_requested_sizes():
    data = common.synthetic_data(7, np.float32, 0, num_val=3, num_test=2)
    assert {k: v.shape[0] for k, v in data.items()} == {
        "X_train": 7, "y_train": 7, "X_val": 3, "y_val": 3, "X_test": 2, "y_test": 2}


def test_benchmark_times_the_training_cases_in_turn(monkeypatch):
    # Every case runs its warm-up and timed runs in each round, the order of
    # the cases reversed every other round; times and round medians filled.
    monkeypatch.setattr(benchmark, "settle", lambda: None)
    calls, before = [], []
    cases = [benchmark.Case(lambda name=name: calls.append(name), warmup=w, repeats=r,
                            before=lambda name=name: before.append(name))
             for name, w, r in (("a", 2, 3), ("b", 1, 1))]
    benchmark.interleaved_times(cases, rounds=3)
    assert calls == list("aaaaabb" "bbaaaaa" "aaaaabb")
    assert before == list("ab" "ba" "ab")
    assert [len(c.times) for c in cases] == [9, 3]
    assert [len(c.round_medians) for c in cases] == [3, 3]
    assert all(t >= 0 for c in cases for t in c.times)
    assert cases[0].median == sorted(cases[0].times)[4]


def test_benchmark_splits_the_iteration_into_the_kernels_stages(capsys):
    from xdl.backends import _cpu_team, cpu
    if cpu.compiled is None:
        pytest.skip("the compiled CPU kernels are not built")
    run = _cpu_team.run
    benchmark.bench_stages(benchmark.Device("cpu"), np.float32, steps=2)
    assert _cpu_team.run is run  # the timing wrapper is gone again
    out = capsys.readouterr().out
    assert "where the iteration goes (2 steps" in out
    times = dict(re.findall(r"^    (.+?)\s+(\d+\.\d\d) ms$", out, re.M))
    for stage in ("affine backward sweep (dx, dW2, sum of squares)",
                  "conv + ReLU + pool forward",
                  "conv + ReLU + pool backward (dW1), Adam on W2 beside it",
                  "Adam (the other parameters)",
                  "outside the kernels (Python, small NumPy operations)"):
        assert float(times[stage]) > 0, stage
