"""Checkpoints of :func:`tensorbayes.fit`: atomic, and a resumed run equals an uninterrupted one."""

import pytest
import torch

import tensorbayes as tb
from tensorbayes.data import planted_tensor
from tensorbayes.guides import MeanField
from tensorbayes.models import TensorCompletion
from tests.common import as_if_written_on_a_gpu

SHAPE = (6, 7, 8)


def _problem():
    planted = planted_tensor(SHAPE, "tt", (2, 2), observed=0.5, noise=0.05, seed=0, dtype=torch.float64)
    model = TensorCompletion(SHAPE, format="tt", max_rank=4).double()
    guide = MeanField(model, seed=0).double()
    return planted, model, guide


def _state(model, guide):
    return {
        **{f"model.{k}": v.clone() for k, v in model.state_dict().items()},
        **{f"guide.{k}": v.clone() for k, v in guide.state_dict().items()},
    }


@pytest.mark.parametrize("init", ["none", "auto"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, init):
    kwargs = dict(batch_size=64, seed=3, progress=False, init=init, init_sweeps=4)
    planted, model, guide = _problem()
    data = (planted.train_index, planted.train_values)
    tb.fit(model, guide, data, epochs=3, **kwargs)
    expected = _state(model, guide)

    path = tmp_path / "run.pt"
    planted, model, guide = _problem()

    def crash_after_the_second_epoch(epoch, history):  # its checkpoint is written before the callbacks
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        tb.fit(model, guide, data, epochs=3, checkpoint=str(path), callbacks=[crash_after_the_second_epoch], **kwargs)
    planted, model, guide = _problem()  # a new process: fresh objects, the checkpoint on disk
    history = tb.fit(model, guide, data, epochs=3, checkpoint=str(path), resume=True, **kwargs)
    resumed = _state(model, guide)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(resumed[key], expected[key], rtol=0, atol=1e-12), key
    assert len(history.elbo) == 3


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_models_device(tmp_path, monkeypatch):
    # fit read the checkpoint without map_location: a GPU's checkpoint failed on a CPU-only machine
    kwargs = dict(batch_size=64, seed=3, progress=False, init="none")
    planted, model, guide = _problem()
    data = (planted.train_index, planted.train_values)
    uninterrupted = tb.fit(model, guide, data, epochs=3, **kwargs)
    expected = _state(model, guide)

    path = tmp_path / "run.pt"
    planted, model, guide = _problem()

    def crash_after_the_second_epoch(epoch, history):  # the schedule is the 3 epochs' (its checkpoint is written)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        tb.fit(model, guide, data, epochs=3, checkpoint=str(path), callbacks=[crash_after_the_second_epoch], **kwargs)
    as_if_written_on_a_gpu(path, monkeypatch)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    planted, model, guide = _problem()
    history = tb.fit(model, guide, data, epochs=3, checkpoint=str(path), resume=True, **kwargs)
    resumed = _state(model, guide)
    assert all(t.device.type == "cpu" for t in resumed.values())
    for key in expected:  # the optimizer state and random states restored too: the same run
        assert torch.allclose(resumed[key], expected[key], rtol=0, atol=1e-12), key
    assert history.elbo == uninterrupted.elbo


def test_a_checkpoint_read_onto_a_device_keeps_its_random_states_on_the_cpu(tmp_path, monkeypatch):
    # a map_location device took every tensor there: a GPU's random states, which torch restores from
    # CPU tensors only (the meta device stands in for a GPU: the model's tensors go there)
    planted, model, guide = _problem()
    path = tmp_path / "run.pt"
    data = (planted.train_index, planted.train_values)
    tb.fit(model, guide, data, epochs=1, batch_size=64, seed=0, progress=False, init="none", checkpoint=str(path))
    as_if_written_on_a_gpu(path, monkeypatch)
    planted, model, guide = _problem()
    model.to("meta"), guide.to("meta")
    state = tb.infer.load_checkpoint(str(path), model, guide, map_location=torch.device("meta"))
    assert all(t.device.type == "meta" for t in state["model"].values())
    assert all(t.device.type == "meta" for t in state["guide"].values())
    for rng in (state["generator"], state["rng"]["torch"]):
        assert rng.device.type == "cpu" and rng.dtype == torch.uint8
        torch.Generator().set_state(rng)  # as fit restores them: a tensor elsewhere is refused


def test_a_crash_mid_epoch_leaves_the_last_complete_checkpoint(tmp_path, monkeypatch):
    planted, model, guide = _problem()
    data = (planted.train_index, planted.train_values)
    path = tmp_path / "run.pt"
    tb.fit(model, guide, data, epochs=1, batch_size=64, seed=0, progress=False, init="none", checkpoint=str(path))
    saved = path.read_bytes()
    real_step = tb.infer.SVIEngine.step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-epoch")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tb.infer.SVIEngine, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        tb.fit(
            model,
            guide,
            data,
            epochs=3,
            batch_size=64,
            seed=0,
            progress=False,
            init="none",
            checkpoint=str(path),
            resume=True,
        )
    assert path.read_bytes() == saved
    assert not [p for p in tmp_path.iterdir() if p.name != "run.pt"]  # no temporary file left
    monkeypatch.setattr(tb.infer.SVIEngine, "step", real_step)
    history = tb.fit(
        model,
        guide,
        data,
        epochs=2,
        batch_size=64,
        seed=0,
        progress=False,
        init="none",
        checkpoint=str(path),
        resume=True,
    )
    assert len(history.elbo) == 2


