import io
import json

import pytest

import tensorbayes as tb
from tensorbayes.cli import DEMO_CASES, NETWORK_DEMO, main, run_demo, run_network_demo


@pytest.mark.slow
def test_network_demo_prints_a_row_per_format():
    # rank recovery itself is asserted in tests/test_runs.py, on the same settings at full length
    out = io.StringIO()
    results = run_network_demo(seed=0, epochs=2, out=out)
    lines = out.getvalue().splitlines()
    assert [r["format"] for r in results] == [fmt for fmt, _ in NETWORK_DEMO]
    for row in results:
        assert any(line.startswith(row["format"]) and str(row["found"]) in line for line in lines)
        assert 0 <= row["accuracy"] <= 1 and row["compression"] > 1
    hits = sum(r["found"] == r["planted"] for r in results)
    assert f"ranks recovered exactly for {hits} of {len(results)} formats" in lines[-1]


@pytest.mark.slow
def test_completion_demo_prints_every_format_and_recovers_the_planted_ranks():
    out = io.StringIO()
    results = run_demo(seed=0, epochs=1, out=out)
    text = out.getvalue()
    assert [r["format"] for r in results] == [case[0] for case in DEMO_CASES]
    for row in results:
        assert row["found"] == row["planted"], row
        assert row["error"] < 0.05, row
        assert row["compression"] > 1
    assert f"ranks recovered exactly for {len(results)} of {len(results)} formats" in text


@pytest.mark.parametrize(
    "command",
    [
        ["demo", "--epochs", "0"],
        ["train", "--epochs", "0"],
        ["train", "--max-rank", "-1"],
        ["train", "--format", "svd"],
        ["train", "--data", "mnist"],
    ],
)
def test_bad_arguments_are_refused_by_name(command, capsys):
    with pytest.raises(SystemExit):
        main(command)
    assert command[1] in capsys.readouterr().err


def test_train_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--data", "--format", "--max-rank", "--epochs", "--batch-size", "--lr", "--out", "--seed"):
        assert option in text


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bogus"])
    assert "invalid choice" in capsys.readouterr().err


# ----- errors: one line on stderr, a non-zero exit, never a traceback -----


def _one_line_error(capsys, call, code=1):
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err
    message = info.value.code if isinstance(info.value.code, str) else err
    status = 1 if isinstance(info.value.code, str) else info.value.code  # Python exits 1 printing a str code
    assert status == code, (status, message)
    lines = message.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in message, message
    return lines[0]


def _idx(path, magic, array):
    import struct

    path.write_bytes(
        struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.astype("uint8").tobytes()
    )


def _fake_fashion_mnist(root, num_train=5, num_test=3):
    import numpy as np

    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{prefix}-labels-idx1-ubyte", 2049, rng.integers(0, 10, (n,)))
    return root


