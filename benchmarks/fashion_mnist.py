"""
Fashion-MNIST: the ranks ``tb.fit`` chooses by itself, drawn against the fixed-rank frontier
of each format, on three networks.

Networks (``--network``), whose large layers are tensorized by ``tb.models.tensorize``'s own
size rule (both sides of the weight as a matrix at least ``min_features``):

- ``mlp`` (default): 784-625-10, ReLU, the paper's network; its first layer is tensorized;
- ``deep``: 784-512-512-256-10, ReLU; the three layers of 256 units or more are tensorized;
- ``cnn``: conv 1->32 3x3, ReLU, pool; conv 32->64 3x3, ReLU, pool; 3136->256, ReLU; 256->10.
  The second convolution (a ``TensorizedConv2d``, its kernel 64 x 288 as a matrix) and the
  3136->256 layer are tensorized (``min_features=64``, where the other networks keep 128).

Runs, all with the same epochs, batch size and seed, on the same training images:

- **dense**: the network in plain torch, Adam at 1e-3, cross-entropy: test accuracy, total
  training time and mean step time;
- **frontier**: the same network with each tensorized layer's factors as plain
  ``torch.nn.Parameter`` s at a fixed rank (``tensorize(max_rank=R)``'s layout, ranks clipped to
  what the shapes allow), trained like the dense one, the factors drawn so that the weight has
  the Kaiming variance the guide starts from (``LowRankTensor.init_loc_scale``); the layouts of
  ``tensorbayes.formats`` do the contractions, a linear layer taking the path
  ``TensorizedLinear`` takes (by FLOP count). One point per rank of ``--frontier-ranks``
  (default :data:`FRONTIER_RANKS`, per format);
- **automatic**: ``tb.models.tensorize(net, format=fmt)`` at its default max rank (or
  ``--max-rank``), ``tb.guides.MeanField``, ``tb.fit`` with its defaults; the posterior
  predictive accuracy (``tb.predict``), then ``tb.prune`` and ``tb.export``, and the exported
  network's accuracy.

Compression counts the weights of the tensorized layers only (dense weights / factors); the
other layers and the biases stay dense in every run. An automatic point is scored by its
exported network's accuracy, the network that has that compression. The frontier "at the same
size" is the best accuracy of that format's frontier points with at most the automatic point's
parameters. The test images serve only to score.

Targets (the "targets" section says whether each holds):

- ``mlp``, TTM: at least 100x on the tensorized layer, at most 0.5 points below dense, total
  fit time at most the dense total;
- ``mlp``, TT, CP, Tucker: within 0.5 points of the frontier at its size (no frontier point of
  at most its parameters beats it by more than 0.5 points);
- ``deep`` and ``cnn``, every format: within 1 point of dense at 50x or more.

Writes ``fashion_mnist_<network>.json`` and ``.md`` (the Markdown is :func:`markdown` of the
JSON). ``python docs/make_figures.py --frontier <json>...`` draws the figure.

    python -m benchmarks.fashion_mnist [--network mlp|deep|cnn] [--epochs 10] [--formats ttm tt cp tucker]
        [--frontier-ranks 1 2 4] [--max-rank R] [--train-size 60000] [--threads 2] [--out benchmarks/results]

Needs Debian's ``dataset-fashion-mnist`` (or ``--data-root``).
"""

import os
import platform
import time

import pyro
import torch
import torch.nn.functional as F

import tensorbayes as tb
from benchmarks.common import Parser, write_results
from tensorbayes.models import TensorizedConv2d, TensorizedLinear
from tensorbayes.models.layers import linear_path

FORMATS = ("ttm", "tt", "cp", "tucker")

