"""Small helpers every layer may use: where a module's tensors live, and moving a batch there."""

import itertools

import torch

__all__ = ["module_device", "to_device"]


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