def test_a_corrupt_checkpoint_is_refused_naming_it(tmp_path):
    planted, model, guide = _problem()
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    before = _state(model, guide)
    with pytest.raises(ValueError, match="run.pt"):
        tb.fit(
            model,
            guide,
            (planted.train_index, planted.train_values),
            epochs=1,
            progress=False,
            checkpoint=str(path),
            resume=True,
        )
    after = _state(model, guide)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_needs_a_checkpoint():
    planted, model, guide = _problem()
    with pytest.raises(ValueError, match="checkpoint"):
        tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=1, resume=True, progress=False)


def test_a_dataloader_is_fitted_with_the_dataset_size_and_evaluated(monkeypatch):
    planted, model, guide = _problem()
    dataset = torch.utils.data.TensorDataset(planted.train_index, planted.train_values)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    real_step = tb.infer.SVIEngine.step

    def recording_step(engine, *batch, **kwargs):
        seen.append((len(batch[0]), engine.num_data))
        return real_step(engine, *batch, **kwargs)

    monkeypatch.setattr(tb.infer.SVIEngine, "step", recording_step)
    history = tb.fit(
        model,
        guide,
        loader,
        epochs=2,
        progress=False,
        init="none",
        eval_data=(planted.test_index, planted.test_values),
        eval_samples=5,
    )
    assert {n for _, n in seen} == {len(dataset)}
    assert sum(b for b, _ in seen) == 2 * len(dataset)
    assert len(history.error) == 2 and all(0 < e < 10 for e in history.error)
    assert len(history.ranks) == 2 and history.ranks[-1]["tensor"]


def test_callbacks_see_every_epoch_and_bad_ones_are_refused():
    planted, model, guide = _problem()
    data = (planted.train_index, planted.train_values)
    seen = []
    tb.fit(
        model,
        guide,
        data,
        epochs=3,
        progress=False,
        init="none",
        callbacks=[lambda e, h: seen.append((e, len(h.elbo)))],
    )
    assert seen == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(TypeError, match="callbacks"):
        tb.fit(model, guide, data, epochs=1, progress=False, callbacks=[3])


def _classifier():
    task = tb.data.teacher_student(
        num_train=256, num_test=64, in_shape=(4, 4), out_shape=(4, 4), ranks=2, seed=0, dtype=torch.float64
    )
    torch.manual_seed(0)  # the bias is initialized from torch's generator, as nn.Linear's
    layer = tb.models.TensorizedLinear(16, 16, format="ttm", max_rank=3, in_shape=(4, 4), out_shape=(4, 4))
    model = tb.models.BayesianClassifier(layer, task.num_classes).double()
    guide = MeanField(model, seed=0).double()
    return task, model, guide


def test_a_classifier_resumed_at_epoch_k_equals_the_uninterrupted_run_at_k_plus_1(tmp_path):
    kwargs = dict(batch_size=32, seed=5, progress=False, eval_samples=3)
    task, model, guide = _classifier()
    data, held_out = (task.x_train, task.y_train), (task.x_test, task.y_test)
    uninterrupted = tb.fit(model, guide, data, epochs=3, eval_data=held_out, **kwargs)
    expected = _state(model, guide)

    class Interrupted(Exception):
        pass

    def stop_after_epoch_k(epoch, history, k=1):
        if epoch == k:
            raise Interrupted

    path = tmp_path / "classifier.pt"
    task, model, guide = _classifier()
    with pytest.raises(Interrupted):  # the same run, stopped after its checkpoint at epoch k = 1 (0-based)
        tb.fit(
            model,
            guide,
            data,
            epochs=3,
            eval_data=held_out,
            checkpoint=str(path),
            callbacks=[stop_after_epoch_k],
            **kwargs,
        )
    task, model, guide = _classifier()
    resumed = tb.fit(model, guide, data, epochs=3, eval_data=held_out, checkpoint=str(path), resume=True, **kwargs)
    state = _state(model, guide)
    for key in expected:
        assert torch.allclose(state[key], expected[key], rtol=0, atol=1e-12), key
    assert resumed.accuracy == uninterrupted.accuracy and resumed.elbo == uninterrupted.elbo


