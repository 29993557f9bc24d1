"""Datasets as whole tensors: IDX reader, shipped MNIST, Fashion-MNIST, sklearn digits.

The trainer never touches a Dataset/DataLoader: a dataset here is four tensors that
live on the training device, and an epoch is an index permutation of them.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .config import ParamError

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IDX_FILES = tuple(MNIST_MD5)
# Fixed seed for train_subset: siblings must train on the same subset whatever their seeds.
SUBSET_SEED = 20160101
# Normalisation of the standard MNIST example; applied to every dataset for comparability.
MEAN, STD = 0.1307, 0.3081

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ParamError):
    """A data file is missing or malformed. The message names the file."""


def shipped_mnist_dir() -> Path:
    return Path(str(resources.files("weightspace.mnist")))


def read_idx(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a raw or gzipped IDX file; return (array, md5 of the uncompressed bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"data file {path}: cannot read ({e.__class__.__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"data file {path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"data file {path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    n = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != n:
        raise DataError(
            f"data file {path}: expected {n} data bytes for shape {shape}, found {len(raw) - header}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr, hashlib.md5(raw).hexdigest()


def _find(directory: Path, stem: str) -> Path:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = directory / cand
        if p.is_file():
            return p
    raise DataError(f"data_dir {directory}: missing IDX file {stem}[.gz] "
                    f"(expected {', '.join(s + '[.gz]' for s in IDX_FILES)})")


def load_idx_dir(directory: str | Path, verify_md5: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data_dir {directory}: not a directory")
    out = {}
    for stem in IDX_FILES:
        path = _find(directory, stem)
        arr, md5 = read_idx(path)
        if verify_md5 is not None and md5 != verify_md5[stem]:
            raise DataError(f"data file {path}: MD5 {md5} does not match the published {verify_md5[stem]}")
        out[stem] = arr
    for split in ("train", "t10k"):
        x, y = out[f"{split}-images-idx3-ubyte"], out[f"{split}-labels-idx1-ubyte"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"data_dir {directory}: {split} images {x.shape} and labels {y.shape} do not match"
            )
    return out


@dataclass
class Data:
    """A dataset as tensors: images (N, 1, 28, 28) float32 normalised, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = ""

    def to(self, device: torch.device | str) -> "Data":
        return Data(
            *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)), name=self.name
        )


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1)
    if xt.max() > 1.5:  # uint8 pixels
        xt = xt / 255.0
    return (xt - MEAN) / STD, torch.from_numpy(np.asarray(y, dtype=np.int64))


def _from_idx(directory: Path, name: str, verify: dict[str, str] | None) -> Data:
    arrs = load_idx_dir(directory, verify)
    xtr, ytr = _to_tensors(arrs["train-images-idx3-ubyte"], arrs["train-labels-idx1-ubyte"])
    xte, yte = _to_tensors(arrs["t10k-images-idx3-ubyte"], arrs["t10k-labels-idx1-ubyte"])
    return Data(xtr, ytr, xte, yte, name=name)


def _digits() -> Data:
    """scikit-learn's bundled 8x8 digits, upsampled to 28x28 (bilinear), fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 5
    te, tr = perm[:n_test], perm[n_test:]
    x = (x - MEAN) / STD
    return Data(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te], name="digits")


def _fashion(data_dir: str) -> Data:
    if data_dir:
        return _from_idx(Path(data_dir), "fashion_mnist", None)
    try:  # Not offline: only when the user asks for it without a data_dir.
        from torchvision.datasets import FashionMNIST
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise DataError(f"dataset fashion_mnist needs data_dir or torchvision ({e})") from None
    root = Path.home() / ".cache" / "weightspace"
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:
        raise DataError(f"dataset fashion_mnist: download failed ({e.__class__.__name__}); "
                        "pass data_dir with the four IDX files") from None
    return _from_idx(root / "FashionMNIST" / "raw", "fashion_mnist", None)


def load_dataset(name: str, data_dir: str = "", train_subset: int = 0) -> Data:
    """Load a dataset by name as CPU tensors; ``train_subset`` > 0 keeps a fixed seeded subset."""
    if name == "mnist":
        if data_dir:
            data = _from_idx(Path(data_dir), "mnist", None)
        else:
            data = _from_idx(shipped_mnist_dir(), "mnist", MNIST_MD5)
    elif name == "fashion_mnist":
        data = _fashion(data_dir)
    elif name == "digits":
        data = _digits()
    else:
        raise ParamError(f"parameter 'dataset': expected one of mnist, fashion_mnist, digits, got {name!r}")
    if train_subset:
        n = len(data.y_train)
        if train_subset > n:
            raise ParamError(f"parameter 'train_subset': expected at most {n} for {name}, got {train_subset}")
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:train_subset]
        idx, _ = idx.sort()
        data = Data(
            data.x_train[idx].contiguous(), data.y_train[idx], data.x_test, data.y_test, name=data.name
        )
    return data
