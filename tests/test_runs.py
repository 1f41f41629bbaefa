"""Training runs: teacher-student rank recovery, export, and run folders (tensorbayes.runs)."""

import json

import pytest
import torch
from pyro import poutine

import tensorbayes as tb
from tensorbayes.cli import NETWORK_DEMO, main
from tensorbayes.guides.meanfield import low_rank_tensors
from tensorbayes.runs import RunConfig, fit_run, load_run
from tests.common import as_if_written_on_a_gpu


def _at_means(model, guide, x):
    """The Bayesian model's output with every factor at its posterior mean."""
    data = {}
    for tensor in low_rank_tensors(model).values():
        data.update({tensor.factor_site(k): m for k, m in enumerate(guide.factor_means(tensor))})
    return poutine.condition(model, data=data)(x)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, max_rank", NETWORK_DEMO)
def test_student_recovers_the_planted_ranks_and_exports_the_posterior_mean(fmt, max_rank):
    config = RunConfig(data="teacher", format=fmt, max_rank=max_rank, epochs=20, seed=0)
    model, guide, history, summary = fit_run(config, progress=False)
    planted = tuple(summary["data"]["planted_ranks"])
    (tensor,) = low_rank_tensors(model).values()
    assert max(tensor.max_ranks) > max(planted)  # the student started above the planted ranks
    assert tuple(summary["ranks"]["net.0.weight"]) == planted == tensor.layout.ranks  # pruned to them
    assert history.accuracy[-1] > 0.85 and summary["exported_accuracy"] > 0.85
    # the pruned, exported network is the pruned Bayesian model at its posterior mean
    task = tb.data.teacher_student(
        format=summary["data"]["teacher_format"],
        out_shape=tuple(summary["data"]["out_shape"]),
        ranks=planted,
        num_train=1,
        seed=0,
    )
    net = tb.export(model, guide)
    with torch.no_grad():
        exported = torch.softmax(net(task.x_test), dim=-1)
        bayes = _at_means(model, guide, task.x_test)
    assert torch.allclose(exported, bayes, atol=1e-5, rtol=0)
    # the parameter count the report gives is the exported tensor's
    (row,) = tb.compression_report(model)
    assert row["params"] == sum(p.numel() for n, p in net.named_parameters() if n.startswith("0.weight.factors"))


def test_train_writes_a_run_that_load_run_restores(tmp_path):
    out = tmp_path / "run"
    main(
        [
            "train",
            "--data",
            "teacher",
            "--format",
            "ttm",
            "--max-rank",
            "4",
            "--epochs",
            "2",
            "--num-train",
            "256",
            "--no-progress",
            "--batch-size",
            "64",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"accuracy", "exported_accuracy", "ranks", "params", "tensors", "config", "seconds"}
    assert summary["config"]["max_rank"] == 4 and summary["epochs_run"] == 2
    run = load_run(out)
    assert len(run.history) == 2 and run.config.format == "ttm"
    # the restored guide is the checkpoint's: its posterior-mean predictions match a fresh restore
    (tensor,) = low_rank_tensors(run.model).values()
    assert tensor.layout.ranks == (4, 4)  # the checkpoint is taken before pruning
    again = load_run(out)
    for a, b in zip(run.guide.parameters(), again.guide.parameters()):
        assert torch.equal(a, b)
    # tensorbayes report reads the run: every figure, reliability included (the run has held-out data)
    main(["report", str(out)])
    written = {p.name for p in (out / "report").iterdir()}
    assert {
        "rank_shrinkage.png",
        "training_curves.png",
        "lambda_trajectories.png",
        "reliability.png",
        "report.md",
    } <= written
    assert "(4, 4)" in (out / "report" / "report.md").read_text()


def test_load_run_reads_a_checkpoint_written_on_a_gpu(tmp_path, monkeypatch):
    # load_run read the checkpoint where it was saved: a GPU's failed on a machine without one
    out = tmp_path / "run"
    argv = ["train", "--data", "teacher", "--format", "tt", "--max-rank", "3", "--epochs", "1"]
    main([*argv, "--num-train", "256", "--batch-size", "64", "--no-progress", "--out", str(out)])
    expected = {k: v.clone() for k, v in load_run(out).guide.state_dict().items()}
    as_if_written_on_a_gpu(out / "checkpoint.pt", monkeypatch)
    run = load_run(out)
    assert run.guide.state_dict().keys() == expected.keys()
    for key, value in run.guide.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, expected[key]), key


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)


def test_load_run_names_an_unreadable_summary(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": "teacher"}))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    "kwargs, name", [(dict(data="mnist"), "data"), (dict(max_rank=0), "max_rank"), (dict(epochs=1.5), "epochs")]
)
def test_run_config_refuses_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RunConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(format="svd"), "format"),
        (dict(prior="laplace"), "prior"),
        (dict(teacher_format="cp"), "teacher_format"),
        (dict(lr="fast"), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(data_root=3), "data_root"),
    ],
)
def test_run_config_names_each_setting_a_run_cannot_have(kwargs, name):
    # a hand-edited config.json with such a setting was taken by report and load_run
    with pytest.raises(ValueError, match=f"^{name} must be"):
        RunConfig(**kwargs)


@pytest.mark.slow
def test_train_with_two_processes_writes_one_run(tmp_path):
    common = ["--epochs", "2", "--num-train", "256", "--batch-size", "64", "--max-rank", "4", "--no-progress"]
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "two"), *common]) == 0  # torchrun, gloo
    main(["train", "--out", str(tmp_path / "one"), *common])
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert two["epochs_run"] == one["epochs_run"] == 2
    assert two["ranks"] == one["ranks"]
    # the same steps (evaluation draws differ between one and two processes, so the ELBO agrees closely, not exactly)
    assert two["elbo"] == pytest.approx(one["elbo"], rel=1e-2)


def test_num_train_defaults_to_the_whole_set_and_a_narrow_hidden_layer_is_tensorized():
    from tensorbayes.runs import TEACHER_NUM_TRAIN, build, load_data

    assert RunConfig().num_train is None and RunConfig(data="fashion-mnist").num_train is None
    with pytest.raises(ValueError, match="num_train must be a positive int or None, got 0"):
        RunConfig(num_train=0)
    *_, info = load_data(RunConfig(data="teacher"))
    assert info["num_train"] == TEACHER_NUM_TRAIN == 4096
    x_train, *_, info = load_data(RunConfig(data="teacher", num_train=32))
    assert len(x_train) == info["num_train"] == 32
    # --hidden 64: below tensorize's default size rule, tensorized all the same (else nothing could be fitted)
    model = build(RunConfig(data="fashion-mnist", hidden=64, max_rank=2), {"num_classes": 10})
    assert [name for name in low_rank_tensors(model)] == ["net.0.weight"]
