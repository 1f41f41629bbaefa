"""
What the SVI engine watches while it trains: parameters, gradients and losses that stop being
finite (:class:`NonFiniteError`, naming where the NaN began), and parameters whose gradients
stay exactly zero (:class:`DeadGradientWarning`).
"""

import math
import warnings

import pyro
import torch

__all__ = [
    "DEAD_GRADIENT_STEPS",
    "DeadGradientWarning",
    "DeadGradients",
    "NonFiniteError",
    "diagnose",
    "guide_parameters",
    "model_parameters",
]

#: Steps in a row with an exactly zero gradient, after nonzero ones, before the engine warns.
DEAD_GRADIENT_STEPS = 100


class NonFiniteError(FloatingPointError):
    """The ELBO or a gradient became NaN or infinite during training."""


class DeadGradientWarning(RuntimeWarning):
    """
    Parameters that had gradients got exactly zero ones for :data:`DEAD_GRADIENT_STEPS` steps in
    a row during training: the loss no longer depends on them, as after every unit of a ReLU
    layer went dark. A fit that goes on from there predicts without that part of the model (a
    classifier whose hidden units all died predicts a constant). Make it an error with
    ``warnings.simplefilter("error", tb.infer.DeadGradientWarning)``.

    :ivar list parameters: the parameters' names, ``"model.<name>"`` or ``"guide.<name>"``.
    """

    def __init__(self, message, parameters=()):
        super().__init__(message)
        self.parameters = list(parameters)


def guide_parameters(guide, model=None):
    """``(name, parameter)`` of a guide: a module's own, or for a guide written as a function the
    unconstrained parameters in Pyro's param store (a module model's left out)."""
    if isinstance(guide, torch.nn.Module):
        return list(guide.named_parameters())
    taken = {id(p) for p in model.parameters()} if isinstance(model, torch.nn.Module) else set()
    return [(name, p) for name, p in pyro.get_param_store().named_parameters() if id(p) not in taken]


def model_parameters(model, guide=None):
    """``(name, parameter)`` of a model: a module's own, or for a model written as a function the
    parameters in Pyro's param store that are not the guide's."""
    if isinstance(model, torch.nn.Module):
        return list(model.named_parameters())
    if not isinstance(guide, torch.nn.Module):
        return []  # two functions: the param store's parameters count as the guide's
    taken = {id(t) for t in [*guide.parameters(), *guide.buffers()]}  # a MeanField's λ: a buffer in the store
    return [(name, p) for name, p in pyro.get_param_store().named_parameters() if id(p) not in taken]


def named_parameters(model, guide):
    """``("guide" or "model", name, parameter)`` of every parameter, the guide's first."""
    return [("guide", name, p) for name, p in guide_parameters(guide, model)] + [
        ("model", name, p) for name, p in model_parameters(model, guide)
    ]


def non_finite_parameter(model, guide):
    """``(owner, name)`` of the first parameter holding NaN or infinite values, or ``None``."""
    for owner, name, p in named_parameters(model, guide):
        if not torch.isfinite(p).all():
            return owner, name
    return None


def check_finite_parameters(model, guide):
    """Raise :class:`NonFiniteError` naming a parameter that holds NaN or infinite values."""
    found = non_finite_parameter(model, guide)
    if found is not None:
        raise NonFiniteError(f"before fitting: {found[0]} parameter '{found[1]}' holds NaN or infinite values")


def gradients(model, guide):
    """``(owner, name, gradient)`` of every parameter that has one (a sparse one's values)."""
    grads = []
    for owner, name, p in named_parameters(model, guide):
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # once: SparseAdam's own coalesce then finds it done
        grads.append((owner, name, p.grad.values() if p.grad.is_sparse else p.grad))
    return grads


