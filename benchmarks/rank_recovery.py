"""
Rank recovery of tensor completion with tb.fit's defaults, per format.

Planted tensors (30 % of the entries observed, noise at 1 % of the signal, max_rank twice the
largest planted rank): fixed cases, then random ones of order 3 or 4 with modes of 10 to 40
(10 to 20 for order 4) and ranks 2 to 5 per bond. For each: ranks found against planted, the
held-out relative error and the seconds the fit took. Writes JSON and a Markdown table.

    python -m benchmarks.rank_recovery [--random 4] [--seeds 3] [--smoke] [--out benchmarks/results]
"""

import random
import time

import torch

import tensorbayes as tb
from benchmarks.common import nonnegative_int, parser, positive_int, write_results

FIXED = [
    ("cp", (20, 12, 14), (4,)),
    ("cp", (12, 14, 16), (3,)),
    ("tucker", (10, 12, 14), (3, 4, 2)),
    ("tt", (10, 12, 14, 16), (3, 4, 2)),
    ("tt", (10, 12, 14), (3, 2)),
    ("ttm", (10, 12, 14, 16), (3,)),
]


def random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    for fmt in ("cp", "tucker", "tt", "ttm"):
        for _ in range(count):
            order = rng.choice([3, 4])
            shape = tuple(rng.randint(10, 40 if order == 3 else 20) for _ in range(order))
            bonds = {"cp": 1, "tucker": order, "tt": order - 1, "ttm": (order + 1) // 2 - 1}[fmt]
            cases.append((fmt, shape, tuple(rng.randint(2, 5) for _ in range(bonds))))
    return cases


def run_case(fmt, shape, ranks, seed):
    planted = tb.data.planted_tensor(shape, fmt, ranks, observed=0.3, noise=0.01, seed=seed, dtype=torch.float32)
    model = tb.models.TensorCompletion(shape, format=fmt, max_rank=2 * max(ranks))
    guide = tb.guides.MeanField(model, seed=seed)
    start = time.perf_counter()
    tb.fit(
        model, guide, (planted.train_index, planted.train_values), epochs=3, batch_size=1024, progress=False, seed=seed
    )
    seconds = time.perf_counter() - start
    found = tb.ranks(model, guide)["tensor"]
    prediction = model.tensor.layout.entries(guide.factor_means(model.tensor), planted.test_index)
    error = planted.relative_error(prediction)
    return {
        "format": fmt,
        "shape": list(shape),
        "planted": list(planted.ranks),
        "found": list(found),
        "seed": seed,
        "error": error,
        "seconds": seconds,
        "exact": found == planted.ranks and error < 0.05,
    }


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--random", type=nonnegative_int, default=4, help="random cases per format (default 4)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per fixed case (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixed = FIXED[:1] if args.smoke else FIXED
    seeds, randoms = (1, 0) if args.smoke else (args.seeds, args.random)
    rows = [run_case(f, s, r, seed) for f, s, r in fixed for seed in range(seeds)]
    rows += [run_case(f, s, r, 100 + i) for i, (f, s, r) in enumerate(random_cases(randoms, 2026))]
    lines = ["| format | shape | planted | found | held-out error | seconds | ok |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['format']} | {'x'.join(map(str, r['shape']))} | {tuple(r['planted'])} | "
            f"{tuple(r['found'])} | {r['error']:.2%} | {r['seconds']:.1f} | {'yes' if r['exact'] else 'no'} |"
        )
    for fmt in ("cp", "tucker", "tt", "ttm"):
        mine = [r for r in rows if r["format"] == fmt]
        lines.append(f"\n{fmt}: {sum(r['exact'] for r in mine)} of {len(mine)} exact")
    write_results(
        args.out, "rank_recovery_smoke" if args.smoke else "rank_recovery", rows, "\n".join(lines) + "\n", indent=1
    )
    return rows


if __name__ == "__main__":
    main()