#: The fixed ranks swept per format, from about 10x to thousands of times fewer weights than
#: the dense layers (CP's parameters grow as R, TT's as R ** 2, Tucker's core as R ** modes).
#: CP stops at 300 (40x on ``mlp``): its layers contract the input with the factors, the
#: cheaper path by FLOP count, which on this CPU takes 6x (R = 60) to 13x (R = 400) the wall
#: time of reconstructing the weight, so a CP step at R = 400 is 30x the dense step.
FRONTIER_RANKS = {
    "ttm": (1, 2, 4, 8, 12, 20),
    "tt": (2, 4, 8, 12, 20, 40),
    "cp": (5, 10, 25, 60, 150),
    "tucker": (2, 4, 6, 8, 12),
}

#: The accuracy an automatic point is scored by (its exported, pruned network's).
SCORE = "exported_accuracy"


def network(name):
    """The dense network, and the ``min_features`` of ``tensorize``'s size rule for it."""
    relu, linear = torch.nn.ReLU, torch.nn.Linear
    if name == "mlp":
        return torch.nn.Sequential(linear(784, 625), relu(), linear(625, 10)), 128
    if name == "deep":
        return torch.nn.Sequential(
            linear(784, 512), relu(), linear(512, 512), relu(), linear(512, 256), relu(), linear(256, 10)
        ), 128
    return cnn(), 64


def cnn(kernel=3, hidden=256):
    """The CNN of ``network("cnn")``: conv 1->32 and 32->64 (``kernel`` x ``kernel``, each followed
    by ReLU and 2 x 2 pooling), then 3136->``hidden``->10."""
    relu, conv, pool, linear = torch.nn.ReLU, torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.Linear
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 28, 28)),
        conv(1, 32, kernel, padding=kernel // 2),
        relu(),
        pool(2),
        conv(32, 64, kernel, padding=kernel // 2),
        relu(),
        pool(2),
        torch.nn.Flatten(),
        linear(3136, hidden),
        relu(),
        linear(hidden, 10),
    )


def tensorized(net, min_features, fmt, **kwargs):
    """``tb.models.tensorize`` of ``net`` and the names of the layers it replaced."""
    model = tb.models.tensorize(net, format=fmt, min_features=min_features, **kwargs)
    names = [n for n, m in model.named_modules() if isinstance(m, (TensorizedLinear, TensorizedConv2d))]
    return model, names


class FixedRank(torch.nn.Module):
    """
    A tensorized layer at its fixed ranks, in plain torch: the factors of its layout are
    parameters drawn i.i.d. ``N(0, s^2)`` with ``s = init_loc_scale()`` (the reconstructed
    weight then has the layer's Kaiming variance), the bias is the layer's. A linear layer
    takes the cheaper of contracting and reconstructing by the rule of
    ``TensorizedLinear.choose_path`` (``linear_path``); a convolution reconstructs its kernel.
    """

    def __init__(self, layer):
        super().__init__()
        self.layout = layer.layout
        scale = layer.weight.init_loc_scale()
        self.factors = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(shape) * scale) for shape in self.layout.factor_shapes
        )
        self.bias = torch.nn.Parameter(layer.bias.detach().clone())
        self.conv = None
        if isinstance(layer, TensorizedConv2d):
            self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
            self.kernel_shape = (layer.out_channels, layer.in_channels, *layer.kernel_size)
        self._paths = {}

    def forward(self, x):
        factors = list(self.factors)
        if self.conv is not None:
            return F.conv2d(x, self.layout.to_matrix(factors).reshape(self.kernel_shape), self.bias, **self.conv)
        n = x.shape[0]
        if n not in self._paths:
            self._paths[n] = linear_path(self.layout, n) == "contract"
        if self._paths[n]:
            return self.layout.contract(x, factors) + self.bias
        return F.linear(x, self.layout.to_matrix(factors), self.bias)


def fixed_rank_network(name, fmt, rank, seed):
    """The dense network of ``name`` with each layer ``tensorize`` would replace at max rank
    ``rank`` swapped for :class:`FixedRank`; returns ``(net, {layer: ranks})``."""
    torch.manual_seed(seed)
    net, min_features = network(name)
    model, names = tensorized(net, min_features, fmt, max_rank=rank)
    ranks = {}
    for layer in names:
        parent, _, child = layer.rpartition(".")
        setattr(net.get_submodule(parent), child, FixedRank(model.get_submodule(layer)))
        ranks[layer] = list(model.get_submodule(layer).layout.ranks)
    return net, ranks


