"""
Fashion-MNIST from local idx files: the real-data benchmark of the tensorized classifiers.

:func:`load_fashion_mnist` reads the four idx files of Zalando's Fashion-MNIST (70,000 grey
28x28 images of clothing in 10 classes, :data:`FASHION_MNIST_CLASSES`) as Debian's package
``dataset-fashion-mnist`` installs them::

    /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz   60,000 images
    /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
    /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz    10,000 images
    /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

Nothing is ever downloaded. The folder is, in order of precedence, the ``root=`` argument,
the environment variable ``TENSORBAYES_FASHION_MNIST``, or :data:`DEFAULT_ROOT`. Each file may
be gzip-compressed (``.gz``) or not; gzip is recognized by its content, not its name.

The idx format (LeCun's MNIST format) is parsed here with :mod:`struct` and numpy: a
big-endian 32-bit magic number ``0x0000TTDD`` (``TT = 0x08``: unsigned bytes; ``DD``: the
number of dimensions, so 2049 for a label file and 2051 for an image file), one big-endian
32-bit size per dimension, then the data in row-major order. A file that is not such a file,
is cut short or has bytes left over, a label outside ``[0, 10)``, or image and label files
that disagree on the number of examples give a :class:`ValueError` naming the file.

Usage::

    from tensorbayes.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    x_train, y_train = load_fashion_mnist("train")   # (60000, 784) float32 in [0, 1], int64
    x_test, y_test = load_fashion_mnist("test", flatten=False)   # (10000, 1, 28, 28)
    FASHION_MNIST_CLASSES[y_test[0]]                 # "Ankle boot"
"""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_ROOT",
    "ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "fashion_mnist_files",
    "load_fashion_mnist",
    "read_idx",
]

#: Where Debian's package ``dataset-fashion-mnist`` installs the files.
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

#: The environment variable that overrides :data:`DEFAULT_ROOT` (a ``root=`` argument wins).
ENV_VAR = "TENSORBAYES_FASHION_MNIST"

#: The names of the 10 classes, indexed by label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIZE = 28

_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL = (
    "install Debian's package with `apt-get install dataset-fashion-mnist` (files under "
    f"{DEFAULT_ROOT}), or pass root= (or set the environment variable {ENV_VAR}) to a folder that "
    "holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each gzipped or not)"
)
# idx type codes and their (big-endian) numpy dtypes.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path, magic=None):
    """
    Read one idx file (gzip-compressed or not) into a numpy array.

    :param path: the file (a ``str`` or path-like).
    :param int magic: the magic number the file must have (e.g. 2051 for unsigned-byte images
        of 3 dimensions), or ``None`` for any valid one.
    :returns: ``(magic, array)``: the magic number and the data, shaped by the file's sizes,
        in native byte order.
    :raises FileNotFoundError: if there is no such file.
    :raises TypeError: if ``magic`` is neither an int nor ``None``.
    :raises ValueError: naming the file, if it is not an idx file (too short for its header, an
        unknown type code, zero dimensions, not the expected magic number), or its data is cut
        short or followed by extra bytes, or it is a corrupt gzip stream.
    """
    if magic is not None and (isinstance(magic, bool) or not isinstance(magic, int)):
        raise TypeError(f"magic must be an int magic number (e.g. {IMAGE_MAGIC}) or None, got {magic!r}")
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{path} is not a readable gzip file ({error}): the file is corrupt or cut short"
            ) from None
    if len(raw) < 4:
        raise ValueError(f"{path} is not an idx file: {len(raw)} bytes, too short for the 4-byte magic number")
    (found,) = struct.unpack(">I", raw[:4])
    zeros, type_code, ndim = found >> 16, (found >> 8) & 0xFF, found & 0xFF
    if zeros != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{path} is not an idx file: bad magic number {found} (0x{found:08x})")
    if magic is not None and found != magic:
        raise ValueError(
            f"{path} has magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}): "
            "it is not the idx file it should be"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is cut short: {len(raw)} bytes, but its header alone has {header}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "is cut short" if len(raw) < expected else "has extra bytes"
        raise ValueError(f"{path} {what}: sizes {dims} need {expected} bytes in all, the file has {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return found, array.astype(dtype.newbyteorder("="), copy=False)


def _root(root):
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    elif not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or path-like folder, or None, got {root!r}")
    root = Path(root).expanduser()  # "~/data", as a shell would read it
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found: no folder {root}; {_INSTALL}")
    return root


def _find(root, name):
    """``root / name`` or ``root / (name + ".gz")``, whichever exists (the uncompressed first)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST not found: no file {name} or {name}.gz in {root}; {_INSTALL}")


def fashion_mnist_files(root=None) -> dict[str, tuple[Path, Path]]:
    """
    The idx files of both splits, ``{"train": (images, labels), "test": (images, labels)}``,
    looked for as :func:`load_fashion_mnist` does (``root``, else the environment variable, else
    :data:`DEFAULT_ROOT`; each file plain or ``.gz``), without reading them.

    :raises FileNotFoundError: if the folder or a file is missing; the message says how to
        install the data set.
    """
    root = _root(root)
    return {split: _split_files(root, split) for split in _PREFIX}


def _split_files(root, split):
    prefix = _PREFIX[split]
    return _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")


def load_fashion_mnist(split="train", root=None, dtype=torch.float32, flatten=True):
    """
    Load one split of Fashion-MNIST from its idx files; see the module docs for where they are
    looked for.

    :param str split: "train" (60,000 examples) or "test" (10,000).
    :param root: the folder holding the idx files, or ``None`` for the environment variable
        ``TENSORBAYES_FASHION_MNIST`` or else :data:`DEFAULT_ROOT`.
    :param torch.dtype dtype: a floating dtype for the images.
    :param bool flatten: images of shape ``(n, 784)`` if true, ``(n, 1, 28, 28)`` if false.
    :returns: ``(images, labels)``: the images scaled from bytes to ``[0, 1]`` (divided by
        255), and the labels, an int64 tensor of shape ``(n,)`` with values in ``[0, 10)``
        (class names in :data:`FASHION_MNIST_CLASSES`).
    :raises FileNotFoundError: if the folder or a file is missing; the message says how to
        install the data set.
    :raises ValueError: for an unknown ``split``, or, naming the file, a corrupt file (not idx,
        cut short, images not 28x28, labels out of range) or image and label files of
        different lengths.
    :raises TypeError: for arguments of the wrong type.
    """
    if not isinstance(split, str) or split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if not isinstance(flatten, bool):
        raise TypeError(f"flatten must be a bool, got {flatten!r}")
    image_path, label_path = _split_files(_root(root), split)

    images = read_idx(image_path, IMAGE_MAGIC)[1]
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{image_path} holds images of size {images.shape[1:]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    labels = read_idx(label_path, LABEL_MAGIC)[1]
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels: one of them is corrupt"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{label_path} has a label {int(labels.max())} outside [0, {len(FASHION_MNIST_CLASSES)}): "
            "the file is corrupt"
        )

    images = torch.from_numpy(images.copy()).to(dtype) / 255
    images = images.reshape(len(images), IMAGE_SIZE * IMAGE_SIZE) if flatten else images.unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))
