"""A control variate for the mini-batch trace estimator (DESIGN.md 1c).

Keep ``Z~``, every row's latent from its last visit, and ``P Z~``. With
``delta = Z - Z~``::

    tr(Z^T P Z) = tr(Z~^T P Z~) + 2 sum_i <delta_i, (P Z~)_i> + tr(delta^T P delta)

The first term is known, the second is a plain sum over rows (estimated by
``(n/b)`` times the batch sum), and only the third needs Proposition 2.2 - on
``delta``, which is small once ``Z~`` is close to ``Z``. The estimate stays unbiased
(``Z~`` depends only on earlier batches) and its variance is far lower while the
flow changes slowly. Caveat seen on real training runs: when one batch throws some
latents far out, ``Z~`` keeps them until those rows are visited again and the
estimate is poor meanwhile; hence it is opt-in (``TrainConfig.estimator``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowpheno.dependence.base import DependenceModel


class LatentControlVariate:
    """Latents from each row's last visit and their image under ``Sigma^-1`` (fixed covariance).

    Args:
        dependence: the covariance, fixed while this object is in use.
        latent: ``(n, d)`` latents of every row (model order) to start from; copied.
    """

    def __init__(self, dependence: DependenceModel, latent: Tensor) -> None:
        self.dependence = dependence
        self.latent = latent.detach().clone()
        self.precision_latent = dependence.precision_times(self.latent).detach()

    def quad_form_estimate(self, z_batch: Tensor, idx: Tensor) -> Tensor:
        """Unbiased estimate of ``tr(Z^T Sigma^-1 Z)`` with ``Z`` the current latents, from the
        batch rows ``idx`` (``(b,)``, uniform) and their latents ``z_batch`` (``(b, d)``)."""
        n, b = self.dependence.n, z_batch.shape[0]
        delta = z_batch - self.latent[idx]
        known = (self.latent * self.precision_latent).sum()
        linear = 2.0 * (n / b) * (delta * self.precision_latent[idx]).sum()
        return known + linear + self.dependence.minibatch_quad_form(delta, idx)

    @torch.no_grad()
    def update(self, z_batch: Tensor, idx: Tensor) -> None:
        """Record the batch's latents as the rows' new ``Z~`` (after the step that used them)."""
        delta = z_batch.detach() - self.latent[idx]
        self.precision_latent += self.dependence.precision_columns_times(idx, delta)
        self.latent[idx] = z_batch.detach()
