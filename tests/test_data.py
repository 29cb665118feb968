import functools
import gzip
import http.server
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch

from certkit.data import DataError, load_dataset


def test_digits_is_embedded():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.x.shape == (1437, 1, 8, 8) and te.x.shape == (360, 1, 8, 8)
    assert 0 <= tr.x.min() and tr.x.max() <= 1 and tr.x.dtype == torch.float32
    assert set(tr.y.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_data(mnist_dir, name):
    if not (mnist_dir / name).is_dir():
        pytest.skip(f"{name} not in {mnist_dir}")
    te = load_dataset(name, "test", mnist_dir)
    assert te.x.shape == (10000, 1, 28, 28) and te.y.shape == (10000,)
    assert te.x.min() == 0 and te.x.max() == 1
    assert torch.bincount(te.y).min() > 800
    tr = load_dataset(name, "train", mnist_dir)
    assert len(tr) == 60000


def _copy_mnist(src, dst):
    (dst / "mnist").mkdir(parents=True)
    for f in (src / "mnist").glob("t10k-*"):
        shutil.copy(f, dst / "mnist" / f.name)
    return dst / "mnist"


def test_corrupt_and_truncated_files(mnist_dir, tmp_path):
    folder = _copy_mnist(mnist_dir, tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 256])))  # one label changed
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("mnist", "test", tmp_path, download=False)
    labels.write_bytes(labels.read_bytes()[:100])  # a truncated download
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("mnist", "test", tmp_path, download=False)


def test_uncompressed_files_are_accepted(mnist_dir, tmp_path):
    folder = _copy_mnist(mnist_dir, tmp_path)
    for f in folder.glob("*.gz"):
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    assert len(load_dataset("mnist", "test", tmp_path)) == 10000


def test_missing_files_name_the_files(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*CERTKIT_DATA"):
        load_dataset("mnist", "test", tmp_path, download=False)
    # no network answers: the download fails fast and the error names the files, leaving no partial file
    with pytest.raises(DataError, match="could not be downloaded"):
        load_dataset("mnist", "test", tmp_path, mirrors=["http://127.0.0.1:9/"])
    assert not any((tmp_path / "mnist").iterdir())


def test_download_from_a_local_server(mnist_dir, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mnist_dir / "mnist"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        te = load_dataset("mnist", "test", tmp_path, mirrors=["http://127.0.0.1:9/", url])
        assert len(te) == 10000
        assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    finally:
        server.shutdown()


def test_cifar_batches_are_checked(shared, tmp_path):
    x = np.load(shared / "data/cifar10/cifar10_test_first1000_nhwc_uint8.npy")
    y = np.load(shared / "data/cifar10/cifar10_test_first1000_labels.npy")
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": y.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="checksum mismatch"):  # not the standard file
        load_dataset("cifar10", "test", tmp_path)
    d = load_dataset("cifar10", "test", tmp_path, verify=False)
    assert d.x.shape == (1000, 3, 32, 32)
    assert torch.allclose(d.x[0].permute(1, 2, 0), torch.from_numpy(x[0]).float() / 255)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet")


def test_cifar_from_the_tar_archive(shared, tmp_path):
    import tarfile

    x = np.load(shared / "data/cifar10/cifar10_test_first1000_nhwc_uint8.npy")[:10]
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "test_batch").write_bytes(pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(10, -1),
                                                   b"labels": list(range(10))}))
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", "test", tmp_path)
    d = load_dataset("cifar10", "test", tmp_path, verify=False)
    assert d.x.shape == (10, 3, 32, 32) and d.y.tolist() == list(range(10))


def test_svhn_mat_layout(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [3], [4]])})
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("svhn", "test", tmp_path)
    d = load_dataset("svhn", "test", tmp_path, verify=False)
    assert d.x.shape == (5, 3, 32, 32) and d.y.tolist() == [0, 1, 2, 3, 4]  # label 10 is the digit 0
    assert torch.allclose(d.x[1, :, 4, 7], torch.from_numpy(X[4, 7, :, 1]).float() / 255)
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("svhn", "test", tmp_path, verify=False)
