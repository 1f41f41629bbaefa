"""Tests of :func:`tensorbayes.data.teacher_student`: planted ranks, labels, scale, seeds, errors."""

import math

import pytest
import torch

import tensorbayes as tb
from tensorbayes.data import TeacherStudent, teacher_student
from tensorbayes.formats import TT, TTM
from tensorbayes.formats.tt import interleaved_train
from tests.common import assert_rank, unfolding

SMALL = dict(num_train=64, num_test=32)


def test_defaults():
    task = teacher_student()
    assert isinstance(task, TeacherStudent)
    assert task.x_train.shape == (4096, 64) and task.x_test.shape == (1024, 64)
    assert task.x_train.dtype == torch.float32
    assert task.y_train.shape == (4096,) and task.y_train.dtype == torch.int64
    assert task.y_test.shape == (1024,) and task.y_test.dtype == torch.int64
    assert isinstance(task.format, TTM) and task.ranks == (3, 3)
    assert task.in_shape == task.out_shape == (4, 4, 4)
    assert task.in_features == task.out_features == 64
    # no head: the teacher is the first layer, its 64 outputs are the classes
    assert task.weight.shape == (64, 64) and task.num_classes == 64 and len(task.teacher) == 1
    assert torch.equal((task.x_test @ task.weight.T).argmax(-1), task.y_test)
    assert task.bayes_accuracy == 1.0
    assert "TeacherStudent" in repr(task)
    # no class dominating
    assert torch.bincount(task.y_train, minlength=64).max() <= 4096 / 16


def test_head_defaults_to_relu():
    task = teacher_student(**SMALL, num_classes=10)
    assert len(task.teacher) == 3 and isinstance(task.teacher[1], torch.nn.ReLU)
    # every class present in both sets, none dominating
    task = teacher_student(num_classes=10)
    for y, n in [(task.y_train, 4096), (task.y_test, 1024)]:
        counts = torch.bincount(y, minlength=10)
        assert len(counts) == 10
        assert counts.min() >= n / 50 and counts.max() <= n / 4, counts


@pytest.mark.parametrize(
    "in_shape, out_shape, ranks",
    [((4, 4, 4), (4, 4, 4), (3, 3)), ((2, 3, 4), (3, 2, 2), (4, 5)), ((2, 3, 2, 2), (2, 2, 3, 2), (3, 7, 2))],
)
def test_ttm_ranks(in_shape, out_shape, ranks):
    task = teacher_student(
        **SMALL, in_shape=in_shape, out_shape=out_shape, format="ttm", ranks=ranks, dtype=torch.float64
    )
    assert task.ranks == ranks and isinstance(task.format, TTM)
    d = len(in_shape)
    tensor = task.weight.reshape(out_shape + in_shape)
    assert torch.allclose(task.format.to_matrix(list(task.factors)), task.weight, atol=1e-12)
    for k, r in enumerate(ranks):
        # bond k splits (out modes 0..k, in modes 0..k) from the rest
        assert_rank(unfolding(tensor, list(range(k + 1)) + [d + j for j in range(k + 1)]), r)


@pytest.mark.parametrize(
    "in_shape, out_shape, ranks",
    [((4, 4, 4), (4, 4, 4), 3), ((3, 4), (2, 5, 2), (2, 4, 3, 2))],
)
def test_tt_ranks(in_shape, out_shape, ranks):
    task = teacher_student(
        **SMALL, in_shape=in_shape, out_shape=out_shape, format="tt", ranks=ranks, dtype=torch.float64
    )
    assert isinstance(task.format, TT) and task.format.row_modes == len(out_shape)
    # the train alternates out and in modes, as a student layer's TT does
    shape = out_shape + in_shape
    student = tb.models.TensorizedLinear(math.prod(in_shape), math.prod(out_shape), "tt", 2, in_shape=in_shape,
                                         out_shape=out_shape)  # fmt: skip
    assert task.format.train == student.layout.train == interleaved_train(len(shape), len(out_shape))
    expected = (ranks,) * (len(shape) - 1) if isinstance(ranks, int) else ranks
    assert task.ranks == expected
    tensor = task.weight.reshape(shape)
    assert torch.allclose(task.format.to_matrix(list(task.factors)), task.weight, atol=1e-12)
    for k, r in enumerate(expected):  # bond k splits the modes of cores 0..k from the rest
        assert_rank(unfolding(tensor, list(task.format.train[: k + 1])), r)