def read_norms(grads, *scalars):
    """The scalars (say the loss) and the 2-norms of ``grads``, read to the host together: one
    pass over each gradient and one read (a 2-norm is finite when every entry is; torch.isfinite
    would write a mask as large as the gradient, dear on a DLRM's tables)."""
    device = grads[0][2].device if grads else None
    parts = [torch.as_tensor(x, dtype=torch.float64, device=device).detach().reshape(1) for x in scalars]
    if grads:
        norms = torch.stack([n.double() for n in torch._foreach_norm([g.detach() for *_, g in grads])])
        parts.append(norms)
    values = torch.cat(parts).tolist() if parts else []
    return values[: len(scalars)], values[len(scalars) :]


def check_norms(grads, norms, step, epoch=None):
    """``{"model.<name>" or "guide.<name>": norm}``; stops with :class:`NonFiniteError` naming the
    first gradient that is not finite (a norm whose squares overflowed is told apart from a NaN
    or infinite entry by the exact check)."""
    if not all(math.isfinite(n) for n in norms):
        for owner, name, grad in grads:
            if not torch.isfinite(grad).all():
                raise NonFiniteError(f"gradient is not finite at {_where(step, epoch)}: {owner} parameter '{name}'")
    return {f"{owner}.{name}": norm for (owner, name, _), norm in zip(grads, norms)}


def _where(step, epoch):
    return f"step {step}" + ("" if epoch is None else f" (epoch {epoch})")


class DeadGradients:
    """
    Per parameter, the steps in a row whose gradient was exactly zero after a nonzero one; warns
    with :class:`DeadGradientWarning` when a run reaches :data:`DEAD_GRADIENT_STEPS`. A parameter
    that never had a gradient (one that only a KL term still off reaches) is not counted.
    """

    def __init__(self):
        self.zero_steps = {}  # parameters that had a nonzero gradient: steps at zero since

    def update(self, norms, step, epoch=None):
        for name, norm in norms.items():
            if norm != 0:
                self.zero_steps[name] = 0
            elif name in self.zero_steps:
                self.zero_steps[name] += 1
        dead = [name for name, steps in self.zero_steps.items() if steps == DEAD_GRADIENT_STEPS]
        if dead:
            message = (
                f"fit: at {_where(step, epoch)}, {len(dead)} parameter{'s' if len(dead) > 1 else ''} "
                f"had an exactly zero gradient for {DEAD_GRADIENT_STEPS} steps in a row, after nonzero "
                f"ones: {_listed(dead)}. The loss no longer depends on them (as when every unit of a ReLU "
                "layer has gone dark)"
            )
            warnings.warn(DeadGradientWarning(message, dead), stacklevel=4)


def _listed(names, most=4):
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


#: Where a model or guide holds float16 parameters, a NonFiniteError says why it likely happened.
_HALF_PRECISION_HINT = (
    "; the parameters are float16, whose largest value is 65504: the ELBO, scaled to the whole data set, "
    "likely overflowed it. Train in float32 or bfloat16 (Lightning: precision='32-true', 'bf16-true' or "
    "'bf16-mixed')"
)


def diagnose(model, guide, args, kwargs, step, epoch=None):
    """The message of a :class:`NonFiniteError`: the first parameter or sample site that is not finite
    (and, for float16 parameters, why float16 likely overflowed)."""
    message = _first_non_finite(model, guide, args, kwargs, f"at {_where(step, epoch)}")
    half = any(p.dtype == torch.float16 for *_, p in named_parameters(model, guide))
    return message + (_HALF_PRECISION_HINT if half else "")


def _first_non_finite(model, guide, args, kwargs, where):
    found = non_finite_parameter(model, guide)
    if found is not None:
        return f"ELBO is not finite {where}: {found[0]} parameter '{found[1]}' holds NaN or infinite values"
    with torch.no_grad():
        guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        for trace, owner in ((guide_trace, "guide"), (model_trace, "model")):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not torch.isfinite(site["value"]).all():
                    return f"ELBO is not finite {where}: the {owner}'s sample site '{name}' has a NaN or infinite value"
                log_p = site["fn"].log_prob(site["value"])
                if not torch.isfinite(log_p).all():
                    return f"ELBO is not finite {where}: the {owner}'s log density at site '{name}' is not finite"
    return f"ELBO is not finite {where}, though every parameter and site is finite (overflow in the loss)"
