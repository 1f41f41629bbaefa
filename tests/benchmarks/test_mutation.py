"""
The mutation runner's machinery (``benchmarks/mutation.py``): which mutants it makes, that each is
one change that compiles, and a tiny run (in a fresh process: the runner forks its test runs
before tensorbayes is imported) that writes its results.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from benchmarks import mutation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOURCE = '''"""A docstring: 0 and 1 are not mutated here."""

__all__ = ["f"]


def f(a: int = 1, b=0.0) -> bool:
    x = 1  # pragma: no mutate
    return a < b and not a + x
'''


def test_the_mutants_of_a_small_source():
    found = [(m["line"], m["change"]) for m in mutation.enumerate_mutants("example.py", SOURCE)]
    assert sorted(found) == sorted(
        [(6, "1 -> 0"), (6, "0.0 -> 1.0"), (8, "and -> or"), (8, "< -> <="), (8, "not x -> x"), (8, "+ -> -")]
    )
    changed = {
        m["change"]: ast.unparse(mutation.mutated_tree("example.py", m, SOURCE))
        for m in mutation.enumerate_mutants("example.py", SOURCE)
    }
    assert "return a < b or not a + x" in changed["and -> or"]
    assert "return a <= b and (not a + x)" in changed["< -> <="]
    assert "return a < b and a + x" in changed["not x -> x"]
    assert "return a < b and (not a - x)" in changed["+ -> -"]
    assert "def f(a: int=0, b=0.0) -> bool:" in changed["1 -> 0"]
    assert "def f(a: int=1, b=1.0) -> bool:" in changed["0.0 -> 1.0"]
    assert all("x = 1\n" in text and "__all__ = ['f']" in text for text in changed.values())


def test_every_mutant_of_a_core_module_compiles_and_changes_it():
    path = "tensorbayes/rank.py"
    with open(os.path.join(ROOT, path)) as f:
        original = ast.unparse(ast.parse(f.read()))
    mutants = mutation.enumerate_mutants(path)
    assert len(mutants) > 50
    for m in mutants:
        assert ast.unparse(mutation.mutated_tree(path, m)) != original
        assert mutation.mutate(path, m).co_filename == os.path.join(ROOT, path)


@pytest.mark.slow
def test_mutation_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "benchmarks.mutation", "--modules", "compact", "--sample", "2"]
    subprocess.run([*command, "--out", str(tmp_path)], cwd=ROOT, env=env, check=True, capture_output=True)
    result = json.loads((tmp_path / "mutation.json").read_text())
    summary = result["modules"]["compact"]
    assert summary["run"] == 2 and summary["killed"] + summary["survived"] + summary["timeout"] == 2
    assert "| compact |" in (tmp_path / "mutation.md").read_text()
