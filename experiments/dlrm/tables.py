"""
Rebuild the tables of ``experiments/dlrm/README.md`` from the JSON results in ``results/``.

Every table in the README sits between ``<!-- table: NAME -->`` and ``<!-- end table -->``; this
script rewrites what lies between them from the JSON files, and leaves the text around them as
it is. With ``--check`` it writes nothing and fails when the README's tables differ from the
rebuilt ones (the tests run it so).

    python -m experiments.dlrm.tables [--check]
"""

import argparse
import json
import os
import re
import sys

from experiments.dlrm import samples, search, study

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(HERE, "README.md")

#: The study's DLRM runs, in the README's order: (result file, the run in a few words).
RUNS = [
    ("dlrm_ids_by_frequency", "6M, ids by frequency"),
    ("dlrm_ids_by_frequency_12M", "12M, ids by frequency"),
    ("dlrm_ids_by_frequency_mackay", "6M, ids by frequency, λ by MacKay's update"),
    ("dlrm", "6M, shuffled ids"),
    ("dlrm_point_estimate_1.2M", "1.2M, shuffled ids, with the point estimate"),
    ("dlrm_rows_shrunk_10", "3M, shuffled ids, row modes / 10"),
    ("dlrm_tiny", "6M, the tiny log (shuffled ids)"),
]

BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def load(name):
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        return json.load(f)


def _pct(x, digits=2):
    return "" if x is None else f"{100 * x:.{digits}f} %"


def _acc(r, key):
    """``accuracy (AUC)`` of learner ``key`` in result ``r``, or an empty cell."""
    x = r.get(key)
    return "" if not x else f"{_pct(x['accuracy'])} ({x['auc']:.3f})"


def runs_table():
    lines = [
        "| run | result file | rate | Bayesian DLRM | hashed baseline | own model class | the same, from the truth "
        "| Bayes-optimal | samples/s (Bayesian) | table parameters (found) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in RUNS:
        r = load(name)
        decay = r["config"].get("lr_decay")
        rate = f"falls over the last {100 * decay:g} %" if decay else "constant"
        b = r["bayesian"]
        lines.append(
            f"| {label} | `{name}` | {rate} | {_acc(r, 'bayesian')} | {_acc(r, 'dense_baseline')} | "
            f"{_acc(r, 'reference')} | {_acc(r, 'reference_truth')} | {_acc(r, 'bayes_optimal')} | "
            f"{b['samples_per_s']:,.0f} | {b['tensorized_params_found']:,} |"
        )
    return lines


def _table_lines(text):
    """The Markdown table rows of ``text`` (its lines that start with ``|``)."""
    return [line for line in text.splitlines() if line.startswith("|")]


def rare_table(name):
    return _table_lines("\n".join(study.rare_lookups_section(load(name))))


def ranks_table():
    names = [name for name, _ in RUNS if name in ("dlrm_ids_by_frequency", "dlrm_ids_by_frequency_12M", "dlrm_tiny")]
    labels = dict(RUNS)
    lines = [
        "| run | table | rows | planted ranks | found ranks | up to the symmetry (`align_tables`) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        for t in load(name)["bayesian"]["tables"]:
            aligned = tuple(t["aligned"]) if "aligned" in t else ""
            lines.append(
                f"| {labels[name]} | {t['table']} | {t['rows']:,} | {tuple(t['planted'])} | "
                f"{tuple(t['found'])} | {aligned} |"
            )
    return lines


def planted_fit_table():
    labels = dict(RUNS)
    lines = ["| run | table | turned back | best linear map |", "|---|---|---|---|"]
    for name in ("dlrm_ids_by_frequency", "dlrm_ids_by_frequency_12M", "dlrm_tiny"):
        for t in load(name)["bayesian"].get("planted_fit") or []:
            lines.append(
                f"| {labels[name]} | {t['table']} | {100 * t['turned_back_distance']:.0f} % | "
                f"{100 * t['linear_map_distance']:.0f} % |"
            )
    return lines


#: Every table of the README, by the name its markers carry.
TABLES = {
    "runs": runs_table,
    "rare-lookups-6M": lambda: rare_table("dlrm_ids_by_frequency"),
    "rare-lookups-12M": lambda: rare_table("dlrm_ids_by_frequency_12M"),
    "rare-lookups-tiny": lambda: rare_table("dlrm_tiny"),
    "ranks": ranks_table,
    "planted-fit": planted_fit_table,
    "search": lambda: _table_lines(search.markdown(load("dlrm_search"))),
    "samples": lambda: _table_lines(samples.markdown(load("dlrm_samples"))),
}


def rebuild(text):
    """``text`` with every table block rebuilt; an unknown table name raises ``KeyError``."""

    def body(match):
        return match.group(1) + "\n".join(TABLES[match.group("name")]()) + "\n" + match.group(4)

    return BLOCK.sub(body, text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; fail if the README's tables differ")
    p.add_argument("--readme", default=README)
    args = p.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = rebuild(text)
    if args.check:
        if new != text:
            print(f"{args.readme}: its tables differ from the ones rebuilt from {RESULTS}", file=sys.stderr)
            return 1
        return 0
    with open(args.readme, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
