"""
tensorbayes.lightning: a Lightning Trainer over :class:`TensorBayesModule` makes the steps of
:func:`tensorbayes.fit` (same batches, same seed), logs the ELBO, ranks and accuracy, and
finds the planted ranks of the teacher-student task as ``tb.fit`` does.
"""

import warnings

import pytest
import torch
from pyro.nn import PyroModule

import tensorbayes as tb
from tensorbayes.guides import MeanField

pl = pytest.importorskip("lightning.pytorch")
from tensorbayes.lightning import TensorBayesModule  # noqa: E402


def _problem():
    task = tb.data.teacher_student(
        num_train=256, num_test=64, in_shape=(4, 4), out_shape=(4, 4), ranks=2, seed=0, dtype=torch.float64
    )
    torch.manual_seed(0)
    layer = tb.models.TensorizedLinear(16, 16, format="ttm", max_rank=3, in_shape=(4, 4), out_shape=(4, 4))
    model = tb.models.BayesianClassifier(layer, task.num_classes).double()
    guide = MeanField(model, seed=0).double()
    return task, model, guide


def _loader(x, y, batch_size, shuffle=True):
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0),
    )


def _trainer(epochs, checkpointing=False, **kwargs):
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _fit_lightning(module, loader, epochs, val_loader=None, seed=3):
    pl.seed_everything(seed, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")  # no held-out data: no validation
        trainer = _trainer(epochs)
        trainer.fit(module, loader, val_loader)
    return trainer


def test_lightning_makes_the_steps_of_fit_and_logs_elbo_ranks_and_accuracy():
    task, model, guide = _problem()
    # Lightning draws the second epoch's shuffle differently from the loader's own iteration:
    # an unshuffled loader gives both the same batches
    history = tb.fit(
        model,
        guide,
        _loader(task.x_train, task.y_train, 32, shuffle=False),
        epochs=2,
        seed=3,
        progress=False,
        eval_data=(task.x_test, task.y_test),
        eval_samples=10,
    )
    expected = {k: v.clone() for k, v in list(model.state_dict().items()) + list(guide.state_dict().items())}

    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train), lr=1e-2)
    trainer = _fit_lightning(
        module,
        _loader(task.x_train, task.y_train, 32, shuffle=False),
        2,
        _loader(task.x_test, task.y_test, 64, shuffle=False),
    )
    state = dict(list(model.state_dict().items()) + list(guide.state_dict().items()))
    for key, value in expected.items():
        assert torch.allclose(state[key], value, rtol=1e-9, atol=1e-9), key
    metrics = trainer.callback_metrics
    assert float(metrics["elbo"]) == pytest.approx(history.elbo[-1], rel=1e-6)
    assert float(metrics["log_likelihood"]) == pytest.approx(history.log_likelihood[-1], rel=1e-6)
    assert float(metrics["val_accuracy"]) == pytest.approx(history.accuracy[-1])  # the same posterior draws
    (name,) = history.ranks[-1]
    assert tuple(int(metrics[f"rank/{name or 'tensor'}/{b}"]) for b in range(1)) == history.ranks[-1][name]
    assert module.ranks() == history.ranks[-1]


