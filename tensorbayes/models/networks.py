"""
Bayesian networks: a network with tensorized layers under a likelihood for its outputs.

:class:`BayesianClassifier` and :class:`BayesianRegressor` wrap a network whose large layers are
low-rank tensors with rank priors (a :class:`~pyro.nn.PyroModule`, such as
:func:`~.tensorize.tensorize` returns, or one built of :class:`~.layers.TensorizedLinear`,
:class:`~.layers.TensorizedConv2d` and :class:`~.layers.TensorizedEmbedding`) and observe the
data through it: labels under a Categorical likelihood on the network's logits, or targets
under a Normal likelihood around its output (docs/method.md, "Models"). As in
:class:`~.completion.TensorCompletion`, the data plate is subsampled, so that the likelihood of
a minibatch is scaled by ``num_data / batch`` and the ELBO is the full-data ELBO; both models
offer ``check_data``, which :func:`~tensorbayes.infer.fit` calls on the whole data set before
training.

The network's sample sites are named after its path in the model, ``"net.<layer>.weight.factor<k>"``;
its plain parameters (biases, small dense layers) are ``pyro.param`` point estimates.
"""

from numbers import Integral

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import get_plates

from .noise import NormalNoise
from .tensor import place_batch

__all__ = ["BayesianClassifier", "BayesianRegressor"]

_LABEL_DTYPES = (torch.int64, torch.int32)


def _check_net(net):
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(net, PyroModule):
        raise TypeError(
            f"net must be a pyro.nn.PyroModule (so that its sample sites are named after their path), got "
            f"{type(net).__name__}: convert a torch network with tb.models.tensorize(net), or build it as a "
            "PyroModule of tensorized layers"
        )
    return net


