import io

import pytest

from tensorbayes.cli import DEMO_CASES, main, run_demo


@pytest.mark.slow
def test_demo_prints_every_format_and_recovers_the_planted_ranks():
    out = io.StringIO()
    results = run_demo(seed=0, epochs=1, out=out)
    text = out.getvalue()
    assert [r["format"] for r in results] == [case[0] for case in DEMO_CASES]
    for row in results:
        assert row["found"] == row["planted"], row
        assert row["error"] < 0.05, row
        assert row["compression"] > 1
    assert f"ranks recovered exactly for {len(results)} of {len(results)} formats" in text


def test_demo_refuses_a_bad_epoch_count():
    with pytest.raises(SystemExit, match="--epochs"):
        main(["demo", "--epochs", "0"])


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bogus"])
    assert "invalid choice" in capsys.readouterr().err
