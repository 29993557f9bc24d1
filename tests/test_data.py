import gzip
import hashlib

import numpy as np
import pytest
import torch

from weightspace.config import ParamError
from weightspace.data import MNIST_MD5, DataError, load_dataset, load_idx_dir, read_idx, shipped_mnist_dir


def test_shipped_mnist_shapes_labels_and_md5():
    arrs = load_idx_dir(shipped_mnist_dir(), MNIST_MD5)
    assert arrs["train-images-idx3-ubyte"].shape == (60000, 28, 28)
    assert arrs["t10k-images-idx3-ubyte"].shape == (10000, 28, 28)
    ytr = arrs["train-labels-idx1-ubyte"]
    assert ytr.tolist()[:10] == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first MNIST labels
    assert np.bincount(ytr).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert arrs["t10k-labels-idx1-ubyte"].tolist()[:5] == [7, 2, 1, 0, 4]
    # independent MD5 over the decompressed file
    raw = gzip.decompress((shipped_mnist_dir() / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == MNIST_MD5["t10k-labels-idx1-ubyte"]


def _write_idx_dir(d, n_train=20, n_test=7, gz=False):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr, magic in (("images-idx3", x, 0x0803), ("labels-idx1", y, 0x0801)):
            header = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in arr.shape)
            blob = header + arr.tobytes()
            name = f"{split}-{kind}-ubyte"
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (d / name).write_bytes(blob)
    return d


def test_reader_raw_and_gzip_agree_and_user_data_dir(tmp_path):
    raw = load_idx_dir(_write_idx_dir(tmp_path / "raw"))
    gz = load_idx_dir(_write_idx_dir(tmp_path / "gz", gz=True))
    for k in raw:
        np.testing.assert_array_equal(raw[k], gz[k])
    data = load_dataset("fashion_mnist", str(tmp_path / "gz"))
    assert data.x_train.shape == (20, 1, 28, 28) and data.y_test.shape == (7,)
    # normalised with the MNIST mean/std, from uint8 pixels
    px = raw["train-images-idx3-ubyte"][0].astype(np.float32) / 255
    np.testing.assert_allclose(data.x_train[0, 0].numpy(), (px - 0.1307) / 0.3081, rtol=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "expected"),
    (lambda b: b"\x01\x02" + b[2:], "bad magic"),
    (lambda b: b[:6], "truncated"),
])
def test_malformed_idx_is_named(tmp_path, damage, message):
    d = _write_idx_dir(tmp_path / "d")
    f = d / "train-labels-idx1-ubyte"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_idx_dir(d)
    assert "train-labels-idx1-ubyte" in str(e.value)


def test_missing_files_and_dir(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("mnist", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing IDX file train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path / "empty"))
    with pytest.raises(ParamError, match="dataset"):
        load_dataset("cifar")


def test_read_idx_rejects_gzip_garbage(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(b"\x1f\x8b" + b"junk")
    with pytest.raises(DataError, match="x.gz"):
        read_idx(p)


def test_digits_and_fixed_subset():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 28, 28)
    assert len(d.y_train) + len(d.y_test) == 1797
    a = load_dataset("digits", train_subset=100)
    b = load_dataset("digits", train_subset=100)
    assert torch.equal(a.x_train, b.x_train) and len(a.y_train) == 100
    with pytest.raises(ParamError, match="train_subset"):
        load_dataset("digits", train_subset=10**6)
