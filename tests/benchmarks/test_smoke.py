"""
The benchmarks' ``--smoke`` runs: each finishes at tiny sizes and writes JSON (and Markdown) with
the keys the reports are read from.
"""

import importlib
import json
import math
import os
import pathlib

import pytest
import torch

import tensorbayes as tb

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
    for key in (
        "peak_rss_gib",
        "samples_per_s",
        "accuracy",
        "auc",
        "tables",
        "model_params_before",
        "model_params_after",
        "compression_vs_paper_4.2e9",
    ):
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
        assert x["floor_s"] > 0 and x["floor_over_deterministic"] == x["floor_s"] / x["deterministic_s"]
    assert [x["rank"] for x in result["network"]] == list(layers.SMOKE_NETWORK_RANKS)
    for x in result["network"]:
        for kind in ("deterministic", "floor", "svi"):
            assert x[f"{kind}_s"] > 0 and x[f"{kind}_over_dense"] == x[f"{kind}_s"] / x["dense_s"]
    kinds = {(x["kind"], x["rows"]) for x in result["lookup"]}
    assert {("tensorized", 10**3), ("tensorized", 10**5), ("dense", 10**3)} <= kinds
    assert {"ttm_4096_svi_over_dense", "lookup_peak_ratio", "lookup_flat"} <= set(result["targets"])
    assert result["profile"]["top_ops"] and "outside_torch_ops_share" in result["profile"]
    assert result["profile"]["balanced_shapes"]["svi_over_dense"] > 0
    # the Markdown rebuilt from the JSON (as after a --parts rerun) is the one written
    assert layers.markdown(result) == (tmp_path / "layers_smoke.md").read_text()


def _fashion_mnist_installed():
    from tensorbayes.data.fashion_mnist import DEFAULT_ROOT, ENV_VAR

    root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all(os.path.isfile(os.path.join(root, n)) or os.path.isfile(os.path.join(root, n + ".gz")) for n in names)


@pytest.mark.parametrize("fmt,rank", [("ttm", 8), ("tt", 4), ("cp", 20), ("tucker", 3)])
def test_fashion_mnist_fixed_rank_layers_start_at_the_kaiming_variance_and_compute_the_layouts_weight(fmt, rank):
    fm = _load("fashion_mnist")
    net, ranks = fm.fixed_rank_network("cnn", fmt, rank, seed=0)
    layers = {name: m for name, m in net.named_modules() if isinstance(m, fm.FixedRank)}
    assert list(layers) == list(ranks) == ["4", "8"]  # the 32->64 convolution and the 3136->256 layer
    assert all(list(layers[name].layout.ranks) == ranks[name] for name in layers)
    # E[W^2] = 1 / fan_in: one draw of a product of factors is heavy-tailed, so average many
    model, _ = fm.tensorized(fm.network("cnn")[0], 64, fmt, max_rank=rank)
    for name, fan_in, draws in [("4", 32 * 9, 400), ("8", 3136, 50)]:
        second = 0.0
        for _ in range(draws):
            layer = fm.FixedRank(model.get_submodule(name))
            second += layer.layout.to_matrix(list(layer.factors)).detach().pow(2).mean().item() / draws
        assert 0.75 < second * fan_in < 1.3
    linear, x = layers["8"], torch.randn(5, 3136)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, linear.layout.to_matrix(list(linear.factors)), linear.bias)
        torch.testing.assert_close(linear(x), expected, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in linear.parameters()) == linear.layout.num_params() + 256  # factors and bias only


@pytest.mark.parametrize(
    "argv,name",
    [
        (["--epochs", "0"], "--epochs"),
        (["--frontier-ranks", "2", "-1"], "--frontier-ranks"),
        (["--network", "resnet"], "--network"),
        (["--formats", "ht"], "--formats"),
    ],
)
def test_fashion_mnist_refuses_bad_arguments_naming_them(argv, name, capsys):
    with pytest.raises(SystemExit):
        _load("fashion_mnist").parse(argv)
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert name in error


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("layers", ["--device", "bogus"], "--device: must be a device such as cpu, cuda or cuda:1, got 'bogus'"),
        ("layers", ["--parts", "bogus"], "--parts must be among linear, network, lookup, profile, got 'bogus'"),
        ("layers", ["--threads", "0"], "--threads: must be a positive int, got '0'"),
        ("layers", ["--smoke", "--parts", "linear"], "--parts linear takes the other parts from"),
        ("dlrm", ["--device", "bogus"], "--device: must be a device such as cpu, cuda or cuda:1, got 'bogus'"),
        ("dlrm", ["--epochs", "0"], "--epochs: must be a positive int, got '0'"),
        ("dlrm", ["--lr", "-1"], "--lr: must be a positive number, got '-1'"),
        ("rank_recovery", ["--seeds", "-1"], "--seeds: must be a positive int, got '-1'"),
        ("distributed", ["--repeats", "0"], "--repeats: must be a positive int, got '0'"),
        ("mutation", ["--sample", "-1"], "--sample: must be a non-negative int, got '-1'"),
        ("fashion_mnist", ["--epochs", "0"], "--epochs must be a positive int, got 0"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2_before_any_work(name, argv, message, tmp_path, capsys):
    # these raised tracebacks (torch.device, torch.set_num_threads, a missing JSON, tensorbayes' checks
    # deep in the run, a KeyError after zero repeats) or printed argparse's usage over several lines
    module = _load(name)
    with pytest.raises(SystemExit) as stop:
        (module.parse if name in ("dlrm", "fashion_mnist") else module.main)([*argv, "--out", str(tmp_path)])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line and "error:" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_mnist_installed(), reason="needs `apt-get install dataset-fashion-mnist`")
