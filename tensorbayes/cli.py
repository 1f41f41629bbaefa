"""
The ``tensorbayes`` command.

``tensorbayes demo`` fits one planted low-rank tensor per format (tensor completion from 30 %
of the entries with 1 % noise) and prints, per format, the planted ranks, the ranks the
posterior found, the held-out error, the compression ratio and the time it took.
"""

import argparse
import sys
import time

import torch

__all__ = ["main"]

#: format, shape, planted ranks, max rank: the demo's problems.
DEMO_CASES = (
    ("cp", (20, 12, 14), (4,), 8),
    ("tucker", (10, 12, 14), (3, 4, 2), 8),
    ("tt", (10, 12, 14, 16), (3, 4, 2), 8),
    ("ttm", (10, 12, 14, 16), (3,), 8),
)


def run_demo(seed=0, epochs=3, progress=False, out=sys.stdout):
    """Fit the demo's planted tensors; returns one result dict per format."""
    import tensorbayes as tb

    results = []
    header = f"{'format':<8}{'shape':<20}{'planted':<12}{'found':<12}{'held-out err':>13}{'compression':>13}{'seconds':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for fmt, shape, planted_ranks, max_rank in DEMO_CASES:
        start = time.perf_counter()
        planted = tb.data.planted_tensor(shape, fmt, planted_ranks, observed=0.3, noise=0.01, seed=seed,
                                         dtype=torch.float32)
        model = tb.models.TensorCompletion(shape, format=fmt, max_rank=max_rank)
        guide = tb.guides.MeanField(model, seed=seed)
        tb.fit(model, guide, (planted.train_index, planted.train_values), epochs=epochs, batch_size=1024,
               seed=seed, progress=progress)
        found = tb.ranks(model, guide)["tensor"]
        tb.prune(model, guide)
        prediction = model.tensor.layout.entries(guide.factor_means(model.tensor), planted.test_index)
        report = tb.compression_report(model)[0]
        row = {
            "format": fmt, "shape": shape, "planted": planted.ranks, "found": found,
            "error": planted.relative_error(prediction), "compression": report["compression"],
            "seconds": time.perf_counter() - start,
        }
        results.append(row)
        print(
            f"{fmt:<8}{'x'.join(map(str, shape)):<20}{str(planted.ranks):<12}{str(found):<12}"
            f"{row['error']:>12.2%}{row['compression']:>12.1f}x{row['seconds']:>9.1f}",
            file=out,
        )
    hits = sum(r["found"] == r["planted"] for r in results)
    print(f"\nranks recovered exactly for {hits} of {len(results)} formats", file=out)
    return results


def _parser():
    parser = argparse.ArgumentParser(
        prog="tensorbayes", description="Bayesian low-rank tensors whose ranks are learned by shrinkage priors."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="fit a planted tensor in each format and print the ranks found",
        description="Tensor completion of one planted tensor per format (30 % observed, 1 % noise): "
        "planted and found ranks, held-out error, compression ratio and time.",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the planted tensors and of the fits (default 0)")
    demo.add_argument("--epochs", type=int, default=3, help="SVI epochs after the closed-form start (default 3)")
    demo.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1:
            raise SystemExit("tensorbayes demo: --epochs must be at least 1")
        run_demo(seed=args.seed, epochs=args.epochs, progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
