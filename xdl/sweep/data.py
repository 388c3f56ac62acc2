"""Where a sweep's trials get their data: a ``DataSource`` is a few plain
settings (folder, split sizes, dtype) that travel with each task; the
arrays are loaded from them once per worker process and kept there
(``load``), so no task ever carries a data set."""
import collections
import dataclasses
import threading
from typing import Optional

import numpy as np

from xdl import data_utils

CACHE_SIZE = 2  # data sets kept per process (a sweep uses one, or two layouts)

_cache = collections.OrderedDict()
_load_counts = collections.Counter()
_lock = threading.Lock()  # a worker with several threads loads each source once


def _check_int(value, name, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError("DataSource: %s must be an integer >= %d, got %r" % (name, lo, value))
    return int(value)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """
    CIFAR-10 as the notebooks preprocess it (``xdl.data_utils.get_CIFAR10_data``),
    or random images of the same shape.

    Fields:
    - folder: the folder holding cifar-10-batches-py, as the workers see it
      (default None: $XDL_DATA_DIR or ~/.cache/xdl on each worker)
    - num_train, num_val, num_test: split sizes
    - dtype: 'float32' or 'float64'
    - synthetic: random images and labels instead of CIFAR-10 (smoke tests)
    - seed: seed of the synthetic data
    - rows: images as rows of 3072 values plus a bias column of ones, the
      layout of notebook 01's linear classifiers (set by the sweep for them)
    """
    folder: Optional[str] = None
    num_train: int = 49000
    num_val: int = 1000
    num_test: int = 1000
    dtype: str = "float32"
    synthetic: bool = False
    seed: int = 0
    rows: bool = False

    def __post_init__(self):
        if self.folder is not None and not isinstance(self.folder, str):
            raise TypeError("DataSource: folder must be a path string or None, got %r"
                            % (self.folder,))
        _check_int(self.num_train, "num_train", 1)
        _check_int(self.num_val, "num_val", 1)
        _check_int(self.num_test, "num_test", 0)
        _check_int(self.seed, "seed", 0)
        if self.dtype not in ("float32", "float64"):
            raise ValueError("DataSource: dtype must be 'float32' or 'float64', got %r"
                             % (self.dtype,))
        if not self.synthetic and self.num_train + self.num_val > 50000:
            raise ValueError("DataSource: num_train + num_val = %d exceeds CIFAR-10's 50000 "
                             "training images" % (self.num_train + self.num_val))
        if not self.synthetic and self.num_test > 10000:
            raise ValueError("DataSource: num_test = %d exceeds CIFAR-10's 10000 test images"
                             % self.num_test)

    def to_dict(self):
        """The settings as a plain dict (what a trial's id is computed from)."""
        return dataclasses.asdict(self)

    def check_available(self):
        """Raise the data loader's error when CIFAR-10 is not in the folder here."""
        if not self.synthetic:
            folder = data_utils.cifar10_folder(self.folder)
            if not data_utils.is_complete(folder):
                raise FileNotFoundError(
                    "CIFAR-10 is not in %s (python -m xdl.data_utils download, or set "
                    "XDL_DATA_DIR), and the sweep's data source reads it" % folder)


def _read(source):
    dtype = np.dtype(source.dtype)
    if source.synthetic:
        rng = np.random.RandomState(source.seed)
        data = {}
        for split, n in (("train", source.num_train), ("val", source.num_val),
                         ("test", source.num_test)):
            data["X_" + split] = rng.randn(n, 3, 32, 32).astype(dtype)
            data["y_" + split] = rng.randint(10, size=n)
    else:
        data = data_utils.get_CIFAR10_data(
            num_training=source.num_train, num_validation=source.num_val,
            num_test=source.num_test, cifar10_dir=data_utils.cifar10_folder(source.folder),
            dtype=dtype)
    if source.rows:
        for split in ("train", "val", "test"):
            X = data["X_" + split].reshape(data["X_" + split].shape[0], -1)
            data["X_" + split] = np.hstack([X, np.ones((X.shape[0], 1), dtype=dtype)])
    return data


def load(source):
    """
    The arrays of a DataSource, read on the first call in this process and
    then served from memory (the last CACHE_SIZE sources are kept).

    Inputs:
    - source: a DataSource

    Returns:
    - data: dict with X_train, y_train, X_val, y_val, X_test, y_test
      (shared between calls: do not modify it)
    """
    if not isinstance(source, DataSource):
        raise TypeError("load needs a DataSource, got %s" % type(source).__name__)
    with _lock:
        if source in _cache:
            _cache.move_to_end(source)
            return _cache[source]
        data = _read(source)
        _load_counts[source] += 1
        _cache[source] = data
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return data


def load_counts():
    """How many times this process has read each DataSource (for checks)."""
    with _lock:
        return dict(_load_counts)


def clear_cache():
    """Forget the data sets this process has loaded (the next load reads again)."""
    with _lock:
        _cache.clear()
