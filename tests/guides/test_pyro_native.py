"""
The method in a researcher's own Pyro code: MeanField in plain ``pyro.infer.SVI`` keeps shrinking
(its λ step runs inside the guide) and finds the planted ranks; inside an ``AutoGuideList`` it works
with ``tb.fit``, the readout, the plots, pruning and export; any Pyro autoguide is read through its
medians; ``median``, ``quantiles`` and ``get_posterior`` as Pyro's autoguides; a guide that cannot
be read gets one error; ``tb.save``/``tb.load`` round-trip a pruned model.
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal

import tensorbayes as tb
from tensorbayes.guides import GuideError, MeanField
from tensorbayes.models import TensorCompletion
from tests.common import factor_parameter

SHAPE, PLANTED = (10, 12, 14), (2, 3)


def _planted():
    return tb.data.planted_tensor(SHAPE, "tt", PLANTED, observed=0.3, noise=0.05, seed=0, dtype=torch.float32)


def _model():
    torch.manual_seed(0)
    return TensorCompletion(SHAPE, format="tt", max_rank=5)


def _tensor_sites(model):
    return tb.guides.tensor_sites(model)


def _svi(model, guide, planted, steps, lr=0.03):
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), tb.infer.MeanFieldELBO())
    n = len(planted.train_values)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, n, (128,), generator=g)
        svi.step(planted.train_index[idx], planted.train_values[idx], num_data=n)


def _separated(lambdas, ranks, factor=10):
    """Each bond's λ, sorted, falls by ``factor`` between its last active index and the next."""
    for lam, r in zip(lambdas, ranks):
        lam = lam.sort(descending=True).values
        if not lam[r - 1] > factor * lam[r]:
            return False
    return True


def test_plain_pyro_svi_keeps_shrinking_and_finds_the_planted_ranks():
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    start = [v.clone() for v in guide.lambdas()["tensor"]]
    _svi(model, guide, planted, steps=600)
    assert tb.ranks(model, guide)["tensor"] == PLANTED
    lambdas = guide.lambdas()["tensor"]
    assert not any(torch.equal(a, b) for a, b in zip(start, lambdas))  # λ moved without update_lambdas()
    assert _separated(lambdas, PLANTED)


def test_the_guides_lambda_step_runs_once_per_change_of_its_parameters():
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    calls = []
    real = guide.update_lambdas
    guide.update_lambdas = lambda step: (calls.append(step), real(step))
    args = (planted.train_index[:20], planted.train_values[:20])
    guide(*args)
    guide(*args)  # nothing changed since it was built: no step
    with torch.no_grad():
        factor_parameter(guide, "locs", 0).mul_(1.01)
        guide(*args)  # gradients off (as in Predictive): no step
    guide(*args)
    guide(*args)
    assert calls == [guide.lambda_step]


@pytest.mark.parametrize(
    "optim",
    [
        pytest.param(lambda: pyro.optim.ClippedAdam({"lr": 0.03}), id="ClippedAdam"),
        pytest.param(lambda: pyro.optim.AdagradRMSProp({"eta": 0.1}), id="AdagradRMSProp"),
        pytest.param(lambda: pyro.optim.DCTAdam({"lr": 0.03}), id="DCTAdam"),
    ],
)
def test_the_lambda_step_runs_under_pyros_optimizers_that_write_through_data(optim):
    """Pyro's ClippedAdam, AdagradRMSProp and DCTAdam step ``p.data``, which bumps no version
    counter: the guide must still see each step and take its λ step once after it."""
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    start = [v.clone() for v in guide.lambdas()["tensor"]]
    calls = []
    real = guide.update_lambdas
    guide.update_lambdas = lambda step: (calls.append(step), real(step))
    svi = pyro.infer.SVI(model, guide, optim(), tb.infer.MeanFieldELBO())
    for _ in range(3):
        svi.step(planted.train_index[:64], planted.train_values[:64], num_data=len(planted.train_values))
    assert calls == [guide.lambda_step] * 2  # after the first and the second optimizer step
    assert not any(torch.equal(a, b) for a, b in zip(start, guide.lambdas()["tensor"]))


@pytest.mark.parametrize("call", [tb.ranks, tb.prune, tb.rank.bond_weights])
def test_a_guide_of_another_model_is_refused_and_changes_nothing(call):
    model, other = _model(), _model()
    guide = MeanField(other, seed=0)
    means = [m.clone() for m in guide.factor_means(other.tensor)]
    with pytest.raises(ValueError, match="guide was built for another model.*not part of the model"):
        call(model, guide)
    with pytest.raises(ValueError, match="guide was built for another model"):
        call(model, _listed(model, guide))
    assert other.tensor.layout.ranks == model.tensor.layout.ranks == (5, 5)
    assert all(torch.equal(a, b) for a, b in zip(guide.factor_means(other.tensor), means))


