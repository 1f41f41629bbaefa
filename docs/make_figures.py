"""
Draw the figures of docs/figures/ from small but real runs (about two minutes on one core).

    python docs/make_figures.py            # writes docs/figures/*.png and docs/figures/runs.json
    python docs/make_figures.py --frontier benchmarks/results/fashion_mnist_mlp.json [...]
                                           # only docs/figures/frontier_fashion_mnist.png

Two experiments:

- tensor completion: one planted tensor per format (30 % observed, 1 % noise, max rank 6),
  closed-form coordinate ascent at the full max rank (the start ``tb.fit`` makes), before
  pruning: ``rank_shrinkage_completion.png`` and ``factor_posterior.png``;
- a teacher-student task (``tb.data.teacher_student``, a one-layer teacher whose weight is a
  planted TTM of ranks (3, 3)) learned by a Bayesian TTM student started at max rank 6 and fitted
  by SVI: ``rank_shrinkage_network.png``, ``lambda_trajectories.png``,
  ``training_curves.png``, ``reliability.png``; the same student in other formats and max
  ranks against a dense softmax regression: ``compression_vs_accuracy.png``.

``--frontier`` draws ``frontier_fashion_mnist.png`` instead, from the JSON that
``benchmarks/fashion_mnist.py`` writes (one panel per network): each format's fixed-rank
frontier as a line, its automatic point (``tb.fit``'s defaults, the exported network's
accuracy) on it, the dense network as the dashed line.
"""

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pyro.nn import PyroModule  # noqa: E402

import tensorbayes as tb  # noqa: E402
from tensorbayes import plots  # noqa: E402
from tensorbayes.infer import expected_calibration_error  # noqa: E402
from tensorbayes.infer.cavi import DEFAULT_SWEEPS, coordinate_ascent  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
DPI = 120
EPOCHS = 10


def save(fig, name, out=OUT):
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print("wrote", os.path.relpath(path))


def completion():
    cases = [
        ("cp", (12, 10, 14), (3,)),
        ("tucker", (10, 12, 14), (3, 4, 2)),
        ("tt", (8, 10, 12, 8), (3, 4, 2)),
        ("ttm", (8, 10, 12, 8), (3,)),
    ]
    fig = plt.figure(figsize=(11, 6.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    found = {}
    for ax, (fmt, shape, ranks) in zip(axes, cases):
        planted = tb.data.planted_tensor(shape, fmt, ranks, observed=0.3, noise=0.01, seed=0, dtype=torch.float32)
        model = tb.models.TensorCompletion(shape, format=fmt, max_rank=6)
        guide = tb.guides.MeanField(model, seed=0)
        coordinate_ascent(model, guide, planted.train_index, planted.train_values, sweeps=DEFAULT_SWEEPS[fmt])
        plots.rank_shrinkage(model, guide, ax=ax)
        found[fmt] = {"planted": ranks, "found": tb.ranks(model, guide)["tensor"]}
        if fmt == "tt":
            posterior = plots.factor_posterior(model, guide, "tensor")
            save(posterior[0].figure, "factor_posterior.png")
    fig.suptitle(
        "Tensor completion at max rank 6, after the closed-form start (planted ranks "
        + ", ".join(f"{f} {r['planted']}" for f, r in found.items())
        + ")",
        fontsize="medium",
    )
    save(fig, "rank_shrinkage_completion.png")
    return found


def student(task, fmt, max_rank, seed=0):
    torch.manual_seed(seed)
    # the teacher's mode shapes: a TTM student re-paired for speed could not express its weight
    layer = tb.models.TensorizedLinear(
        64, 64, format=fmt, max_rank=max_rank, in_shape=task.in_shape, out_shape=task.out_shape
    )
    net = PyroModule[torch.nn.Sequential](layer)
    model = tb.models.BayesianClassifier(net, num_classes=task.num_classes)
    guide = tb.guides.MeanField(model, seed=seed)
    history = tb.fit(
        model,
        guide,
        (task.x_train, task.y_train),
        epochs=EPOCHS,
        batch_size=256,
        seed=seed,
        eval_data=(task.x_test, task.y_test),
        eval_samples=10,
        progress=False,
    )
    return model, guide, history


def dense_accuracy(task):
    torch.manual_seed(0)
    net = torch.nn.Linear(64, task.num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)  # tb.fit's default learning rate
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(task.x_train)).split(256):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(task.x_train[idx]), task.y_train[idx]).backward()
            optimizer.step()
    with torch.no_grad():
        return (net(task.x_test).argmax(-1) == task.y_test).double().mean().item()


