"""The matrix-normal flow likelihood, per observation (nats per row).

``-log p(X)/n = [ (nd/2) log 2pi + (d/2) log det Sigma + (1/2) tr(Z^T Sigma^-1 Z) ]/n
- (1/n) sum_i log |det J_g(x_i)|``: the flow's log-det is the usual per-row sum; only
the Gaussian term couples rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowpheno.dependence import DependenceModel, HeldOutKinship, LatentControlVariate
from flowpheno.dependence.kinship import gaussian_nll_from_terms
from flowpheno.flows import LatentFlow


def uniform_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None
) -> list[Tensor]:
    """One epoch's uniform batches: a random permutation of ``range(n)`` (drawn on the CPU by
    ``generator``, moved to ``device`` in one copy) cut into batches of ``batch_size`` rows, a
    trailing single row joined to the batch before it.

    A batch of one row has no pair, so its trace estimate (Proposition 2.2) sees only the
    diagonal of ``Sigma^-1`` and is biased; any batch of two or more distinct uniform rows is
    unbiased. Returns int64 row indices (``(b,)`` each)."""
    batches = list(torch.randperm(n, generator=generator).to(device).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


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


def layout_batch_nll(
    flow: LatentFlow, dependence: DependenceModel, x_batch: Tensor, idx: Tensor, batching: str, n_batches: int
) -> tuple[Tensor, Tensor]:
    """Per-row NLL of one batch of a model's own layout (:meth:`DependenceModel.batches`, e.g.
    whole equicorrelated blocks: exact; stratified: unbiased and bounded below), scaled so that
    an epoch's mean batch loss is (in expectation) the exact objective; and the batch latents."""
    z, ladj = flow(x_batch)
    gaussian = dependence.batch_gaussian_nll(z, idx, batching, n_batches)
    return gaussian - ladj.sum() * n_batches / dependence.n, z


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
def held_out_nll(
    flow: LatentFlow,
    x_val: Tensor,
    x_train: Tensor | None = None,
    kinship: DependenceModel | None = None,
    held_out: HeldOutKinship | None = None,
    batch_size: int = 8192,
) -> tuple[float, float | None]:
    """Held-out NLL in nats per held-out row (summed over traits), as ``(iid, conditional)``.

    ``iid``: ``-(1/m) sum_v [log N(z_v; 0, I_d) + log |det J_g(x_v)|]`` (what :func:`iid_nll` gives).
    ``conditional`` (None without ``kinship``/``held_out``): the held-out rows' density given the
    training rows ``x_train`` (``n x d``, in the kinship model's order; ``kinship``: a model with
    :attr:`~DependenceModel.conditional_scoring`),
    ``-(1/m) [log N(Z_v; Sigma_vt Sigma_tt^-1 Z_t, Sigma_vv|t (x) I_d) + sum_v log |det J_g(x_v)|]``
    under the kinship model's current ``s2``: relatives of training rows are not scored as if
    they were strangers. Both are computed in the held-out blocks' dtype (float64 from the
    pipeline) from the same latents, so at ``s2 = 0`` they are equal to the last bit.
    """
    z_val, ladj = _latents_and_log_dets(flow, x_val, batch_size)
    dtype = held_out.cross_rotated.dtype if held_out is not None else torch.float64
    z_val, ladj = z_val.to(dtype), ladj.to(dtype)
    m, d = z_val.shape
    log_det_jacobian = ladj.sum() / m
    iid = gaussian_nll_from_terms(m, d, 0.0, z_val.square().sum()) - log_det_jacobian
    if kinship is None or held_out is None or x_train is None:
        return float(iid), None
    z_train = push_forward(flow, x_train, batch_size)
    conditional = kinship.conditional_gaussian_nll(z_train, z_val, held_out) - log_det_jacobian
    return float(iid), float(conditional)


@torch.no_grad()
def push_forward(flow: LatentFlow, x: Tensor, batch_size: int = 8192) -> Tensor:
    """``Z = g(X)`` for all rows, without building a graph."""
    return torch.cat([flow(x[start : start + batch_size])[0] for start in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def _latents_and_log_dets(flow: LatentFlow, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """``Z = g(X)`` (``n x d``) and ``log |det J_g(x_i)|`` (``n``), without building a graph."""
    pieces = [flow(x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)]
    return torch.cat([z for z, _ in pieces]), torch.cat([ladj for _, ladj in pieces])
