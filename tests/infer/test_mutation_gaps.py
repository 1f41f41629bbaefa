"""
Gaps that mutation testing (``python -m benchmarks.mutation``) found in the inference tests: the
held-out score of a distributed fit, the torchrun check, the combined optimizer (its zeroing, and
SparseAdam over sparse tables), the engine's ``num_data`` bound, fit's default warm-up, the steps
of its rank search and their batches on resuming, and pieces of the coordinate ascent (the
spectral start, the CP Gram's variance term, the matrix-free core update of all-zero data).
"""

import math
import socket

import pyro
import pytest
import torch
import torch.distributed as dist

import tensorbayes as tb
from tensorbayes.formats import CP, Tucker
from tensorbayes.guides import MeanField
from tensorbayes.infer import distributed as tbdist
from tensorbayes.infer.batches import TensorBatches
from tensorbayes.infer.cavi import _slice_statistics, _tucker_core_update, factor_design, spectral_factors
from tensorbayes.infer.engine import SCALE_LR, SparseAndDenseAdam, SVIEngine, make_optimizer, sparse_tables
from tensorbayes.infer.fit import History, _RankSearch
from tests.common import tiny_dlrm

D = torch.float64


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield tbdist.DistributedContext(0, 1)
    finally:
        dist.destroy_process_group()


def _regressor():
    task = tb.data.teacher_student(
        num_train=32, num_test=24, in_shape=(4, 4), out_shape=(4, 4), ranks=2, seed=0, dtype=D
    )
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(16, 16, format="tt", max_rank=3, in_shape=(4, 4), out_shape=(4, 4))
    model = tb.models.BayesianRegressor(layer, noise=0.5).double()
    return task, model, MeanField(model, seed=0).double()


def test_the_distributed_held_out_error_is_the_relative_error_of_the_predictive_mean(world_of_one):
    task, model, guide = _regressor()
    x = task.x_test
    y = torch.randn(len(x), 16, generator=torch.Generator().manual_seed(1), dtype=D)
    state = pyro.util.get_rng_state()
    name, value = tbdist.evaluate(model, guide, (x, y), 3, world_of_one)
    pyro.util.set_rng_state(state)
    mean, _ = tb.predict(model, guide, x, num_samples=3)
    assert name == "error"
    assert value == pytest.approx(float((mean - y).norm() / y.norm()), rel=1e-10)
    # and the accuracy of a classifier's predictive mean
    labels = torch.randint(0, 16, (len(x),), generator=torch.Generator().manual_seed(2))
    pyro.util.set_rng_state(state)
    name, value = tbdist.evaluate(model, guide, (x, labels), 3, world_of_one)
    pyro.util.set_rng_state(state)
    mean, _ = tb.predict(model, guide, x, num_samples=3)
    assert name == "accuracy" and value == pytest.approx(float((mean.argmax(-1) == labels).double().mean()))


@pytest.mark.parametrize(
    "env, expected",
    [({"RANK": "0", "WORLD_SIZE": "2"}, True), ({"RANK": "0"}, False), ({"WORLD_SIZE": "2"}, False), ({}, False)],
)
def test_in_torchrun_needs_both_the_rank_and_the_world_size(monkeypatch, env, expected):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tbdist.in_torchrun() is expected


def test_the_combined_optimizer_sets_the_gradients_to_none_by_default():
    dense_p = torch.nn.Parameter(torch.ones(3))
    table = torch.nn.Embedding(5, 2, sparse=True)
    optimizer = SparseAndDenseAdam(torch.optim.Adam([dense_p]), torch.optim.SparseAdam(table.parameters()))
    (dense_p.sum() + table(torch.tensor([1, 2])).sum()).backward()
    assert dense_p.grad is not None and table.weight.grad is not None
    optimizer.zero_grad()
    assert dense_p.grad is None and table.weight.grad is None


@pytest.mark.parametrize("num_data", [0, -3, True, 2.5])
def test_the_engine_refuses_a_num_data_that_is_not_a_positive_int(num_data):
    torch.manual_seed(0)
    model = tb.models.TensorCompletion((5, 6, 7), format="tt", max_rank=3).double()
    with pytest.raises(ValueError, match="num_data must be a positive int"):
        SVIEngine(model, MeanField(model, seed=0).double(), num_data)


