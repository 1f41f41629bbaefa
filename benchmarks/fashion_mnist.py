"""
The paper's fully connected experiment: the MLP 784-625-10 (ReLU) on Fashion-MNIST, dense
against its first layer tensorized in each of CP, Tucker, TT and TTM with automatic ranks.

The dense baseline is plain torch (Adam, cross-entropy); each tensorized network is a
:class:`~tensorbayes.models.BayesianClassifier` fitted by SVI with :func:`tensorbayes.fit`'s
defaults, the same epochs and batch size. For each: test accuracy (the dense network's, the
Bayesian posterior predictive, and the pruned exported network's), parameters of the
tensorized layer and of the whole network after pruning, compression ratios, final ranks, and
the mean training step time as a ratio to the dense step measured in the same run. Writes
``fashion_mnist.json`` and ``fashion_mnist.md``.

    python benchmarks/fashion_mnist.py [--epochs 10] [--max-rank 20] [--formats ttm tt cp tucker]
                                       [--train-size 60000] [--out benchmarks/results]

Needs Debian's ``dataset-fashion-mnist`` (or ``--data-root``).
"""

import argparse
import json
import os
import platform
import time

import pyro
import torch

import tensorbayes as tb


def dense_mlp(hidden):
    return torch.nn.Sequential(torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def run_dense(data, args):
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    net = dense_mlp(args.hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    steps, seconds = 0, 0.0
    for _ in range(args.epochs):
        for idx in _batches(len(y_train), args.batch_size, generator):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds += time.perf_counter() - start
            steps += 1
    with torch.no_grad():
        accuracy = (net(x_test).argmax(-1) == y_test).double().mean().item()
    first = net[0].weight.numel()
    return {"model": "dense", "accuracy": accuracy, "layer_params": first,
            "network_params": sum(p.numel() for p in net.parameters()), "step_seconds": seconds / steps}


class _StepTimer:
    """Time tb.fit's steps from outside: wall time of the epoch minus its evaluation."""

    def __init__(self):
        self.epoch_start = time.perf_counter()
        self.train_seconds = 0.0

    def __call__(self, epoch, history):
        self.train_seconds += time.perf_counter() - self.epoch_start
        self.epoch_start = time.perf_counter()


def run_tensorized(fmt, data, args):
    x_train, y_train, x_test, y_test = data
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model = tb.models.BayesianClassifier(tb.models.tensorize(dense_mlp(args.hidden), format=fmt, max_rank=args.max_rank), 10)
    guide = tb.guides.MeanField(model, seed=args.seed)
    # step time: fit without evaluation, timed per epoch; accuracy evaluated once at the end
    timer = _StepTimer()
    history = tb.fit(model, guide, (x_train, y_train), epochs=args.epochs, batch_size=args.batch_size,
                     seed=args.seed, callbacks=[timer], progress=args.progress)
    with torch.no_grad():
        probs, _ = tb.predict(model, guide, x_test, num_samples=args.eval_samples)
    accuracy = (probs.argmax(-1) == y_test).double().mean().item()
    (before,) = tb.compression_report(model)
    found = tb.prune(model, guide)
    (after,) = tb.compression_report(model)
    net = tb.export(model, guide).eval()
    with torch.no_grad():
        exported = (net(x_test).argmax(-1) == y_test).double().mean().item()
    return {
        "model": fmt, "accuracy": accuracy, "exported_accuracy": exported,
        "max_ranks": list(before["max_ranks"]), "ranks": list(next(iter(found.values()))),
        "layer_params": after["params"], "layer_params_max": before["params_max"],
        "network_params": sum(p.numel() for p in net.parameters()),
        "step_seconds": timer.train_seconds / history.steps, "final_elbo": history.elbo[-1],
    }


def markdown(rows, args):
    dense = rows[0]
    lines = [
        f"MLP 784-{args.hidden}-10 on Fashion-MNIST ({args.train_size} training images, 10,000 test), "
        f"{args.epochs} epochs, batch {args.batch_size}, max rank {args.max_rank}, seed {args.seed}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads.",
        "",
        "| model | test acc. | exported acc. | ranks (max → found) | layer params | layer compr. | network params | network compr. | step time / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ranks = f"{tuple(r['max_ranks'])} → {tuple(r['ranks'])}" if "ranks" in r else "—"
        exported = f"{r['exported_accuracy']:.2%}" if "exported_accuracy" in r else "—"
        lines.append(
            f"| {r['model']} | {r['accuracy']:.2%} | {exported} | {ranks} | {r['layer_params']:,} | "
            f"{dense['layer_params'] / r['layer_params']:.1f}x | {r['network_params']:,} | "
            f"{dense['network_params'] / r['network_params']:.1f}x | {r['step_seconds'] / dense['step_seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-rank", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=625)
    parser.add_argument("--formats", nargs="+", default=["ttm", "tt", "cp", "tucker"])
    parser.add_argument("--train-size", type=int, default=60000, help="use the first N training images")
    parser.add_argument("--eval-samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    x_train, y_train = tb.data.load_fashion_mnist("train", root=args.data_root)
    x_test, y_test = tb.data.load_fashion_mnist("test", root=args.data_root)
    data = (x_train[: args.train_size], y_train[: args.train_size], x_test, y_test)
    rows = [run_dense(data, args)]
    print(rows[-1], flush=True)
    for fmt in args.formats:
        rows.append(run_tensorized(fmt, data, args))
        print(rows[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fashion_mnist.json"), "w") as f:
        json.dump({"settings": vars(args), "results": rows}, f, indent=1)
    table = markdown(rows, args)
    with open(os.path.join(args.out, "fashion_mnist.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
