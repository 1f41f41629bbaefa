"""
Where gradient descent finds the click log's planted tables, and where it does not.

The best-specified learner of the synthetic click log is the generator's own model class
(``experiments/dlrm/study.py``'s ``PlantedForm``: the logit's exact form, the five planted tables TTM at
the planted ranks). This benchmark trains it by Adam on a stream of ``--samples`` examples in
several cases and reports the expected test accuracy it reaches (``E[p]`` of the side it
chooses, under the true click probability ``p``) against two marks of the same generator: the
Bayes-optimal accuracy, and the floor of a learner that learned everything but the planted
tables' pairwise interactions. The share of the gap between them that the learner closes is the
share of the interactions it found.

The cases vary what decides whether a start finds the planted cores: how far the start is from
them (random, or each core sharing ``overlap`` with the planted one), how the category ids are
numbered (a shuffled bijection of the frequency ranks, or the ranks themselves), and how many
rows the planted tables have (full size, their row modes divided by 10, the tiny log).

    python -m experiments.dlrm.search [--samples 2000000] [--threads 1] [--smoke] [--out experiments/dlrm/results]
"""

import argparse
import os
import sys
import time

import torch

from experiments.dlrm.study import PlantedForm, generator, train_dense, write_results
from tensorbayes.data.clicks import ClickGenerator, expected_accuracy

#: ``(label, row shrink or "tiny", id order, overlap of the start with the planted cores)``.
CASES = [
    ("full size, shuffled ids, random start", 1, "shuffled", 0.0),
    ("full size, shuffled ids, start at overlap 0.4", 1, "shuffled", 0.4),
    ("full size, shuffled ids, start at overlap 0.7", 1, "shuffled", 0.7),
    ("full size, ids by frequency, random start", 1, "frequency", 0.0),
    ("rows / 10, shuffled ids, random start", 10, "shuffled", 0.0),
    ("tiny log, shuffled ids, random start", "tiny", "shuffled", 0.0),
]

SMOKE_CASES = [
    ("tiny log, shuffled ids, random start", "tiny", "shuffled", 0.0),
    ("tiny log, ids by frequency, start at overlap 0.7", "tiny", "frequency", 0.7),
]


def make_generator(rows, id_order, seed):
    if rows == "tiny":
        return ClickGenerator.tiny(seed=seed, id_order=id_order)
    return generator(rows, seed, id_order)


@torch.no_grad()
def reached_accuracy(form, gen, test):
    """The learner's expected accuracy on ``test``, under the true click probability."""
    dense, sparse, _, prob = gen.sample(torch.arange(len(test)), test.stream)
    return expected_accuracy(form(dense, sparse), prob)


def run_case(label, rows, id_order, overlap, args):
    gen = make_generator(rows, id_order, args.seed)
    train, test = gen.stream(args.samples, "train"), gen.stream(args.test, "test")
    marks = gen.bayes_optimal(test)
    torch.manual_seed(args.seed)
    form = PlantedForm(gen, overlap=overlap)
    t0 = time.perf_counter()
    train_dense(form, train, args, desc=label)
    reached = reached_accuracy(form, gen, test)
    bayes, floor = marks["accuracy"], marks["accuracy_without_interactions"]
    return {
        "case": label,
        "rows": rows,
        "id_order": id_order,
        "overlap": overlap,
        "large_table_rows": [gen.cardinalities[t] for t in gen.planted_tables],
        "bayes_optimal": bayes,
        "floor": floor,
        "reached": reached,
        "share_found": (reached - floor) / (bayes - floor),
        "seconds": time.perf_counter() - t0,
    }


def markdown(r):
    lines = [
        f"# The generator's model class trained by Adam (lr {r['config']['lr']:g}, batch {r['config']['batch']}) "
        f"on {r['config']['samples']:,} samples, {r['config']['threads']} thread(s)",
        "",
        "Expected test accuracy on "
        f"{r['config']['test']:,} examples. Floor: the true logit without the planted tables' pairwise "
        "interactions. Found: the share of the gap from the floor to the Bayes-optimal accuracy "
        "that the learner closed.",
        "",
        "| case | rows of the largest planted table | Bayes-optimal | floor | reached | found |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        lines.append(
            f"| {c['case']} | {max(c['large_table_rows']):,} | {100 * c['bayes_optimal']:.2f} % | "
            f"{100 * c['floor']:.2f} % | {100 * c['reached']:.2f} % | {round(100 * c['share_found']):d} % |"
        )
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2_000_000)
    p.add_argument("--test", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.0,
        help="the share of the steps, at the end, over which the rate falls linearly to 0",
    )
    p.add_argument("--lr-warmup", type=int, default=0, help="steps, at the start, over which the rate rises linearly")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="two tiny cases, a few thousand samples (seconds)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    args.epochs = 1
    if args.smoke:
        args.samples, args.test, args.batch = min(args.samples, 8192), min(args.test, 4096), 512
    return args


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cases = [run_case(*case, args) for case in (SMOKE_CASES if args.smoke else CASES)]
    result = {"config": vars(args), "cases": cases}
    write_results(args.out, "dlrm_search_smoke" if args.smoke else "dlrm_search", result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