@pytest.mark.parametrize("fmt, ranks", [("cp", 3), ("tucker", (2, 3, 2, 3))])
def test_cp_and_tucker(fmt, ranks):
    task = teacher_student(**SMALL, in_shape=(4, 5), out_shape=(3, 4), format=fmt, ranks=ranks, dtype=torch.float64)
    assert task.format.name == fmt and task.format.row_modes == 2
    assert torch.allclose(task.format.to_matrix(list(task.factors)), task.weight, atol=1e-12)
    tensor = task.weight.reshape(3, 4, 4, 5)
    for k in range(4):
        assert_rank(unfolding(tensor, [k]), 3 if fmt == "cp" else ranks[k])


@pytest.mark.parametrize("fmt", ["ttm", "tt"])
def test_teacher_and_labels(fmt):
    task = teacher_student(**SMALL, format=fmt, ranks=2, num_classes=7, hidden_activation="tanh")
    teacher = task.teacher
    assert isinstance(teacher, torch.nn.Sequential) and len(teacher) == 3
    first, act, second = teacher
    assert isinstance(first, torch.nn.Linear) and (first.in_features, first.out_features) == (64, 64)
    assert isinstance(act, torch.nn.Tanh)
    assert isinstance(second, torch.nn.Linear) and (second.in_features, second.out_features) == (64, 7)
    assert torch.equal(first.weight, task.weight) and torch.equal(first.bias, torch.zeros(64))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert torch.equal(teacher(task.x_train).argmax(-1), task.y_train)
    assert torch.equal(teacher(task.x_test).argmax(-1), task.y_test)
    assert task.y_train.min() >= 0 and task.y_train.max() < 7


def test_scales():
    task = teacher_student(num_test=16, dtype=torch.float64, num_classes=10)
    out_features, in_features = task.weight.shape
    # ||W||_F^2 = out: unit pre-activation variance on average for unit-variance inputs
    assert task.weight.pow(2).sum().item() == pytest.approx(out_features, rel=1e-12)
    pre = task.teacher[0](task.x_train)
    assert pre.var(0).mean().item() == pytest.approx(1.0, abs=0.05)
    head = task.teacher[2].weight
    assert head.std().item() == pytest.approx(1 / math.sqrt(out_features), rel=0.05)
    # logits are centred: the second bias cancels the mean ReLU activation
    logits = task.teacher(task.x_train)
    assert logits.mean(0).abs().max().item() < 0.1 * logits.std(0).min().item()
    assert task.x_train.mean().abs() < 0.01 and task.x_train.std().item() == pytest.approx(1.0, abs=0.01)


def test_activations():
    for activation, module in [("gelu", torch.nn.GELU), ("sigmoid", torch.nn.Sigmoid), ("Identity", torch.nn.Identity)]:
        task = teacher_student(**SMALL, num_classes=5, hidden_activation=activation)
        assert isinstance(task.teacher[1], module)
        assert torch.equal(task.teacher(task.x_test).argmax(-1), task.y_test)


def test_label_noise():
    clean = teacher_student(num_train=2048, num_test=2048, seed=3)
    noisy = teacher_student(num_train=2048, num_test=2048, seed=3, label_noise=0.4)
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.weight, noisy.weight)
    teacher_labels = noisy.teacher(noisy.x_test).argmax(-1)
    assert torch.equal(teacher_labels, clean.y_test)
    # a label is kept with probability 1 - p + p / C
    expected = 1 - 0.4 * 9 / 10
    assert noisy.bayes_accuracy == (teacher_labels == noisy.y_test).double().mean().item()
    assert noisy.bayes_accuracy == pytest.approx(expected, abs=0.04)
    assert (noisy.y_train == clean.y_train).double().mean().item() == pytest.approx(expected, abs=0.04)
    assert noisy.label_noise == 0.4


