"""
Checkpoints of :func:`~tensorbayes.fit`: written atomically after every epoch, checked against the
model and guide before anything is restored, and restored into a model pruned since (the model
is shrunk to the checkpoint's ranks first).
"""

from __future__ import annotations

import os
import tempfile

import pyro
import torch
from pyro.infer.autoguide import AutoGuide

from ..guides.base import as_tensor_guide
from ..models.tensor import low_rank_tensors

__all__ = ["check_file_path", "load", "load_checkpoint", "save", "save_checkpoint"]


def save_checkpoint(path, model, guide, optimizer, history, step, epoch, generator, initialized):
    """
    Write a :func:`~tensorbayes.fit` checkpoint atomically: to a temporary file in the same
    folder, then rename over ``path``, so that a crash never leaves it half-written.
    """
    state = {
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ranks": {name: t.layout.ranks for name, t in low_rank_tensors(model).items()},
        "history": history,
        "step": step,
        "epoch": epoch,
        "generator": generator.get_state(),
        "rng": pyro.util.get_rng_state(),
        "initialized": initialized,
    }
    _write_atomically(state, path, ".checkpoint-")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, guide, map_location=None) -> dict:
    """
    Restore model and guide from a :func:`~tensorbayes.fit` checkpoint, shrinking them first to
    its pruned ranks; returns the checkpoint's state (optimizer, history, step, random states).
    Raises a :class:`ValueError` naming the first mismatch, before anything changes.

    ``map_location`` is :func:`torch.load`'s (``None``: each tensor where it was saved), except
    that a device (a :class:`torch.device` or a str such as ``"cpu"``) takes only the tensors saved
    on an accelerator: those saved on the CPU stay there (the random states, which must be CPU
    tensors, and the optimizer's step counts, which torch keeps on the CPU), so that a checkpoint
    written on a GPU resumes on a machine without one, and one written anywhere resumes on a GPU.
    """
    if isinstance(map_location, (str, torch.device)):
        map_location = _accelerator_tensors_onto(map_location)
    try:
        state = torch.load(path, weights_only=False, map_location=map_location)
    except Exception as error:
        raise ValueError(f"checkpoint {path!r} cannot be read: {error}") from error
    _check_checkpoint_fits(path, state, model, guide)  # before anything changes
    shrink_to_ranks(model, guide, state["ranks"])
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    return state


def _accelerator_tensors_onto(device):
    """A :func:`torch.load` ``map_location`` that reads the storages saved on an accelerator onto
    ``device`` and leaves those saved on the CPU there."""
    device = str(torch.device(device))

    def restore(storage, location):  # storage: read onto the CPU; location: where it was saved
        return storage if location == "cpu" else torch.serialization.default_restore_location(storage, device)

    return restore


def shrink_to_ranks(model, guide, ranks):
    """Cut the low-rank tensors of ``model`` (and their guide's parameters) to ``ranks``, ``{tensor
    name: ranks}`` as a checkpoint saved them, so that the checkpoint's state loads into them."""
    for name, tensor in low_rank_tensors(model).items():
        target = ranks.get(name)
        if target is not None and tuple(target) != tensor.layout.ranks:
            keep = [torch.arange(r, device=tensor.device) for r in target]
            as_tensor_guide(model, guide).truncate(tensor, keep)
            tensor.set_layout(tensor.layout.with_ranks(target))


def _describe(tensor):
    layout = tensor.layout
    return (
        f"a {layout.name} tensor of shape {layout.shape} with {layout.num_bonds} "
        f"bond{'s' if layout.num_bonds != 1 else ''} at ranks {layout.ranks}"
    )


def _listed_shapes(shapes):
    return ", ".join(f"{key} {tuple(shape)}" for key, shape in list(shapes.items())[:4]) + (
        f" and {len(shapes) - 4} more" if len(shapes) > 4 else ""
    )


def _guide_path(guide, model):
    """Where the tensor guide sits inside ``guide`` (``"0._guide."`` inside an AutoGuideList), as a
    prefix of ``guide.state_dict()``'s keys."""
    inner = as_tensor_guide(model, guide)
    for path, module in guide.named_modules():
        if module is inner:
            return f"{path}." if path else ""
    return ""


def _site_of(key, prefix, sites, kinds=("locs", "scales")):
    """The sample site among ``sites`` whose parameter the guide's state key ``key`` holds, named as
    Pyro's autoguides name them (``<prefix>locs.<site>_unconstrained``, or ``scales``), or ``None``."""
    stem = key.removesuffix("_unconstrained")
    for kind in kinds:
        head = f"{prefix}{kind}."
        if stem.startswith(head) and stem[len(head) :] in sites:
            return stem[len(head) :]
    return None


