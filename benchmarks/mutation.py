"""
Mutation testing of the core modules: how many small, deliberate bugs do the fast tests catch?

Each mutant changes one operator or constant in one of the core modules (``tensorbayes/formats/``,
``priors.py``, ``rank.py``, ``guides/``, ``infer/``, ``compact.py``) and runs that module's tests
against it; a mutant is *killed* when a test fails (or the tests cannot be collected), *survives*
when they all pass, and *times out* when they run past twice the unmutated run plus 10 s (counted
as caught). The score of a module is (killed + timed out) / mutants run.

The mutations (one at a time, found by walking each file's ``ast``):

* comparisons: ``<`` / ``<=`` and ``>`` / ``>=`` (the boundary), ``==`` / ``!=``, ``is`` /
  ``is not``, ``in`` / ``not in``;
* arithmetic: ``+`` / ``-`` and ``*`` / ``/`` (also in ``+=`` and the like);
* constants: ``0`` / ``1`` (ints and floats), ``True`` / ``False``;
* boolean operators: ``and`` / ``or``; ``not x`` becomes ``x``.

Lines marked ``# pragma: no mutate``, annotations, ``__all__`` and ``if TYPE_CHECKING:`` blocks
are left alone. A module has hundreds of mutants, so each run draws a fixed-seed random sample of
``--sample`` per module (``--sample 0``: all of them); the report says how many there were and
how many were run.

The tests run without the ``slow`` ones, with ``-x -q -p no:randomly -p no:xdist
-p no:cacheprovider``, the test file
of the mutated source file first (``tests/infer/test_elbo.py`` for ``tensorbayes/infer/elbo.py``)
and then the module's other tests. To spare the 2-3 s of importing torch and Pyro per mutant, the
runner imports them once and forks one process per mutant; the fork puts the mutated module's
compiled code in place through an import hook before pytest imports the package, so no file is
written and the working tree is never changed. Run it pinned to one core on a shared machine
(``taskset -c 1``); a full run of 40 mutants per module takes about 15 minutes on one core.

This is not part of every CI run. Writes ``mutation.json`` (every mutant and its fate) and
``mutation.md`` (the table per module and the surviving mutants, ``file:line`` and the change);
``mutation_smoke.*`` with ``--smoke`` (3 mutants per module), ``mutation_only.*`` with ``--only``
(every mutant of the lines given, to check a new test against them).

    python -m benchmarks.mutation [--modules formats priors rank guides infer compact] [--sample 40] [--seed 0]
"""

import ast
import copy
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import random
import signal
import sys
import time

from benchmarks.common import nonnegative_int, parser, write_results

#: The repository root: the paths below are relative to it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Module name -> (its source files or folders, its tests).
MODULES = {
    "formats": (["tensorbayes/formats"], ["tests/formats"]),
    "priors": (["tensorbayes/priors.py"], ["tests/test_priors.py"]),
    "rank": (["tensorbayes/rank.py"], ["tests/test_rank.py"]),
    "guides": (["tensorbayes/guides"], ["tests/guides"]),
    "infer": (["tensorbayes/infer"], ["tests/infer"]),
    "compact": (["tensorbayes/compact.py"], ["tests/test_compact.py"]),
}

PYTEST_ARGS = ["-x", "-q", "-p", "no:randomly", "-p", "no:xdist", "-p", "no:cacheprovider", "-m", "not slow"]

COMPARE = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
BOOLEAN = {ast.And: ast.Or, ast.Or: ast.And}
SYMBOL = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.And: "and",
    ast.Or: "or",
}