def assert_same(a, b):
    for name in ["x_train", "y_train", "x_test", "y_test", "weight"]:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for p, q in zip(a.teacher.parameters(), b.teacher.parameters()):
        assert torch.equal(p, q)


def test_seeds_reproduce_and_differ():
    a = teacher_student(**SMALL, seed=4)
    assert_same(a, teacher_student(**SMALL, seed=4))
    b = teacher_student(**SMALL, seed=5)
    assert not torch.allclose(a.weight, b.weight)
    assert not torch.allclose(a.x_train, b.x_train)
    # independent streams: the weights and the test set do not depend on num_train
    c = teacher_student(num_train=10, num_test=32, seed=4)
    assert torch.equal(a.weight, c.weight) and torch.equal(a.x_test, c.x_test) and torch.equal(a.y_test, c.y_test)


def test_dtype():
    a = teacher_student(**SMALL, dtype=torch.float64)
    b = teacher_student(**SMALL)
    assert a.x_train.dtype == a.weight.dtype == a.factors[0].dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in a.teacher.parameters())
    assert torch.equal(a.x_train.float(), b.x_train)
    assert torch.equal(a.weight.float(), b.weight)
    with pytest.raises(AttributeError):  # frozen
        b.ranks = (1, 1)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(num_train=0), ValueError, "num_train"),
        (dict(num_train=10.0), TypeError, "num_train"),
        (dict(num_train=True), TypeError, "num_train"),
        (dict(num_test=0), ValueError, "num_test"),
        (dict(num_test="5"), TypeError, "num_test"),
        (dict(in_shape=(4, 0, 4)), ValueError, "in_shape"),
        (dict(in_shape=64), TypeError, "in_shape"),
        (dict(out_shape=(4, 4.0, 4)), ValueError, "out_shape"),
        (dict(out_shape=()), ValueError, "out_shape"),
        (dict(in_shape=(8, 8)), ValueError, "in_shape and out_shape"),  # ttm: lengths differ
        (dict(in_shape=(64,), out_shape=(64,)), ValueError, "at least two modes"),  # ttm: no bond
        (dict(format="ht"), ValueError, "format"),
        (dict(format=None), ValueError, "format"),
        (dict(ranks=(3,)), ValueError, "ranks"),
        (dict(ranks=(3, 3, 3)), ValueError, "ranks"),
        (dict(ranks=0), ValueError, "ranks"),
        (dict(ranks=(3, -1)), ValueError, "ranks"),
        (dict(ranks=(3.0, 3)), ValueError, "ranks"),
        (dict(ranks=None), TypeError, "ranks"),
        (dict(ranks=(17, 3)), ValueError, "ranks"),  # above max_ranks() = (16, 16)
        (dict(format="tt", ranks=(3, 3)), ValueError, "ranks"),  # a TT over 6 modes has 5 bonds
        (dict(format="tt", ranks=5), ValueError, "ranks"),  # r_0 <= 4: not attainable
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(num_classes=2.5), TypeError, "num_classes"),
        (dict(num_classes=3, hidden_activation="softplus"), ValueError, "hidden_activation"),
        (dict(num_classes=3, hidden_activation=torch.nn.ReLU()), TypeError, "hidden_activation"),
        (dict(hidden_activation="relu"), ValueError, "hidden_activation"),  # no head, no hidden layer
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(label_noise=-0.1), ValueError, "label_noise"),
        (dict(label_noise=1.5), ValueError, "label_noise"),
        (dict(label_noise=float("nan")), ValueError, "label_noise"),
        (dict(label_noise="0.1"), TypeError, "label_noise"),
    ],
)
def test_bad_input(kwargs, error, name):
    args = dict(SMALL)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        teacher_student(**args)
