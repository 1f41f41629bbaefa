"""experiments/dlrm/README.md's tables are the ones rebuilt from the committed JSON results."""

import json
import os

import pytest

from experiments.dlrm import samples, search, study, tables


def test_the_readmes_tables_are_rebuilt_from_the_json_results():
    assert tables.main(["--check"]) == 0
    with open(tables.README) as f:
        text = f.read()
    assert text.count("<!-- table: ") == len(tables.TABLES) == text.count("<!-- end table -->")
    stale = text.replace("| 6M, ids by frequency | `dlrm_ids_by_frequency` |", "| 6M, ids by frequency | `stale` |")
    assert stale != text and tables.rebuild(stale) == text


def test_check_fails_on_a_table_that_differs(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- table: search -->\n| old |\n<!-- end table -->\nafter\n")
    assert tables.main(["--check", "--readme", str(readme)]) == 1 and "differ" in capsys.readouterr().err
    assert tables.main(["--readme", str(readme)]) == 0
    rebuilt = readme.read_text()
    assert rebuilt.startswith("before\n<!-- table: search -->\n| case |") and rebuilt.endswith(
        "<!-- end table -->\nafter\n"
    )
    assert tables.main(["--check", "--readme", str(readme)]) == 0


@pytest.mark.parametrize(
    "name,module",
    [("dlrm_ids_by_frequency_12M", study), ("dlrm_tiny", study), ("dlrm_search", search), ("dlrm_samples", samples)],
)
def test_the_newer_runs_reports_are_their_json_through_todays_markdown(name, module):
    with open(os.path.join(tables.RESULTS, f"{name}.json")) as f:
        result = json.load(f)
    with open(os.path.join(tables.RESULTS, f"{name}.md")) as f:
        assert module.markdown(result) == f.read()
