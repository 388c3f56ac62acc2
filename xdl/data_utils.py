"""CIFAR-10: a loader for the official "python version" files, the
notebooks' preprocessing (``get_CIFAR10_data``) and a downloader.

The data folder is ``cifar-10-batches-py`` inside ``$XDL_DATA_DIR``, or
inside ``~/.cache/xdl`` when that variable is unset. To fetch it:

    python -m xdl.data_utils download            # into the default folder
    python -m xdl.data_utils download --dir DIR  # into DIR/cifar-10-batches-py
"""
import argparse
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
BATCH_FILES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGES_PER_BATCH = 10000  # every official batch file holds 10000 images
PIXELS = 3 * 32 * 32


class CIFAR10Error(ValueError):
    """A CIFAR-10 file or folder is damaged; the message names the file and the fix."""


class DownloadError(ConnectionError):
    """The CIFAR-10 archive could not be downloaded; the message says where to put a copy."""


def default_data_dir():
    """$XDL_DATA_DIR, else ~/.cache/xdl."""
    return os.environ.get("XDL_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "xdl")


def cifar10_folder(path=None):
    """
    Resolve where the CIFAR-10 batches are: ``path`` may be the
    ``cifar-10-batches-py`` folder itself or a folder holding it; None means
    the default data folder.
    """
    path = os.fspath(path) if path is not None else default_data_dir()
    if is_complete(path) or os.path.basename(os.path.normpath(path)) == FOLDER:
        return path
    return os.path.join(path, FOLDER)


def is_complete(folder):
    """True when folder holds all six CIFAR-10 batch files (check_folder reads them)."""
    return all(os.path.isfile(os.path.join(folder, f)) for f in BATCH_FILES)


def _download_command(folder):
    """The command that replaces the cifar-10-batches-py folder `folder`."""
    parent = os.path.dirname(os.path.abspath(folder))
    default = os.path.abspath(default_data_dir())
    return "python -m xdl.data_utils download --force" + (
        "" if parent == default else " --dir %s" % parent)


def check_folder(folder):
    """
    Read and validate every batch file in a cifar-10-batches-py folder.

    Returns a list of (file name, problem) pairs, empty when the folder is
    complete and every file is a valid batch.
    """
    problems = []
    for name in BATCH_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problems.append((name, "missing"))
            continue
        try:
            _read_batch(path)
        except (CIFAR10Error, OSError) as exc:
            problems.append((name, getattr(exc, "problem", str(exc))))
    return problems


def _missing_error(folder):
    missing = [f for f in BATCH_FILES if not os.path.isfile(os.path.join(folder, f))]
    return FileNotFoundError(
        "CIFAR-10 not found in %s (missing %s). Download it (163 MB) with\n"
        "    python -m xdl.data_utils download --dir %s\n"
        "or point XDL_DATA_DIR (or cifar10_dir=) at a folder holding %s/."
        % (folder, ", ".join(missing), os.path.dirname(os.path.abspath(folder)), FOLDER))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles the official batch files, allowing only the NumPy classes they use."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError("CIFAR-10 batch file refers to %s.%s, which a data "
                                         "file never needs; refusing to load it" % (module, name))
        return super().find_class(module, name)


def _damaged(filename, problem):
    exc = CIFAR10Error("CIFAR-10 batch file %s is damaged (%s); replace the folder with `%s` "
                       "(163 MB)" % (filename, problem,
                                     _download_command(os.path.dirname(filename) or ".")))
    exc.problem = problem
    return exc