def _listed(model, guide):
    listed = AutoGuideList(model)
    listed.append(guide)
    return listed


def test_an_autoguide_list_with_meanfield_inside_fits_reads_prunes_and_exports():
    planted, model = _planted(), _model()
    sites = _tensor_sites(model)
    guide = AutoGuideList(model)
    guide.append(MeanField(poutine.block(model, expose=sites), seed=0))
    guide.append(AutoDelta(poutine.block(model, hide=sites)))  # the learned noise, if any: none here
    data = (planted.train_index, planted.train_values)
    history = tb.fit(model, guide, data, epochs=100, batch_size=64, seed=0, progress=False, init="none", lr=0.03)
    assert history.ranks and history.ranks[-1]["tensor"] == PLANTED
    assert tb.ranks(model, guide)["tensor"] == PLANTED
    assert tb.prune(model, guide)["tensor"] == PLANTED
    assert model.tensor.layout.ranks == PLANTED
    (ax,) = tb.plots.rank_shrinkage(model, guide)
    assert ax.has_data()


def test_export_reads_the_meanfield_inside_an_autoguide_list():
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(16, 12, format="ttm", max_rank=3, in_shape=(4, 4), out_shape=(3, 4))
    net = pyro.nn.PyroModule[torch.nn.Sequential](layer, pyro.nn.PyroModule[torch.nn.ReLU]())
    model = tb.models.BayesianClassifier(net, 12)
    inner = MeanField(poutine.block(model, expose=_tensor_sites(model)), seed=0)
    guide = AutoGuideList(model)
    guide.append(inner)
    x = torch.randn(5, 16)
    guide(x)
    torch.testing.assert_close(tb.export(model, guide)(x), tb.export(model, inner)(x), rtol=0, atol=0)


def test_fit_records_the_ranks_of_an_autonormal_once_it_has_been_called():
    planted, model = _planted(), _model()
    guide = AutoNormal(model, init_scale=0.01)
    history = tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=2, progress=False, init="none")
    assert len(history.ranks) == 2 and set(history.ranks[-1]) == {"tensor"}


def test_an_autonormal_fit_is_read_through_its_medians():
    planted, model = _planted(), _model()
    guide = AutoNormal(model, init_scale=0.01)
    _svi(model, guide, planted, steps=600)
    found = tb.ranks(model, guide)
    assert set(found) == {"tensor"} and all(1 <= r <= 5 for r in found["tensor"])
    medians = guide.median()
    means = tb.guides.as_tensor_guide(model, guide).factor_means(model.tensor)
    assert all(torch.equal(m, medians[model.tensor.factor_site(k)]) for k, m in enumerate(means))
    pruned = tb.prune(model, guide)
    assert model.tensor.layout.ranks == pruned["tensor"]
    assert tuple(guide.median()[model.tensor.factor_site(1)].shape) == model.tensor.layout.factor_shapes[1]


def test_median_quantiles_and_posteriors_cover_every_site():
    model = _model()
    guide = MeanField(model, seed=0)
    trace = poutine.trace(model).get_trace(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3))
    latent = {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    latent -= {n for n, s in trace.nodes.items() if s["type"] == "sample" and type(s["fn"]).__name__ == "_Subsample"}
    assert set(guide.median()) == latent
    quantiles = guide.quantiles([0.1, 0.5, 0.9])
    assert set(quantiles) == latent
    for site, q in quantiles.items():
        assert q.shape[0] == 3 and bool((q[0] <= q[1]).all() and (q[1] <= q[2]).all())
        torch.testing.assert_close(q[1], guide.median()[site])
        assert guide.get_posterior(site).event_shape == q[1].shape
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([0.0, 1.5])
    with pytest.raises(KeyError, match="nowhere"):
        guide.get_posterior("nowhere")


@pytest.mark.parametrize("call", [tb.ranks, tb.prune, tb.export, tb.rank.bond_weights])
def test_a_guide_that_cannot_be_read_gets_one_error(call):
    model = _model()
    with pytest.raises(GuideError, match="MeanField.*AutoGuideList.*autoguide"):
        call(model, lambda *args, **kwargs: None)


def test_fit_with_a_guide_it_cannot_read_warns_once_and_records_no_ranks():
    planted, model = _planted(), _model()
    auto = AutoNormal(model)

    def guide(*args, **kwargs):  # a plain Pyro guide: fitted, but with nothing to read ranks from
        return auto(*args, **kwargs)

    with pytest.warns(UserWarning, match="no ranks or λ are recorded") as caught:
        history = tb.fit(
            model, guide, (planted.train_index, planted.train_values), epochs=3, progress=False, init="none"
        )
    assert sum("no ranks" in str(w.message) for w in caught) == 1
    assert len(history.elbo) == 3 and history.ranks == []


def test_save_and_load_rebuild_the_pruned_shapes(tmp_path):
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=3, progress=False, seed=0)
    tb.prune(model, guide)
    tb.save(str(tmp_path / "m.pt"), model, guide)
    fresh = _model()
    fresh_guide = MeanField(fresh, seed=1)
    tb.load(str(tmp_path / "m.pt"), fresh, fresh_guide)
    assert fresh.tensor.layout.ranks == model.tensor.layout.ranks
    for k, m in enumerate(guide.factor_means(model.tensor)):
        assert torch.equal(fresh_guide.factor_means(fresh.tensor)[k], m)
    assert tb.ranks(fresh, fresh_guide) == tb.ranks(model, guide)


