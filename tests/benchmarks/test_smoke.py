"""
The benchmarks' ``--smoke`` runs: each finishes at tiny sizes and writes JSON (and Markdown) with
the keys the reports are read from.
"""

import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_dlrm_smoke(tmp_path):
    _load("dlrm").main(["--smoke", "--threads", "1", "--no-progress", "--point-estimate", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "dlrm_smoke.json").read_text())
    text = (tmp_path / "dlrm_smoke.md").read_text()
    assert text.startswith("# DLRM") and "point estimate without Pyro" in text
    b = result["bayesian"]
    for key in ("peak_rss_gib", "samples_per_s", "accuracy", "auc", "tables", "model_params_before",
                "model_params_after", "compression_vs_paper_4.2e9", "unpruned"):
        assert key in b
    assert {t["table"] for t in b["tables"]} == {"C3", "C4", "C12", "C16", "C21"}
    assert all(len(t["planted"]) == len(t["found"]) == 2 for t in b["tables"])
    assert 0.5 < result["bayes_optimal"]["accuracy"] < 1
    assert {"accuracy", "auc", "samples_per_s", "params"} <= set(result["dense_baseline"])
    assert {"accuracy", "auc", "samples_per_s"} <= set(result["point_estimate"])
    assert 0 <= b["accuracy"] <= 1 and result["peak_rss_gib"] > 0


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
