"""
Conjugate coordinate updates for completion: the linear design of one factor, and the sweeps
that write a fitted posterior into a MeanField guide.
"""

import pytest
import torch

from tensorbayes.data import planted_tensor
from tensorbayes.formats import CP, TT, TTM, Tucker
from tensorbayes.guides import MeanField
from tensorbayes.infer.cavi import coordinate_ascent, factor_design
from tensorbayes.models import TensorCompletion

D = torch.float64


@pytest.mark.parametrize(
    "layout",
    [TT((3, 4, 5), (2, 3)), TTM((2, 3, 4, 3, 2), (3, 2)), Tucker((3, 4, 5), (2, 3, 2)), CP((3, 4, 5), 3)],
    ids=["tt", "ttm-odd", "tucker", "cp"],
)
def test_factor_design_is_linear_in_the_factor(layout):
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s, generator=gen, dtype=D) for s in layout.factor_shapes]
    index = torch.stack([torch.randint(s, (40,), generator=gen) for s in layout.shape], dim=1)
    entries = layout.entries(factors, index)
    for f, labels in enumerate(layout.labels):
        design, slices, num_slices = factor_design(layout, factors, index, f)
        mode_dims = [d for d, lab in enumerate(labels) if lab[0] == "m"]
        rest = [d for d in range(factors[f].dim()) if d not in mode_dims]
        blocks = factors[f].permute(*mode_dims, *rest).reshape(num_slices, -1)
        assert design.shape == (40, blocks.shape[1])
        assert slices.shape == (40,) and int(slices.max()) < num_slices
        torch.testing.assert_close((design * blocks[slices]).sum(-1), entries, rtol=1e-10, atol=1e-10)
        # and changing factor f changes the entries by design @ Δblocks
        delta = torch.randn(factors[f].shape, generator=gen, dtype=D)
        moved = list(factors)
        moved[f] = factors[f] + delta
        delta_blocks = delta.permute(*mode_dims, *rest).reshape(num_slices, -1)
        torch.testing.assert_close(
            layout.entries(moved, index) - entries, (design * delta_blocks[slices]).sum(-1), rtol=1e-9, atol=1e-9
        )


def test_coordinate_ascent_fits_and_writes_the_guide():
    shape = (4, 5, 6)
    planted = planted_tensor(shape, "tt", (2, 2), observed=0.7, noise=0.01, seed=0, dtype=D)
    model = TensorCompletion(shape, format="tt", max_rank=3)
    guide = MeanField(model, seed=0)
    model.double()
    guide.double()
    before = [loc.clone() for loc in guide.factor_means(model.tensor)]
    noises = coordinate_ascent(model, guide, planted.train_index, planted.train_values, sweeps=8, warmup=2)
    assert len(noises) == 8 and all(n > 0 for n in noises)
    tensor = model.tensor
    locs = guide.factor_means(tensor)
    assert all(not torch.equal(a, b) for a, b in zip(before, locs))
    fitted = tensor.layout.entries(locs, planted.train_index)
    assert (fitted - planted.train_values).norm() / planted.train_values.norm() < 0.05
    assert planted.relative_error(tensor.layout.entries(locs, planted.test_index)) < 0.1
    for s in guide.factor_scales(tensor):
        assert torch.isfinite(s).all() and (s > 0).all() and s.std() > 0
    assert all((lam > 0).all() and torch.isfinite(lam).all() for lam in guide.lambdas()["tensor"])
    # the learned noise is written into the model, and it is the last one returned
    assert model.noise.item() == pytest.approx(noises[-1], rel=1e-6)
    assert model.noise.item() < 0.2


def test_coordinate_ascent_checks_data():
    model = TensorCompletion((4, 5, 6), format="tt", max_rank=2)
    guide = MeanField(model, seed=0)
    index = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="values"):
        coordinate_ascent(model, guide, index, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="index"):
        coordinate_ascent(model, guide, index + 1, torch.tensor([1.0, 2.0]))


def test_matrix_free_tucker_core_update_equals_the_direct_solve():
    """Conjugate gradients on the core's normal equations give the explicit block solve."""
    import importlib

    cavi = importlib.import_module("tensorbayes.infer.cavi")
    from tensorbayes.data import planted_tensor
    from tensorbayes.formats import Tucker

    planted = planted_tensor((5, 6, 7), "tucker", (2, 3, 2), observed=0.5, noise=0.05, seed=0, dtype=torch.float64)
    layout = Tucker((5, 6, 7), (4, 4, 4))
    generator = torch.Generator().manual_seed(0)
    locs = [torch.randn(s, generator=generator, dtype=torch.float64) for s in layout.factor_shapes]
    precision = torch.rand(1, 64, generator=generator, dtype=torch.float64) + 0.5
    index, values, noise_var = planted.train_index, planted.train_values, 0.3
    gram, rhs, design, slices = cavi._slice_statistics(layout, locs, None, index, values, 0)
    mean, var = cavi._solve_blocks(gram, rhs, precision, noise_var)
    free_mean, free_var, spread = cavi._tucker_core_update(
        layout, locs, index, values, precision, noise_var, iterations=200
    )
    assert torch.allclose(free_mean, mean, rtol=1e-8, atol=1e-10)
    assert torch.allclose(free_var, var, rtol=1e-10)
    assert torch.allclose(spread, (design**2 * var[slices]).sum(-1), rtol=1e-10)


