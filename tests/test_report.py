"""The report of a run: the PNG figures and the Markdown summary, and the `report` sub-command."""

import matplotlib

matplotlib.use("Agg")

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import tensorbayes as tb  # noqa: E402
from tensorbayes.report import add_report_parser, write_report, write_report_for  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run():
    """A small tensorized classifier fitted for two epochs on a teacher-student task (64 classes)."""
    torch.manual_seed(0)
    task = tb.data.teacher_student(num_train=512, num_test=256, seed=0)
    net = torch.nn.Sequential(torch.nn.Linear(64, task.num_classes))
    net = tb.models.tensorize(net, format="ttm", max_rank=4, min_features=32, order=3)
    model = tb.models.BayesianClassifier(net, task.num_classes)
    guide = tb.guides.MeanField(model, seed=0)
    history = tb.fit(
        model,
        guide,
        (task.x_train, task.y_train),
        epochs=2,
        batch_size=128,
        seed=0,
        eval_data=(task.x_test, task.y_test),
        eval_samples=5,
        progress=False,
    )
    return types.SimpleNamespace(
        model=model,
        guide=guide,
        history=history,
        task=task,
        config={"format": "ttm", "max_rank": 4},
        summary={"seed": 0, "epochs": 2},
    )


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 5000


def test_write_report_for_writes_the_figures_and_a_summary(run, tmp_path):
    before = {k: v.clone() for k, v in run.guide.state_dict().items()}
    results = [
        {"format": "dense", "accuracy": 0.9, "compression": 1.0},
        {"format": "ttm", "accuracy": run.history.accuracy[-1], "compression": 6.4},
    ]
    paths = write_report_for(
        run.model,
        run.guide,
        run.history,
        dict(run.summary, results=results),
        tmp_path / "rep",
        eval_data=(run.task.x_test, run.task.y_test),
    )
    names = [os.path.basename(p) for p in paths]
    assert names == [
        "rank_shrinkage.png",
        "lambda_trajectories.png",
        "training_curves.png",
        "factor_posterior-net.0.weight.png",
        "compression_vs_accuracy.png",
        "reliability.png",
        "report.md",
    ]
    assert all(os.path.dirname(p) == str(tmp_path / "rep") for p in paths)
    assert all(_is_png(p) for p in paths[:-1])
    text = open(paths[-1], encoding="utf-8").read()
    ranks = tb.ranks(run.model, run.guide)["net.0.weight"]
    row = tb.compression_report(run.model, run.guide)[0]
    assert "| net.0.weight | ttm |" in text and str(ranks) in text
    assert f"{row['compression']:.1f}x" in text
    assert f"Held-out accuracy: {run.history.accuracy[-1]:.4f}" in text
    assert "expected calibration error" in text
    assert "| seed | 0 |" in text and "results" not in text.split("## Ranks")[0]
    for name in names[:-1]:  # every figure is linked, relative to the report
        assert f"]({name})" in text
    for k, v in run.guide.state_dict().items():  # the report only reads
        assert torch.equal(v, before[k]), k


def test_write_report_for_without_history_or_data(run, tmp_path):
    paths = write_report_for(run.model, run.guide, out_dir=tmp_path)
    assert [os.path.basename(p) for p in paths] == [
        "rank_shrinkage.png",
        "factor_posterior-net.0.weight.png",
        "report.md",
    ]
    assert "## Training" not in open(paths[-1], encoding="utf-8").read()
    with pytest.raises(TypeError, match="summary must be a dict"):
        write_report_for(run.model, run.guide, summary=[1], out_dir=tmp_path)
    with pytest.raises(ValueError, match="eval_data"):
        write_report_for(run.model, run.guide, out_dir=tmp_path, eval_data=(run.task.x_test,))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as ``tensorbayes train`` writes it (two short epochs on the teacher-student task)."""
    from tensorbayes.runs import RunConfig, train

    folder = tmp_path_factory.mktemp("run")
    train(
        RunConfig(format="ttm", max_rank=4, epochs=2, num_train=256, batch_size=64, eval_samples=2),
        str(folder),
        progress=False,
    )
    return folder


def test_write_report_restores_the_run_and_writes_beside_it(run_dir, tmp_path):
    paths = write_report(str(run_dir))
    assert paths[-1] == os.path.join(str(run_dir), "report", "report.md")
    assert "reliability.png" in {os.path.basename(p) for p in paths}  # the run's held-out data is used
    text = open(paths[-1], encoding="utf-8").read()
    assert "| config.format | ttm |" in text and "| epochs_run | 2 |" in text
    with pytest.raises(FileNotFoundError, match="run_dir must be a run directory"):
        write_report(str(tmp_path / "missing"))


def test_report_subcommand(run_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tensorbayes")
    sub = add_report_parser(parser.add_subparsers(dest="command"))
    help_text = sub.format_help()
    assert "run directory" in help_text and "--out" in help_text and "--threshold" in help_text
    args = parser.parse_args(["report", str(run_dir), "--out", str(tmp_path / "r")])
    assert args.command == "report"
    assert args.handler(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(tmp_path / "r" / "report.md") and all(os.path.exists(p) for p in printed)
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(run_dir), "--threshold", "2"])  # refused as argparse refuses
    assert "argument --threshold: must be a number in (0, 1), got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="threshold"):  # a handler given arguments from elsewhere checks too
        args.handler(argparse.Namespace(run_dir=str(run_dir), out=None, threshold=2.0))
    with pytest.raises(SystemExit, match="not a directory"):
        args.handler(parser.parse_args(["report", str(tmp_path / "missing")]))


@pytest.mark.parametrize("threshold", [2, 0, "0.1", float("nan")])
def test_a_threshold_out_of_range_is_refused_before_anything_is_written(run, run_dir, tmp_path, threshold):
    # it was found only after the held-out predictions, with the output folder already made
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        write_report_for(run.model, run.guide, run.history, out_dir=out, threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        write_report(str(run_dir), str(out), threshold=threshold)
    assert not out.exists()


@pytest.mark.parametrize("text", ["[1, 2]", '{"data": 3}', '{"data": {"planted_ranks": 3}}'])
def test_a_run_summary_of_the_wrong_form_is_named(run_dir, tmp_path, text):
    # valid JSON, but not the object `tensorbayes train` writes: an AttributeError or TypeError deep inside
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / "summary.json").write_text(text)
    with pytest.raises(ValueError, match=r"summary.json' is not a run's summary: it must hold a JSON object"):
        write_report(str(folder), str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_a_run_summary_lists_its_results_and_planted_ranks(run_dir, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / "summary.json").write_text('{"epochs_run": 7, "other": 1, "data": {"planted_ranks": [2, 3]}}')
    text = open(write_report(str(folder), str(tmp_path / "report"))[-1], encoding="utf-8").read()
    assert "| epochs_run | 7 |" in text and "| planted ranks | [2, 3] |" in text and "| other |" not in text
