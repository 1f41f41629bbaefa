"""
A DLRM with 4.2e9 virtual embedding parameters trained by SVI: speed, memory and accuracy against a dense baseline.

The synthetic click log (:class:`tensorbayes.data.clicks.ClickGenerator`) has Criteo Kaggle's 26
tables, the five large ones planted as low-rank TTM tables of known ranks. The Bayesian model is
the paper's preset (:meth:`tensorbayes.models.dlrm.DLRM.paper_preset`: the five large tables TTM
at max rank 16, 128 = 4 x 4 x 8 columns; the other 21 tables dense, built with ``sparse=True`` so
that ``tb.fit`` steps them with :class:`torch.optim.SparseAdam`), trained by ``tb.fit`` for one
pass over ``--samples`` streamed examples with a mean-field guide. The dense baseline is the same
network with the five large tables hashed down ``--scale-down`` times, plain torch, trained on the
same stream in the same run.

Reported: samples/s (the time to generate the batches is estimated from a separate pass over the
first 20 and taken out), peak resident memory (and peak GPU memory with ``--device cuda``), test
accuracy and AUC of both against the generator's Bayes-optimal accuracy, the ranks found per
table against the planted ones, and the parameters and compression of the tables.

Every learner holds Adam's rate (``--lr``) for the first half of its steps and then lowers it
linearly to 0 (``--lr-decay 0.5``). The study of what the model finds and where its accuracy is
lost (the generator's own model class, the DLRM's symmetries, sample counts) is
``experiments/dlrm/``.

    python -m benchmarks.dlrm [--samples 3000000] [--id-order frequency] [--device cuda] [--tiny] [--smoke]
"""

import math
import sys
import time
import warnings

import pyro
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import tensorbayes as tb
from benchmarks.common import (
    check_device,
    nonnegative_int,
    parser,
    peak_gpu_gib,
    peak_rss_gib,
    positive_float,
    positive_int,
    write_results,
)
from tensorbayes.data.clicks import ID_ORDERS, PAPER_ROW_SHAPES, ClickGenerator, auc
from tensorbayes.infer import Schedule, sparse_tables
from tensorbayes.infer.batches import module_device, to_device
from tensorbayes.models.dlrm import DLRM, DLRMNet

#: The dense size of the paper's five large tables (33,193,281 rows x 128).
PAPER_DENSE_PARAMS = 33_193_281 * 128


class HashedEmbeddingBag(torch.nn.EmbeddingBag):
    """An embedding bag of ``rows`` rows that takes ids of a larger table, hashed by ``id % rows``."""

    def forward(self, input, offsets=None, per_sample_weights=None):
        return super().forward(input % self.num_embeddings, offsets, per_sample_weights)


def generator(shrink_rows, seed, id_order="shuffled"):
    """The full-size click log, its large tables' row modes divided by ``shrink_rows`` (rounded)."""
    shapes = {t: tuple(max(2, round(m / shrink_rows)) for m in shape) for t, shape in PAPER_ROW_SHAPES.items()}
    return ClickGenerator(row_shapes=shapes, id_order=id_order, seed=seed)


def build(gen, args):
    """The Bayesian DLRM: the paper's preset at the generator's tables, on ``args.device``."""
    dim = gen.embedding_dim
    tables = {t: {"row_shape": gen.row_shapes[t], "col_shape": gen.col_shape} for t in gen.planted_tables}
    model = DLRM.paper_preset(
        cardinalities=gen.cardinalities,
        embedding_dim=dim,
        bottom=args.bottom,
        top=args.top,
        max_rank=args.max_rank,
        tables=tables,
        sparse=True,
    )
    return model.to(args.device)


def baseline_net(gen, model, args):
    """The same network with the tensorized tables hashed down ``args.scale_down``x, all tables dense."""
    tables = []
    for t, n in enumerate(gen.cardinalities):
        rows = math.ceil(n / args.scale_down) if t in gen.row_shapes else n
        table = (HashedEmbeddingBag if t in gen.row_shapes else torch.nn.EmbeddingBag)(
            rows, gen.embedding_dim, mode="sum", sparse=True
        )
        torch.nn.init.normal_(table.weight, std=gen.embedding_dim**-0.5)
        tables.append(table)
    return DLRMNet(tables, gen.num_dense, args.bottom, args.top)