def accuracy(predict, x, y, chunk=2000):
    with torch.no_grad():
        right = sum(
            (predict(x[i : i + chunk]).argmax(-1) == y[i : i + chunk]).sum().item() for i in range(0, len(y), chunk)
        )
    return right / len(y)


def train(net, data, args):
    """Adam at 1e-3 on the cross-entropy; test accuracy, total and mean step seconds."""
    x_train, y_train, x_test, y_test = data
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    steps, step_seconds, start = 0, 0.0, time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(y_train), generator=generator).split(args.batch_size):
            tick = time.perf_counter()  # a step as tb.fit's: the batch's gather, forward, backward, update
            x, y = x_train[idx], y_train[idx]
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step_seconds += time.perf_counter() - tick
            steps += 1
    total = time.perf_counter() - start
    net.eval()
    return {"accuracy": accuracy(net, x_test, y_test), "total_seconds": total, "step_seconds": step_seconds / steps}


def run_dense(data, args):
    torch.manual_seed(args.seed)
    net, min_features = network(args.network)
    _, names = tensorized(net, min_features, "ttm")  # the size rule picks the same layers in every format
    row = train(net, data, args)
    row["layers"] = names
    row["layer_params"] = sum(net.get_submodule(n).weight.numel() for n in names)
    row["network_params"] = sum(p.numel() for p in net.parameters())
    return row


def ratios(row, dense):
    row["compression"] = dense["layer_params"] / row["layer_params"]
    row["step_ratio"] = row["step_seconds"] / dense["step_seconds"]
    row["total_ratio"] = row["total_seconds"] / dense["total_seconds"]
    return row


def run_frontier(fmt, rank, data, dense, args):
    net, ranks = fixed_rank_network(args.network, fmt, rank, args.seed)
    row = train(net, data, args)
    row.update(
        rank=rank,
        ranks=ranks,
        layer_params=sum(m.layout.num_params() for m in net.modules() if isinstance(m, FixedRank)),
    )
    return ratios(row, dense)


class _StepTimer:
    """Time tb.fit's steps from outside: the wall time of each epoch (fit evaluates nothing here)."""

    def __init__(self):
        self.epoch_start = time.perf_counter()
        self.train_seconds = 0.0

    def __call__(self, epoch, history):
        self.train_seconds += time.perf_counter() - self.epoch_start
        self.epoch_start = time.perf_counter()


def run_automatic(fmt, data, dense, args):
    x_train, y_train, x_test, y_test = data
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    net, min_features = network(args.network)
    kwargs = {} if args.max_rank is None else {"max_rank": args.max_rank}
    model = tb.models.BayesianClassifier(tensorized(net, min_features, fmt, **kwargs)[0], num_classes=10)
    guide = tb.guides.MeanField(model, seed=args.seed)
    timer = _StepTimer()
    start = timer.epoch_start
    history = tb.fit(
        model,
        guide,
        (x_train, y_train),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        callbacks=[timer],
        progress=args.progress,
    )
    total = time.perf_counter() - start
    with torch.no_grad():
        probs, _ = tb.predict(model, guide, x_test, num_samples=args.eval_samples, chunk_size=2000)
    before = {r["tensor"]: r for r in tb.compression_report(model)}
    found = tb.prune(model, guide)
    exported = tb.export(model, guide).eval()
    params = sum(r["params"] for r in tb.compression_report(model))
    row = {
        "accuracy": (probs.argmax(-1) == y_test).double().mean().item(),
        "exported_accuracy": accuracy(exported, x_test, y_test),
        "max_ranks": {_layer(name): list(r["max_ranks"]) for name, r in before.items()},
        "ranks": {_layer(name): list(r) for name, r in found.items()},
        "layer_params": params,
        "layer_params_max": sum(r["params_max"] for r in before.values()),
        "total_seconds": total,
        "step_seconds": timer.train_seconds / history.steps,
        "final_elbo": history.elbo[-1],
    }
    return ratios(row, dense)


