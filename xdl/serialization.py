"""Saving and loading models and Solver checkpoints.

One file format for both: a NumPy ``.npz`` archive holding every array of a
nested structure (dicts with string keys, lists, arrays, numbers, strings,
None) under its path in that structure, plus a JSON description of the rest.
A saved model opened with plain NumPy shows its parameters by name::

    >>> np.load("model.npz").files
    ['__xdl_structure__', 'W1', 'b1', 'W2', 'b2']

and a checkpoint shows ``params/W1``, ``optim_configs/W1/m``, ... (the way
Chainer's ``save_npz`` and PyTorch's ``state_dict`` name things).

No pickle: arrays are written and read with ``allow_pickle=False``, so
loading a file never runs code. Arrays are stored as host numpy arrays, so a
file written on the GPU loads on a machine without one, and the reverse.

Files are written atomically: to a temporary file in the same folder, flushed
to disk, then renamed over the target. A crash mid-write leaves the previous
file intact.

Files of the first format (``xdl-state-1``: arrays ``a0, a1, ...``) still load.
"""
import collections
import json
import os
import tempfile
import zipfile

import numpy as np

from xdl.backends import asnumpy, is_cupy_array

FORMAT = "xdl-state-2"
LEGACY_FORMAT = "xdl-state-1"
META_KEY = "__xdl_structure__"

#: What load_file returns: the file's kind ('model', 'checkpoint',
#: 'linear_classifier' or 'state'), its JSON description and its contents.
StateFile = collections.namedtuple("StateFile", ["kind", "info", "state"])

# kind -> (what the file is, how to load it); filled from the file's info.
_KINDS = {
    "model": ("a saved %(class)s model",
              "xdl.classifiers.load_model(%(path)r)"),
    "checkpoint": ("a Solver checkpoint of a %(model)s at epoch %(epoch)s",
                   "solver.load_checkpoint(%(path)r) on a Solver built around a %(model)s "
                   "of the same shapes"),
    "linear_classifier": ("a saved %(class)s linear classifier",
                          "%(class)s().load(%(path)r)"),
    "state": ("an xdl state file", "xdl.serialization.load_state(%(path)r)"),
}


class WrongFileError(ValueError):
    """The file is not the kind of file the caller reads (the message says which it is)."""


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _flatten(obj, name, arrays):
    """
    Describe obj as JSON, moving every array into `arrays` under its path
    (`name`, dict keys and list indices joined by '/').
    """
    if isinstance(obj, np.ndarray) or is_cupy_array(obj):
        if name in arrays or name == META_KEY or not name:
            raise ValueError("two arrays would be saved under the name %r; rename a key" % name)
        host = asnumpy(obj)
        if host.dtype.hasobject:
            raise TypeError("cannot save %s: an array of Python objects needs pickle" % name)
        arrays[name] = host
        return {"__array__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    prefix = name + "/" if name else ""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or not k:
                raise TypeError("only non-empty string keys can be saved, got key %r" % (k,))
            out[k] = _flatten(v, prefix + k, arrays)
        return {"__dict__": out}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, prefix + str(i), arrays) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError("cannot save a value of type %s (at %r)" % (type(obj).__name__, name))


def _write_archive(f, description, arrays):
    """Write an uncompressed .npz (as np.savez does) without pickle."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        members = [(META_KEY, np.array(json.dumps(description)))] + list(arrays.items())
        for name, array in members:
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _file_mode(path):
    """The permission bits of the existing file at path, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save_state(path, state, kind="state", info=None):
    """
    Write a nested structure of arrays and plain values to ``path`` atomically.

    Inputs:
    - path: file name (written exactly as given, no suffix is added)
    - state: dict of arrays (numpy or cupy), numbers, strings, None, lists,
      dicts; each array is stored under its path, e.g. state['params']['W1']
      as 'params/W1'
    - kind: what the file is: 'model', 'checkpoint', 'linear_classifier' or
      'state' (loaders use it to say what a wrong file is)
    - info: small JSON-able dict describing the file (model class, epoch, ...)
    """
    if kind not in _KINDS:
        raise ValueError("kind must be one of %s, got %r" % (", ".join(_KINDS), kind))
    arrays = {}
    description = {"format": FORMAT, "kind": kind, "info": dict(info or {}),
                   "state": _flatten(state, "", arrays)}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain
        # open() would, or that of the file it replaces.
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, description, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            ref = obj["__array__"]
            return arrays[ref if isinstance(ref, str) else "a%d" % ref]
        if "__dict__" in obj:
            return {k: _unflatten(v, arrays) for k, v in obj["__dict__"].items()}
        if "__list__" in obj:
            return [_unflatten(v, arrays) for v in obj["__list__"]]
        raise ValueError("corrupt structure entry %r" % (obj,))
    return obj


