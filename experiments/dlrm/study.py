"""
A DLRM with 4.2e9 virtual embedding parameters trained by SVI on a small machine.

The synthetic click log (:class:`tensorbayes.data.clicks.ClickGenerator`) has Criteo Kaggle's 26
tables, the five large ones planted as low-rank TTM tensors of known ranks. The Bayesian model
is the paper's preset (:meth:`tensorbayes.models.dlrm.DLRM.paper_preset`: the five large tables
TTM at max rank 16, 128 = 4 x 4 x 8 columns; the other 21 tables dense), trained for one pass
over ``--samples`` streamed examples with a mean-field guide. Reported: peak resident memory,
samples/s, ranks found per table against the planted ones, parameters before and after pruning
and the compression against the dense tables, test accuracy and AUC against the generator's
Bayes-optimal accuracy, and a dense baseline measured in the same run on the same data (the same
network with the five large tables hashed down 1000x, plain torch, no Pyro).

The Bayesian model is trained by ``tb.fit`` (KL warm-up, closed-form λ M-step); its 21 dense
tables (73M parameters) are built with ``sparse=True``, which ``tb.fit`` steps with
:class:`torch.optim.SparseAdam` (a dense Adam step over them takes 1-4 s on this machine).
Samples/s are measured over the whole fit; the time to generate the batches is estimated from
a separate pass over the first 20 and reported apart.

Adam's learning rate (``--lr``, also SparseAdam's for the dense tables) is 0.01: at 0.03 the
full-size Bayesian model collapsed to predicting no clicks (AUC 0.5) in our runs, although 0.03
learned fastest on the tiny log (in a later 2M-sample run at 0.03 the bottom MLP went dark at
step 17: ``tb.fit`` warns of that, and the result keeps the warning). Every learner holds the
rate for the first half of its steps, then lowers it linearly to 0 (``--lr-decay 0.5``): at
full size with ids by frequency this gave each learner more than a constant rate (Bayesian
DLRM 77.17 % against 76.32 %, the generator's own model class 78.64 % against 78.17 %), and
more than a fall over all the steps or a doubled rate did for the latter. ``--lr-warmup``
(default 0) raises the rate linearly over the first steps: Adam's first steps at 0.01 switch
off three quarters of the bottom MLP's outputs within 10 steps, and a 200-step warm-up kept
most of them on (at the end 58 % of them and 62 % of the top's last hidden layer, against 19 %
and 30 %), yet over 2M samples with ids by frequency the Bayesian DLRM reached 73.41 % and
73.48 % with it against 73.91 % and 73.93 % without (two runs each, the same seed). The report
gives the share of each ReLU layer's units that still fire at the end (:func:`live_units`).

``--point-estimate`` adds the Bayesian model's network trained in plain torch (no Pyro, no
priors); ``--reference`` adds the generator's own model class (its logit's exact form, the
planted tables TTM at the planted ranks) trained the same way, once from a random start (what
the best-specified learner reaches from the same samples) and once with every parameter started
at the truth (how far the optimizer's steps alone carry a learner from it);
``--reference-warm OVERLAP`` adds it started near the truth. The table also gives the
generator's expected accuracy without its planted tables' pairwise interactions: what a learner
reaches that has learned everything but them. Every learner's expected accuracy (under the true
click probability) is also given by how many of a test example's planted lookups are rare
(:func:`rare_lookups`), against the Bayes-optimal accuracy of the same examples.

At any size, :func:`planted_fit` measures how near the learned tables are to the planted ones
over the rows the test examples look up, up to the DLRM's symmetries. Where the planted tables
are small enough to form (the tiny log), the learned tables are also turned back onto the
planted ones by the rotation of the embedding space and the scale per table that a DLRM cannot
tell apart (:func:`turned_back`), and the first-bond spectrum's largest drop is reported before
and after: what the clicks can tell of the first-bond ranks. Without the truth, at any size, the
pruned network is turned by :func:`tensorbayes.models.align_tables` to where its TTM tables'
first bonds are lowest and cut there (:func:`aligned_report`): the ranks found up to that
symmetry, their parameters and the turned network's accuracy are reported beside the readout's.

    python -m experiments.dlrm.study [--samples 3000000] [--batch 2048] [--shrink-rows 1] [--point-estimate]
        [--reference] [--reference-warm 0.7] [--id-order frequency] [--tiny] [--smoke] [--out experiments/dlrm/results]
"""

import itertools
import math
import os
import sys
import time

import pyro
import torch

