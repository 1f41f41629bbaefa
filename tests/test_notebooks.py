"""
The notebooks under ``notebooks/`` run top to bottom, in their small setting
(``TENSORBAYES_SMALL=1``), each well under two minutes; and they are kept with stripped
outputs.
"""

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: Seconds a notebook may take in the small setting (aimed at well under 40).
LIMIT = 120


def test_the_four_notebooks_are_there_and_stripped():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_tensorized_mlp", "03_your_own_model", "04_uncertainty"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.outputs == [] and c.execution_count is None for c in code), path.name
        assert "TENSORBAYES_SMALL" in code[0].source, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_the_small_setting(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBAYES_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel then draws inline (PNG outputs)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=LIMIT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    assert seconds < LIMIT, f"{path.name} took {seconds:.0f} s in the small setting"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the figures were drawn (every notebook shows at least two)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, path.name
    print(f"{path.name}: {seconds:.1f} s")