#: Why a surviving mutant was left, by (file, its line's code, the change): the equivalent ones
#: (no test can tell them from the original) and those out of reach. Shown beside the survivors.
NOTES = {
    ("tensorbayes/priors.py", "v = -torch.log1p(4.0 * torch.sigmoid(c) / Dd)", "/ -> *"): (
        "equivalent: Newton's starting point inside the bracket; the same root"
    ),
    (
        "tensorbayes/priors.py",
        "super(ImproperLogUniform, new).__init__(torch.Size(_shape(batch_shape)), torch.Size(), validate_args=False)",
        "False -> True",
    ): "equivalent: no argument constraints to check, and the next line sets the flag",
    ("tensorbayes/rank.py", "keep = [torch.arange(r, device=means[0].device) for r in counts]", "0 -> 1"): (
        "equivalent: every factor is on the same device"
    ),
    (
        "tensorbayes/rank.py",
        "{float(r) for _, ws in canon.values() for w in ws if w[0] > 0 for r in w / w[0]}, reverse=True",
        "> -> >=",
    ): "out of reach: differs only for a tensor whose weights are all zero (NaN ratios)",
    ("tensorbayes/guides/base.py", "if constraint is not None:", "is not -> is"): (
        "dead branch: a PyroModule keeps constraints in _pyro_params, not _constraints, so pruning an "
        "AutoNormal makes its scales plain parameters (a library bug, reported)"
    ),
    (
        "tensorbayes/guides/meanfield.py",
        "faster = tensor.prior.update(m_loc, gamma) < tensor.prior.update(m, d)",
        "< -> <=",
    ): "equivalent: on a tie both choices give the same λ",
    ("tensorbayes/infer/predict.py", "if num_samples == 1:", "1 -> 0"): (
        "equivalent: with one draw m2 / (n - 1) is 0 / 0, NaN as well"
    ),
    ("tensorbayes/priors.py", "def update(self, M, D, *, check=True):", "True -> False"): (
        "equivalent: the base class's abstract update; every prior's own has its default"
    ),
    ("tensorbayes/rank.py", "if w.numel() == 0 or w.max() <= 0:", "0 -> 1"): (
        "equivalent: a bond of one index reads as one index either way"
    ),
    ("tensorbayes/rank.py", "if w.numel() == 0 or w.max() <= 0:", "<= -> <"): (
        "equivalent: all-zero weights pass no threshold, and the count is clamped to 1"
    ),
    ("tensorbayes/rank.py", "counts.append(max(1, int(torch.cumprod((above & steady).long(), 0).sum())))", "1 -> 0"): (
        "equivalent: the largest weight passes both tests, so the count is at least 1"
    ),
    (
        "tensorbayes/rank.py",
        "best = _cuts(tensors, canon, relative[hi]) if relative else _cuts(tensors, canon, 0.0)",
        "0.0 -> 1.0",
    ): "equivalent: with every weight zero both thresholds keep one index per bond",
    (
        "tensorbayes/rank.py",
        "counts = [max(1, int((w / w[0] >= tau).sum())) if w[0] > 0 else 1 for w in weights]",
        "1 -> 0",
    ): ("equivalent for max(1 -> 0): τ is at most 1, so the largest index is always kept"),
    ("tensorbayes/guides/base.py", "def update_lambdas(self, step_size=1.0):", "1.0 -> 0.0"): (
        "equivalent: the base class's update_lambdas does nothing"
    ),
    (
        "tensorbayes/guides/base.py",
        'if not self.ready and getattr(guide, "prototype_trace", None) is not None:',
        "and -> or",
    ): "equivalent: a module model's traced tensors are the ones it walked",
    (
        "tensorbayes/guides/meanfield.py",
        "lambdas[b] = tensor.prior.damped_update(lambdas[b], m, d, step_size, check=False)",
        "False -> True",
    ): "equivalent: the checks pass on the guide's own moments; they only cost a read",
    ("tensorbayes/infer/fit.py", "train_size = min(batches.batch_size, n - n_held)", "- -> +"): (
        "equivalent: the steps per epoch, ceil((n - n_held) / train_size), are 1 or the same either way"
    ),
    (
        "tensorbayes/infer/fit.py",
        "if n_held < math.ceil(2 / tolerance) or n - n_held < 1:  # too few to resolve the tolerance",
        "1 -> 0",
    ): "unreachable: validation is at most 0.5, so at least one example is left to train on",
}


