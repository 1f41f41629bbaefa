"""
Speed and memory of the tensorized layers against dense ones, measured in the same run.

1. The SVI training step of a :class:`~tensorbayes.models.TensorizedLinear` (each format; a grid
   of sizes 256 to 4096, batches 64 to 1024, max ranks 8 to 32) as a ratio to (a) the step of a
   dense :class:`torch.nn.Linear` of the same shape with Adam and (b) the step of the same
   tensorized layer trained deterministically, its factors plain torch parameters, without
   Pyro. The SVI step is :func:`tensorbayes.fit`'s, one :meth:`tb.infer.SVIEngine.step` (the ELBO,
   its backward pass, the checks, Adam and the λ M-step) for a
   :class:`~tensorbayes.models.BayesianRegressor` (noise fixed to 1) on the layer's output with
   a :class:`~tensorbayes.guides.MeanField` guide. Beside it, the *floor*: the same estimator
   written by hand in plain torch (:class:`PlainMeanField`), which computes the same loss,
   gradients and λ step without Pyro's sample sites and the engine's bookkeeping.
   Target: the 4096 x 4096 TTM layer (batch 256) at most half the dense step's time. The layer
   is built with its default mode shapes (in ``(4, 4, 16, 16)``, out ``(16, 16, 4, 4)``: the
   pairing of the balanced cores that contracts most cheaply, see
   :class:`~tensorbayes.models.TensorizedLinear`); the same layer with the balanced shapes
   ``(8, 8, 8, 8)`` on both sides (the same cores and parameters, a split product four times
   dearer) is measured beside it.
2. The same inside a network: the Fashion-MNIST MLP (784-625-10, batch 256) with its first layer
   TTM at max ranks 2 to 20 (``tb.fit``'s start): the deterministic, floor and SVI steps of
   the network against the dense MLP's, in interleaved rounds. A fit that spends its epochs at
   those ranks cannot take less than the floor's share of the dense training time.
3. The bag lookup (forward and backward) of a :class:`~tensorbayes.models.embedding_bag.TensorizedEmbeddingBag`
   (TTM, 128 columns, max rank 16) at 1e4 to 1e9 rows, each size in a fresh process: time per
   batch and peak resident memory; a dense :class:`torch.nn.EmbeddingBag` where it fits.
   Target: the peak memory flat (within 2x) from 1e4 to 1e9 rows.
4. Where the SVI step spends its time beyond the deterministic one: a torch.profiler table of
   the 4096 TTM step and the share of the step outside torch operators (Python: Pyro's
   tracing, the guide, the prior's log densities).

With ``--device cuda`` every step runs on the GPU (timed after ``torch.cuda.synchronize``),
the grid adds larger layers (16384 x 16384, batches 1024 and 4096) where the GPU's dense product
stops being cheap, and the lookups are measured in one process by the peak GPU memory
(``torch.cuda.max_memory_allocated``) up to 1e12 rows (the target still counts 1e4 to 1e9).
The profile part also times the SVI step with Pyro's validation off, as a user may choose.

Writes ``layers.json`` and ``layers.md`` (``layers_smoke.*`` with ``--smoke``, ``layers_cuda.*``
with ``--device cuda``).

    python -m benchmarks.layers [--smoke] [--threads 1] [--device cpu] [--parts linear,network,lookup,profile]
        [--out benchmarks/results]
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time

import pyro
import torch

import tensorbayes as tb
from benchmarks.common import check_device, device_type, parser, peak_rss_gib, positive_int, write_results
from tensorbayes.models import BayesianRegressor, TensorizedLinear

#: The repository root, where a lookup's fresh process imports ``benchmarks.layers`` from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORMATS = ("cp", "tucker", "tt", "ttm")
#: What ``--parts`` may name.
PARTS = ("linear", "network", "lookup", "profile")
#: (size, batch, max rank): a grid along the diagonal, not the full product.
GRID = [(256, 64, 8), (1024, 256, 16), (4096, 256, 16), (4096, 1024, 32)]
SMOKE_GRID = [(64, 16, 4)]
#: On a GPU the dense product of a 4096 layer takes well under a millisecond: larger layers too.
CUDA_GRID = GRID + [(16384, 1024, 16), (16384, 4096, 16)]
ROWS = [10**4, 10**5, 10**6, 10**7, 10**8, 10**9]
CUDA_ROWS = ROWS + [10**12]
#: The lookup memory target holds from the smallest table to this many rows.
TARGET_ROWS = 10**9
SMOKE_ROWS = [10**3, 10**6]


def _synchronize(device):
    """Wait for the device's queued work (a GPU step returns before its kernels finish)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device):
    """The wall-clock seconds of one call of ``step``, its device work included."""
    _synchronize(device)
    t = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - t