import tensorbayes as tb
from benchmarks.common import check_device, parser, peak_gpu_gib, peak_rss_gib, write_results
from benchmarks.dlrm import (
    PAPER_DENSE_PARAMS,
    add_training_arguments,
    baseline_net,
    build,
    default_sizes,
    generator,
    table_report,
    tensor_name,
    train_bayesian,
    train_dense,
)
from experiments.dlrm.align import SearchFailed, align_tables
from tensorbayes.data.clicks import ClickGenerator, auc, expected_hits
from tensorbayes.formats import TTM
from tensorbayes.formats.canonical import canonicalize
from tensorbayes.guides.meanfield import low_rank_tensors
from tensorbayes.infer.batches import module_device, to_device


class PlantedForm(torch.nn.Module):
    """
    The generator's own model class: its logit's exact form (``ClickGenerator.logits``) with
    free parameters, the planted tables TTM at the *planted* ranks, started like the DLRM's
    tables (entries of variance ``1 / embedding_dim``). Trained as a point estimate it tells
    what the best-specified learner reaches from the same samples, so that a DLRM's shortfall
    from the Bayes-optimal accuracy can be told apart from the data's.

    With ``overlap > 0`` its cores start near the truth instead: every core is ``overlap`` times
    the planted core plus ``sqrt(1 - overlap**2)`` times noise of the planted core's scale. It
    tells whether the samples hold the planted tables (from near the truth) when a start at
    random does not find them.

    :param gen: the :class:`~tensorbayes.data.clicks.ClickGenerator`.
    :param float overlap: the start's share of the planted cores, in ``[0, 1]``; 0 (default) starts
        at random.
    """

    def __init__(self, gen, overlap=0.0):
        super().__init__()
        if not 0.0 <= overlap <= 1.0:
            raise ValueError(f"overlap must lie in [0, 1], got {overlap!r}")
        self.gen = gen
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.dense_weight = torch.nn.Parameter(torch.zeros(gen.num_dense))
        self.effects = torch.nn.ModuleList(torch.nn.Embedding(gen.cardinalities[t], 1, sparse=True) for t in gen.small)
        for table in self.effects:
            torch.nn.init.zeros_(table.weight)
        self.cores = torch.nn.ModuleList()
        for t in gen.planted_tables:
            layout = gen.layouts[t]
            std = (1.0 / gen.embedding_dim / math.prod(layout.ranks)) ** (0.5 / len(layout.factor_shapes))
            if overlap > 0:
                cores = [
                    overlap * c + math.sqrt(1 - overlap**2) * torch.randn(c.shape, dtype=c.dtype) * c.std()
                    for c in gen.factors[t]
                ]
            else:
                cores = [torch.randn(shape) * std for shape in layout.factor_shapes]
            self.cores.append(torch.nn.ParameterList(c.float() for c in cores))

    def forward(self, dense, sparse):
        gen = self.gen
        logit = self.bias + dense @ self.dense_weight
        for t, table in zip(gen.small, self.effects):
            logit = logit + table(sparse[:, t]).squeeze(-1)
        embedded = [gen.layouts[t].rows(list(cores), sparse[:, t]) for t, cores in zip(gen.planted_tables, self.cores)]
        total = sum(embedded)  # the sum over pairs s < t of <e_s, e_t>
        return logit + 0.5 * ((total * total).sum(-1) - sum((e * e).sum(-1) for e in embedded))

    @torch.no_grad()
    def start_at_truth(self):
        """
        Set every parameter to the generator's (in this module's dtype) and return ``self``.
        Trained from there, it tells how far the optimizer alone carries a learner from the truth
        in one pass over the samples: what no start can do better than.
        """
        gen = self.gen
        self.bias.fill_(gen.bias)
        self.dense_weight.copy_(gen.dense_weight)
        for t, table in zip(gen.small, self.effects):
            table.weight.copy_(gen.effects[t][:, None])
        for t, cores in zip(gen.planted_tables, self.cores):
            for core, true in zip(cores, gen.factors[t]):
                core.copy_(true)
        return self


#: Test examples are grouped by how many of their planted-table lookups are rare (:func:`rare_lookups`);
#: the last group holds this many or more.
RARE_GROUPS = 3


def rare_lookups(gen, sparse):
    """
    How many of each example's planted-table lookups are rare: of a category outside its table's
    ``prod(row_shape[1:])`` most frequent, as many as one slice of the first TTM core holds (with
    ids by frequency, exactly the rows off the first core's first slice).
    """
    return sum(
        (gen.frequency_ranks(t, sparse[:, t]) >= math.prod(gen.row_shapes[t][1:])).long() for t in gen.planted_tables
    )


