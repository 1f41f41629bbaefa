"""
The DLRM study (``experiments/dlrm``): its analyses, and its scripts' ``--smoke`` runs, each of
which finishes at tiny sizes and writes JSON (and Markdown) with the keys the reports are read from.
"""

import importlib
import json

import pytest
import torch


def _load(name):
    """The study's script ``experiments/dlrm/<name>.py`` as a module."""
    return importlib.import_module(f"experiments.dlrm.{name}")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_dlrm_reference_is_the_generators_logit_at_its_true_parameters():
    """The reference learner's model class holds the generator: at the true values it gives its logits."""
    from tensorbayes.data.clicks import ClickGenerator

    gen = ClickGenerator.tiny(seed=3)
    form = _load("study").PlantedForm(gen).double().start_at_truth()
    dense, sparse, _ = gen.stream(500, "test")[0:500]
    torch.testing.assert_close(form(dense.double(), sparse), gen.logits(dense, sparse), rtol=0, atol=1e-12)


def test_dlrm_expected_accuracy_of_the_truth_is_bayes_optimal_in_every_rare_lookup_group():
    from tensorbayes.data.clicks import ClickGenerator

    dlrm = _load("study")
    gen = ClickGenerator.tiny(seed=3, id_order="frequency")
    test = gen.stream(3000, "test")
    truth = dlrm.truth_of(test, 1024)
    optimal = dlrm.bayes_optimal_by_group(truth)
    scores = dlrm.evaluate(dlrm.PlantedForm(gen).start_at_truth(), test, 1024, truth)
    assert scores["expected_accuracy"] == pytest.approx(gen.bayes_optimal(test)["accuracy"], abs=1e-12)
    assert scores["expected_accuracy_by_rare_lookups"] == pytest.approx(optimal["accuracy"], abs=1e-12)
    assert sum(optimal["share"]) == pytest.approx(1.0) and min(optimal["share"]) > 0
    # the groups count lookups off each table's 100 most frequent categories, whatever the ids' order
    _, sparse, _ = test[0:3000]
    direct = sum((sparse[:, t] >= 100).long() for t in gen.planted_tables).clamp_max(dlrm.RARE_GROUPS)
    assert torch.equal(truth[1], direct)
    shuffled = ClickGenerator.tiny(seed=3).stream(3000, "test")
    assert torch.equal(dlrm.truth_of(shuffled, 1024)[1], direct)


def test_dlrm_reference_started_near_the_truth_shares_the_stated_overlap():
    from tensorbayes.data.clicks import ClickGenerator

    gen = ClickGenerator.tiny(seed=3)
    planted = _load("study").PlantedForm
    exact = planted(gen, overlap=1.0)
    for t, cores in zip(gen.planted_tables, exact.cores):
        for core, true in zip(cores, gen.factors[t]):
            torch.testing.assert_close(core.data, true.float())
    torch.manual_seed(0)
    near = planted(gen, overlap=0.6)
    ours = torch.cat([c.data.flatten() / c.data.std() for cores in near.cores for c in cores])
    truth = torch.cat([c.flatten().float() / c.std().float() for t in gen.planted_tables for c in gen.factors[t]])
    assert abs(torch.corrcoef(torch.stack([ours, truth]))[0, 1].item() - 0.6) < 0.1  # about 1300 entries
    with pytest.raises(ValueError, match=r"overlap must lie in \[0, 1\]"):
        planted(gen, overlap=1.5)


