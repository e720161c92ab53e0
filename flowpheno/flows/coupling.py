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
    """``layers`` x (ActNorm -> permutation -> affine coupling), conditioner ``in-hidden^depth-out``,
    then a fixed permutation that undoes the product of the layer permutations, then ActNorm.

    The coupling scale is bounded (zuko's ``MonotonicAffineTransform``); permutations
    are drawn from ``seed`` and saved as buffers, so the model is reproducible. Thanks to
    the final permutation, latent column ``j`` is the image of input column ``j`` (the
    trait names of the input label the output truthfully); it has ``log |det J| = 0``.

    Example:
        >>> flow = affine_coupling_flow(4, layers=2, hidden=16)
        >>> z, ladj = flow(torch.randn(10, 4))
        >>> z.shape, ladj.shape
        (torch.Size([10, 4]), torch.Size([10]))
    """
    generator = torch.Generator().manual_seed(seed)
    stack: list[LazyTransform] = []
    position = torch.arange(features)  # position[j]: the input feature held by column j
    for i in range(layers):
        stack.append(ActNorm(features))
        if features > 1:
            order = torch.randperm(features, generator=generator)
            position = position[order]
            stack.append(UnconditionalTransform(PermutationTransform, order, buffer=True))
        stack.append(
            GeneralCouplingTransform(
                features=features,
                mask=torch.arange(features) % 2 == i % 2,
                hidden_features=(hidden,) * depth,
                activation=nn.SiLU,
            )
        )
    if features > 1:
        stack.append(UnconditionalTransform(PermutationTransform, torch.argsort(position), buffer=True))
    stack.append(ActNorm(features))
    config = {"kind": "affine_coupling", "features": features, "layers": layers, "hidden": hidden, "depth": depth, "seed": seed}
    zero_last_layers(stack)
    return LatentFlow(stack, config)