@torch.no_grad()
def truth_of(test, batch):
    """``(probability, group)``: the click probability every test example was drawn with, in stream
    order, and its number of rare lookups (:func:`rare_lookups`, at most :data:`RARE_GROUPS`)."""
    gen, probs, groups = test.generator, [], []
    for start in range(0, len(test), batch):
        _, sparse, _, prob = gen.sample(torch.arange(start, min(start + batch, len(test))), test.stream)
        probs.append(prob)
        groups.append(rare_lookups(gen, sparse).clamp_max(RARE_GROUPS))
    return torch.cat(probs), torch.cat(groups)


def by_group(values, groups):
    """The mean of ``values`` in each group ``0..RARE_GROUPS`` (``None`` for an empty one)."""
    return [values[groups == g].mean().item() if (groups == g).any() else None for g in range(RARE_GROUPS + 1)]


def bayes_optimal_by_group(truth):
    """Each group's share of the test examples and its Bayes-optimal accuracy ``E[max(p, 1 - p)]``."""
    prob, groups = truth
    share = torch.bincount(groups, minlength=RARE_GROUPS + 1).double() / len(groups)
    return {"share": share.tolist(), "accuracy": by_group(torch.maximum(prob, 1 - prob), groups)}


def bayes_optimal_report(test, truth, batch):
    """The generator's marks on ``test`` (:meth:`ClickGenerator.bayes_optimal`) and, under
    ``"by_rare_lookups"``, the Bayes-optimal accuracy by group (:func:`bayes_optimal_by_group`)."""
    return {**test.generator.bayes_optimal(test, batch), "by_rare_lookups": bayes_optimal_by_group(truth)}


@torch.no_grad()
def evaluate(net, test, batch, truth):
    """Accuracy and AUC on the drawn test clicks, and the expected accuracy under the true click
    probability (``truth`` from :func:`truth_of`), overall and by number of rare lookups."""
    logits, labels = [], []
    device = module_device(net)
    for dense, sparse, clicks in test.batches(batch):
        logits.append(net(*to_device((dense, sparse), device)).cpu())
        labels.append(clicks)
    logit, y = torch.cat(logits), torch.cat(labels)
    prob, groups = truth
    expected = expected_hits(logit, prob)
    return {
        "accuracy": ((logit > 0).float() == y).double().mean().item(),
        "auc": auc(logit, y),
        "expected_accuracy": expected.mean().item(),
        "expected_accuracy_by_rare_lookups": by_group(expected, groups),
    }


@torch.no_grad()
def live_units(net, test, batch):
    """
    ``{"examples": n, "layers": {name: share}}``: per ReLU layer of ``net``'s bottom and top MLPs
    (``"bottom.1"``, ...), the share of its units that fire on at least one of the first ``n``
    test examples (``n`` at most ``batch``). Adam's first steps switch most of a wide ReLU layer
    off for good (``--lr-warmup``); a layer at 0 makes the network predict without it.
    """
    dense, sparse, _ = next(iter(test.batches(batch)))
    outputs = {}
    hooks = [
        module.register_forward_hook(lambda m, i, out, name=f"{part}.{k}": outputs.__setitem__(name, out))
        for part in ("bottom", "top")
        for k, module in enumerate(getattr(net, part))
        if isinstance(module, torch.nn.ReLU)
    ]
    try:
        net(*to_device((dense, sparse), module_device(net)))
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "examples": len(dense),
        "layers": {name: (out > 0).any(0).double().mean().item() for name, out in outputs.items()},
    }


#: The largest planted table (rows x embedding dim) that :func:`turned_back` forms densely: the tiny log's.
TURN_BACK_MAX_ENTRIES = 2**22


def learned_factors(gen, model, guide):
    """``{table: (layout, posterior-mean factors, float64 on the CPU)}`` of a Bayesian DLRM's planted tables."""
    tensors = low_rank_tensors(model)
    tensors = {t: tensors[tensor_name(t)] for t in gen.planted_tables}
    return {t: (x.layout, [f.detach().double().cpu() for f in guide.factor_means(x)]) for t, x in tensors.items()}


def learned_tables(gen, model, guide):
    """The posterior-mean planted tables of a Bayesian DLRM, dense float64 ``{table: (rows, dim)}``."""
    return {t: layout.to_matrix(factors) for t, (layout, factors) in learned_factors(gen, model, guide).items()}


def learned_rows(gen, model, guide):
    """
    ``rows(table, ids)``: posterior-mean rows ``ids`` of planted table ``table``, float64, gathered
    from the factors.
    """
    factors = learned_factors(gen, model, guide)
    return lambda t, ids: factors[t][0].rows(factors[t][1], ids)


def bond_spectra(gen, t, table):
    """The readout's canonical bond weights (:func:`~tensorbayes.formats.canonical.canonicalize`)
    of a dense planted-shape table, decomposed at full rank, each bond's relative to its largest."""
    shape = gen.layouts[t].shape
    cores = TTM.decompose(table.reshape(shape), max(shape) ** len(shape))
    _, weights = canonicalize(TTM(shape, [core.shape[-1] for core in cores[:-1]]), cores)
    return [w / w[0] for w in weights]