def _completion(fmt="tt", shape=SHAPE, max_rank=4):
    model = TensorCompletion(shape, format=fmt, max_rank=max_rank).double()
    return model, MeanField(model, seed=0).double()


def _written_by(tmp_path, model, guide, shape=SHAPE):
    planted = planted_tensor(shape, "tt", (2, 2), observed=0.5, noise=0.05, seed=0, dtype=torch.float64)
    path = tmp_path / "other.pt"
    tb.fit(
        model,
        guide,
        (planted.train_index, planted.train_values),
        epochs=1,
        batch_size=64,
        seed=0,
        progress=False,
        init="none",
        checkpoint=str(path),
    )
    return path, (planted.train_index, planted.train_values)


@pytest.mark.parametrize(
    "written, resumed, message",
    [
        # another format: TT (2 bonds) into CP (1 bond) and into Tucker (3 bonds)
        (
            dict(fmt="tt"),
            dict(fmt="cp"),
            r"tensor 'tensor': the checkpoint holds 2 bonds at ranks \(4, 4\), "
            r"the model a cp tensor of shape \(6, 7, 8\) with 1 bond at ranks \(4,\)",
        ),
        (
            dict(fmt="tt"),
            dict(fmt="tucker"),
            r"holds 2 bonds .* the model a tucker tensor of shape \(6, 7, 8\) with 3 bonds",
        ),
        # other ranks: the model cannot grow to the checkpoint's
        (
            dict(max_rank=4),
            dict(max_rank=2),
            r"the checkpoint holds ranks \(4, 4\), the model a tt tensor .* at ranks "
            r"\(2, 2\) \(a model is shrunk .* never grown\)",
        ),
        # another shape, the same bonds: the factors differ
        (
            dict(),
            dict(shape=(6, 7, 9)),
            r"the checkpoint's factors are locs.tensor.factor0_unconstrained \(1, 6, 4\), "
            r".*factor2_unconstrained \(4, 8, 1\); .* would be .*factor2_unconstrained \(4, 9, 1\)",
        ),
    ],
)
def test_a_checkpoint_of_another_model_is_refused_naming_the_mismatch(tmp_path, written, resumed, message):
    path, data = _written_by(tmp_path, *_completion(**written))
    model, guide = _completion(**resumed)
    before, ranks = _state(model, guide), model.tensor.layout.ranks
    with pytest.raises(ValueError, match=message) as info:
        tb.fit(
            model, guide, data, epochs=2, batch_size=64, progress=False, init="none", checkpoint=str(path), resume=True
        )
    assert "does not fit this model" in str(info.value) and "other.pt" in str(info.value)
    after = _state(model, guide)  # nothing changed: not the ranks, not a value
    assert model.tensor.layout.ranks == ranks and after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "written, resumed, message",
    [
        # 16 -> 16 is tensorized at min_features=16, 16 -> 8 is not
        (
            16,
            8,
            r"the checkpoint holds low-rank tensors \['net.0.weight', 'net.2.weight'\], the model \['net.0.weight'\] "
            r"\(missing from the checkpoint: \[\], not in the model: \['net.2.weight'\]\)",
        ),
        # both last layers dense: their plain parameters differ
        (
            10,
            12,
            r"the model's state differs: net.2.bias: the checkpoint's \(10,\), the model's \(12,\); "
            r"net.2.weight: the checkpoint's \(10, 16\), the model's \(12, 16\)",
        ),
    ],
)
def test_a_checkpoint_of_another_network_is_refused_naming_the_layers(tmp_path, written, resumed, message):
    def classifier(hidden):
        net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, hidden))
        net = tb.models.tensorize(net, format="tt", max_rank=2, min_features=16, order=2)
        model = tb.models.BayesianClassifier(net, hidden).double()
        return model, MeanField(model, seed=0).double()

    task = tb.data.teacher_student(
        num_train=64, num_test=8, in_shape=(4, 4), out_shape=(4, 4), ranks=2, seed=0, dtype=torch.float64
    )
    path = tmp_path / "net.pt"
    tb.fit(
        *classifier(written),
        (task.x_train, task.y_train % written),
        epochs=1,
        batch_size=32,
        progress=False,
        checkpoint=str(path),
    )
    model, guide = classifier(resumed)
    before = _state(model, guide)
    with pytest.raises(ValueError, match=message):
        tb.fit(
            model,
            guide,
            (task.x_train, task.y_train % resumed),
            epochs=2,
            batch_size=32,
            progress=False,
            checkpoint=str(path),
            resume=True,
        )
    after = _state(model, guide)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_pruned_checkpoint_still_shrinks_the_model_it_fits(tmp_path):
    # lower ranks in the checkpoint than in the model are the pruned run's: the model follows them
    model, guide = _completion(max_rank=4)
    path, data = _written_by(tmp_path, model, guide)
    state = torch.load(path, weights_only=False)
    keep = [torch.tensor([0, 1]), torch.tensor([0, 1, 2])]
    guide.truncate(model.tensor, keep)
    model.tensor.set_layout(model.tensor.layout.with_ranks((2, 3)))
    state.update(model=model.state_dict(), guide=guide.state_dict(), ranks={"tensor": (2, 3)})
    torch.save(state, path)
    fresh, fresh_guide = _completion(max_rank=4)
    tb.infer.load_checkpoint(str(path), fresh, fresh_guide)
    assert fresh.tensor.layout.ranks == (2, 3)
    for a, b in zip(fresh_guide.factor_means(fresh.tensor), guide.factor_means(model.tensor)):
        assert torch.equal(a, b)