def test_lightning_ramps_the_kl_term_to_its_kl_weight():
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train), kl_weight=0.4)
    trainer = _fit_lightning(module, _loader(task.x_train, task.y_train, 32), 1)  # 8 steps: warm-up 1, ramp 1
    assert module.engine.schedule.kl_weight == 0.4
    assert float(trainer.callback_metrics["beta"]) == pytest.approx(0.4 * 7 / 8)  # the epoch's mean: 0, then 0.4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_data=0), "num_data"),
        (dict(num_data=None), "num_data"),
        (dict(lr=0), "lr"),
        (dict(lambda_step=2), "lambda_step"),
        (dict(warmup=-1), "warmup"),
        (dict(kl_weight=-0.5), "kl_weight"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    _, model, guide = _problem()
    args = dict(num_data=256)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        TensorBayesModule(model, guide, **args)


@pytest.mark.slow
def test_lightning_finds_the_teacher_ranks_as_fit_does():
    task = tb.data.teacher_student()
    found = []
    for use_lightning in (False, True):
        torch.manual_seed(0)
        layer = tb.models.TensorizedLinear(
            64, 64, format="ttm", max_rank=6, in_shape=task.in_shape, out_shape=task.out_shape
        )
        model = tb.models.BayesianClassifier(PyroModule[torch.nn.Sequential](layer), task.num_classes)
        guide = MeanField(model, seed=0)
        if use_lightning:
            module = TensorBayesModule(model, guide, num_data=len(task.x_train), lr=1e-2)
            _fit_lightning(module, _loader(task.x_train, task.y_train, 256), 20, seed=0)
        else:
            tb.fit(model, guide, (task.x_train, task.y_train), epochs=20, batch_size=256, seed=0, progress=False)
        found.append(tb.ranks(model, guide))
    assert found[0] == found[1]
    assert tuple(found[1].values())[0] == tuple(task.ranks)


def test_sparse_embedding_tables_are_refused():
    from tensorbayes.data.clicks import ClickGenerator

    gen = ClickGenerator.tiny(seed=0)
    tables = {t: {"row_shape": gen.row_shapes[t], "col_shape": gen.col_shape} for t in gen.planted_tables}
    model = tb.models.DLRM(
        gen.cardinalities,
        embedding_dim=8,
        bottom=(4,),
        top=(4,),
        tensorize_min_rows=None,
        tables=tables,
        max_rank=2,
        sparse=True,
    )
    module = TensorBayesModule(model, MeanField(model, seed=0), num_data=64)
    with pytest.raises(ValueError, match="build the model's embedding tables with sparse=False"):
        module.configure_optimizers()


def _checkpointing_trainer(epochs, folder, callbacks=()):
    from lightning.pytorch.callbacks import ModelCheckpoint

    every_epoch = ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    return _trainer(epochs, checkpointing=True, callbacks=[*callbacks, every_epoch])


class _PruneAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 0:
            tb.prune(module.model, module.guide, ranks={name: (1,) for name in module.ranks()})


@pytest.mark.parametrize("prune", [False, True])
def test_a_run_resumed_from_a_lightning_checkpoint_makes_the_uninterrupted_steps(tmp_path, prune):
    # Lightning's checkpoint holds neither the engine's step (the schedule restarted with its warm-up)
    # nor the random state of the ELBO's draws, and a pruned model's state did not fit the unpruned one
    callbacks = [_PruneAfterFirstEpoch()] if prune else []
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train))
    pl.seed_everything(3, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        _checkpointing_trainer(3, tmp_path, callbacks).fit(module, _loader(task.x_train, task.y_train, 32, False))
    expected = {k: v.clone() for k, v in list(model.state_dict().items()) + list(guide.state_dict().items())}

    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train))
    pl.seed_everything(3, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer = _trainer(3)
        trainer.fit(module, _loader(task.x_train, task.y_train, 32, False), ckpt_path=tmp_path / "epoch=1.ckpt")
    assert module.engine.num_steps == trainer.global_step == 24
    state = dict(list(model.state_dict().items()) + list(guide.state_dict().items()))
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].shape == value.shape and torch.allclose(state[key], value, rtol=1e-9, atol=1e-9), key


def test_lightning_steps_and_checkpoints_the_optimizer_that_follows_pruned_parameters(tmp_path):
    # the engine rebuilt its optimizer after pruning, but Lightning kept the old one: its steps were not
    # counted (global_step stalled, no later checkpoint was written) and it saved the old parameters' state
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train))
    trainer = _checkpointing_trainer(2, tmp_path, [_PruneAfterFirstEpoch()])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, _loader(task.x_train, task.y_train, 32))
    assert trainer.global_step == module.engine.num_steps == 16
    assert trainer.optimizers[0] is module.engine.optimizer.optimizer
    stepped = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert stepped == {id(p) for p in list(model.parameters()) + list(guide.parameters()) if p.requires_grad}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0.ckpt", "epoch=1.ckpt"]