def shared_rotation(cross, planted_sq, rounds=20):
    """
    The rotation ``R`` shared by all tables and the scale ``c_t`` per table that bring learned
    tables ``L_t`` nearest the planted ones ``P_t``, ``min sum_t ||L_t - c_t P_t R||^2``, from
    ``cross[t] = P_t^T L_t`` and ``planted_sq[t] = ||P_t||^2`` alone: the rotation given the
    scales (orthogonal Procrustes) and the scales given the rotation, in turn, started from
    every pattern of signs, the best fit kept.

    :returns: ``(R, {table: c_t})``, the scales summing to a positive number (``(R, c)`` and
        ``(-R, -c)`` are the same fit).
    """
    tables, best = list(cross), None
    for signs in itertools.product((1.0, -1.0), repeat=len(tables) - 1):
        scales = dict(zip(tables, (1.0,) + signs))
        for _ in range(rounds):
            u, _, vh = torch.linalg.svd(sum(scales[t] * cross[t] for t in tables))
            rotation = u @ vh
            scales = {t: torch.trace(rotation.T @ cross[t]).item() / planted_sq[t] for t in tables}
        explained = sum(c**2 * planted_sq[t] for t, c in scales.items())  # sum_t ||L_t||^2 less the residual
        if best is None or explained > best[0]:
            best = (explained, rotation, scales)
    _, rotation, scales = best
    if sum(scales.values()) < 0:
        rotation, scales = -rotation, {t: -c for t, c in scales.items()}
    return rotation, scales


def turned_back(gen, learned):
    """
    The learned tables turned back onto the planted ones by one orthogonal rotation of the
    embedding space shared by all tables (orthogonal Procrustes) and a scale per table.

    A DLRM sees its embeddings only through dot products (the top MLP weighs every pair's dot
    separately), so a rotation common to all embeddings, and a scale or sign per table, leave
    its function unchanged; a rotation that mixes the first two column modes raises the first
    bond's TTM rank (``tests/data/test_clicks.py``). Turned back, a learned table's first-bond
    spectrum shows the rank the clicks can tell: its largest drop sits at the planted rank
    when the learner found the planted table up to those symmetries.

    :param dict learned: ``{table: dense (rows, dim)}``.
    :returns: ``{table: (dense turned-back table, scale)}``, the scales summing to a positive number.
    """
    true = {t: gen.layouts[t].to_matrix(gen.factors[t]) for t in learned}
    rotation, scales = shared_rotation(
        {t: true[t].T @ learned[t] for t in learned}, {t: true[t].pow(2).sum().item() for t in learned}
    )
    return {t: (learned[t] @ rotation.T, scales[t]) for t in learned}


def turned_back_report(gen, model, guide):
    """Per planted table, the first-bond spectrum of the learned table before and after
    :func:`turned_back`, the position of its largest drop, and the relative distance to the
    planted table after turning; ``None`` when a planted table is too large to form densely."""
    if any(gen.cardinalities[t] * gen.embedding_dim > TURN_BACK_MAX_ENTRIES for t in gen.planted_tables):
        return None
    learned = learned_tables(gen, model, guide)
    rows = []
    for t, (back, scale) in turned_back(gen, learned).items():
        before, after = bond_spectra(gen, t, learned[t])[0], bond_spectra(gen, t, back)[0]
        true = gen.layouts[t].to_matrix(gen.factors[t])
        rows.append(
            {
                "table": f"C{t + 1}",
                "planted": gen.ranks[t][0],
                "largest_drop_before": largest_drop(before),
                "largest_drop_turned_back": largest_drop(after),
                "scale": scale,
                "relative_error": float((back - scale * true).norm() / (scale * true).norm()),
                "first_bond_before": [round(x, 5) for x in before.tolist()],
                "first_bond_turned_back": [round(x, 5) for x in after.tolist()],
            }
        )
    return rows


