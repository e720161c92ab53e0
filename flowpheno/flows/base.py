"""A flow as a zuko lazy transform, plus ActNorm and the config that rebuilds it."""

from __future__ import annotations

import math
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
COUPLING_FORMULA = "x_b -> exp(bounded log-scale) x_b + shift from MLP(x_a), SiLU (zuko GeneralCouplingTransform, MonotonicAffineTransform)"


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


class LatentFlow(nn.Module):
    """``g = f^-1`` mapping data rows to latent rows, with ``log |det J_g(x)|`` per row.

    ``config`` holds what :func:`build_flow` needs to rebuild the same architecture
    from saved weights (no pickled code).
    """

    def __init__(self, layers: list[LazyTransform], config: dict[str, Any]) -> None:
        super().__init__()
        self.transform = LazyComposedTransform(*layers)
        self.config = config

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latent ``z = g(x)`` and ``log |det J_g(x)|`` (one value per row)."""
        return self.transform().call_and_ladj(x)

    def inverse(self, z: Tensor) -> Tensor:
        """Data ``x = f(z)``."""
        return self.transform().inv(z)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation of every ActNorm layer, in order."""
        for layer in self.transform.transforms:
            if isinstance(layer, ActNorm):
                layer.initialize(x)
            x = layer()(x)

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


def flow_constants(flow: LatentFlow) -> dict[str, Any]:
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


def build_flow(config: dict[str, Any]) -> LatentFlow:
    """Rebuild a flow from its ``config`` (as saved next to the weights)."""
    from flowpheno.flows.coupling import affine_coupling_flow
    from flowpheno.flows.spline import spline_coupling_flow

    builders = {"affine_coupling": affine_coupling_flow, "spline_coupling": spline_coupling_flow}
    assert set(builders) == set(FLOW_KINDS)
    options = {key: value for key, value in config.items() if key != "kind"}
    return builders[config["kind"]](**options)