def test_save_and_load_find_the_meanfield_inside_an_autoguide_list(tmp_path):
    def build():
        model = _model()
        guide = AutoGuideList(model)
        guide.append(MeanField(poutine.block(model, expose=_tensor_sites(model)), seed=0))
        return model, guide

    planted = _planted()
    model, guide = build()
    tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=3, progress=False, seed=0, init="none")
    tb.prune(model, guide, ranks={"tensor": (2, 3)})
    tb.save(str(tmp_path / "m.pt"), model, guide)
    fresh, fresh_guide = build()
    tb.load(str(tmp_path / "m.pt"), fresh, fresh_guide)
    assert fresh.tensor.layout.ranks == (2, 3)
    torch.testing.assert_close(
        fresh.tensor.layout.full(fresh_guide[0].factor_means(fresh.tensor)),
        model.tensor.layout.full(guide[0].factor_means(model.tensor)),
        rtol=0,
        atol=0,
    )


def test_a_model_function_is_traced_for_its_tensors_as_autoguides_do():
    planted, completion = _planted(), _model()

    def model(index, values=None, num_data=None):
        return completion(index, values, num_data=num_data)

    guide = MeanField(model, seed=0)
    assert not guide.ready and list(guide.parameters()) == []
    with pytest.raises(tb.guides.GuideNotReady, match="first called"):
        tb.ranks(model, guide)
    _svi(model, guide, planted, steps=600)
    assert guide.ready and set(guide.tensors()) == {"tensor"}
    assert tb.ranks(model, guide)["tensor"] == PLANTED
    history = tb.fit(model, MeanField(model, seed=0), (planted.train_index, planted.train_values), epochs=2,
                     progress=False, seed=0)  # fmt: skip
    assert len(history.ranks) == 2 and set(history.ranks[-1]) == {"tensor"}


def test_pruning_an_autonormal_keeps_its_scales_positive_parameters():
    planted, model = _planted(), _model()
    guide = AutoNormal(model, init_scale=0.01)
    _svi(model, guide, planted, steps=50)
    tb.prune(model, guide, ranks={"tensor": (2, 3)})
    site = model.tensor.factor_site(1)
    scales = guide.scales
    for name in site.split("."):
        scales = getattr(scales, name) if name != site.split(".")[-1] else scales
    constraint, _ = scales._pyro_params[site.split(".")[-1]]
    assert constraint is pyro.distributions.constraints.softplus_positive
    assert tuple(guide.median()[site].shape) == model.tensor.layout.factor_shapes[1]
    _svi(model, guide, planted, steps=5)  # the pruned autoguide trains on
    assert tuple(guide.median()[site].shape) == model.tensor.layout.factor_shapes[1]


def test_the_parameters_are_named_after_the_sample_sites_in_the_param_store():
    pyro.clear_param_store()
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    _svi(model, guide, planted, steps=2)
    store = pyro.get_param_store()
    sites = [model.tensor.factor_site(k) for k in range(3)]
    expected = {f"MeanField.{kind}.{site}" for kind in ("locs", "scales") for site in sites}
    expected |= {f"MeanField.locs.{model.tensor.lambda_site(b)}" for b in range(2)}  # λ too
    assert expected <= set(store.keys())
    named = dict(guide.named_parameters())
    assert (
        store.get_param("MeanField.locs.tensor.factor1").unconstrained() is named["locs.tensor.factor1_unconstrained"]
    )
    torch.testing.assert_close(store["MeanField.locs.tensor.lambda0"], guide.lambdas("tensor")[0], rtol=0, atol=0)