def test_fit_ramps_the_kl_weight_to_its_kl_weight_and_holds_it_there():
    # 5 epochs of 4 steps, as below: β ramps from step 4 to step 7, then stays at kl_weight
    task, model, guide = _regressor()
    y = torch.randn(len(task.x_train), 16, generator=torch.Generator().manual_seed(1), dtype=D)
    history = tb.fit(
        model, guide, (task.x_train, y), epochs=5, batch_size=8, progress=False,
        init="none", tolerance=None, seed=0, kl_weight=0.3,
    )  # fmt: skip
    assert history.beta == pytest.approx([0.0, 0.3, 0.3, 0.3, 0.3])
    schedule = tb.infer.Schedule(warmup=4, ramp=4, total=20, kl_weight=0.3)
    assert [schedule.beta(s) for s in range(4, 8)] == pytest.approx([0.075, 0.15, 0.225, 0.3])


def test_fit_warms_up_for_a_fifth_of_the_steps_without_an_initialization():
    # 5 epochs of 4 steps: β is 0 for the first int(0.2 * 20) = 4 steps, then ramps over 4 more
    task, model, guide = _regressor()
    y = torch.randn(len(task.x_train), 16, generator=torch.Generator().manual_seed(1), dtype=D)
    history = tb.fit(
        model, guide, (task.x_train, y), epochs=5, batch_size=8, progress=False,
        init="none", tolerance=None, seed=0,
    )  # fmt: skip
    schedule = tb.infer.Schedule(warmup=4, ramp=4, total=20)
    assert history.beta == [schedule.beta(4 * e + 3) for e in range(5)]
    assert history.beta[0] == 0.0 and history.beta[-1] == 1.0


def test_spectral_factors_of_a_fully_observed_tensor_span_its_modes():
    shape, rank = (6, 7, 8), 2
    gen = torch.Generator().manual_seed(0)
    true = [torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=D))[0] for n in shape]
    tensor = CP(shape, rank).full([u * w for u, w in zip(true, (3.0, 2.0, 1.0))])
    index = torch.cartesian_prod(*[torch.arange(n) for n in shape])
    factors = spectral_factors(shape, rank, index, tensor[tuple(index.T)])
    for u, f in zip(true, factors):
        q = torch.linalg.qr(f)[0]
        # every true mode vector lies in the span of the spectral columns
        torch.testing.assert_close(q @ (q.T @ u), u, rtol=0, atol=1e-8)


def test_the_cp_gram_adds_the_other_factors_variance_on_its_diagonal():
    layout = CP((4, 5, 3), 2)
    gen = torch.Generator().manual_seed(0)
    locs = [torch.randn(s, generator=gen, dtype=D) for s in layout.factor_shapes]
    variances = [torch.rand(s, generator=gen, dtype=D) for s in layout.factor_shapes]
    second = [m**2 + v for m, v in zip(locs, variances)]
    index = torch.stack([torch.randint(n, (30,), generator=gen) for n in layout.shape], dim=1)
    values = torch.randn(30, generator=gen, dtype=D)
    for f in range(3):
        gram, rhs, design, slices = _slice_statistics(layout, locs, second, index, values, f)
        plain, _, _, _ = _slice_statistics(layout, locs, None, index, values, f)
        squares = factor_design(layout, second, index, f)[0]  # E[A²] of every design entry
        excess = torch.zeros_like(rhs).index_add_(0, slices, squares - design**2)
        assert bool((excess > 0).all())
        torch.testing.assert_close(gram, plain + torch.diag_embed(excess))
        torch.testing.assert_close(gram.diagonal(dim1=1, dim2=2), torch.zeros_like(rhs).index_add_(0, slices, squares))