def _layer(tensor):
    """The layer's name in the network (``"0"``) of a tensor's in the classifier (``"net.0.weight"``)."""
    return tensor.removeprefix("net.").removesuffix(".weight")


def points_below(reference, accuracy):
    """``reference - accuracy`` in points, without float error: both are counts over the same
    test images, so a difference is a whole number of images (0.50 is at most 0.5, not above)."""
    return round(100 * (reference - accuracy), 9)


def at_same_size(auto, points):
    """The best frontier accuracy among ``points`` with at most ``auto``'s parameters (``None``
    when none is that small), and the automatic point's gap to it in points."""
    fits = [p["accuracy"] for p in points if p["layer_params"] <= auto["layer_params"]]
    if not fits:
        return None, None
    return max(fits), points_below(max(fits), auto[SCORE])


def targets(result):
    """One line per target: ``{"format", "target", "holds"}`` (``holds`` None: nothing to compare)."""
    dense, network_name, found = result["dense"], result["settings"]["network"], []
    for fmt, auto in result["automatic"].items():
        below = points_below(dense["accuracy"], auto[SCORE])
        if network_name == "mlp" and fmt == "ttm":
            found += [
                {
                    "format": fmt,
                    "target": f">= 100x on the tensorized layer ({auto['compression']:.0f}x)",
                    "holds": auto["compression"] >= 100,
                },
                {"format": fmt, "target": f"<= 0.5 points below dense ({below:.2f})", "holds": below <= 0.5},
                {
                    "format": fmt,
                    "target": f"total time <= 1.0x dense ({auto['total_ratio']:.2f}x)",
                    "holds": auto["total_ratio"] <= 1.0,
                },
            ]
        elif network_name == "mlp":
            gap = auto["frontier_gap"]
            what = "no frontier point that small" if gap is None else f"{gap:+.2f} points"
            found.append(
                {
                    "format": fmt,
                    "target": f"within 0.5 points of the frontier at its size ({what})",
                    "holds": None if gap is None else gap <= 0.5,
                }
            )
        else:
            found.append(
                {
                    "format": fmt,
                    "target": f"within 1 point of dense ({below:.2f}) at >= 50x ({auto['compression']:.0f}x)",
                    "holds": below <= 1.0 and auto["compression"] >= 50,
                }
            )
    return found


def _ranks(row):
    """``layer: (ranks)`` per layer; for an automatic point ``layer: (max ranks) → (found)``."""
    start = row.get("max_ranks", {})
    return "; ".join(
        f"{name}: {f'{tuple(start[name])} → ' if name in start else ''}{tuple(r)}" for name, r in row["ranks"].items()
    )


def _ratio(row):
    return f"{row['step_ratio']:.2f} | {row['total_ratio']:.2f}"


