"""
How many training samples the click log's best-specified learner needs to come near the
generator's Bayes-optimal accuracy.

``experiments/dlrm/study.py`` holds the Bayesian DLRM against the Bayes-optimal accuracy, which knows
the true embedding of every row, the rarely seen ones too. No learner reaches it from finitely
many samples; this benchmark measures how near the best-specified one comes. That learner is the
generator's own model class (``study.py``'s ``PlantedForm``: the logit's exact form, the planted
tables TTM at the planted ranks), trained as ``study.py`` trains its learners (Adam, the rate
held, then falling to 0 over the last ``--lr-decay`` of the steps), from a random start, once for
each count in ``--samples``. It reports the accuracy on the drawn test clicks, the expected
accuracy under the true click probability, the gap of the latter to the Bayes-optimal accuracy,
and the expected accuracy by number of rare lookups (``study.py``'s ``rare_lookups``).

Ids are numbered by frequency by default: with shuffled ids no learner found the full-size
tables' interactions from a random start in 6M samples (``experiments/dlrm/search.py``), so the
question is asked where they are found.

    python -m experiments.dlrm.samples [--samples 6000000 12000000 24000000 48000000] [--threads 2] [--smoke]
"""

import argparse
import os
import sys

import torch

from experiments.dlrm.study import (
    PlantedForm,
    _percent,
    bayes_optimal_report,
    evaluate,
    generator,
    train_dense,
    truth_of,
    write_results,
)
from tensorbayes.data.clicks import ID_ORDERS, ClickGenerator


def run_count(gen, samples, test, truth, args):
    """Train the generator's model class on the first ``samples`` examples of the training stream."""
    torch.manual_seed(args.seed)
    form = PlantedForm(gen)
    trained = train_dense(form, gen.stream(samples, "train"), args, desc=f"{samples:,} samples")
    return {"samples": samples, **trained, **evaluate(form, test, args.eval_batch, truth)}


def markdown(r):
    c, opt = r["config"], r["bayes_optimal"]
    order = "ids by frequency" if c["id_order"] == "frequency" else "shuffled ids"
    lines = [
        f"# The generator's own model class against its Bayes-optimal accuracy, by training samples "
        f"({order}, {c['test']:,} test, {r['threads']} threads)",
        "",
        f"Each row is one run from a random start: Adam at lr {c['lr']:g}, batch {c['batch']}, the rate held, then "
        f"falling linearly to 0 over the last {100 * c['lr_decay']:g} % of the steps, as `benchmarks/dlrm.py` trains "
        "its learners. Expected accuracy: under the true click probability; the gap is the Bayes-optimal accuracy "
        "less it. By rare lookups: the expected accuracy of the test examples with 0, 1, 2, 3 or more lookups of "
        "categories outside the first TTM core's first slice.",
        "",
        "| samples | accuracy | expected accuracy | gap (points) | gap / the row above "
        "| 0 rare | 1 | 2 | 3+ | samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    previous = None
    for run in r["runs"]:
        gap = opt["accuracy"] - run["expected_accuracy"]
        ratio = f"{gap / previous:.2f}" if previous else ""
        groups = " | ".join(_percent(a) for a in run["expected_accuracy_by_rare_lookups"])
        lines.append(
            f"| {run['samples']:,} | {100 * run['accuracy']:.2f} % | {100 * run['expected_accuracy']:.2f} % | "
            f"{100 * gap:.2f} | {ratio} | {groups} | {run['samples_per_s']:,.0f} |"
        )
        previous = gap
    groups = " | ".join(_percent(a) for a in opt["by_rare_lookups"]["accuracy"])
    lines.append(f"| Bayes-optimal | {100 * opt['accuracy']:.2f} % | | | | {groups} | |")
    share = ", ".join(f"{100 * s:.1f} %" for s in opt["by_rare_lookups"]["share"])
    lines += ["", f"Shares of the test examples with 0, 1, 2, 3 or more rare lookups: {share}."]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[6_000_000, 12_000_000, 24_000_000, 48_000_000],
        help="training samples of each run, in the order run",
    )
    p.add_argument("--test", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--eval-batch", type=int, default=16384)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="the share of the steps, at the end, over which the rate falls linearly to 0",
    )
    p.add_argument("--lr-warmup", type=int, default=0, help="steps, at the start, over which the rate rises linearly")
    p.add_argument(
        "--id-order",
        choices=ID_ORDERS,
        default="frequency",
        help="category ids: the frequency ranks (frequency, default) or a pseudo-random bijection of them",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="the tiny log, a few thousand samples (seconds)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    if any(n < 1 for n in args.samples):
        p.error(f"--samples must be positive counts, got {args.samples}")
    args.epochs = 1
    if args.smoke:
        args.samples, args.test, args.batch = [2048, 4096], min(args.test, 4096), 512
    return args


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    gen = (
        ClickGenerator.tiny(seed=args.seed, id_order=args.id_order)
        if args.smoke
        else generator(1, args.seed, args.id_order)
    )
    test = gen.stream(args.test, "test")
    truth = truth_of(test, args.eval_batch)
    result = {
        "config": vars(args),
        "threads": torch.get_num_threads(),
        "bayes_optimal": bayes_optimal_report(test, truth, args.eval_batch),
        "runs": [run_count(gen, n, test, truth, args) for n in args.samples],
    }
    name = "dlrm_samples" + ("_smoke" if args.smoke else "") + ("_shuffled_ids" if args.id_order == "shuffled" else "")
    write_results(args.out, name, result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