def _split_params(module):
    """``(dense parameters, sparse table weights)`` of a plain torch network."""
    tables = sparse_tables(module)
    table_ids = {id(t) for t in tables}
    return [p for p in module.parameters() if id(p) not in table_ids], tables


def train_bayesian(model, guide, train, args):
    """``tb.fit`` over ``args.epochs`` passes of the stream, generated batch by batch in order; what
    it warned of parameters that stopped getting gradients (:class:`tb.infer.DeadGradientWarning`)
    is kept in the result."""
    loader = train.loader(args.batch)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", tb.infer.DeadGradientWarning)
        history = tb.fit(
            model,
            guide,
            loader,
            epochs=args.epochs,
            lr=args.lr,
            lr_decay=args.lr_decay,
            lr_warmup=args.lr_warmup,
            lambda_step=args.lambda_step,
            init="none",
            tolerance=None,  # a stream: no share held out, no rank search
            seed=args.seed,
            progress=not args.no_progress,
        )
    seconds = time.perf_counter() - t0
    for w in caught:  # shown after the fit, not lost
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    t0 = time.perf_counter()
    probe = min(len(loader), 20)
    for _, _ in zip(range(probe), loader):
        pass
    generate = (time.perf_counter() - t0) * len(loader) * args.epochs / probe
    n = len(train) * args.epochs
    return {
        "steps": history.steps,
        "train_seconds": seconds - generate,
        "generate_seconds": generate,
        "samples_per_s": n / (seconds - generate),
        "samples_per_s_with_generation": n / seconds,
        "elbo": history.elbo,
        "log_likelihood": history.log_likelihood,
        "kl": history.kl,
        "dead_gradients": [str(w.message) for w in caught if issubclass(w.category, tb.infer.DeadGradientWarning)],
    }


def train_dense(net, train, args, desc="dense baseline"):
    """
    Plain torch, on the device of ``net``'s parameters: Adam on the MLPs (and tensor factors),
    SparseAdam on the tables, binary cross-entropy; the learning rate rises over the first
    ``args.lr_warmup`` steps and falls over the last ``args.lr_decay`` of them, as in ``tb.fit``.
    """
    device = module_device(net)
    dense_params, table_params = _split_params(net)
    optim = torch.optim.Adam(dense_params, lr=args.lr)
    sparse_optim = torch.optim.SparseAdam(table_params, lr=args.lr)
    steps = math.ceil(len(train) / args.batch) * args.epochs
    schedule = Schedule(warmup=0, ramp=0, total=steps, decay=round(args.lr_decay * steps), lr_warmup=args.lr_warmup)
    step_time = 0.0
    bar = tqdm(total=steps, desc=desc, disable=args.no_progress, mininterval=5)
    batches = (batch for _ in range(args.epochs) for batch in train.batches(args.batch))
    for step, (dense, sparse, clicks) in enumerate(batches):
        for group in optim.param_groups + sparse_optim.param_groups:
            group["lr"] = args.lr * schedule.lr_factor(step)
        dense, sparse, clicks = to_device((dense, sparse, clicks), device)
        t1 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(net(dense, sparse), clicks)
        optim.zero_grad()
        sparse_optim.zero_grad()
        loss.backward()
        optim.step()
        sparse_optim.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time += time.perf_counter() - t1
        bar.update()
    bar.close()
    return {"train_seconds": step_time, "samples_per_s": len(train) * args.epochs / step_time}


@torch.no_grad()
def evaluate(net, test, batch):
    """Accuracy and AUC of ``net`` on the drawn test clicks."""
    logits, labels = [], []
    device = module_device(net)
    for dense, sparse, clicks in test.batches(batch):
        logits.append(net(*to_device((dense, sparse), device)).cpu())
        labels.append(clicks)
    logit, y = torch.cat(logits), torch.cat(labels)
    return {"accuracy": ((logit > 0).float() == y).double().mean().item(), "auc": auc(logit, y)}


def tensor_name(table):
    """The name of planted table ``table``'s low-rank tensor in the Bayesian DLRM (0-based feature position)."""
    return f"net.C{table + 1}.weight"


