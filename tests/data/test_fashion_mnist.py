"""Tests of :func:`tensorbayes.data.load_fashion_mnist`: idx parsing, errors, and the real files."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorbayes.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from tensorbayes.data.fashion_mnist import DEFAULT_ROOT, ENV_VAR, read_idx

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array, magic):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write(path, data, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_split(root, split="train", n=5, gz=True, seed=0, images=None, labels=None):
    """Write tiny idx files for one split; returns the uint8 images and labels written."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the byte range
    if labels is None:
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        labels[0], labels[-1] = 0, 9
    image_name, label_name = FILES[split]
    write(root / image_name, idx_bytes(images, 2051), gz)
    write(root / label_name, idx_bytes(labels, 2049), gz)
    return images, labels


def installed():
    root = Path(os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    return all((root / name).is_file() or (root / f"{name}.gz").is_file() for names in FILES.values() for name in names)


def test_classes():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_parse_exactly(tmp_path, gz, split):
    images, labels = make_split(tmp_path, split, gz=gz, seed=1 if split == "test" else 0)
    x, y = load_fashion_mnist(split, root=tmp_path)
    assert x.shape == (5, 784) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(x, torch.from_numpy(images.reshape(5, -1).astype(np.float32)) / 255)
    assert x.min() == 0.0 and x.max() == 1.0


def test_unflattened_and_dtype(tmp_path):
    images, _ = make_split(tmp_path, "test", gz=False)
    x, _ = load_fashion_mnist("test", root=str(tmp_path), dtype=torch.float64, flatten=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float64
    assert torch.equal(x[:, 0], torch.from_numpy(images.astype(np.float64)) / 255)


def test_plain_file_preferred_and_gzip_detected_by_content(tmp_path):
    # a gzipped file without the .gz suffix is still read
    images, labels = make_split(tmp_path, "train", gz=True)
    for name in FILES["train"]:
        (tmp_path / f"{name}.gz").rename(tmp_path / name)
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    # with both present, the uncompressed file is read
    make_split(tmp_path, "train", n=3, gz=True, seed=5)
    assert len(load_fashion_mnist("train", root=tmp_path)[1]) == 5


def test_empty_split(tmp_path):
    make_split(tmp_path, "train", images=np.zeros((0, 28, 28)), labels=np.zeros(0))
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert x.shape == (0, 784) and y.shape == (0,)


def test_env_var_and_root_precedence(tmp_path, monkeypatch):
    env, arg = tmp_path / "env", tmp_path / "arg"
    env.mkdir(), arg.mkdir()
    make_split(env, "train", n=4)
    make_split(arg, "train", n=6)
    monkeypatch.setenv(ENV_VAR, str(env))
    assert len(load_fashion_mnist("train")[1]) == 4
    assert len(load_fashion_mnist("train", root=arg)[1]) == 6


def test_a_root_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "fm").mkdir()
    make_split(tmp_path / "fm", "train", n=3)
    assert len(load_fashion_mnist("train", root="~/fm")[1]) == 3


def test_read_idx(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / "x", idx_bytes(data, 2051), gz=False)
    magic, array = read_idx(path)
    assert magic == 2051 and np.array_equal(array, data)
    # other idx types: big-endian int32 (type 0x0C)
    ints = np.array([[1, -2], [300000, 4]], dtype=">i4")
    path.write_bytes(struct.pack(">I2I", 0x0C02, 2, 2) + ints.tobytes())
    magic, array = read_idx(path)
    assert magic == 0x0C02 and np.array_equal(array, ints.astype(np.int32))


def test_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist(root=tmp_path / "nowhere")
    assert "root=" in str(info.value)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_fashion_mnist()


def test_missing_file(tmp_path):
    make_split(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value) and "root=" in str(info.value)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", root=tmp_path)


def corrupt(tmp_path, which, data, gz=False):
    """A valid train split whose image (0) or label (1) file is replaced by ``data``."""
    make_split(tmp_path, "train", gz=False)
    return write(tmp_path / FILES["train"][which], data, gz)


@pytest.mark.parametrize(
    "which, data, message",
    [
        (1, idx_bytes(np.zeros(5), 2051), "magic"),  # label file with the image magic
        (0, idx_bytes(np.zeros((5, 28, 28)), 2049), "magic"),  # image file with the label magic
        (0, idx_bytes(np.zeros((5, 28, 28)), 0x12340803), "magic"),  # not idx at all
        (0, b"\x00\x00", "too short"),
        (0, struct.pack(">II", 2051, 5), "cut short"),  # header cut short
        (0, idx_bytes(np.zeros((5, 28, 28)), 2051)[:-1], "cut short"),  # data cut short
        (1, idx_bytes(np.zeros(5), 2049) + b"\x00", "extra bytes"),
        (0, idx_bytes(np.zeros((5, 27, 28)), 2051), "28x28"),
        (1, idx_bytes(np.zeros(4), 2049), "5 images but .* 4 labels"),  # count mismatch
        (1, idx_bytes([0, 1, 10, 2, 3], 2049), "label 10 outside"),
    ],
)
def test_corrupt_files(tmp_path, which, data, message):
    path = corrupt(tmp_path, which, data)
    with pytest.raises(ValueError, match=message) as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(np.zeros((5, 28, 28)), 2051))
    path = corrupt(tmp_path, 0, whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(split="validation"), ValueError, "split"),
        (dict(split=0), ValueError, "split"),
        (dict(dtype=torch.uint8), TypeError, "dtype"),
        (dict(dtype="float32"), TypeError, "dtype"),
        (dict(flatten=1), TypeError, "flatten"),
        (dict(root=3), TypeError, "root"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, name):
    make_split(tmp_path, "train")
    args = dict(root=tmp_path)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        load_fashion_mnist(**args)


@pytest.mark.skipif(not installed(), reason="needs `apt-get install dataset-fashion-mnist`")
def test_real_data():
    for split, n in [("train", 60000), ("test", 10000)]:
        x, y = load_fashion_mnist(split)
        assert x.shape == (n, 784) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1 and x.max() == 1
        assert y.min() == 0 and y.max() == 9
        # Fashion-MNIST is balanced: n / 10 examples of every class
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), n // 10))


def test_read_idx_names_a_magic_number_of_the_wrong_type(tmp_path):
    path = write(tmp_path / "labels", idx_bytes([1, 2], 2049), gz=False)
    assert read_idx(path, 2049)[0] == 2049
    for magic in ("2049", 2049.0, True):  # a str would never equal the int read from the file
        with pytest.raises(TypeError, match="magic must be an int magic number"):
            read_idx(path, magic)