def test_a_param_store_round_trip_keeps_the_ranks_and_lambda(tmp_path):
    pyro.clear_param_store()
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    _svi(model, guide, planted, steps=600)
    ranks, lambdas = tb.ranks(model, guide), guide.lambdas("tensor")
    assert ranks["tensor"] == PLANTED
    pyro.get_param_store().save(tmp_path / "params.pt")

    pyro.clear_param_store()
    fresh = _model()
    fresh_guide = MeanField(fresh, seed=1)  # other initial values
    assert tb.ranks(fresh, fresh_guide) != ranks
    pyro.get_param_store().load(tmp_path / "params.pt")
    assert tb.ranks(fresh, fresh_guide) == ranks
    for a, b in zip(fresh_guide.lambdas("tensor"), lambdas):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(fresh_guide.factor_means(fresh.tensor), guide.factor_means(model.tensor)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_guides_of_the_same_names_share_no_values():
    pyro.clear_param_store()
    planted = _planted()
    first_model, second_model = _model(), _model()
    first = MeanField(first_model, seed=0)
    _svi(first_model, first, planted, steps=5)
    kept = [m.clone() for m in first.factor_means(first_model.tensor)]
    second = MeanField(second_model, seed=1)
    start = [m.clone() for m in second.factor_means(second_model.tensor)]
    _svi(second_model, second, planted, steps=5)
    assert all(torch.equal(a, b) for a, b in zip(first.factor_means(first_model.tensor), kept))
    assert not any(torch.equal(a, b) for a, b in zip(second.factor_means(second_model.tensor), start))
    assert not any(torch.equal(a, b) for a, b in zip(second.factor_means(second_model.tensor), kept))


def test_a_param_store_of_pruned_shapes_is_refused_naming_tb_load(tmp_path):
    pyro.clear_param_store()
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    _svi(model, guide, planted, steps=5)
    tb.prune(model, guide, ranks={"tensor": (2, 3)})
    _svi(model, guide, planted, steps=1)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    fresh = _model()
    fresh_guide = MeanField(fresh, seed=1)
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.raises(ValueError, match=r"MeanField\.locs\.tensor\.factor0 of shape \(1, 10, 2\).*tb\.load"):
        tb.ranks(fresh, fresh_guide)


def test_an_autonormal_of_a_model_function_is_read_through_the_tensors_its_trace_found():
    planted, completion = _planted(), _model()

    def model(index, values=None, num_data=None):
        return completion(index, values, num_data=num_data)

    guide = AutoNormal(model, init_scale=0.01)
    _svi(model, guide, planted, steps=5)
    tensor_guide = tb.guides.as_tensor_guide(model, guide)
    assert tensor_guide.tensors() == {"tensor": completion.tensor}
    medians = guide.median()
    means = tensor_guide.factor_means(completion.tensor)
    assert all(torch.equal(m, medians[completion.tensor.factor_site(k)]) for k, m in enumerate(means))


def test_any_guide_with_medians_is_read_through_them():
    model = _model()
    fitted = MeanField(model, seed=0)

    class Medians:  # no Pyro autoguide: only median(), as a hand-written guide might offer
        def median(self, *args, **kwargs):
            return fitted.median()

    assert tb.ranks(model, Medians()) == tb.ranks(model, fitted)
    assert tb.rank.bond_weights(model, Medians())["tensor"][0].shape == (5,)


def test_reading_a_guide_leaves_the_param_store_as_it_is():
    model = _model()
    guide = MeanField(model, seed=0)
    pyro.clear_param_store()
    tb.ranks(model, guide)
    guide.median()
    tb.rank.bond_weights(model, guide)
    assert list(pyro.get_param_store().keys()) == []
    guide(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2))  # a call registers them, as Pyro's modules
    assert "MeanField.locs.tensor.factor0" in pyro.get_param_store().keys()


def test_pyros_per_parameter_rates_reach_the_scales_by_their_store_names():
    """docs/pyro.md's recipe for stepping the scales at tb.fit's share of the rate in Pyro's loop."""
    planted, model = _planted(), _model()
    guide = MeanField(model, seed=0)
    optim = pyro.optim.Adam(lambda name: {"lr": 0.01 * (tb.infer.SCALE_LR if ".scales." in name else 1.0)})
    svi = pyro.infer.SVI(model, guide, optim, tb.infer.MeanFieldELBO())
    svi.step(planted.train_index[:64], planted.train_values[:64], num_data=len(planted.train_values))
    rates = {id(p): opt.param_groups[0]["lr"] for p, opt in optim.optim_objs.items()}
    assert {rates[id(p)] for p in guide.scale_parameters()} == {0.01 * tb.infer.SCALE_LR}
    assert {rates[id(p)] for p in guide.locs.parameters()} == {0.01}