def _check_inputs(x):
    """``x`` as a tensor with a non-empty leading (example) dimension; finite if floating."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have a leading batch dimension of at least one example, got shape {tuple(x.shape)}")
    return x


def check_num_data(num_data, batch):
    if num_data is None:
        return batch
    if isinstance(num_data, bool) or not isinstance(num_data, Integral) or num_data < batch:
        raise ValueError(f"num_data must be an int at least the batch size ({batch}), or None, got {num_data!r}")
    return int(num_data)


def _check_finite(x, name):
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite: found NaN or infinite values")


class BayesianClassifier(PyroModule):
    """
    ``y[n] ~ Categorical(logits=net(x)[n])`` for a network ``net`` with low-rank tensorized
    layers under rank priors.

    Called without labels it samples them; either way it returns the class probabilities
    ``softmax(net(x))``, which :func:`~tensorbayes.infer.predict` averages over posterior draws.

    Usage::

        net = tb.models.tensorize(torch.nn.Sequential(torch.nn.Linear(784, 625), torch.nn.ReLU(),
                                                      torch.nn.Linear(625, 10)), format="ttm", max_rank=16)
        model = BayesianClassifier(net, num_classes=10)
        guide = tb.guides.MeanField(model)
        tb.fit(model, guide, (x_train, y_train), epochs=20, batch_size=256)
        probs, _ = tb.predict(model, guide, x_test)

    :param net: the network, a :class:`~pyro.nn.PyroModule` mapping inputs ``(batch, ...)`` to
        logits ``(batch, num_classes)``; it becomes the child module ``net``.
    :param int num_classes: the number of classes, at least 2.
    """

    #: :func:`tensorbayes.export` exports this child, the network (returning logits): the
    #: likelihood has no deterministic counterpart.
    export_child = "net"

    def __init__(self, net, num_classes):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
            raise ValueError(f"num_classes must be an int of at least 2, got {num_classes!r}")
        self.net = _check_net(net)
        self.num_classes = int(num_classes)

    def _check_labels(self, y, batch):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of class labels, got {type(y).__name__}")
        if y.dtype not in _LABEL_DTYPES:
            raise TypeError(f"y must be an integer tensor of class labels (int64 or int32), got dtype {y.dtype}")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},), one label per example of x, got {tuple(y.shape)}")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(
                f"y must hold class labels in [0, num_classes={self.num_classes}), "
                f"got values in [{int(y.min())}, {int(y.max())}]"
            )
        return y.long()

    def check_data(self, x, y=None):
        """Validate inputs (and labels); returns them as tensors (labels as int64)."""
        x = _check_inputs(torch.as_tensor(x))
        _check_finite(x, "x")
        if y is not None:
            y = self._check_labels(torch.as_tensor(y), x.shape[0])
        return x, y

    def forward(self, x, y=None, *, num_data=None):
        """
        :param torch.Tensor x: inputs, ``(batch, ...)``, as the network takes them.
        :param torch.Tensor y: labels ``(batch,)``, int64 (or int32) in ``[0, num_classes)``, or
            ``None`` to sample them.
        :param int num_data: the size of the whole data set this batch was drawn from
            (default: the batch itself); it scales the likelihood by ``num_data / batch``.
        :returns: the class probabilities ``softmax(net(x))``, ``(batch, num_classes)``, or
            ``(S, batch, num_classes)`` when the network's factors are drawn with ``S`` particles
            left of the data plate (``Predictive(parallel=True)``, ``vectorize_particles=True``:
            the network returns ``(S, 1, batch, num_classes)`` and the batch takes the data plate's dim).
        """
        x = _check_inputs(x)
        batch = x.shape[0]
        if y is not None:
            y = self._check_labels(y, batch)
        size = check_num_data(num_data, batch)
        logits = self.net(x)
        # (batch, classes), or (*lead, batch, classes) with leading particle dims (vectorized draws)
        if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[-2:] != (batch, self.num_classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"net(x) must return logits of shape ({batch}, num_classes={self.num_classes}) (or with leading "
                f"particle dims in front), got {got}"
            )
        plate = pyro.plate("data", size=size, subsample=torch.arange(batch, device=logits.device))
        with plate:
            logits = place_batch(logits, logits.dim() - 2, plate.dim)  # (S, 1, batch, C) -> (S, batch, C)
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return torch.softmax(logits, dim=-1)


class BayesianRegressor(PyroModule, NormalNoise):
    """
    ``y[n] ~ Normal(net(x)[n], noise)`` for a network ``net`` with low-rank tensorized layers
    under rank priors; a multi-output network's outputs are independent given ``x`` (one
    event of ``net(x)[n].numel()`` Normals per example).

    Usage::

        net = tb.models.tensorize(torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                                      torch.nn.Linear(256, 1)), format="tt", max_rank=8)
        model = BayesianRegressor(net)
        guide = tb.guides.MeanField(model)
        tb.fit(model, guide, (x_train, y_train), epochs=50, batch_size=256)   # y_train: (n, 1)

    :param net: the network, a :class:`~pyro.nn.PyroModule` mapping inputs ``(batch, ...)`` to
        outputs ``(batch, ...)``; it becomes the child module ``net``.
    :param noise: the noise standard deviation; ``None`` (default) learns it as a point
        estimate (the parameter ``log_noise``), a positive number fixes it.
    """

    #: :func:`tensorbayes.export` exports this child, the network (returning the mean): the
    #: likelihood has no deterministic counterpart.
    export_child = "net"

    def __init__(self, net, noise=None):
        super().__init__()
        self.net = _check_net(net)
        self._init_noise(noise)

    @staticmethod
    def _check_targets(y, batch):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of targets, got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"y must be a floating point tensor of targets, got dtype {y.dtype}")
        if y.dim() == 0 or y.shape[0] != batch:
            raise ValueError(
                f"y must have a leading dimension of {batch}, one target per example of x, got {tuple(y.shape)}"
            )
        return y

    def check_data(self, x, y=None):
        """Validate inputs (and targets); returns them as tensors."""
        x = _check_inputs(torch.as_tensor(x))
        _check_finite(x, "x")
        if y is not None:
            y = self._check_targets(torch.as_tensor(y), x.shape[0])
            _check_finite(y, "y")
        return x, y

    def forward(self, x, y=None, *, num_data=None):
        """
        :param torch.Tensor x: inputs, ``(batch, ...)``, as the network takes them.
        :param torch.Tensor y: targets shaped like ``net(x)``, floating point, or ``None`` to
            sample them.
        :param int num_data: the size of the whole data set this batch was drawn from
            (default: the batch itself); it scales the likelihood by ``num_data / batch``.
        :returns: the network's output ``net(x)`` (the noiseless mean).
        """
        x = _check_inputs(x)
        batch = x.shape[0]
        if y is not None:
            y = self._check_targets(y, batch)
        size = check_num_data(num_data, batch)
        mean = self.net(x)
        if not isinstance(mean, torch.Tensor) or mean.dim() == 0:
            got = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise ValueError(f"net(x) must return outputs of shape ({batch}, ...), got {got}")
        lead = _particle_ndim(mean, batch)
        if mean.shape[lead] != batch:
            raise ValueError(f"net(x) must return outputs of shape ({batch}, ...), got {tuple(mean.shape)}")
        if y is not None and y.shape != mean.shape[lead:]:
            raise ValueError(f"y must have the shape of net(x), {tuple(mean.shape[lead:])}, got {tuple(y.shape)}")
        event_dims = mean.dim() - lead - 1
        plate = pyro.plate("data", size=size, subsample=torch.arange(batch, device=mean.device))
        with plate:
            mean = place_batch(mean, lead, plate.dim)  # (S, 1, batch, ...) -> (S, batch, ...)
            pyro.sample("obs", self.likelihood(mean).to_event(event_dims), obs=y)
        return mean


def _particle_ndim(mean, batch):
    """
    How many leading (particle) dims the regressor's output ``mean`` carries in front of
    ``(batch, ...)``: those of the enclosing vectorized plates (Pyro's particle plate, left of the
    data plate) or fewer, the most that leave ``batch`` next; 0 for a plain draw.
    """
    n = max((-f.dim for f in get_plates() if f.vectorized and f.dim is not None), default=0)
    # the draws may carry fewer (Predictive(parallel=True) draws a plate-less guide at dim -1)
    return next((k for k in range(min(n, mean.dim() - 1), 0, -1) if mean.shape[k] == batch), 0)