def test_the_matrix_free_core_update_of_all_zero_data_from_a_zero_core_stays_zero():
    # the residual starts at exactly zero, the tolerance too: no conjugate-gradient step (0 / 0)
    layout = Tucker((5, 6, 7), (2, 3, 2))
    gen = torch.Generator().manual_seed(0)
    locs = [torch.randn(s, generator=gen, dtype=D) for s in layout.factor_shapes]
    locs[0] = torch.zeros_like(locs[0])
    index = torch.stack([torch.randint(n, (40,), generator=gen) for n in layout.shape], dim=1)
    precision = torch.ones(1, 12, dtype=D)
    mean, var, spread = _tucker_core_update(layout, locs, index, torch.zeros(40, dtype=D), precision, 0.3)
    assert torch.equal(mean, torch.zeros(1, 12, dtype=D))
    assert bool(torch.isfinite(var).all() and torch.isfinite(spread).all())


@pytest.mark.parametrize("num_data", [1, 90, None])
def test_the_engine_takes_a_num_data_of_one_or_more_or_none(num_data):
    torch.manual_seed(0)
    model = tb.models.TensorCompletion((5, 6, 7), format="tt", max_rank=3).double()
    assert SVIEngine(model, MeanField(model, seed=0).double(), num_data).num_data == num_data


def test_the_optimizer_of_a_model_with_sparse_tables_gives_them_sparse_adam_at_the_same_rate():
    _, model = tiny_dlrm(sparse=True)
    optimizer = make_optimizer(model, MeanField(model, seed=0), lr=0.01)
    assert isinstance(optimizer, SparseAndDenseAdam) and isinstance(optimizer.sparse, torch.optim.SparseAdam)
    (group,) = optimizer.sparse.param_groups
    assert group["lr"] == group["base_lr"] == 0.01
    # the dense groups (the rest, the noise, the posterior scales at their share), then SparseAdam's
    assert [g["base_lr"] for g in optimizer.param_groups] == [0.01, 0.01, 0.01 * SCALE_LR, 0.01]
    assert {id(p) for p in group["params"]} == {id(t) for t in sparse_tables(model)}


def test_a_rank_search_plans_the_training_share_up_to_and_including_its_last_epoch():
    # 1000 examples, a tenth held out, batches of 64: 15 steps an epoch on the training share, 16
    # on all the data; every epoch up to the last search's trains on the share, the rest on all
    data = (torch.randn(1000, 3, dtype=D), torch.randn(1000, dtype=D))
    generator = torch.Generator().manual_seed(0)
    batches = TensorBatches(data, 64, generator)
    search = _RankSearch.plan(batches, 10, 0.1, 0.05, generator, None, None)
    assert len(search.train_batches) == 15 and len(search.all_batches) == 16
    last = search.epochs[-1]
    assert 0 <= last < 9
    assert search.total_steps(10) == 15 * (last + 1) + 16 * (10 - last - 1)
    # a fit resumed after e epochs trains the next on the share while e <= last
    for done, expected in ((last, search.train_batches), (last + 1, search.all_batches)):
        history = History()
        history.elbo = [0.0] * done
        assert search.resume(history) is expected


# ----- a second sample (after the guides moved to site names) -----


def test_spectral_factors_of_a_partly_observed_tensor_scale_by_the_observed_share():
    # the zero-filled data times total / observed has the full tensor's scale in expectation: the
    # leading singular value of each unfolding, and so the factors' product, is within about 20 %
    # of the full tensor's (a rank-1 tensor, 40 % observed, 6x7x8: a spread of a few percent)
    shape = (6, 7, 8)
    gen = torch.Generator().manual_seed(0)
    true = [torch.randn(n, 1, generator=gen, dtype=D) for n in shape]
    tensor = CP(shape, 1).full(true)
    index = torch.cartesian_prod(*[torch.arange(n) for n in shape])
    seen = torch.randperm(len(index), generator=gen)[: int(0.4 * len(index))]
    factors = spectral_factors(shape, 1, index[seen], tensor[tuple(index[seen].T)])
    scale = math.prod(float(f[:, 0].norm()) for f in factors)
    assert scale == pytest.approx(float(tensor.norm()), rel=0.2)