def _time(step, repeats, device, warmup=2):
    for _ in range(warmup):
        step()
    return statistics.median(_timed(step, device) for _ in range(repeats))


def _squared_error_step(module, x, y):
    """A plain torch step of ``module`` (moved to the data's device) on the squared error, with Adam."""
    module = module.to(x.device)
    optim = torch.optim.Adam(module.parameters(), lr=1e-3)

    def step():
        loss = 0.5 * ((module(x) - y) ** 2).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()

    return step


def _dense_step(size, x, y):
    return _squared_error_step(torch.nn.Linear(size, size), x, y)


def _deterministic_step(layer, x, y):
    """The same tensorized layer, its factors plain parameters: the forward pass borrowed from tb.compact."""
    from tensorbayes.compact import CompactLinear

    guide = tb.guides.MeanField(layer, seed=0)
    return _squared_error_step(CompactLinear(layer, guide.factor_means(layer.weight)), x, y)


def _svi_step(layer, x, y):
    # y ~ Normal(layer(x), 1) under a subsampled data plate; the guide follows the model's device
    model = BayesianRegressor(layer, noise=1.0).to(x.device)
    guide = tb.guides.MeanField(model, seed=0)
    engine = tb.infer.SVIEngine(model, guide, num_data=100 * len(x), lr=1e-3)  # tb.fit's step

    def step():
        engine.step(x, y)

    return step, model, guide


class PlainMeanField(torch.nn.Module):
    """
    The floor of the SVI step: the estimator of :func:`_svi_step` written by hand in plain torch,
    without Pyro and without the engine's bookkeeping (its checks, schedule and parameter
    tracking). A Gaussian likelihood of noise 1; a mean-field Normal posterior over the factors,
    drawn factor by factor with the guide's random numbers; each factor entry's prior
    ``N(0, Π λ)`` over the rank indices it touches, its KL in closed form; a half-Cauchy prior
    on each λ and the guide's damped closed-form λ step, bond after bond (the tensor's own
    :meth:`~tensorbayes.models.tensor.LowRankTensor.slice_moments` and prior). On the same
    parameters and random numbers it gives the ELBO's loss and λ step to rounding.

    Called as a layer's weight it returns the drawn factors, as a
    :class:`~tensorbayes.models.tensor.CompactTensor` returns its own. It takes its posterior
    from ``guide``, a :class:`~tensorbayes.guides.MeanField` of ``layer``.
    """

    def __init__(self, layer, guide, step_size=0.1):
        super().__init__()
        self.tensor, self.step_size = layer.weight, step_size
        self.layout = layer.layout
        scales = guide.factor_scales(self.tensor)
        self.locs = torch.nn.ParameterList([p.clone() for p in guide.factor_means(self.tensor)])
        self.raw_scales = torch.nn.ParameterList([s.expm1().log() for s in scales])  # softplus⁻¹
        for b, lam in enumerate(guide.lambdas(next(iter(guide.tensors())))):
            self.register_buffer(f"lambda{b}", lam.clone())  # buffers: .to(device) moves them

    @property
    def lambdas(self):
        return [getattr(self, f"lambda{b}") for b in range(self.layout.num_bonds)]

    def scales(self):
        return [torch.nn.functional.softplus(raw) for raw in self.raw_scales]

    def forward(self):
        return [loc + torch.empty_like(loc).normal_() * s for loc, s in zip(self.locs, self.scales())], None

    def kl(self):
        """The KL term: the factors' closed-form KL and the λ point estimates' ``-log p(λ)``."""
        total = -sum(self.tensor.prior.log_prob(lam).sum() for lam in self.lambdas)
        for loc, s, var in zip(self.locs, self.scales(), self.tensor.prior_variances(self.lambdas)):
            ratio = s**2 / var
            total = total + 0.5 * (ratio + loc**2 / var - 1 - ratio.log()).sum()
        return total

    @torch.no_grad()
    def lambda_step(self):
        second = [loc**2 + s**2 for loc, s in zip(self.locs, self.scales())]
        for b, lam in enumerate(self.lambdas):  # in place: each bond sees the ones updated before it
            ((m, d),) = self.tensor.slice_moments(second, self.lambdas, bonds=[b], check=False)  # made here
            lam.copy_(self.tensor.prior.damped_update(lam, m, d, self.step_size, check=False))


