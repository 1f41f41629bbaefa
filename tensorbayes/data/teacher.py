"""
Teacher-student classification tasks: a network whose first weight has known ranks.

:func:`teacher_student` draws a small *teacher* network whose first weight ``W`` (shape
``(out, in)``, ``in = prod(in_shape)``, ``out = prod(out_shape)``) is a planted low-rank
tensor, labels Gaussian inputs with the argmax of the teacher's logits, and returns a train
and a test set. The teacher is one of

- ``Linear(in, out)`` alone (``num_classes=None``, the default): the ``out`` units are the
  class logits, so the task is a softmax regression whose weight has the planted ranks;
- ``Linear(in, out) -> activation -> Linear(out, num_classes)`` (``num_classes`` given).

A tensorized Bayesian student started at a larger ``max_rank`` should recover the teacher's
ranks (and accuracy): it is the network-level counterpart of
:func:`~tensorbayes.data.planted_tensor`. Use the default, one-layer teacher for that: its
weight is identifiable from the labels, while the hidden units of a two-layer teacher can be
matched by a student only up to their order, and a permuted ``W`` no longer has the planted
tensor ranks, so a student of the two-layer teacher need not find them.
The first weight is tensorized as the tensorized layers of :mod:`tensorbayes.models` read a
weight: the tensor of shape ``out_shape + in_shape`` whose matrix view (the ``len(out_shape)``
row modes against the column modes) is ``W``:

- "ttm": core ``k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` pairs out mode ``k`` with in mode
  ``k`` (``in_shape`` and ``out_shape`` of the same length, at least two);
- "tt": a train over the ``len(out_shape) + len(in_shape)`` modes, out modes first, so that
  the middle bond (between the last out mode and the first in mode) is the matrix rank of
  ``W``;
- "cp" and "tucker" are accepted too, over the same ``out_shape + in_shape`` modes.

The factors are drawn as :func:`~tensorbayes.data.planted_tensor` draws them (the same
private helpers): every bond's unfolding has exactly the planted rank, with singular values
spread over ``[1, 2]`` up to a common scale, so every rank index is genuinely needed. ``W`` is
then scaled so that ``||W||_F^2 = out``: for inputs with unit-variance independent entries,
the first layer's pre-activations have unit variance on average over the units (entries of
root-mean-square ``1 / sqrt(in)``, a Kaiming-like scale). The second weight ``V`` has
independent ``N(0, 1 / out)`` entries.

Biases: the first layer's is zero (with no head, the classes are then as balanced as the
rows of ``W`` are in norm: check ``torch.bincount(task.y_train)``); a head's is ``-V @ E[act(z)]``, the expected
hidden activations for standard Gaussian inputs (each unit's pre-activation is
``N(0, ||W_i||^2)``; the expectation is computed by Gauss-Hermite quadrature). It centres
every logit at mean zero, so that no class is favoured merely because a nonnegative
activation (ReLU) shifts all of its logit, and the classes come out roughly balanced. How
balanced also depends on how many input directions the teacher sees, the matrix rank of
``W``: a TTM weight is typically of full matrix rank, but a TT weight's matrix rank is its
middle bond (and a CP weight's at most ``R``), so a "tt" teacher of small ranks labels
through a few directions only and some classes may be rare or absent (with ranks 1, most
are). Check ``torch.bincount(task.y_train)`` when that matters.

Labels are ``teacher(x).argmax(-1)``, computed by the returned module in ``dtype`` on the
returned inputs. With ``label_noise = p``, each label (train and test) is independently
replaced with probability ``p`` by a class drawn uniformly from all ``num_classes`` (possibly
the same one), so the teacher's own test accuracy, :attr:`TeacherStudent.bayes_accuracy`, is
about ``1 - p (C - 1) / C``, and exactly 1 without noise.

Defaults make a small, fast task: 64 inputs ``(4, 4, 4)``, 64 outputs ``(4, 4, 4)`` that
are the classes (no head), a TTM first weight of ranks ``(3, 3)``, 4096 training and 1024 test
examples. Fashion-MNIST-sized layers are ``in_shape=(4, 7, 4, 7), out_shape=(5, 5, 5, 5)``.

Usage::

    from tensorbayes.data import teacher_student

    task = teacher_student(format="ttm", ranks=(3, 3), seed=0)
    task.x_train, task.y_train          # (4096, 64) float32, (4096,) int64
    task.ranks                          # (3, 3): what the student should find
    (task.teacher(task.x_test).argmax(-1) == task.y_test).all()   # True (no label noise)
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ..formats import TTM, TensorFormat, check_shape, get_format
from ..formats.tt import layout_options
from .planted import check_attainable, check_bond_ranks, check_real, draw_conditioned_factors

__all__ = ["ACTIVATIONS", "TeacherStudent", "teacher_student"]

#: The ``hidden_activation=`` names and their modules.
ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
    "sigmoid": torch.nn.Sigmoid,
    "identity": torch.nn.Identity,
}

_QUADRATURE_POINTS = 64


@dataclass(frozen=True, eq=False)
class TeacherStudent:
    """
    A teacher-student classification task, as returned by :func:`teacher_student`.

    :param torch.Tensor x_train: training inputs, ``(num_train, prod(in_shape))``, standard
        Gaussian entries.
    :param torch.Tensor y_train: int64 training labels ``(num_train,)``: the teacher's argmax,
        with label noise if any.
    :param torch.Tensor x_test: test inputs, ``(num_test, prod(in_shape))``.
    :param torch.Tensor y_test: int64 test labels ``(num_test,)``.
    :param tuple ranks: the planted rank of every bond of the first weight, as in
        ``format.ranks``.
    :param format: the :class:`~tensorbayes.formats.TensorFormat` layout of the first weight:
        shape ``out_shape + in_shape``, ``row_modes = len(out_shape)``, so that
        ``format.to_matrix(factors)`` equals ``weight``.
    :param tuple factors: the planted factors of the first weight, in the layout of ``format``.
    :param tuple in_shape: the factored input size.
    :param tuple out_shape: the factored hidden size.
    :param torch.Tensor weight: the dense first weight, ``(prod(out_shape), prod(in_shape))``.
    :param torch.nn.Sequential teacher: ``Linear(in, out)``, or ``Linear(in, out) ->
        activation -> Linear(out, num_classes)`` with a head, in ``dtype``, in eval mode and
        without gradients.
    :param int num_classes: the number of classes (``out_features`` without a head).
    :param float label_noise: the probability that a label was redrawn uniformly.
    :param float bayes_accuracy: the teacher's accuracy on the test set (1.0 without label
        noise): the best a student can expect.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    ranks: tuple
    format: TensorFormat
    factors: tuple
    in_shape: tuple
    out_shape: tuple
    weight: torch.Tensor
    teacher: torch.nn.Sequential
    num_classes: int
    label_noise: float
    bayes_accuracy: float

    @property
    def in_features(self):
        """``prod(in_shape)``."""
        return math.prod(self.in_shape)

    @property
    def out_features(self):
        """``prod(out_shape)``, the teacher's hidden width."""
        return math.prod(self.out_shape)

    def __repr__(self):
        return (
            f"TeacherStudent(format={self.format!r}, in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"num_classes={self.num_classes}, n_train={len(self.y_train)}, n_test={len(self.y_test)}, "
            f"label_noise={self.label_noise:g}, bayes_accuracy={self.bayes_accuracy:.3f})"
        )


