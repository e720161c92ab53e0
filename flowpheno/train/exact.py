"""Exact full-data gradient of the matrix-normal flow NLL in ``O(chunk)`` autograd memory.

The Gaussian term couples all ``n`` rows, but only through ``Z``: with the latents of
every row computed once without a graph, ``dL/dZ`` and the covariance gradients come
from one small graph on ``Z`` (``O(n r d)`` for a low-rank kinship through Woodbury,
``O(n d)`` for blocks); a second pass pushes ``dL/dZ`` back through the flow chunk by
chunk. The result equals autograd on :func:`flowpheno.train.objective.exact_nll` (a
test checks it) without holding the flow's activations for all rows at once, so
``joint`` training can use the exact objective, with no estimator variance, at biobank n.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowpheno.dependence import DependenceModel
from flowpheno.flows import LatentFlow


def exact_backward(flow: LatentFlow, dependence: DependenceModel, x: Tensor, chunk_size: int = 16_384) -> Tensor:
    """Accumulate the gradient of the exact per-row NLL of all rows into ``.grad``; return the NLL.

    Rows of ``x`` are in the dependence model's order. Gradients reach the flow and every
    covariance parameter with ``requires_grad``.
    """
    n = x.shape[0]
    with torch.no_grad():
        z = torch.cat([flow(chunk)[0] for chunk in x.split(chunk_size)])
    z.requires_grad_(True)
    gaussian = dependence.gaussian_nll(z)
    gaussian.backward()
    latent_grad = z.grad
    assert latent_grad is not None
    log_det_total = torch.zeros((), device=x.device)
    for rows, chunk in zip(torch.arange(n, device=x.device).split(chunk_size), x.split(chunk_size), strict=True):
        z_chunk, ladj = flow(chunk)
        surrogate = (z_chunk * latent_grad[rows]).sum() - ladj.sum() / n
        surrogate.backward()
        log_det_total = log_det_total + ladj.detach().sum()
    return gaussian.detach() - log_det_total / n
