"""
Data-parallel SVI (``tb.fit(..., distributed=True)``): two gloo processes on the loopback
interface make the same steps as one process with the same global batch, agree on the ranks
and the pruned model, and a rank that dies mid-epoch leaves the last checkpoint, from which a
rerun resumes to the uninterrupted result.

The processes are forked from the test (``torch.multiprocessing.start_processes``), so that
they start in milliseconds; each initializes its process group from the environment, as under
``torchrun``.
"""

import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tensorbayes as tb
from tensorbayes.guides import MeanField
from tensorbayes.infer import distributed as tbdist

WORLD = 2
EPOCHS = 2


def _problem():
    task = tb.data.teacher_student(
        num_train=256, num_test=64, in_shape=(4, 4), out_shape=(4, 4), ranks=2, seed=0, dtype=torch.float64
    )
    torch.manual_seed(0)  # the layer's bias is drawn from torch's generator
    layer = tb.models.TensorizedLinear(16, 16, format="ttm", max_rank=3, in_shape=(4, 4), out_shape=(4, 4))
    model = tb.models.BayesianClassifier(layer, task.num_classes).double()
    guide = MeanField(model, seed=0).double()
    return task, model, guide


def _state(model, guide):
    return {
        **{f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()},
        **{f"guide.{k}": v.detach().clone() for k, v in guide.state_dict().items()},
    }


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_kwargs(batch_size):
    return dict(epochs=EPOCHS, batch_size=batch_size, seed=4, progress=False)


# ----- what each rank runs -----


def _exact_job(rank, out):
    """Fit with two global batch sizes (64 = 2 x 32; 51 leaves a last batch of one example)."""
    results = {}
    for batch_size in (64, 51):
        task, model, guide = _problem()
        if rank == 1:  # a rank built with other initial values is overwritten by rank 0's
            with torch.no_grad():
                next(guide.parameters()).add_(1.0)
        history = tb.fit(model, guide, (task.x_train, task.y_train), distributed=True, **_fit_kwargs(batch_size))
        found = tb.ranks(model, guide)
        state = _state(model, guide)
        pruned = tb.prune(model, guide)
        results[batch_size] = dict(
            state=state,
            elbo=history.elbo,
            likelihood=history.log_likelihood,
            ranks=found,
            pruned=pruned,
            pruned_state=_state(model, guide),
        )
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


def _uninterrupted_job(rank, out):
    """The checkpointed run that a crashed and resumed one must reproduce."""
    task, model, guide = _problem()
    history = tb.fit(
        model,
        guide,
        (task.x_train, task.y_train),
        epochs=3,
        batch_size=64,
        seed=1,
        progress=False,
        distributed=True,
        checkpoint=os.path.join(out, "uninterrupted.pt"),
        eval_data=(task.x_test, task.y_test),
        eval_samples=3,
    )
    torch.save(
        dict(state=_state(model, guide), elbo=history.elbo, accuracy=history.accuracy),
        os.path.join(out, f"uninterrupted{rank}.pt"),
    )


def _crash_job(rank, out):
    """Rank 1 dies (a hard exit) at the third step of the second epoch."""
    real_step = tb.infer.SVIEngine.step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 4 + 3:  # 256 examples / 64 = 4 steps an epoch
            os._exit(3)
        return real_step(*args, **kwargs)

    tb.infer.SVIEngine.step = dying_step

    def keep_a_copy(epoch, history):  # rank 0 only: what the checkpoint held after epoch 0
        shutil.copy(os.path.join(out, "run.pt"), os.path.join(out, f"copy{epoch}.bin"))

    task, model, guide = _problem()
    tb.fit(
        model,
        guide,
        (task.x_train, task.y_train),
        epochs=3,
        batch_size=64,
        seed=1,
        progress=False,
        distributed=True,
        checkpoint=os.path.join(out, "run.pt"),
        eval_data=(task.x_test, task.y_test),
        eval_samples=3,
        callbacks=[keep_a_copy],
    )


