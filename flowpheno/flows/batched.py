"""K small spline coupling flows evaluated as one batched model (stacked parameters).

A 2-D spline flow has about 22,000 weights: one training step is a few dozen tiny
operations, and their fixed cost dominates. :class:`BatchedSplineFlow` holds ``K``
flows of the same ``alternating`` architecture (:func:`spline_coupling_flow` with
``actnorm=False, coupling="alternating"``) as tensors with a leading member dimension
and evaluates them together: every linear layer after the first is one ``torch.baddbmm``
over the ``K`` members (the first, with one or two inputs, a broadcast product: the
gradient of a batched matrix product with one output column depends on ``K`` in its
last bits), every spline one call of zuko's elementwise ``MonotonicRQSTransform`` on
``(K, n)`` inputs. Members never mix: member ``k``'s output and gradient depend only on
its own slice of every parameter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from flowpheno.errors import FlowphenoError
from flowpheno.flows.base import LatentFlow
from flowpheno.flows.spline import alternating_mask, spline_coupling_flow


class BatchedSplineFlow(nn.Module):
    """``K`` alternating spline coupling flows ``g_k`` (data -> latent) with stacked weights.

    Parameters are named ``layer{l}_weight{j}`` (``(K, in, out)``) and ``layer{l}_bias{j}``
    (``(K, 1, out)``) for linear ``j`` of the conditioner of coupling layer ``l``.

    Args:
        flows: ``K`` flows built by ``spline_coupling_flow(..., actnorm=False,
            coupling="alternating")`` with one architecture; their current weights are copied.

    Raises:
        FlowphenoError: a flow of another kind or architecture.
    """

    def __init__(self, flows: list[LatentFlow]) -> None:
        super().__init__()
        if not flows:
            raise FlowphenoError("a batched flow needs at least one member")
        config = dict(flows[0].config)
        for flow in flows:
            other = {key: value for key, value in flow.config.items() if key != "seed"}
            if other != {key: value for key, value in config.items() if key != "seed"}:
                raise FlowphenoError("the members of a batched flow must share one architecture")
        if config.get("coupling") != "alternating" or config.get("actnorm", True):
            raise FlowphenoError(
                "a batched flow stacks spline_coupling_flow(actnorm=False, coupling='alternating') members"
            )
        self.config = config
        self.members = len(flows)
        self.features = int(config["features"])
        self.bins = int(config["bins"])
        self.tail_bound = float(config["tail_bound"])
        self.layers = int(config["layers"])
        self.depth = int(config["depth"])
        self.seeds = [int(flow.config["seed"]) for flow in flows]
        states = [flow.state_dict() for flow in flows]
        for layer in range(self.layers):
            for linear in range(self.depth + 1):
                prefix = f"transform.transforms.{layer}.hyper.{2 * linear}"
                weight = torch.stack([state[f"{prefix}.weight"].T for state in states]).contiguous()
                bias = torch.stack([state[f"{prefix}.bias"][None, :] for state in states]).contiguous()
                self.register_parameter(f"layer{layer}_weight{linear}", nn.Parameter(weight))
                self.register_parameter(f"layer{layer}_bias{linear}", nn.Parameter(bias))
        self._splits = []
        for layer in range(self.layers):
            mask = alternating_mask(self.features, layer)
            self._splits.append((mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)))

    def _linear(self, layer: int, linear: int) -> tuple[Tensor, Tensor]:
        return getattr(self, f"layer{layer}_weight{linear}"), getattr(self, f"layer{layer}_bias{linear}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latents ``z_k = g_k(x)`` (``(K, n, d)``) and ``log |det J_{g_k}(x_i)|`` (``(K, n)``).

        ``x`` is ``(n, d)`` (the same rows for every member) or ``(K, n, d)``.
        """
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        ladj = x.new_zeros(x.shape[:2])
        for layer, (kept, moved) in enumerate(self._splits):
            hidden = x.index_select(-1, kept)
            for linear in range(self.depth + 1):
                weight, bias = self._linear(layer, linear)
                if linear == 0:  # a handful of inputs: broadcast products, whose gradient does not depend on K
                    hidden = bias + (hidden[..., :, None] * weight[:, None]).sum(dim=-2)
                else:
                    hidden = torch.baddbmm(bias, hidden, weight)
                if linear < self.depth:
                    hidden = F.silu(hidden)
            phi = hidden.unflatten(-1, (len(moved), 3 * self.bins - 1))
            widths, heights, derivatives = phi.split([self.bins, self.bins, self.bins - 1], dim=-1)
            spline = MonotonicRQSTransform(widths, heights, derivatives, bound=self.tail_bound)
            y_moved, layer_ladj = spline.call_and_ladj(x.index_select(-1, moved))
            x = x.index_copy(-1, moved, y_moved)
            ladj = ladj + layer_ladj.sum(dim=-1)
        return x, ladj

    @torch.no_grad()
    def member(self, k: int) -> LatentFlow:
        """Member ``k`` as an ordinary :class:`LatentFlow` (its weights copied out)."""
        options = {key: value for key, value in self.config.items() if key != "kind"}
        flow = spline_coupling_flow(**{**options, "seed": self.seeds[k]})
        state = flow.state_dict()
        for layer in range(self.layers):
            for linear in range(self.depth + 1):
                weight, bias = self._linear(layer, linear)
                prefix = f"transform.transforms.{layer}.hyper.{2 * linear}"
                state[f"{prefix}.weight"] = weight[k].T.clone()
                state[f"{prefix}.bias"] = bias[k, 0].clone()
        flow.load_state_dict(state)
        return flow

    def member_config(self, k: int) -> dict[str, Any]:
        """The :func:`build_flow` config of member ``k``."""
        return {**self.config, "seed": self.seeds[k]}
