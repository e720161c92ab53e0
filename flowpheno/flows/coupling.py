"""Tabular flow: RealNVP-style affine coupling with ActNorm, permutations and SiLU MLPs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.lazy import LazyTransform, UnconditionalTransform
from zuko.transforms import CouplingTransform, PermutationTransform, Transform

from flowpheno.flows.base import ActNorm, TabularFlow, seeded_init, zero_last_layers


class _IndexedCouplingTransform(CouplingTransform):
    """zuko's ``CouplingTransform`` given the split's indices instead of its mask.

    zuko finds the indices with ``mask.nonzero()`` each time the transform is built, that
    is on every forward call; on a GPU ``nonzero`` waits for the device (its output size
    depends on the data), so a 16-layer flow would synchronise 32 times per batch.
    """

    def __init__(self, meta: Callable[[Tensor], Transform], idx_a: Tensor, idx_b: Tensor, **kwargs: Any) -> None:
        Transform.__init__(self, **kwargs)
        self.meta = meta
        self.idx_a = idx_a
        self.idx_b = idx_b


class IndexedCoupling(GeneralCouplingTransform):
    """zuko's ``GeneralCouplingTransform`` (same parameters, same state dict, same maths)
    whose split indices are computed once, as non-persistent buffers on the module's
    device, so a forward pass never synchronises the host with the device."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("idx_a", self.mask.nonzero().squeeze(-1), persistent=False)
        self.register_buffer("idx_b", (~self.mask).nonzero().squeeze(-1), persistent=False)

    def forward(self, c: Tensor | None = None) -> Transform:
        return _IndexedCouplingTransform(partial(self.meta, c), self.idx_a, self.idx_b)


def affine_coupling_flow(
    features: int,
    layers: int = 16,
    hidden: int = 128,
    depth: int = 2,
    seed: int = 0,
) -> TabularFlow:
    """``layers`` x (ActNorm -> permutation -> affine coupling), conditioner ``in-hidden^depth-out``,
    then a fixed permutation that undoes the product of the layer permutations, then ActNorm,
    for rows of ``features`` traits (RealNVP, Dinh et al. 2017; zuko's coupling transform).

    The coupling scale is bounded (zuko's ``MonotonicAffineTransform``); permutations
    are drawn from ``seed`` and saved as buffers, and the conditioners' initial weights are
    drawn from ``seed`` too (:func:`seeded_init`; the global random state is neither used
    nor changed), so the same arguments give the same flow. Thanks to
    the final permutation, latent column ``j`` is the image of input column ``j`` (the
    trait names of the input label the output truthfully); it has ``log |det J| = 0``.

    Example:
        >>> flow = affine_coupling_flow(4, layers=2, hidden=16)
        >>> z, ladj = flow(torch.randn(10, 4))
        >>> z.shape, ladj.shape
        (torch.Size([10, 4]), torch.Size([10]))
    """
    with seeded_init(seed):
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
                IndexedCoupling(
                    features=features,
                    mask=torch.arange(features) % 2 == i % 2,
                    hidden_features=(hidden,) * depth,
                    activation=nn.SiLU,
                )
            )
        if features > 1:
            stack.append(UnconditionalTransform(PermutationTransform, torch.argsort(position), buffer=True))
        stack.append(ActNorm(features))
    config = {
        "kind": "affine_coupling",
        "features": features,
        "layers": layers,
        "hidden": hidden,
        "depth": depth,
        "seed": seed,
    }
    zero_last_layers(stack)
    return TabularFlow(stack, config)
