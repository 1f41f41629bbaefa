"""
What the benchmark scripts share: the usual command-line options, the folder their results go
to, writing a result as JSON and Markdown, peak memory and timing.

Each script is run from the repository root as a module (``python -m benchmarks.layers``), so
that ``benchmarks`` and ``tensorbayes`` import with no edit of the import path.
"""

import argparse
import json
import os
import resource
import time
from contextlib import contextmanager

import torch

#: Where the benchmarks write their results by default: ``benchmarks/results/``.
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2 (the usage is in ``--help``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text):
    """An option's value as an int of at least 1 (argparse names the option when it is not)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def nonnegative_int(text):
    """An option's value as an int of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}")
    return value


def positive_float(text):
    """An option's value as a finite positive float."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def device_type(text):
    """An option's value as a :class:`torch.device` (torch's RuntimeError for a bad name would
    escape argparse as a traceback)."""
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be a device such as cpu, cuda or cuda:1, got {text!r}") from None


def parser(doc, threads=1, device=False, out=RESULTS):
    """
    A :class:`Parser` described by the first paragraph of ``doc`` (a script's docstring), with
    ``--threads`` (default ``threads``), ``--out`` (default ``out``), ``--smoke`` (tiny sizes) and,
    with ``device=True``, ``--device`` (``cpu`` or ``cuda``, checked by :func:`check_device`).
    """
    p = Parser(description=doc.strip().split("\n\n")[0])
    p.add_argument("--threads", type=positive_int, default=threads, help="torch threads (default %(default)s)")
    p.add_argument("--out", default=out, help="folder of the JSON and Markdown results (default %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    if device:
        p.add_argument(
            "--device",
            type=device_type,
            default=torch.device("cpu"),
            help="where the models run: cpu (default) or cuda",
        )
    return p


def check_device(p, device):
    """Stop with ``p``'s usage error when ``device`` is a CUDA device and torch sees none."""
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {device} needs a CUDA device, and torch sees none")


def write_results(out, name, result, text, indent=2, default=None):
    """Write ``result`` to ``out/name.json`` and ``text`` to ``out/name.md``, and print ``text``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=indent, default=default)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)


def peak_rss_gib():
    """The peak resident memory of this process so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_gpu_gib(device):
    """The peak GPU memory torch allocated so far (``None`` on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextmanager
def timer():
    """``with timer() as t: ...``; then ``t.seconds`` holds the wall-clock seconds the block took."""

    class Elapsed:
        seconds = 0.0

    elapsed, start = Elapsed(), time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.perf_counter() - start
