"""
The benchmarks' ``--smoke`` runs: each finishes at tiny sizes and writes JSON (and Markdown) with
the keys the reports are read from.
"""

import importlib
import json
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    """The script ``benchmarks/<name>.py`` as a module (the repository root is on pytest's pythonpath)."""
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_no_script_edits_sys_path():
    """The scripts import ``benchmarks``, ``experiments`` and ``tensorbayes`` as packages, run as modules."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    assert scripts and [str(p) for p in scripts if "sys.path" in p.read_text()] == []


@pytest.mark.slow
def test_dlrm_smoke(tmp_path):
    dlrm = _load("dlrm")
    dlrm.main(["--smoke", "--threads", "1", "--no-progress", "--id-order", "frequency", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "dlrm_smoke_ids_by_frequency.json").read_text())
    text = (tmp_path / "dlrm_smoke_ids_by_frequency.md").read_text()
    assert text.startswith("# DLRM") and "dense baseline" in text and "Bayes-optimal" in text
    b, d = result["bayesian"], result["dense_baseline"]
    for key in ("peak_rss_gib", "samples_per_s", "accuracy", "auc", "tables", "model_params_before",
                "model_params_after", "compression_vs_paper_4.2e9"):
        assert key in b
    assert {t["table"] for t in b["tables"]} == {"C3", "C4", "C12", "C16", "C21"}
    assert all(len(t["planted"]) == len(t["found"]) == 2 for t in b["tables"])
    assert {"accuracy", "auc", "samples_per_s", "params"} <= set(d)
    assert 0 <= b["accuracy"] <= 1 and 0.5 < result["bayes_optimal"]["accuracy"] < 1 and result["peak_rss_gib"] > 0
    assert b["peak_gpu_gib"] is None and result["config"]["device"] == "cpu"
    assert dlrm.markdown(result) == text


def test_rank_recovery_smoke(tmp_path):
    rows = _load("rank_recovery").main(["--smoke", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "rank_recovery_smoke.json").read_text()) == rows and len(rows) == 1
    assert "| format | shape |" in (tmp_path / "rank_recovery_smoke.md").read_text()


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
