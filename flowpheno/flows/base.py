"""The flow interface (:class:`LatentFlow`), a tabular flow as a zuko lazy transform
(:class:`TabularFlow`), ActNorm and the config that rebuilds it."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Transform
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.lazy import LazyComposedTransform, LazyTransform, UnconditionalTransform
from zuko.transforms import DependentTransform, MonotonicAffineTransform

from flowpheno.errors import FlowphenoError

ACTNORM_SLOPE = 1e-3
"""Smallest scale of an ActNorm layer; zuko bounds ``|log scale| < -log(slope)``."""

FLOW_KINDS = ("affine_coupling", "spline_coupling")
"""Flows that :func:`build_flow` rebuilds from a saved config."""

ACTNORM_FORMULA = "y = exp(a / (1 + |a| / B)) x + b, B = -log(slope) (zuko MonotonicAffineTransform)"
COUPLING_FORMULA = (
    "x_b -> exp(bounded log-scale) x_b + shift from MLP(x_a), SiLU "
    "(zuko GeneralCouplingTransform, MonotonicAffineTransform)"
)


class ActNorm(LazyTransform):
    """Per-feature affine ``y = exp(a) x + b`` initialised from data to zero mean, unit variance."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features))
        self.scale = nn.Parameter(torch.zeros(features))

    def forward(self, c: Tensor | None = None) -> Transform:
        return DependentTransform(MonotonicAffineTransform(self.shift, self.scale, slope=ACTNORM_SLOPE), 1)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``a = -log std(x)`` and ``b = -mean(x) exp(a)`` (inverting zuko's bound)."""
        bound = -math.log(ACTNORM_SLOPE)
        log_scale = -torch.log(x.std(dim=0).clamp_min(1e-6)).clamp(-0.9 * bound, 0.9 * bound)
        self.scale.copy_(log_scale / (1 - log_scale.abs() / bound))
        self.shift.copy_(-x.mean(dim=0) * torch.exp(log_scale))


class LatentFlow(nn.Module, ABC):
    """The flow interface the training schedules are written against: ``g = f^-1`` mapping
    data rows to latent rows, one row at a time (rows never mix), with ``log |det J_g(x)|``
    per row. Implemented by :class:`TabularFlow` (traits) and
    :class:`flowpheno.flows.glow.GlowFlow` (images).

    A flow's initial weights are a function of its ``config`` alone (its ``seed`` included),
    never of the global random state: building one neither reads nor changes
    ``torch``'s global generator (:func:`seeded_init`).
    """

    config: dict[str, Any]
    """The architecture and seed (JSON-serialisable), as saved next to the weights."""

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latent ``z = g(x)`` (``(b, D)``) and ``log |det J_g(x_i)|`` (``(b,)``, nats) for rows ``x``: ``(b, D)``."""

    @abstractmethod
    def inverse(self, z: Tensor) -> Tensor:
        """Data ``x = f(z)`` (``(b, D)``) for latent rows ``z``: ``(b, D)``."""

    @abstractmethod
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation (ActNorm layers) from rows ``x``: ``(b, D)``."""

    @property
    def can_rescale_latent(self) -> bool:
        """Whether :meth:`rescale_latent` works (``profile_scale``'s automatic default asks)."""
        return False

    def rescale_latent(self, factor: Tensor) -> None:
        """Multiply latent feature ``j`` by ``factor[j]`` (``(D,)``, > 0) exactly, adding
        ``sum log factor`` to every row's log-det (``profile_scale`` of alternating training).

        Raises:
            FlowphenoError: the flow cannot rescale its latent.
        """
        raise FlowphenoError(f"{type(self).__name__} cannot rescale its latent (profile_scale)")


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the body with ``torch``'s global CPU generator seeded with ``seed``, and restore the
    caller's random state on exit: module constructors that draw their initial weights from it
    (``nn.Linear``, ``nn.Conv2d``) draw the same weights for the same ``seed``, exactly those of
    ``torch.manual_seed(seed)`` followed by the same constructors."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


class TabularFlow(LatentFlow):
    """A :class:`LatentFlow` of zuko lazy transforms, for ``D`` traits.

    Args:
        layers: the transforms, data side first.
        config: what :func:`build_flow` needs to rebuild the same architecture from saved
            weights (no pickled code): ``kind`` (one of :data:`FLOW_KINDS`) and the builder's
            arguments.
    """

    def __init__(self, layers: list[LazyTransform], config: dict[str, Any]) -> None:
        super().__init__()
        self.transform = LazyComposedTransform(*layers)
        self.config = config

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform().call_and_ladj(x)

    def inverse(self, z: Tensor) -> Tensor:
        return self.transform().inv(z)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation of every ActNorm layer, in order."""
        for layer in self.transform.transforms:
            if isinstance(layer, ActNorm):
                layer.initialize(x)
            x = layer()(x)

    @property
    def can_rescale_latent(self) -> bool:
        return isinstance(self.transform.transforms[-1], ActNorm)

    @torch.no_grad()
    def rescale_latent(self, factor: Tensor) -> None:
        """Multiply every latent feature by ``factor`` (per feature), folded into the final
        ActNorm: ``z -> factor * z`` exactly, and ``log |det J|`` grows by ``sum log factor``."""
        last = self.transform.transforms[-1]
        if not isinstance(last, ActNorm):
            raise FlowphenoError("rescale_latent needs a flow that ends with an ActNorm layer")
        bound = -math.log(ACTNORM_SLOPE)
        log_scale = last.scale / (1 + last.scale.abs() / bound)  # zuko's bounded log-scale
        new_log_scale = (log_scale + torch.log(factor.to(log_scale))).clamp(-0.99 * bound, 0.99 * bound)
        last.scale.copy_(new_log_scale / (1 - new_log_scale.abs() / bound))
        last.shift.mul_(torch.exp(new_log_scale - log_scale))


def _layer_name(layer: nn.Module) -> str:
    if isinstance(layer, UnconditionalTransform):
        return getattr(layer.f, "__name__", type(layer.f).__name__)
    if isinstance(layer, GeneralCouplingTransform):  # IndexedCoupling: the same transform and weights
        return "GeneralCouplingTransform"
    return type(layer).__name__


def flow_constants(flow: TabularFlow) -> dict[str, Any]:
    """The constants that give a flow's saved weights their meaning: ActNorm's bound and
    formula, the coupling formula, the layer order, the fixed permutations (one list
    per permutation layer, in order) and the library versions."""
    from importlib import metadata

    layers = list(flow.transform.transforms)
    permutations = [layer.forward().order.tolist() for layer in layers if _layer_name(layer) == "PermutationTransform"]
    versions = {}
    for name in ("zuko", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "actnorm_slope": ACTNORM_SLOPE,
        "actnorm_formula": ACTNORM_FORMULA,
        "coupling_formula": COUPLING_FORMULA,
        "layer_order": [_layer_name(layer) for layer in layers],
        "permutations": permutations,
        **versions,
    }


def zero_last_layers(layers: list[LazyTransform]) -> None:
    """Zero the output layer of every conditioner, so the flow starts as the identity
    (after ActNorm): training begins from the standardised data, not from a random
    map that can throw outlying rows far out."""
    for layer in layers:
        hyper = getattr(layer, "hyper", None)
        if hyper is not None:
            last = [m for m in hyper.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)


def build_flow(config: dict[str, Any]) -> TabularFlow:
    """Rebuild a tabular flow from its ``config`` (as saved next to the weights); the same
    ``config`` gives the same initial weights.

    Raises:
        KeyError: ``config["kind"]`` is not one of :data:`FLOW_KINDS`.
    """
    from flowpheno.flows.coupling import affine_coupling_flow
    from flowpheno.flows.spline import spline_coupling_flow

    builders = {"affine_coupling": affine_coupling_flow, "spline_coupling": spline_coupling_flow}
    assert set(builders) == set(FLOW_KINDS)
    options = {key: value for key, value in config.items() if key != "kind"}
    return builders[config["kind"]](**options)
