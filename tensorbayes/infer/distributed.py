"""
Data-parallel SVI on :mod:`torch.distributed`: what ``tb.fit(..., distributed=True)`` runs on.

Every process (a *rank*) holds a full copy of the model and the guide and sees one shard of
every minibatch. The factors of a tensorbayes model are global latents: the ELBO draws them
once per step for the whole batch, so every rank, seeded alike, draws the same factor sample
as one process would, and only the likelihood sum is split across the ranks. Each rank scales
its likelihood so that the average of the ranks' losses is the one-process ELBO of the global
batch; a single ``all_reduce`` of the flattened gradients (averaged) then gives every rank the
one-process gradient, Adam makes the same step everywhere, and the closed-form λ update,
which depends only on the guide's parameters, stays identical on every rank (checked once
per epoch by :func:`check_in_sync`).

Why a plain ``all_reduce`` of ``.grad`` and not :class:`~torch.nn.parallel.DistributedDataParallel`:
the loss is not one module's forward but a Pyro ELBO over a model and a guide, whose
parameters DDP would need wrapped in one module (Pyro's ``module_local_params``). DDP's
bucketing overlaps communication with the backward pass, which pays for large dense networks;
the gradients of factorized weights are small by construction (kilobytes to a few megabytes),
so there is little to overlap, while one all-reduce of one flat buffer after ``backward`` is
exact, easy to check, and needs no change to the user's model or guide.

What differs from one process: the evaluation of ``eval_data`` runs in shards with a forked
random state, so after the first evaluation the ranks (which still agree with each other) draw
other samples than one process would; and a :class:`~torch.utils.data.DistributedSampler`
pads the last shards with repeated examples unless ``drop_last=True``. Without ``eval_data``
and with tensor data, K processes make the one-process steps to rounding.

The process group: :func:`init` uses an initialized :mod:`torch.distributed` group, or
initializes one from the environment that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) with gloo for CPU tensors and NCCL for CUDA tensors.

Usage::

    # train.py, started as: torchrun --nproc_per_node 4 train.py
    tb.fit(model, guide, (x, y), epochs=20, batch_size=1024, seed=0, distributed=True)

    # or from the command line
    tensorbayes train --data fashion-mnist --nproc 4 --out runs/fm
"""

import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pyro
import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger

from ..checks import check_int
from .batches import TensorBatches, module_device
from .predict import predict

__all__ = [
    "DistributedContext",
    "LikelihoodScale",
    "ShardedTensorBatches",
    "all_reduce_step",
    "broadcast_seed",
    "broadcast_state",
    "check_in_sync",
    "check_loader",
    "evaluate",
    "in_torchrun",
    "init",
    "is_main",
    "launch",
]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """The rank of this process among ``world_size`` processes; rank 0 is the main one."""

    rank: int
    world_size: int

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        dist.barrier()


def is_main():
    """
    ``True`` unless this process is a rank other than 0: of an initialized process group, or
    (before :func:`tensorbayes.fit` initializes it) of ``torchrun``'s environment. Guard
    output and files that one process should write.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init():
    """
    The :class:`DistributedContext` of this process: an initialized process group's, or one
    initialized from ``torchrun``'s environment (gloo for CPU tensors, NCCL for CUDA ones).

    :raises RuntimeError: when there is no process group and no ``torchrun`` environment,
        saying how to launch.
    """
    if not dist.is_available():
        raise RuntimeError("distributed=True needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        missing = [name for name in _ENV if name not in os.environ]
        if missing:
            raise RuntimeError(
                "distributed=True needs a torch.distributed process group, and none is initialized nor "
                f"described by the environment (missing {', '.join(missing)}): launch the script with "
                "`torchrun --nproc_per_node K script.py` (or `tensorbayes train --nproc K`), or call "
                "torch.distributed.init_process_group() before tb.fit"
            )
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size())


def broadcast_seed(seed, ctx, modules=()):
    """
    Rank 0's ``seed`` on every rank (drawn on rank 0 when ``None``), so that all ranks agree;
    sent from the device of ``modules`` (a NCCL group carries CUDA tensors only).
    """
    value = torch.tensor(
        [int(torch.randint(2**31, ())) if seed is None else int(seed)],
        dtype=torch.int64,
        device=module_device(*modules),
    )
    dist.broadcast(value, src=0)
    return int(value.item())


def check_same_settings(settings, ctx):
    """
    Refuse, on every rank alike, settings that differ between the ranks (``{name: value}`` of
    plain values): ranks that disagree on their batches or schedule would wait on each other
    for ever, or drift apart and stop later with a misleading message.
    """
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, settings)
    differ = [name for name in settings if any(other.get(name) != settings[name] for other in gathered)]
    if differ:
        by_rank = "; ".join(f"{name}: {[other.get(name) for other in gathered]}" for name in differ)
        raise ValueError(f"distributed=True needs the same settings on every process; by rank: {by_rank}")


@torch.no_grad()
def broadcast_state(modules, ctx):
    """Copy rank 0's parameters and buffers of ``modules`` to every rank (as DDP does at start)."""
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