def markdown(result):
    """The Markdown report of a result (the JSON's dict; an optional ``"note"`` added to it by
    hand, such as what was measured on a quieter machine, is printed under the settings)."""
    s, dense = result["settings"], result["dense"]
    lines = [
        f"# Fashion-MNIST, network `{s['network']}`: automatic ranks against the fixed-rank frontier",
        "",
        f"{s['train_size']:,} training images, {s['test_size']:,} test; {s['epochs']} epochs, batch {s['batch_size']}, "
        f"seed {s['seed']}; {result['machine']}, {s['threads']} threads. "
        f"Tensorized: layers {', '.join(dense['layers'])} "
        f"({dense['layer_params']:,} dense weights). Automatic: `tb.fit` defaults, max rank "
        f"{'tensorize default' if s['max_rank'] is None else s['max_rank']}; accuracy: posterior predictive, "
        "and the pruned exported network's (the one scored). Frontier: fixed ranks, Adam 1e-3.",
        "",
        *([result["note"], ""] if result.get("note") else []),
        "| format | run | ranks | layer params | compression | test acc. | exported acc. | step / dense "
        "| total / dense |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| dense | Adam 1e-3 | — | {dense['layer_params']:,} | 1.0x | {dense['accuracy']:.2%} | — | 1.00 | 1.00 |",
    ]
    for fmt in s["formats"]:
        rows = [("frontier", p) for p in result["frontier"].get(fmt, [])]
        if fmt in result["automatic"]:
            rows.append(("**automatic**", result["automatic"][fmt]))
        for kind, r in sorted(rows, key=lambda kr: kr[1]["layer_params"]):
            run = f"R = {r['rank']}" if kind == "frontier" else kind
            exported = f"{r['exported_accuracy']:.2%}" if "exported_accuracy" in r else "—"
            lines.append(
                f"| {fmt} | {run} | {_ranks(r)} | {r['layer_params']:,} | {r['compression']:.1f}x | "
                f"{r['accuracy']:.2%} | {exported} | {_ratio(r)} |"
            )
    lines += ["", "## The frontier at the automatic point's size", ""]
    for fmt, auto in result["automatic"].items():
        if auto["frontier_accuracy"] is None:
            lines.append(
                f"- {fmt}: {auto[SCORE]:.2%} at {auto['layer_params']:,} parameters; no frontier point is that small"
            )
        else:
            lines.append(
                f"- {fmt}: {auto[SCORE]:.2%} at {auto['layer_params']:,} parameters; the frontier's best at "
                f"no more: {auto['frontier_accuracy']:.2%} "
                f"(frontier - automatic: {auto['frontier_gap']:+.2f} points)"
            )
    lines += ["", "## Targets", ""]
    marks = {True: "holds", False: "**fails**", None: "cannot tell"}
    lines += [f"- {t['format']}: {t['target']}: {marks[t['holds']]}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    parser = Parser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--network", choices=("mlp", "deep", "cnn"), default="mlp")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument(
        "--frontier-ranks",
        type=int,
        nargs="*",
        default=None,
        help="the fixed ranks of every format's frontier (default: per format, FRONTIER_RANKS)",
    )
    parser.add_argument(
        "--max-rank", type=int, default=None, help="the automatic point's max rank (default: tensorize's)"
    )
    parser.add_argument("--train-size", type=int, default=60000, help="use the first N training images")
    parser.add_argument("--test-size", type=int, default=10000, help="score on the first N test images")
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "max_rank", "train_size", "test_size", "eval_samples", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    if args.frontier_ranks is not None and any(r < 1 for r in args.frontier_ranks):
        parser.error(f"--frontier-ranks must be positive ints, got {args.frontier_ranks}")
    return args


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    x_train, y_train = tb.data.load_fashion_mnist("train", root=args.data_root)
    x_test, y_test = tb.data.load_fashion_mnist("test", root=args.data_root)
    data = (x_train[: args.train_size], y_train[: args.train_size], x_test[: args.test_size], y_test[: args.test_size])
    args.train_size, args.test_size = len(data[1]), len(data[3])
    dense = run_dense(data, args)
    print("dense", dense, flush=True)
    result = {
        "settings": vars(args),
        "machine": platform.processor() or platform.machine(),
        "dense": dense,
        "frontier": {},
        "automatic": {},
    }
    for fmt in args.formats:
        ranks = FRONTIER_RANKS[fmt] if args.frontier_ranks is None else args.frontier_ranks
        result["frontier"][fmt] = []
        for rank in ranks:
            result["frontier"][fmt].append(run_frontier(fmt, rank, data, dense, args))
            print(fmt, "frontier", result["frontier"][fmt][-1], flush=True)
        auto = run_automatic(fmt, data, dense, args)
        auto["frontier_accuracy"], auto["frontier_gap"] = at_same_size(auto, result["frontier"][fmt])
        result["automatic"][fmt] = auto
        print(fmt, "automatic", auto, flush=True)
    result["targets"] = targets(result)
    write_results(args.out, f"fashion_mnist_{args.network}", result, markdown(result), indent=1)
    return result


if __name__ == "__main__":
    main()