def _read_batch(filename):
    """
    Unpickle one batch file (through the restricted unpickler) and check it:
    'data' is uint8 of shape (10000, 3072), 'labels' 10000 integers in [0, 10).
    Returns (data, labels as int64); raises CIFAR10Error naming the file.
    """
    with open(filename, "rb") as f:
        try:
            datadict = _BatchUnpickler(f, encoding="latin1").load()
        except Exception as exc:  # a damaged pickle raises many kinds of errors
            raise _damaged(filename, "%s: %s" % (type(exc).__name__, exc)) from None
    if not isinstance(datadict, dict) or "data" not in datadict or "labels" not in datadict:
        raise _damaged(filename, "it holds no 'data' and 'labels'")
    data = datadict["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or \
            data.shape != (IMAGES_PER_BATCH, PIXELS):
        raise _damaged(filename, "data is %s %s, expected uint8 of shape (%d, %d)"
                       % (getattr(data, "dtype", type(data).__name__),
                          getattr(data, "shape", ""), IMAGES_PER_BATCH, PIXELS))
    try:
        labels = np.asarray(datadict["labels"])
    except Exception:
        labels = np.zeros(0, dtype=object)
    if labels.dtype.kind not in "iu" or labels.shape != (IMAGES_PER_BATCH,):
        raise _damaged(filename, "labels are %s %s, expected %d integers"
                       % (labels.dtype, labels.shape, IMAGES_PER_BATCH))
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise _damaged(filename, "labels range over [%d, %d], expected [0, %d)"
                       % (labels.min(), labels.max(), len(CLASSES)))
    return data, labels.astype(np.int64)


def load_CIFAR_batch(filename, dtype=np.float64):
    """
    Load a single batch of CIFAR-10, checking it (a damaged file raises
    CIFAR10Error naming the file and how to replace it).

    Returns a tuple of:
    - X: array of shape (10000, 32, 32, 3) with pixel values 0..255 in dtype
    - y: int64 array of shape (10000,)
    """
    data, labels = _read_batch(filename)
    X = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(dtype)
    return X, labels


def load_CIFAR10(ROOT, dtype=np.float64):
    """
    Load all of CIFAR-10 from the official "python version" folder.

    Inputs:
    - ROOT: the cifar-10-batches-py folder (or a folder holding it)
    - dtype: dtype of the returned images (float64 as in the course code)

    Returns a tuple of:
    - X_train: (50000, 32, 32, 3) images, y_train: (50000,) labels
    - X_test: (10000, 32, 32, 3) images, y_test: (10000,) labels
    """
    folder = cifar10_folder(ROOT)
    if not is_complete(folder):
        raise _missing_error(folder)
    xs, ys = [], []
    for b in range(1, 6):
        X, Y = load_CIFAR_batch(os.path.join(folder, "data_batch_%d" % b), dtype)
        xs.append(X)
        ys.append(Y)
    Xtr = np.concatenate(xs)
    Ytr = np.concatenate(ys)
    Xte, Yte = load_CIFAR_batch(os.path.join(folder, "test_batch"), dtype)
    return Xtr, Ytr, Xte, Yte


def get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=1000,
                     subtract_mean=True, cifar10_dir=None, dtype=np.float32):
    """
    Load the CIFAR-10 dataset from disk and perform preprocessing to prepare
    it for classifiers: the validation set is the num_validation images after
    the first num_training training images, the mean training image is
    subtracted, and images are transposed to (N, 3, 32, 32).

    Inputs:
    - num_training, num_validation, num_test: split sizes
    - subtract_mean: subtract the mean training image from every split
    - cifar10_dir: the data folder (default: $XDL_DATA_DIR or ~/.cache/xdl)
    - dtype: dtype of the image arrays (float32 halves memory; models cast
      minibatches to their own dtype)

    Returns a dict with X_train, y_train, X_val, y_val, X_test, y_test.
    """
    for name, v in (("num_training", num_training), ("num_validation", num_validation),
                    ("num_test", num_test)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError("%s must be an integer >= 0, got %r" % (name, v))
    if num_training + num_validation > 50000:
        raise ValueError("num_training + num_validation = %d exceeds the 50000 training images"
                         % (num_training + num_validation))
    if num_test > 10000:
        raise ValueError("num_test = %d exceeds the 10000 test images" % num_test)
    X_train, y_train, X_test, y_test = load_CIFAR10(cifar10_folder(cifar10_dir), dtype=dtype)

    X_val = X_train[num_training:num_training + num_validation]
    y_val = y_train[num_training:num_training + num_validation]
    X_train = X_train[:num_training]
    y_train = y_train[:num_training]
    X_test = X_test[:num_test]
    y_test = y_test[:num_test]

    if subtract_mean:
        mean_image = X_train.mean(axis=0, dtype=np.float64).astype(dtype)
        X_train = X_train - mean_image
        X_val = X_val - mean_image
        X_test = X_test - mean_image

    def nchw(a):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))

    return {
        "X_train": nchw(X_train), "y_train": y_train,
        "X_val": nchw(X_val), "y_val": y_val,
        "X_test": nchw(X_test), "y_test": y_test,
    }


# ---------------------------------------------------------------------------
# Downloader
# ---------------------------------------------------------------------------


def _progress(done, total, start, stream):
    mb = 1024 * 1024
    rate = done / mb / max(time.time() - start, 1e-9)
    if total:
        stream.write("\rdownloading CIFAR-10: %6.1f / %.1f MB (%3d%%) %5.1f MB/s"
                     % (done / mb, total / mb, 100 * done // total, rate))
    else:
        stream.write("\rdownloading CIFAR-10: %6.1f MB %5.1f MB/s" % (done / mb, rate))
    stream.flush()


def _fetch(url, dest_file, timeout, progress):
    """Stream url into dest_file, returning the MD5 hex digest of the bytes."""
    digest = hashlib.md5()
    start = time.time()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            with open(dest_file, "wb") as out:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        _progress(done, total, start, sys.stderr)
            if total and done != total:
                raise ConnectionError("download of %s ended early: got %d of %d bytes"
                                      % (url, done, total))
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, ConnectionError):
            raise
        raise ConnectionError("cannot download %s: %s" % (url, exc)) from None
    finally:
        if progress:
            sys.stderr.write("\n")
    return digest.hexdigest()


def _safe_extract(archive, target):
    """Extract a tar.gz into target, refusing links and paths that leave target."""
    with tarfile.open(archive, "r:gz") as tar:
        root = os.path.realpath(target)
        for member in tar.getmembers():
            path = os.path.realpath(os.path.join(target, member.name))
            if not (path == root or path.startswith(root + os.sep)):
                raise ValueError("archive member %r would be written outside %s"
                                 % (member.name, target))
            if not (member.isfile() or member.isdir()):
                raise ValueError("archive member %r is not a plain file or folder" % member.name)
        tar.extractall(target, filter="data") if hasattr(tarfile, "data_filter") \
            else tar.extractall(target)


def _offline_advice(data_dir):
    return ("without internet, put a copy of %s/ in %s yourself, or point XDL_DATA_DIR at a "
            "folder holding one" % (FOLDER, os.path.abspath(data_dir)))


def _swap_in(new, final):
    """
    Put folder `new` at `final`, replacing what is there: the old folder is
    renamed aside, the new one renamed into place, then the old one removed
    (restored if the second rename fails). Readers see the old or the new
    folder, never a mix of their files.
    """
    if not os.path.exists(final):
        os.replace(new, final)
        return
    aside = tempfile.mkdtemp(prefix=".%s-old-" % FOLDER, dir=os.path.dirname(final))
    old = os.path.join(aside, FOLDER)
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def download_cifar10(data_dir=None, url=CIFAR10_URL, md5=CIFAR10_MD5, timeout=60,
                     progress=True, force=False):
    """
    Download the official CIFAR-10 "python version" archive, check its MD5,
    and extract it to ``<data_dir>/cifar-10-batches-py``.

    Nothing is written into place until the checksum has passed, the archive
    is extracted and every batch file is valid: a failed or corrupted
    download leaves no partial folder behind (the partial archive is removed
    too), and an existing folder is replaced in one rename.

    Inputs:
    - data_dir: folder to hold cifar-10-batches-py (default $XDL_DATA_DIR or
      ~/.cache/xdl)
    - url, md5: where to download from and the expected MD5 of the archive
    - timeout: seconds to wait for the server on each read
    - progress: print a progress line to stderr
    - force: download even when the folder is there, and replace it (for a
      damaged copy); without force a damaged folder raises CIFAR10Error

    Returns the path of the cifar-10-batches-py folder. Raises DownloadError
    (a ConnectionError) when the archive cannot be downloaded.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    final = os.path.join(data_dir, FOLDER)
    if is_complete(final) and not force:
        problems = check_folder(final)
        if not problems:
            return final
        name, problem = problems[0]
        raise _damaged(os.path.join(final, name), problem)
    os.makedirs(data_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".xdl-download-", dir=data_dir)
    try:
        archive = os.path.join(work, "cifar-10-python.tar.gz")
        try:
            got = _fetch(url, archive, timeout, progress)
        except ConnectionError as exc:
            raise DownloadError("CIFAR-10 download failed: %s; %s"
                                % (exc, _offline_advice(data_dir))) from None
        if md5 is not None and got != md5:
            raise ValueError("MD5 mismatch for %s: expected %s, got %s; the download is "
                             "corrupted (it was deleted), please try again" % (url, md5, got))
        extracted = os.path.join(work, "extracted")
        os.mkdir(extracted)
        _safe_extract(archive, extracted)
        folder = os.path.join(extracted, FOLDER)
        problems = check_folder(folder)
        if problems:
            raise ValueError("the archive from %s does not hold a valid %s/: %s"
                             % (url, FOLDER, "; ".join("%s: %s" % p for p in problems)))
        _swap_in(folder, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m xdl.data_utils", description="Get the CIFAR-10 data set for xdl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="Download the official archive, check it and "
                                         "extract it.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dl.add_argument("--dir", default=default_data_dir(),
                    help="The folder to put %s/ in." % FOLDER)
    dl.add_argument("--force", action="store_true",
                    help="Download even if the folder is there, and replace it (use this for "
                         "a damaged copy).")
    dl.add_argument("--url", default=CIFAR10_URL, help="Where to download the archive from.")
    dl.add_argument("--md5", default=CIFAR10_MD5, help="The archive's expected MD5.")
    where = sub.add_parser("where", help="Print the folder xdl reads CIFAR-10 from and check "
                                         "every file in it.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where.add_argument("--dir", default=default_data_dir(),
                       help="The folder holding %s/ (or that folder itself)." % FOLDER)
    args = parser.parse_args(argv)
    if args.command == "where":
        folder = cifar10_folder(args.dir)
        problems = check_folder(folder)
        if not problems:
            print(folder, "(complete: all %d batch files checked)" % len(BATCH_FILES))
            return 0
        if all(problem == "missing" for _, problem in problems):
            print(folder, "(missing %s; get it with `python -m xdl.data_utils download`)"
                  % ", ".join(name for name, _ in problems))
        else:
            print(folder, "(damaged: %s; replace it with `%s`)"
                  % ("; ".join("%s: %s" % p for p in problems), _download_command(folder)))
        return 1
    try:
        folder = download_cifar10(args.dir, url=args.url, md5=args.md5, force=args.force)
    except (ConnectionError, ValueError) as exc:
        print("error:", exc, file=sys.stderr)
        return 1
    print("CIFAR-10 is in", folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
