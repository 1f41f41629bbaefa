"""The CNN study (``experiments/cnn``): the variants of the benchmark's CNN that it trains."""

import pytest
import torch

from experiments.cnn import study


def test_a_convolution_left_dense_keeps_its_weights_and_only_the_linear_layer_is_low_rank():
    torch.manual_seed(0)
    model = study.network("dense", None, "ttm")
    assert set(study.low_rank_layers(model)) == {"8"}
    assert study.kept_params(model) == 64 * 32 * 9
    conv = getattr(model, "4")
    assert isinstance(conv, torch.nn.Conv2d) and tuple(conv.weight.shape) == (64, 32, 3, 3)


def test_a_kernel_at_a_given_rank_and_order_has_that_layout_and_the_linear_layer_its_default():
    model = study.network("16", 2, "ttm")
    layers = study.low_rank_layers(model)
    assert layers["4"].layout.shape == (8, 8, 1, 4, 8, 9) and layers["4"].layout.ranks == (16, 9)
    assert layers["8"].layout.ranks == (25, 25, 25)
    assert study.kept_params(model) == 0


def test_a_bad_conv_option_is_refused_on_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        study.main(["--conv", "wide"])
    assert stop.value.code == 2
    assert "--conv must be budget, dense or a positive integer, got 'wide'" in capsys.readouterr().err


def test_compression_counts_the_dense_weights_of_the_two_layers_the_benchmark_tensorizes():
    assert study.dense_params() == 64 * 32 * 9 + 256 * 3136
