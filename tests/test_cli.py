import io

import pytest

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


@pytest.mark.parametrize("command", [["demo", "--epochs", "0"], ["train", "--epochs", "0"],
                                     ["train", "--max-rank", "-1"], ["train", "--format", "svd"],
                                     ["train", "--data", "mnist"]])
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