def _what_it_is(path):
    """Name the kind of a file that is not an .npz archive, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single NumPy array (.npy)"
    if head[:1] == b"\x80":
        return "a pickle file (xdl never unpickles model files: that could run code)"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "neither an .npz archive nor text"


def _not_xdl(path, what, loader):
    advice = "%s reads the .npz files xdl writes" % loader if loader else \
        "xdl reads the .npz files it writes"
    return WrongFileError("%s is %s, not a file xdl wrote: %s (model.save(path), "
                          "Solver(..., checkpoint_name=...))." % (path, what, advice))


def load_file(path, kind=None, loader=None):
    """
    Read a file written by save_state (or by the first format).

    Inputs:
    - path: the file
    - kind: None, or the kind the caller reads; a file of another kind raises
      WrongFileError saying what the file is and what to call instead
    - loader: the caller's name, used in messages ('xdl.classifiers.load_model')

    Returns a StateFile (kind, info, state); arrays come back as numpy arrays.
    Raises FileNotFoundError for a missing file and WrongFileError (a
    ValueError) for a file that is not an xdl file of the right kind.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such file: %s (model files are written by model.save(path), "
                                "checkpoints by Solver(..., checkpoint_name=...))" % path)
    if os.path.isdir(path):
        raise WrongFileError("%s is a folder, not a model or checkpoint file" % path)
    if not zipfile.is_zipfile(path):
        raise _not_xdl(path, _what_it_is(path), loader)
    try:
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                names = ", ".join(data.files[:8]) + (", ..." if len(data.files) > 8 else "")
                raise WrongFileError(
                    "%s is a NumPy .npz archive (arrays: %s) that xdl did not write: open it "
                    "with numpy.load(%r)" % (path, names or "none", path))
            description = json.loads(str(data[META_KEY]))
            arrays = {k: data[k] for k in data.files if k != META_KEY}
    except WrongFileError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise WrongFileError("%s is damaged (%s: %s): it cannot be read; write it again"
                             % (path, type(exc).__name__, exc)) from None
    fmt = description.get("format") if isinstance(description, dict) else None
    if fmt not in (FORMAT, LEGACY_FORMAT):
        raise WrongFileError("%s has format %r; this xdl reads %r and %r (a newer xdl wrote it?)"
                             % (path, fmt, FORMAT, LEGACY_FORMAT))
    try:
        if fmt == LEGACY_FORMAT:
            found = _from_legacy(_unflatten(description["state"], arrays))
        else:
            found = StateFile(description["kind"], description["info"],
                              _unflatten(description["state"], arrays))
    except (KeyError, ValueError, TypeError) as exc:
        raise WrongFileError("%s is damaged (its description does not match its arrays: %s: "
                             "%s); write it again" % (path, type(exc).__name__, exc)) from None
    if kind is not None and found.kind != kind:
        raise WrongFileError(_wrong_kind_message(path, found, kind))
    return found


def load_state(path, kind=None, loader=None):
    """
    Read the state written by save_state (see load_file for the arguments).
    Returns the nested structure, arrays as numpy arrays.
    """
    return load_file(path, kind, loader).state


def _wrong_kind_message(path, found, expected):
    fields = collections.defaultdict(lambda: "?", found.info)
    fields["path"] = path
    what, call = _KINDS.get(found.kind, _KINDS["state"])
    return "%s is %s, not %s: load it with %s." % (
        path, what % fields, _WANTED[expected], call % fields)


_WANTED = {
    "model": "a saved model",
    "checkpoint": "a Solver checkpoint",
    "linear_classifier": "a saved linear classifier",
    "state": "an xdl state file",
}


# ---------------------------------------------------------------------------
# The first format (xdl-state-1)
# ---------------------------------------------------------------------------


def _legacy_model_state(params, running):
    """Parameters plus running statistics as Model.state() names them."""
    state = dict(params)
    for i, stats in enumerate(running):
        for k, v in stats.items():
            state["bn_params/%d/%s" % (i, k)] = v
    return state


def _from_legacy(old):
    """Turn the structure of a first-format file into a StateFile of today's layout."""
    if "update_rule" in old:  # a Solver checkpoint
        state = {k: v for k, v in old.items() if k not in ("model", "running_stats")}
        state["params"] = _legacy_model_state(old["params"], old.get("running_stats", []))
        name, keys, pos, has_gauss, cached = old["rng_state"]
        state["rng_state"] = {"name": name, "keys": keys, "pos": pos, "has_gauss": has_gauss,
                              "cached_gaussian": cached}
        return StateFile("checkpoint", {"model": old["model"], "epoch": old["epoch"],
                                        "iteration": old["iteration"]}, state)
    if "config" in old:  # a model
        return StateFile("model", {"class": old["class"], "config": old["config"],
                                   "dtype": old["dtype"]},
                         _legacy_model_state(old["params"], old.get("running", [])))
    if "W" in old and "class" in old:  # a linear classifier
        return StateFile("linear_classifier", {"class": old["class"]}, {"W": old["W"]})
    return StateFile("state", {}, old)
