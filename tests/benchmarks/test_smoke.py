"""
The benchmarks' ``--smoke`` runs: each finishes at tiny sizes and writes JSON (and Markdown) with
the keys the reports are read from.
"""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_layers_smoke(tmp_path, monkeypatch):
    layers = _load("layers")
    monkeypatch.setattr(layers, "SMOKE_ROWS", [10**3, 10**5])
    layers.main(["--smoke", "--repeats", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "layers_smoke.json").read_text())
    assert {x["format"] for x in result["linear"]} == {"cp", "tucker", "tt", "ttm"}
    for x in result["linear"]:
        assert x["svi_s"] > 0 and x["svi_over_dense"] > 0 and x["svi_over_deterministic"] > 0
    kinds = {(x["kind"], x["rows"]) for x in result["lookup"]}
    assert {("tensorized", 10**3), ("tensorized", 10**5), ("dense", 10**3)} <= kinds
    assert {"ttm_4096_svi_over_dense", "lookup_peak_ratio", "lookup_flat"} <= set(result["targets"])
    assert result["profile"]["top_ops"] and "outside_torch_ops_share" in result["profile"]
    assert result["profile"]["balanced_shapes"]["svi_over_dense"] > 0
    # the Markdown rebuilt from the JSON (as after a --parts rerun) is the one written
    assert layers.markdown(result) == (tmp_path / "layers_smoke.md").read_text()