@pytest.mark.parametrize("network,fmt", [("mlp", "ttm"), ("deep", "tt"), ("cnn", "cp")])
def test_fashion_mnist_smoke(tmp_path, network, fmt):
    fm = _load("fashion_mnist")
    fm.main(
        [
            "--network",
            network,
            "--formats",
            fmt,
            "--train-size",
            "512",
            "--test-size",
            "1000",
            "--epochs",
            "1",
            "--frontier-ranks",
            "2",
            "8",
            "--eval-samples",
            "2",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / f"fashion_mnist_{network}.json").read_text())
    assert fm.markdown(result) == (tmp_path / f"fashion_mnist_{network}.md").read_text()
    dense, points, auto = result["dense"], result["frontier"][fmt], result["automatic"][fmt]
    assert dense["layers"] == {"mlp": ["0"], "deep": ["0", "2", "4"], "cnn": ["4", "8"]}[network]
    assert [p["rank"] for p in points] == [2, 8] and points[0]["layer_params"] < points[1]["layer_params"]
    for row in points + [auto]:
        assert row["compression"] == dense["layer_params"] / row["layer_params"]
        assert list(row["ranks"]) == dense["layers"] and 0 <= row["accuracy"] <= 1
    # the automatic point starts at each layer's default maximum ranks: a twentieth of its dense weight
    assert auto["layer_params_max"] <= tb.models.layers.DEFAULT_BUDGET * dense["layer_params"]
    assert auto["layer_params"] <= auto["layer_params_max"]
    qualify = [p["accuracy"] for p in points if p["layer_params"] <= auto["layer_params"]]
    if qualify:
        assert auto["frontier_accuracy"] == max(qualify)
        assert auto["frontier_gap"] == pytest.approx(100 * (max(qualify) - auto["exported_accuracy"]))
    else:
        assert auto["frontier_accuracy"] is None and "no frontier point is that small" in fm.markdown(result)
    # a point below the automatic one that beats it changes the frontier at its size
    result["frontier"][fmt].append(dict(points[0], layer_params=auto["layer_params"], accuracy=1.0))
    assert fm.at_same_size(auto, result["frontier"][fmt])[0] == 1.0
    (target, *_) = [t for t in result["targets"] if t["format"] == fmt]
    assert target["holds"] in (True, False, None) and target["target"] in fm.markdown(result)
    # docs/make_figures.py --frontier draws the figure from this JSON
    spec = importlib.util.spec_from_file_location("make_figures", os.path.join(ROOT, "docs", "make_figures.py"))
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    figures.frontier_fashion_mnist([str(tmp_path / f"fashion_mnist_{network}.json")], out=str(tmp_path / "figures"))
    assert (tmp_path / "figures" / "frontier_fashion_mnist.png").stat().st_size > 10_000