def _check_checkpoint_fits(path, state, model, guide):
    """
    Raise a :class:`ValueError` naming the first mismatch between the checkpoint ``state``
    and the model and guide (a tensor of another format, shape or ranks; another network),
    before either is changed. A checkpoint may hold lower ranks than the model (pruned): the
    model is shrunk to them; it may not hold more bonds, other bonds or higher ranks.
    """
    fields = ("model", "guide", "ranks")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), dict) for k in fields):
        raise ValueError(f"checkpoint {path!r} is not a tb.fit checkpoint: it lacks {', '.join(fields)}")
    fits = f"checkpoint {path!r} does not fit this model"
    tensors, saved = low_rank_tensors(model), state["ranks"]
    extra = sorted(set(saved) - set(tensors))
    missing = sorted(set(tensors) - set(saved))
    if extra or missing:
        raise ValueError(
            f"{fits}: the checkpoint holds low-rank tensors {sorted(saved)}, the model "
            f"{sorted(tensors)} (missing from the checkpoint: {missing}, not in the model: {extra})"
        )
    expected_guide = {key: tuple(value.shape) for key, value in guide.state_dict().items() if torch.is_tensor(value)}
    for name, tensor in tensors.items():
        ranks = tuple(int(r) for r in saved[name])
        layout = tensor.layout
        if len(ranks) != layout.num_bonds:
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint holds {len(ranks)} bond"
                f"{'s' if len(ranks) != 1 else ''} at ranks {ranks}, the model {_describe(tensor)}"
            )
        if any(r < 1 or r > m for r, m in zip(ranks, layout.ranks)):
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint holds ranks {ranks}, the model "
                f"{_describe(tensor)} (a model is shrunk to a checkpoint's ranks, never grown)"
            )
        sites = {tensor.factor_site(k): shape for k, shape in enumerate(layout.with_ranks(ranks).factor_shapes)}
        sites.update({tensor.lambda_site(b): (r,) for b, r in enumerate(ranks)})
        prefix = _guide_path(guide, model)
        for key in expected_guide:
            site = _site_of(key, prefix, sites)
            if site is not None:
                expected_guide[key] = sites[site]
        factor_sites = [tensor.factor_site(k) for k in range(len(layout.factor_shapes))]
        factors = {k: tuple(v.shape) for k, v in state["guide"].items() if _site_of(k, prefix, factor_sites, ["locs"])}
        wanted = {k: v for k, v in expected_guide.items() if _site_of(k, prefix, factor_sites, ["locs"])}
        if factors != wanted:
            raise ValueError(
                f"{fits}: tensor {name!r}: the checkpoint's factors are {_listed_shapes(factors)}; "
                f"the model's, {_describe(tensor)} shrunk to the checkpoint's ranks {ranks}, "
                f"would be {_listed_shapes(wanted)}"
            )
    for what, expected in (
        ("model", {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}),
        ("guide", expected_guide),
    ):
        found = {k: tuple(v.shape) for k, v in state[what].items() if torch.is_tensor(v)}
        if set(found) != set(expected) or any(found[k] != expected[k] for k in expected):
            only_saved = {k: found[k] for k in sorted(set(found) - set(expected))}
            only_here = {k: expected[k] for k in sorted(set(expected) - set(found))}
            differ = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
            parts = (
                [f"{k}: the checkpoint's {found[k]}, the {what}'s {expected[k]}" for k in differ[:4]]
                + ([f"only in the checkpoint: {_listed_shapes(only_saved)}"] if only_saved else [])
                + ([f"only in the {what}: {_listed_shapes(only_here)}"] if only_here else [])
            )
            raise ValueError(f"{fits}: the {what}'s state differs: " + "; ".join(parts))


def save(path: str | os.PathLike, model: torch.nn.Module, guide) -> None:
    """
    Save a model and its guide, pruned or not, to ``path``: their states and the ranks of every
    low-rank tensor. :func:`load` restores them into a model and guide built as the originals
    were (at their maximum ranks), shrinking them to the saved ranks first. A path that is a
    folder or lies in no folder, arguments out of order or a guide of another model raise a
    :class:`TypeError` or :class:`ValueError` before anything is written.

    Usage::

        tb.save("net.pt", model, guide)
        model2, guide2 = build()                 # the same constructor calls as the original
        tb.load("net.pt", model2, guide2)
    """
    _check_model_and_guide(model, guide)
    check_file_path(path)
    state = {
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "ranks": {name: t.layout.ranks for name, t in low_rank_tensors(model).items()},
    }
    _write_atomically(state, path, ".tensorbayes-")


def _write_atomically(state, path, prefix):
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str | os.PathLike, model: torch.nn.Module, guide) -> None:
    """Restore what :func:`save` (or :func:`~tensorbayes.fit`'s checkpoint) wrote into ``model`` and
    ``guide``, shrinking them to its ranks first; a mismatch raises a :class:`ValueError` naming it
    before anything changes. The file is read onto the CPU and copied into the model's and guide's
    tensors where they are, so that a model saved on a GPU loads on a machine without one."""
    if not isinstance(path, (str, os.PathLike)) and not callable(getattr(path, "read", None)):
        raise TypeError(f"path must be a file path (a str or os.PathLike), got {type(path).__name__}")
    _check_model_and_guide(model, guide)
    load_checkpoint(path, model, guide, map_location="cpu")


def _check_model_and_guide(model, guide):
    """Raise a :class:`TypeError` unless ``model`` and ``guide`` are modules, the model first (a
    :class:`ValueError` for a guide of another model), before :func:`save` or :func:`load` starts."""
    for value, name in ((model, "model"), (guide, "guide")):
        if not isinstance(value, torch.nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module (a model, or its guide), got {type(value).__name__}")
    if isinstance(model, AutoGuide):
        raise TypeError(f"model must be the model, got a guide ({type(model).__name__}): pass (path, model, guide)")
    if low_rank_tensors(model):
        as_tensor_guide(model, guide)


def check_file_path(path, name="path"):
    """Raise, naming the argument ``name``, unless a file can be written at ``path``: a str or
    os.PathLike, not a folder, in a folder that exists (what :func:`save` and :func:`~tensorbayes.fit`'s
    ``checkpoint`` check before anything changes)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (a str or os.PathLike), got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"{name} must be a file path, got the folder {os.fspath(path)!r} (e.g. give folder/model.pt)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{name} {os.fspath(path)!r} is in a folder that does not exist: {folder!r}")