def _resume_job(rank, out):
    task, model, guide = _problem()
    history = tb.fit(
        model,
        guide,
        (task.x_train, task.y_train),
        epochs=3,
        batch_size=64,
        seed=1,
        progress=False,
        distributed=True,
        checkpoint=os.path.join(out, "run.pt"),
        resume=True,
        eval_data=(task.x_test, task.y_test),
        eval_samples=3,
    )
    torch.save(
        dict(state=_state(model, guide), elbo=history.elbo, accuracy=history.accuracy),
        os.path.join(out, f"resumed{rank}.pt"),
    )


def _fit_recording_the_error(task, model, guide, path, error_type, epochs=2, batch_size=64):
    """A two-epoch distributed fit; the message of an ``error_type`` it raises is written to ``path``."""
    try:
        tb.fit(
            model,
            guide,
            (task.x_train, task.y_train),
            epochs=epochs,
            batch_size=batch_size,
            seed=1,
            progress=False,
            distributed=True,
        )
    except error_type as error:
        with open(path, "w") as f:
            f.write(str(error))


def _drift_job(rank, out):
    """Rank 1 damps its λ updates differently: the ranks drift apart, and both stop saying so."""
    task, model, guide = _problem()
    if rank == 1:
        real_update = guide.update_lambdas
        guide.update_lambdas = lambda step_size: real_update(step_size / 2)
    _fit_recording_the_error(task, model, guide, os.path.join(out, f"drift{rank}.txt"), RuntimeError)


def _settings_job(rank, out):
    """Rank 1 is given more epochs and a different batch size: both ranks refuse, naming them."""
    task, model, guide = _problem()
    path = os.path.join(out, f"settings{rank}.txt")
    _fit_recording_the_error(task, model, guide, path, ValueError, epochs=2 + rank, batch_size=64 - rank)


_JOBS = {
    "exact": _exact_job,
    "drift": _drift_job,
    "settings": _settings_job,
    "uninterrupted": _uninterrupted_job,
    "crash": _crash_job,
    "resume": _resume_job,
}


def _worker(rank, job, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        _JOBS[job](rank, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch(job, out):
    mp.start_processes(_worker, args=(job, _free_port(), str(out)), nprocs=WORLD, start_method="fork")


# ----- the tests -----


def test_two_processes_make_the_one_process_steps_and_agree_on_ranks_and_pruning(tmp_path):
    _launch("exact", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for batch_size in (64, 51):
        task, model, guide = _problem()
        history = tb.fit(model, guide, (task.x_train, task.y_train), **_fit_kwargs(batch_size))
        expected = _state(model, guide)
        expected_ranks = tb.ranks(model, guide)
        zero, one = ranks[0][batch_size], ranks[1][batch_size]
        # every rank holds bit for bit the same parameters, ranks, pruned model and history
        for key in expected:
            assert torch.equal(zero["state"][key], one["state"][key]), key
        assert zero["ranks"] == one["ranks"] and zero["pruned"] == one["pruned"]
        assert zero["pruned_state"].keys() == one["pruned_state"].keys()
        assert all(torch.equal(zero["pruned_state"][k], one["pruned_state"][k]) for k in zero["pruned_state"])
        assert zero["elbo"] == one["elbo"]
        # and they are one process's, to rounding (the likelihood sum is split in two)
        for key in expected:
            assert torch.allclose(zero["state"][key], expected[key], rtol=0, atol=1e-5), key
            assert torch.allclose(zero["state"][key], expected[key], rtol=1e-9, atol=1e-9), key
        assert zero["ranks"] == expected_ranks
        assert zero["elbo"] == pytest.approx(history.elbo, rel=1e-9)
        assert zero["likelihood"] == pytest.approx(history.log_likelihood, rel=1e-9)


def test_a_rank_dying_mid_epoch_leaves_the_last_checkpoint_and_a_rerun_resumes(tmp_path):
    _launch("uninterrupted", tmp_path)
    uninterrupted = torch.load(tmp_path / "uninterrupted0.pt", weights_only=False)
    with pytest.raises(mp.ProcessExitedException):
        _launch("crash", tmp_path)
    path = tmp_path / "run.pt"
    assert (tmp_path / "copy0.bin").exists() and not (tmp_path / "copy1.bin").exists()
    assert path.read_bytes() == (tmp_path / "copy0.bin").read_bytes()  # epoch 0's, intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint-")]  # no temporary file
    assert torch.load(path, weights_only=False)["epoch"] == 0

    _launch("resume", tmp_path)
    resumed = [torch.load(tmp_path / f"resumed{r}.pt", weights_only=False) for r in range(WORLD)]
    for run in resumed:
        for key, value in uninterrupted["state"].items():
            assert torch.allclose(run["state"][key], value, rtol=0, atol=1e-12), key
        assert run["elbo"] == uninterrupted["elbo"] and run["accuracy"] == uninterrupted["accuracy"]
        assert len(run["accuracy"]) == 3 and all(0 <= a <= 1 for a in run["accuracy"])


def test_ranks_that_drift_apart_are_stopped_on_every_rank(tmp_path):
    _launch("drift", tmp_path)
    for rank in range(WORLD):
        assert "differ after epoch 0" in (tmp_path / f"drift{rank}.txt").read_text()


def test_ranks_given_different_settings_are_refused_on_every_rank_before_a_step(tmp_path):
    _launch("settings", tmp_path)
    for rank in range(WORLD):
        message = (tmp_path / f"settings{rank}.txt").read_text()
        assert "the same settings on every process" in message
        assert "epochs: [2, 3]" in message and "batch_size: [64, 63]" in message and "lr:" not in message


# ----- one process: the switch, its errors, the launcher -----


def test_distributed_without_a_process_group_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    task, model, guide = _problem()
    before = _state(model, guide)
    with pytest.raises(RuntimeError, match="torchrun"):
        tb.fit(model, guide, (task.x_train, task.y_train), epochs=1, distributed=True, progress=False)
    after = _state(model, guide)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(TypeError, match="distributed"):
        tb.fit(model, guide, (task.x_train, task.y_train), epochs=1, distributed="yes", progress=False)


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_world_of_one_is_one_process_and_a_loader_needs_a_distributed_sampler(world_of_one):
    task, model, guide = _problem()
    h1 = tb.fit(model, guide, (task.x_train, task.y_train), **_fit_kwargs(64))
    expected = _state(model, guide)
    task, model, guide = _problem()
    h2 = tb.fit(model, guide, (task.x_train, task.y_train), distributed=True, **_fit_kwargs(64))
    state = _state(model, guide)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert h1.elbo == h2.elbo

    dataset = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    with pytest.raises(ValueError, match="DistributedSampler"):
        tb.fit(
            model,
            guide,
            torch.utils.data.DataLoader(dataset, batch_size=32),
            epochs=1,
            distributed=True,
            progress=False,
        )
    sampler = torch.utils.data.DistributedSampler(dataset, seed=0)
    history = tb.fit(
        model,
        guide,
        torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler),
        epochs=2,
        distributed=True,
        progress=False,
        eval_data=(task.x_test, task.y_test),
        eval_samples=2,
    )
    assert len(history.accuracy) == 2 and sampler.epoch == 1


def test_launch_runs_torchrun_without_the_nproc_option(monkeypatch):
    seen = []
    monkeypatch.setattr(tbdist.subprocess, "call", lambda command: seen.append(command) or 0)
    assert tbdist.launch(["train", "--nproc", "2", "--epochs=3", "--nproc=2", "--out", "x"], 2) == 0
    (command,) = seen
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tensorbayes.cli",
        "train",
        "--epochs=3",
        "--out",
        "x",
    ]
    with pytest.raises(ValueError, match="nproc"):
        tbdist.launch(["train"], 0)
