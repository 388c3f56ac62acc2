"""The file format of models and checkpoints: round trips, atomic writes,
damaged files."""
import os

import numpy as np
import pytest

from xdl import serialization
from xdl.serialization import load_state, save_state


def test_nested_roundtrip(tmp_path, xp):
    state = {"a": xp.arange(6, dtype=np.float32).reshape(2, 3), "n": 3, "f": 0.5, "s": "x",
             "none": None, "flag": True, "list": [1, {"b": np.int64(7)}, xp.ones(2)],
             "scalar": np.float64(2.5)}
    path = tmp_path / "state.bin"
    save_state(path, state)
    got = load_state(path)
    assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.float32
    np.testing.assert_array_equal(got["a"], np.arange(6).reshape(2, 3))
    assert got["n"] == 3 and got["f"] == 0.5 and got["s"] == "x" and got["none"] is None
    assert got["flag"] is True and got["list"][1]["b"] == 7 and got["scalar"] == 2.5
    np.testing.assert_array_equal(got["list"][2], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["state.bin"]  # exact name, no temp files


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_state(path, {"w": np.ones(3)})

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(serialization.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_state(path, {"w": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(load_state(path)["w"], np.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot save a value of type object"):
        save_state(tmp_path / "x", {"o": object()})
    with pytest.raises(TypeError, match="only string keys"):
        save_state(tmp_path / "x", {1: 2})


def test_damaged_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.npz")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="cannot read"):
        load_state(junk)
    npy = tmp_path / "arr.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match="single .npy array"):
        load_state(npy)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(2))
    with pytest.raises(ValueError, match="not an xdl model or checkpoint"):
        load_state(other)
    good = tmp_path / "good.npz"
    save_state(good, {"w": np.ones(1000)})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError):
        load_state(truncated)
