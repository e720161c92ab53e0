"""Rational-quadratic spline coupling flow (Durkan et al.) for the 2-D experiments."""

from __future__ import annotations

import torch
from torch import nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import LazyTransform, UnconditionalTransform
from zuko.transforms import MonotonicRQSTransform, PermutationTransform

from flowpheno.flows.base import ActNorm, TabularFlow, seeded_init, zero_last_layers


def spline_coupling_flow(
    features: int = 2,
    layers: int = 3,
    hidden: int = 64,
    depth: int = 2,
    bins: int = 16,
    seed: int = 0,
) -> TabularFlow:
    """``layers`` x (permutation -> rational-quadratic spline coupling with ``bins`` bins), between
    ActNorm layers, for rows of ``features`` values (Durkan et al. 2019; zuko's
    ``MaskedAutoregressiveTransform`` with two passes, i.e. a coupling, and ``MonotonicRQSTransform``).

    Splines live on ``[-5, 5]`` and are the identity outside (linear tails); the
    leading ActNorm standardises inputs so that bound covers the data. Permutations and
    initial weights are drawn from ``seed`` (:func:`seeded_init`), never from the global state.
    """
    with seeded_init(seed):
        generator = torch.Generator().manual_seed(seed)
        stack: list[LazyTransform] = [ActNorm(features)]
        for _ in range(layers):
            order = torch.randperm(features, generator=generator)
            stack.append(UnconditionalTransform(PermutationTransform, order, buffer=True))
            stack.append(
                MaskedAutoregressiveTransform(
                    features=features,
                    passes=2,
                    univariate=MonotonicRQSTransform,
                    shapes=[(bins,), (bins,), (bins - 1,)],
                    hidden_features=(hidden,) * depth,
                    activation=nn.SiLU,
                )
            )
    stack.append(ActNorm(features))
    config = {"kind": "spline_coupling", "features": features, "layers": layers, "hidden": hidden, "depth": depth, "bins": bins, "seed": seed}
    zero_last_layers(stack)
    return TabularFlow(stack, config)
