"""
The DLRM model: output shapes, the Bernoulli likelihood scaled by num_data / batch under the
data plate, prior and guide sites for the tensorized tables only (per-table overrides, the
paper preset), a few SVI steps lowering the loss on a tiny synthetic log, tb.fit's data check,
the plain-torch export, bad input, SparseAdam for sparse tables in tb.fit, and that a
DLRMNet holds the synthetic click log's planted click model exactly.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

import tensorbayes as tb
from tensorbayes.data.clicks import CRITEO_KAGGLE_CARDINALITIES, PAPER_ROW_SHAPES, ClickGenerator
from tensorbayes.models.dlrm import DLRM, PAPER_PRESET, DLRMNet
from tensorbayes.models.embedding_bag import CompactEmbeddingBag, TensorizedEmbeddingBag
from tests.common import tiny_dlrm as _tiny


def test_shapes_and_probabilities():
    gen, model = _tiny()
    dense, sparse, clicks = gen.stream(64)[:]
    probs = model(dense, sparse, clicks)
    assert probs.shape == (64,) and ((probs >= 0) & (probs <= 1)).all()  # prior draws may saturate
    bags = torch.stack([sparse, sparse], dim=-1)  # (B, T, 2): bags of two ids per feature
    assert model(dense, bags).shape == (64,)


def test_likelihood_scaled_by_num_data_over_batch():
    gen, model = _tiny()
    dense, sparse, clicks = gen.stream(32)[:]
    trace = poutine.trace(model).get_trace(dense, sparse, clicks, num_data=3200)
    obs = trace.nodes["obs"]
    assert obs["scale"] == pytest.approx(100.0)
    assert obs["fn"].batch_shape == (32,) and obs["is_observed"]
    assert trace.nodes["data"]["value"].tolist() == list(range(32))


def test_sites_for_tensorized_tables_only():
    gen, model = _tiny(
        tables={2: {"format": "tt", "max_rank": 3}, 11: {}, 15: {"dense": True}}, tensorize_min_rows=None
    )
    trace = poutine.trace(model).get_trace(*gen.stream(8)[:2])
    latent = {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name != "data"
    }
    tt_sites = {f"net.C3.weight.factor{k}" for k in range(6)} | {f"net.C3.weight.lambda{b}" for b in range(5)}
    ttm_sites = {f"net.C12.weight.factor{k}" for k in range(3)} | {f"net.C12.weight.lambda{b}" for b in range(2)}
    assert latent == tt_sites | ttm_sites
    assert {n.split(".weight")[0] for n in latent} == {"net.C3", "net.C12"}
    assert model.net.C3.layout.name == "tt" and model.net.C12.layout.name == "ttm"
    assert isinstance(model.net.C16, torch.nn.EmbeddingBag) and not isinstance(model.net.C16, TensorizedEmbeddingBag)
    guide = tb.guides.MeanField(model, seed=0)
    assert set(guide.tensors()) == {"net.C3.weight", "net.C12.weight"}
    guide_trace = poutine.trace(guide).get_trace()
    assert {n for n, s in guide_trace.nodes.items() if s["type"] == "sample"} == latent


def test_tensorize_min_rows_and_paper_preset():
    model = DLRM([10, 5000, 20_000], embedding_dim=8, tensorize_min_rows=5000, max_rank=2, bottom=(4,), top=(4,))
    assert sorted(model.tensorized_tables()) == ["C2", "C3"]
    cards = [n if t in PAPER_ROW_SHAPES else 10 for t, n in enumerate(CRITEO_KAGGLE_CARDINALITIES)]
    preset = DLRM.paper_preset(cards, bottom=(4,), top=(4,))  # small tables cut down: the test stays fast
    tables = preset.tensorized_tables()
    assert sorted(tables) == ["C12", "C16", "C21", "C3", "C4"]
    assert tables["C3"].row_shape == (200, 220, 250) and tables["C3"].col_shape == (4, 4, 8)
    assert all(t.layout.name == "ttm" and t.layout.ranks == (16, 16) for t in tables.values())
    assert sum(t.num_embeddings * t.embedding_dim for t in tables.values()) == 33_193_281 * 128
    assert PAPER_PRESET["max_rank"] == 16


def test_svi_steps_decrease_the_loss():
    gen, model = _tiny()
    guide = tb.guides.MeanField(model, seed=0)
    train = gen.stream(2048)
    params = list(guide.parameters()) + list(model.parameters())
    optim = torch.optim.Adam(params, lr=0.02)
    elbo = TraceMeanField_ELBO()
    losses = []
    for step in range(16):
        dense, sparse, clicks = train[(step % 8) * 256 : (step % 8 + 1) * 256]
        loss = elbo.differentiable_loss(model, guide, dense, sparse, clicks, num_data=len(train))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < sum(losses[:4])


def test_fit_checks_the_data_and_trains():
    gen, model = _tiny()
    guide = tb.guides.MeanField(model, seed=0)
    dense, sparse, clicks = gen.stream(512)[:]
    history = tb.fit(model, guide, (dense, sparse, clicks.long()), epochs=2, batch_size=256, progress=False, seed=0)
    assert len(history.elbo) == 2 and all(math.isfinite(e) for e in history.elbo)
    assert set(history.ranks[-1]) == {f"net.C{t + 1}.weight" for t in gen.planted_tables}
    bad = sparse.clone()
    bad[0, 4] = gen.cardinalities[4]
    with pytest.raises(ValueError, match=r"sparse\[:, 4\] must hold ids in \[0, 50\) \(table C5\)"):
        tb.fit(model, guide, (dense, bad, clicks), epochs=1, progress=False)
    loader = gen.stream(512).loader(256)
    assert len(tb.fit(model, guide, loader, epochs=1, progress=False, seed=0).elbo) == 1


def test_export_is_plain_torch_and_predicts_the_posterior_mean():
    gen, model = _tiny()
    guide = tb.guides.MeanField(model, seed=0)
    net = model.export(guide)
    assert isinstance(net, DLRMNet) and not any(isinstance(m, pyro.nn.PyroModule) for m in net.modules())
    assert isinstance(net.C3, CompactEmbeddingBag)
    dense, sparse, _ = gen.stream(16)[:]
    means = {
        t.weight.factor_site(k): f
        for t in model.tensorized_tables().values()
        for k, f in enumerate(guide.factor_means(t.weight))
    }
    expected = poutine.condition(model, data=means)(dense, sparse)
    torch.testing.assert_close(torch.sigmoid(net(dense, sparse)), expected)


def test_bad_input():
    gen, model = _tiny()
    dense, sparse, clicks = gen.stream(8)[:]
    with pytest.raises(TypeError, match="dense must be a floating point"):
        model(dense.long(), sparse)
    with pytest.raises(ValueError, match=r"dense must have shape \(batch, num_dense=13\)"):
        model(dense[:, :5], sparse)
    with pytest.raises(TypeError, match="sparse must be an integer"):
        model(dense, sparse.float())
    with pytest.raises(ValueError, match="sparse must have shape"):
        model(dense, sparse[:, :3])
    with pytest.raises(ValueError, match="y must hold clicks 0 or 1"):
        model(dense, sparse, clicks + 2)
    with pytest.raises(ValueError, match="num_data must be"):
        model(dense, sparse, clicks, num_data=2)
    with pytest.raises(ValueError, match="tables must be keyed"):
        DLRM([10, 10], tables={5: {}})
    with pytest.raises(ValueError, match="tables\\[0\\] must be a dict"):
        DLRM([10, 10], tables={0: {"bogus": 1}})
    with pytest.raises(ValueError, match="sparse must have bags of at least one id"):
        model(dense, sparse[:, :, None][:, :, :0])  # a dense table's EmbeddingBag fails on it unclearly
    for variance in (-1.0, 0.0, float("nan")):  # checked before a dense table is drawn with it
        with pytest.raises(ValueError, match="init_variance must be a positive number"):
            DLRM([10, 10], embedding_dim=4, init_variance=variance)
    with pytest.raises(ValueError, match="mode must be one of"):
        DLRM([10, 10], embedding_dim=4, mode="max")


def _fitted_tables(sparse, epochs=1, checkpoint=None, resume=False):
    """The dense tables of a tiny float64 DLRM before and after ``tb.fit``, and the ids it saw."""
    torch.manual_seed(0)
    gen, model = _tiny(sparse=sparse)
    model = model.double()
    guide = tb.guides.MeanField(model, seed=0).double()
    tables = {name: t for name, t in model.net.tables() if isinstance(t, torch.nn.EmbeddingBag)}
    before = {name: t.weight.detach().clone() for name, t in tables.items()}
    dense, ids, clicks = gen.stream(256)[:]
    tb.fit(
        model,
        guide,
        (dense.double(), ids, clicks.double()),
        epochs=epochs,
        batch_size=256,
        init="none",
        progress=False,
        seed=0,
        checkpoint=checkpoint,
        resume=resume,
    )
    return ids, before, {name: t.weight.detach().clone() for name, t in tables.items()}


def test_fit_steps_sparse_tables_with_sparse_adam():
    # One full-batch step at lr 0.01. Adam's first step is lr * sign(gradient) where the gradient
    # is well above eps; SparseAdam's is the same (it adds eps before the bias correction, so it
    # steps less only for gradients within ~30 eps of zero), and rows no batch looked up stay put.
    lr = 0.01
    ids, before, sparse = _fitted_tables(sparse=True)
    _, _, dense = _fitted_tables(sparse=False)
    for name in sparse:
        step, reference = sparse[name] - before[name], dense[name] - before[name]
        assert torch.equal(torch.sign(step), torch.sign(reference)), name
        full = reference.abs() > 0.999 * lr
        assert full.float().mean() > 0.5, name
        torch.testing.assert_close(step[full], reference[full], rtol=0.05, atol=0)
        seen = torch.zeros(len(before[name]), dtype=torch.bool)
        seen[ids[:, int(name[1:]) - 1]] = True
        assert (step[seen] != 0).all() and (step[~seen] == 0).all(), name


def test_sparse_tables_checkpoint_and_resume(tmp_path):
    path = str(tmp_path / "fit.pt")
    *_, straight = _fitted_tables(sparse=True, epochs=2)
    _fitted_tables(sparse=True, epochs=1, checkpoint=path)
    *_, resumed = _fitted_tables(sparse=True, epochs=2, checkpoint=path, resume=True)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)


def test_nan_in_a_sparse_gradient_is_named():
    gen, model = _tiny(sparse=True)
    guide = tb.guides.MeanField(model, seed=0)
    model.net.C5.weight.register_hook(lambda g: g * float("nan"))
    dense, ids, clicks = gen.stream(256)[:]
    with pytest.raises(
        tb.infer.NonFiniteError, match=r"gradient is not finite at step 0 .*model parameter 'net.C5.weight'"
    ):
        tb.fit(model, guide, (dense, ids, clicks), epochs=1, batch_size=256, init="none", progress=False, seed=0)


def test_distributed_refuses_sparse_tables():
    gen, model = _tiny(sparse=True)
    guide = tb.guides.MeanField(model, seed=0)
    before = model.net.C5.weight.detach().clone()
    dense, ids, clicks = gen.stream(256)[:]
    with pytest.raises(ValueError, match="distributed=True averages dense gradients only"):
        tb.fit(model, guide, (dense, ids, clicks), epochs=1, progress=False, distributed=True)
    assert torch.equal(model.net.C5.weight, before)


def test_a_dlrm_represents_the_planted_click_model_exactly():
    # The generator's logit is bias + w.x + small-table effects + the large tables' pairwise
    # dots: a DLRMNet holds it exactly with the true TTM cores as its large tables. The bottom
    # MLP gives b = [relu(x), relu(-x), 1, 0...]; the small tables put their effect on b's
    # constant coordinate; the top MLP reads w.x from b and sums the (b, small) and (large,
    # large) dots, ignoring the rest (the +/- pair of hidden units makes its ReLU exact).
    gen = ClickGenerator.tiny(seed=3, num_dense=3)
    d, dim = gen.num_dense, gen.embedding_dim
    model = DLRM(
        gen.cardinalities,
        num_dense=d,
        embedding_dim=dim,
        tensorize_min_rows=None,
        max_rank=4,
        tables={
            t: {"row_shape": gen.row_shapes[t], "col_shape": gen.col_shape, "max_rank": list(gen.ranks[t])}
            for t in gen.planted_tables
        },
    ).double()
    tables = []
    for t, (_, table) in enumerate(model.net.tables()):
        if t in gen.planted_tables:
            tables.append(CompactEmbeddingBag(table, gen.factors[t]))
        else:
            table.weight.data.zero_()
            table.weight.data[:, 2 * d] = gen.effects[t]
            tables.append(table)
    net = DLRMNet(tables, d, bottom=(2 * d,), top=(2,)).double()
    with torch.no_grad():
        net.bottom[0].weight.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        net.bottom[0].bias.zero_()
        net.bottom[2].weight.zero_()
        net.bottom[2].weight[: 2 * d].copy_(torch.eye(2 * d))
        net.bottom[2].bias.zero_()
        net.bottom[2].bias[2 * d] = 1.0
        coef = torch.zeros(net.top[0].in_features, dtype=torch.float64)
        coef[:d], coef[d : 2 * d] = gen.dense_weight, -gen.dense_weight
        for p, (row, col) in enumerate(net.pairs.t().tolist()):
            small = col == 0 and row - 1 in gen.small
            large = row - 1 in gen.planted_tables and col - 1 in gen.planted_tables
            coef[dim + p] = 1.0 if small or large else 0.0
        net.top[0].weight.copy_(torch.stack([coef, -coef]))
        net.top[0].bias.zero_()
        net.top[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net.top[2].bias.fill_(gen.bias)
    dense, sparse, _ = gen.stream(512, "test")[:]
    torch.testing.assert_close(net(dense.double(), sparse), gen.logits(dense, sparse), rtol=1e-12, atol=1e-12)


def test_dlrm_takes_dense_features_of_another_float_dtype():
    # float64 features into a float32 model (or float32 into a float64 one) failed in the bottom
    # MLP with torch's "mat1 and mat2 must have the same dtype"
    gen, model = _tiny()
    dense, sparse, clicks = gen.stream(8)[:]
    pyro.set_rng_seed(0)
    expected = model(dense, sparse, clicks)
    pyro.set_rng_seed(0)
    got = model(dense.double(), sparse, clicks)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    model = model.double()
    assert model(dense, sparse, clicks).dtype == torch.float64


def test_dlrm_net_refuses_sparse_of_another_number_of_tables():
    # a third feature column was ignored silently; one column too few failed in embedding_bag
    net = DLRMNet([torch.nn.EmbeddingBag(5, 4), torch.nn.EmbeddingBag(6, 4)], num_dense=2, bottom=(3,), top=(3,))
    dense = torch.randn(3, 2)
    assert net(dense, torch.randint(0, 5, (3, 2))).shape == (3,)
    for shape in [(3, 3), (3, 1), (3,), (4, 2)]:
        with pytest.raises(ValueError, match=r"sparse must have shape \(batch=3, tables=2\)"):
            net(dense, torch.randint(0, 5, shape))
    with pytest.raises(ValueError, match=r"dense must have shape \(batch, num_dense=2\)"):
        net(torch.randn(3, 5), torch.randint(0, 5, (3, 2)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_dense": True}, ValueError, "num_dense must be a positive int, got True"),
        ({"embedding_dim": 0}, ValueError, "embedding_dim must be a positive int, got 0"),
        ({"tensorize_min_rows": 2.5}, ValueError, "tensorize_min_rows must be a positive int, got 2.5"),
        ({"sparse": "no"}, TypeError, "sparse must be a bool"),  # a truthy string made sparse tables
    ],
)
def test_dlrm_names_a_bad_scalar_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        DLRM([10, 10], **kwargs)