def table_report(model, guide, gen):
    """Per planted table: its ranks, found and planted, parameter counts, and the readout's
    canonical bond weights (each bond's, relative to its largest) that the found ranks come from."""
    found = tb.ranks(model, guide)
    weights = tb.rank.bond_weights(model, guide)
    tables = {tensor_name(t): t for t in gen.planted_tables}
    rows = []
    for row in tb.compression_report(model, guide):
        t = tables[row["tensor"]]
        rows.append(
            {
                "table": f"C{t + 1}",
                "rows": gen.cardinalities[t],
                "planted": list(gen.ranks[t]),
                "found": list(found[row["tensor"]]),
                "max_ranks": list(row["max_ranks"]),
                "params_max": row["params_max"],
                "params_found": row["params"],
                "dense": row["dense"],
                "bond_weights": [[round(x, 5) for x in (w / w[0]).tolist()] for w in weights[row["tensor"]]],
            }
        )
    return rows


def run(args):
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    gen = (
        ClickGenerator.tiny(seed=args.seed, id_order=args.id_order)
        if args.smoke or args.tiny
        else generator(1, args.seed, args.id_order)
    )
    train, test = gen.stream(args.samples, "train"), gen.stream(args.test, "test")
    rss0 = peak_rss_gib()
    model = build(gen, args)
    guide = tb.guides.MeanField(model, seed=args.seed)
    params_before = sum(p.numel() for p in guide.parameters()) // 2 + sum(p.numel() for p in model.parameters())
    bayes_train = train_bayesian(model, guide, train, args)
    rss_bayes, gpu_bayes = peak_rss_gib(), peak_gpu_gib(args.device)
    tables = table_report(model, guide, gen)
    tb.prune(model, guide)
    bayes_eval = evaluate(model.export(guide), test, args.eval_batch)
    tensor_params = sum(r["params_found"] for r in tables)
    dense_table_params = sum(r["dense"] for r in tables)
    plain = sum(p.numel() for p in model.parameters())
    result = {
        "config": {k: str(v) if k == "device" else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else None,
        "bayes_optimal": gen.bayes_optimal(test, args.eval_batch),
        "bayesian": {
            **bayes_train,
            **bayes_eval,
            "peak_rss_gib": rss_bayes,
            "rss_before_gib": rss0,
            "peak_gpu_gib": gpu_bayes,
            "tables": tables,
            "tensorized_params_max": sum(r["params_max"] for r in tables),
            "tensorized_params_found": tensor_params,
            "tensorized_dense_params": dense_table_params,
            "compression_vs_paper_4.2e9": PAPER_DENSE_PARAMS / tensor_params,
            "compression_vs_own_tables": dense_table_params / tensor_params,
            "model_params_before": params_before,
            "model_params_after": plain + tensor_params,
        },
    }
    torch.manual_seed(args.seed)
    base = baseline_net(gen, model, args).to(args.device)
    result["dense_baseline"] = {
        **train_dense(base, train, args),
        **evaluate(base, test, args.eval_batch),
        "params": sum(p.numel() for p in base.parameters()),
        "scale_down": args.scale_down,
    }
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def markdown(r):
    c, b, d, opt = r["config"], r["bayesian"], r["dense_baseline"], r["bayes_optimal"]
    lines = [
        f"# DLRM on a synthetic Criteo-shaped click log ({c['samples']:,} training samples x {c['epochs']} epoch(s), "
        f"{c['test']:,} test, {r['threads']} threads" + (f", GPU: {r['gpu']})" if r.get("gpu") else ")"),
        "",
        *(
            [
                "The tiny log (`ClickGenerator.tiny`): the same structure, its planted tables 1,000 rows by 8 columns.",
                "",
            ]
            if c.get("tiny") or c.get("smoke")
            else []
        ),
        *(
            ["Category ids are numbered by frequency (`--id-order frequency`).", ""]
            if c.get("id_order") == "frequency"
            else []
        ),
        "| | accuracy | AUC | samples/s | params |",
        "|---|---|---|---|---|",
        f"| Bayesian TTM DLRM (pruned, posterior mean) | {100 * b['accuracy']:.3f} % | {b['auc']:.4f} | "
        f"{b['samples_per_s']:.0f} | {b['model_params_after']:,} |",
        f"| dense baseline (large tables hashed /{d['scale_down']}) | {100 * d['accuracy']:.3f} % | {d['auc']:.4f} | "
        f"{d['samples_per_s']:.0f} | {d['params']:,} |",
        f"| generator's Bayes-optimal | {100 * opt['accuracy']:.3f} % | {opt['auc']:.4f} | | |",
        "",
        f"Peak RSS: {b['peak_rss_gib']:.2f} GiB after the Bayesian model, "
        f"{r['peak_rss_gib']:.2f} GiB for the whole run. "
        + (
            f"Peak GPU memory allocated by torch: {b['peak_gpu_gib']:.2f} GiB after the Bayesian model. "
            if b.get("peak_gpu_gib") is not None
            else ""
        )
        + f"Bayesian training: {b['samples_per_s']:.0f} samples/s in the SVI steps, "
        f"{b['samples_per_s_with_generation']:.0f} samples/s with data generation; {b['steps']} steps.",
        "",
        *(
            [f"`tb.fit` warned that part of the Bayesian model stopped learning: {b['dead_gradients'][0]}", ""]
            if b.get("dead_gradients")
            else []
        ),
        f"Tensorized tables: {b['tensorized_params_max']:,} parameters at max rank, "
        f"{b['tensorized_params_found']:,} at the found ranks; compression "
        f"{b['compression_vs_paper_4.2e9']:,.0f}x against the paper's 4.249e9 dense parameters "
        f"({b['compression_vs_own_tables']:,.0f}x against these tables' own {b['tensorized_dense_params']:,}).",
        "",
        "| table | rows | planted ranks | found ranks | params (max rank) | params (found) |",
        "|---|---|---|---|---|---|",
    ]
    for t in b["tables"]:
        lines.append(
            f"| {t['table']} | {t['rows']:,} | {tuple(t['planted'])} | {tuple(t['found'])} | "
            f"{t['params_max']:,} | {t['params_found']:,} |"
        )
    return "\n".join(lines) + "\n"


def add_training_arguments(p):
    """The arguments of a DLRM run on the synthetic log that this benchmark and the DLRM study share."""
    p.add_argument("--samples", type=positive_int, default=3_000_000)
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the training stream")
    p.add_argument("--test", type=positive_int, default=200_000)
    p.add_argument("--batch", type=positive_int, default=2048)
    p.add_argument("--eval-batch", type=positive_int, default=16384)
    p.add_argument("--max-rank", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=0.01)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="the share of the steps, at the end, over which every learner's rate falls linearly to 0",
    )
    p.add_argument(
        "--lr-warmup",
        type=nonnegative_int,
        default=0,
        help="steps, at the start, over which every learner's rate rises linearly (tb.fit's lr_warmup)",
    )
    p.add_argument("--lambda-step", type=float, default=0.1)
    p.add_argument(
        "--scale-down",
        type=positive_int,
        default=None,
        help="the hashed baseline's large tables are this many times smaller (default 1000; 10 with --tiny)",
    )
    p.add_argument(
        "--id-order",
        choices=ID_ORDERS,
        default="shuffled",
        help="category ids: a pseudo-random bijection of the frequency ranks (shuffled, default) or the "
        "ranks themselves (frequency: the most frequent category first)",
    )
    p.add_argument(
        "--bottom", type=positive_int, nargs="*", default=None, help="hidden widths (default 256; 32 with --tiny)"
    )
    p.add_argument(
        "--top", type=positive_int, nargs="*", default=None, help="hidden widths (default 256 64; 32 with --tiny)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny log (ClickGenerator.tiny: planted tables of 1000 rows x 8 columns, the same structure)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def parse(argv=None):
    p = add_training_arguments(parser(__doc__, threads=2, device=True))
    args = p.parse_args(argv)
    check_device(p, args.device)
    return default_sizes(args)


def default_sizes(args):
    """Fill in the MLP widths and the dense baseline's hashing that the log's size implies, and
    shrink a ``--smoke`` run to seconds."""
    small = args.tiny or args.smoke
    args.bottom = args.bottom if args.bottom is not None else [32] if small else [256]
    args.top = args.top if args.top is not None else [32] if small else [256, 64]
    args.scale_down = args.scale_down if args.scale_down is not None else 10 if small else 1000
    if args.smoke:
        args.samples, args.test, args.batch, args.max_rank = min(args.samples, 8192), min(args.test, 4096), 512, 6
        args.bottom, args.top = [16], [16]
    return args


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    name = (
        ("dlrm_smoke" if args.smoke else "dlrm_tiny" if args.tiny else "dlrm")
        + ("_ids_by_frequency" if args.id_order == "frequency" else "")
        + ("_cuda" if args.device.type == "cuda" else "")
    )
    write_results(args.out, name, result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
