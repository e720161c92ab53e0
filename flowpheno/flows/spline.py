"""Rational-quadratic spline coupling flow (Durkan et al.) for the 2-D experiments."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.lazy import LazyTransform, UnconditionalTransform
from zuko.transforms import MonotonicRQSTransform, PermutationTransform

from flowpheno.flows.base import ActNorm, TabularFlow, seeded_init, zero_last_layers

SplineCoupling = Literal["autoregressive", "alternating"]


def alternating_mask(features: int, layer: int) -> torch.Tensor:
    """The conditioning features of coupling layer ``layer`` (``True``: kept, conditions the
    others): even features at even layers, odd ones at odd layers. For ``d = 2`` the layers
    transform ``x2 | x1``, ``x1 | x2``, ``x2 | x1``, ..."""
    return torch.arange(features) % 2 == layer % 2


def spline_coupling_flow(
    features: int = 2,
    layers: int = 3,
    hidden: int = 64,
    depth: int = 2,
    bins: int = 16,
    seed: int = 0,
    actnorm: bool = True,
    tail_bound: float = 5.0,
    coupling: SplineCoupling = "autoregressive",
) -> TabularFlow:
    """``layers`` spline couplings, between ActNorm layers (``actnorm=True``) or none.

    Splines live on ``[-tail_bound, tail_bound]`` and are the identity outside (linear
    tails); with ``actnorm`` the leading ActNorm standardises inputs (data-dependent
    initialisation, :meth:`TabularFlow.initialize`) so that the bound covers the data.

    ``coupling="autoregressive"``: each layer is a random fixed permutation, then zuko's
    two-pass masked autoregressive spline (the first half of the permuted features by an
    unconditional spline, the rest conditioned on them). ``"alternating"``: the authors'
    2-D layer (paper section 4, their released code): the features of
    :func:`alternating_mask` pass unchanged and condition a spline of the others, whose
    ``3 bins - 1`` parameters come from an MLP ``in-hidden-...-out`` with SiLU; which half
    is transformed alternates deterministically from layer to layer.

    Every conditioner's output layer starts at zero, so the splines start as the identity.
    Permutations and initial weights are drawn from ``seed`` (:func:`seeded_init`), never from
    the global random state.
    """
    with seeded_init(seed):
        return _spline_stack(features, layers, hidden, depth, bins, seed, actnorm, tail_bound, coupling)


def _spline_stack(
    features: int,
    layers: int,
    hidden: int,
    depth: int,
    bins: int,
    seed: int,
    actnorm: bool,
    tail_bound: float,
    coupling: SplineCoupling,
) -> TabularFlow:
    generator = torch.Generator().manual_seed(seed)
    stack: list[LazyTransform] = [ActNorm(features)] if actnorm else []
    shapes = [(bins,), (bins,), (bins - 1,)]
    univariate = partial(MonotonicRQSTransform, bound=tail_bound)
    for layer in range(layers):
        if coupling == "alternating":
            stack.append(
                GeneralCouplingTransform(
                    features,
                    mask=alternating_mask(features, layer),
                    univariate=univariate,
                    shapes=shapes,
                    hidden_features=(hidden,) * depth,
                    activation=nn.SiLU,
                )
            )
            continue
        order = torch.randperm(features, generator=generator)
        stack.append(UnconditionalTransform(PermutationTransform, order, buffer=True))
        stack.append(
            MaskedAutoregressiveTransform(
                features=features,
                passes=2,
                univariate=univariate,
                shapes=shapes,
                hidden_features=(hidden,) * depth,
                activation=nn.SiLU,
            )
        )
    if actnorm:
        stack.append(ActNorm(features))
    config: dict[str, Any] = {
        "kind": "spline_coupling",
        "features": features,
        "layers": layers,
        "hidden": hidden,
        "depth": depth,
        "bins": bins,
        "seed": seed,
    }
    if not actnorm or tail_bound != 5.0 or coupling != "autoregressive":  # older configs rebuild unchanged
        config.update(actnorm=actnorm, tail_bound=tail_bound, coupling=coupling)
    zero_last_layers(stack)
    return TabularFlow(stack, config)