def test_a_second_fit_of_the_module_starts_a_new_schedule():
    # the engine's step went on from the first fit past the new schedule's end: a negative learning rate
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train))
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            rates.append(module.engine.optimizer.param_groups[0]["lr"])

    for _ in range(2):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            _trainer(1, callbacks=[Rates()]).fit(module, _loader(task.x_train, task.y_train, 32))
    assert module.engine.num_steps == 8
    assert rates[8:] == rates[:8] and min(rates) > 0


def _quiet(run):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        return run()


class _SeedEachBatch(pl.Callback):
    """Seed torch right before each test or predict step: Lightning's loops draw from it themselves."""

    def on_test_batch_start(self, *args):
        torch.manual_seed(5)

    def on_predict_batch_start(self, *args):
        torch.manual_seed(5)


def test_trainer_test_and_predict_give_the_posterior_predictive_of_tb_predict():
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train), eval_samples=7)
    _fit_lightning(module, _loader(task.x_train, task.y_train, 32), 1)
    x, y = task.x_test, task.y_test
    torch.manual_seed(5)
    mean, std = tb.predict(model, guide, x, num_samples=7)
    accuracy = (mean.argmax(-1) == y).double().mean().item()

    trainer = _trainer(1, callbacks=[_SeedEachBatch()])  # one batch each: the same draws as tb.predict's
    (scores,) = _quiet(lambda: trainer.test(module, _loader(x, y, len(x), shuffle=False), verbose=False))
    assert scores["test_accuracy"] == pytest.approx(accuracy)
    inputs_only = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=len(x))
    ((got_mean, got_std),) = _quiet(lambda: trainer.predict(module, inputs_only))
    torch.testing.assert_close(got_mean, mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_std, std, rtol=1e-12, atol=0)
    # a batch that ends with its targets is passed whole, as to tb.predict: the labels are then not drawn
    torch.manual_seed(5)
    expected = tb.predict(model, guide, x, y, num_samples=7)
    got = _quiet(lambda: trainer.predict(module, _loader(x, y, len(x), shuffle=False)))
    torch.testing.assert_close(got, [expected], rtol=1e-12, atol=0)
    assert (expected[0] - mean).abs().max() < 0.1  # the same posterior predictive, other draws


def test_a_warm_up_longer_than_the_trainers_run_is_warned_of():
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train), warmup=100)
    with pytest.warns(UserWarning, match=r"outlast the run \(8 steps\): the KL term never comes on"):
        _fit_lightning(module, _loader(task.x_train, task.y_train, 32), 1)
    assert module.engine.schedule.beta(7) == 0.0


def test_a_missing_model_or_guide_is_named():
    _, model, guide = _problem()
    with pytest.raises(TypeError, match="guide must be a callable"):
        TensorBayesModule(model, None, num_data=256)
    with pytest.raises(TypeError, match="model must be a callable"):
        TensorBayesModule(None, guide, num_data=256)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_batches_without_targets_are_refused(stage):
    task, model, guide = _problem()
    module = TensorBayesModule(model, guide, num_data=len(task.x_train))
    name = {"validate": "val", "test": "test"}[stage]
    inputs_only = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(task.x_test), batch_size=16)
    plain = torch.utils.data.DataLoader(task.x_test, batch_size=16)  # rows would be unpacked as inputs and target
    for loader, got in ((inputs_only, "a list of 1"), (plain, "a Tensor")):
        with pytest.raises(ValueError, match=rf"{name} batches must be tuples \(\*inputs, target\).*got {got}"):
            _quiet(lambda loader=loader: getattr(_trainer(1), stage)(module, loader, verbose=False))