def _pair(shape=(4, 5, 6), noise=None):
    model = TensorCompletion(shape, format="tt", max_rank=2, noise=noise).double()
    return model, MeanField(model, seed=0).double()


def _state(model, guide):
    return {k: v.clone() for k, v in [*model.state_dict().items(), *guide.state_dict().items()]}


def _assert_unchanged(before, model, guide):
    after = _state(model, guide)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sweeps": 0}, "sweeps must be a positive int"),
        ({"sweeps": -1}, "sweeps must be a positive int"),
        ({"sweeps": 2.5}, "sweeps must be a positive int"),
        ({"warmup": -1}, "warmup must be a non-negative int"),
        ({"warmup_noise": -0.5}, "warmup_noise must be a positive number"),
        ({"noise_decay": 0.0}, r"noise_decay must be a number in \(0, 1\]"),
        ({"noise_decay": 1.5}, r"noise_decay must be a number in \(0, 1\]"),
        ({"noise_floor": 0.0}, "noise_floor must be a positive number"),
    ],
)
def test_coordinate_ascent_refuses_bad_arguments_before_changing_anything(kwargs, match):
    # sweeps=0 or -1 returned no sweeps yet wrote the guide and the noise; a negative warmup or
    # warmup_noise ran as if positive; noise_decay=0 failed deep in the prior's update
    planted = planted_tensor((4, 5, 6), "tt", (2, 2), observed=0.5, noise=0.01, seed=0, dtype=D)
    model, guide = _pair()
    before = _state(model, guide)
    with pytest.raises(ValueError, match=match):
        coordinate_ascent(model, guide, planted.train_index, planted.train_values, **kwargs)
    _assert_unchanged(before, model, guide)


def test_coordinate_ascent_refuses_a_guide_of_another_model():
    # a MeanField guide of another model failed with a bare StopIteration
    planted = planted_tensor((4, 5, 6), "tt", (2, 2), observed=0.5, noise=0.01, seed=0, dtype=D)
    model, _ = _pair()
    other, other_guide = _pair()
    before = _state(other, other_guide)
    with pytest.raises(ValueError, match="guide must be the MeanField guide of this model"):
        coordinate_ascent(model, other_guide, planted.train_index, planted.train_values, sweeps=2)
    _assert_unchanged(before, other, other_guide)
    with pytest.raises(TypeError, match="guide must be a MeanField guide"):
        coordinate_ascent(model, object(), planted.train_index, planted.train_values, sweeps=2)


@pytest.mark.parametrize("case", ["no-observation", "one-observation", "constant"])
def test_coordinate_ascent_names_data_it_cannot_start_from(case):
    # none: a ZeroDivisionError or a reshape error; one observation (NaN variance) or equal values
    # (zero variance) with a learned noise: a failed SVD or "M ... must be finite" from the prior
    planted = planted_tensor((4, 5, 6), "tt", (2, 2), observed=0.5, noise=0.01, seed=0, dtype=D)
    index, values = planted.train_index, planted.train_values
    index, values = {
        "no-observation": (index[:0], values[:0]),
        "one-observation": (index[:1], values[:1]),
        "constant": (index, torch.full_like(values, 2.0)),
    }[case]
    model, guide = _pair()
    before = _state(model, guide)
    match = "index must hold at least one" if case == "no-observation" else "values must not all be equal"
    with pytest.raises(ValueError, match=match):
        coordinate_ascent(model, guide, index, values, sweeps=4, warmup=1)
    _assert_unchanged(before, model, guide)
    if case != "no-observation":  # a fixed noise needs no spread of the data: the fit runs
        model, guide = _pair(noise=0.1)
        assert coordinate_ascent(model, guide, index, values, sweeps=4, warmup=1) == [0.1] * 4


def test_closed_form_start_checks_sweeps_and_data():
    # sweeps=-2 ran the coordinate ascent with no sweeps, pruned, then one sweep; sweeps=0 took
    # the default; one or three data tensors failed to unpack
    from tensorbayes.infer.cavi import closed_form_start

    planted = planted_tensor((4, 5, 6), "tt", (2, 2), observed=0.5, noise=0.01, seed=0, dtype=D)
    data = (planted.train_index, planted.train_values)
    model, guide = _pair()
    before = _state(model, guide)
    for sweeps in (0, -2, 3.0):
        with pytest.raises(ValueError, match="sweeps must be a positive int"):
            closed_form_start(model, guide, *data, sweeps=sweeps)
    for bad in (data[:1], (*data, data[1])):
        with pytest.raises(ValueError, match=r"data must be \(index, values\)"):
            closed_form_start(model, guide, *bad, sweeps=2)
    _assert_unchanged(before, model, guide)
    assert closed_form_start(model, guide, *data, sweeps=2)
