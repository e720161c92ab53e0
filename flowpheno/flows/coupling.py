"""Tabular flow: RealNVP-style affine coupling with ActNorm, permutations and SiLU MLPs."""

from __future__ import annotations

import torch
from torch import nn
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.lazy import LazyTransform, UnconditionalTransform
from zuko.transforms import PermutationTransform

from flowpheno.flows.base import ActNorm, LatentFlow, zero_last_layers


def affine_coupling_flow(
    features: int,
    layers: int = 16,
    hidden: int = 128,
    depth: int = 2,
    seed: int = 0,
) -> LatentFlow:
    """``layers`` x (ActNorm -> permutation -> affine coupling), conditioner ``in-hidden^depth-out``.

    The coupling scale is bounded (zuko's ``MonotonicAffineTransform``); permutations
    are drawn from ``seed`` and saved as buffers, so the model is reproducible.

    Example:
        >>> flow = affine_coupling_flow(4, layers=2, hidden=16)
        >>> z, ladj = flow(torch.randn(10, 4))
        >>> z.shape, ladj.shape
        (torch.Size([10, 4]), torch.Size([10]))
    """
    generator = torch.Generator().manual_seed(seed)
    stack: list[LazyTransform] = []
    for i in range(layers):
        stack.append(ActNorm(features))
        if features > 1:
            order = torch.randperm(features, generator=generator)
            stack.append(UnconditionalTransform(PermutationTransform, order, buffer=True))
        stack.append(
            GeneralCouplingTransform(
                features=features,
                mask=torch.arange(features) % 2 == i % 2,
                hidden_features=(hidden,) * depth,
                activation=nn.SiLU,
            )
        )
    stack.append(ActNorm(features))
    config = {"kind": "affine_coupling", "features": features, "layers": layers, "hidden": hidden, "depth": depth, "seed": seed}
    zero_last_layers(stack)
    return LatentFlow(stack, config)