def _floor_step(layer, x, y):
    """The SVI step of :class:`PlainMeanField`, with the optimizer's groups of :func:`tb.infer.make_optimizer`."""
    from tensorbayes.compact import CompactLinear

    guide = tb.guides.MeanField(layer, seed=0)
    net = CompactLinear(layer, guide.factor_means(layer.weight)).to(x.device)
    net.weight = weight = PlainMeanField(layer, guide).to(x.device)
    lr = 1e-3
    optim = torch.optim.Adam(
        [{"params": [*weight.locs, net.bias]}, {"params": list(weight.raw_scales), "lr": lr * tb.infer.SCALE_LR}],
        lr=lr,
        foreach=True,
    )
    scale = 100.0  # num_data / batch, as in _svi_step
    normal = math.log(2 * math.pi) / 2 * y.numel()

    def step():
        loss = scale * (0.5 * ((net(x) - y) ** 2).sum() + normal) + weight.kl()
        optim.zero_grad()
        loss.backward()
        optim.step()
        weight.lambda_step()

    return step, net


# ----- the SVI step inside a network -----

#: The max ranks of the Fashion-MNIST MLP's TTM layer measured by ``--parts network``: from the
#: smallest to the one ``tb.fit`` starts it at by default (20).
NETWORK_RANKS = (2, 4, 8, 20)
SMOKE_NETWORK_RANKS = (2,)
#: The batch and data size of ``benchmarks/fashion_mnist.py``'s fits.
NETWORK_BATCH, NETWORK_DATA = 256, 60000


def _classifier_step(net, x, y):
    """A plain torch step of ``net`` on the cross-entropy, with Adam at 1e-3, as the Fashion-MNIST benchmark's."""
    net = net.to(x.device)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optim.zero_grad()
        loss.backward()
        optim.step()

    return step


def network_floor(net, layer, guide):
    """
    The plain torch network ``net`` with its first layer replaced by the tensorized ``layer`` at
    the posterior of ``guide`` (a :class:`~tensorbayes.guides.MeanField` of ``layer``), drawn by a
    :class:`PlainMeanField`; returns ``(net, weight)``.
    """
    from tensorbayes.compact import CompactLinear

    net[0] = first = CompactLinear(layer, guide.factor_means(layer.weight))
    first.weight = weight = PlainMeanField(layer, guide)
    return net, weight


def network_floor_loss(net, weight, x, y, num_data=NETWORK_DATA):
    """The floor's loss: the classifier's negative log likelihood scaled to ``num_data`` examples, and the KL term."""
    return num_data / len(x) * torch.nn.functional.cross_entropy(net(x), y, reduction="sum") + weight.kl()