class LikelihoodScale(Messenger):
    """Multiply the log density of every observed site by ``scale`` (the rank's share of the batch)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.scale


class ShardedTensorBatches(TensorBatches):
    """
    The minibatches of a tuple of tensors for one rank: every epoch all ranks draw the same
    global permutation (one seeded generator), cut it into global batches of ``batch_size``
    and take their contiguous shard of each (sizes differ by at most one). Yields
    ``(batch, likelihood_scale)`` with ``likelihood_scale = world_size * shard / global batch``,
    so that the ranks' average loss is the one-process ELBO of the global batch; a rank whose
    shard is empty (a last global batch smaller than the number of ranks) gets one example at
    scale 0, so that it still takes part in the step.
    """

    def __init__(self, data, batch_size, generator, ctx):
        super().__init__(data, batch_size, generator)
        self.ctx = ctx

    def __iter__(self):
        for idx in self.indices():
            shard = idx.tensor_split(self.ctx.world_size)[self.ctx.rank]
            scale = self.ctx.world_size * len(shard) / len(idx)
            if len(shard) == 0:
                shard, scale = idx[:1], 0.0
            yield [t[shard] for t in self.data], scale


def check_loader(loader, ctx):
    """A DataLoader is sharded by a :class:`~torch.utils.data.DistributedSampler` of this world."""
    sampler = loader.sampler
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        raise ValueError(
            "data: with distributed=True a DataLoader must shard its data set with a DistributedSampler, "
            "e.g. DataLoader(dataset, batch_size=global_batch // world_size, "
            "sampler=DistributedSampler(dataset, seed=seed)); tensors are sharded by tb.fit itself"
        )
    if sampler.num_replicas != ctx.world_size or sampler.rank != ctx.rank:
        raise ValueError(
            f"data: the DataLoader's DistributedSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank}, "
            f"but this process is rank {ctx.rank} of {ctx.world_size}"
        )


def all_reduce_step(params, loss, likelihood, ctx):
    """
    Average the gradients of ``params`` and the scalars ``loss`` (a tensor) and ``likelihood``
    over the ranks: one ``all_reduce`` of one flat buffer per gradient dtype and device (the
    scalars ride in the first). Returns the averaged ``(loss, likelihood)`` as floats.
    Parameters without a gradient (the same on every rank) are left without one.
    """
    groups = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    if not groups:
        groups[(loss.dtype, loss.device)] = []
    scalars = None
    for (dtype, device), group in groups.items():
        parts = [p.grad.reshape(-1) for p in group]
        if scalars is None:
            parts.append(
                torch.stack(
                    [loss.detach().to(device, dtype), torch.tensor(float(likelihood), dtype=dtype, device=device)]
                )
            )
        buffer = torch.cat(parts)
        dist.all_reduce(buffer)
        buffer /= ctx.world_size
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(buffer[offset : offset + n].view_as(p.grad))
            offset += n
        if scalars is None:
            scalars = buffer[offset:].tolist()
    return scalars[0], scalars[1]


def _checksum(modules, device):
    """Three numbers that differ, in practice, whenever two copies of ``modules`` differ."""
    values = [
        t.detach().reshape(-1).to(device, torch.float64)
        for m in modules
        for t in list(m.parameters()) + list(m.buffers())
        if t.is_floating_point()
    ]
    flat = torch.cat(values) if values else torch.zeros(1, dtype=torch.float64, device=device)
    weights = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64, device=device)
    return torch.stack([flat.sum(), flat.abs().sum(), (flat * weights).sum()])


@torch.no_grad()
def check_in_sync(modules, ctx, where):
    """
    Check that every rank holds the same parameters and buffers of ``modules`` (the λ
    updates, which run on every rank, must agree bit for bit).

    :raises RuntimeError: naming ``where`` when the ranks have drifted apart.
    """
    device = module_device(*modules)
    local = _checksum(modules, device)
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(
            f"distributed fit: the ranks' model and guide parameters differ {where} (checksums "
            f"{[g.tolist() for g in gathered]}); a model or guide must not draw random numbers or read "
            "rank-dependent state outside the ELBO"
        )


@torch.no_grad()
def evaluate(model, guide, eval_data, eval_samples, ctx):
    """
    Held-out accuracy (a classifier) or relative error, sharded: each rank predicts its
    contiguous shard of ``eval_data`` with the same posterior draws (the random state is
    forked, so that training goes on with the same draws on every rank) and the sums are
    all-reduced. Returns ``("accuracy", value)`` or ``("error", value)``.
    """
    *inputs, target = eval_data
    classifier = not target.is_floating_point()  # class labels; a regression's targets are floats
    shard = torch.arange(len(target)).tensor_split(ctx.world_size)[ctx.rank]
    sums = torch.zeros(2, dtype=torch.float64, device=module_device(model, guide))
    if len(shard):
        state = pyro.util.get_rng_state()
        mean, _ = predict(model, guide, *[t[shard] for t in inputs], num_samples=eval_samples)
        pyro.util.set_rng_state(state)
        target = target[shard]
        if classifier:
            sums[0] = (mean.argmax(-1) == target).sum()
        else:
            sums[0] = (mean - target).double().pow(2).sum()
            sums[1] = target.double().pow(2).sum()
    dist.all_reduce(sums)
    if classifier:
        return "accuracy", sums[0].item() / len(eval_data[-1])
    return "error", math.sqrt(sums[0].item() / sums[1].item())


def _without_nproc(argv):
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(argv, nproc, module="tensorbayes.cli"):
    """
    Run ``python -m <module> <argv>`` in ``nproc`` processes on this machine with ``torchrun
    --standalone`` (``--nproc`` is dropped from ``argv``); returns torchrun's exit status.

    Usage::

        # in tensorbayes.cli: `tensorbayes train --nproc 2 ...` relaunches itself
        if args.nproc > 1 and not in_torchrun():
            return launch(argv, args.nproc)

    :param list argv: the command's arguments (without the program name).
    :param int nproc: processes to start, at least 1.
    """
    check_int(nproc, "nproc")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *_without_nproc(list(argv)),
    ]
    return subprocess.call(command)


def in_torchrun():
    """``True`` inside a process that ``torchrun`` started (its environment names a rank)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ
