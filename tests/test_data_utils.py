"""The CIFAR-10 loader (on a tiny copy of the official layout the tests
write) and the downloader (against a loopback HTTP server)."""
import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading

import numpy as np
import pytest

from xdl import data_utils
from xdl.data_utils import (download_cifar10, get_CIFAR10_data, load_CIFAR10,
                            load_CIFAR_batch)

PER_BATCH = 12


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """The tests write batches of PER_BATCH images; the official ones hold 10000."""
    monkeypatch.setattr(data_utils, "IMAGES_PER_BATCH", PER_BATCH)


def write_fake_cifar(folder, per_batch=PER_BATCH, seed=0):
    """Write data_batch_1..5, test_batch and batches.meta as the official files are:
    pickled dicts with uint8 'data' rows of 1024 R, 1024 G, 1024 B values."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    images = {}
    for name in data_utils.BATCH_FILES:
        nhwc = rng.randint(0, 256, size=(per_batch, 32, 32, 3)).astype(np.uint8)
        labels = [int(v) for v in rng.randint(10, size=per_batch)]
        obj = {"batch_label": name, "labels": labels,
               "data": nhwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
               "filenames": ["img_%d.png" % i for i in range(per_batch)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)
        images[name] = (nhwc, np.array(labels))
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": data_utils.CLASSES, "num_vis": 3072}, f, protocol=2)
    return images


def test_load_cifar10_reads_official_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    images = write_fake_cifar(str(folder))
    Xtr, ytr, Xte, yte = load_CIFAR10(str(folder))
    assert Xtr.shape == (5 * PER_BATCH, 32, 32, 3) and Xtr.dtype == np.float64
    assert Xte.shape == (PER_BATCH, 32, 32, 3) and yte.shape == (PER_BATCH,)
    np.testing.assert_array_equal(Xtr[:PER_BATCH], images["data_batch_1"][0])
    np.testing.assert_array_equal(ytr[-PER_BATCH:], images["data_batch_5"][1])
    np.testing.assert_array_equal(Xte, images["test_batch"][0])
    # the parent folder works too
    Xtr2, _, _, _ = load_CIFAR10(str(tmp_path))
    np.testing.assert_array_equal(Xtr, Xtr2)


def test_get_cifar10_data_splits_and_preprocesses(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(str(folder))
    raw_tr, ytr, raw_te, yte = load_CIFAR10(str(folder))
    data = get_CIFAR10_data(num_training=50, num_validation=10, num_test=5,
                            cifar10_dir=str(folder))
    assert {k: v.shape for k, v in data.items()} == {
        "X_train": (50, 3, 32, 32), "y_train": (50,), "X_val": (10, 3, 32, 32),
        "y_val": (10,), "X_test": (5, 3, 32, 32), "y_test": (5,)}
    assert data["X_train"].dtype == np.float32 and data["X_train"].flags.c_contiguous
    mean = raw_tr[:50].mean(axis=0)
    np.testing.assert_allclose(data["X_val"], (raw_tr[50:60] - mean).transpose(0, 3, 1, 2),
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(data["y_test"], yte[:5])
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0, atol=1e-3)
    raw = get_CIFAR10_data(num_training=50, num_validation=10, num_test=5,
                           cifar10_dir=str(folder), subtract_mean=False, dtype=np.float64)
    np.testing.assert_array_equal(raw["X_train"], raw_tr[:50].transpose(0, 3, 1, 2))


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDL_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        get_CIFAR10_data()
    msg = str(info.value)
    assert "CIFAR-10 not found in %s" % (tmp_path / "cifar-10-batches-py") in msg
    assert "python -m xdl.data_utils download" in msg and "XDL_DATA_DIR" in msg


def test_default_folder_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDL_DATA_DIR", str(tmp_path))
    assert data_utils.cifar10_folder() == str(tmp_path / "cifar-10-batches-py")
    monkeypatch.delenv("XDL_DATA_DIR")
    assert data_utils.default_data_dir() == os.path.join(os.path.expanduser("~"), ".cache",
                                                         "xdl")


def test_split_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exceeds the 50000 training images"):
        get_CIFAR10_data(num_training=49500, num_validation=1000, cifar10_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_test must be an integer >= 0"):
        get_CIFAR10_data(num_test=-1, cifar10_dir=str(tmp_path))


def test_batch_loader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(data_utils.CIFAR10Error, match="data_batch_1 is damaged .*refusing to "
                                                      "load it"):
        load_CIFAR_batch(str(path))


def write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f, protocol=2)


def good_rows(n=PER_BATCH):
    return np.zeros((n, 3072), np.uint8)


@pytest.mark.parametrize("data, labels, problem", [
    (np.zeros((PER_BATCH, 100), np.uint8), [0] * PER_BATCH,
     r"data is uint8 \(12, 100\), expected uint8 of shape \(12, 3072\)"),
    (np.zeros((PER_BATCH - 1, 3072), np.uint8), [0] * (PER_BATCH - 1),
     r"data is uint8 \(11, 3072\), expected uint8 of shape \(12, 3072\)"),
    (np.zeros((PER_BATCH, 3072), np.int64), [0] * PER_BATCH,
     r"data is int64 \(12, 3072\), expected uint8"),
    (good_rows(), [0] * (PER_BATCH - 1), r"labels are int64 \(11,\), expected 12 integers"),
    (good_rows(), [0.5] * PER_BATCH, r"labels are float64 \(12,\), expected 12 integers"),
    (good_rows(), [0] * (PER_BATCH - 1) + [10],
     r"labels range over \[0, 10\], expected \[0, 10\)"),
    (good_rows(), [-1] + [0] * (PER_BATCH - 1), r"labels range over \[-1, 0\]"),
])
def test_batch_loader_checks_contents(tmp_path, data, labels, problem):
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.parent.mkdir()
    write_batch(path, data, labels)
    with pytest.raises(data_utils.CIFAR10Error) as info:
        load_CIFAR_batch(str(path))
    msg = str(info.value)
    assert re.search(problem, msg), msg
    assert msg.startswith("CIFAR-10 batch file %s is damaged (" % path) and "\n" not in msg
    assert "python -m xdl.data_utils download --force --dir %s" % tmp_path in msg


def test_truncated_batch_names_the_file_and_the_fix(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(str(folder))
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    for load in (lambda: load_CIFAR_batch(str(path)), lambda: load_CIFAR10(str(folder)),
                 lambda: get_CIFAR10_data(num_training=40, num_validation=10,
                                          cifar10_dir=str(folder))):
        with pytest.raises(data_utils.CIFAR10Error,
                           match="CIFAR-10 batch file %s is damaged \\((UnpicklingError|EOFError)"
                                 % re.escape(str(path))) as info:
            load()
        assert "download --force --dir %s" % tmp_path in str(info.value)
    # the default folder's fix needs no --dir
    monkeypatch.setenv("XDL_DATA_DIR", str(tmp_path))
    with pytest.raises(data_utils.CIFAR10Error, match="`python -m xdl.data_utils download "
                                                      "--force` \\(163 MB\\)$"):
        load_CIFAR_batch(str(path))


def test_official_batch_size_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(data_utils, "IMAGES_PER_BATCH", 10000)
    rng = np.random.RandomState(0)
    data = rng.randint(0, 256, size=(10000, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.randint(10, size=10000)]
    path = tmp_path / "data_batch_1"
    write_batch(path, data, labels)
    X, y = load_CIFAR_batch(str(path), dtype=np.float32)
    assert X.shape == (10000, 32, 32, 3) and y.shape == (10000,) and y.dtype == np.int64
    np.testing.assert_array_equal(X[5, :, :, 1].ravel(), data[5, 1024:2048])
    write_batch(path, data[:12], labels[:12])  # a test-sized batch is not a real one
    with pytest.raises(data_utils.CIFAR10Error, match=r"expected uint8 of shape \(10000, 3072\)"):
        load_CIFAR_batch(str(path))


def test_where_checks_every_file(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    assert data_utils.main(["where", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("%s (missing data_batch_1, " % folder) and "download" in out
    write_fake_cifar(str(folder))
    assert data_utils.main(["where", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "%s (complete: all 6 batch files checked)\n" % folder
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    assert data_utils.main(["where", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("%s (damaged: test_batch: " % folder)
    assert "download --force --dir %s" % tmp_path in out


# --- downloader -----------------------------------------------------------------------


def make_archive(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    write_fake_cifar(str(src))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(src), arcname="cifar-10-batches-py")
    data = buf.getvalue()
    return data, hashlib.md5(data).hexdigest()


class Server:
    """A loopback HTTP server answering every GET with `body`."""

    def __init__(self, body, declared_length=None):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(declared_length or len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.body = body
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/cifar-10-python.tar.gz" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_good_archive(tmp_path, capsys):
    body, md5 = make_archive(tmp_path)
    dest = tmp_path / "data"
    with Server(body) as server:
        folder = download_cifar10(str(dest), url=server.url, md5=md5, timeout=10)
    assert folder == str(dest / "cifar-10-batches-py")
    Xtr, ytr, Xte, yte = load_CIFAR10(folder)
    assert Xtr.shape == (5 * PER_BATCH, 32, 32, 3) and Xte.shape == (PER_BATCH, 32, 32, 3)
    assert sorted(os.listdir(dest)) == ["cifar-10-batches-py"]  # temp files removed
    assert "downloading CIFAR-10:" in capsys.readouterr().err
    # a second call finds the complete folder and does not download again
    assert download_cifar10(str(dest), url="http://127.0.0.1:9/never", md5=md5) == folder


def test_download_corrupted_archive_leaves_nothing(tmp_path):
    body, md5 = make_archive(tmp_path)
    corrupted = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
    dest = tmp_path / "data"
    with Server(corrupted) as server:
        with pytest.raises(ValueError, match="MD5 mismatch .* expected %s" % md5):
            download_cifar10(str(dest), url=server.url, md5=md5, progress=False)
    assert os.listdir(dest) == []


def test_download_truncated_transfer_leaves_nothing(tmp_path):
    body, md5 = make_archive(tmp_path)
    dest = tmp_path / "data"
    with Server(body[:len(body) // 2], declared_length=len(body)) as server:
        with pytest.raises(ConnectionError):
            download_cifar10(str(dest), url=server.url, md5=md5, progress=False, timeout=5)
    assert os.listdir(dest) == []


def test_download_server_gone(tmp_path):
    body, md5 = make_archive(tmp_path)
    with Server(body) as server:
        url = server.url
    dest = tmp_path / "data"
    with pytest.raises(data_utils.DownloadError) as info:
        download_cifar10(str(dest), url=url, md5=md5, progress=False, timeout=5)
    assert os.listdir(dest) == []
    msg = str(info.value)  # one line: the download failed, where the folder goes, XDL_DATA_DIR
    assert "\n" not in msg and msg.startswith("CIFAR-10 download failed: cannot download "
                                              "http://127.0.0.1")
    assert "put a copy of cifar-10-batches-py/ in %s yourself, or point XDL_DATA_DIR" % dest \
        in msg


def test_download_without_force_refuses_a_damaged_folder(tmp_path):
    dest = tmp_path / "data"
    write_fake_cifar(str(dest / "cifar-10-batches-py"))
    path = dest / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(b"garbage")
    with pytest.raises(data_utils.CIFAR10Error, match="data_batch_4 is damaged .*download "
                                                      "--force --dir"):
        download_cifar10(str(dest), url="http://127.0.0.1:9/never", progress=False)


def test_download_force_replaces_a_damaged_folder(tmp_path, capsys):
    body, md5 = make_archive(tmp_path)
    dest = tmp_path / "data"
    folder = dest / "cifar-10-batches-py"
    write_fake_cifar(str(folder), seed=7)
    (folder / "data_batch_4").write_bytes(b"garbage")
    (folder / "stray_file").write_text("from the damaged copy")
    # a failed forced download leaves the old folder as it was
    with Server(body[:10], declared_length=len(body)) as server:
        with pytest.raises(data_utils.DownloadError):
            download_cifar10(str(dest), url=server.url, md5=md5, progress=False, timeout=5,
                             force=True)
    assert (folder / "data_batch_4").read_bytes() == b"garbage"
    with Server(body) as server:
        rc = data_utils.main(["download", "--dir", str(dest), "--url", server.url,
                              "--md5", md5, "--force"])
    assert rc == 0
    assert sorted(os.listdir(dest)) == ["cifar-10-batches-py"]  # nothing left aside
    assert not (folder / "stray_file").exists()  # the whole folder was replaced
    assert data_utils.check_folder(str(folder)) == []
    expected = load_CIFAR10(str(tmp_path / "src" / "cifar-10-batches-py"))
    np.testing.assert_array_equal(load_CIFAR10(str(folder))[0], expected[0])


def test_download_rejects_archive_escaping_its_folder(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    body = buf.getvalue()
    dest = tmp_path / "data"
    with Server(body) as server:
        with pytest.raises(ValueError, match="outside"):
            download_cifar10(str(dest), url=server.url, md5=hashlib.md5(body).hexdigest(),
                             progress=False)
    assert not (tmp_path / "evil.txt").exists() and os.listdir(dest) == []


def test_download_command_line(tmp_path, capsys):
    body, md5 = make_archive(tmp_path)
    with Server(body) as server:
        rc = data_utils.main(["download", "--dir", str(tmp_path / "d"), "--url", server.url,
                              "--md5", md5])
    assert rc == 0 and "CIFAR-10 is in" in capsys.readouterr().out
    rc = data_utils.main(["download", "--dir", str(tmp_path / "e"), "--url", server.url,
                          "--md5", md5])
    assert rc == 1 and "error: CIFAR-10 download failed: cannot download" in \
        capsys.readouterr().err
