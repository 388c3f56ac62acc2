"""Saving and loading models and Solver checkpoints.

One file format for both: a NumPy ``.npz`` archive holding every array of a
nested structure (dicts with string keys, lists, arrays, numbers, strings,
None) plus a JSON description of the structure. No pickle: loading a file
never runs code. Arrays are stored as host numpy arrays, so a file written on
the GPU loads on a machine without one, and the reverse.

Files are written atomically: to a temporary file in the same folder, flushed
to disk, then renamed over the target. A crash mid-write leaves the previous
file intact.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from xdl.backends import asnumpy, is_cupy_array

FORMAT = "xdl-state-1"
_META_KEY = "__xdl_structure__"


def _flatten(obj, arrays):
    """Replace arrays by {'__array__': index} and collect them in `arrays`."""
    if isinstance(obj, np.ndarray) or is_cupy_array(obj):
        arrays.append(asnumpy(obj))
        return {"__array__": len(arrays) - 1}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError("only string keys can be saved, got key %r" % (k,))
            out[k] = _flatten(v, arrays)
        return {"__dict__": out}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError("cannot save a value of type %s" % type(obj).__name__)


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays["a%d" % obj["__array__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, arrays) for k, v in obj["__dict__"].items()}
        if "__list__" in obj:
            return [_unflatten(v, arrays) for v in obj["__list__"]]
        raise ValueError("corrupt structure entry %r" % (obj,))
    return obj


def save_state(path, state):
    """
    Write a nested structure of arrays and plain values to ``path`` atomically.

    Inputs:
    - path: file name (written exactly as given, no suffix is added)
    - state: dict of arrays (numpy or cupy), numbers, strings, None, lists, dicts
    """
    arrays = []
    structure = {"format": FORMAT, "state": _flatten(state, arrays)}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META_KEY: np.array(json.dumps(structure))},
                     **{"a%d" % i: a for i, a in enumerate(arrays)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(path):
    """
    Read a structure written by save_state. Arrays come back as numpy arrays.

    Raises FileNotFoundError for a missing file and ValueError for a file
    that is not an xdl state file.
    """
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError("cannot read %s as an xdl state file: %s" % (path, exc)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("%s is a single .npy array, not an xdl model or checkpoint file" % path)
    with data:
        if _META_KEY not in data.files:
            raise ValueError("%s is not an xdl model or checkpoint file" % path)
        try:
            structure = json.loads(str(data[_META_KEY]))
            arrays = {k: data[k] for k in data.files if k != _META_KEY}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError("%s is damaged: %s" % (path, exc)) from None
    if structure.get("format") != FORMAT:
        raise ValueError("%s has format %r, expected %r"
                         % (path, structure.get("format"), FORMAT))
    return _unflatten(structure["state"], arrays)