@pytest.mark.parametrize("fmt", ["cp", "tucker", "tt", "ttm"])
def test_layers_floor_is_the_engines_estimator_on_the_same_draws(fmt):
    """The floor the SVI step is measured against computes what the engine's step does: the same
    loss and gradients on the same random numbers, and the same λ step (float64, to rounding)."""
    import pyro

    layers = _load("layers")
    pyro.clear_param_store()
    torch.manual_seed(0)
    x, y = torch.randn(16, 64, dtype=torch.float64), torch.randn(16, 64, dtype=torch.float64)
    layer = layers.TensorizedLinear(64, 64, format=fmt, max_rank=4).double()
    model = layers.BayesianRegressor(layer, noise=1.0)
    guide = tb.guides.MeanField(model, seed=0)
    elbo = tb.infer.MeanFieldELBO()
    elbo.loss_and_log_likelihood(model, guide, x, y, num_data=1600)  # the guide makes its parameters
    with torch.no_grad():  # a posterior away from its start: the scales and λ differ by index
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    guide.keep_lambdas()
    floor = layers.PlainMeanField(layer, guide)
    torch.manual_seed(1)
    loss, _ = elbo.loss_and_log_likelihood(model, guide, x, y, num_data=1600)
    torch.manual_seed(1)
    out = torch.nn.functional.linear(x, layer.layout.to_matrix(floor()[0]), layer.bias)
    floor_loss = 100 * ((out - y) ** 2 / 2 + 0.5 * math.log(2 * math.pi)).sum() + floor.kl()
    torch.testing.assert_close(floor_loss, loss, rtol=1e-12, atol=0)
    ((_, post),) = guide.pairs()
    expected = torch.autograd.grad(loss, [*post.locs, *post.raw_scales])
    got = torch.autograd.grad(floor_loss, [*floor.locs, *floor.raw_scales])
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)
    guide.update_lambdas(0.1)
    floor.lambda_step()
    for e, g in zip(guide.lambdas()[next(iter(guide.tensors()))], floor.lambdas):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=0)


def test_layers_network_floor_is_the_classifiers_elbo_on_the_same_draws():
    """The network part's floor computes the loss of tb.fit's step for a BayesianClassifier: the
    likelihood scaled to the data set and the KL term (float64, the same random numbers)."""
    import pyro

    layers = _load("layers")
    pyro.clear_param_store()
    torch.manual_seed(0)
    x, y = torch.rand(16, 64, dtype=torch.float64), torch.randint(4, (16,))
    dense = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).double()
    net = tb.models.tensorize(dense, format="ttm", max_rank=3, min_features=16)
    model = tb.models.BayesianClassifier(net, num_classes=4)
    guide = tb.guides.MeanField(model, seed=0)
    elbo = tb.infer.MeanFieldELBO()
    elbo.loss_and_log_likelihood(model, guide, x, y, num_data=1600)  # the guide makes its parameters
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    guide.keep_lambdas()
    floor, weight = layers.network_floor(dense, net[0], guide)
    floor[2].load_state_dict(net[2].state_dict())
    torch.manual_seed(1)
    loss, _ = elbo.loss_and_log_likelihood(model, guide, x, y, num_data=1600)
    torch.manual_seed(1)
    torch.testing.assert_close(layers.network_floor_loss(floor, weight, x, y, num_data=1600), loss, rtol=1e-12, atol=0)


def test_fashion_mnist_targets_count_a_gap_of_exactly_half_a_point_as_within_it():
    """Accuracies are counts over the test images: 88.87 % against 88.37 % is 0.50 points below, which
    ``<= 0.5`` holds (in floats, 100 * (0.8887 - 0.8837) is 0.5000000000000004)."""
    fm = _load("fashion_mnist")
    auto = {"accuracy": 0.8837, "exported_accuracy": 0.8837, "compression": 187.0, "total_ratio": 1.5}
    result = {"dense": {"accuracy": 0.8887}, "settings": {"network": "mlp"}, "automatic": {"ttm": auto}}
    below = next(t for t in fm.targets(result) if "points below dense" in t["target"])
    assert below["holds"] and "(0.50)" in below["target"]
    result["dense"]["accuracy"] = 0.8888  # one image more is above
    assert not next(t for t in fm.targets(result) if "points below dense" in t["target"])["holds"]
    frontier = [{"accuracy": 0.8887, "layer_params": 10}]
    assert fm.at_same_size({"accuracy": 0.8837, "exported_accuracy": 0.8837, "layer_params": 10}, frontier)[1] == 0.5


@pytest.mark.slow
def test_layers_parts_rerun_keeps_the_largest_peak_memory(tmp_path, monkeypatch):
    """A ``--parts`` rerun keeps the other parts, and with them the largest peak resident memory
    measured (it used to write its own, smaller one over the lookups' run's)."""
    layers = _load("layers")
    monkeypatch.setattr(layers, "SMOKE_ROWS", [10**3])
    layers.main(["--smoke", "--repeats", "2", "--out", str(tmp_path)])
    path = tmp_path / "layers_smoke.json"
    result = json.loads(path.read_text())
    result["peak_rss_gib"] = 1e3  # as if a lookup of a huge table had run
    path.write_text(json.dumps(result))
    layers.main(["--smoke", "--repeats", "2", "--parts", "network", "--out", str(tmp_path)])
    again = json.loads(path.read_text())
    assert again["peak_rss_gib"] == 1e3 and again["lookup"] == result["lookup"]
