"""Small helpers every layer may use: where a module's tensors live, moving a batch there, and
running modules in evaluation mode."""

import itertools
from contextlib import contextmanager

import torch

__all__ = ["evaluating", "module_device", "to_device"]


def module_device(*modules):
    """The device of the first parameter or buffer of ``modules`` (the CPU if they hold none)."""
    for module in modules:
        if not isinstance(module, torch.nn.Module):  # a guide written as a function
            continue
        for t in itertools.chain(module.parameters(), module.buffers()):
            return t.device
    return torch.device("cpu")


def to_device(batch, device):
    """The items of a batch with its tensors on ``device`` (those already there, and items that
    are not tensors, unchanged)."""
    return tuple(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)


@contextmanager
def evaluating(*modules):
    """
    Run ``modules`` (those that are :class:`torch.nn.Module`; a guide may be a function) in
    evaluation mode, as ``module.eval()`` would, and give every submodule its own mode back
    afterwards: dropout off and batch norm on its running statistics while held-out data are
    scored, without the scoring moving those statistics.

    Usage::

        with evaluating(model, guide):
            scores = model(x_val)
    """
    held = [m for m in modules if isinstance(m, torch.nn.Module)]
    modes = [(m, m.training) for module in held for m in module.modules()]
    try:
        for module in held:
            module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