def source_files(paths):
    """The ``.py`` files under ``paths`` (files or folders, relative to the root), sorted."""
    files = []
    for path in paths:
        if path.endswith(".py"):
            files.append(path)
        else:
            files += sorted(os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, path, "*.py")))
    return files


def test_files(source, tests):
    """The test files for ``source``: its own test file first (if any), then the rest of ``tests``."""
    files = source_files(tests)
    files = [f for f in files if os.path.basename(f).startswith("test_")]
    own = f"test_{os.path.basename(source)}"
    return sorted(files, key=lambda f: os.path.basename(f) != own)


def _skipped(tree, text):
    """
    What not to mutate: the lines marked ``# pragma: no mutate``, and the nodes of ``__all__``,
    of ``if TYPE_CHECKING:`` blocks and of annotations (their ids).
    """
    lines = {i + 1 for i, line in enumerate(text.splitlines()) if "pragma: no mutate" in line}
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            roots.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            roots.append(node)
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            roots.append(node.returns)
    nodes = {id(n) for root in roots for n in ast.walk(root)}
    return lines, nodes


def mutations(node):
    """The one-operator mutations of ``node``: a list of (field, position, description)."""
    found = []
    if isinstance(node, ast.Compare):
        for j, op in enumerate(node.ops):
            if type(op) in COMPARE:
                found.append(("ops", j, f"{SYMBOL[type(op)]} -> {SYMBOL[COMPARE[type(op)]]}"))
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in ARITHMETIC:
        eq = "=" if isinstance(node, ast.AugAssign) else ""
        found.append(("op", None, f"{SYMBOL[type(node.op)]}{eq} -> {SYMBOL[ARITHMETIC[type(node.op)]]}{eq}"))
    elif isinstance(node, ast.BoolOp):
        found.append(("op", None, f"{SYMBOL[type(node.op)]} -> {SYMBOL[BOOLEAN[type(node.op)]]}"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        found.append(("not", None, "not x -> x"))
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            found.append(("value", None, f"{node.value} -> {not node.value}"))
        elif isinstance(node.value, int | float) and node.value in (0, 1):
            found.append(("value", None, f"{node.value!r} -> {type(node.value)(1 - node.value)!r}"))
    return found


def _source(path, text=None):
    """``text``, or the text of the file ``path`` (relative to the root)."""
    if text is None:
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
    return text


def enumerate_mutants(path, text=None):
    """Every mutant of the file ``path`` (relative to the root; or of the source ``text``), as dicts."""
    text = _source(path, text)
    tree = ast.parse(text)
    skipped_lines, skipped_nodes = _skipped(tree, text)
    lines = text.splitlines()
    mutants = []
    for index, node in enumerate(ast.walk(tree)):
        if not hasattr(node, "lineno") or node.lineno in skipped_lines or id(node) in skipped_nodes:
            continue
        for field, position, change in mutations(node):
            mutants.append(
                {
                    "file": path,
                    "line": node.lineno,
                    "col": node.col_offset,
                    "change": change,
                    "code": lines[node.lineno - 1].strip()[:120],
                    "node": index,
                    "field": field,
                    "position": position,
                }
            )
    return mutants


def mutate(path, mutant, text=None):
    """The compiled code of ``path`` (or of the source ``text``) with ``mutant`` applied."""
    return compile(mutated_tree(path, mutant, text), os.path.join(ROOT, path), "exec")


def mutated_tree(path, mutant, text=None):
    """The ``ast`` of ``path`` (or of the source ``text``) with ``mutant`` applied."""
    tree = ast.parse(_source(path, text))
    nodes = list(ast.walk(tree))
    node = nodes[mutant["node"]]
    field, position = mutant["field"], mutant["position"]
    if field == "ops":
        node.ops[position] = COMPARE[type(node.ops[position])]()
    elif field == "op":
        table = BOOLEAN if isinstance(node, ast.BoolOp) else ARITHMETIC
        node.op = table[type(node.op)]()
    elif field == "value":
        node.value = (not node.value) if isinstance(node.value, bool) else type(node.value)(1 - node.value)
    elif field == "not":
        _replace(nodes, node, copy.deepcopy(node.operand))
    return ast.fix_missing_locations(tree)


def _replace(nodes, old, new):
    """Put ``new`` where ``old`` is in its parent."""
    for parent in nodes:
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                value[[v is old for v in value].index(True)] = new
                return
    raise ValueError("no parent")


def module_name(path):
    """``tensorbayes/infer/elbo.py`` -> ``tensorbayes.infer.elbo`` (a package's ``__init__.py``: the package)."""
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Loader(importlib.machinery.SourceFileLoader):
    """Loads the module from the given code object instead of its file."""

    def __init__(self, name, path, code):
        super().__init__(name, path)
        self.code = code

    def get_code(self, fullname):
        return self.code


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the mutated module (and only it) with a :class:`_Loader` of its mutated code."""

    def __init__(self, name, path, code):
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        package = [os.path.dirname(self.path)] if self.path.endswith("__init__.py") else None
        loader = _Loader(fullname, self.path, self.code)
        return importlib.util.spec_from_file_location(
            fullname, self.path, loader=loader, submodule_search_locations=package
        )


def run_tests(tests, timeout, threads=1, name=None, path=None, code=None):
    """
    Run pytest on ``tests`` in a forked process (``code`` in place of module ``name``'s when given);
    returns (status, seconds): ``passed``, ``failed``, ``timeout`` or ``error`` (pytest's usage
    error or no tests).
    """
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        rc = 70
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest
            import torch

            torch.set_num_threads(threads)
            if code is not None:
                sys.meta_path.insert(0, _Finder(name, os.path.join(ROOT, path), code))
            os.chdir(ROOT)
            rc = int(pytest.main([*PYTEST_ARGS, *tests]))
        finally:
            os._exit(rc)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - start
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc == 0:
        return "passed", seconds
    if rc in (1, 2, 3) or rc < 0:  # tests failed, collection failed, internal error, a crash
        return "failed", seconds
    return "error", seconds


def run_module(module, sample, seed, threads, only=None, log=print):
    """
    Run a sample of ``module``'s mutants (with ``only``, a set of ``path:line``: all the mutants
    of those lines instead); returns (summary, mutants).
    """
    sources, tests = MODULES[module]
    everything = [m for path in source_files(sources) for m in enumerate_mutants(path)]
    if only is not None:
        chosen = [m for m in everything if f"{m['file']}:{m['line']}" in only]
    elif not sample or sample >= len(everything):
        chosen = everything
    else:
        chosen = random.Random(seed).sample(everything, sample)
    chosen.sort(key=lambda m: (m["file"], m["line"], m["col"], m["change"]))
    baselines = {}
    for mutant in chosen:
        order = test_files(mutant["file"], tests)
        key = tuple(order)
        if key not in baselines:
            status, seconds = run_tests(order, timeout=600, threads=threads)
            if status != "passed":
                raise SystemExit(f"{module}: the unmutated tests do not pass ({status}): {' '.join(order)}")
            baselines[key] = seconds
            log(f"{module}: unmutated tests pass in {seconds:.1f} s ({order[0]} first)")
        try:
            code = mutate(mutant["file"], mutant)
        except (SyntaxError, ValueError) as e:
            mutant.update(status="error", seconds=0.0, why=str(e))
            continue
        status, seconds = run_tests(
            order, 2 * baselines[key] + 10, threads, module_name(mutant["file"]), mutant["file"], code
        )
        status = {"passed": "survived", "failed": "killed"}.get(status, status)
        mutant.update(status=status, seconds=round(seconds, 2))
        for k in ("node", "field", "position"):
            mutant.pop(k)
        log(f"  {status:8} {mutant['file']}:{mutant['line']}  {mutant['change']}  ({seconds:.1f} s)  {mutant['code']}")
    summary = {"mutants": len(everything), "run": len(chosen), **count(chosen), "tests": tests}
    return summary, chosen


def count(mutants):
    """Killed, survived, timeout, error and the score of ``mutants``."""
    counts = {s: sum(m["status"] == s for m in mutants) for s in ("killed", "survived", "timeout", "error")}
    run = len(mutants) - counts["error"]
    counts["score"] = round((counts["killed"] + counts["timeout"]) / run, 4) if run else None
    return counts


def markdown(result):
    """The table per module and the surviving mutants."""
    c = result["config"]
    if c.get("only"):
        what = f"Every mutant of the lines {', '.join(c['only'])}"
    elif c["sample"]:
        what = f"A fixed-seed sample (seed {c['seed']}) of {c['sample']} mutants per module"
    else:
        what = "Every mutant"
    rows = [
        "# Mutation testing of the core modules",
        "",
        f"{what} (of {c['mutants_total']} in all); tests `pytest {' '.join(PYTEST_ARGS)}` on the module's "
        f"tests; {c['seconds']:.0f} s on {c['threads']} thread(s). Score = (killed + timeout) / (run - error).",
        "",
        "    " + c["command"],
        "",
        "| module | mutants (all) | run | killed | survived | timeout | error | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in list(result["modules"].items()) + [("**all**", result["overall"])]:
        score = "-" if s["score"] is None else f"{100 * s['score']:.1f} %"
        rows.append(
            f"| {name} | {s['mutants']} | {s['run']} | {s['killed']} | {s['survived']} | {s['timeout']} "
            f"| {s['error']} | {score} |"
        )
    survivors = [m for m in result["mutant_list"] if m["status"] == "survived"]
    rows += ["", f"## Surviving mutants ({len(survivors)})", ""]
    if survivors:
        rows += ["| file:line | change | code | why left |", "|---|---|---|---|"]
        for m in survivors:
            code = m["code"].replace("|", "\\|")
            note = NOTES.get((m["file"], m["code"], m["change"]), "")
            rows.append(f"| {m['file']}:{m['line']} | `{m['change']}` | `{code}` | {note} |")
    return "\n".join(rows) + "\n"


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES), help="default: all")
    p.add_argument(
        "--sample", type=nonnegative_int, default=40, help="mutants per module, 0 for all (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default %(default)s)")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="PATH:LINE",
        help="run every mutant of these lines instead of a sample (writes mutation_only.*)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.sample = 3
    # imported once here, so that each forked run of the tests starts with them loaded
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import opt_einsum  # noqa: F401
    import pyro  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401

    assert not any(m == "tensorbayes" or m.startswith("tensorbayes.") for m in sys.modules), "imported too early"
    start = time.perf_counter()
    modules, mutants = {}, []
    for module in args.modules:
        only = None if args.only is None else set(args.only)
        summary, chosen = run_module(module, args.sample, args.seed, args.threads, only)
        modules[module] = summary
        mutants += [{"module": module, **m} for m in chosen]
        print(f"{module}: {summary}", flush=True)
    overall = {"mutants": sum(s["mutants"] for s in modules.values()), "run": len(mutants), **count(mutants)}
    options = [f"--modules {' '.join(args.modules)}", f"--sample {args.sample}", f"--seed {args.seed}"]
    if args.only:
        options.append(f"--only {' '.join(args.only)}")
    command = "python -m benchmarks.mutation " + " ".join(options)
    result = {
        "config": {
            "sample": args.sample,
            "seed": args.seed,
            "threads": args.threads,
            "mutants_total": overall["mutants"],
            "seconds": time.perf_counter() - start,
            "command": command,
            "only": args.only,
            "pytest": PYTEST_ARGS,
        },
        "modules": modules,
        "overall": overall,
        "mutant_list": mutants,
    }
    name = "mutation_only" if args.only else "mutation_smoke" if args.smoke else "mutation"
    write_results(args.out, name, result, markdown(result))


if __name__ == "__main__":
    main()
