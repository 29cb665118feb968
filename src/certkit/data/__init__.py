"""Data sets from their standard distribution files, as float tensors in [0, 1], NCHW.

``load_dataset(name, split, root=None, download=True)`` looks in ``root``, else ``$CERTKIT_DATA``, else
``~/.cache/certkit/data``, for ``<root>/<name>/<files>``. Missing files are downloaded from the canonical
source when the network allows (written to a temporary file, checked, then renamed, so a failed download
leaves nothing behind); otherwise the error names the files and where to put them. Every file is checked
against its published MD5 (for MNIST-style IDX files, the MD5 of the uncompressed bytes, so ``.gz`` and
extracted files are both accepted). A corrupt or truncated file is an error, never a partial data set.

scikit-learn's bundled 8×8 digits (``digits``) needs no files: it is the embedded default.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from certkit.errors import CertkitError


class DataError(CertkitError, RuntimeError):
    """A data file is missing, corrupt or truncated."""


@dataclass
class Dataset:
    """An in-memory data set: ``x`` float in [0, 1] (N, C, H, W), ``y`` int64 (N,)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel training-set statistics, for a Normalize layer
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, start: int = 0, stop: int | None = None, step: int = 1) -> Dataset:
        return Dataset(self.name, self.x[start:stop:step], self.y[start:stop:step], self.num_classes,
                       self.mean, self.std)


# name -> (files per split, {file: md5}, mirrors, mean, std, classes)
_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "svhn": ["http://ufldl.stanford.edu/housenumbers/"],
}
_CIFAR_ARCHIVE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
_CIFAR_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_SVHN_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "digits": ((0.3054,), (0.3884,)),
}
NAMES = ("mnist", "fashion-mnist", "cifar10", "svhn", "digits")


