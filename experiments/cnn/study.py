"""
Where the Fashion-MNIST CNN of ``benchmarks/fashion_mnist.py`` loses its accuracy against dense.

The network is the benchmark's (conv 1->32, conv 32->64, 3136->256, 256->10), or with
``--network unseen`` one the defaults were not tuned on (5 x 5 kernels, 512 hidden units),
tensorized as the benchmark does (``min_features=64``: the second convolution and the first
linear layer, each at its default budget). One run trains it one way and prints (and writes)
one line:

- ``--learner svi``: ``tb.fit`` with its defaults (the rank search on, or off with
  ``--no-search``); reported: the posterior predictive's and the exported network's test
  accuracy, the ranks the readout keeps and their parameters;
- ``--learner fixed``: the benchmark's deterministic fixed-rank network (``FixedRank``, Adam at
  ``--lr``) at the layers' maximum ranks;
- ``--learner dense``: the plain torch network, as the benchmark's dense baseline.

``--conv`` sets the second convolution: ``budget`` (the default budget, as the benchmark),
``dense`` (left a plain convolution: in SVI a point estimate without a prior), or a maximum rank;
``--conv-order`` its modes a side. ``--max-beta`` caps the KL weight of the fit's schedule (1,
the default, is ``tb.fit``'s own; a smaller cap tempers the KL term for the whole fit).

    python -m experiments.cnn.study [--network benchmark|unseen] [--learner svi|fixed|dense]
        [--conv budget|dense|R] [--conv-order K] [--no-search] [--max-beta 1] [--lr 0.001]
        [--seed 0] [--epochs 10] [--out experiments/cnn/results]
"""

import contextlib
import json
import os
import time
import types

import pyro
import torch

import tensorbayes as tb
from benchmarks import fashion_mnist as fm
from benchmarks.common import Parser, positive_int

CONV = 4  # the second convolution's index in the benchmark's CNN (and the unseen one's)
LINEAR = 8  # the first linear layer's


def unseen_cnn():
    """A CNN the defaults were not tuned on: the benchmark's layout with 5 x 5 kernels and 512
    hidden units (conv 1->32, conv 32->64, 3136->512, 512->10), and its ``min_features`` (64)."""
    return fm.cnn(kernel=5, hidden=512), 64


def dense_network(name):
    """The plain torch CNN ``name`` (``"benchmark"`` or ``"unseen"``) and its ``min_features``."""
    return fm.network("cnn") if name == "benchmark" else unseen_cnn()


def network(conv, conv_order, fmt, name="benchmark"):
    """The CNN ``name`` tensorized, its second convolution set by ``conv`` and ``conv_order``."""
    net, min_features = dense_network(name)
    layers = list(net)
    if conv == "dense":
        layers[CONV] = _kept(layers[CONV])
    elif conv != "budget" or conv_order is not None:
        options = ({} if conv == "budget" else {"max_rank": int(conv)}) | (
            {} if conv_order is None else {"order": conv_order}
        )
        layers[CONV] = tb.models.tensorize(layers[CONV], fmt, min_features=1, **options)
    model = tb.models.tensorize(torch.nn.Sequential(*layers), fmt, min_features=min_features)
    return model


class _Kept(torch.nn.Conv2d):
    """A convolution ``tensorize`` leaves dense (it replaces only the exact class)."""


def _kept(conv):
    """``conv`` as a :class:`_Kept`, with its weights (built without drawing from torch's generator)."""
    kept = torch.nn.utils.skip_init(_Kept, conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    kept.load_state_dict(conv.state_dict())
    return kept


def dense_params(name="benchmark"):
    """The dense weights of the two layers the benchmark tensorizes (821,248; 1,656,832 in the unseen CNN)."""
    net, _ = dense_network(name)
    return net[CONV].weight.numel() + net[LINEAR].weight.numel()


def low_rank_layers(model):
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (tb.models.TensorizedLinear, tb.models.TensorizedConv2d))
    }


def kept_params(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, _Kept))


@contextlib.contextmanager
def max_beta(cap):
    """Within the block, the KL weight β of every ``tb.infer.Schedule`` is at most ``cap``: the
    KL term tempered for the whole fit (``tb.fit`` has no such option; the study's probe of
    over-pruning)."""
    beta = tb.infer.Schedule.beta
    tb.infer.Schedule.beta = lambda self, step: min(cap, beta(self, step))
    try:
        yield
    finally:
        tb.infer.Schedule.beta = beta