@torch.no_grad()
def planted_fit(gen, rows, test, lookups=100_000, chunk=10_000):
    """
    How near the learned tables are to the planted ones where the clicks look them up: over the
    rows of the first ``lookups`` test examples (each row as often as it is looked up), the
    relative distance of every learned table to its planted one after the rotation shared by all
    tables and the scale per table that a DLRM cannot tell apart (orthogonal Procrustes, as
    :func:`turned_back`), and after the best linear map of that table alone (a bound no
    symmetry of the DLRM can beat). Only 128 x 128 Gram matrices are kept, at any table size.

    :param rows: ``rows(table, ids)``, the learned rows (:func:`learned_rows`).
    """
    grams = {
        t: {"LL": 0.0, "PL": 0.0, "PP": 0.0} for t in gen.planted_tables
    }  # learned^T learned, planted^T learned, ...
    for start in range(0, min(lookups, len(test)), chunk):
        _, sparse, _ = test[start : min(start + chunk, lookups, len(test))]
        for t, g in grams.items():
            learned, planted = rows(t, sparse[:, t]), gen.embeddings(t, sparse[:, t])
            g["LL"] = g["LL"] + learned.T @ learned
            g["PL"] = g["PL"] + planted.T @ learned
            g["PP"] = g["PP"] + planted.T @ planted
    planted_sq = {t: g["PP"].trace().item() for t, g in grams.items()}
    rotation, scales = shared_rotation({t: g["PL"] for t, g in grams.items()}, planted_sq)
    report = []
    for t, g in grams.items():
        scale, planted2 = scales[t], planted_sq[t]
        turned = max(g["LL"].trace().item() - scale**2 * planted2, 0.0) / (scale**2 * planted2)
        linear = 1 - torch.trace(g["PL"] @ torch.linalg.pinv(g["LL"], hermitian=True) @ g["PL"].T).item() / planted2
        report.append(
            {
                "table": f"C{t + 1}",
                "turned_back_distance": math.sqrt(turned),
                "linear_map_distance": math.sqrt(max(linear, 0.0)),
            }
        )
    return report


def largest_drop(weights):
    """The number of leading weights (relative to the largest) before the largest ratio between
    consecutive ones, weights below the readout's threshold (1 %) counting as the threshold."""
    w = weights.clamp_min(tb.rank.DEFAULT_THRESHOLD * weights[0])
    return int(torch.argmax(w[:-1] / w[1:])) + 1


