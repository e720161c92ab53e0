"""The matrix-normal flow likelihood, per observation (nats per row).

``-log p(X)/n = [ (nd/2) log 2pi + (d/2) log det Sigma + (1/2) tr(Z^T Sigma^-1 Z) ]/n
- (1/n) sum_i log |det J_g(x_i)|``: the flow's log-det is the usual per-row sum; only
the Gaussian term couples rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowpheno.dependence import DependenceModel, EquicorrelatedBlocks, LatentControlVariate
from flowpheno.flows import LatentFlow


def minibatch_nll(
    flow: LatentFlow,
    dependence: DependenceModel,
    x_batch: Tensor,
    idx: Tensor,
    control: LatentControlVariate | None = None,
) -> tuple[Tensor, Tensor]:
    """Unbiased estimate of the full per-row NLL from the batch of rows ``idx``, and the
    batch latents. With ``control`` the trace term uses the control variate."""
    z, ladj = flow(x_batch)
    if control is None:
        gaussian = dependence.minibatch_gaussian_nll(z, idx)
    else:
        gaussian = dependence.gaussian_nll_from_trace(control.quad_form_estimate(z, idx), z.shape[1])
    return gaussian - ladj.mean(), z


def whole_blocks_nll(
    flow: LatentFlow, blocks: EquicorrelatedBlocks, x_batch: Tensor, idx: Tensor, n_batches: int
) -> tuple[Tensor, Tensor]:
    """Per-row NLL of a batch of whole blocks, scaled so an epoch's mean batch loss is the
    exact objective (block-aware batching: no trace estimator)."""
    z, ladj = flow(x_batch)
    gaussian = blocks.whole_blocks_gaussian_nll(z, idx, n_batches)
    return gaussian - ladj.sum() * n_batches / blocks.n, z


def stratified_blocks_nll(
    flow: LatentFlow, blocks: EquicorrelatedBlocks, x_batch: Tensor, idx: Tensor, n_batches: int
) -> tuple[Tensor, Tensor]:
    """Unbiased per-row NLL from one stratified batch (large blocks dealt evenly, small
    blocks whole); its Gaussian term is bounded below for any latents."""
    z, ladj = flow(x_batch)
    gaussian = blocks.stratified_gaussian_nll(z, idx, n_batches)
    return gaussian - ladj.sum() * n_batches / blocks.n, z


def exact_nll(flow: LatentFlow, dependence: DependenceModel, x: Tensor) -> Tensor:
    """Exact per-row NLL of all ``n`` rows (in the dependence model's order)."""
    z, ladj = flow(x)
    return dependence.gaussian_nll(z) - ladj.mean()


@torch.no_grad()
def iid_nll(flow: LatentFlow, x: Tensor, batch_size: int = 8192) -> float:
    """Held-out NLL under independence (the validation and test metric)."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        z, ladj = flow(x[start : start + batch_size])
        log_normal = -0.5 * (z.square().sum(dim=1) + z.shape[1] * math.log(2 * math.pi))
        total += float((-(log_normal + ladj)).sum())
    return total / x.shape[0]


@torch.no_grad()
def push_forward(flow: LatentFlow, x: Tensor, batch_size: int = 8192) -> Tensor:
    """``Z = g(X)`` for all rows, without building a graph."""
    return torch.cat([flow(x[start : start + batch_size])[0] for start in range(0, x.shape[0], batch_size)])