def test_a_checkpoint_at_rank_one_resumes(tmp_path):
    model = tb.models.TensorCompletion((8, 9, 10), format="tt", max_rank=3).to(D)
    guide = MeanField(model, seed=0)
    tb.prune(model, guide, ranks={"tensor": (1, 2)})
    fresh = tb.models.TensorCompletion((8, 9, 10), format="tt", max_rank=3).to(D)
    fresh_guide = MeanField(fresh, seed=1)
    tb.save(tmp_path / "m.pt", model, guide)
    tb.load(tmp_path / "m.pt", fresh, fresh_guide)
    assert fresh.tensor.layout.ranks == (1, 2)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh_guide.factor_means(fresh.tensor), guide.factor_means(model.tensor))
    )


def test_is_main_reads_torchruns_rank_before_a_process_group_exists(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert tbdist.is_main()
    monkeypatch.setenv("RANK", "1")
    assert not tbdist.is_main()
    monkeypatch.setenv("RANK", "0")
    assert tbdist.is_main()


def test_a_site_whose_log_density_is_not_finite_is_named():
    def model():
        pyro.sample("z", pyro.distributions.Normal(0.0, float("inf")), obs=torch.tensor(1.0))

    def guide():
        pass

    message = tb.infer.diagnostics.diagnose(model, guide, (), {}, step=3)
    assert "the model's log density at site 'z' is not finite" in message


def test_a_model_functions_parameters_are_the_stores_that_the_guide_does_not_hold():
    pyro.clear_param_store()
    completion = tb.models.TensorCompletion((4, 5, 6), format="tt", max_rank=2)

    def model(index, values=None):
        pyro.param("offset", torch.zeros(()))
        return completion(index, values)

    guide = MeanField(completion, seed=0)
    model(torch.zeros(2, 3, dtype=torch.long))
    guide(torch.zeros(2, 3, dtype=torch.long))
    names = [name for name, _ in tb.infer.diagnostics.model_parameters(model, guide)]
    assert "offset" in names and not any(name.startswith("MeanField.") for name in names)
    assert tb.infer.diagnostics.model_parameters(model, lambda *a: None) == []  # two functions: all the guide's


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decay": 5}, r"decay must be at most total: .* got decay=5, total=0"),
        ({"total": 4, "decay": 5}, "decay must be at most total"),
        ({"warmup": -1}, "warmup must be a non-negative int"),
        ({"ramp": 1.5}, "ramp must be a non-negative int"),
        ({"kl_weight": 0}, "kl_weight must be a positive number, got 0"),
        ({"kl_weight": float("nan")}, "kl_weight must be a positive number"),
    ],
)
def test_a_schedule_refuses_steps_it_cannot_follow(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tb.infer.Schedule(**kwargs)
    assert tb.infer.Schedule(total=8, decay=8).lr_factor(7) == pytest.approx(1 / 8)


def test_a_warm_up_of_one_sweep_starts_a_learned_noise_fresh():
    # with a learned noise, the warm-up starts it at warmup_noise times the data's spread, even for
    # a single warm-up sweep (the first noise reported is that start)
    from tensorbayes.infer.cavi import coordinate_ascent

    planted = tb.data.planted_tensor((4, 5, 6), "tt", (2, 2), observed=0.7, noise=0.01, seed=0, dtype=D)
    model = tb.models.TensorCompletion((4, 5, 6), format="tt", max_rank=3).double()
    guide = MeanField(model, seed=0).double()
    assert model.learns_noise
    noises = coordinate_ascent(model, guide, planted.train_index, planted.train_values, sweeps=4, warmup=1)
    assert noises[0] == pytest.approx(0.5 * float(planted.train_values.std()), rel=1e-12)


def test_a_frozen_parameter_of_the_model_is_not_stepped():
    model = tb.models.TensorCompletion((4, 5, 6), format="tt", max_rank=2)
    model.log_noise.requires_grad_(False)
    guide = MeanField(model, seed=0)
    optimizer = make_optimizer(model, guide, 0.01)
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.log_noise) not in stepped and stepped  # the guide's parameters are
