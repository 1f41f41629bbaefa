"""The CNN study (``experiments/cnn``): the variants of the benchmark's CNN that it trains."""

import json

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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--conv", "wide"], "--conv must be budget, dense or a positive integer, got 'wide'"),
        (["--max-beta", "0"], "--max-beta must be in (0, 1], got 0.0"),
        (["--max-beta", "1.5"], "--max-beta must be in (0, 1], got 1.5"),
        (["--conv", "0"], "--conv must be budget, dense or a positive integer, got '0'"),
        (["--threads", "0"], "--threads: must be a positive int, got '0'"),
        (["--epochs", "0"], "--epochs: must be a positive int, got '0'"),
        (["--conv-order", "-1"], "--conv-order: must be a positive int, got '-1'"),
    ],
)
def test_a_bad_option_is_refused_on_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        study.main(argv)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # argparse's usage is in --help
    assert message in line


def test_compression_counts_the_dense_weights_of_the_two_layers_the_benchmark_tensorizes():
    assert study.dense_params() == 64 * 32 * 9 + 256 * 3136


def test_the_unseen_cnn_has_5x5_kernels_and_512_hidden_units_and_its_two_layers_are_tensorized():
    torch.manual_seed(0)
    model = study.network("budget", None, "ttm", "unseen")
    layers = study.low_rank_layers(model)
    assert set(layers) == {"4", "8"}
    assert layers["4"].kernel_size == (5, 5) and layers["8"].out_features == 512
    assert study.dense_params("unseen") == 64 * 32 * 25 + 512 * 3136


def test_a_run_is_named_for_its_network_learner_and_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        study.tb.data, "load_fashion_mnist", lambda split: (torch.zeros(4, 784), torch.zeros(4, dtype=torch.long))
    )
    monkeypatch.setattr(study, "run_dense", lambda args, data: {"ranks": {}, "params": 10, "accuracy": 0.5})
    monkeypatch.setitem(study.LEARNERS, "dense", study.run_dense)
    study.main(["--network", "unseen", "--learner", "dense", "--seed", "3", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "unseen_dense_seed3.json").read_text())
    assert written["compression"] == study.dense_params("unseen") / 10 and written["accuracy"] == 0.5


def test_max_beta_caps_the_kl_weight_of_every_schedule_in_its_block_and_then_lets_go():
    schedule = study.tb.infer.Schedule(warmup=2, ramp=4)
    with study.max_beta(0.1):
        assert [schedule.beta(s) for s in (0, 2, 3, 5, 9)] == [0.0, 0.1, 0.1, 0.1, 0.1]
    assert [schedule.beta(s) for s in (0, 2, 3, 5, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
