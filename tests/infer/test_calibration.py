"""The expected calibration error, against hand-computed cases."""

import pytest
import torch

import tensorbayes as tb
from tensorbayes.infer import calibration_bins, expected_calibration_error

D = torch.float64

# five predictions, five bins of width 0.2: confidences 0.95 | 0.75, 0.70, 0.65 | 0.55
PROBS = torch.tensor([[0.95, 0.05], [0.75, 0.25], [0.55, 0.45], [0.30, 0.70], [0.35, 0.65]], dtype=D)
LABELS = torch.tensor([0, 1, 0, 1, 0])


def test_ece_of_a_hand_computed_case():
    # bin (0.8, 1]: 0.95, right            -> |1 - 0.95|  = 0.05
    # bin (0.6, 0.8]: 0.75 wrong, 0.70 right, 0.65 wrong -> |1/3 - 0.70| = 0.3667, three examples
    # bin (0.4, 0.6]: 0.55, right          -> |1 - 0.55|  = 0.45
    expected = (0.05 + 3 * (0.70 - 1 / 3) + 0.45) / 5
    assert expected == pytest.approx(0.32)
    assert expected_calibration_error(PROBS, LABELS, num_bins=5) == pytest.approx(expected, abs=1e-12)
    assert tb.infer.expected_calibration_error is expected_calibration_error


def test_calibration_bins_of_the_hand_computed_case():
    confidence, accuracy, count = calibration_bins(PROBS, LABELS, num_bins=5)
    torch.testing.assert_close(count, torch.tensor([0, 0, 1, 3, 1], dtype=D))
    torch.testing.assert_close(confidence, torch.tensor([0, 0, 0.55, 0.70, 0.95], dtype=D))
    torch.testing.assert_close(accuracy, torch.tensor([0, 0, 1, 1 / 3, 1], dtype=D))


def test_ece_extremes_and_one_bin():
    onehot = torch.eye(3, dtype=D)[[0, 2, 1, 1]]
    assert expected_calibration_error(onehot, torch.tensor([0, 2, 1, 1])) == 0.0  # sure and right
    assert expected_calibration_error(onehot, torch.tensor([1, 0, 2, 0])) == 1.0  # sure and wrong
    # one bin: |accuracy - mean confidence| = |3/5 - mean of the confidences|
    mean_conf = (0.95 + 0.75 + 0.55 + 0.70 + 0.65) / 5
    assert expected_calibration_error(PROBS, LABELS, num_bins=1) == pytest.approx(abs(0.6 - mean_conf))


def test_ece_ignores_order_and_takes_binary_probabilities():
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert expected_calibration_error(PROBS[perm], LABELS[perm], 5) == pytest.approx(0.32)
    assert expected_calibration_error(PROBS[:, 1], LABELS, 5) == pytest.approx(0.32)
    assert expected_calibration_error(PROBS.float(), LABELS.int(), 5) == pytest.approx(0.32, abs=1e-6)


def test_bin_edges_are_closed_on_the_right():
    # confidence 0.5 belongs to (0, 0.5], 1.0 to (0.5, 1]
    _, _, count = calibration_bins(torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=D), torch.tensor([0, 0]), 2)
    assert count.tolist() == [1.0, 1.0]


def test_a_calibrated_sample_has_small_ece():
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(200_000, generator=gen, dtype=D) * 0.5 + 0.5
    right = torch.rand(200_000, generator=gen, dtype=D) < conf
    probs = torch.stack([conf, 1 - conf], -1)
    labels = torch.where(right, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.01


@pytest.mark.parametrize(
    "probs, labels, num_bins, error, match",
    [
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), 15, ValueError, "probs"),  # logits
        (torch.tensor([[0.6, 0.6]]), torch.tensor([0]), 15, ValueError, "sum to 1"),
        (torch.tensor([[1, 0]]), torch.tensor([0]), 15, TypeError, "probs"),  # integers
        (torch.ones(2, 2, 2) / 2, torch.tensor([0, 1]), 15, ValueError, "shape"),
        (PROBS, LABELS[:3], 15, ValueError, "labels must have shape"),
        (PROBS, LABELS.double(), 15, TypeError, "labels"),
        (PROBS, torch.tensor([0, 1, 2, 0, 1]), 15, ValueError, "labels must be class indices"),
        (PROBS, LABELS, 0, ValueError, "num_bins"),
        (torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), 15, ValueError, "finite"),
    ],
)
def test_bad_input_names_the_argument(probs, labels, num_bins, error, match):
    with pytest.raises(error, match=match):
        expected_calibration_error(probs, labels, num_bins)


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (None, LABELS, "probs must be a tensor"),  # was torch's RuntimeError "Could not infer dtype of NoneType"
        ("0.5", LABELS, "probs must be a tensor"),
        (PROBS, None, "labels must be a tensor"),
        (PROBS, LABELS.to(torch.complex64), "labels must be an integer tensor"),  # its imaginary part was dropped
    ],
)
def test_what_is_not_a_tensor_of_numbers_is_named(probs, labels, match):
    with pytest.raises(TypeError, match=match):
        expected_calibration_error(probs, labels)