def test_save_names_a_model_or_guide_that_is_not_a_module(tmp_path):
    _, model, guide = _problem()
    for args, name in (((model, None), "guide"), ((None, guide), "model")):
        with pytest.raises(TypeError, match=f"{name} must be a torch.nn.Module"):
            tb.save(tmp_path / "m.pt", *args)
    assert list(tmp_path.iterdir()) == []


# ----- tb.save / tb.load: a user's robustness sweep -----


def test_save_refuses_a_folder_a_missing_folder_and_a_path_of_another_type(tmp_path):
    model, guide = _completion()
    for path, error, message in (
        (tmp_path, ValueError, "path must be a file path, got the folder"),
        (tmp_path / "missing" / "m.pt", ValueError, "in a folder that does not exist"),
        (None, TypeError, r"path must be a file path \(a str or os.PathLike\), got NoneType"),
        (str(tmp_path / "m.pt").encode(), TypeError, "got bytes"),
    ):
        with pytest.raises(error, match=message):
            tb.save(path, model, guide)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_save_and_load_refuse_arguments_out_of_order_and_a_guide_of_another_model(tmp_path):
    model, guide = _completion()
    other, other_guide = _completion()
    path = tmp_path / "m.pt"
    for args, error, message in (
        ((guide, model), TypeError, r"model must be the model, got a guide \(MeanField\)"),
        ((model, other_guide), ValueError, "guide was built for another model"),
    ):
        with pytest.raises(error, match=message):
            tb.save(path, *args)
    assert list(tmp_path.iterdir()) == []
    tb.save(path, other, other_guide)
    before = _state(model, guide)
    for args, error, message in (
        ((guide, model), TypeError, r"model must be the model, got a guide \(MeanField\)"),
        ((model, other_guide), ValueError, "guide was built for another model"),
        ((model, None), TypeError, "guide must be a torch.nn.Module"),
    ):
        with pytest.raises(error, match=message):
            tb.load(path, *args)
    with pytest.raises(TypeError, match="path must be a file path"):
        tb.load(None, model, guide)
    after = _state(model, guide)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_saved_on_a_gpu_loads_on_a_machine_without_one(tmp_path, monkeypatch):
    model, guide = _completion()
    tb.prune(model, guide, ranks={"tensor": (2, 3)})
    path = tmp_path / "m.pt"
    with monkeypatch.context() as patch:  # every tensor written as a GPU's
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        tb.save(path, model, guide)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load makes of the file
        torch.load(path, weights_only=False)
    fresh, fresh_guide = _completion()
    tb.load(path, fresh, fresh_guide)
    assert fresh.tensor.layout.ranks == (2, 3)
    for a, b in zip(fresh_guide.factor_means(fresh.tensor), guide.factor_means(model.tensor)):
        assert a.device.type == "cpu" and torch.equal(a, b)