def teacher_student(
    num_train=4096,
    num_test=1024,
    in_shape=(4, 4, 4),
    out_shape=(4, 4, 4),
    format="ttm",
    ranks=3,
    num_classes=None,
    hidden_activation=None,
    seed=0,
    dtype=torch.float32,
    label_noise=0.0,
):
    """
    Draw a teacher network with a planted low-rank first weight, and a train and a test set
    labelled by it; see the module docs for the construction.

    Everything is a deterministic function of the arguments. The first weight, the second
    weight, the training inputs, the test inputs and the label noise use independent random
    streams seeded by ``seed``: the test set, for instance, does not depend on ``num_train``,
    and the weights do not depend on the sizes of the data sets.

    :param int num_train: the number of training examples, at least 1.
    :param int num_test: the number of test examples, at least 1.
    :param tuple in_shape: the factored input size (positive ints).
    :param tuple out_shape: the factored hidden size (positive ints); for "ttm", as many modes
        as ``in_shape``, at least two.
    :param str format: the first weight's format: "ttm" (default) or "tt" (or "cp", "tucker").
    :param ranks: the planted ranks: an int for every bond or one int per bond, each in
        ``[1, max_ranks()]`` of the format and jointly attainable (see
        :func:`~tensorbayes.data.planted_tensor`). A TTM over ``c`` cores has ``c - 1`` bonds,
        a TT over ``len(out_shape) + len(in_shape)`` modes one bond fewer than modes.
    :param int num_classes: ``None`` (default) for a one-layer teacher whose ``out_features``
        outputs are the classes, or the number of classes (at least 2) of a head
        ``Linear(out, num_classes)`` after the hidden activation.
    :param str hidden_activation: with a head, "relu" (default), "tanh", "gelu", "sigmoid" or
        "identity"; without a head it must be ``None``.
    :param int seed: a non-negative int seeding every random draw.
    :param torch.dtype dtype: a floating dtype for the inputs, the weights and the teacher.
        The weights are drawn in float64 whatever ``dtype`` is; the labels are the teacher's
        argmax computed in ``dtype``.
    :param float label_noise: the probability, in ``[0, 1]``, that a label is replaced by a
        uniformly drawn class.
    :returns: a :class:`TeacherStudent`.
    :raises ValueError: for values out of range, naming the argument (sizes below 1, shapes of
        different lengths for "ttm", an unknown format or activation, ranks out of range or not
        attainable, fewer than 2 classes, ``label_noise`` outside ``[0, 1]``, a negative seed).
    :raises TypeError: for arguments of the wrong type.
    """
    num_train = _check_int(num_train, "num_train", 1)
    num_test = _check_int(num_test, "num_test", 1)
    in_shape = check_shape(in_shape, name="in_shape")
    out_shape = check_shape(out_shape, name="out_shape")
    cls = get_format(format)
    if cls.name == "ttm":
        if len(in_shape) != len(out_shape):
            raise ValueError(
                f"in_shape and out_shape must have the same number of modes for format 'ttm' (core k pairs "
                f"out mode k with in mode k), got in_shape={in_shape} and out_shape={out_shape}"
            )
        if len(in_shape) < 2:
            raise ValueError(
                f"in_shape and out_shape must have at least two modes for format 'ttm' (a single core has no "
                f"rank bond), got in_shape={in_shape} and out_shape={out_shape}"
            )
    shape = out_shape + in_shape
    ranks = check_bond_ranks(cls, shape, ranks, f"shape out_shape + in_shape = {shape}")
    options = layout_options(cls, len(shape), len(out_shape))  # the student layer's layout
    fmt = TTM(shape, ranks) if cls is TTM else cls(shape, ranks, row_modes=len(out_shape), **options)
    check_attainable(fmt)
    activation = _check_head(num_classes, hidden_activation)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    label_noise = check_real(label_noise, "label_noise")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {label_noise!r}")

    weight_gen, head_gen, train_gen, test_gen, noise_gen = _generators(seed, 5)
    in_features, out_features = fmt.matrix_shape[1], fmt.matrix_shape[0]

    # first weight: planted factors, the scale spread evenly over them, ||W||_F^2 = out.
    factors = draw_conditioned_factors(fmt, weight_gen)
    scale = fmt.to_matrix(factors).norm().item() / math.sqrt(out_features)
    factors = [f * scale ** (-1.0 / len(factors)) for f in factors]
    weight = fmt.to_matrix(factors)
    first = torch.nn.Linear(in_features, out_features, dtype=dtype)
    with torch.no_grad():
        first.weight.copy_(weight)
        first.bias.zero_()
    if activation is None:
        num_classes = out_features
        teacher = torch.nn.Sequential(first)
    else:
        head = torch.randn(num_classes, out_features, generator=head_gen, dtype=torch.float64) / math.sqrt(out_features)
        second = torch.nn.Linear(out_features, num_classes, dtype=dtype)
        with torch.no_grad():
            second.weight.copy_(head)
            second.bias.copy_(-head @ _expected_activation(activation, weight.norm(dim=1)))
        teacher = torch.nn.Sequential(first, activation, second)
    teacher = teacher.eval().requires_grad_(False)

    x_train = torch.randn(num_train, in_features, generator=train_gen, dtype=torch.float64).to(dtype)
    x_test = torch.randn(num_test, in_features, generator=test_gen, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        clean_train = teacher(x_train).argmax(-1)
        clean_test = teacher(x_test).argmax(-1)
    y_train = _noisy(clean_train, label_noise, num_classes, noise_gen)
    y_test = _noisy(clean_test, label_noise, num_classes, noise_gen)

    return TeacherStudent(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        ranks=fmt.ranks,
        format=fmt,
        factors=tuple(f.to(dtype) for f in factors),
        in_shape=in_shape,
        out_shape=out_shape,
        weight=first.weight.detach().clone(),
        teacher=teacher,
        num_classes=num_classes,
        label_noise=label_noise,
        bayes_accuracy=float((clean_test == y_test).double().mean()),
    )


# ----- helpers -----


def _check_head(num_classes, hidden_activation):
    """The hidden activation module of a two-layer teacher, or ``None`` for a one-layer one."""
    if num_classes is None:
        if hidden_activation is not None:
            raise ValueError(
                f"hidden_activation needs num_classes: a teacher without a head has no hidden layer, "
                f"got hidden_activation={hidden_activation!r} with num_classes=None"
            )
        return None
    _check_int(num_classes, "num_classes", 2)
    name = "relu" if hidden_activation is None else hidden_activation
    if not isinstance(name, str):
        raise TypeError(f"hidden_activation must be a str, one of {sorted(ACTIVATIONS)}, got {hidden_activation!r}")
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"hidden_activation must be one of {sorted(ACTIVATIONS)}, got {hidden_activation!r}")
    return ACTIVATIONS[name.lower()]()


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _generators(seed, count):
    """``count`` independent CPU generators seeded by ``seed``."""
    states = [int(s.generate_state(1, dtype=np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(count)]
    return [torch.Generator().manual_seed(s) for s in states]


def _expected_activation(activation, std):
    """``E[activation(std_i * g)]`` for ``g ~ N(0, 1)``, per entry of ``std``, by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_POINTS)
    nodes = torch.as_tensor(nodes, dtype=torch.float64)
    weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
    with torch.no_grad():
        return activation(std[:, None] * nodes) @ weights


def _noisy(labels, label_noise, num_classes, gen):
    """Replace each label with probability ``label_noise`` by a uniform class (always drawing, for fixed streams)."""
    flip = torch.rand(len(labels), generator=gen, dtype=torch.float64) < label_noise
    random = torch.randint(num_classes, (len(labels),), generator=gen)
    return torch.where(flip, random, labels)