def test_turned_back_undoes_a_rotation_shared_by_the_tables_and_a_scale_per_table():
    from tensorbayes.data.clicks import ClickGenerator

    dlrm = _load("study")
    gen = ClickGenerator.tiny(seed=3)
    dim = gen.embedding_dim
    rotation, _ = torch.linalg.qr(
        torch.randn(dim, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    scales = dict(zip(gen.planted_tables, (2.0, -3.0, 0.5, 4.0, -1.0)))
    true = {t: gen.layouts[t].to_matrix(gen.factors[t]) for t in gen.planted_tables}
    learned = {t: scales[t] * true[t] @ rotation for t in gen.planted_tables}
    for t, (back, scale) in dlrm.turned_back(gen, learned).items():
        assert scale == pytest.approx(scales[t], rel=1e-10)
        torch.testing.assert_close(back, scales[t] * true[t], rtol=0, atol=1e-10)
        r0, r1 = gen.ranks[t]
        assert dlrm.largest_drop(dlrm.bond_spectra(gen, t, back)[0]) == r0
        assert [dlrm.largest_drop(w) for w in dlrm.bond_spectra(gen, t, learned[t])] != [
            r0,
            r1,
        ]  # turned, it hides them


def test_planted_fit_is_zero_up_to_the_dlrms_symmetries_and_large_for_unrelated_tables():
    from tensorbayes.data.clicks import ClickGenerator

    dlrm = _load("study")
    gen = ClickGenerator.tiny(seed=3, id_order="frequency")
    dim, test = gen.embedding_dim, gen.stream(2000, "test")
    rotation, _ = torch.linalg.qr(
        torch.randn(dim, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    scales = dict(zip(gen.planted_tables, (2.0, -3.0, 0.5, 4.0, -1.0)))
    turned = dlrm.planted_fit(gen, lambda t, ids: scales[t] * gen.embeddings(t, ids) @ rotation, test, chunk=700)
    # distances are square roots of differences of O(1) sums: float64 leaves them near 1e-8
    assert all(r["turned_back_distance"] < 1e-6 and r["linear_map_distance"] < 1e-5 for r in turned)
    # a linear map per table (not orthogonal, not shared) is only undone by the per-table bound
    maps = {t: torch.randn(dim, dim, generator=torch.Generator().manual_seed(t), dtype=torch.float64) for t in scales}
    mapped = dlrm.planted_fit(gen, lambda t, ids: gen.embeddings(t, ids) @ maps[t], test)
    assert all(r["turned_back_distance"] > 0.5 and r["linear_map_distance"] < 1e-5 for r in mapped)
    # unrelated tables: no map brings them near
    other = ClickGenerator.tiny(seed=4, id_order="frequency")
    unrelated = dlrm.planted_fit(gen, other.embeddings, test)
    assert all(r["turned_back_distance"] > 0.9 and r["linear_map_distance"] > 0.9 for r in unrelated)


def test_live_units_counts_the_relu_units_that_fire_and_finds_a_layer_switched_off():
    from tensorbayes.data.clicks import ClickGenerator
    from tensorbayes.models.dlrm import DLRMNet

    dlrm = _load("study")
    gen = ClickGenerator.tiny(seed=0)
    torch.manual_seed(0)
    tables = [torch.nn.EmbeddingBag(n, 8, mode="sum") for n in gen.cardinalities]
    net = DLRMNet(tables, num_dense=gen.num_dense, bottom=(16,), top=(16, 8))
    test = gen.stream(300, "test")
    dense, sparse, _ = test[:]
    hidden = torch.relu(net.bottom[0](dense))  # bottom.1 by hand: the units that fire on some example
    live = dlrm.live_units(net, test, batch=1000)
    assert live["examples"] == 300 and list(live["layers"]) == ["bottom.1", "bottom.3", "top.1", "top.3"]
    assert live["layers"]["bottom.1"] == (hidden > 0).any(0).double().mean().item() > 0
    with torch.no_grad():
        net.top[0].weight.zero_()
        net.top[0].bias.fill_(-1.0)
    dark = dlrm.live_units(net, test, batch=1000)["layers"]
    assert dark["top.1"] == 0 and dark["bottom.1"] == live["layers"]["bottom.1"]
    assert not any(module._forward_hooks for module in net.modules())  # the hooks are removed


@pytest.mark.slow
def test_dlrm_smoke(tmp_path):
    dlrm = _load("study")
    dlrm.main(
        [
            "--smoke",
            "--threads",
            "1",
            "--no-progress",
            "--point-estimate",
            "--reference",
            "--reference-warm",
            "0.7",
            "--id-order",
            "frequency",
            "--lr-decay",
            "0.5",
            "--lr-warmup",
            "5",
            "--m-step",
            "mackay",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "dlrm_smoke_ids_by_frequency_mackay.json").read_text())
    text = (tmp_path / "dlrm_smoke_ids_by_frequency_mackay.md").read_text()
    assert text.startswith("# DLRM") and "point estimate without Pyro" in text and "own model class" in text
    b = result["bayesian"]
    for key in (
        "peak_rss_gib",
        "samples_per_s",
        "accuracy",
        "auc",
        "tables",
        "model_params_before",
        "model_params_after",
        "compression_vs_paper_4.2e9",
        "unpruned",
    ):
        assert key in b
    assert {t["table"] for t in b["tables"]} == {"C3", "C4", "C12", "C16", "C21"}
    assert all(len(t["planted"]) == len(t["found"]) == 2 for t in b["tables"])
    for t in b["tables"]:  # the readout's weights: one non-increasing vector per bond, led by 1
        assert [len(w) for w in t["bond_weights"]] == t["max_ranks"]
        assert all(w[0] == 1 and all(a >= c for a, c in zip(w, w[1:])) for w in t["bond_weights"])
    assert result["config"]["m_step"] == "mackay" and "MacKay" in text
    assert {t["table"] for t in b["turned_back"]} == {"C3", "C4", "C12", "C16", "C21"} and "turned back" in text
    assert [t["table"] for t in b["planted_fit"]] == [t["table"] for t in b["tables"]] and "best linear map" in text
    for t in b["tables"]:  # align_tables turns and cuts the first bond only
        assert t["aligned"][1:] == t["found"][1:] and 1 <= t["aligned"][0] <= t["max_ranks"][0]
    assert b["aligned"]["tensorized_params"] == sum(t["params_aligned"] for t in b["tables"]) and "align_tables" in text
    assert abs(b["aligned"]["accuracy"] - b["accuracy"]) < 0.05  # a turn keeps the function, up to the cut
    assert 0.5 < result["bayes_optimal"]["accuracy"] < 1
    assert {"accuracy", "auc", "samples_per_s", "params"} <= set(result["dense_baseline"])
    assert {"accuracy", "auc", "samples_per_s"} <= set(result["point_estimate"])
    assert {"accuracy", "auc", "samples_per_s"} <= set(result["reference"])
    assert result["reference_truth"]["overlap"] == 1.0 and "started at the truth" in text
    for key in ("bayesian", "dense_baseline", "point_estimate", "reference", "reference_truth", "reference_warm"):
        assert len(result[key]["expected_accuracy_by_rare_lookups"]) == len(
            result["bayes_optimal"]["by_rare_lookups"]["share"]
        )
    assert "Where the accuracy is lost" in text and "| 3 or more |" in text
    assert result["reference_warm"]["overlap"] == 0.7 and "started at overlap 0.7" in text
    assert result["bayes_optimal"]["accuracy_without_interactions"] < result["bayes_optimal"]["accuracy"]
    assert "without the planted tables' interactions" in text
    assert result["config"]["id_order"] == "frequency" and "numbered by frequency" in text
    assert "over the last 50 % of its steps" in text and "rises linearly over 5 steps" in text
    assert 0 <= b["accuracy"] <= 1 and result["peak_rss_gib"] > 0
    assert b["dead_gradients"] == [] and "stopped learning" not in text  # a healthy fit: no DeadGradientWarning
    live = b["live_units"]  # --smoke's MLPs: bottom (32,) and top (32,), embedding width 8
    assert live["examples"] == result["config"]["test"] and list(live["layers"]) == ["bottom.1", "bottom.3", "top.1"]
    assert all(0 <= share <= 1 for share in live["layers"].values()) and "(`live_units`)" in text
    b["dead_gradients"] = ["fit: at step 7 (epoch 0), 3 parameters had an exactly zero gradient"]
    assert "stopped learning: fit: at step 7 (epoch 0), 3 parameters" in dlrm.markdown(result)


def test_dlrm_samples_smoke(tmp_path):
    samples = _load("samples")
    samples.main(["--smoke", "--threads", "1", "--no-progress", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "dlrm_samples_smoke.json").read_text())
    text = (tmp_path / "dlrm_samples_smoke.md").read_text()
    opt = result["bayes_optimal"]
    assert [run["samples"] for run in result["runs"]] == result["config"]["samples"] == [2048, 4096]
    for run in result["runs"]:  # no decision beats E[max(p, 1 - p)], overall or in any group
        assert 0.5 < run["expected_accuracy"] <= opt["accuracy"] + 1e-12
        for reached, best in zip(run["expected_accuracy_by_rare_lookups"], opt["by_rare_lookups"]["accuracy"]):
            assert reached is None or reached <= best + 1e-12
        gap = 100 * (opt["accuracy"] - run["expected_accuracy"])
        assert (
            f"| {run['samples']:,} | {100 * run['accuracy']:.2f} % | "
            f"{100 * run['expected_accuracy']:.2f} % | {gap:.2f} |" in text
        )
    first, second = (opt["accuracy"] - run["expected_accuracy"] for run in result["runs"])
    assert f"| {second / first:.2f} |" in text and "| Bayes-optimal |" in text


def test_dlrm_samples_refuses_a_count_that_is_not_positive(capsys):
    with pytest.raises(SystemExit):
        _load("samples").parse(["--samples", "6000000", "0"])
    assert "--samples must be positive counts" in capsys.readouterr().err


@pytest.mark.slow
def test_dlrm_search_smoke(tmp_path):
    search = _load("search")
    search.main(["--smoke", "--no-progress", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "dlrm_search_smoke.json").read_text())
    text = (tmp_path / "dlrm_search_smoke.md").read_text()
    assert [c["case"] for c in result["cases"]] == [case[0] for case in search.SMOKE_CASES]
    for c in result["cases"]:
        assert 0.5 < c["floor"] < c["bayes_optimal"] < 1 and 0 < c["reached"] < 1
        assert c["share_found"] == pytest.approx((c["reached"] - c["floor"]) / (c["bayes_optimal"] - c["floor"]))
        assert c["case"] in text
    assert result["cases"][1]["id_order"] == "frequency" and result["cases"][1]["overlap"] == 0.7


def test_a_failed_search_for_the_symmetry_is_reported_and_the_run_goes_on(monkeypatch):
    """A non-finite align_tables search (L-BFGS gone to NaN, an SVD that fails) ends as "failed", not a crash."""
    import os
    from types import SimpleNamespace

    from experiments.dlrm.align import SearchFailed

    dlrm = _load("study")

    def failing(net):
        raise SearchFailed("no start of the search ended at a finite turn (8 starts)")

    monkeypatch.setattr(dlrm, "align_tables", failing)
    tables = [{"table": "C3"}, {"table": "C4"}]
    report = dlrm.aligned_report(object(), None, SimpleNamespace(eval_batch=1), None, tables)
    assert report["failed"].startswith("no start of the search") and report["seconds"] >= 0
    assert tables == [{"table": "C3"}, {"table": "C4"}]  # no ranks up to the symmetry where none were found
    path = os.path.join(os.path.dirname(dlrm.__file__), "results", "dlrm_ids_by_frequency.json")
    with open(path) as f:
        result = json.load(f)
    result["bayesian"]["aligned"] = report
    for row in result["bayesian"]["tables"]:
        row.pop("aligned", None), row.pop("params_aligned", None)
    text = dlrm.markdown(result)
    assert "The search for the DLRM's symmetry (`align_tables`) failed: no start of the search" in text
    assert "turned to its lowest first bonds" not in text