def run_svi(args, data):
    x, y, xt, yt = data
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    torch.manual_seed(args.seed)
    model = tb.models.BayesianClassifier(network(args.conv, args.conv_order, args.format, args.network), num_classes=10)
    guide = tb.guides.MeanField(model, seed=args.seed)
    start_ranks = {n: list(m.layout.ranks) for n, m in low_rank_layers(model.net).items()}
    search = {} if args.search else {"tolerance": None}
    with max_beta(args.max_beta):
        history = tb.fit(
            model, guide, (x, y), epochs=args.epochs, batch_size=256, seed=args.seed, progress=False, **search
        )
    with torch.no_grad():
        probs, _ = tb.predict(model, guide, xt, num_samples=20, chunk_size=2000)
    fit_ranks = {n: list(m.layout.ranks) for n, m in low_rank_layers(model.net).items()}  # after the search's cuts
    found = tb.prune(model, guide)
    exported = tb.export(model, guide).eval()
    params = sum(r["params"] for r in tb.compression_report(model)) + kept_params(model.net)
    return {
        "start_ranks": start_ranks,
        "fit_ranks": fit_ranks,
        "ranks": {k: list(v) for k, v in found.items()},
        "params": params,
        "accuracy": (probs.argmax(-1) == yt).double().mean().item(),
        "exported_accuracy": fm.accuracy(exported, xt, yt),
        "log_likelihood": history.log_likelihood,
        "kl": history.kl,
        "rank_search": [{k: v for k, v in r.items() if k != "ranks"} for r in history.rank_search],
    }


def run_fixed(args, data):
    torch.manual_seed(args.seed)
    model = network(args.conv, args.conv_order, args.format, args.network)
    net, _ = dense_network(args.network)  # plain torch, its low-rank layers swapped for FixedRank below
    ranks = {}
    for name, layer in low_rank_layers(model).items():
        setattr(net, name, fm.FixedRank(layer))
        ranks[name] = list(layer.layout.ranks)
    optimizer = torch.optim.Adam  # fm.train's Adam, at --lr
    torch.optim.Adam = lambda params, lr=None, **kw: optimizer(params, lr=args.lr, **kw)
    try:
        row = fm.train(net, data, types.SimpleNamespace(seed=args.seed, epochs=args.epochs, batch_size=256))
    finally:
        torch.optim.Adam = optimizer
    params = sum(m.layout.num_params() for m in net.modules() if isinstance(m, fm.FixedRank)) + kept_params(model)
    return {"start_ranks": ranks, "ranks": ranks, "params": params, "accuracy": row["accuracy"]}


def run_dense(args, data):
    """The plain torch network, trained as the benchmark trains its dense baseline (``fm.run_dense``)."""
    torch.manual_seed(args.seed)
    net, min_features = dense_network(args.network)
    fm.tensorized(net, min_features, "ttm")  # as fm.run_dense: its random numbers, then the same training
    row = fm.train(net, data, types.SimpleNamespace(seed=args.seed, epochs=args.epochs, batch_size=256))
    return {"ranks": {}, "params": dense_params(args.network), "accuracy": row["accuracy"]}


LEARNERS = {"svi": run_svi, "fixed": run_fixed, "dense": run_dense}


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=("benchmark", "unseen"), default="benchmark")
    parser.add_argument("--learner", choices=tuple(LEARNERS), default="svi")
    parser.add_argument("--format", choices=fm.FORMATS, default="ttm")
    parser.add_argument("--conv", default="budget", help="budget, dense, or a maximum rank")
    parser.add_argument("--conv-order", type=positive_int, default=None)
    parser.add_argument("--no-search", dest="search", action="store_false")
    parser.add_argument("--max-beta", type=float, default=1.0, help="cap on the KL weight of --learner svi")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's rate of --learner fixed")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if args.conv not in ("budget", "dense") and not (args.conv.isdigit() and int(args.conv) > 0):
        parser.error(f"--conv must be budget, dense or a positive integer, got {args.conv!r}")
    if not 0 < args.max_beta <= 1:
        parser.error(f"--max-beta must be in (0, 1], got {args.max_beta!r}")
    torch.set_num_threads(args.threads)
    data = (*tb.data.load_fashion_mnist("train"), *tb.data.load_fashion_mnist("test"))
    start = time.perf_counter()
    result = LEARNERS[args.learner](args, data)
    result.update(
        settings=vars(args),
        seconds=time.perf_counter() - start,
        compression=dense_params(args.network) / result["params"],
    )
    name = ("" if args.network == "benchmark" else f"{args.network}_") + args.learner
    if args.learner != "dense":
        name += f"_{args.format}_conv-{args.conv}" + (f"_order{args.conv_order}" if args.conv_order else "")
    name += "" if args.search or args.learner != "svi" else "_nosearch"
    name += ("" if args.max_beta == 1 or args.learner != "svi" else f"_beta{args.max_beta:g}") + f"_seed{args.seed}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    exported = result.get("exported_accuracy", result["accuracy"])
    print(
        f"{name}: {exported:.2%} at {result['compression']:.0f}x ({result['params']:,} params), ranks {result['ranks']}"
    )


if __name__ == "__main__":
    main()