def aligned_report(net, test, args, truth, tables):
    """
    The pruned network turned, with all its tables, to where the TTM tables' first bonds are
    lowest, and those bonds cut at the readout's rule (:func:`tensorbayes.models.align_tables`):
    the ranks found up to the DLRM's symmetry, their parameter counts, the accuracy of the turned
    network and the seconds the search took. Adds ``aligned`` and ``params_aligned`` to ``tables``' rows.
    A search that ends at no finite turn (:class:`~experiments.dlrm.align.SearchFailed`) is reported
    as ``{"failed": reason, "seconds": ...}``, and the run goes on.
    """
    t0 = time.perf_counter()
    try:
        turned, ranks = align_tables(net)
    except SearchFailed as error:
        return {"failed": str(error), "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    for row in tables:
        table = getattr(turned, row["table"])
        row["aligned"] = list(ranks[row["table"]])
        row["params_aligned"] = table.layout.num_params()
    return {
        **evaluate(turned, test, args.eval_batch, truth),
        "seconds": seconds,
        "tensorized_params": sum(row["params_aligned"] for row in tables),
    }


def train_point_estimate(gen, train, test, truth, args):
    """
    The Bayesian model's network at its initial factor means (the same seed), trained as a plain
    torch point estimate: no Pyro, no priors, no rank shrinkage. It tells the optimization's
    share of a shortfall from the Bayesian machinery's.
    """
    torch.manual_seed(args.seed)
    model = build(gen, args)
    net = model.export(tb.guides.MeanField(model, seed=args.seed))
    del model
    return {**train_dense(net, train, args, desc="point estimate"), **evaluate(net, test, args.eval_batch, truth)}


def run(args):
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    gen = (
        ClickGenerator.tiny(seed=args.seed, id_order=args.id_order)
        if args.smoke or args.tiny
        else generator(args.shrink_rows, args.seed, args.id_order)
    )
    train, test = gen.stream(args.samples, "train"), gen.stream(args.test, "test")
    truth = truth_of(test, args.eval_batch)
    rss0 = peak_rss_gib()

    model = build(gen, args)
    guide = tb.guides.MeanField(model, seed=args.seed, m_step=args.m_step)
    params_before = sum(p.numel() for p in guide.parameters()) // 2 + sum(p.numel() for p in model.parameters())
    bayes_train = train_bayesian(model, guide, train, args)
    rss_bayes, gpu_bayes = peak_rss_gib(), peak_gpu_gib(args.device)
    tables = table_report(model, guide, gen)
    turned = turned_back_report(gen, model, guide)
    fit = planted_fit(gen, learned_rows(gen, model, guide), test)
    before_net = model.export(guide)
    tb.prune(model, guide)
    net = model.export(guide)
    bayes_eval = evaluate(net, test, args.eval_batch, truth)
    live = live_units(net, test, args.eval_batch)
    bayes_eval_unpruned = evaluate(before_net, test, args.eval_batch, truth)
    aligned = aligned_report(net, test, args, truth, tables)
    tensor_params = sum(r["params_found"] for r in tables)
    dense_table_params = sum(r["dense"] for r in tables)
    plain = sum(p.numel() for p in model.parameters())
    result = {
        "config": {k: str(v) if k == "device" else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else None,
        "bayes_optimal": bayes_optimal_report(test, truth, args.eval_batch),
        "bayesian": {
            **bayes_train,
            **bayes_eval,
            "unpruned": bayes_eval_unpruned,
            "peak_rss_gib": rss_bayes,
            "rss_before_gib": rss0,
            "peak_gpu_gib": gpu_bayes,
            "live_units": live,
            "tables": tables,
            "turned_back": turned,
            "planted_fit": fit,
            "aligned": aligned,
            "tensorized_params_max": sum(r["params_max"] for r in tables),
            "tensorized_params_found": tensor_params,
            "tensorized_dense_params": dense_table_params,
            "compression_vs_paper_4.2e9": PAPER_DENSE_PARAMS / tensor_params,
            "compression_vs_own_tables": dense_table_params / tensor_params,
            "model_params_before": params_before,
            "model_params_after": plain + tensor_params,
            "virtual_params": dense_table_params + plain,
        },
    }
    del before_net
    if args.point_estimate:
        result["point_estimate"] = train_point_estimate(gen, train, test, truth, args)
    references = []  # (key, start, overlap with the truth, description)
    if args.reference:
        references += [
            ("reference", lambda: PlantedForm(gen), 0.0, "generator's model class"),
            ("reference_truth", lambda: PlantedForm(gen).start_at_truth(), 1.0, "the same, from the truth"),
        ]
    if args.reference_warm:
        references.append(
            (
                "reference_warm",
                lambda: PlantedForm(gen, overlap=args.reference_warm),
                args.reference_warm,
                "the same, started near the truth",
            )
        )
    for key, start, overlap, desc in references:
        torch.manual_seed(args.seed)
        form = start().to(args.device)
        result[key] = {
            **train_dense(form, train, args, desc=desc),
            **evaluate(form, test, args.eval_batch, truth),
            "overlap": overlap,
        }
    torch.manual_seed(args.seed)
    base = baseline_net(gen, model, args).to(args.device)
    result["dense_baseline"] = {
        **train_dense(base, train, args),
        **evaluate(base, test, args.eval_batch, truth),
        "params": sum(p.numel() for p in base.parameters()),
        "scale_down": args.scale_down,
    }
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def _aligned(b):
    """Whether the Bayesian result ``b`` holds a turned network (:func:`aligned_report` that did not fail)."""
    return bool(b.get("aligned")) and "failed" not in b["aligned"]


def markdown(r):
    b, d, opt = r["bayesian"], r["dense_baseline"], r["bayes_optimal"]
    lines = [
        f"# DLRM on a synthetic Criteo-shaped click log ({r['config']['samples']:,} training samples x "
        f"{r['config']['epochs']} epoch(s), "
        f"{r['config']['test']:,} test, {r['threads']} threads" + (f", GPU: {r['gpu']})" if r.get("gpu") else ")"),
        "",
        *(
            [
                "The tiny log (`ClickGenerator.tiny`): the same structure, its planted tables 10 x 10 x 10 rows by "
                "2 x 2 x 2 columns and its other tables at most 50 rows (the paper's compression figure below still "
                "compares with the full-size tables).",
                "",
            ]
            if r["config"].get("tiny")
            else []
        ),
        (
            f"Every learner's rate falls linearly to 0 over the last {100 * r['config']['lr_decay']:g} % of its steps "
            "(`--lr-decay`)."
            if r["config"].get("lr_decay")
            else "Every learner's rate is constant (`--lr-decay 0`)."
        ),
        *(
            [f"It first rises linearly over {r['config']['lr_warmup']:,} steps (`--lr-warmup`)."]
            if r["config"].get("lr_warmup")
            else []
        ),
        "",
        *(
            [
                f"λ is updated by MacKay's fixed-point step (`--m-step {r['config']['m_step']}`, "
                "`tb.guides.MeanField(m_step=...)`).",
                "",
            ]
            if r["config"].get("m_step", "em") != "em"
            else []
        ),
        *(
            [
                "Category ids are numbered by frequency (`--id-order frequency`): the most frequent category of "
                "every table has id 0.",
                "",
            ]
            if r["config"].get("id_order") == "frequency"
            else []
        ),
        *(
            [
                f"The large tables' row modes are divided by {r['config']['shrink_rows']:g} (the paper's compression "
                "figure below still compares with the full-size tables).",
                "",
            ]
            if r["config"].get("shrink_rows", 1) != 1
            else []
        ),
        "| | accuracy | AUC | samples/s | params |",
        "|---|---|---|---|---|",
        f"| Bayesian TTM DLRM (pruned, posterior mean) | {100 * b['accuracy']:.3f} % | {b['auc']:.4f} | "
        f"{b['samples_per_s']:.0f} | {b['model_params_after']:,} |",
        f"| same, before pruning | {100 * b['unpruned']['accuracy']:.3f} % | {b['unpruned']['auc']:.4f} | | "
        f"{b['model_params_before']:,} |",
        *(
            [
                f"| same, pruned, turned to its lowest first bonds and cut there (`align_tables`) | "
                f"{100 * b['aligned']['accuracy']:.3f} % | {b['aligned']['auc']:.4f} | | |"
            ]
            if _aligned(b)
            else []
        ),
        f"| dense baseline (large tables hashed /{d['scale_down']}) | {100 * d['accuracy']:.3f} % | {d['auc']:.4f} | "
        f"{d['samples_per_s']:.0f} | {d['params']:,} |",
        *(
            [
                f"| same TTM network, point estimate without Pyro | {100 * r['point_estimate']['accuracy']:.3f} % | "
                f"{r['point_estimate']['auc']:.4f} | {r['point_estimate']['samples_per_s']:.0f} | |"
            ]
            if "point_estimate" in r
            else []
        ),
        *(
            [
                f"| generator's own model class at the planted ranks, point estimate | "
                f"{100 * r['reference']['accuracy']:.3f} % | {r['reference']['auc']:.4f} | "
                f"{r['reference']['samples_per_s']:.0f} | |"
            ]
            if "reference" in r
            else []
        ),
        *(
            [
                f"| the same, every parameter started at the truth | {100 * r['reference_truth']['accuracy']:.3f} % | "
                f"{r['reference_truth']['auc']:.4f} | {r['reference_truth']['samples_per_s']:.0f} | |"
            ]
            if "reference_truth" in r
            else []
        ),
        *(
            [
                f"| the same, its cores started at overlap {r['reference_warm']['overlap']:g} with the planted ones | "
                f"{100 * r['reference_warm']['accuracy']:.3f} % | {r['reference_warm']['auc']:.4f} | "
                f"{r['reference_warm']['samples_per_s']:.0f} | |"
            ]
            if "reference_warm" in r
            else []
        ),
        f"| generator's Bayes-optimal | {100 * opt['accuracy']:.3f} % | {opt['auc']:.4f} | | |",
        f"| generator without the planted tables' interactions (expected) | "
        f"{100 * opt['accuracy_without_interactions']:.3f} % | | | |",
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
        *(
            [
                "ReLU units of the Bayesian model's MLPs that fire on some of the first "
                f"{b['live_units']['examples']:,} test examples: "
                + ", ".join(f"{name} {100 * share:.0f} %" for name, share in b["live_units"]["layers"].items())
                + " (`live_units`).",
                "",
            ]
            if b.get("live_units")
            else []
        ),
        f"Tensorized tables: {b['tensorized_params_max']:,} parameters at max rank, "
        f"{b['tensorized_params_found']:,} at the found ranks; compression "
        f"{b['compression_vs_paper_4.2e9']:,.0f}x against the paper's 4.249e9 dense parameters "
        f"({b['compression_vs_own_tables']:,.0f}x against these tables' own {b['tensorized_dense_params']:,}).",
        "",
        *(
            [
                "Up to the DLRM's symmetry (`align_tables`: one orthogonal map of the first two column modes shared "
                f"by every table, found in {b['aligned']['seconds']:.0f} s, the first bonds cut at the readout's rule "
                f"there): {b['aligned']['tensorized_params']:,} parameters.",
                "",
            ]
            if _aligned(b)
            else []
        ),
        *(
            [f"The search for the DLRM's symmetry (`align_tables`) failed: {b['aligned']['failed']}", ""]
            if b.get("aligned") and not _aligned(b)
            else []
        ),
        "| table | rows | planted ranks | found ranks | up to the symmetry | params (max rank) | params (found) | "
        "params (up to the symmetry) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in b["tables"]:
        lines.append(
            f"| {t['table']} | {t['rows']:,} | {tuple(t['planted'])} | {tuple(t['found'])} | "
            f"{tuple(t['aligned']) if 'aligned' in t else ''} | {t['params_max']:,} | {t['params_found']:,} | "
            f"{format(t['params_aligned'], ',') if 'params_aligned' in t else ''} |"
        )
    lines += rare_lookups_section(r)
    if b.get("planted_fit"):
        lines += [
            "",
            "How near the learned tables are to the planted ones over the rows the test examples look up "
            "(`planted_fit`): the relative distance after the rotation shared by all tables and the scale per "
            "table that a DLRM cannot tell apart, and after the best linear map of each table alone.",
            "",
            "| table | turned back | best linear map |",
            "|---|---|---|",
        ]
        for t in b["planted_fit"]:
            lines.append(
                f"| {t['table']} | {100 * t['turned_back_distance']:.0f} % | {100 * t['linear_map_distance']:.0f} % |"
            )
    if b.get("turned_back"):
        lines += [
            "",
            "The first bond up to the DLRM's symmetries (one rotation of the embedding space shared by all "
            "tables, a scale per table): where the learned first-bond spectrum drops most, before and after "
            "turning the learned tables back onto the planted ones (`turned_back` in the JSON).",
            "",
            "| table | planted first-bond rank | largest drop, learned | largest drop, turned back | "
            "distance to planted, turned back |",
            "|---|---|---|---|---|",
        ]
        for t in b["turned_back"]:
            lines.append(
                f"| {t['table']} | {t['planted']} | {t['largest_drop_before']} | "
                f"{t['largest_drop_turned_back']} | {100 * t['relative_error']:.0f} % |"
            )
    return "\n".join(lines) + "\n"


#: The learners of a result, by key, as :func:`rare_lookups_section` names them.
LEARNERS = {
    "bayesian": "Bayesian DLRM",
    "dense_baseline": "hashed baseline",
    "point_estimate": "point estimate",
    "reference": "own model class",
    "reference_truth": "the same, from the truth",
    "reference_warm": "the same, from overlap {overlap:g}",
}


def _percent(x):
    return "" if x is None else f"{100 * x:.2f} %"


def rare_lookups_section(r):
    """Markdown lines: each learner's expected accuracy by number of rare lookups, against the Bayes-optimal."""
    optimal = r["bayes_optimal"].get("by_rare_lookups")
    if optimal is None:
        return []
    keys = [k for k in LEARNERS if k in r]
    names = [LEARNERS[k].format(overlap=r[k].get("overlap", 0)) for k in keys]
    lines = [
        "",
        "Where the accuracy is lost: the expected accuracy (under the true click probability) of the test "
        "examples grouped by how many of their planted-table lookups are rare, of a category outside its "
        "table's most frequent ones that one slice of the first TTM core holds (`rare_lookups`).",
        "",
        "| rare lookups | share of examples | " + " | ".join(names) + " | Bayes-optimal |",
        "|---" * (len(names) + 3) + "|",
    ]
    for g, (share, best) in enumerate(zip(optimal["share"], optimal["accuracy"])):
        label = f"{g} or more" if g == RARE_GROUPS else str(g)
        cells = [_percent(r[k]["expected_accuracy_by_rare_lookups"][g]) for k in keys] + [_percent(best)]
        lines.append(f"| {label} | {100 * share:.1f} % | " + " | ".join(cells) + " |")
    cells = [_percent(r[k]["expected_accuracy"]) for k in keys] + [_percent(r["bayes_optimal"]["accuracy"])]
    lines.append("| all | 100 % | " + " | ".join(cells) + " |")
    return lines


def parse(argv=None):
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    p = add_training_arguments(parser(__doc__, threads=2, device=True, out=out))
    p.add_argument(
        "--m-step",
        choices=("em", "mackay"),
        default="em",
        help="the guide's closed-form λ update (tb.guides.MeanField's m_step)",
    )
    p.add_argument(
        "--point-estimate",
        action="store_true",
        help="also train the same TTM network as a plain torch point estimate (no Pyro, no priors)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also train the generator's own model class (its logit's form, TTM at the planted ranks) "
        "as a point estimate, from a random start (what the best-specified learner reaches from "
        "these samples) and from the truth (how far the optimizer alone carries it away)",
    )
    p.add_argument(
        "--reference-warm",
        type=float,
        default=0.0,
        metavar="OVERLAP",
        help="also train the generator's model class started near the truth (each core OVERLAP times "
        "the planted one plus noise): whether the samples hold the planted tables",
    )
    p.add_argument(
        "--shrink-rows",
        type=float,
        default=1.0,
        help="divide the large tables' row modes by this (tables about its cube smaller)",
    )
    args = p.parse_args(argv)
    check_device(p, args.device)
    return default_sizes(args)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    name = (
        (
            "dlrm_smoke"
            if args.smoke
            else "dlrm_tiny"
            if args.tiny
            else "dlrm"
            if args.shrink_rows == 1
            else f"dlrm_rows_shrunk_{args.shrink_rows:g}"
        )
        + ("_ids_by_frequency" if args.id_order == "frequency" else "")
        + (f"_{args.m_step}" if args.m_step != "em" else "")
    )
    write_results(args.out, name, result, markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