def test_a_missing_data_root_is_one_line_from_the_shell_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorbayes.cli",
            "train",
            "--data",
            "fashion-mnist",
            "--data-root",
            str(tmp_path / "missing"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("tensorbayes train: Fashion-MNIST not found: no folder") and "missing" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "command, named",
    [
        (["train", "--lr", "-1"], "--lr: must be a positive number, got -1"),
        (["train", "--lr", "abc"], "--lr: must be a positive number, got abc"),
        (["train", "--lr", "nan"], "--lr: must be a positive number"),
        (["train", "--epochs", "x"], "--epochs: must be a positive int, got x"),
        (["train", "--num-train", "0"], "--num-train: must be a positive int, got 0"),
        (["report"], "the following arguments are required: run_dir"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(command, named, capsys):
    line = _one_line_error(capsys, lambda: main(command), code=2)
    assert named in line and line.startswith(f"tensorbayes {command[0]}: error:") and "--help" in line


def test_missing_data_files_are_refused_before_processes_start(tmp_path, capsys, monkeypatch):
    import tensorbayes.infer.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched despite missing data"))
    monkeypatch.delenv("RANK", raising=False)
    root = tmp_path / "partial"
    root.mkdir()
    line = _one_line_error(
        capsys,
        lambda: main(
            [
                "train",
                "--data",
                "fashion-mnist",
                "--data-root",
                str(root),
                "--nproc",
                "2",
                "--out",
                str(tmp_path / "run"),
            ]
        ),
    )
    assert "no file train-images-idx3-ubyte" in line and not (tmp_path / "run").exists()


def test_report_errors_are_one_line(tmp_path, capsys):
    line = _one_line_error(capsys, lambda: main(["report", str(tmp_path / "nowhere")]))
    assert "is not a directory" in line
    run = tmp_path / "run"
    run.mkdir()
    line = _one_line_error(capsys, lambda: main(["report", str(run)]))
    assert "config.json is missing" in line
    (run / "config.json").write_text('{"data": "teacher", "colour": "red"}')
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    line = _one_line_error(capsys, lambda: main(["report", str(run)]))
    assert "is not a run's config" in line and "colour" in line
    (run / "config.json").write_text('{"data": "teacher", "num_train": 64}')
    line = _one_line_error(capsys, lambda: main(["report", str(run)]))
    assert "checkpoint" in line and "cannot be read" in line


def test_an_interrupt_or_an_unexpected_error_is_one_line(capsys, monkeypatch):
    import tensorbayes.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train", interrupted)
    line = _one_line_error(capsys, lambda: main(["train"]), code=130)
    assert line == "tensorbayes train: interrupted (rerun the same command to resume from the last checkpoint)"

    def broken(args):
        raise RuntimeError("something\nwent wrong")

    monkeypatch.setattr(cli, "_train", broken)
    monkeypatch.delenv(cli.DEBUG_VAR, raising=False)
    line = _one_line_error(capsys, lambda: main(["train"]))
    assert line == (
        f"tensorbayes train: unexpected RuntimeError: something went wrong (set {cli.DEBUG_VAR}=1 for the traceback)"
    )
    monkeypatch.setenv(cli.DEBUG_VAR, "1")
    with pytest.raises(RuntimeError, match="went wrong"):
        main(["train"])


def test_resuming_a_run_folder_of_another_model_is_one_line_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "--epochs",
        "1",
        "--num-train",
        "64",
        "--batch-size",
        "64",
        "--max-rank",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    main(["train", "--data", "teacher", "--format", "ttm", *common])
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line_error(capsys, lambda: main(["train", "--data", "teacher", "--format", "tt", *common]))
    assert "holds a run of another model (format='ttm'; asked for format='tt')" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_fashion_mnist_trains_on_every_image_unless_told_and_says_how_many(tmp_path, capsys):
    root = _fake_fashion_mnist(tmp_path / "fmnist", num_train=5)
    common = [
        "--data",
        "fashion-mnist",
        "--data-root",
        str(root),
        "--hidden",
        "16",
        "--max-rank",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    main(["train", *common, "--out", str(tmp_path / "all")])
    assert "training on 5 of the 5 Fashion-MNIST training images" in capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["data"]["num_train"] == 5 and summary["config"]["num_train"] is None
    main(["train", *common, "--num-train", "3", "--out", str(tmp_path / "three")])
    assert "training on 3 of the 5 Fashion-MNIST training images" in capsys.readouterr().out.splitlines()
    line = _one_line_error(capsys, lambda: main(["train", *common, "--num-train", "6", "--out", str(tmp_path / "six")]))
    assert line == "tensorbayes train: num_train must be at most the 5 training images of Fashion-MNIST, got 6"
    assert not (tmp_path / "six").exists()


def test_the_teacher_task_says_how_many_examples(tmp_path, capsys):
    main(
        [
            "train",
            "--data",
            "teacher",
            "--epochs",
            "1",
            "--num-train",
            "64",
            "--batch-size",
            "64",
            "--max-rank",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert "training on 64 generated teacher-student examples" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("command", [["train"], ["demo"]])
@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_a_seed_outside_what_the_generators_take_is_refused_by_name(command, seed, capsys):
    line = _one_line_error(capsys, lambda: main([*command, "--seed", seed]), code=2)
    assert f"--seed: must be an int in [0, 2**32 - 1], got {seed}" in line


_SMALL_RUN = ["--num-train", "64", "--batch-size", "64", "--max-rank", "2", "--no-progress"]


@pytest.mark.parametrize("other", [["--epochs", "1"], ["--seed", "7"], ["--num-train", "128"], ["--lr", "0.5"]])
def test_a_run_folder_is_resumed_only_with_its_own_settings_else_nothing_changes(other, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--epochs", "2", *_SMALL_RUN, "--out", str(out)])
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line_error(capsys, lambda: main(["train", "--epochs", "2", *_SMALL_RUN, *other, "--out", str(out)]))
    assert f"holds a run trained with other settings ({other[0][2:].replace('-', '_')}=" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_a_checkpoint_that_cannot_be_resumed_leaves_the_folder_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--format", "tt", "--epochs", "1", *_SMALL_RUN, "--out", str(out)])
    capsys.readouterr()
    (out / "config.json").unlink()  # the settings check cannot run: the checkpoint itself is checked
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line_error(
        capsys, lambda: main(["train", "--format", "ttm", "--epochs", "1", *_SMALL_RUN, "--out", str(out)])
    )
    assert "does not fit this model" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    (out / "checkpoint.pt").write_bytes(b"garbage")
    (out / "config.json").write_text('"data"')
    line = _one_line_error(capsys, lambda: main(["train", "--epochs", "1", *_SMALL_RUN, "--out", str(out)]))
    assert "is not a run's config: it holds a JSON str" in line
    (out / "config.json").write_text('{"data": "teacher"}')
    line = _one_line_error(capsys, lambda: main(["train", "--epochs", "1", *_SMALL_RUN, "--out", str(out)]))
    assert "cannot be read" in line and (out / "config.json").read_text() == '{"data": "teacher"}'


def test_a_hidden_width_that_cannot_be_tensorized_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = _fake_fashion_mnist(tmp_path / "fmnist")
    command = ["train", "--data", "fashion-mnist", "--data-root", str(root), "--hidden", "7", "--epochs", "1"]
    line = _one_line_error(capsys, lambda: main([*command, "--no-progress", "--out", str(tmp_path / "run")]))
    assert "hidden must be a width that tensorize can split into balanced modes" in line and "got 7" in line
    assert not (tmp_path / "run").exists()


def test_paths_a_file_for_a_folder_an_empty_path_and_a_tilde(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    line = _one_line_error(capsys, lambda: main(["train", "--epochs", "1", *_SMALL_RUN, "--out", str(a_file)]))
    assert line == f"tensorbayes train: out_dir (--out) must be a folder, but {str(a_file)!r} is a file"
    assert a_file.read_text() == "keep"
    for command in (["train", "--out", ""], ["train", "--data-root", " "], ["report", ""], ["report", "x", "--out="]):
        line = _one_line_error(capsys, lambda command=command: main(command), code=2)
        assert "must be a path, got an empty string" in line
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    main(["train", "--epochs", "1", *_SMALL_RUN, "--out=~/run"])  # a shell leaves this ~ alone
    assert (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "~").exists()
    line = _one_line_error(capsys, lambda: main(["report", "~/run", "--out", str(a_file)]))
    assert line == f"tensorbayes report: out_dir must be a folder, but {str(a_file)!r} is a file"


@pytest.mark.parametrize("threshold", ["0", "1", "2", "nan", "inf", "-0.5", "abc"])
def test_a_threshold_outside_zero_one_is_a_bad_argument(threshold, capsys):
    line = _one_line_error(capsys, lambda: main(["report", "somewhere", f"--threshold={threshold}"]), code=2)
    assert f"argument --threshold: must be a number in (0, 1), got {threshold}" in line


def test_an_unknown_option_before_the_command_is_named_and_version_is_printed(capsys):
    line = _one_line_error(capsys, lambda: main(["--bogus"]), code=2)
    assert "unrecognized arguments: --bogus" in line
    line = _one_line_error(capsys, lambda: main([]), code=2)
    assert "the following arguments are required: command" in line
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"tensorbayes {tb.__version__}"


@pytest.mark.parametrize("lr", ["1e38", "3e38", "2"])
def test_a_learning_rate_above_one_is_a_bad_argument_and_writes_nothing(lr, tmp_path, capsys):
    # --lr 1e38 overflowed in Adam's step: an "unexpected RuntimeError", with config.json already written
    out = tmp_path / "run"
    line = _one_line_error(
        capsys, lambda: main(["train", "--epochs", "1", *_SMALL_RUN, "--lr", lr, "--out", str(out)]), 2
    )
    assert f"argument --lr: must be at most 1 (Adam moves every parameter by about lr a step), got {lr}" in line
    assert not out.exists()


def test_the_demo_shows_progress_bars_unless_no_progress(monkeypatch):
    import tensorbayes.cli as cli

    calls = []
    monkeypatch.setattr(cli, "run_network_demo", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(cli, "run_demo", lambda **kwargs: calls.append(kwargs))
    for command in (
        ["demo"],
        ["demo", "--no-progress"],
        ["demo", "--completion"],
        ["demo", "--completion", "--no-progress"],
    ):
        assert main(command) == 0
    assert [call["progress"] for call in calls] == [True, False, True, False]


def test_the_data_root_help_names_the_environment_variable_it_defaults_to(capsys):
    from tensorbayes.data.fashion_mnist import ENV_VAR

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: ${ENV_VAR} if set, else" in text


def test_bad_input_with_several_processes_is_one_line_before_they_start(tmp_path, capsys, monkeypatch):
    # each process found it, and torchrun added its own report and traceback
    import tensorbayes.infer.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("launched despite bad input"))
    monkeypatch.delenv("RANK", raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    command = ["train", "--epochs", "1", *_SMALL_RUN, "--nproc", "2"]
    line = _one_line_error(capsys, lambda: main([*command, "--out", str(a_file)]))
    assert line == f"tensorbayes train: out_dir (--out) must be a folder, but {str(a_file)!r} is a file"
    out = tmp_path / "run"
    main(["train", "--format", "ttm", "--epochs", "1", *_SMALL_RUN, "--out", str(out)])
    capsys.readouterr()
    line = _one_line_error(capsys, lambda: main([*command, "--format", "tt", "--out", str(out)]))
    assert "holds a run of another model (format='ttm'; asked for format='tt')" in line


def test_a_folder_whose_config_json_is_not_a_run_s_is_left_alone(tmp_path, capsys):
    # train overwrote any config.json there (and then wrote a run beside it) when no checkpoint.pt was there
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"name": "my settings"}')
    line = _one_line_error(capsys, lambda: main(["train", "--epochs", "1", *_SMALL_RUN, "--out", str(out)]))
    assert f"{str(out / 'config.json')!r} is not a run's config" in line and "'name'" in line
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == '{"name": "my settings"}'