def _network_floor_step(net, layer, x, y):
    """
    The floor's step (:func:`network_floor`) of ``net``: the other layers are point estimates
    stepped with the factor means (as in a :class:`~tensorbayes.models.BayesianClassifier`).
    """
    net, weight = network_floor(net, layer, tb.guides.MeanField(layer, seed=0))
    net = net.to(x.device)
    others = [p for name, p in net.named_parameters() if not name.startswith("0.weight.")]
    lr = 1e-3
    optim = torch.optim.Adam(
        [{"params": [*weight.locs, *others]}, {"params": list(weight.raw_scales), "lr": lr * tb.infer.SCALE_LR}],
        lr=lr,
        foreach=True,
    )

    def step():
        loss = network_floor_loss(net, weight, x, y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        weight.lambda_step()

    return step


def network_steps(rank, x, y):
    """
    ``(steps, params)``: the training steps, on the batch ``(x, y)``, of the Fashion-MNIST MLP
    (784-625-10, ``benchmarks/fashion_mnist.py``'s ``mlp``) with its first layer TTM at max rank
    ``rank`` (``{"deterministic": its factors plain parameters, as the benchmark's frontier,
    "floor": the floor of the SVI step, "svi": tb.fit's step of a BayesianClassifier}``), and the
    layer's parameter count.
    """
    from benchmarks.fashion_mnist import fixed_rank_network, network, tensorized

    pyro.clear_param_store()
    net, min_features = network("mlp")
    model = tb.models.BayesianClassifier(tensorized(net, min_features, "ttm", max_rank=rank)[0], 10).to(x.device)
    guide = tb.guides.MeanField(model, seed=0)
    engine = tb.infer.SVIEngine(model, guide, num_data=NETWORK_DATA, lr=1e-3)
    net, min_features = network("mlp")
    layer = tensorized(net, min_features, "ttm", max_rank=rank)[0][0]
    steps = {
        "deterministic": _classifier_step(fixed_rank_network("mlp", "ttm", rank, seed=0)[0], x, y),
        "floor": _network_floor_step(net, layer, x, y),
        "svi": lambda: engine.step(x, y),
    }
    return steps, layer.layout.num_params()


def network_table(ranks, repeats, rounds, device):
    """
    The steps of :func:`network_steps` at each of ``ranks`` and the dense MLP's, timed in
    ``rounds`` interleaved rounds (each the median of ``repeats`` steps); the median round of each.
    """
    from benchmarks.fashion_mnist import network

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(NETWORK_BATCH, 784, generator=gen).to(device)
    y = torch.randint(10, (NETWORK_BATCH,), generator=gen).to(device)
    steps, params = {("dense", None): _classifier_step(network("mlp")[0], x, y)}, {}
    for rank in ranks:
        by_kind, params[rank] = network_steps(rank, x, y)
        steps.update({(kind, rank): step for kind, step in by_kind.items()})
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(_time(step, repeats, device))
    median = {key: statistics.median(t) for key, t in times.items()}
    dense = median["dense", None]
    rows = []
    for rank in ranks:
        row = {"rank": rank, "params": params[rank], "dense_s": dense}
        for kind in ("deterministic", "floor", "svi"):
            row[f"{kind}_s"] = median[kind, rank]
            row[f"{kind}_over_dense"] = median[kind, rank] / dense
        rows.append(row)
        print(
            f"network mlp ttm rank {rank:3d}: dense {1e3 * dense:.2f} ms, det {row['deterministic_over_dense']:.2f}x, "
            f"floor {row['floor_over_dense']:.2f}x, svi {row['svi_over_dense']:.2f}x",
            flush=True,
        )
    return rows


def linear_grid(grid, repeats, device):
    rows = []
    for size, batch, rank in grid:
        x, y = torch.randn(batch, size, device=device), torch.randn(batch, size, device=device)
        dense = _time(_dense_step(size, x, y), repeats, device)
        for fmt in FORMATS:
            pyro.clear_param_store()
            layer = TensorizedLinear(size, size, format=fmt, max_rank=rank)
            det = _time(_deterministic_step(layer, x, y), repeats, device)
            svi = _time(_svi_step(layer, x, y)[0], repeats, device)
            floor = _time(_floor_step(layer, x, y)[0], repeats, device)
            rows.append(
                {
                    "format": fmt,
                    "size": size,
                    "batch": batch,
                    "max_rank": rank,
                    "ranks": layer.layout.ranks,
                    "path": layer.choose_path(batch),
                    "params": layer.layout.num_params(),
                    "in_shape": layer.in_shape,
                    "out_shape": layer.out_shape,
                    "dense_s": dense,
                    "deterministic_s": det,
                    "svi_s": svi,
                    "floor_s": floor,
                    "svi_over_dense": svi / dense,
                    "svi_over_deterministic": svi / det,
                    "floor_over_deterministic": floor / det,
                    "deterministic_over_dense": det / dense,
                }
            )
            print(
                f"linear {fmt:6s} {size:5d} batch {batch:5d} rank {rank:3d}: dense {1e3 * dense:8.2f} ms, "
                f"det {1e3 * det:8.2f} ms, floor {1e3 * floor:8.2f} ms, svi {1e3 * svi:8.2f} ms "
                f"({svi / dense:.2f}x dense)",
                flush=True,
            )
    return rows


# ----- embedding lookups, one process per size -----


def lookup_batches(rows, batch, repeats, kind, device):
    """
    ``(params, step, batches)``: a table of ``rows`` x 128 (``kind`` "dense": a
    :class:`torch.nn.EmbeddingBag`; "tensorized": TTM factors at max rank 16, looked up by
    :func:`~tensorbayes.models.embedding_bag.bag_lookup`), a forward and backward lookup of one
    batch of one-index bags, and ``repeats + 2`` batches of Zipf-distributed indices.
    """
    from tensorbayes.models.embedding_bag import TensorizedEmbeddingBag, bag_lookup, check_bags

    gen = torch.Generator().manual_seed(0)
    if kind == "dense":
        table = torch.nn.EmbeddingBag(rows, 128, mode="sum", device=device)
        params = rows * 128

        def step(idx, off):
            table(idx, off).square().sum().backward()
            table.weight.grad = None
    else:
        layer = TensorizedEmbeddingBag(rows, 128, format="ttm", max_rank=16, col_shape=(4, 4, 8))
        factors = [
            (0.3 * torch.randn(s, generator=gen)).to(device).requires_grad_() for s in layer.layout.factor_shapes
        ]
        params = layer.layout.num_params()

        def step(idx, off):
            i, o, _ = check_bags(idx, off, None, "sum", rows)
            bag_lookup(layer.layout, factors, i, o).square().sum().backward()
            for f in factors:
                f.grad = None

    u = torch.rand(repeats + 2, batch, generator=gen, dtype=torch.float64)
    zipf = [(torch.exp(v * torch.log(torch.tensor(rows + 1.0))) - 1).long().clamp(0, rows - 1) for v in u]
    off = torch.arange(batch, device=device)
    return params, step, [(idx.to(device), off) for idx in zipf]


_LOOKUP = r"""
import json, time, torch
torch.set_num_threads({threads})
from benchmarks.layers import lookup_batches
def status(key):  # VmRSS now, VmHWM the peak of this process (ru_maxrss may carry the parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
params, step, batches = lookup_batches({rows}, {batch}, {repeats}, {kind!r}, "cpu")
base = status("VmRSS")
times = []
for k, (idx, off) in enumerate(batches):
    t = time.perf_counter()
    step(idx, off)
    if k >= 2:
        times.append(time.perf_counter() - t)
peak = status("VmHWM")
times.sort()
print(json.dumps({{"rows": {rows}, "kind": {kind!r}, "params": params, "time_s": times[len(times) // 2],
                  "peak_rss_mib": peak / 2**20, "rss_before_lookups_mib": base / 2**20,
                  "lookup_rss_increase_mib": max(0, peak - base) / 2**20}}))
"""


def lookup(rows, batch, repeats, kind, threads):
    """One table size on the CPU, in a fresh process: time per batch and peak resident memory."""
    code = _LOOKUP.format(rows=rows, batch=batch, repeats=repeats, kind=kind, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"lookup of {rows} rows ({kind}) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The lookup rows' memory keys (peak, before the lookups, increase during them): resident
#: memory on the CPU, ``torch.cuda`` allocated memory on a GPU.
RSS_KEYS = ("peak_rss_mib", "rss_before_lookups_mib", "lookup_rss_increase_mib")
GPU_KEYS = ("peak_gpu_mib", "gpu_before_lookups_mib", "lookup_gpu_increase_mib")


def memory_keys(gpu):
    """``(peak, before, increase)``: the lookup rows' memory keys on a GPU or on the CPU."""
    return GPU_KEYS if gpu else RSS_KEYS


def lookup_cuda(rows, batch, repeats, kind, device):
    """One table size on the GPU, in this process: time per batch and peak GPU memory
    (``torch.cuda.max_memory_allocated``, under the :data:`GPU_KEYS`)."""
    params, step, batches = lookup_batches(rows, batch, repeats, kind, device)
    _synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    # each lambda is called at once, by _timed, within its own iteration
    times = [_timed(lambda: step(idx, off), device) for idx, off in batches][2:]  # noqa: B023
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "rows": rows,
        "kind": kind,
        "params": params,
        "time_s": statistics.median(times),
        "peak_gpu_mib": peak / 2**20,
        "gpu_before_lookups_mib": base / 2**20,
        "lookup_gpu_increase_mib": (peak - base) / 2**20,
    }


def lookup_table(sizes, batch, repeats, threads, dense_max, device):
    found = []
    memory = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    peak_key, _, increase_key = memory_keys(device.type == "cuda")
    for rows in sizes:
        for kind in ("tensorized", "dense") if rows <= dense_max else ("tensorized",):
            r = (
                lookup_cuda(rows, batch, repeats, kind, device)
                if device.type == "cuda"
                else lookup(rows, batch, repeats, kind, threads)
            )
            found.append(r)
            print(
                f"lookup {kind:10s} {rows:>17,d} rows: {1e3 * r['time_s']:7.2f} ms/batch, {memory} "
                f"{r[peak_key]:7.1f} MiB (+{r[increase_key]:.1f} during lookups)",
                flush=True,
            )
    return found


# ----- where the SVI step's time goes -----


def _without_pyro_validation(step):
    """``step`` with Pyro's validation off (``pyro.validation_enabled(False)``: no per-site NaN
    checks, a host synchronization each), as a user may choose once a model runs."""

    def unchecked():
        with pyro.validation_enabled(False):
            step()

    return unchecked


def profile_svi(size, batch, rank, repeats, device):
    pyro.clear_param_store()
    layer = TensorizedLinear(size, size, format="ttm", max_rank=rank)
    x, y = torch.randn(batch, size, device=device), torch.randn(batch, size, device=device)
    step, _, _ = _svi_step(layer, x, y)
    det_step = _deterministic_step(TensorizedLinear(size, size, format="ttm", max_rank=rank), x, y)
    in_shape = out_shape = tb.models.factorize(size, len(layer.in_shape))
    shaped = dict(format="ttm", max_rank=rank, in_shape=in_shape, out_shape=out_shape)
    shaped_step, shaped_model, _ = _svi_step(TensorizedLinear(size, size, **shaped), x, y)
    shaped_det_step = _deterministic_step(TensorizedLinear(size, size, **shaped), x, y)
    unchecked_step = _without_pyro_validation(
        _svi_step(TensorizedLinear(size, size, format="ttm", max_rank=rank), x, y)[0]
    )
    for _ in range(2):
        step()
        det_step()
    with torch.profiler.profile() as prof:
        wall = sum(_timed(step, device) for _ in range(repeats)) / repeats
    events = prof.key_averages()
    top_level = sum(e.self_cpu_time_total for e in events) / 1e6 / repeats  # every op's own time
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    table = [
        {"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / repeats, "calls_per_step": e.count / repeats}
        for e in ops
    ]
    # the target, measured interleaved (dense, deterministic, SVI, dense, ...) so that a busy
    # machine slows them all alike
    dense_step = _dense_step(size, x, y)
    steps = {
        "dense": dense_step,
        "deterministic": det_step,
        "svi": step,
        "svi_without_pyro_validation": unchecked_step,
        "balanced_shapes_deterministic": shaped_det_step,
        "balanced_shapes_svi": shaped_step,
    }
    for fn in (dense_step, shaped_step, shaped_det_step, unchecked_step):  # their first steps, as step's above
        fn()
    rounds = {key: [] for key in steps}
    for _ in range(repeats):
        for key, fn in steps.items():
            rounds[key].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    det = med["deterministic"]
    split = layer.layout.split(batch)
    return {
        "size": size,
        "batch": batch,
        "max_rank": rank,
        "in_shape": layer.in_shape,
        "out_shape": layer.out_shape,
        "split": None if split is None else split._asdict(),
        "svi_step_s": wall,
        "deterministic_step_s": det,
        "interleaved_s": med,
        "interleaved_svi_over_dense": med["svi"] / med["dense"],
        "interleaved_deterministic_over_dense": med["deterministic"] / med["dense"],
        "interleaved_svi_without_pyro_validation_over_dense": med["svi_without_pyro_validation"] / med["dense"],
        "balanced_shapes": {
            "in_shape": in_shape,
            "out_shape": out_shape,
            "flops": shaped_model.net.flop_counts(batch)["contract"],
            "svi_over_dense": med["balanced_shapes_svi"] / med["dense"],
            "deterministic_over_dense": med["balanced_shapes_deterministic"] / med["dense"],
        },
        "flops": layer.flop_counts(batch),
        "dense_layer_flops": 2 * batch * size * size,
        "torch_op_time_s": top_level,
        "outside_torch_ops_share": max(0.0, 1 - top_level / wall),
        "ops_per_step": sum(e.count for e in events) / repeats,
        "top_ops": table,
    }


def _split_words(p):
    split = p["split"]
    if split is None:
        return "the planned einsum"
    side = "left" if split["reverse"] else "right"
    return f"a split product cut at bond {split['bond']}, the input meeting the {side} cores first"


def _modes(shape):
    return "x".join(map(str, shape))


def network_markdown(rows):
    """The section of the ``network`` part (none for results measured before it existed)."""
    if not rows:
        return []
    lines = [
        "",
        f"## The step inside a network: the Fashion-MNIST MLP (784-625-10, batch {NETWORK_BATCH})",
        "",
        "Its first layer TTM at fixed max ranks: the frontier's deterministic step, the floor of the SVI step "
        "and `tb.fit`'s SVI step (a `BayesianClassifier`), each against the dense MLP's step with Adam, "
        "measured in interleaved rounds. A fit of this network that stays at these ranks takes at least the "
        "floor's share of the dense training time.",
        "",
        "| max rank | layer params | compression | dense ms | deterministic / dense | floor / dense | SVI / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['rank']} | {x['params']:,} | {784 * 625 / x['params']:.0f}x | {1e3 * x['dense_s']:.2f} | "
            f"{x['deterministic_over_dense']:.2f} | {x['floor_over_dense']:.2f} | {x['svi_over_dense']:.2f} |"
        )
    return lines


def markdown(r):
    where = "GPU: " + r["gpu"] if r.get("gpu") else f"{r['threads']} thread(s)"
    memory = "peak GPU memory" if r.get("gpu") else "peak RSS"
    peak_key, _, increase_key = memory_keys(r.get("gpu"))
    lines = [
        f"# Tensorized layers: speed and memory ({where})",
        "",
        "## SVI step of TensorizedLinear against dense nn.Linear + Adam and the same layer without Pyro",
        "",
        "| format | size | modes (in -> out) | batch | max rank | path | params | dense ms | deterministic ms "
        "| floor ms | SVI ms | SVI / dense | SVI / deterministic | floor / deterministic |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["linear"]:
        modes = f"{_modes(x['in_shape'])} -> {_modes(x['out_shape'])}"
        floor = (f"{1e3 * x['floor_s']:.2f}", f"{x['floor_over_deterministic']:.2f}") if "floor_s" in x else ("—", "—")
        lines.append(
            f"| {x['format']} | {x['size']} | {modes} | {x['batch']} | {x['max_rank']} | {x['path']} | "
            f"{x['params']:,} | {1e3 * x['dense_s']:.2f} | {1e3 * x['deterministic_s']:.2f} | {floor[0]} | "
            f"{1e3 * x['svi_s']:.2f} | {x['svi_over_dense']:.2f} | {x['svi_over_deterministic']:.2f} | {floor[1]} |"
        )
    lines += [
        "",
        "Floor: the same estimator written by hand in plain torch (`PlainMeanField`: the same draws, closed-form "
        "KL and λ step, the same loss and gradients to rounding), without Pyro and without the engine's checks, "
        "schedule and parameter tracking: what the SVI step of this design costs on this machine.",
    ]
    lines += network_markdown(r.get("network"))
    t = r["targets"]
    p = r["profile"]
    q = p["balanced_shapes"]
    lines += [
        "",
        f"Target, SVI step of the {p['size']} x {p['size']} TTM layer (batch {p['batch']}, max rank "
        f"{p['max_rank']}) at most 0.5x the dense step, measured interleaved: "
        f"{t['ttm_4096_svi_over_dense']:.2f}x ({'met' if t['ttm_4096_met'] else 'not met'}); dense "
        f"{1e3 * p['interleaved_s']['dense']:.1f} ms, "
        f"deterministic TTM {1e3 * p['interleaved_s']['deterministic']:.1f} ms, "
        f"SVI TTM {1e3 * p['interleaved_s']['svi']:.1f} ms. The layer has its default mode shapes "
        f"{tuple(p['in_shape'])} -> {tuple(p['out_shape'])}; its contraction ({_split_words(p)}) costs "
        f"{p['flops']['contract'] / p['dense_layer_flops']:.2f}x the dense product's FLOPs. "
        "(The grid above measures each step in turn: on a shared machine its ratios are noisier.)",
        "",
        *(
            [
                f"The same SVI step with Pyro's validation off (`pyro.validation_enabled(False)`: no per-site NaN "
                f"checks, each a host synchronization), in the same rounds: "
                f"{1e3 * p['interleaved_s']['svi_without_pyro_validation']:.1f} ms, "
                f"{p['interleaved_svi_without_pyro_validation_over_dense']:.2f}x dense.",
                "",
            ]
            if "svi_without_pyro_validation" in p["interleaved_s"]
            else []
        ),
        f"The same layer with the balanced shapes {tuple(q['in_shape'])} -> {tuple(q['out_shape'])} "
        "(the same cores and parameter count, "
        f"{q['flops'] / p['dense_layer_flops']:.2f}x the dense product's FLOPs), in the same interleaved rounds: "
        f"SVI {q['svi_over_dense']:.2f}x dense, deterministic {q['deterministic_over_dense']:.2f}x dense "
        f"(SVI {1e3 * p['interleaved_s']['balanced_shapes_svi']:.1f} ms).",
        "",
        "## Bag lookup (forward + backward, batch of one-index bags, Zipf indices), one process per size",
        "",
        f"| kind | rows | params | ms / batch | {memory} MiB | increase during lookups MiB |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["lookup"]:
        lines.append(
            f"| {x['kind']} | {x['rows']:.0e} | {x['params']:,} | {1e3 * x['time_s']:.2f} | "
            f"{x[peak_key]:.1f} | {x[increase_key]:.1f} |"
        )
    lines += [
        "",
        f"Target, tensorized lookup peak memory flat within 2x from the smallest table to {TARGET_ROWS:.0e} rows: "
        f"ratio {t['lookup_peak_ratio']:.2f} ({'met' if t['lookup_flat'] else 'not met'}).",
        "",
    ]
    p = r["profile"]
    lines += [
        "## Profile of the TTM SVI step",
        "",
        f"{p['size']} x {p['size']}, batch {p['batch']}, max rank {p['max_rank']}: SVI step "
        f"{1e3 * p['svi_step_s']:.2f} ms, deterministic {1e3 * p['deterministic_step_s']:.2f} ms; "
        f"{p['ops_per_step']:.0f} torch op calls per step, {100 * p['outside_torch_ops_share']:.0f} % of the "
        "step outside torch operators (Python).",
        "",
        "| op | self ms / step | calls / step |",
        "|---|---|---|",
    ]
    for o in p["top_ops"]:
        lines.append(f"| {o['op']} | {o['self_ms_per_step']:.3f} | {o['calls_per_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--device", type=device_type, default="cpu", help="where the steps run: cpu (default) or cuda")
    p.add_argument("--repeats", type=positive_int, default=None)
    p.add_argument("--batch", type=positive_int, default=4096, help="bags per lookup batch")
    p.add_argument(
        "--parts",
        default="linear,network,lookup,profile",
        help="parts to measure; the others are taken from the existing JSON in --out",
    )
    args = p.parse_args(argv)
    device = args.device
    check_device(p, device)
    cuda = device.type == "cuda"
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        p.error(f"--parts must be among {', '.join(PARTS)}, got {args.parts!r}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (3 if args.smoke else 7)
    grid, rows = (SMOKE_GRID, SMOKE_ROWS) if args.smoke else (CUDA_GRID, CUDA_ROWS) if cuda else (GRID, ROWS)
    batch = 256 if args.smoke else args.batch
    name = ("layers_smoke" if args.smoke else "layers") + ("_cuda" if cuda else "")
    previous = os.path.join(args.out, f"{name}.json")
    if parts != set(PARTS) and not os.path.exists(previous):
        p.error(f"--parts {args.parts} takes the other parts from {previous}, which does not exist: measure all first")
    result = json.load(open(previous)) if parts != set(PARTS) else {}
    result.update(
        {"threads": args.threads, "repeats": repeats, "gpu": torch.cuda.get_device_name(device) if cuda else None}
    )
    if "linear" in parts:
        result["linear"] = linear_grid(grid, repeats, device)
    if "network" in parts:
        ranks = SMOKE_NETWORK_RANKS if args.smoke else NETWORK_RANKS
        result["network"] = network_table(ranks, repeats, 3 if args.smoke else 5, device)
    if "lookup" in parts:
        dense_max = 10**4 if args.smoke else 10**7 if cuda else 10**6
        result["lookup"] = lookup_table(rows, batch, repeats, args.threads, dense_max, device)
    prof_case = grid[0] if args.smoke else (4096, 256, 16)
    if "profile" in parts:
        result["profile"] = profile_svi(*prof_case, repeats, device)
    ratio = result["profile"]["interleaved_svi_over_dense"]
    # the target's range, 1e4 to 1e9 rows (the GPU run adds 1e12)
    peak_key = memory_keys(cuda)[0]
    peaks = [x[peak_key] for x in result["lookup"] if x["kind"] == "tensorized" and x["rows"] <= TARGET_ROWS]
    result["targets"] = {
        "ttm_4096_svi_over_dense": ratio,
        "ttm_4096_met": ratio <= 0.5,
        "lookup_peak_ratio": max(peaks) / min(peaks),
        "lookup_flat": max(peaks) / min(peaks) <= 2.0,
    }
    # the largest peak of the runs that measured this file (a --parts run keeps the others' parts)
    result["peak_rss_gib"] = max(result.get("peak_rss_gib", 0.0), peak_rss_gib())
    write_results(args.out, name, result, markdown(result), default=list)
    return result


if __name__ == "__main__":
    main()