def network():
    task = tb.data.teacher_student(format="ttm", ranks=(3, 3), seed=0)
    model, guide, history = student(task, "ttm", 6)
    save(plots.rank_shrinkage(model, guide)[0].figure, "rank_shrinkage_network.png")
    save(plots.lambda_trajectories(history)[0].figure, "lambda_trajectories.png")
    save(plots.training_curves(history, model)[0].figure, "training_curves.png")

    probs, _ = tb.predict(model, guide, task.x_test, num_samples=50)
    tb.prune(model, guide)
    point = torch.softmax(tb.export(model, guide)(task.x_test), -1).detach()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4), layout="constrained")
    for ax, p, label in [(axes[0], probs, "posterior predictive"), (axes[1], point, "exported point estimate")]:
        plots.reliability(p, task.y_test, ax=ax)
        ax.set_title(f"{label}\n{ax.get_title()}", fontsize="medium")
    save(fig, "reliability.png")

    results = [{"format": "dense", "accuracy": dense_accuracy(task), "compression": 1.0}]
    for fmt, max_rank in [("ttm", 6), ("ttm", 3), ("tt", 6), ("cp", 8), ("cp", 16)]:
        m, g, h = (model, guide, history) if (fmt, max_rank) == ("ttm", 6) else student(task, fmt, max_rank)
        row = tb.compression_report(m, g)[0]
        results.append(
            {
                "format": fmt,
                "accuracy": h.accuracy[-1],
                "compression": row["compression"],
                "label": f"R≤{max_rank}: " + ",".join(map(str, row["ranks"])),
            }
        )
    save(plots.compression_vs_accuracy(results).figure, "compression_vs_accuracy.png")
    return {
        "planted": task.ranks,
        "found": tb.ranks(model, guide)["net.0.weight"],
        "accuracy": history.accuracy,
        "ece_posterior": expected_calibration_error(probs, task.y_test),
        "ece_export": expected_calibration_error(point, task.y_test),
        "results": results,
    }


def frontier_fashion_mnist(paths, out=OUT):
    """Draw ``frontier_fashion_mnist.png`` from the JSON files of ``benchmarks/fashion_mnist.py``."""
    fig, axes = plt.subplots(1, len(paths), figsize=(5.2 * len(paths), 4), layout="constrained", squeeze=False)
    for ax, path in zip(axes[0], paths):
        with open(path) as f:
            result = json.load(f)
        dense = result["dense"]
        rows = [{"format": "dense", "accuracy": dense["accuracy"], "compression": 1.0}]
        for fmt, auto in result["automatic"].items():
            rows.append({"format": fmt, "accuracy": auto["exported_accuracy"], "compression": auto["compression"]})
        frontier = {
            fmt: [(p["compression"], p["accuracy"]) for p in points]
            for fmt, points in result["frontier"].items()
            if points
        }
        plots.compression_vs_accuracy(rows, ax=ax, frontier=frontier)
        s = result["settings"]
        layers = f"layer{'s' * (len(dense['layers']) > 1)} {', '.join(dense['layers'])}"
        ax.set_title(
            f"Fashion-MNIST, {s['network']} ({layers} tensorized), {s['epochs']} epochs:"
            "\nfixed ranks (lines) and tb.fit's defaults (diamonds)",
            fontsize="medium",
        )
    os.makedirs(out, exist_ok=True)
    save(fig, "frontier_fashion_mnist.png", out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--frontier",
        nargs="+",
        metavar="JSON",
        default=None,
        help="draw only frontier_fashion_mnist.png, from benchmarks/fashion_mnist.py's JSON files",
    )
    args = parser.parse_args()
    if args.frontier is not None:
        missing = [p for p in args.frontier if not os.path.isfile(p)]
        if missing:
            parser.error(f"--frontier: no such file {missing[0]!r} (run benchmarks/fashion_mnist.py first)")
        frontier_fashion_mnist(args.frontier)
        return
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    start = time.perf_counter()
    summary = {"completion": completion(), "network": network()}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(OUT, "runs.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, default=str)[:2000])


if __name__ == "__main__":
    main()