def data_root(root: str | os.PathLike | None = None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("CERTKIT_DATA"):
        return Path(os.environ["CERTKIT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "certkit" / "data"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _download(name: str, filename: str, dest: Path, mirrors: list[str] | None = None, timeout: float = 30) -> bool:
    """Fetch ``filename`` from the first mirror that answers; False when none does (no network)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for base in mirrors if mirrors is not None else MIRRORS[name]:
        url = base.rstrip("/") + "/" + filename
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            os.replace(tmp, dest)
            return True
        except (urllib.error.URLError, OSError, TimeoutError):
            continue
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return False


def _missing_error(name: str, folder: Path, files: list[str]) -> DataError:
    return DataError(
        f"{name}: missing file(s) {', '.join(files)} in {folder} and they could not be downloaded. Put the standard"
        f" distribution files there (or set CERTKIT_DATA / pass --data-dir to the folder that holds '{name}/')."
    )


def _fetch(name: str, folder: Path, candidates: list[str], download: bool, mirrors) -> Path:
    """The first existing candidate file, else the first downloaded one."""
    for c in candidates:
        if (folder / c).exists():
            return folder / c
    if download and _download(name, candidates[0], folder / candidates[0], mirrors):
        return folder / candidates[0]
    raise _missing_error(name, folder, candidates[:1])


def _read_idx(path: Path, md5: str, verify: bool) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise DataError(f"{path} is corrupt or truncated ({e}); delete it to download it again") from e
    if verify and _md5(raw) != md5:
        raise DataError(f"{path}: checksum mismatch (expected MD5 {md5} of the uncompressed data); the file is"
                        " corrupt or not the standard one. Delete it to download it again.")
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {len(body)} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _load_idx(name, folder, split, download, verify, mirrors):
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = f"{prefix}-{kind}"
        path = _fetch(name, folder, [base + ".gz", base], download, mirrors)
        arrays.append(_read_idx(path, _IDX_MD5[name][base], verify))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(f"{name} {split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load_cifar(folder, split, download, verify, mirrors):
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    extracted = folder / "cifar-10-batches-py"
    subset = folder / "cifar10_test_first1000_nhwc_uint8.npy", folder / "cifar10_test_first1000_labels.npy"
    if split == "test" and not (extracted / "test_batch").exists() and all(f.exists() for f in subset):
        warnings.warn(f"{folder}: only the first 1,000 CIFAR-10 test images are there (the .npy subset); "
                      "put cifar-10-batches-py beside them for the full test set", stacklevel=3)
        try:
            x, y = np.load(subset[0]), np.load(subset[1])
        except (OSError, ValueError) as e:
            raise DataError(f"{subset[0]} or its labels are corrupt ({e})") from e
        if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
            raise DataError(f"{subset[0]}: expected uint8 (N, 32, 32, 3) images and N labels, got {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))
    if not all((extracted / b).exists() for b in batches):
        archive = _fetch("cifar10", folder, [_CIFAR_ARCHIVE[0]], download, mirrors)
        if verify and _md5(archive.read_bytes()) != _CIFAR_ARCHIVE[1]:
            raise DataError(f"{archive}: checksum mismatch (expected MD5 {_CIFAR_ARCHIVE[1]}); delete it and retry")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive} is corrupt or truncated ({e})") from e
    xs, ys = [], []
    for b in batches:
        path = extracted / b
        if not path.exists():
            raise _missing_error("cifar10", extracted, [b])
        raw = path.read_bytes()
        if verify and _md5(raw) != _CIFAR_MD5[b]:
            raise DataError(f"{path}: checksum mismatch (expected MD5 {_CIFAR_MD5[b]})")
        try:
            d = pickle.loads(raw, encoding="bytes")  # noqa: S301 — the standard format; checksum verified above
            data, labels = d[b"data"], d[b"labels"]
        except Exception as e:
            raise DataError(f"{path} is not a CIFAR-10 python batch ({e})") from e
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_svhn(folder, split, download, verify, mirrors):
    from scipy.io import loadmat

    fname = f"{split}_32x32.mat"
    path = _fetch("svhn", folder, [fname], download, mirrors)
    if verify and _md5(path.read_bytes()) != _SVHN_MD5[fname]:
        raise DataError(f"{path}: checksum mismatch (expected MD5 {_SVHN_MD5[fname]})")
    try:
        mat = loadmat(path)
    except Exception as e:
        raise DataError(f"{path} is corrupt or not a SVHN .mat file ({e})") from e
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
    y = mat["y"].astype(np.int64).flatten() % 10  # SVHN labels the digit 0 as 10
    return torch.from_numpy(x), torch.from_numpy(y)


def _load_digits(split: str, seed: int = 0):
    """The 1,797 8×8 digits (UCI optical recognition of handwritten digits, test part; as scikit-learn ships
    them), bundled as ``digits.npz``: pixel counts 0–16 and labels."""
    with np.load(Path(__file__).with_name("digits.npz")) as d:
        images, target = d["images"], d["target"]
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = 1437  # 80 % / 20 %
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return x[idx], y[idx]


def load_dataset(
    name: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    mirrors: list[str] | None = None,
) -> Dataset:
    """Load ``split`` ('train' or 'test') of ``name`` (one of :data:`NAMES`)."""
    name = name.lower().replace("_", "-")
    name = {"fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar": "cifar10"}.get(name, name)
    if name not in NAMES:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(NAMES)}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_root(root) / name
    if name == "digits":
        x, y = _load_digits(split)
    elif name in _IDX_MD5:
        x, y = _load_idx(name, folder, split, download, verify, mirrors)
    elif name == "cifar10":
        x, y = _load_cifar(folder, split, download, verify, mirrors)
    else:
        x, y = _load_svhn(folder, split, download, verify, mirrors)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    mean, std = STATS[name]
    return Dataset(name, x.contiguous(), y, 10, mean, std)


__all__ = ["DataError", "Dataset", "MIRRORS", "NAMES", "STATS", "data_root", "load_dataset"]
