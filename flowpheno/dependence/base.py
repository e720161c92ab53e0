"""The interface every dependence model implements, and the batch trace estimator."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def trace_estimate(z_batch: Tensor, precision_batch: Tensor, n: int) -> Tensor:
    """Unbiased estimate of ``tr(Z^T P Z)`` from a uniform batch (Proposition 2.2).

    ``T = (n/b) sum_i P_ii |z_i|^2 + n(n-1)/(b(b-1)) sum_{i != j} P_ij <z_i, z_j>``
    where ``precision_batch`` is ``P[idx][:, idx]`` for the batch rows ``z_batch``.
    """
    b = z_batch.shape[0]
    gram = z_batch @ z_batch.T
    weighted = precision_batch * gram
    diagonal = torch.diagonal(weighted).sum()
    estimate = (n / b) * diagonal
    if b > 1:
        off_diagonal = weighted.sum() - diagonal
        estimate = estimate + (n * (n - 1) / (b * (b - 1))) * off_diagonal
    return estimate


class DependenceModel(nn.Module):
    """Row covariance ``Sigma`` (n x n) of the latent; columns independent.

    Subclasses implement ``log_det``, ``quad_form`` and ``precision_block``; the
    likelihood helpers here are shared.
    """

    n: int

    def log_det(self) -> Tensor:
        """``log det Sigma``."""
        raise NotImplementedError

    def quad_form(self, z: Tensor) -> Tensor:
        """Exact ``tr(Z^T Sigma^-1 Z)`` for all ``n`` rows of ``z`` in model order."""
        raise NotImplementedError

    def precision_block(self, idx: Tensor) -> Tensor:
        """``Sigma^-1[idx][:, idx]``, the precision entries a batch needs."""
        raise NotImplementedError

    def precision_times(self, z: Tensor) -> Tensor:
        """``Sigma^-1 Z`` for all ``n`` rows."""
        raise NotImplementedError

    def precision_columns_times(self, idx: Tensor, values: Tensor) -> Tensor:
        """``Sigma^-1[:, idx] @ values`` (``n x d``): how ``Sigma^-1 Z`` changes when rows ``idx`` do."""
        scattered = torch.zeros(self.n, values.shape[1], dtype=values.dtype, device=values.device)
        scattered[idx] = values
        return self.precision_times(scattered)

    def minibatch_quad_form(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of ``tr(Z^T Sigma^-1 Z)`` from the batch rows ``idx``."""
        return trace_estimate(z_batch, self.precision_block(idx), self.n)

    def gaussian_nll(self, z: Tensor) -> Tensor:
        """Exact ``-log N(vec Z; 0, I (x) Sigma)`` divided by ``n`` (nats per row)."""
        d = z.shape[1]
        total = 0.5 * (self.n * d * math.log(2 * math.pi) + d * self.log_det() + self.quad_form(z))
        return total / self.n

    def minibatch_gaussian_nll(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of :meth:`gaussian_nll` from one batch."""
        return self.gaussian_nll_from_trace(self.minibatch_quad_form(z_batch, idx), z_batch.shape[1])

    def gaussian_nll_from_trace(self, trace: Tensor, d: int) -> Tensor:
        """:meth:`gaussian_nll` given (an estimate of) ``tr(Z^T Sigma^-1 Z)``."""
        return 0.5 * (self.n * d * math.log(2 * math.pi) + d * self.log_det() + trace) / self.n

    def describe(self) -> dict[str, float | list[float]]:
        """The fitted covariance parameters, for logs and ``fit.json``."""
        return {}
